/* daemon/cli/cmd_bench.c: `quantd bench`: prompt and decode throughput of a model on this
 * machine, next to the roofline (measured memory read bandwidth / weight bytes read per
 * decode step).  Token ids are random (fixed seed): speed does not depend on the text. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "../engine/model.h"
#include "cli_util.h"
#include "commands.h"

typedef struct {
	const uint64_t *buf;
	size_t n;
	uint64_t sum;
} BwJob;

static void *bw_worker(void *arg)
{
	BwJob *j = arg;
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	for (size_t i = 0; i + 4 <= j->n; i += 4) {
		s0 += j->buf[i];
		s1 += j->buf[i + 1];
		s2 += j->buf[i + 2];
		s3 += j->buf[i + 3];
	}
	j->sum = s0 + s1 + s2 + s3;
	return NULL;
}

/* Read bandwidth in bytes/s with `threads` threads over a buffer far larger than the
 * caches; best of 5 passes. */
static double measure_bandwidth(int threads)
{
	const size_t bytes = 512ull << 20;
	uint64_t *buf = NULL;
	if (posix_memalign((void **)&buf, 64, bytes))
		return 0;
	memset(buf, 1, bytes);
	size_t n = bytes / 8, per = n / (size_t)threads;
	double best = 0;
	for (int pass = 0; pass < 5; pass++) {
		pthread_t th[256];
		BwJob jobs[256];
		double t0 = cli_now();
		for (int i = 0; i < threads; i++) {
			jobs[i] = (BwJob){ buf + (size_t)i * per, per, 0 };
			pthread_create(&th[i], NULL, bw_worker, &jobs[i]);
		}
		uint64_t total = 0;
		for (int i = 0; i < threads; i++) {
			pthread_join(th[i], NULL);
			total += jobs[i].sum;
		}
		double dt = cli_now() - t0;
		if (total == 42) /* keeps the sums alive */
			fputc(' ', stderr);
		if ((double)(per * (size_t)threads * 8) / dt > best)
			best = (double)(per * (size_t)threads * 8) / dt;
	}
	free(buf);
	return best;
}

static int parse_list(const char *s, int *out, int cap)
{
	int n = 0;
	char *dup = strdup(s), *save = NULL;
	if (!dup)
		return -ENOMEM;
	for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		long v;
		if (n == cap || cli_parse_long(t, 1, 4096, &v) < 0) {
			free(dup);
			return -EINVAL;
		}
		out[n++] = (int)v;
	}
	free(dup);
	return n;
}

