/* tests/daemon/test-load.c: LoadModel at run time, against the real daemon and model.
 * The load runs on a loader thread while the engine thread keeps generating for the
 * models already loaded; a second model from the same weights generates the same greedy
 * tokens; loads in flight are protected against duplicates and unloads.
 *
 * Loading SmolLM2-135M on the CPU backend takes about 10 ms (the weights are only mapped),
 * too short to see anything happen meanwhile.  So the concurrency tests load a copy of the
 * model whose header also carries a million extra metadata keys: a valid GGUF with the
 * same tokenizer and weights that the daemon really has to parse and index (twice: once
 * for the memory estimate, once to load), which takes a few hundred milliseconds.  How
 * long it took is measured, and checked to be long enough for the checks to mean
 * something. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/quantd.h"
#include "tests/daemon/harness.h"
#include "tests/testutil.h"

#define PROMPT "Once upon a time, in a small village,"
#define N_REF 24
#define N_PAD_KEYS 1000000     /* extra metadata keys in the slow copy (GGUF_MAX_KV is 2^20) */
#define PAD_ALIGN 65536        /* the largest alignment a GGUF may declare */
#define MIN_LOAD_MS 100        /* a load shorter than this proves nothing */
#define MAX_TOKS 8192

static Daemon D;
static char model_abs[PATH_MAX];
static int32_t ref[N_REF];
static int ref_n;

/* The daemon, and the greedy reference tokens of PROMPT on its first model.  One engine
 * thread: on a 2-core machine a CPU backend pool as wide as the machine, spinning at its
 * barriers, stalls for whole scheduler slices whenever a third thread (the loader) runs,
 * and the pauses measured would be the pool's rather than the engine loop's. */
static bool setup(const char *test)
{
	static const char *const extra[] = { "--slots", "4", "--ctx", "1024", "--threads", "1", NULL };
	if (!daemon_ensure(&D, test, extra))
		return false;
	if (!model_abs[0] && !realpath(tu_model_path(), model_abs))
		return false;
	if (!ref_n && greedy_run(D.sock, NULL, PROMPT, N_REF, ref, &ref_n, NULL, 0) < 0)
		ref_n = 0;
	return ref_n > 0;
}

static int put(FILE *f, const void *p, size_t n)
{
	return fwrite(p, 1, n, f) == n ? 0 : -EIO;
}

static int put_kv_head(FILE *f, const char *key, uint32_t type)
{
	uint64_t kl = strlen(key);
	int r = put(f, &kl, 8);
	if (r == 0)
		r = put(f, key, kl);
	if (r == 0)
		r = put(f, &type, 4);
	return r;
}

/* Writes DST: SRC (a GGUF v2/v3 file) with N_PAD_KEYS u8 keys and one string key added in
 * front of its own key/values.  The added bytes are a multiple of PAD_ALIGN, so the
 * tensor infos and data that follow, copied unchanged, stay aligned.  Returns 0 or
 * -errno. */
