/* tests/daemon/test-e2e.c: the real daemon with the real model, through libquantd and
 * through raw sockets and rings playing a hostile client.  The daemon is
 * $QD_BUILD/tests/daemon/qd-serve (`quantd serve` as its own binary), started and stopped
 * by harness.c; NOTIFY_SOCKET points at a datagram socket this test reads. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/quantd.h"
#include "proto/frame.h"
#include "proto/quantd.pb-c.h"
#include "proto/ring.h"
#include "tests/daemon/harness.h"
#include "tests/testutil.h"

#define N_PROMPTS 4
#define N_GEN 24
#define N_CLIENTS 16

static Daemon D; /* the daemon most tests share */
static const char *const prompts[N_PROMPTS] = {
	"The capital of France is",
	"<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
	"def fibonacci(n):",
	"Once upon a time, in a small village,",
};
static int32_t ref[N_PROMPTS][N_GEN];
static int ref_n[N_PROMPTS];
static bool ref_ok;

static bool ensure_daemon(const char *test)
{
	static const char *const extra[] = { "--slots", "16", "--ctx", "512", "--queue", "64",
					     "--max-sessions-per-uid", "256", NULL };
	return daemon_ensure(&D, test, extra);
}

/* Greedy tokens of PROMPT through a fresh session (and their text into TEXT, if given). */
static int run_greedy_text(const char *sock, const char *prompt, int32_t *toks, int *ret_n, char *text, size_t cap)
{
	return greedy_run(sock, NULL, prompt, N_GEN, toks, ret_n, text, cap);
}

static int run_greedy(const char *sock, const char *prompt, int32_t *toks, int *ret_n)
{
	return run_greedy_text(sock, prompt, toks, ret_n, NULL, 0);
}

/* What `quantd run -p PROMPT -n N_GEN SAMPLING` prints (the generated text, then one
 * newline of its own). */
static int quantd_run_text(const char *prompt, const char *sampling, char *out, size_t cap)
{
	char cmd[1024], *q = cmd;
	q += snprintf(cmd, sizeof cmd, "%s/quantd run -m %s -n %d %s -t 2 -p '", tu_build_dir(), tu_model_path(), N_GEN,
		      sampling);
	for (const char *p = prompt; *p && q < cmd + sizeof cmd - 8; p++) {
		if (*p == '\'')
			q += sprintf(q, "'\\''");
		else
			*q++ = *p;
	}
	strcpy(q, "' 2>/dev/null");
	FILE *f = popen(cmd, "r");
	if (!f)
		return -errno;
	size_t n = fread(out, 1, cap - 1, f);
	int st = pclose(f);
	out[n] = 0;
	if (n && out[n - 1] == '\n')
		out[n - 1] = 0;
	return st == 0 ? 0 : -EIO;
}

static void test_ready_after_load(void)
{
	if (!ensure_daemon("ready after load"))
		return;
	const char *load = strstr(D.notes, "STATUS=Loading");
	const char *ready = strstr(D.notes, "READY=1");
	CU_ASSERT_PTR_NOT_NULL(load);
	CU_ASSERT_PTR_NOT_NULL(ready);
	CU_ASSERT(load && ready && load < ready);
	CU_ASSERT_PTR_NOT_NULL(strstr(D.notes, "EXTEND_TIMEOUT_USEC="));
	/* the engine loop feeds the watchdog only when systemd asks; READY came with a STATUS */
	CU_ASSERT_PTR_NOT_NULL(strstr(D.notes, "STATUS=Serving 1 model"));
}

