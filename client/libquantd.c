/* client/libquantd.c: the session, control requests and the token stream (quantd.h). */
#include "quantd.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "proto/frame.h"
#include "proto/quantd.pb-c.h"
#include "proto/ring.h"

struct qd_client {
	int fd;            /* control socket (blocking) */
	int memfd;
	int submit_wr;     /* doorbell to the daemon: complete-ring space freed */
	int complete_rd;   /* doorbell from the daemon: records appended */
	uint8_t *map;
	QdRing submit;     /* producer side */
	QdRing complete;   /* consumer side */
	uint64_t next_id, next_tag;
	uint32_t max_prompt;
	int spin_us;
	unsigned spin_misses; /* consecutive waits the spin did not satisfy */
	char err[512];
	uint8_t rec[sizeof(QdTokenRec) + QD_PIECE_MAX + sizeof(QdFinalRec)];
	uint8_t pkt[QD_MSG_MAX];
	QdArena arena;
	uint8_t arena_buf[QD_ARENA_SIZE];
};

static int fail(qd_client *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(qd_client *c, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->err, sizeof c->err, fmt, ap);
	va_end(ap);
	return rc;
}

const char *qd_errmsg(const qd_client *c)
{
	return c ? c->err : "";
}

/* Sends REQ and waits for its reply, unpacked into the handle's arena (valid until the
 * next call).  A reply with err != 0 becomes -err with the daemon's message. */
static int call(qd_client *c, Quantd__Request *req, Quantd__Reply **ret, int *fds,
		unsigned *nfds)
{
	req->id = ++c->next_id;
	int rc = qd_frame_send(c->fd, &req->base, NULL, 0);
	if (rc < 0)
		return fail(c, rc, rc == -EPIPE ? "the daemon closed the connection"
						: "cannot send to the daemon: %s", strerror(-rc));
	for (;;) {
		size_t len;
		unsigned n = 0;
		rc = qd_frame_recv(c->fd, c->pkt, sizeof c->pkt, &len, fds, fds ? QD_MSG_FDS : 0, &n);
		if (rc == -EINTR)
			continue;
		if (rc < 0)
			return fail(c, rc == -ECONNRESET ? -EPIPE : rc, "%s",
				    rc == -ECONNRESET ? "the daemon closed the connection"
						      : "bad reply from the daemon");
		qd_arena_reset(&c->arena);
		Quantd__Reply *r = (Quantd__Reply *)qd_frame_unpack(&quantd__reply__descriptor,
								      &c->arena, c->pkt, len);
		if (!r) {
			for (unsigned i = 0; i < n; i++)
				close(fds[i]);
			return fail(c, -EPROTO, "malformed reply from the daemon");
		}
		if (r->id != req->id && r->id != 0) { /* not ours: a stale reply */
			for (unsigned i = 0; i < n; i++)
				close(fds[i]);
			continue;
		}
		if (r->err) {
			for (unsigned i = 0; i < n; i++)
				close(fds[i]);
			return fail(c, -r->err, "%s", r->message && r->message[0] ? r->message
										  : strerror(r->err));
		}
		if (nfds)
			*nfds = n;
		c->err[0] = 0;
		*ret = r;
		return 0;
	}
}

/* call() for the requests whose reply must be of one kind: anything else is a protocol
 * error named after WHAT. */
static int call_expect(qd_client *c, Quantd__Request *req, int want, const char *what, Quantd__Reply **ret)
{
	int rc = call(c, req, ret, NULL, NULL);
	if (rc < 0)
		return rc;
	if ((int)(*ret)->body_case != want)
		return fail(c, -EPROTO, "unexpected reply to %s", what);
	return 0;
}

