/* daemon/worker.c: the engine thread (see worker.h): its loop, the task dispatch, model
 * loading and unloading, and the hooks sched.c calls.  Read-only queries are in query.c. */
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

#include "loader.h"
#include "log.h"
#include "proto/quantd.pb-c.h"
#include "worker_internal.h"

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

void worker_reply(Worker *w, const Task *t, Quantd__Reply *rep)
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

void worker_reply_err(Worker *w, const Task *t, int err, const char *msg)
{
	Quantd__Reply rep = QUANTD__REPLY__INIT;
	rep.err = err < 0 ? -err : err;
	rep.message = (char *)msg;
	worker_reply(w, t, &rep);
}

ModelEntry *worker_find_model(Worker *w, const char *name)
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

static uint64_t limit_left(const Worker *w)
{
	uint64_t lim = w->p.sched.mem_limit, used = used_estimate(w);
	return !lim ? UINT64_MAX : lim > used ? lim - used : 0;
}

/* Appends M (loaded in NS) to the model list. */
static void adopt(Worker *w, ModelEntry *m, uint64_t ns)
{
	ModelEntry **pp = &w->models;
	while (*pp)
		pp = &(*pp)->next;
	*pp = m;
	atomic_store(&w->n_models, atomic_load(&w->n_models) + 1);
	log_info("loaded model %s from %s in %.2f s: %d slots x %d positions, ~%.0f MiB",
		 m->name, m->path, ns / 1e9, m->n_slots, m->n_ctx, m->estimate / (1024.0 * 1024.0));
}

/* A startup model, loaded on this thread (nothing runs yet that it could hold up). */
static int load(Worker *w, const char *path, const char *name, ModelEntry **ret, char *err,
		size_t errlen)
{
	if (name[0] && worker_find_model(w, name)) {
		snprintf(err, errlen, "a model named %s is loaded already", name);
		return -EEXIST;
	}
	char st[4200];
	snprintf(st, sizeof st, "STATUS=Loading %s", path);
	sd_notify(0, st);
	ModelEntry *m = NULL;
	uint64_t t0 = now_ns();
	int rc = registry_load(&w->p.sched, path, name, 0, 0, limit_left(w), &m, err, errlen);
	if (rc < 0)
		return rc;
	if (worker_find_model(w, m->name)) { /* the derived name collides */
		snprintf(err, errlen, "a model named %s is loaded already", m->name);
		registry_free(m);
		return -EEXIST;
	}
	adopt(w, m, now_ns() - t0);
	*ret = m;
	return 0;
}

static void task_free(Task *t)
{
	shm_unref(t->shm);
	free(t->prompt);
	free(t);
}

static void reply_loaded(Worker *w, const Task *t, const ModelEntry *m)
{
	Quantd__ModelInfo mi;
	query_fill_info(m, &mi);
	Quantd__Reply rep = QUANTD__REPLY__INIT;
	rep.body_case = QUANTD__REPLY__BODY_LOADED;
	rep.loaded = &mi;
	worker_reply(w, t, &rep);
}

/* LoadModel at run time: checks what can be refused at once, then hands the load to the
 * loader thread so that the other models keep generating.  Returns true when T was kept
 * (it is answered and freed by finish_load()), false when it was answered here.
 *
 * One load at a time.  A second LoadModel meanwhile is refused, not queued: -EEXIST when
 * it asks for the same name, else -EBUSY ("try again"); a queue would only hide from the
 * admin that loads are serialized, and a refusal is immediate and retryable.  The memory
 * limit left is computed now: no other model can be added before this one is adopted,
 * and an unload meanwhile only makes it more conservative. */