static void test_reference(void)
{
	if (!ensure_daemon("reference run"))
		return;
	ref_ok = true;
	for (int i = 0; i < N_PROMPTS; i++) {
		char text[4096], cli[4096];
		CU_ASSERT_EQUAL(run_greedy_text(D.sock, prompts[i], ref[i], &ref_n[i], text, sizeof text), 0);
		CU_ASSERT(ref_n[i] > 0);
		ref_ok &= ref_n[i] > 0;
		/* the daemon's greedy text is what `quantd run` prints for the same prompt */
		CU_ASSERT_EQUAL(quantd_run_text(prompts[i], "--temp 0", cli, sizeof cli), 0);
		if (strcmp(text, cli) != 0)
			printf("\n    prompt %d: daemon \"%s\" vs quantd run \"%s\"", i, text, cli);
		CU_ASSERT_STRING_EQUAL(text, cli);
	}
	/* greedy is deterministic: a second run gives the same tokens */
	int32_t again[N_GEN];
	int n;
	CU_ASSERT_EQUAL(run_greedy(D.sock, prompts[0], again, &n), 0);
	CU_ASSERT_EQUAL(n, ref_n[0]);
	CU_ASSERT_EQUAL(memcmp(again, ref[0], (size_t)n * 4), 0);
}

/* A seeded sampled generation (temperature, top-k, top-p, min-p) through the daemon gives
 * the text `quantd run` prints with the same settings and seed: the daemon's sampler path
 * (top-k candidates from the backend, here the CPU thread pool) draws
 * the same tokens from the same logits. */
static void test_seeded_sampling(void)
{
	if (!ensure_daemon("seeded sampling"))
		return;
	static const uint64_t seeds[2] = { 7, 1234567 };
	for (int k = 0; k < 2; k++) {
		const char *prompt = prompts[k == 0 ? 3 : 1];
		qd_gen_params p;
		qd_gen_params_init(&p);
		p.temperature = 0.9f;
		p.top_k = 40;
		p.top_p = 0.9f;
		p.min_p = 0.05f;
		p.seed = seeds[k];
		p.max_tokens = N_GEN;
		int32_t toks[N_GEN];
		int n = 0;
		char text[4096], cli[4096], sampling[160];
		CU_ASSERT_EQUAL(gen_run(D.sock, &p, prompt, toks, &n, text, sizeof text), 0);
		snprintf(sampling, sizeof sampling,
			 "--temp 0.9 --top-k 40 --top-p 0.9 --min-p 0.05 --repeat-penalty 1 --seed %llu",
			 (unsigned long long)seeds[k]);
		CU_ASSERT_EQUAL(quantd_run_text(prompt, sampling, cli, sizeof cli), 0);
		if (strcmp(text, cli) != 0)
			printf("\n    seed %llu: daemon \"%s\" vs quantd run \"%s\"", (unsigned long long)seeds[k], text, cli);
		CU_ASSERT_STRING_EQUAL(text, cli);
		CU_ASSERT(strlen(text) > 0 && n > 0);
	}
}

/* Tokenize/Detokenize: the ids are the ones Generate counts for the same prompt, text
 * comes back byte for byte, and bad input or an oversized reply fails that call only. */
