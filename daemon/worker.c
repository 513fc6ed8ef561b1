/* daemon/worker.c: the engine thread (see worker.h). */
#include "worker.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "daemon/engine/chat.h"
#include "daemon/engine/tokenizer.h"
#include "log.h"
#include "proto/quantd.pb-c.h"

#define MAX_PS_ROWS 100 /* keeps a StatsReply well under QD_MSG_MAX */

typedef struct {
	uint64_t session_id;
	SessionShm *shm; /* a reference */
} WakeEntry;

struct Worker {
	WorkerParams p;
	Queue *tasks, *results;
	pthread_t th;
	ModelEntry *models;
	Req *pending_final;
	bool stop;
	uint64_t last_watchdog;
	_Atomic uint64_t beat_ns;
	_Atomic int n_models;
	/* sessions whose clients sleep and got records since the last flush (the shm
	 * references keep a fallback possible when the hand-off cannot be allocated) */
	WakeEntry *wake;
	size_t n_wake, cap_wake;
};

/* The result hooks sched.c calls have no context argument: there is one engine thread. */
static Worker *g_worker;

uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static Result *result_new(int kind, size_t len)
{
	Result *r = calloc(1, sizeof *r + len);
	if (r) {
		r->kind = kind;
		r->len = len;
	}
	return r;
}

static void post(Worker *w, Result *r)
{
	if (r)
		queue_push(w->results, &r->node);
}

void worker_req_done(const Req *rq)
{
	Result *r = result_new(RESULT_REQ_DONE, 0);
	if (!r)
		return;
	r->session_id = rq->session_id;
	r->uid = rq->uid;
	r->tokens_reserved = rq->tokens_reserved;
	post(g_worker, r);
}

void worker_kill_session(uint64_t session_id, const char *why)
{
	size_t len = strlen(why) + 1;
	Result *r = result_new(RESULT_KILL_SESSION, len);
	if (!r)
		return;
	r->session_id = session_id;
	memcpy(r->data, why, len);
	post(g_worker, r);
}

void worker_wake_client(SessionShm *shm, uint64_t session_id)
{
	Worker *w = g_worker;
	/* The records are published (release store of tail); the fence inside orders that
	 * store before this load of the client's flag: either it sees our tail before it
	 * blocks, or we see its flag here. */
	if (!qd_ring_consumer_wants_wake(&shm->complete))
		return;
	if (w->p.sched.wake_inline) {
		char one = 1;
		ssize_t n = write(shm->complete_wr, &one, 1);
		(void)n; /* EAGAIN: a wakeup is pending already; EPIPE: the client is gone */
		return;
	}
	for (size_t i = 0; i < w->n_wake; i++)
		if (w->wake[i].session_id == session_id)
			return;
	if (w->n_wake == w->cap_wake) {
		size_t cap = w->cap_wake ? 2 * w->cap_wake : 64;
		WakeEntry *p = realloc(w->wake, cap * sizeof *p);
		if (!p) { /* no memory for the list: ring it ourselves */
			shm_wake_client(shm);
			return;
		}
		w->wake = p;
		w->cap_wake = cap;
	}
	w->wake[w->n_wake++] = (WakeEntry){ session_id, shm_ref(shm) };
}

/* Hands the wake list to the loop thread: one queue push (and at most one eventfd write)
 * however many clients the step woke. */
static void flush_wakes(Worker *w)
{
	if (!w->n_wake)
		return;
	Result *r = result_new(RESULT_WAKE, w->n_wake * sizeof(uint64_t));
	for (size_t i = 0; i < w->n_wake; i++) {
		if (r)
			memcpy(r->data + i * sizeof(uint64_t), &w->wake[i].session_id,
			       sizeof(uint64_t));
		else
			shm_wake_client(w->wake[i].shm); /* no memory: ring them here */
		shm_unref(w->wake[i].shm);
	}
	post(w, r);
	w->n_wake = 0;
}

static void reply(Worker *w, const Task *t, Quantd__Reply *rep)
{
	Quantd__Reply too_big = QUANTD__REPLY__INIT;
	rep->id = t->reply_id;
	size_t len = protobuf_c_message_get_packed_size(&rep->base);
	if (len > QD_MSG_MAX) { /* the client could not receive it: say so instead */
		too_big.id = t->reply_id;
		too_big.err = E2BIG;
		too_big.message = "the reply does not fit in one control packet";
		rep = &too_big;
		len = protobuf_c_message_get_packed_size(&rep->base);
	}
	Result *r = result_new(RESULT_REPLY, len);
	if (!r)
		return;
	r->conn_id = t->conn_id;
	protobuf_c_message_pack(&rep->base, r->data);
	post(w, r);
}