static bool start_load(Worker *w, Task *t)
{
	char name[QD_NAME_MAX], err[QD_NAME_MAX + 128];
	int rc;
	if (t->model[0])
		snprintf(name, sizeof name, "%s", t->model);
	else
		registry_default_name(t->path, name, sizeof name);
	if (w->stop) {
		rc = -ESHUTDOWN;
		snprintf(err, sizeof err, "the daemon is stopping");
	} else if (!name[0]) {
		rc = -EINVAL;
		snprintf(err, sizeof err, "no model name in the path: give one");
	} else if (worker_find_model(w, name)) {
		rc = -EEXIST;
		snprintf(err, sizeof err, "a model named %s is loaded already", name);
	} else if (loader_busy(w->loader)) {
		bool same = !strcmp(loader_name(w->loader), name);
		rc = same ? -EEXIST : -EBUSY;
		snprintf(err, sizeof err, same ? "a model named %s is being loaded"
			 : "busy loading %s: one LoadModel at a time, try again when it is done",
			 same ? name : loader_name(w->loader));
	} else {
		rc = loader_start(w->loader, &w->p.sched, t->path, name, (int)t->n_slots,
				  (int)t->n_ctx, limit_left(w));
		if (rc == 0) {
			char st[4200];
			snprintf(st, sizeof st, "STATUS=Loading %s", t->path);
			sd_notify(0, st);
			w->load_task = t;
			return true;
		}
		snprintf(err, sizeof err, "cannot start the loader: %s", strerror(-rc));
	}
	log_warn("LoadModel %s refused: %s", t->path, err);
	worker_reply_err(w, t, rc, err);
	return false;
}

/* The loader is done: adopt its model (or pass on its error) and answer the LoadModel. */
static void finish_load(Worker *w)
{
	Task *t = w->load_task;
	ModelEntry *m = NULL;
	uint64_t ns = 0;
	char err[512] = "";
	int rc = loader_finish(w->loader, &m, &ns, err, sizeof err);
	w->load_task = NULL;
	if (rc == 0 && w->stop) {
		registry_free(m);
		rc = -ESHUTDOWN;
		snprintf(err, sizeof err, "the daemon is stopping");
	} else if (rc == 0 && worker_find_model(w, m->name)) { /* start_load() refused this already */
		snprintf(err, sizeof err, "a model named %s is loaded already", m->name);
		registry_free(m);
		rc = -EEXIST;
	}
	if (rc < 0) {
		log_warn("LoadModel %s failed: %s", t->path, err);
		worker_reply_err(w, t, rc, err);
	} else {
		adopt(w, m, ns);
		reply_loaded(w, t, m);
	}
	if (!w->stop) /* else STATUS=Stopping stays */
		set_status(w);
	task_free(t);
}

/* Why there is no model called NAME, into E. */
void worker_no_model(const Worker *w, const char *name, char *e, size_t len)
{
	if (!name[0])
		snprintf(e, len, "no model loaded");
	else if (!strcmp(loader_name(w->loader), name))
		snprintf(e, len, "model %s is still being loaded", name);
	else
		snprintf(e, len, "no model named %s", name);
}

/* Calls FN on every live request (queued or running) of every model; FN may finish it. */
void worker_each_req(Worker *w, void (*fn)(Worker *, Req *, void *), void *arg)
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
	ModelEntry *m = worker_find_model(w, t->model);
	if (w->stop) {
		rc = -ESHUTDOWN;
		snprintf(err, sizeof err, "the daemon is stopping");
	} else if (!m) {
		rc = -ENOENT;
		worker_no_model(w, t->model, err, sizeof err);
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
			worker_reply(w, t, &rep);
			return;
		}
	}
	worker_reply_err(w, t, rc, err);
	Req fake = { .session_id = t->session_id, .uid = t->uid, .tokens_reserved = t->max_tokens };
	worker_req_done(&fake); /* give the loop its quota back */
}