static void test_tokenize(void)
{
	if (!ensure_daemon("tokenize"))
		return;
	qd_client *c;
	CU_ASSERT_EQUAL_FATAL(qd_connect(D.sock, &c, NULL, 0), 0);
	qd_model_info *mi = NULL;
	size_t n_models = 0;
	CU_ASSERT_EQUAL_FATAL(qd_models(c, &mi, &n_models), 0);
	CU_ASSERT_FATAL(n_models >= 1);
	const int32_t n_vocab = (int32_t)mi[0].n_vocab;
	free(mi);

	/* the prompt length a generation reports is the tokenizer's count with BOS rules */
	for (int i = 0; i < N_PROMPTS; i++) {
		int32_t *ids = NULL;
		size_t n = 0;
		CU_ASSERT_EQUAL_FATAL(qd_tokenize(c, NULL, prompts[i], strlen(prompts[i]), true,
						  &ids, &n), 0);
		CU_ASSERT(n > 0);
		for (size_t k = 0; k < n; k++)
			CU_ASSERT(ids[k] >= 0 && ids[k] < n_vocab);
		qd_gen_params p;
		qd_gen_params_init(&p);
		p.max_tokens = 1;
		uint64_t id;
		qd_event ev = { 0 };
		CU_ASSERT_EQUAL(qd_generate(c, prompts[i], &p, &id), 0);
		while (qd_next(c, &ev, 60000) == 0 && ev.kind != QD_EVENT_FINAL)
			;
		CU_ASSERT_EQUAL(ev.kind, QD_EVENT_FINAL);
		CU_ASSERT_EQUAL(ev.n_prompt, (uint32_t)n);
		free(ids);
	}

	static const char *const texts[] = {
		"Hello world", " leading space, tabs\tand\nnewlines",
		"caf\xc3\xa9 \xe2\x82\xac 100 \xf0\x9f\x99\x82",
		"<|im_start|>user\nhi<|im_end|>\n",
	};
	for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
		int32_t *ids = NULL;
		size_t n = 0;
		char *back = NULL;
		size_t len = 0;
		CU_ASSERT_EQUAL_FATAL(qd_tokenize(c, "", texts[i], strlen(texts[i]), false, &ids,
						  &n), 0);
		CU_ASSERT(n > 0 && n <= strlen(texts[i]));
		CU_ASSERT_EQUAL(qd_detokenize(c, NULL, ids, n, true, &back, &len), 0);
		CU_ASSERT_EQUAL(len, strlen(texts[i]));
		if (back)
			CU_ASSERT_STRING_EQUAL(back, texts[i]);
		free(back);
		free(ids);
	}

	/* errors end the call, not the session */
	char *text = NULL;
	size_t len = 0;
	int32_t bad = n_vocab;
	CU_ASSERT_EQUAL(qd_detokenize(c, NULL, &bad, 1, false, &text, &len), -EINVAL);
	int32_t *ids = NULL;
	size_t n = 0;
	CU_ASSERT_EQUAL(qd_tokenize(c, "no-such-model", "x", 1, false, &ids, &n), -ENOENT);
	/* ids that fit a request but whose text does not fit a reply: a control token
	 * (one small id, 12 bytes shown) repeated */
	static const char im_start[] = "<|im_start|>";
	CU_ASSERT_EQUAL_FATAL(qd_tokenize(c, NULL, im_start, strlen(im_start), false, &ids, &n), 0);
	CU_ASSERT_EQUAL_FATAL(n, 1);
	const size_t rep = QD_MSG_MAX / strlen(im_start) + 1;
	int32_t *many = malloc(rep * sizeof *many);
	CU_ASSERT_FATAL(many != NULL);
	for (size_t k = 0; k < rep; k++)
		many[k] = ids[0];
	CU_ASSERT_EQUAL(qd_detokenize(c, NULL, many, rep, true, &text, &len), -E2BIG);
	free(many);
	free(ids);
	qd_health h;
	CU_ASSERT_EQUAL(qd_get_health(c, &h), 0); /* the session still works */
	qd_close(c);
}

/* Child: all prompts at once on one session; exit 0 when every token matches. */
static int concurrent_child(void)
{
	qd_client *c;
	if (qd_connect(D.sock, &c, NULL, 0) < 0)
		return 2;
	qd_gen_params p;
	qd_gen_params_init(&p);
	p.max_tokens = N_GEN;
	uint64_t ids[N_PROMPTS];
	int got[N_PROMPTS] = { 0 }, done = 0, bad = 0;
	for (int i = 0; i < N_PROMPTS; i++)
		if (qd_generate(c, prompts[i], &p, &ids[i]) < 0)
			return 3;
	while (done < N_PROMPTS) {
		qd_event ev;
		if (qd_next(c, &ev, 120000) < 0)
			return 4;
		for (int i = 0; i < N_PROMPTS; i++) {
			if (ev.request_id != ids[i])
				continue;
			if (ev.kind == QD_EVENT_FINAL) {
				done++;
				bad += got[i] != ref_n[i];
			} else {
				bad += got[i] >= ref_n[i] || ev.token != ref[i][got[i]];
				got[i]++;
			}
		}
	}
	qd_close(c);
	return bad ? 1 : 0;
}

