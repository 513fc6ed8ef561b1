/* daemon/registry.c: loading and freeing models, with a memory estimate checked before
 * anything large is allocated.  Nothing here touches the engine's shared state, so a load
 * may run on the loader thread (loader.c) while the engine thread serves other models. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/engine/chat.h"
#include "daemon/engine/gguf.h"
#include "daemon/engine/tokenizer.h"
#include "sched.h"

#define MIB (1024.0 * 1024.0)

static int get_arch_u32(const GgufFile *g, const char *arch, const char *key, uint32_t *ret)
{
	char k[160];
	snprintf(k, sizeof k, "%s.%s", arch, key);
	return gguf_get_u32(g, k, ret);
}

int registry_estimate(const char *path, int n_slots, int n_ctx, int n_batch, RegEstimate *ret,
		      char *err, size_t errlen)
{
	GgufFile *g = NULL;
	int rc = gguf_open(path, &g, err, errlen);
	if (rc < 0)
		return rc;
	const char *a;
	size_t alen;
	char arch[64];
	uint32_t n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, n_ff = 0, ctx_train = 0;
	int at;
	uint64_t n_vocab = 0;
	const void *unused;
	rc = gguf_get_str(g, "general.architecture", &a, &alen);
	if (rc < 0 || alen == 0 || alen >= sizeof arch) {
		snprintf(err, errlen, "no general.architecture");
		rc = -EBADMSG;
		goto out;
	}
	memcpy(arch, a, alen);
	arch[alen] = 0;
	if (get_arch_u32(g, arch, "block_count", &n_layer) < 0 ||
	    get_arch_u32(g, arch, "embedding_length", &n_embd) < 0 ||
	    get_arch_u32(g, arch, "attention.head_count", &n_head) < 0 || n_head == 0 ||
	    get_arch_u32(g, arch, "feed_forward_length", &n_ff) < 0) {
		snprintf(err, errlen, "missing %s hyperparameters", arch);
		rc = -EBADMSG;
		goto out;
	}
	if (get_arch_u32(g, arch, "attention.head_count_kv", &n_head_kv) < 0)
		n_head_kv = n_head;
	if (get_arch_u32(g, arch, "context_length", &ctx_train) < 0)
		ctx_train = 4096;
	if (gguf_get_arr(g, "tokenizer.ggml.tokens", &at, &n_vocab, &unused) < 0)
		n_vocab = 32000;
	if (n_ctx <= 0)
		n_ctx = (int)(ctx_train < 4096 ? ctx_train : 4096);
	/* Upper bounds: KV in f32, logits for a whole batch, a handful of activation rows. */
	uint64_t kv_dim = (uint64_t)n_embd / n_head * n_head_kv;
	uint64_t kv = 2ull * n_layer * kv_dim * (uint64_t)n_ctx * (uint64_t)n_slots * 4;
	uint64_t act = (uint64_t)n_batch * (n_vocab + 8ull * n_embd + 3ull * n_ff) * 4;
	*ret = (RegEstimate){ .weights = gguf_file_size(g), .kv = kv, .act = act,
			      .logits = (uint64_t)n_batch * n_vocab * 4 };
	rc = 0;
out:
	gguf_close(g);
	return rc;
}

static uint64_t read_u64_file(const char *path, uint64_t dflt)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return dflt;
	char buf[64];
	uint64_t v = dflt;
	if (fgets(buf, sizeof buf, f) && strncmp(buf, "max", 3) != 0) {
		char *end;
		unsigned long long x = strtoull(buf, &end, 10);
		if (end != buf)
			v = x;
	}
	fclose(f);
	return v;
}

uint64_t registry_mem_available(void)
{
	uint64_t avail = UINT64_MAX;
	FILE *f = fopen("/proc/meminfo", "re");
	if (f) {
		char line[256];
		unsigned long long kb;
		while (fgets(line, sizeof line, f))
			if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
				avail = kb * 1024ull;
				break;
			}
		fclose(f);
	}
	/* cgroup v2: our own group's limit (MemoryMax= in the unit) minus what it uses. */
	char cg[600] = "";
	f = fopen("/proc/self/cgroup", "re");
	if (f) {
		char line[512];
		if (fgets(line, sizeof line, f) && strncmp(line, "0::", 3) == 0) {
			line[strcspn(line, "\n")] = 0;
			snprintf(cg, sizeof cg, "/sys/fs/cgroup%s", line + 3);
		}
		fclose(f);
	}
	if (cg[0]) {
		char p[700];
		snprintf(p, sizeof p, "%s/memory.max", cg);
		uint64_t max = read_u64_file(p, UINT64_MAX);
		snprintf(p, sizeof p, "%s/memory.current", cg);
		uint64_t cur = read_u64_file(p, 0);
		if (max != UINT64_MAX) {
			uint64_t left = max > cur ? max - cur : 0;
			if (left < avail)
				avail = left;
		}
	}
	return avail;
}

/* Refuses EST host bytes over LIMIT_LEFT (--mem-limit) or what the system has, with an
 * error that names what was counted. */
static int check_host(uint64_t est, const RegEstimate *e, bool gpu, uint64_t limit_left,
		      char *err, size_t errlen)
{
	uint64_t avail = registry_mem_available();
	if (est <= limit_left && est <= avail)
		return 0;
	char what[200];
	if (gpu)
		snprintf(what, sizeof what, "logits for one batch; weights, KV cache and "
			 "activations go to the GPU");
	else
		snprintf(what, sizeof what, "weights %.0f + KV cache %.0f + activations %.0f MiB",
			 e->weights / MIB, e->kv / MIB, e->act / MIB);
	snprintf(err, errlen, "model needs about %.0f MiB of host memory (%s); %.0f MiB %s",
		 est / MIB, what, (est > limit_left ? limit_left : avail) / MIB,
		 est > limit_left ? "left under --mem-limit" : "available");
	return -ENOMEM;
}