static void reply_err(Worker *w, const Task *t, int err, const char *msg)
{
	Quantd__Reply rep = QUANTD__REPLY__INIT;
	rep.err = err < 0 ? -err : err;
	rep.message = (char *)msg;
	reply(w, t, &rep);
}

static ModelEntry *find_model(Worker *w, const char *name)
{
	if (!name[0])
		return w->models;
	for (ModelEntry *m = w->models; m; m = m->next)
		if (!strcmp(m->name, name))
			return m;
	return NULL;
}

static uint64_t used_estimate(const Worker *w)
{
	uint64_t s = 0;
	for (const ModelEntry *m = w->models; m; m = m->next)
		s += m->estimate;
	return s;
}

static void set_status(Worker *w)
{
	char s[256];
	int n = atomic_load(&w->n_models);
	snprintf(s, sizeof s, "STATUS=Serving %d model%s%s%s", n, n == 1 ? "" : "s",
		 w->models ? ", first: " : "", w->models ? w->models->name : "");
	sd_notify(0, s);
}

static int load(Worker *w, const char *path, const char *name, int n_slots, int n_ctx,
		ModelEntry **ret, char *err, size_t errlen)
{
	if (name[0] && find_model(w, name)) {
		snprintf(err, errlen, "a model named %s is loaded already", name);
		return -EEXIST;
	}
	uint64_t lim = w->p.sched.mem_limit;
	uint64_t used = used_estimate(w);
	uint64_t left = !lim ? UINT64_MAX : lim > used ? lim - used : 0;
	char st[4200];
	snprintf(st, sizeof st, "STATUS=Loading %s", path);
	sd_notify(0, st);
	ModelEntry *m = NULL;
	uint64_t t0 = now_ns();
	int rc = registry_load(&w->p.sched, path, name, n_slots, n_ctx, left, &m, err, errlen);
	if (rc < 0)
		return rc;
	if (find_model(w, m->name)) { /* the derived name collides */
		snprintf(err, errlen, "a model named %s is loaded already", m->name);
		registry_free(m);
		return -EEXIST;
	}
	ModelEntry **pp = &w->models;
	while (*pp)
		pp = &(*pp)->next;
	*pp = m;
	atomic_store(&w->n_models, atomic_load(&w->n_models) + 1);
	log_info("loaded model %s from %s in %.2f s: %d slots x %d positions, ~%.0f MiB",
		 m->name, path, (now_ns() - t0) / 1e9, m->n_slots, m->n_ctx,
		 m->estimate / (1024.0 * 1024.0));
	*ret = m;
	return 0;
}

static void fill_info(const ModelEntry *m, Quantd__ModelInfo *mi)
{
	quantd__model_info__init(mi);
	mi->name = (char *)m->name;
	mi->path = (char *)m->path;
	mi->n_ctx = (uint32_t)m->n_ctx;
	mi->n_vocab = (uint32_t)m->n_vocab;
	mi->n_slots = (uint32_t)m->n_slots;
	mi->weight_bytes = model_weight_bytes(m->model);
	mi->kv_bytes = ctx_kv_bytes(m->ctx);
	mi->chat_family = (char *)chat_family_name(m->chat_family);
}

/* Calls FN on every live request (queued or running) of every model; FN may finish it. */
static void each_req(Worker *w, void (*fn)(Worker *, Req *, void *), void *arg)
{
	for (ModelEntry *m = w->models; m; m = m->next) {
		for (int s = 0; s < m->n_slots; s++)
			if (m->slot[s])
				fn(w, m->slot[s], arg);
		for (Req *r = m->queue, *next; r; r = next) {
			next = r->next;
			fn(w, r, arg);
		}
	}
}

typedef struct {
	uint64_t id, session_id;
	bool found;
} CancelArg;

static void cancel_one(Worker *w, Req *r, void *arg)
{
	CancelArg *a = arg;
	if (r->id == a->id && r->session_id == a->session_id) {
		a->found = true;
		sched_finish(r, QD_FINISH_CANCELLED, 0, &w->pending_final);
	}
}

static void session_gone_one(Worker *w, Req *r, void *arg)
{
	if (r->session_id == *(uint64_t *)arg) {
		atomic_store(&r->shm->dead, 1);
		sched_finish(r, QD_FINISH_CANCELLED, 0, &w->pending_final);
	}
}