static void test_concurrent_clients(void)
{
	if (!ensure_daemon("16 clients x 4 requests") || !ref_ok)
		return;
	pid_t kids[N_CLIENTS];
	uint64_t t0 = mono_ms();
	for (int i = 0; i < N_CLIENTS; i++) {
		kids[i] = fork();
		if (kids[i] == 0)
			_exit(concurrent_child());
	}
	int ok = 0, mismatch = 0;
	for (int i = 0; i < N_CLIENTS; i++) {
		int st;
		waitpid(kids[i], &st, 0);
		if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
			ok++;
		else if (WIFEXITED(st) && WEXITSTATUS(st) == 1)
			mismatch++;
	}
	printf("\n    16 clients x 4 requests x %d tokens: %.2f s, %d clients matched the single run\n",
	       N_GEN, (mono_ms() - t0) / 1000.0, ok);
	CU_ASSERT_EQUAL(mismatch, 0);
	CU_ASSERT_EQUAL(ok, N_CLIENTS);
}

static int running_requests(void)
{
	qd_client *c;
	if (qd_connect(D.sock, &c, NULL, 0) < 0)
		return -1;
	qd_stats s;
	int n = -1;
	if (qd_get_stats(c, false, &s) == 0) {
		n = (int)(s.models[0].running + s.models[0].queued);
		qd_stats_free(&s);
	}
	qd_close(c);
	return n;
}

static void kill_one_client(void)
{
	int pfd[2];
	if (pipe(pfd) < 0)
		return;
	pid_t k = fork();
	if (k == 0) {
		qd_client *c;
		if (qd_connect(D.sock, &c, NULL, 0) < 0)
			_exit(2);
		qd_gen_params p;
		qd_gen_params_init(&p);
		p.max_tokens = 400;
		uint64_t id;
		qd_event ev;
		if (qd_generate(c, prompts[3], &p, &id) < 0 || qd_next(c, &ev, 60000) < 0)
			_exit(3);
		if (write(pfd[1], "x", 1) != 1)
			_exit(4);
		pause();
		_exit(0);
	}
	char x;
	CU_ASSERT_EQUAL(read(pfd[0], &x, 1), 1);
	kill(k, SIGKILL);
	waitpid(k, NULL, 0);
	close(pfd[0]);
	close(pfd[1]);
}

static void test_sigkill_client(void)
{
	if (!ensure_daemon("SIGKILLed client") || !ref_ok)
		return;
	kill_one_client(); /* warm-up: first-use allocations are not a leak */
	for (int i = 0; i < 100 && running_requests() != 0; i++)
		usleep(20000);
	usleep(200000); /* the daemon closes the stats session asynchronously */
	int fd0 = count_fds(D.pid);
	long rss0 = rss_kb(D.pid);
	/* another client runs meanwhile and must get exactly its tokens */
	pid_t other = fork();
	if (other == 0) {
		int32_t t[N_GEN];
		int n;
		_exit(run_greedy(D.sock, prompts[0], t, &n) == 0 && n == ref_n[0] &&
				      !memcmp(t, ref[0], (size_t)n * 4) ? 0 : 1);
	}
	for (int i = 0; i < 5; i++)
		kill_one_client();
	int st;
	waitpid(other, &st, 0);
	CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	int left = -1;
	/* generous waits: a loaded machine (CI under ASan) may take seconds to notice */
	for (int i = 0; i < 500 && (left = running_requests()) != 0; i++)
		usleep(20000);
	for (int i = 0; i < 250 && count_fds(D.pid) != fd0; i++)
		usleep(20000);
	long rss1 = rss_kb(D.pid);
	printf("\n    after 5 killed clients: fds %d -> %d, rss %ld -> %ld kB, requests left %d\n",
	       fd0, count_fds(D.pid), rss0, rss1, left);
	CU_ASSERT_EQUAL(left, 0);
	CU_ASSERT_EQUAL(count_fds(D.pid), fd0);
#ifdef __SANITIZE_ADDRESS__
	/* ASan keeps freed memory in quarantine (up to 256 MiB), so RSS says nothing about
	 * leaks in this build; LeakSanitizer checks the daemon at exit instead. */
	printf("    (ASan build: the RSS bound is checked in the normal build only)\n");
#else
	CU_ASSERT(rss1 - rss0 < 1024);
#endif
}