static void do_unload(Worker *w, Task *t)
{
	ModelEntry **pp = &w->models;
	while (*pp && strcmp((*pp)->name, t->model))
		pp = &(*pp)->next;
	ModelEntry *m = *pp;
	if (!m && t->model[0] && !strcmp(loader_name(w->loader), t->model)) {
		/* Nothing to unload yet; cancelling the load halfway is not possible. */
		char e[200];
		snprintf(e, sizeof e, "model %s is still being loaded: unload it once its "
			 "LoadModel has answered", t->model);
		worker_reply_err(w, t, EBUSY, e);
		return;
	}
	if (!m) {
		char e[200];
		snprintf(e, sizeof e, "no model named %s", t->model);
		worker_reply_err(w, t, ENOENT, e);
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
	worker_reply_err(w, t, 0, "");
}

static void do_task(Worker *w, Task *t)
{
	switch (t->kind) {
	case TASK_GENERATE:
		do_generate(w, t);
		break;
	case TASK_CANCEL: {
		CancelArg a = { t->request_id, t->session_id, false };
		worker_each_req(w, cancel_one, &a);
		worker_reply_err(w, t, a.found ? 0 : ENOENT, a.found ? "" : "no such running request");
		break;
	}
	case TASK_SESSION_GONE: {
		worker_each_req(w, session_gone_one, &t->session_id);
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
	case TASK_LOAD:
		if (start_load(w, t))
			return; /* kept until the load is done */
		break;
	case TASK_UNLOAD:
		do_unload(w, t);
		break;
	case TASK_LIST:
		query_list(w, t);
		break;
	case TASK_STATS:
		query_stats(w, t);
		break;
	case TASK_TOKENIZE:
		query_tokenize(w, t);
		break;
	case TASK_DETOKENIZE:
		query_detokenize(w, t);
		break;
	case TASK_SHUTDOWN: {
		int fin = QD_FINISH_SHUTDOWN;
		w->stop = true;
		worker_each_req(w, shutdown_one, &fin);
		break;
	}
	default:
		break;
	}
	task_free(t);
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

/* While a stop waits for a load in flight: more time from systemd, every 10 s, for at
 * most 10 minutes. */
static void extend_stop(Worker *w)
{
	uint64_t now = now_ns();
	if (w->last_extend && now - w->last_extend < 10000000000ull)
		return;
	/* not for ever: a load that hangs (a stalled network mapping, a stuck upload) must
	 * not keep systemd from escalating; 10 minutes, then its TimeoutStopSec= applies */
	if (!w->first_extend)
		w->first_extend = now;
	if (now - w->first_extend > 600000000000ull)
		return;
	char s[QD_NAME_MAX + 128];
	snprintf(s, sizeof s, "EXTEND_TIMEOUT_USEC=%llu\nSTATUS=Stopping: waiting for the load of %s to end",
		 30ull * 1000000, loader_name(w->loader));
	sd_notify(0, s);
	w->last_extend = now;
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
		int rc = load(w, path, name, &m, err, sizeof err);
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
		/* before the tasks: a LoadModel among them may then start at once */
		if (w->load_task && loader_done(w->loader))
			finish_load(w);
		/* the hot path asks without a system call: after a forward pass even an empty
		 * eventfd read cost ~5 us here (cold caches, kernel ones included) */
		for (QNode *n = queue_pending(w->tasks) ? queue_take(w->tasks) : NULL, *next; n; n = next) {
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
			/* A load cannot be interrupted: wait for it (feeding the watchdog, and
			 * asking systemd for more than TimeoutStopSec= while it lasts) so that its
			 * LoadModel is answered and its memory freed. */
			if (w->load_task)
				extend_stop(w);
			if ((!w->pending_final || now_ns() > stop_deadline) && !w->load_task)
				break;
		}
		if (ran)
			continue;
		if (queue_rearm(w->tasks))
			continue; /* queued since the check above */
		sched_idle();
		int timeout = w->p.watchdog_usec ? (int)(w->p.watchdog_usec / 4000) : 1000;
		if (any_blocked(w) && timeout > 100)
			timeout = 100; /* belt and braces: doorbells should wake us first */
		struct pollfd pfd[2] = { { .fd = w->tasks->efd, .events = POLLIN },
					 { .fd = loader_fd(w->loader), .events = POLLIN } };
		poll(pfd, 2, timeout);
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
	int rc = loader_new(&w->loader);
	if (rc < 0) {
		free(w);
		return rc;
	}
	g_worker = w;
	rc = pthread_create(&w->th, NULL, worker_main, w);
	if (rc) {
		loader_free(w->loader);
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
	loader_free(w->loader); /* idle: the engine loop waited for any load */
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