static int map_session(qd_client *c, const int *fds, unsigned n)
{
	if (n != 3) {
		for (unsigned i = 0; i < n; i++)
			close(fds[i]);
		return fail(c, -EPROTO, "the daemon sent %u descriptors, expected 3", n);
	}
	c->memfd = fds[0];
	c->submit_wr = fds[1];
	c->complete_rd = fds[2];
	struct stat st;
	int seals = fcntl(c->memfd, F_GET_SEALS);
	/* Without these seals the daemon could shrink the file under our mapping (SIGBUS). */
	if (fstat(c->memfd, &st) < 0 || (uint64_t)st.st_size != QD_SHM_SIZE || seals < 0 ||
	    !(seals & F_SEAL_SHRINK))
		return fail(c, -EPROTO, "the session memory is not a sealed memfd of the right size");
	c->map = mmap(NULL, QD_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, c->memfd, 0);
	if (c->map == MAP_FAILED) {
		c->map = NULL;
		return fail(c, -errno, "cannot map the session memory: %m");
	}
	qd_ring_init(&c->submit, (QdRingCtl *)(c->map + QD_SHM_SUBMIT_CTL),
		     c->map + QD_SHM_SUBMIT_DATA, QD_SUBMIT_CAP);
	qd_ring_init(&c->complete, (QdRingCtl *)(c->map + QD_SHM_COMPLETE_CTL),
		     c->map + QD_SHM_COMPLETE_DATA, QD_COMPLETE_CAP);
	/* Rings start empty; the daemon starts its indices at 0 too. */
	c->submit.pos = atomic_load(&c->submit.ctl->tail);
	c->complete.pos = atomic_load(&c->complete.ctl->head);
	return 0;
}

int qd_connect(const char *path, qd_client **ret, char *errbuf, size_t errlen)
{
	if (!path || !*path)
		path = getenv("QUANTD_SOCKET");
	if (!path || !*path)
		path = QD_DEFAULT_SOCKET;
	qd_client *c = calloc(1, sizeof *c);
	if (!c) {
		if (errbuf && errlen)
			snprintf(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	c->fd = c->memfd = c->submit_wr = c->complete_rd = -1;
	qd_arena_init(&c->arena, c->arena_buf, sizeof c->arena_buf);
	const char *spin = getenv("QUANTD_SPIN_US");
	c->spin_us = spin ? atoi(spin) : 20;
	int rc;
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof a.sun_path) {
		rc = fail(c, -ENAMETOOLONG, "socket path too long: %s", path);
		goto out;
	}
	strcpy(a.sun_path, path);
	c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		rc = fail(c, -errno, "socket: %m");
		goto out;
	}
	if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0) {
		rc = -errno;
		if (rc == -ENOENT || rc == -ECONNREFUSED)
			fail(c, rc, "quantd is not running (nothing listens on %s)", path);
		else if (rc == -EACCES || rc == -EPERM)
			fail(c, rc, "permission denied on %s (is your user in the quantd group?)", path);
		else
			fail(c, rc, "cannot connect to %s: %s", path, strerror(-rc));
		goto out;
	}
	Quantd__Request req = QUANTD__REQUEST__INIT;
	Quantd__Hello h = QUANTD__HELLO__INIT;
	h.abi_version = QD_ABI_VERSION;
	h.client_name = "libquantd";
	req.body_case = QUANTD__REQUEST__BODY_HELLO;
	req.hello = &h;
	Quantd__Reply *r;
	int fds[QD_MSG_FDS];
	unsigned n = 0;
	rc = call(c, &req, &r, fds, &n);
	if (rc < 0) {
		if (rc == -EACCES)
			fail(c, rc, "access denied by quantd: %s", qd_errmsg(c));
		goto out;
	}
	if (r->body_case != QUANTD__REPLY__BODY_WELCOME) {
		for (unsigned i = 0; i < n; i++)
			close(fds[i]);
		rc = fail(c, -EPROTO, "the daemon did not answer Hello with Welcome");
		goto out;
	}
	c->max_prompt = r->welcome->max_prompt_bytes;
	rc = map_session(c, fds, n);
	if (rc < 0)
		goto out;
	*ret = c;
	return 0;
out:
	if (errbuf && errlen)
		snprintf(errbuf, errlen, "%s", c->err);
	qd_close(c);
	return rc;
}