static void test_cancel(void)
{
	if (!ensure_daemon("cancel"))
		return;
	qd_client *c;
	CU_ASSERT_EQUAL_FATAL(qd_connect(D.sock, &c, NULL, 0), 0);
	qd_gen_params p;
	qd_gen_params_init(&p);
	p.max_tokens = 300;
	uint64_t id;
	CU_ASSERT_EQUAL_FATAL(qd_generate(c, prompts[3], &p, &id), 0);
	qd_event ev;
	int seen = 0;
	while (seen < 3 && qd_next(c, &ev, 30000) == 0)
		seen += ev.kind == QD_EVENT_TOKEN;
	const uint64_t t_sent = mono_ns();
	CU_ASSERT_EQUAL(qd_cancel(c, id), 0);
	const uint64_t t_cancelled = mono_ns();
	/* tokens the ring already held count in `after` but were written before the cancel:
	 * on a loaded machine the reader lags by several, so the bound is on when they were
	 * written, not on how many arrive */
	int after = 0, during = 0, late = 0;
	for (;;) {
		CU_ASSERT_EQUAL_FATAL(qd_next(c, &ev, 30000), 0);
		if (ev.kind == QD_EVENT_FINAL)
			break;
		after++;
		during += ev.t_daemon_ns > t_sent;     /* written after the cancel was sent */
		late += ev.t_daemon_ns > t_cancelled; /* ... after it was answered */
	}
	CU_ASSERT_EQUAL(ev.finish, QD_FINISH_REASON_CANCELLED);
	CU_ASSERT_EQUAL(late, 0);
	CU_ASSERT(during <= 1); /* at most the token of the step that was running */
	CU_ASSERT_EQUAL(ev.n_generated, (uint32_t)(seen + after));
	CU_ASSERT_EQUAL(qd_cancel(c, id), -ENOENT);
	qd_close(c);
}

static bool healthy(void)
{
	return daemon_healthy(D.sock);
}

static void test_malformed_packets(void)
{
	if (!ensure_daemon("malformed and oversized packets"))
		return;
	uint8_t junk[QD_MSG_MAX + 1000];
	memset(junk, 0xff, sizeof junk);
	/* garbage: an error reply, then the session ends */
	int fd = raw_connect(D.sock);
	CU_ASSERT_EQUAL(send(fd, junk, 100, 0), 100);
	CU_ASSERT_EQUAL(raw_reply(fd, NULL, NULL), EPROTO);
	CU_ASSERT_EQUAL(raw_reply(fd, NULL, NULL), -1);
	close(fd);
	/* oversized */
	fd = raw_connect(D.sock);
	CU_ASSERT_EQUAL(send(fd, junk, sizeof junk, 0), (ssize_t)sizeof junk);
	CU_ASSERT_EQUAL(raw_reply(fd, NULL, NULL), EPROTO);
	CU_ASSERT_EQUAL(raw_reply(fd, NULL, NULL), -1);
	close(fd);
	/* a valid message before Hello */
	fd = raw_connect(D.sock);
	Quantd__Request rq = QUANTD__REQUEST__INIT;
	Quantd__ListModels lm = QUANTD__LIST_MODELS__INIT;
	rq.body_case = QUANTD__REQUEST__BODY_LIST_MODELS;
	rq.list_models = &lm;
	CU_ASSERT_EQUAL(qd_frame_send(fd, &rq.base, NULL, 0), 0);
	CU_ASSERT_EQUAL(raw_reply(fd, NULL, NULL), EPROTO);
	close(fd);
	/* descriptors the daemon never asked for */
	fd = raw_connect(D.sock);
	int p[2];
	CU_ASSERT_EQUAL(pipe(p), 0);
	CU_ASSERT_EQUAL(qd_frame_send(fd, &rq.base, p, 2), 0);
	CU_ASSERT_EQUAL(raw_reply(fd, NULL, NULL), -1);
	close(p[0]);
	close(p[1]);
	close(fd);
	CU_ASSERT_TRUE(healthy());
}

