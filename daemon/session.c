/* daemon/session.c: one client connection on the loop thread: its control messages
 * (validated after unpacking: nothing a client sends is trusted), its shared memory and
 * its share of the per-uid limits.  The only place an errno becomes a wire status. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"

#define MAX_PATH_LEN 4000

Session *loop_find(Loop *L, uint64_t id)
{
	for (Session *s = L->bucket[id % LOOP_BUCKETS]; s; s = s->hnext)
		if (s->id == id)
			return s;
	return NULL;
}

static void push_task(Loop *L, Task *t)
{
	queue_push(L->tasks, &t->node);
}

void session_close(Loop *L, Session *s, const char *why)
{
	if (why)
		log_notice("session %llu (uid %u pid %d) ended: %s", (unsigned long long)s->id,
			   (unsigned)s->cred.uid, (int)s->cred.pid, why);
	for (Session **pp = &L->bucket[s->id % LOOP_BUCKETS]; *pp; pp = &(*pp)->hnext)
		if (*pp == s) {
			*pp = s->hnext;
			break;
		}
	L->n_sessions--;
	/* io_uring holds its own file references: cancel, don't rely on close(). */
	struct io_uring_sqe *sqe = loop_sqe(L);
	io_uring_prep_cancel64(sqe, loop_ud(s->id, OP_RECV), 0);
	io_uring_sqe_set_data64(sqe, loop_ud(0, OP_CANCEL));
	if (s->shm) {
		sqe = loop_sqe(L);
		io_uring_prep_poll_remove(sqe, loop_ud(s->id, OP_BELL));
		io_uring_sqe_set_data64(sqe, loop_ud(0, OP_CANCEL));
		atomic_store(&s->shm->dead, 1);
		Task *t = calloc(1, sizeof *t);
		if (t) {
			t->kind = TASK_SESSION_GONE;
			t->session_id = s->id;
			push_task(L, t);
		}
		shm_unref(s->shm);
	}
	if (s->use)
		s->use->sessions--;
	policy_gc(&L->uses);
	close(s->fd);
	free(s);
}

void session_send(Loop *L, Session *s, Quantd__Reply *rep, const int *fds, unsigned nfds)
{
	int rc = qd_frame_send(s->fd, &rep->base, fds, nfds);
	if (rc < 0)
		session_close(L, s, rc == -EAGAIN ? "client does not read its replies" : NULL);
}

void session_send_err(Loop *L, Session *s, uint64_t id, int err, const char *msg)
{
	Quantd__Reply rep = QUANTD__REPLY__INIT;
	rep.id = id;
	rep.err = err;
	rep.message = (char *)msg;
	int rc = qd_frame_send(s->fd, &rep.base, NULL, 0);
	(void)rc; /* callers that go on using S after an error reply check it themselves */
}

/* protobuf-c strings are NUL-terminated but may contain NULs and be of any length. */
static bool str_ok(const char *s, size_t max)
{
	return s && strnlen(s, max + 1) <= max;
}

static void on_hello(Loop *L, Session *s, uint64_t id, const Quantd__Hello *h)
{
	if (s->hello) {
		session_send_err(L, s, id, EPROTO, "Hello sent twice");
		session_close(L, s, "Hello sent twice");
		return;
	}
	if (h->abi_version != QD_ABI_VERSION) {
		char m[128];
		snprintf(m, sizeof m, "ABI version %u not supported (daemon speaks %u)",
			 h->abi_version, QD_ABI_VERSION);
		session_send_err(L, s, id, EPROTO, m);
		session_close(L, s, NULL);
		return;
	}
	UidUse *u = policy_use(&L->uses, s->cred.uid);
	if (!u || u->sessions >= L->pol.max_sessions_per_uid) {
		session_send_err(L, s, id, u ? EDQUOT : ENOMEM,
				 u ? "too many sessions for this user" : "out of memory");
		session_close(L, s, NULL);
		return;
	}
	int rc = shm_new(&s->shm);
	if (rc < 0) {
		log_err("cannot create session memory: %s", strerror(-rc));
		session_send_err(L, s, id, -rc, "cannot create session memory");
		session_close(L, s, NULL);
		return;
	}
	u->sessions++;
	s->use = u;
	s->hello = true;
	Quantd__Welcome w = QUANTD__WELCOME__INIT;
	w.abi_version = QD_ABI_VERSION;
	w.session_id = s->id;
	w.shm_size = QD_SHM_SIZE;
	w.max_prompt_bytes = QD_PROMPT_MAX - (uint32_t)sizeof(QdPromptRec);
	w.max_tokens = L->pol.max_tokens_per_request;
	w.max_requests = (uint32_t)L->pol.max_requests_per_session;
	Quantd__Reply rep = QUANTD__REPLY__INIT;
	rep.id = id;
	rep.body_case = QUANTD__REPLY__BODY_WELCOME;
	rep.welcome = &w;
	int fds[3] = { s->shm->memfd, s->shm->client_fds[0], s->shm->client_fds[1] };
	rc = qd_frame_send(s->fd, &rep.base, fds, 3);
	shm_drop_client_fds(s->shm);
	if (rc < 0) {
		session_close(L, s, NULL);
		return;
	}
	loop_arm_bell(L, s);
}