static int write_padded_copy(const char *src, const char *dst)
{
	FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
	uint8_t hdr[24];
	uint32_t ver;
	uint64_t n_kv, added = 0;
	int r = -EIO;
	if (!in || !out || fread(hdr, 1, sizeof hdr, in) != sizeof hdr)
		goto out;
	memcpy(&ver, hdr + 4, 4);
	memcpy(&n_kv, hdr + 16, 8);
	if (memcmp(hdr, "GGUF", 4) != 0 || (ver != 2 && ver != 3)) {
		r = -EBADMSG;
		goto out;
	}
	n_kv += N_PAD_KEYS + 1;
	memcpy(hdr + 16, &n_kv, 8);
	if ((r = put(out, hdr, sizeof hdr)) < 0)
		goto out;
	for (int i = 0; i < N_PAD_KEYS && r == 0; i++) {
		char key[64];
		uint8_t v = (uint8_t)i;
		snprintf(key, sizeof key, "quantd.test.padding.%07d", i);
		if ((r = put_kv_head(out, key, 0 /* GGUF_U8 */)) == 0)
			r = put(out, &v, 1);
		added += 8 + strlen(key) + 4 + 1;
	}
	static const char fill_key[] = "quantd.test.fill";
	added += 8 + strlen(fill_key) + 4 + 8;
	uint64_t fill = (PAD_ALIGN - added % PAD_ALIGN) % PAD_ALIGN;
	char *zeros = calloc(1, fill + 1);
	if (r == 0 && !zeros)
		r = -ENOMEM;
	if (r == 0 && (r = put_kv_head(out, fill_key, 8 /* GGUF_STRING */)) == 0 &&
	    (r = put(out, &fill, 8)) == 0)
		r = put(out, zeros, fill);
	free(zeros);
	char buf[1 << 16];
	size_t n;
	while (r == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
		r = put(out, buf, n);
out:
	if (in)
		fclose(in);
	if (out && fclose(out) != 0 && r == 0)
		r = -EIO;
	return r;
}

/* The padded copy under the private temporary directory as NAME, into PATH: the copy a
 * previous test made is renamed (a fresh path keeps its STATUS=Loading line apart from
 * the earlier ones), else one is written.  Returns 0 or -errno. */
static int slow_copy(const char *name, char *path, size_t cap)
{
	static char made[PATH_MAX];
	const char *p = tu_tmp_path(name);
	if (!p)
		return -EIO;
	snprintf(path, cap, "%s", p);
	int r = made[0] && rename(made, path) == 0 ? 0 : write_padded_copy(model_abs, path);
	snprintf(made, sizeof made, "%s", r == 0 ? path : "");
	return r;
}

/* ---- a stream that records when each token was written ---- */

typedef struct {
	qd_client *c;
	atomic_int n;              /* tokens recorded so far */
	atomic_bool stop;
	uint64_t t[MAX_TOKS];      /* t_daemon_ns of each token */
	int err;                   /* first client error, or 0 */
} Stream;

/* Generates PROMPT greedily on the first model, again and again, until told to stop
 * (then cancels and waits for the final record). */
static void *stream_main(void *arg)
{
	Stream *s = arg;
	qd_gen_params p;
	qd_gen_params_init(&p);
	p.max_tokens = 900;
	while (!atomic_load(&s->stop)) {
		uint64_t id;
		int rc = qd_generate(s->c, PROMPT, &p, &id);
		bool cancelled = false;
		qd_event ev = { 0 };
		while (rc == 0 && ev.kind != QD_EVENT_FINAL) {
			if (!cancelled && atomic_load(&s->stop)) {
				cancelled = true;
				rc = qd_cancel(s->c, id);
				if (rc == -ENOENT) /* ended meanwhile: its final record is coming */
					rc = 0;
				continue;
			}
			rc = qd_next(s->c, &ev, 30000);
			int i = atomic_load(&s->n);
			if (rc == 0 && ev.kind == QD_EVENT_TOKEN && i < MAX_TOKS) {
				s->t[i] = ev.t_daemon_ns;
				atomic_store(&s->n, i + 1);
			}
		}
		if (rc < 0) {
			s->err = rc;
			break;
		}
	}
	return NULL;
}

/* LoadModel from its own client and thread, timed from request to reply. */
typedef struct {
	const char *path, *name;
	uint32_t n_ctx;
	int rc;
	char msg[256];
	uint64_t t0, t1;
	qd_model_info info;
} LoadCall;

static void *load_main(void *arg)
{
	LoadCall *l = arg;
	qd_client *c;
	l->rc = qd_connect(D.sock, &c, l->msg, sizeof l->msg);
	if (l->rc < 0)
		return NULL;
	l->t0 = mono_ns();
	l->rc = qd_load(c, l->path, l->name, 1, l->n_ctx, &l->info);
	l->t1 = mono_ns();
	snprintf(l->msg, sizeof l->msg, "%s", qd_errmsg(c));
	qd_close(c);
	return NULL;
}

static bool same_as_ref(const char *model)
{
	int32_t t[N_REF];
	int n = 0;
	int rc = greedy_run(D.sock, model, PROMPT, N_REF, t, &n, NULL, 0);
	if (rc < 0 || n != ref_n || memcmp(t, ref, (size_t)n * sizeof *t) != 0) {
		printf("\n    model %s: rc %d, %d tokens, %s the first model's %d\n", model, rc, n,
		       rc == 0 && n == ref_n ? "different from" : "vs", ref_n);
		return false;
	}
	return true;
}

static int n_models(qd_client *c)
{
	qd_model_info *mi = NULL;
	size_t n = 0;
	int rc = qd_models(c, &mi, &n);
	free(mi);
	return rc < 0 ? rc : (int)n;
}

static void test_same_file(void)
{
	if (!setup("second model from the same file"))
		return;
	qd_client *c;
	CU_ASSERT_EQUAL_FATAL(qd_connect(D.sock, &c, NULL, 0), 0);
	qd_model_info info;
	notify_drain(&D); /* each load and unload sends a STATUS= or two */
	CU_ASSERT_EQUAL_FATAL(qd_load(c, model_abs, "twin", 2, 512, &info), 0);
	notify_drain(&D);
	CU_ASSERT_STRING_EQUAL(info.name, "twin");
	CU_ASSERT_EQUAL(info.n_slots, 2);
	CU_ASSERT_EQUAL(info.n_ctx, 512);
	CU_ASSERT_EQUAL(n_models(c), 2);
	CU_ASSERT_TRUE(same_as_ref("twin"));
	/* a duplicate name is refused, loaded or derived from the file name */
	CU_ASSERT_EQUAL(qd_load(c, model_abs, "twin", 1, 256, NULL), -EEXIST);
	notify_drain(&D);
	CU_ASSERT_EQUAL(qd_load(c, model_abs, NULL, 1, 256, NULL), -EEXIST);
	CU_ASSERT_PTR_NOT_NULL(strstr(qd_errmsg(c), "loaded already"));
	notify_drain(&D);
	CU_ASSERT_EQUAL(qd_unload(c, "twin"), 0);
	notify_drain(&D);
	CU_ASSERT_EQUAL(qd_unload(c, "twin"), -ENOENT);
	CU_ASSERT_EQUAL(n_models(c), 1);
	/* a file that is not there fails the load, not the daemon */
	CU_ASSERT_EQUAL(qd_load(c, "/nonexistent/model.gguf", "ghost", 1, 256, NULL), -ENOENT);
	notify_drain(&D);
	CU_ASSERT_EQUAL(n_models(c), 1);
	qd_close(c);
	notify_drain(&D);
	CU_ASSERT_TRUE(daemon_healthy(D.sock));
}

static void test_generate_during_load(void)
{
	if (!setup("generation during a load"))
		return;
	char slow_path[PATH_MAX];
	CU_ASSERT_EQUAL_FATAL(slow_copy("slow.gguf", slow_path, sizeof slow_path), 0);
	notify_drain(&D);

	static Stream s; /* big: not on the stack */
	memset(&s, 0, sizeof s);
	CU_ASSERT_EQUAL_FATAL(qd_connect(D.sock, &s.c, NULL, 0), 0);
	pthread_t st, lt;
	CU_ASSERT_EQUAL_FATAL(pthread_create(&st, NULL, stream_main, &s), 0);
	for (int i = 0; i < 3000 && atomic_load(&s.n) < 4 && !s.err; i++)
		usleep(10000);
	CU_ASSERT(atomic_load(&s.n) >= 4);

	LoadCall l = { .path = slow_path, .name = "slow", .n_ctx = 512 };
	CU_ASSERT_EQUAL_FATAL(pthread_create(&lt, NULL, load_main, &l), 0);
	/* STATUS=Loading comes as the load starts: what follows is asked while it runs */
	char want[PATH_MAX + 32];
	snprintf(want, sizeof want, "STATUS=Loading %s", slow_path);
	bool started = notify_wait(&D, want, 30000);
	CU_ASSERT_TRUE(started);
	qd_client *c;
	CU_ASSERT_EQUAL_FATAL(qd_connect(D.sock, &c, NULL, 0), 0);
	int unload_rc = qd_unload(c, "slow");
	char unload_msg[256];
	snprintf(unload_msg, sizeof unload_msg, "%s", qd_errmsg(c));
	int dup_rc = qd_load(c, slow_path, "slow", 1, 256, NULL);
	int other_rc = qd_load(c, model_abs, "other", 1, 256, NULL);
	char other_msg[256];
	snprintf(other_msg, sizeof other_msg, "%s", qd_errmsg(c));
	qd_gen_params p;
	qd_gen_params_init(&p);
	p.model = "slow";
	p.max_tokens = 1;
	uint64_t id;
	int gen_rc = qd_generate(c, PROMPT, &p, &id);
	uint64_t t_answered = mono_ns();
	CU_ASSERT_EQUAL(pthread_join(lt, NULL), 0);
	notify_drain(&D);
	atomic_store(&s.stop, true);
	CU_ASSERT_EQUAL(pthread_join(st, NULL), 0);
	qd_close(s.c);

	CU_ASSERT_EQUAL(l.rc, 0);
	if (l.rc < 0)
		printf("\n    LoadModel: %s\n", l.msg);
	CU_ASSERT_EQUAL(s.err, 0);
	/* the engine answered all of these while the load was still running */
	CU_ASSERT(t_answered < l.t1);
	CU_ASSERT_EQUAL(unload_rc, -EBUSY);
	CU_ASSERT_PTR_NOT_NULL(strstr(unload_msg, "being loaded"));
	CU_ASSERT_EQUAL(dup_rc, -EEXIST);
	CU_ASSERT_EQUAL(other_rc, -EBUSY);
	CU_ASSERT_PTR_NOT_NULL(strstr(other_msg, "slow"));
	CU_ASSERT_EQUAL(gen_rc, -ENOENT);

	/* tokens kept coming while the model loaded: no pause as long as half the load */
	const uint64_t load_ns = l.t1 - l.t0;
	uint64_t prev = l.t0, gap = 0;
	int during = 0, n = atomic_load(&s.n);
	for (int i = 0; i < n; i++) {
		if (s.t[i] <= l.t0 || s.t[i] >= l.t1)
			continue;
		during++;
		if (s.t[i] - prev > gap)
			gap = s.t[i] - prev;
		prev = s.t[i];
	}
	if (l.t1 - prev > gap)
		gap = l.t1 - prev;
	printf("\n    load took %.0f ms; %d tokens written meanwhile, longest pause %.1f ms\n",
	       load_ns / 1e6, during, gap / 1e6);
	CU_ASSERT(load_ns >= MIN_LOAD_MS * 1000000ull); /* else raise N_PAD_KEYS */
	CU_ASSERT(during >= 2);
	CU_ASSERT(gap < load_ns / 2);

	/* the padded copy holds the same model: same greedy tokens, then it unloads */
	CU_ASSERT_TRUE(same_as_ref("slow"));
	CU_ASSERT_EQUAL(qd_unload(c, "slow"), 0);
	notify_drain(&D);
	CU_ASSERT_EQUAL(n_models(c), 1);
	qd_close(c);
	notify_drain(&D);
	CU_ASSERT_TRUE(daemon_healthy(D.sock));
}

/* SIGTERM while a load is in flight: the load is answered, the daemon exits cleanly. */
static void test_sigterm_during_load(void)
{
	if (!setup("SIGTERM during a load"))
		return;
	char slow_path[PATH_MAX];
	CU_ASSERT_EQUAL_FATAL(slow_copy("late.gguf", slow_path, sizeof slow_path), 0);
	notify_drain(&D);
	LoadCall l = { .path = slow_path, .name = "late", .n_ctx = 256 };
	pthread_t lt;
	CU_ASSERT_EQUAL_FATAL(pthread_create(&lt, NULL, load_main, &l), 0);
	char want[PATH_MAX + 32];
	snprintf(want, sizeof want, "STATUS=Loading %s", slow_path);
	CU_ASSERT_TRUE(notify_wait(&D, want, 30000));
	kill(D.pid, SIGTERM);
	CU_ASSERT_EQUAL(pthread_join(lt, NULL), 0);
	/* answered (stopping) or, when the load won the race, loaded; never left hanging */
	CU_ASSERT(l.rc == -ESHUTDOWN || l.rc == 0);
	if (l.rc == -ESHUTDOWN) {
		CU_ASSERT_PTR_NOT_NULL(strstr(l.msg, "stopping"));
		/* the stop waited for the load, and asked systemd for the time to do so */
		CU_ASSERT_TRUE(notify_wait(&D, "STATUS=Stopping: waiting for the load of late", 5000));
		CU_ASSERT_PTR_NOT_NULL(strstr(D.notes, "EXTEND_TIMEOUT_USEC=30000000"));
	}
	CU_ASSERT_EQUAL(daemon_stop(&D), 0);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	static const TuTest tests[] = {
		{ .name = "a second model from the same file generates the same tokens", .fn = test_same_file, .skip_if = cannot_run },
		{ .name = "generation goes on while LoadModel runs", .fn = test_generate_during_load, .skip_if = cannot_run },
		{ .name = "SIGTERM during a load answers it and exits cleanly", .fn = test_sigterm_during_load, .skip_if = cannot_run },
		{ .name = NULL },
	};
	int rc = tu_main("daemon-load", tests);
	if (D.pid > 0)
		daemon_stop(&D);
	tu_tmp_cleanup();
	return rc;
}