typedef struct {
	int fd, fds[3];
	uint8_t *map;
	QdRing submit, complete;
} RawSession;

static bool raw_session(RawSession *s)
{
	memset(s, 0, sizeof *s);
	s->fd = raw_connect(D.sock);
	Quantd__Request rq = QUANTD__REQUEST__INIT;
	Quantd__Hello h = QUANTD__HELLO__INIT;
	h.abi_version = QD_ABI_VERSION;
	rq.id = 1;
	rq.body_case = QUANTD__REQUEST__BODY_HELLO;
	rq.hello = &h;
	unsigned n = 0;
	if (s->fd < 0 || qd_frame_send(s->fd, &rq.base, NULL, 0) < 0 ||
	    raw_reply(s->fd, s->fds, &n) != 0 || n != 3)
		return false;
	s->map = mmap(NULL, QD_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, s->fds[0], 0);
	qd_ring_init(&s->submit, (QdRingCtl *)(s->map + QD_SHM_SUBMIT_CTL),
		     s->map + QD_SHM_SUBMIT_DATA, QD_SUBMIT_CAP);
	qd_ring_init(&s->complete, (QdRingCtl *)(s->map + QD_SHM_COMPLETE_CTL),
		     s->map + QD_SHM_COMPLETE_DATA, QD_COMPLETE_CAP);
	return s->map != MAP_FAILED;
}

static void raw_close(RawSession *s)
{
	munmap(s->map, QD_SHM_SIZE);
	for (int i = 0; i < 3; i++)
		close(s->fds[i]);
	close(s->fd);
}

static int raw_generate(RawSession *s, uint64_t tag, uint32_t max_tokens)
{
	Quantd__Generate g = QUANTD__GENERATE__INIT;
	g.prompt_tag = tag;
	g.max_tokens = max_tokens;
	Quantd__Request rq = QUANTD__REQUEST__INIT;
	rq.id = 2;
	rq.body_case = QUANTD__REQUEST__BODY_GENERATE;
	rq.generate = &g;
	if (qd_frame_send(s->fd, &rq.base, NULL, 0) < 0)
		return -1;
	return raw_reply(s->fd, NULL, NULL);
}

static void test_hostile_ring_peer(void)
{
	if (!ensure_daemon("hostile ring peer"))
		return;
	RawSession s;
	/* the memfd cannot be resized by the client */
	CU_ASSERT_TRUE_FATAL(raw_session(&s));
	CU_ASSERT_EQUAL(ftruncate(s.fds[0], 0), -1);
	CU_ASSERT_EQUAL(errno, EPERM);
	CU_ASSERT_EQUAL(ftruncate(s.fds[0], 1 << 30), -1);
	CU_ASSERT_EQUAL(errno, EPERM);
	/* impossible tail */
	atomic_store(&s.submit.ctl->tail, (uint64_t)QD_SUBMIT_CAP + 64);
	CU_ASSERT_EQUAL(raw_generate(&s, 1, 4), EPROTO);
	CU_ASSERT_EQUAL(raw_reply(s.fd, NULL, NULL), -1);
	raw_close(&s);
	/* impossible record length */
	CU_ASSERT_TRUE_FATAL(raw_session(&s));
	QdRecHdr h = { .len = 0xfffffff0u, .type = QD_REC_PROMPT_TEXT };
	memcpy(s.submit.data, &h, sizeof h);
	atomic_store(&s.submit.ctl->tail, 64);
	CU_ASSERT_EQUAL(raw_generate(&s, 1, 4), EPROTO);
	CU_ASSERT_EQUAL(raw_reply(s.fd, NULL, NULL), -1);
	raw_close(&s);
	/* a tag that does not match the Generate */
	CU_ASSERT_TRUE_FATAL(raw_session(&s));
	QdPromptRec pr = { .tag = 7 };
	CU_ASSERT_EQUAL(qd_ring_push(&s.submit, QD_REC_PROMPT_TEXT, &pr, sizeof pr, "Hi", 2), 0);
	CU_ASSERT_EQUAL(raw_generate(&s, 8, 4), EPROTO);
	raw_close(&s);
	/* corrupting the complete ring's head while tokens flow ends the session */
	CU_ASSERT_TRUE_FATAL(raw_session(&s));
	pr.tag = 9;
	CU_ASSERT_EQUAL(qd_ring_push(&s.submit, QD_REC_PROMPT_TEXT, &pr, sizeof pr,
				     prompts[3], (uint32_t)strlen(prompts[3])), 0);
	CU_ASSERT_EQUAL(raw_generate(&s, 9, 300), 0);
	atomic_store(&s.complete.ctl->head, (uint64_t)1 << 40);
	uint64_t t0 = mono_ms();
	CU_ASSERT_EQUAL(raw_reply(s.fd, NULL, NULL), -1); /* the daemon hung up */
	CU_ASSERT(mono_ms() - t0 < 5000);
	raw_close(&s);
	CU_ASSERT_TRUE(healthy());
}