static bool sampling_ok(const Quantd__Sampling *p)
{
	if (!p)
		return true;
	return isfinite(p->temperature) && isfinite(p->top_p) && isfinite(p->min_p) &&
	       isfinite(p->repeat_penalty) && p->temperature >= 0 && p->temperature <= 100 &&
	       p->top_p >= 0 && p->min_p >= 0 && p->min_p <= 1 && p->repeat_penalty >= 0 &&
	       p->repeat_penalty <= 100 && p->top_k >= 0 && p->repeat_last_n >= 0 &&
	       p->repeat_last_n <= 4096;
}

static void on_generate(Loop *L, Session *s, uint64_t id, const Quantd__Generate *g)
{
	/* The prompt record is taken first, whatever happens next, so that the ring and
	 * the control stream stay in step. */
	uint16_t type;
	uint32_t len;
	int rc = qd_ring_pop(&s->shm->submit, &type, L->prompt_buf, sizeof L->prompt_buf, &len);
	if (rc == -EAGAIN) {
		session_send_err(L, s, id, EINVAL, "no prompt record in the submit ring");
		return;
	}
	QdPromptRec pr = { 0 };
	if (rc == 0 && len >= sizeof pr)
		memcpy(&pr, L->prompt_buf, sizeof pr);
	if (rc < 0 || len < sizeof pr || pr.tag != g->prompt_tag ||
	    (type != QD_REC_PROMPT_TEXT && type != QD_REC_PROMPT_CHAT &&
	     type != QD_REC_PROMPT_TOKENS)) {
		session_send_err(L, s, id, EPROTO, "bad submit ring record");
		session_close(L, s, "bad submit ring record");
		return;
	}
	const char *err = NULL;
	int code = EINVAL;
	uint32_t max_tokens = g->max_tokens ? g->max_tokens : L->pol.max_tokens_per_request;
	UidUse *u = s->use;
	if (L->stopping) {
		code = ESHUTDOWN;
		err = "the daemon is stopping";
	} else if (!L->ready) {
		code = EAGAIN;
		err = "the daemon is still loading its models";
	} else if (!str_ok(g->model, QD_NAME_MAX - 1)) {
		err = "model name too long";
	} else if (g->n_stop > QD_STOP_MAX) {
		err = "too many stop strings";
	} else if (!sampling_ok(g->sampling)) {
		err = "bad sampling parameters";
	} else if (max_tokens > L->pol.max_tokens_per_request) {
		err = "max_tokens above the daemon's limit";
	} else if (s->n_requests >= L->pol.max_requests_per_session) {
		code = EDQUOT;
		err = "too many requests in flight on this session";
	} else if (u->requests >= L->pol.max_requests_per_uid ||
		   u->tokens + max_tokens > L->pol.max_tokens_per_uid) {
		code = EDQUOT;
		err = "too many requests or tokens in flight for this user";
	}
	for (size_t i = 0; !err && i < g->n_stop; i++)
		if (!str_ok(g->stop[i], QD_STOP_LEN) || !g->stop[i][0])
			err = "stop strings must have 1 to 64 bytes";
	Task *t = err ? NULL : calloc(1, sizeof *t);
	uint8_t *prompt = t ? malloc(len) : NULL;
	if (!err && !prompt) {
		free(t);
		code = ENOMEM;
		err = "out of memory";
	}
	if (err) {
		session_send_err(L, s, id, code, err);
		return;
	}
	memcpy(prompt, L->prompt_buf, len);
	t->kind = TASK_GENERATE;
	t->conn_id = s->id;
	t->reply_id = id;
	t->session_id = s->id;
	t->uid = s->cred.uid;
	t->pid = s->cred.pid;
	t->request_id = L->next_request_id++;
	t->shm = shm_ref(s->shm);
	snprintf(t->model, sizeof t->model, "%s", g->model);
	t->prompt_type = type;
	t->prompt = prompt;
	t->prompt_len = len;
	if (g->sampling) {
		t->sampling.temp = g->sampling->temperature;
		t->sampling.top_k = g->sampling->top_k;
		t->sampling.top_p = g->sampling->top_p;
		t->sampling.min_p = g->sampling->min_p;
		t->sampling.repeat_penalty = g->sampling->repeat_penalty;
		t->sampling.repeat_last_n = g->sampling->repeat_last_n;
		t->sampling.seed = g->sampling->seed;
	}
	t->max_tokens = max_tokens;
	t->n_stop = (int)g->n_stop;
	for (size_t i = 0; i < g->n_stop; i++)
		snprintf(t->stop[i], sizeof t->stop[i], "%s", g->stop[i]);
	t->logprobs = g->logprobs;
	t->t_accept_ns = now_ns();
	s->n_requests++;
	u->requests++;
	u->tokens += max_tokens;
	push_task(L, t);
}