void qd_close(qd_client *c)
{
	if (!c)
		return;
	if (c->map)
		munmap(c->map, QD_SHM_SIZE);
	int fds[4] = { c->fd, c->memfd, c->submit_wr, c->complete_rd };
	for (int i = 0; i < 4; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(c);
}

void qd_gen_params_init(qd_gen_params *p)
{
	memset(p, 0, sizeof *p);
}

const char *qd_finish_name(int f)
{
	static const char *const names[] = { "?", "eog", "length", "stop", "cancelled",
					     "context", "error", "shutdown", "unloaded" };
	return f >= 1 && f <= 8 ? names[f] : "?";
}

static int submit_generate(qd_client *c, int type, const void *a, size_t alen,
			   const qd_gen_params *p, uint64_t *ret_id)
{
	qd_gen_params dflt;
	if (!p) {
		qd_gen_params_init(&dflt);
		p = &dflt;
	}
	if (alen > c->max_prompt)
		return fail(c, -E2BIG, "prompt of %zu bytes exceeds the daemon's %u", alen,
			    c->max_prompt);
	QdPromptRec pr = { .tag = ++c->next_tag };
	int rc = qd_ring_push(&c->submit, (uint16_t)type, &pr, sizeof pr, a, (uint32_t)alen);
	if (rc == -EAGAIN)
		return fail(c, -EBUSY, "the submit ring is full");
	if (rc < 0)
		return fail(c, rc, "cannot queue the prompt: %s", strerror(-rc));
	Quantd__Sampling s = QUANTD__SAMPLING__INIT;
	s.temperature = p->temperature;
	s.top_k = p->top_k;
	s.top_p = p->top_p;
	s.min_p = p->min_p;
	s.repeat_penalty = p->repeat_penalty;
	s.repeat_last_n = p->repeat_last_n;
	s.seed = p->seed;
	Quantd__Generate g = QUANTD__GENERATE__INIT;
	g.model = (char *)(p->model ? p->model : "");
	g.prompt_tag = pr.tag;
	g.sampling = &s;
	g.max_tokens = p->max_tokens;
	g.n_stop = p->n_stop;
	g.stop = (char **)p->stop;
	g.logprobs = p->logprobs;
	Quantd__Request req = QUANTD__REQUEST__INIT;
	req.body_case = QUANTD__REQUEST__BODY_GENERATE;
	req.generate = &g;
	Quantd__Reply *r;
	rc = call(c, &req, &r, NULL, NULL);
	if (rc < 0)
		return rc;
	if (r->body_case != QUANTD__REPLY__BODY_GENERATE)
		return fail(c, -EPROTO, "unexpected reply to Generate");
	*ret_id = r->generate->request_id;
	return 0;
}

int qd_generate(qd_client *c, const char *prompt, const qd_gen_params *p, uint64_t *ret_id)
{
	return submit_generate(c, QD_REC_PROMPT_TEXT, prompt, strlen(prompt), p, ret_id);
}

int qd_generate_chat(qd_client *c, const qd_chat_msg *msgs, size_t n, const qd_gen_params *p,
		     uint64_t *ret_id)
{
	size_t len = 0;
	for (size_t i = 0; i < n; i++)
		len += strlen(msgs[i].role) + strlen(msgs[i].content) + 2;
	if (!n || len > c->max_prompt)
		return fail(c, n ? -E2BIG : -EINVAL, n ? "conversation too long" : "no messages");
	char *buf = malloc(len);
	if (!buf)
		return fail(c, -ENOMEM, "out of memory");
	size_t off = 0;
	for (size_t i = 0; i < n; i++) {
		size_t a = strlen(msgs[i].role) + 1, b = strlen(msgs[i].content) + 1;
		memcpy(buf + off, msgs[i].role, a);
		memcpy(buf + off + a, msgs[i].content, b);
		off += a + b;
	}
	int rc = submit_generate(c, QD_REC_PROMPT_CHAT, buf, len, p, ret_id);
	free(buf);
	return rc;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int decode_rec(qd_client *c, uint16_t type, uint32_t len, qd_event *ev)
{
	memset(ev, 0, sizeof *ev);
	if (type == QD_REC_TOKEN && len >= sizeof(QdTokenRec)) {
		QdTokenRec t;
		memcpy(&t, c->rec, sizeof t);
		if (t.piece_len > len - sizeof t)
			return fail(c, -EPROTO, "bad token record from the daemon");
		ev->kind = QD_EVENT_TOKEN;
		ev->request_id = t.request_id;
		ev->t_daemon_ns = t.t_ns;
		ev->token = t.token;
		ev->logprob = t.logprob;
		ev->index = t.index;
		ev->piece = (const char *)c->rec + sizeof t;
		ev->piece_len = t.piece_len;
		return 0;
	}
	if (type == QD_REC_FINAL && len >= sizeof(QdFinalRec)) {
		QdFinalRec f;
		memcpy(&f, c->rec, sizeof f);
		ev->kind = QD_EVENT_FINAL;
		ev->request_id = f.request_id;
		ev->t_daemon_ns = f.t_ns;
		ev->finish = f.finish;
		ev->error = f.error;
		ev->n_prompt = f.n_prompt;
		ev->n_generated = f.n_generated;
		ev->queue_ns = f.queue_ns;
		ev->prefill_ns = f.prefill_ns;
		ev->decode_ns = f.decode_ns;
		return 0;
	}
	return fail(c, -EPROTO, "unknown record type %u from the daemon", type);
}

/* Pops one record if there is one: 0, -EAGAIN, or -EPROTO. */
static int try_pop(qd_client *c, qd_event *ev)
{
	uint16_t type;
	uint32_t len;
	int rc = qd_ring_pop(&c->complete, &type, c->rec, sizeof c->rec, &len);
	if (rc == -EAGAIN)
		return rc;
	if (rc < 0)
		return fail(c, -EPROTO, "the complete ring is corrupted");
	if (qd_ring_producer_wants_wake(&c->complete)) {
		char one = 1;
		ssize_t w = write(c->submit_wr, &one, 1);
		(void)w; /* a full pipe has a wakeup pending already */
	}
	return decode_rec(c, type, len, ev);
}

int qd_next(qd_client *c, qd_event *ev, int timeout_ms)
{
	int rc = try_pop(c, ev);
	if (rc != -EAGAIN)
		return rc;
	/* A short spin catches the next token without a syscall when tokens come faster than
	 * the spin; when they do not (slow model, more clients than CPUs) spinning only steals
	 * CPU from others, so after two misses it is only retried every 16th wait. */
	uint64_t t0 = mono_ns(), spin = (uint64_t)c->spin_us * 1000;
	if (c->spin_misses >= 2 && (c->spin_misses & 15) != 0)
		spin = 0;
	while (spin && mono_ns() - t0 < spin) {
		if (qd_ring_readable(&c->complete)) {
			c->spin_misses = 0;
			return try_pop(c, ev);
		}
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
	}
	c->spin_misses++;
	uint64_t deadline = timeout_ms < 0 ? 0 : t0 + (uint64_t)timeout_ms * 1000000;
	for (;;) {
		if (qd_ring_consumer_sleep(&c->complete)) {
			int wait = -1;
			if (timeout_ms >= 0) {
				uint64_t now = mono_ns();
				wait = now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
			}
			struct pollfd pfd = { .fd = c->complete_rd, .events = POLLIN };
			int n = poll(&pfd, 1, wait);
			qd_ring_consumer_awake(&c->complete);
			if (n < 0)
				return fail(c, -errno, "interrupted");
			if (n > 0) {
				char buf[64];
				while (read(c->complete_rd, buf, sizeof buf) == (ssize_t)sizeof buf)
					;
				if (pfd.revents & (POLLHUP | POLLERR) && !qd_ring_readable(&c->complete))
					return fail(c, -EPIPE, "the daemon ended the session");
			}
		}
		rc = try_pop(c, ev);
		if (rc != -EAGAIN)
			return rc;
		if (timeout_ms >= 0 && mono_ns() >= deadline)
			return fail(c, -ETIMEDOUT, "no record within %d ms", timeout_ms);
	}
}

int qd_generate_stream(qd_client *c, const char *prompt, const qd_gen_params *p,
		       qd_event_cb cb, void *user, qd_event *ret_final)
{
	uint64_t id;
	int rc = qd_generate(c, prompt, p, &id);
	if (rc < 0)
		return rc;
	bool cancelled = false;
	for (;;) {
		qd_event ev;
		rc = qd_next(c, &ev, -1);
		if (rc == -EINTR)
			continue;
		if (rc < 0)
			return rc;
		if (ev.request_id != id)
			continue;
		if (ev.kind == QD_EVENT_FINAL) {
			if (cb)
				cb(&ev, user);
			if (ret_final)
				*ret_final = ev;
			return 0;
		}
		if (cb && !cancelled && cb(&ev, user)) {
			cancelled = true;
			rc = qd_cancel(c, id);
			if (rc < 0 && rc != -ENOENT)
				return rc;
		}
	}
}

int qd_cancel(qd_client *c, uint64_t request_id)
{
	Quantd__Cancel x = QUANTD__CANCEL__INIT;
	x.request_id = request_id;
	Quantd__Request req = QUANTD__REQUEST__INIT;
	req.body_case = QUANTD__REQUEST__BODY_CANCEL;
	req.cancel = &x;
	Quantd__Reply *r;
	return call(c, &req, &r, NULL, NULL);
}

static void copy_str(char *dst, size_t cap, const char *src)
{
	snprintf(dst, cap, "%s", src ? src : "");
}

static void info_from(qd_model_info *o, const Quantd__ModelInfo *m)
{
	memset(o, 0, sizeof *o);
	copy_str(o->name, sizeof o->name, m->name);
	copy_str(o->path, sizeof o->path, m->path);
	copy_str(o->chat_family, sizeof o->chat_family, m->chat_family);
	o->n_ctx = m->n_ctx;
	o->n_vocab = m->n_vocab;
	o->n_slots = m->n_slots;
	o->weight_bytes = m->weight_bytes;
	o->kv_bytes = m->kv_bytes;
}

int qd_models(qd_client *c, qd_model_info **ret, size_t *ret_n)
{
	Quantd__ListModels lm = QUANTD__LIST_MODELS__INIT;
	Quantd__Request req = QUANTD__REQUEST__INIT;
	req.body_case = QUANTD__REQUEST__BODY_LIST_MODELS;
	req.list_models = &lm;
	Quantd__Reply *r;
	int rc = call_expect(c, &req, QUANTD__REPLY__BODY_MODELS, "ListModels", &r);
	if (rc < 0)
		return rc;
	size_t n = r->models->n_models;
	qd_model_info *out = calloc(n ? n : 1, sizeof *out);
	if (!out)
		return fail(c, -ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		info_from(&out[i], r->models->models[i]);
	*ret = out;
	*ret_n = n;
	return 0;
}

int qd_load(qd_client *c, const char *path, const char *name, uint32_t n_slots, uint32_t n_ctx,
	    qd_model_info *ret_info)
{
	Quantd__LoadModel lm = QUANTD__LOAD_MODEL__INIT;
	lm.path = (char *)path;
	lm.name = (char *)(name ? name : "");
	lm.n_slots = n_slots;
	lm.n_ctx = n_ctx;
	Quantd__Request req = QUANTD__REQUEST__INIT;
	req.body_case = QUANTD__REQUEST__BODY_LOAD_MODEL;
	req.load_model = &lm;
	Quantd__Reply *r;
	int rc = call_expect(c, &req, QUANTD__REPLY__BODY_LOADED, "LoadModel", &r);
	if (rc < 0)
		return rc;
	if (ret_info)
		info_from(ret_info, r->loaded);
	return 0;
}

int qd_unload(qd_client *c, const char *name)
{
	Quantd__UnloadModel um = QUANTD__UNLOAD_MODEL__INIT;
	um.name = (char *)name;
	Quantd__Request req = QUANTD__REQUEST__INIT;
	req.body_case = QUANTD__REQUEST__BODY_UNLOAD_MODEL;
	req.unload_model = &um;
	Quantd__Reply *r;
	return call(c, &req, &r, NULL, NULL);
}

int qd_get_stats(qd_client *c, bool with_requests, qd_stats *ret)
{
	Quantd__StatsRequest sr = QUANTD__STATS_REQUEST__INIT;
	sr.requests = with_requests;
	Quantd__Request req = QUANTD__REQUEST__INIT;
	req.body_case = QUANTD__REQUEST__BODY_STATS;
	req.stats = &sr;
	Quantd__Reply *r;
	int rc = call_expect(c, &req, QUANTD__REPLY__BODY_STATS, "Stats", &r);
	if (rc < 0)
		return rc;
	const Quantd__StatsReply *s = r->stats;
	qd_stats o = { .sessions = s->sessions, .uptime_s = s->uptime_s, .rss_bytes = s->rss_bytes,
		       .requests_total = s->requests_total, .n_models = s->n_models,
		       .n_requests = s->n_requests };
	o.models = calloc(o.n_models + 1, sizeof *o.models);
	o.requests = calloc(o.n_requests + 1, sizeof *o.requests);
	if (!o.models || !o.requests) {
		qd_stats_free(&o);
		return fail(c, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < o.n_models; i++) {
		const Quantd__ModelStats *m = s->models[i];
		qd_model_stats *d = &o.models[i];
		copy_str(d->name, sizeof d->name, m->name);
		d->running = m->running;
		d->queued = m->queued;
		d->slots_used = m->slots_used;
		d->slots = m->slots;
		d->tokens_generated = m->tokens_generated;
		d->prompt_tokens = m->prompt_tokens;
		d->requests_done = m->requests_done;
		d->kv_bytes = m->kv_bytes;
		d->tokens_per_second = m->tokens_per_second;
		d->host_us_per_token = m->host_us_per_token;
		d->sample_us_per_token = m->sample_us_per_token;
		d->compute_us_per_token = m->compute_us_per_token;
	}
	for (size_t i = 0; i < o.n_requests; i++) {
		const Quantd__RequestInfo *q = s->requests[i];
		qd_request_info *d = &o.requests[i];
		d->id = q->id;
		d->session_id = q->session_id;
		d->uid = q->uid;
		d->pid = q->pid;
		d->n_prompt = q->n_prompt;
		d->n_generated = q->n_generated;
		d->max_tokens = q->max_tokens;
		d->age_s = q->age_s;
		copy_str(d->model, sizeof d->model, q->model);
		copy_str(d->state, sizeof d->state, q->state);
	}
	*ret = o;
	return 0;
}

void qd_stats_free(qd_stats *s)
{
	if (!s)
		return;
	free(s->models);
	free(s->requests);
	s->models = NULL;
	s->requests = NULL;
}

int qd_get_health(qd_client *c, qd_health *ret)
{
	Quantd__HealthRequest h = QUANTD__HEALTH_REQUEST__INIT;
	Quantd__Request req = QUANTD__REQUEST__INIT;
	req.body_case = QUANTD__REQUEST__BODY_HEALTH;
	req.health = &h;
	Quantd__Reply *r;
	int rc = call_expect(c, &req, QUANTD__REPLY__BODY_HEALTH, "Health", &r);
	if (rc < 0)
		return rc;
	memset(ret, 0, sizeof *ret);
	ret->ok = r->health->ok;
	copy_str(ret->status, sizeof ret->status, r->health->status);
	ret->models_loaded = r->health->models_loaded;
	ret->engine_heartbeat_age_s = r->health->engine_heartbeat_age_s;
	return 0;
}

int qd_tokenize(qd_client *c, const char *model, const char *text, size_t len, bool add_bos,
		int32_t **ret, size_t *ret_n)
{
	if (!text && len)
		return fail(c, -EINVAL, "no text");
	if (len > QD_MSG_MAX)
		return fail(c, -E2BIG, "text of %zu bytes does not fit in one control packet", len);
	Quantd__Tokenize tk = QUANTD__TOKENIZE__INIT;
	tk.model = (char *)(model ? model : "");
	tk.text.data = (uint8_t *)text;
	tk.text.len = len;
	tk.add_bos = add_bos;
	Quantd__Request req = QUANTD__REQUEST__INIT;
	req.body_case = QUANTD__REQUEST__BODY_TOKENIZE;
	req.tokenize = &tk;
	Quantd__Reply *r;
	int rc = call_expect(c, &req, QUANTD__REPLY__BODY_TOKENIZED, "Tokenize", &r);
	if (rc < 0)
		return rc;
	size_t n = r->tokenized->n_tokens;
	int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
	if (!ids)
		return fail(c, -ENOMEM, "out of memory");
	if (n)
		memcpy(ids, r->tokenized->tokens, n * sizeof *ids);
	*ret = ids;
	*ret_n = n;
	return 0;
}

int qd_detokenize(qd_client *c, const char *model, const int32_t *ids, size_t n,
		  bool show_special, char **ret, size_t *ret_len)
{
	if (!ids && n)
		return fail(c, -EINVAL, "no ids");
	/* a varint id takes at most 5 bytes */
	if (n > QD_MSG_MAX / 5)
		return fail(c, -E2BIG, "%zu ids do not fit in one control packet", n);
	Quantd__Detokenize dt = QUANTD__DETOKENIZE__INIT;
	dt.model = (char *)(model ? model : "");
	dt.tokens = (int32_t *)ids;
	dt.n_tokens = n;
	dt.show_special = show_special;
	Quantd__Request req = QUANTD__REQUEST__INIT;
	req.body_case = QUANTD__REQUEST__BODY_DETOKENIZE;
	req.detokenize = &dt;
	Quantd__Reply *r;
	int rc = call_expect(c, &req, QUANTD__REPLY__BODY_DETOKENIZED, "Detokenize", &r);
	if (rc < 0)
		return rc;
	size_t len = r->detokenized->text.len;
	char *text = malloc(len + 1);
	if (!text)
		return fail(c, -ENOMEM, "out of memory");
	if (len)
		memcpy(text, r->detokenized->text.data, len);
	text[len] = 0;
	*ret = text;
	*ret_len = len;
	return 0;
}