static void test_idle_session_memory(void)
{
	if (!ensure_daemon("idle session memory"))
		return;
	qd_client *cs[64];
	CU_ASSERT_EQUAL_FATAL(qd_connect(D.sock, &cs[0], NULL, 0), 0);
	usleep(100000);
	long r1 = rss_kb(D.pid);
	int n = 1;
	for (; n < 64; n++)
		if (qd_connect(D.sock, &cs[n], NULL, 0) < 0)
			break;
	CU_ASSERT_EQUAL(n, 64);
	usleep(100000);
	long r64 = rss_kb(D.pid);
	double per = (double)(r64 - r1) / 63.0;
	printf("\n    daemon rss with 1 idle session %ld kB, with 64 %ld kB: %.1f kB per session "
	       "(rings %u kB)\n", r1, r64, per, QD_SHM_SIZE / 1024);
	CU_ASSERT(per < QD_SHM_SIZE / 1024.0);
	for (int i = 0; i < n; i++)
		qd_close(cs[i]);
}

static void test_sigterm(void)
{
	if (!ensure_daemon("SIGTERM"))
		return;
	qd_client *c[2];
	uint64_t id[2];
	qd_gen_params p;
	qd_gen_params_init(&p);
	p.max_tokens = 400;
	for (int i = 0; i < 2; i++) {
		CU_ASSERT_EQUAL_FATAL(qd_connect(D.sock, &c[i], NULL, 0), 0);
		CU_ASSERT_EQUAL_FATAL(qd_generate(c[i], prompts[3], &p, &id[i]), 0);
		qd_event ev;
		CU_ASSERT_EQUAL(qd_next(c[i], &ev, 30000), 0);
	}
	kill(D.pid, SIGTERM);
	for (int i = 0; i < 2; i++) {
		qd_event ev;
		int rc;
		while ((rc = qd_next(c[i], &ev, 10000)) == 0 && ev.kind != QD_EVENT_FINAL)
			;
		CU_ASSERT_EQUAL(rc, 0);
		CU_ASSERT_EQUAL(ev.request_id, id[i]);
		CU_ASSERT_EQUAL(ev.finish, QD_FINISH_REASON_SHUTDOWN);
		qd_close(c[i]);
	}
	CU_ASSERT_EQUAL(daemon_stop(&D), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(D.notes, "STOPPING=1"));
}