void registry_default_name(const char *path, char *out, size_t cap)
{
	const char *b = strrchr(path, '/');
	b = b ? b + 1 : path;
	size_t n = strlen(b);
	if (n > 5 && strcmp(b + n - 5, ".gguf") == 0)
		n -= 5;
	if (n >= cap)
		n = cap - 1;
	memcpy(out, b, n);
	out[n] = 0;
}

int registry_load(const SchedParams *p, const char *path, const char *name, int n_slots,
		  int n_ctx, uint64_t limit_left, ModelEntry **ret, char *err, size_t errlen)
{
	if (n_slots <= 0)
		n_slots = p->n_slots;
	if (n_ctx <= 0)
		n_ctx = p->n_ctx;
	if (n_slots > 256 || n_ctx < 0 || n_ctx > (1 << 20)) {
		snprintf(err, errlen, "bad slot count or context size");
		return -EINVAL;
	}
	RegEstimate e;
	int rc = registry_estimate(path, n_slots, n_ctx, p->n_batch, &e, err, errlen);
	if (rc < 0)
		return rc;
	const char *be = p->backend ? p->backend : "cpu";
	/* On a GPU the weights are uploaded (their mapping is page cache the kernel may drop
	 * again), and the KV cache and activations live on the device: the host keeps only a
	 * copy of a batch's logits.  "auto" is checked as a GPU now and as the CPU again once
	 * the context says which backend it got. */
	bool gpu = strcmp(be, "cpu") != 0;
	uint64_t est = gpu ? e.logits : e.weights + e.kv + e.act;
	rc = check_host(est, &e, gpu, limit_left, err, errlen);
	if (rc < 0)
		return rc;
	ModelEntry *m = calloc(1, sizeof *m);
	if (!m)
		return -ENOMEM;
	m->queue_tail = &m->queue;
	m->estimate = est;
	snprintf(m->path, sizeof m->path, "%s", path);
	if (name && *name)
		snprintf(m->name, sizeof m->name, "%s", name);
	else
		registry_default_name(path, m->name, sizeof m->name);
	rc = model_load(path, &m->model, err, errlen);
	if (rc < 0)
		goto fail;
	char why[320] = "";
	ContextParams cp = {
		.n_seq = n_slots, .n_ctx = n_ctx, .n_batch = p->n_batch, .n_threads = p->n_threads,
		.backend = p->backend, .device = p->device, .err = why, .errlen = sizeof why,
	};
	rc = ctx_new(m->model, &cp, &m->ctx);
	if (rc < 0) {
		snprintf(err, errlen, "cannot create a context (%d slots x %d positions, %s "
			 "backend, device %d): %s", n_slots, n_ctx, be, p->device, why[0] ? why : strerror(-rc));
		goto fail;
	}
	if (gpu && !strncmp(ctx_backend_name(m->ctx), "cpu", 3)) {
		/* "auto" found no GPU: everything is host memory after all.  Nothing has
		 * touched the KV cache yet, so refusing now costs no more than before. */
		m->estimate = e.weights + e.kv + e.act;
		rc = check_host(m->estimate, &e, false, limit_left, err, errlen);
		if (rc < 0)
			goto fail;
	}
	m->tok = model_tokenizer(m->model);
	m->n_slots = n_slots;
	m->n_ctx = ctx_n_ctx(m->ctx);
	m->n_batch = p->n_batch;
	m->n_vocab = model_config(m->model)->n_vocab;
	m->chat_family = chat_detect(model_gguf(m->model), NULL);
	m->slot = calloc((size_t)n_slots, sizeof *m->slot);
	m->b_tok = calloc((size_t)m->n_batch, sizeof *m->b_tok);
	m->b_pos = calloc((size_t)m->n_batch, sizeof *m->b_pos);
	m->b_seq = calloc((size_t)m->n_batch, sizeof *m->b_seq);
	m->b_want = calloc((size_t)m->n_batch, sizeof *m->b_want);
	m->b_topk = calloc((size_t)m->n_batch, sizeof *m->b_topk);
	m->b_req = calloc((size_t)m->n_batch, sizeof *m->b_req);
	m->a_req = calloc((size_t)m->n_batch, sizeof *m->a_req);
	m->scratch = calloc((size_t)m->n_vocab, sizeof *m->scratch);
	/* greedy steps queued a step ahead where the backend runs them back to back (the
	 * GPU); QUANTD_STEPS_AHEAD=0 or 1 decides instead (1 on the CPU: the same tokens,
	 * each a step later) */
	const char *ahead = getenv("QUANTD_STEPS_AHEAD");
	m->ahead_on = ahead && *ahead ? strcmp(ahead, "0") != 0 : ctx_decode_queues(m->ctx);
	if (!m->slot || !m->b_tok || !m->b_pos || !m->b_seq || !m->b_want || !m->b_topk || !m->b_req ||
	    !m->a_req || !m->scratch) {
		snprintf(err, errlen, "out of memory");
		rc = -ENOMEM;
		goto fail;
	}
	*ret = m;
	return 0;
fail:
	registry_free(m);
	return rc;
}

void registry_free(ModelEntry *m)
{
	if (!m)
		return;
	ctx_free(m->ctx);
	model_free(m->model);
	free(m->slot);
	free(m->b_tok);
	free(m->b_pos);
	free(m->b_seq);
	free(m->b_want);
	free(m->b_topk);
	free(m->b_req);
	free(m->a_req);
	free(m->scratch);
	free(m);
}