static void shutdown_one(Worker *w, Req *r, void *arg)
{
	sched_finish(r, *(int *)arg, 0, &w->pending_final);
}

static void do_generate(Worker *w, Task *t)
{
	char err[256] = "";
	int rc;
	ModelEntry *m = find_model(w, t->model);
	if (w->stop) {
		rc = -ESHUTDOWN;
		snprintf(err, sizeof err, "the daemon is stopping");
	} else if (!m) {
		rc = -ENOENT;
		snprintf(err, sizeof err, t->model[0] ? "no model named %s" : "no model loaded",
			 t->model);
	} else {
		uint32_t pos = 0, n_prompt = 0;
		rc = sched_submit(&w->p.sched, m, t, &pos, &n_prompt, err, sizeof err);
		if (rc == 0) {
			Quantd__Reply rep = QUANTD__REPLY__INIT;
			Quantd__GenerateReply g = QUANTD__GENERATE_REPLY__INIT;
			g.request_id = t->request_id;
			g.n_prompt_tokens = n_prompt;
			g.queue_position = pos;
			rep.body_case = QUANTD__REPLY__BODY_GENERATE;
			rep.generate = &g;
			reply(w, t, &rep);
			return;
		}
	}
	reply_err(w, t, rc, err);
	Req fake = { .session_id = t->session_id, .uid = t->uid, .tokens_reserved = t->max_tokens };
	worker_req_done(&fake); /* give the loop its quota back */
}

/* The model T names, or an error reply (and NULL). */
static ModelEntry *task_model(Worker *w, Task *t)
{
	ModelEntry *m = find_model(w, t->model);
	if (!m) {
		char e[200];
		snprintf(e, sizeof e, t->model[0] ? "no model named %s" : "no model loaded",
			 t->model);
		reply_err(w, t, ENOENT, e);
	}
	return m;
}

static void do_tokenize(Worker *w, Task *t)
{
	ModelEntry *m = task_model(w, t);
	if (!m)
		return;
	/* About a token per byte at most (plus BOS and a prefix space): one call normally. */
	size_t cap = (size_t)t->prompt_len + 4;
	int32_t *ids = NULL;
	int n = -EIO;
	for (int tries = 0; tries < 2; tries++) {
		free(ids);
		ids = malloc(cap * sizeof *ids);
		n = ids ? tok_encode(m->tok, (const char *)t->prompt, t->prompt_len,
				     t->add_bos && tok_add_bos(m->tok), true, ids, cap)
			: -ENOMEM;
		if (n < 0 || (size_t)n <= cap)
			break;
		cap = (size_t)n;
		n = -EIO;
	}
	if (n < 0) {
		reply_err(w, t, n, n == -ENOMEM ? "out of memory" : "cannot tokenize the text");
	} else {
		Quantd__TokenizeReply tr = QUANTD__TOKENIZE_REPLY__INIT;
		tr.n_tokens = (size_t)n;
		tr.tokens = ids;
		Quantd__Reply rep = QUANTD__REPLY__INIT;
		rep.body_case = QUANTD__REPLY__BODY_TOKENIZED;
		rep.tokenized = &tr;
		reply(w, t, &rep);
	}
	free(ids);
}

static void do_detokenize(Worker *w, Task *t)
{
	ModelEntry *m = task_model(w, t);
	if (!m)
		return;
	const size_t n = t->prompt_len / sizeof(int32_t);
	int32_t *ids = (int32_t *)(void *)t->prompt; /* malloc'd: aligned for int32 */
	for (size_t i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= m->n_vocab) {
			char e[96];
			snprintf(e, sizeof e, "token id %d is not in the vocabulary (0..%d)", ids[i],
				 m->n_vocab - 1);
			reply_err(w, t, EINVAL, e);
			return;
		}
	/* The reply is bounded by a packet: a longer text is refused by reply() anyway. */
	char *text = malloc(QD_MSG_MAX + 1);
	int len = text ? tok_decode(m->tok, ids, n, t->show_special, text, QD_MSG_MAX) : -ENOMEM;
	if (len < 0) {
		reply_err(w, t, len, len == -ENOMEM ? "out of memory" : "cannot decode the ids");
	} else if (len > (int)QD_MSG_MAX) {
		reply_err(w, t, E2BIG, "the text does not fit in one control packet");
	} else {
		Quantd__DetokenizeReply dr = QUANTD__DETOKENIZE_REPLY__INIT;
		dr.text.data = (uint8_t *)text;
		dr.text.len = (size_t)len;
		Quantd__Reply rep = QUANTD__REPLY__INIT;
		rep.body_case = QUANTD__REPLY__BODY_DETOKENIZED;
		rep.detokenized = &dr;
		reply(w, t, &rep);
	}
	free(text);
}