static void test_socket_activation(void)
{
	if (!can_run("socket activation"))
		return;
	if (system("command -v systemd-socket-activate >/dev/null") != 0) {
		tu_skip("socket activation", "no systemd-socket-activate");
		return;
	}
	Daemon d;
	static const char *const extra[] = { "--slots", "1", "--queue", "1", "--ctx", "256",
					     "--mem-limit", "250M", NULL };
	CU_ASSERT_TRUE_FATAL(daemon_start(&d, true, extra));
	CU_ASSERT_FALSE(notify_wait(&d, "READY=1", 300)); /* nothing runs before a client */
	qd_client *c;
	char err[256];
	CU_ASSERT_EQUAL_FATAL(qd_connect(d.sock, &c, err, sizeof err), 0);
	CU_ASSERT_TRUE(notify_wait(&d, "READY=1", 60000));
	qd_gen_params p;
	qd_gen_params_init(&p);
	/* Long enough that `a` cannot finish (and free the queue) before `x` is sent even on
	 * a loaded machine; both are cancelled once the checks are done. */
	p.max_tokens = 2048;
	uint64_t a, b, x;
	CU_ASSERT_EQUAL(qd_generate(c, prompts[3], &p, &a), 0);
	CU_ASSERT_EQUAL(qd_generate(c, prompts[3], &p, &b), 0);  /* queued behind a */
	CU_ASSERT_EQUAL(qd_generate(c, prompts[3], &p, &x), -EBUSY);
	CU_ASSERT_PTR_NOT_NULL(strstr(qd_errmsg(c), "busy"));
	char path[4096];
	CU_ASSERT_PTR_NOT_NULL(realpath(tu_model_path(), path));
	CU_ASSERT_EQUAL(qd_load(c, path, "second", 1, 256, NULL), -ENOMEM);
	CU_ASSERT_PTR_NOT_NULL(strstr(qd_errmsg(c), "MiB"));
	qd_cancel(c, a); /* -ENOENT if it already ended: then its final record is on its way */
	qd_cancel(c, b);
	int finals = 0;
	while (finals < 2) {
		qd_event ev;
		if (qd_next(c, &ev, 60000) < 0)
			break;
		finals += ev.kind == QD_EVENT_FINAL;
	}
	CU_ASSERT_EQUAL(finals, 2);
	qd_close(c);
	CU_ASSERT_EQUAL(daemon_stop(&d), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(d.notes, "STOPPING=1"));
}

static void test_not_running(void)
{
	qd_client *c;
	char err[256];
	int rc = qd_connect("/tmp/qd-e2e-nonexistent.sock", &c, err, sizeof err);
	CU_ASSERT_EQUAL(rc, -ENOENT);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "not running"));
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	static const TuTest tests[] = {
		{ .name = "daemon not running", .fn = test_not_running },
		{ .name = "READY=1 after the model is loaded", .fn = test_ready_after_load, .skip_if = cannot_run },
		{ .name = "greedy reference run", .fn = test_reference, .skip_if = cannot_run },
		{ .name = "seeded sampling = quantd run", .fn = test_seeded_sampling, .skip_if = cannot_run },
		{ .name = "tokenize and detokenize", .fn = test_tokenize, .skip_if = cannot_run },
		{ .name = "16 clients x 4 requests match the single run", .fn = test_concurrent_clients, .skip_if = cannot_run },
		{ .name = "SIGKILLed client costs nothing", .fn = test_sigkill_client, .skip_if = cannot_run },
		{ .name = "cancel within one token", .fn = test_cancel, .skip_if = cannot_run },
		{ .name = "malformed and oversized packets", .fn = test_malformed_packets, .skip_if = cannot_run },
		{ .name = "hostile ring peer", .fn = test_hostile_ring_peer, .skip_if = cannot_run },
		{ .name = "idle session memory", .fn = test_idle_session_memory, .skip_if = cannot_run },
		{ .name = "SIGTERM ends requests with a final record", .fn = test_sigterm, .skip_if = cannot_run },
		{ .name = "socket activation, busy queue, memory refusal", .fn = test_socket_activation, .skip_if = cannot_run },
		{ .name = NULL },
	};
	int rc = tu_main("daemon-e2e", tests);
	if (D.pid > 0)
		daemon_stop(&D);
	return rc;
}