static void on_health(Loop *L, Session *s, uint64_t id)
{
	double age = (now_ns() - worker_heartbeat_ns(L->worker)) / 1e9;
	Quantd__HealthReply h = QUANTD__HEALTH_REPLY__INIT;
	h.models_loaded = (uint32_t)worker_n_models(L->worker);
	h.engine_heartbeat_age_s = age;
	h.ok = L->ready && !L->stopping && age < 10.0;
	h.status = L->stopping ? "stopping" : !L->ready ? "loading" : age >= 10.0 ? "engine stalled"
										: "serving";
	Quantd__Reply rep = QUANTD__REPLY__INIT;
	rep.id = id;
	rep.body_case = QUANTD__REPLY__BODY_HEALTH;
	rep.health = &h;
	session_send(L, s, &rep, NULL, 0);
}

void session_on_packet(Loop *L, Session *s, const uint8_t *buf, size_t len)
{
	qd_arena_reset(&L->arena);
	Quantd__Request *rq = (Quantd__Request *)qd_frame_unpack(&quantd__request__descriptor,
								   &L->arena, buf, len);
	if (!rq) {
		session_send_err(L, s, 0, EPROTO, "malformed control message");
		session_close(L, s, "malformed control message");
		return;
	}
	uint64_t id = rq->id;
	if (!s->allowed) {
		char m[128];
		snprintf(m, sizeof m, "uid %u is not allowed to use this daemon",
			 (unsigned)s->cred.uid);
		session_send_err(L, s, id, EACCES, m);
		session_close(L, s, "access denied");
		return;
	}
	if (!s->hello && rq->body_case != QUANTD__REQUEST__BODY_HELLO) {
		session_send_err(L, s, id, EPROTO, "Hello must come first");
		session_close(L, s, "no Hello");
		return;
	}
	Task *t = NULL;
	int kind = 0;
	switch (rq->body_case) {
	case QUANTD__REQUEST__BODY_HELLO:
		on_hello(L, s, id, rq->hello);
		return;
	case QUANTD__REQUEST__BODY_GENERATE:
		on_generate(L, s, id, rq->generate);
		return;
	case QUANTD__REQUEST__BODY_HEALTH:
		on_health(L, s, id);
		return;
	case QUANTD__REQUEST__BODY_CANCEL:
		kind = TASK_CANCEL;
		break;
	case QUANTD__REQUEST__BODY_LIST_MODELS:
		kind = TASK_LIST;
		break;
	case QUANTD__REQUEST__BODY_STATS:
		kind = TASK_STATS;
		break;
	case QUANTD__REQUEST__BODY_TOKENIZE:
		kind = TASK_TOKENIZE;
		break;
	case QUANTD__REQUEST__BODY_DETOKENIZE:
		kind = TASK_DETOKENIZE;
		break;
	case QUANTD__REQUEST__BODY_LOAD_MODEL:
	case QUANTD__REQUEST__BODY_UNLOAD_MODEL:
		if (!policy_is_admin(&L->pol, s->cred.uid)) {
			session_send_err(L, s, id, EPERM, "loading and unloading models needs an admin uid");
			return;
		}
		kind = rq->body_case == QUANTD__REQUEST__BODY_LOAD_MODEL ? TASK_LOAD : TASK_UNLOAD;
		break;
	default:
		session_send_err(L, s, id, EPROTO, "unknown request");
		session_close(L, s, "unknown request");
		return;
	}
	if (kind == TASK_LOAD &&
	    (!str_ok(rq->load_model->path, MAX_PATH_LEN) || rq->load_model->path[0] != '/' ||
	     !str_ok(rq->load_model->name, QD_NAME_MAX - 1) || rq->load_model->n_slots > 256)) {
		session_send_err(L, s, id, EINVAL, "LoadModel needs an absolute path and a short name");
		return;
	}
	if (kind == TASK_UNLOAD && !str_ok(rq->unload_model->name, QD_NAME_MAX - 1)) {
		session_send_err(L, s, id, EINVAL, "model name too long");
		return;
	}
	if ((kind == TASK_TOKENIZE && !str_ok(rq->tokenize->model, QD_NAME_MAX - 1)) ||
	    (kind == TASK_DETOKENIZE && !str_ok(rq->detokenize->model, QD_NAME_MAX - 1))) {
		session_send_err(L, s, id, EINVAL, "model name too long");
		return;
	}
	if (!L->ready && kind != TASK_CANCEL) {
		session_send_err(L, s, id, EAGAIN, "the daemon is still loading its models");
		return;
	}
	t = calloc(1, sizeof *t);
	if (!t) {
		session_send_err(L, s, id, ENOMEM, "out of memory");
		return;
	}
	t->kind = kind;
	t->conn_id = s->id;
	t->reply_id = id;
	t->session_id = s->id;
	t->uid = s->cred.uid;
	t->pid = s->cred.pid;
	if (kind == TASK_TOKENIZE || kind == TASK_DETOKENIZE) {
		/* The packet bounds both (QD_MSG_MAX), so the copies are small. */
		const void *src = kind == TASK_TOKENIZE ? (const void *)rq->tokenize->text.data
							 : (const void *)rq->detokenize->tokens;
		size_t n = kind == TASK_TOKENIZE ? rq->tokenize->text.len
						 : rq->detokenize->n_tokens * sizeof(int32_t);
		t->prompt = malloc(n + 1);
		if (!t->prompt) {
			free(t);
			session_send_err(L, s, id, ENOMEM, "out of memory");
			return;
		}
		if (n)
			memcpy(t->prompt, src, n);
		t->prompt[n] = 0;
		t->prompt_len = (uint32_t)n;
	}
	switch (kind) {
	case TASK_TOKENIZE:
		snprintf(t->model, sizeof t->model, "%s", rq->tokenize->model);
		t->add_bos = rq->tokenize->add_bos;
		break;
	case TASK_DETOKENIZE:
		snprintf(t->model, sizeof t->model, "%s", rq->detokenize->model);
		t->show_special = rq->detokenize->show_special;
		break;
	case TASK_CANCEL:
		t->request_id = rq->cancel->request_id;
		break;
	case TASK_STATS:
		t->list_requests = rq->stats->requests;
		t->n_sessions = L->n_sessions;
		break;
	case TASK_LOAD:
		snprintf(t->path, sizeof t->path, "%s", rq->load_model->path);
		snprintf(t->model, sizeof t->model, "%s", rq->load_model->name);
		t->n_slots = rq->load_model->n_slots;
		t->n_ctx = rq->load_model->n_ctx;
		log_info("uid %u asks to load %s", (unsigned)s->cred.uid, t->path);
		break;
	case TASK_UNLOAD:
		snprintf(t->model, sizeof t->model, "%s", rq->unload_model->name);
		break;
	}
	push_task(L, t);
}