static void do_unload(Worker *w, Task *t)
{
	ModelEntry **pp = &w->models;
	while (*pp && strcmp((*pp)->name, t->model))
		pp = &(*pp)->next;
	ModelEntry *m = *pp;
	if (!m) {
		char e[200];
		snprintf(e, sizeof e, "no model named %s", t->model);
		reply_err(w, t, ENOENT, e);
		return;
	}
	for (int s = 0; s < m->n_slots; s++)
		if (m->slot[s])
			sched_finish(m->slot[s], QD_FINISH_UNLOADED, 0, &w->pending_final);
	while (m->queue)
		sched_finish(m->queue, QD_FINISH_UNLOADED, 0, &w->pending_final);
	*pp = m->next;
	atomic_store(&w->n_models, atomic_load(&w->n_models) - 1);
	log_info("unloaded model %s", m->name);
	registry_free(m);
	set_status(w);
	reply_err(w, t, 0, "");
}

static uint64_t rss_bytes(void)
{
	FILE *f = fopen("/proc/self/statm", "re");
	unsigned long long size = 0, rss = 0;
	if (f) {
		if (fscanf(f, "%llu %llu", &size, &rss) != 2)
			rss = 0;
		fclose(f);
	}
	return rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

typedef struct {
	Quantd__RequestInfo *rows;
	Quantd__RequestInfo **ptrs;
	size_t n;
} PsArg;

static void ps_one(Worker *w, Req *r, void *arg)
{
	static const char *const states[] = { "", "queued", "prefill", "decode", "final" };
	PsArg *a = arg;
	if (a->n == MAX_PS_ROWS)
		return;
	Quantd__RequestInfo *ri = &a->rows[a->n];
	quantd__request_info__init(ri);
	ri->id = r->id;
	ri->session_id = r->session_id;
	ri->uid = r->uid;
	ri->pid = (uint32_t)r->pid;
	ri->model = r->m ? r->m->name : "";
	ri->state = (char *)(r->blocked ? "blocked" : states[r->state]);
	ri->n_prompt = (uint32_t)r->n_prompt;
	ri->n_generated = r->n_gen;
	ri->max_tokens = r->max_tokens;
	ri->age_s = (now_ns() - r->t_accept) / 1e9;
	a->ptrs[a->n++] = ri;
}

static void do_stats(Worker *w, Task *t)
{
	int nm = atomic_load(&w->n_models);
	Quantd__ModelStats *ms = calloc((size_t)nm + 1, sizeof *ms);
	Quantd__ModelStats **mp = calloc((size_t)nm + 1, sizeof *mp);
	PsArg ps = { calloc(MAX_PS_ROWS, sizeof *ps.rows), calloc(MAX_PS_ROWS, sizeof *ps.ptrs), 0 };
	if (!ms || !mp || !ps.rows || !ps.ptrs) {
		reply_err(w, t, ENOMEM, "out of memory");
		goto out;
	}
	Quantd__StatsReply sr = QUANTD__STATS_REPLY__INIT;
	uint64_t now = now_ns();
	size_t i = 0;
	for (ModelEntry *m = w->models; m; m = m->next, i++) {
		Quantd__ModelStats *s = &ms[i];
		quantd__model_stats__init(s);
		s->name = m->name;
		s->running = (uint32_t)m->n_running;
		s->queued = (uint32_t)m->n_queued;
		s->tokens_generated = m->tokens_generated;
		s->prompt_tokens = m->prompt_tokens;
		s->requests_done = m->requests_done;
		s->tokens_per_second = now - m->win_t0 > 4000000000ull ? 0 : m->tps;
		s->kv_bytes = ctx_kv_bytes(m->ctx);
		s->slots_used = (uint32_t)m->n_running;
		s->slots = (uint32_t)m->n_slots;
		if (m->host_tokens) {
			s->host_us_per_token = (double)m->host_ns / 1e3 / (double)m->host_tokens;
			s->sample_us_per_token = (double)m->sample_ns / 1e3 / (double)m->host_tokens;
			s->compute_us_per_token = (double)m->compute_ns / 1e3 / (double)m->host_tokens;
		}
		mp[i] = s;
		sr.requests_total += m->requests_done + (uint64_t)m->n_running + (uint64_t)m->n_queued;
	}
	sr.n_models = i;
	sr.models = mp;
	sr.sessions = t->n_sessions;
	sr.uptime_s = (now - w->p.t_start_ns) / 1e9;
	sr.rss_bytes = rss_bytes();
	if (t->list_requests) {
		each_req(w, ps_one, &ps);
		sr.n_requests = ps.n;
		sr.requests = ps.ptrs;
	}
	Quantd__Reply rep = QUANTD__REPLY__INIT;
	rep.body_case = QUANTD__REPLY__BODY_STATS;
	rep.stats = &sr;
	reply(w, t, &rep);
out:
	free(ms);
	free(mp);
	free(ps.rows);
	free(ps.ptrs);
}

static void do_list(Worker *w, Task *t)
{
	int nm = atomic_load(&w->n_models);
	Quantd__ModelInfo *mi = calloc((size_t)nm + 1, sizeof *mi);
	Quantd__ModelInfo **mp = calloc((size_t)nm + 1, sizeof *mp);
	if (!mi || !mp) {
		reply_err(w, t, ENOMEM, "out of memory");
	} else {
		size_t i = 0;
		for (ModelEntry *m = w->models; m; m = m->next, i++) {
			fill_info(m, &mi[i]);
			mp[i] = &mi[i];
		}
		Quantd__ModelList ml = QUANTD__MODEL_LIST__INIT;
		ml.n_models = i;
		ml.models = mp;
		Quantd__Reply rep = QUANTD__REPLY__INIT;
		rep.body_case = QUANTD__REPLY__BODY_MODELS;
		rep.models = &ml;
		reply(w, t, &rep);
	}
	free(mi);
	free(mp);
}

static void do_task(Worker *w, Task *t)
{
	char err[512] = "";
	switch (t->kind) {
	case TASK_GENERATE:
		do_generate(w, t);
		break;
	case TASK_CANCEL: {
		CancelArg a = { t->request_id, t->session_id, false };
		each_req(w, cancel_one, &a);
		reply_err(w, t, a.found ? 0 : ENOENT, a.found ? "" : "no such running request");
		break;
	}
	case TASK_SESSION_GONE: {
		each_req(w, session_gone_one, &t->session_id);
		for (Req **pp = &w->pending_final; *pp;) {
			Req *r = *pp;
			if (r->session_id == t->session_id) {
				*pp = r->next;
				sched_req_free(r);
			} else {
				pp = &r->next;
			}
		}
		break;
	}
	case TASK_WAKE:
		break; /* the next step re-checks ring space */
	case TASK_LOAD: {
		ModelEntry *m;
		sd_notify(0, "WATCHDOG=1");
		int rc = w->stop ? -ESHUTDOWN
				 : load(w, t->path, t->model, (int)t->n_slots, (int)t->n_ctx, &m, err,
					sizeof err);
		sd_notify(0, "WATCHDOG=1");
		if (rc < 0) {
			log_warn("LoadModel %s refused: %s", t->path, err);
			reply_err(w, t, rc, err[0] ? err : strerror(-rc));
		} else {
			Quantd__ModelInfo mi;
			fill_info(m, &mi);
			Quantd__Reply rep = QUANTD__REPLY__INIT;
			rep.body_case = QUANTD__REPLY__BODY_LOADED;
			rep.loaded = &mi;
			reply(w, t, &rep);
		}
		set_status(w);
		break;
	}
	case TASK_UNLOAD:
		do_unload(w, t);
		break;
	case TASK_LIST:
		do_list(w, t);
		break;
	case TASK_STATS:
		do_stats(w, t);
		break;
	case TASK_TOKENIZE:
		do_tokenize(w, t);
		break;
	case TASK_DETOKENIZE:
		do_detokenize(w, t);
		break;
	case TASK_SHUTDOWN: {
		int fin = QD_FINISH_SHUTDOWN;
		w->stop = true;
		each_req(w, shutdown_one, &fin);
		break;
	}
	default:
		break;
	}
	shm_unref(t->shm);
	free(t->prompt);
	free(t);
}

static void feed_watchdog(Worker *w)
{
	uint64_t now = now_ns();
	atomic_store_explicit(&w->beat_ns, now, memory_order_relaxed);
	if (w->p.watchdog_usec && now - w->last_watchdog >= w->p.watchdog_usec * 1000 / 4) {
		sd_notify(0, "WATCHDOG=1");
		w->last_watchdog = now;
	}
}

static bool any_blocked(const Worker *w)
{
	if (w->pending_final)
		return true;
	for (const ModelEntry *m = w->models; m; m = m->next)
		for (int s = 0; s < m->n_slots; s++)
			if (m->slot[s] && m->slot[s]->blocked)
				return true;
	return false;
}

static int load_startup(Worker *w)
{
	for (int i = 0; i < w->p.n_models; i++) {
		const char *arg = w->p.models[i], *eq = strchr(arg, '=');
		char name[QD_NAME_MAX] = "";
		const char *path = arg;
		/* NAME=PATH when the part before '=' is not itself a path */
		if (eq && (size_t)(eq - arg) < sizeof name && !memchr(arg, '/', (size_t)(eq - arg))) {
			memcpy(name, arg, (size_t)(eq - arg));
			name[eq - arg] = 0;
			path = eq + 1;
		}
		char err[512] = "", ext[64];
		/* Loads can outlast TimeoutStartSec=: ask systemd for more time before each. */
		snprintf(ext, sizeof ext, "EXTEND_TIMEOUT_USEC=%llu", 120ull * 1000000);
		sd_notify(0, ext);
		ModelEntry *m;
		int rc = load(w, path, name, 0, 0, &m, err, sizeof err);
		if (rc < 0) {
			log_err("cannot load %s: %s", path, err[0] ? err : strerror(-rc));
			return rc;
		}
		feed_watchdog(w);
	}
	return 0;
}

static void *worker_main(void *arg)
{
	Worker *w = arg;
	int rc = load_startup(w);
	Result *ready = result_new(RESULT_READY, 0);
	if (ready)
		ready->err = rc;
	post(w, ready);
	uint64_t stop_deadline = 0;
	for (;;) {
		for (QNode *n = queue_take(w->tasks), *next; n; n = next) {
			next = n->next;
			do_task(w, (Task *)n);
		}
		flush_wakes(w); /* final records of cancels must not wait for a step */
		int ran = 0;
		if (!w->stop)
			for (ModelEntry *m = w->models; m; m = m->next)
				ran += sched_step(m, &w->pending_final);
		sched_flush_finals(&w->pending_final);
		flush_wakes(w);
		feed_watchdog(w);
		if (w->stop) {
			/* Final records get a moment to drain into slow clients' rings. */
			if (!stop_deadline)
				stop_deadline = now_ns() + 2000000000ull;
			if (!w->pending_final || now_ns() > stop_deadline)
				break;
		}
		if (ran)
			continue;
		int timeout = w->p.watchdog_usec ? (int)(w->p.watchdog_usec / 4000) : 1000;
		if (any_blocked(w) && timeout > 100)
			timeout = 100; /* belt and braces: doorbells should wake us first */
		struct pollfd pfd = { .fd = w->tasks->efd, .events = POLLIN };
		poll(&pfd, 1, timeout);
	}
	while (w->pending_final) {
		Req *r = w->pending_final;
		w->pending_final = r->next;
		sched_req_free(r);
	}
	while (w->models) {
		ModelEntry *m = w->models;
		w->models = m->next;
		registry_free(m);
	}
	flush_wakes(w);
	post(w, result_new(RESULT_STOPPED, 0));
	return NULL;
}

int worker_start(const WorkerParams *p, Queue *tasks, Queue *results, Worker **ret)
{
	Worker *w = calloc(1, sizeof *w);
	if (!w)
		return -ENOMEM;
	w->p = *p;
	w->tasks = tasks;
	w->results = results;
	atomic_init(&w->beat_ns, now_ns());
	atomic_init(&w->n_models, 0);
	g_worker = w;
	int rc = pthread_create(&w->th, NULL, worker_main, w);
	if (rc) {
		free(w);
		g_worker = NULL;
		return -rc;
	}
	*ret = w;
	return 0;
}

void worker_join(Worker *w)
{
	if (!w)
		return;
	pthread_join(w->th, NULL);
	g_worker = NULL;
	free(w->wake);
	free(w);
}

uint64_t worker_heartbeat_ns(const Worker *w)
{
	return atomic_load_explicit(&w->beat_ns, memory_order_relaxed);
}

int worker_n_models(const Worker *w)
{
	return atomic_load_explicit(&w->n_models, memory_order_relaxed);
}