int cmd_bench(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, 0, 'm' }, { "batch", required_argument, 0, 'B' },
		{ "prompt", required_argument, 0, 'p' }, { "gen", required_argument, 0, 'n' },
		{ "threads", required_argument, 0, 't' }, { "json", no_argument, 0, 'j' },
		{ "reps", required_argument, 0, 'r' }, { "help", no_argument, 0, 'h' },
		{ "backend", required_argument, 0, 'k' }, { "device", required_argument, 0, 'd' },
		{ "bandwidth", required_argument, 0, 'w' }, { "rows", required_argument, 0, 'o' },
		{ 0, 0, 0, 0 },
	};
	const char *path = NULL;
	int batches[16] = { 1 }, n_batches = 1;
	long n_prompt = 512, n_gen = 64, threads = 0, reps = 3, device = 0;
	float bw_gbs = 0;
	const char *backend = "cpu";
	/* what each decode row brings back: greedy ids (the daemon's greedy requests), the
	 * top 40 candidates (sampled requests with top_k), or whole logits rows */
	uint8_t rows_want = WANT_ARGMAX;
	bool json = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:B:p:n:t:r:jhk:d:w:o:", opts, NULL)) != -1) {
		int r = 0;
		switch (c) {
		case 'm': path = optarg; break;
		case 'B': r = n_batches = parse_list(optarg, batches, 16); break;
		case 'p': r = cli_parse_long(optarg, 1, 65536, &n_prompt); break;
		case 'n': r = cli_parse_long(optarg, 1, 65536, &n_gen); break;
		case 't': r = cli_parse_long(optarg, 0, 256, &threads); break;
		case 'r': r = cli_parse_long(optarg, 1, 100, &reps); break;
		case 'j': json = true; break;
		case 'k':
			backend = optarg;
			if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda") && strcmp(optarg, "auto"))
				r = -EINVAL;
			break;
		case 'd': r = cli_parse_long(optarg, 0, 1024, &device); break;
		case 'w': r = cli_parse_float(optarg, 1, 1e6f, &bw_gbs); break;
		case 'o':
			rows_want = !strcmp(optarg, "argmax") ? WANT_ARGMAX : !strcmp(optarg, "topk") ? WANT_TOPK
				  : !strcmp(optarg, "logits")				    ? WANT_LOGITS
											    : WANT_NONE;
			r = rows_want == WANT_NONE ? -EINVAL : 0;
			break;
		case 'h':
			printf("usage: quantd bench -m MODEL [--batch 1,8,32] [--prompt 512] [--gen 64] [--threads N] [--reps 3] [--json]\n"
			       "                    [--backend cpu|cuda|auto] [--device N] [--bandwidth GB/s]\n"
			       "                    [--rows argmax|topk|logits]\n"
			       "  --bandwidth: memory bandwidth for the roofline (default: measured on the CPU;\n"
			       "               on a GPU backend 4220, the H200's measured copy bandwidth)\n"
			       "  --rows: what each decode step brings back per sequence: its greedy id (default,\n"
			       "          as for greedy requests), its 40 best logits (sampling with top_k), or\n"
			       "          the whole logits row\n");
			return 0;
		default: return 2;
		}
		if (r < 0) {
			fprintf(stderr, "quantd bench: bad value '%s'\n", optarg);
			return 2;
		}
	}
	if (!path || optind != argc) {
		fprintf(stderr, "usage: quantd bench -m MODEL [--batch 1,8,32] [--prompt 512] [--gen 64] [--json]\n");
		return 2;
	}
	char err[512];
	Model *m = NULL;
	double t0 = cli_now();
	if (model_load(path, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "quantd: %s: %s\n", path, err);
		return 1;
	}
	double t_load = cli_now() - t0;
	const ModelConfig *cfg = model_config(m);
	int max_b = 1;
	for (int i = 0; i < n_batches; i++)
		if (batches[i] > max_b)
			max_b = batches[i];
	int n_thr = threads ? (int)threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
	const int n_ctx = (int)(n_prompt > 16 + n_gen ? n_prompt : 16 + n_gen) + 1;
	char why[320] = "";
	ContextParams cp = { .n_seq = max_b, .n_ctx = n_ctx, .n_batch = (int)(n_prompt > max_b ? n_prompt : max_b),
			     .n_threads = n_thr, .backend = backend, .device = (int)device, .err = why,
			     .errlen = sizeof why };
	Context *ctx = NULL;
	int r = ctx_new(m, &cp, &ctx);
	if (r < 0) {
		fprintf(stderr, "quantd bench: context (backend %s): %s\n", backend,
			r == -ENODEV ? "no usable GPU" : why[0] ? why : strerror(-r));
		model_free(m);
		return 1;
	}
	const char *be_name = ctx_backend_name(ctx);
	const bool on_gpu = !strncmp(be_name, "cuda", 4);
	/* A GPU's bandwidth cannot be measured from here: the H200's measured device copy
	 * bandwidth (issue 4) unless given. */
	double bw = bw_gbs > 0 ? bw_gbs * 1e9 : on_gpu ? 4.22e12 : measure_bandwidth(n_thr);
	uint64_t wbytes = model_weight_bytes(m);
	double roof = bw / (double)wbytes;
	/* positions and slots also hold the 16-token prompts of all max_b sequences */
	const size_t n_idx = (size_t)(cp.n_batch > 16 * max_b ? cp.n_batch : 16 * max_b);
	int32_t *tok = malloc(sizeof(int32_t) * (size_t)cp.n_batch), *pos = malloc(sizeof(int32_t) * n_idx),
		*seq = malloc(sizeof(int32_t) * n_idx);
	uint8_t *want = malloc((size_t)cp.n_batch);
	int32_t *topk = malloc(sizeof(int32_t) * (size_t)cp.n_batch);
	if (!tok || !pos || !seq || !want || !topk) {
		r = -ENOMEM;
		goto out;
	}
	uint64_t rng = 12345;
	for (int i = 0; i < cp.n_batch; i++) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		tok[i] = (int32_t)((rng >> 33) % (uint64_t)cfg->n_vocab);
	}

	/* Prompt: one sequence, n_prompt tokens in one batch; best of reps. */
	double best_pp = 1e30;
	for (int rep = 0; rep < reps && r >= 0; rep++) {
		ctx_seq_truncate(ctx, 0, 0);
		for (int i = 0; i < n_prompt; i++) {
			pos[i] = i;
			seq[i] = 0;
		}
		Batch b = { .n_tokens = (int)n_prompt, .token = tok, .pos = pos, .seq = seq };
		double t = cli_now();
		r = ctx_decode(ctx, &b);
		t = cli_now() - t;
		if (t < best_pp)
			best_pp = t;
	}
	if (r < 0)
		goto out;
	double pp_tok_s = (double)n_prompt / best_pp;
	struct utsname un;
	uname(&un);
	if (!json) {
		printf("model: %s (%s), weights read per token %.1f MiB, load %.0f ms\n", model_name(m), path,
		       (double)wbytes / (1 << 20), t_load * 1e3);
		printf("backend: %s\n", be_name);
		printf("machine: %s, %d threads, %s bandwidth %.1f GB/s -> roofline %.1f tok/s at batch 1\n",
		       un.machine, n_thr, bw_gbs > 0 ? "given" : on_gpu ? "reference (H200 copy)" : "measured read",
		       bw / 1e9, roof);
		printf("\n| batch | prompt tok/s (%ld) | decode tok/s | per-sequence tok/s | %% of roofline |\n", n_prompt);
		printf("|---:|---:|---:|---:|---:|\n");
	}
	for (int bi = 0; bi < n_batches && r >= 0; bi++) {
		const int B = batches[bi];
		double best = 1e30;
		for (int rep = 0; rep < reps && r >= 0; rep++) {
			/* A 16-token prompt per sequence, then n_gen decode steps of B tokens. */
			int n = 0;
			for (int s = 0; s < B; s++) {
				ctx_seq_truncate(ctx, s, 0);
				for (int i = 0; i < 16; i++, n++) {
					pos[n] = i;
					seq[n] = s;
				}
			}
			for (int off = 0; off < n && r >= 0; off += cp.n_batch) {
				int cnt = n - off < cp.n_batch ? n - off : cp.n_batch;
				Batch b = { .n_tokens = cnt, .token = tok, .pos = pos + off, .seq = seq + off };
				r = ctx_decode(ctx, &b);
			}
			double t = cli_now();
			for (int step = 0; step < n_gen && r >= 0; step++) {
				for (int s = 0; s < B; s++) {
					pos[s] = 16 + step;
					seq[s] = s;
					want[s] = rows_want;
					topk[s] = 40;
				}
				Batch b = { .n_tokens = B, .token = tok, .pos = pos, .seq = seq, .want_logits = want,
					    .top_k = topk };
				r = ctx_decode(ctx, &b);
			}
			t = cli_now() - t;
			if (t < best)
				best = t;
		}
		if (r < 0)
			break;
		double tg = (double)B * (double)n_gen / best;
		if (json)
			printf("{\"gpu\": %s%s%s, \"backend\": \"%s\", \"cpu\": \"%s\", \"threads\": %d, \"model\": \"%s\", "
			       "\"type\": \"%s\", \"batch\": %d, "
			       "\"prefill_tok_s\": %.1f, \"decode_tok_s\": %.2f, \"mem_gib\": %.3f, \"roofline_tok_s\": %.1f, "
			       "\"vram_gib\": %.3f, \"bandwidth_gb_s\": %.2f, \"weight_bytes\": %llu, \"load_ms\": %.0f, "
			       "\"rows\": \"%s\"}\n",
			       on_gpu ? "\"" : "", on_gpu ? be_name : "null", on_gpu ? "\"" : "", be_name, un.machine, n_thr,
			       model_name(m), model_name(m), B, pp_tok_s, tg,
			       (double)(wbytes + ctx_kv_bytes(ctx)) / (1 << 30), roof,
			       on_gpu ? (double)(wbytes + ctx_kv_bytes(ctx)) / (1 << 30) : 0.0, bw / 1e9,
			       (unsigned long long)wbytes, t_load * 1e3,
			       rows_want == WANT_ARGMAX ? "argmax" : rows_want == WANT_TOPK ? "topk" : "logits");
		else
			printf("| %d | %.1f | %.1f | %.1f | %.0f%% |\n", B, pp_tok_s, tg, tg / B, 100.0 * (tg / B) / roof);
	}
out:
	if (r < 0)
		fprintf(stderr, "quantd bench: %s\n", strerror(-r));
	free(tok);
	free(pos);
	free(seq);
	free(want);
	free(topk);
	ctx_free(ctx);
	model_free(m);
	return r < 0 ? 1 : 0;
}
