/* daemon/sched.c: generation requests on the engine thread.  Each model has one Context
 * with n_slots sequence slots; a request waits in the model's bounded queue until a slot is
 * free, then every step puts one decode token of every running request (and a fair share
 * of prompt chunks for those still in prefill) into a single ctx_decode batch: continuous
 * batching.  Token and final records go straight into the session's complete ring; a
 * request whose ring lacks room for a token and a final record sits the step out rather
 * than block the engine or drop output. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/engine/chat.h"
#include "daemon/engine/tokenizer.h"
#include "log.h"
#include "sched.h"

/* Room a running request needs before it may take part in a step. */
#define NEED_BYTES (QD_REC_SIZE(sizeof(QdTokenRec) + QD_PIECE_MAX) + \
		    QD_REC_SIZE(sizeof(QdFinalRec)))

static int tokenize(ModelEntry *m, const char *text, size_t len, int32_t **ret, int *ret_n)
{
	size_t cap = len + 4;
	for (int tries = 0; tries < 2; tries++) {
		int32_t *ids = malloc(cap * sizeof *ids);
		if (!ids)
			return -ENOMEM;
		int n = tok_encode(m->tok, text, len, tok_add_bos(m->tok), true, ids, cap);
		if (n < 0) {
			free(ids);
			return n;
		}
		if ((size_t)n <= cap) {
			*ret = ids;
			*ret_n = n;
			return 0;
		}
		free(ids);
		cap = (size_t)n;
	}
	return -EIO;
}

/* Chat records hold role NUL content NUL pairs. */
static int render_chat(ModelEntry *m, const uint8_t *p, size_t len, char **ret)
{
	ChatMsg msgs[QD_CHAT_MSGS_MAX];
	size_t n = 0, off = 0;
	if (len == 0 || p[len - 1] != 0)
		return -EINVAL;
	while (off < len) {
		if (n == QD_CHAT_MSGS_MAX)
			return -E2BIG;
		const char *role = (const char *)p + off;
		off += strlen(role) + 1;
		if (off >= len)
			return -EINVAL;
		const char *content = (const char *)p + off;
		off += strlen(content) + 1;
		if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))
			return -EINVAL;
		msgs[n].role = role;
		msgs[n].content = content;
		n++;
	}
	return chat_render(m->chat_family, model_gguf(m->model), msgs, n, true, ret);
}

static int prompt_tokens(ModelEntry *m, const Task *t, int32_t **ret, int *ret_n, char *err,
			 size_t errlen)
{
	const uint8_t *p = t->prompt + sizeof(QdPromptRec);
	size_t len = t->prompt_len - sizeof(QdPromptRec);
	int rc;
	switch (t->prompt_type) {
	case QD_REC_PROMPT_TEXT:
		rc = tokenize(m, (const char *)p, len, ret, ret_n);
		break;
	case QD_REC_PROMPT_CHAT: {
		char *text = NULL;
		rc = render_chat(m, p, len, &text);
		if (rc < 0) {
			snprintf(err, errlen, "malformed chat prompt");
			return rc;
		}
		rc = tokenize(m, text, strlen(text), ret, ret_n);
		free(text);
		break;
	}
	case QD_REC_PROMPT_TOKENS: {
		if (len % 4) {
			snprintf(err, errlen, "token prompt length not a multiple of 4");
			return -EINVAL;
		}
		int n = (int)(len / 4);
		int32_t *ids = malloc((size_t)(n ? n : 1) * sizeof *ids);
		if (!ids)
			return -ENOMEM;
		memcpy(ids, p, len);
		for (int i = 0; i < n; i++)
			if (ids[i] < 0 || ids[i] >= m->n_vocab) {
				snprintf(err, errlen, "token id %d out of range", ids[i]);
				free(ids);
				return -EINVAL;
			}
		*ret = ids;
		*ret_n = n;
		rc = 0;
		break;
	}
	default:
		snprintf(err, errlen, "unknown prompt record type %d", t->prompt_type);
		return -EINVAL;
	}
	if (rc < 0 && !err[0])
		snprintf(err, errlen, "cannot tokenize the prompt: %s", strerror(-rc));
	return rc;
}

int sched_submit(const SchedParams *p, ModelEntry *m, Task *t, uint32_t *ret_queue_pos,
		 uint32_t *ret_n_prompt, char *err, size_t errlen)
{
	if (m->n_running >= m->n_slots && m->n_queued >= p->queue_max) {
		snprintf(err, errlen, "model %s is busy: %d requests running, %d queued", m->name,
			 m->n_running, m->n_queued);
		return -EBUSY;
	}
	int32_t *ids = NULL;
	int n = 0;
	int rc = prompt_tokens(m, t, &ids, &n, err, errlen);
	if (rc < 0)
		return rc;
	if (n == 0 || n >= m->n_ctx) {
		snprintf(err, errlen, n ? "prompt has %d tokens; the context holds %d"
				      : "empty prompt", n, m->n_ctx);
		free(ids);
		return n ? -E2BIG : -EINVAL;
	}
	Req *r = calloc(1, sizeof *r);
	if (!r) {
		free(ids);
		return -ENOMEM;
	}
	SamplerParams sp = sampler_defaults();
	sp.temp = t->sampling.temp;
	sp.top_k = t->sampling.top_k;
	sp.top_p = t->sampling.top_p <= 0 ? 1.0f : t->sampling.top_p;
	sp.min_p = t->sampling.min_p;
	sp.repeat_penalty = t->sampling.repeat_penalty == 0 ? 1.0f : t->sampling.repeat_penalty;
	sp.repeat_last_n = t->sampling.repeat_last_n ? t->sampling.repeat_last_n : 64;
	sp.seed = t->sampling.seed;
	rc = sampler_new(&sp, m->n_vocab, &r->sampler);
	if (rc < 0) {
		snprintf(err, errlen, "bad sampling parameters");
		free(ids);
		free(r);
		return rc;
	}
	for (int i = 0; i < n; i++)
		sampler_accept(r->sampler, ids[i]);
	r->id = t->request_id;
	r->session_id = t->session_id;
	r->uid = t->uid;
	r->pid = t->pid;
	r->shm = t->shm;
	t->shm = NULL;
	r->m = m;
	r->state = REQ_QUEUED;
	r->slot = -1;
	r->prompt = ids;
	r->n_prompt = n;
	r->max_tokens = t->max_tokens;
	r->tokens_reserved = t->max_tokens;
	r->logprobs = t->logprobs;
	r->n_stop = t->n_stop;
	memcpy(r->stop, t->stop, sizeof r->stop);
	r->t_accept = t->t_accept_ns;
	*m->queue_tail = r;
	m->queue_tail = &r->next;
	m->n_queued++;
	m->prompt_tokens += (uint64_t)n;
	int free_slots = m->n_slots - m->n_running;
	*ret_queue_pos = m->n_queued > free_slots ? (uint32_t)(m->n_queued - free_slots) : 0;
	*ret_n_prompt = (uint32_t)n;
	return 0;
}

void sched_req_free(Req *r)
{
	worker_req_done(r);
	shm_unref(r->shm);
	sampler_free(r->sampler);
	free(r->prompt);
	free(r);
}

static void queue_remove(ModelEntry *m, Req *r)
{
	for (Req **pp = &m->queue; *pp; pp = &(*pp)->next)
		if (*pp == r) {
			*pp = r->next;
			if (m->queue_tail == &r->next)
				m->queue_tail = pp;
			m->n_queued--;
			return;
		}
}

static bool shm_dead(const Req *r)
{
	return atomic_load_explicit(&r->shm->dead, memory_order_relaxed) != 0;
}

/* Pushes R's final record; false when the ring has no room yet. */
static bool push_final(Req *r)
{
	if (shm_dead(r))
		return true;
	r->final.t_ns = now_ns();
	int rc = qd_ring_push(&r->shm->complete, QD_REC_FINAL, &r->final, sizeof r->final,
			      NULL, 0);
	if (rc == -EAGAIN) {
		qd_ring_producer_sleep(&r->shm->complete, QD_REC_SIZE(sizeof r->final));
		return false;
	}
	if (rc < 0) {
		atomic_store(&r->shm->dead, 1);
		worker_kill_session(r->session_id, "complete ring indices corrupted");
		return true;
	}
	worker_wake_client(r->shm, r->session_id);
	return true;
}

void sched_finish(Req *r, int finish, int error, Req **pending_final)
{
	ModelEntry *m = r->m;
	uint64_t now = now_ns();
	if (m) {
		if (r->state == REQ_QUEUED)
			queue_remove(m, r);
		for (int i = 0; i < m->a_n; i++) /* a queued step's row: its id is not emitted */
			if (m->a_req[i] == r)
				m->a_req[i] = NULL;
		if (r->slot >= 0) {
			m->slot[r->slot] = NULL;
			ctx_seq_truncate(m->ctx, r->slot, 0);
			m->n_running--;
		}
		m->requests_done++;
	}
	r->slot = -1;
	r->m = NULL;
	r->final = (QdFinalRec){
		.request_id = r->id, .finish = finish, .error = error,
		.n_prompt = (uint32_t)r->n_prompt, .n_generated = r->n_gen,
		.queue_ns = r->t_start ? r->t_start - r->t_accept : now - r->t_accept,
		.prefill_ns = r->t_first ? r->t_first - r->t_start : 0,
		.decode_ns = r->t_first ? now - r->t_first : 0,
	};
	r->state = REQ_FINAL;
	if (push_final(r)) {
		sched_req_free(r);
		return;
	}
	r->next = *pending_final;
	*pending_final = r;
}

void sched_flush_finals(Req **pending_final)
{
	for (Req **pp = pending_final; *pp;) {
		Req *r = *pp;
		if (push_final(r)) {
			*pp = r->next;
			sched_req_free(r);
		} else {
			pp = &r->next;
		}
	}
}

static bool hit_stop(Req *r, const char *piece, int n)
{
	if (!r->n_stop)
		return false;
	char buf[sizeof r->tail + QD_PIECE_MAX];
	memcpy(buf, r->tail, (size_t)r->tail_len);
	memcpy(buf + r->tail_len, piece, (size_t)n);
	int len = r->tail_len + n;
	bool hit = false;
	for (int i = 0; i < r->n_stop && !hit; i++)
		hit = memmem(buf, (size_t)len, r->stop[i], strlen(r->stop[i])) != NULL;
	int keep = len < QD_STOP_LEN ? len : QD_STOP_LEN; /* a later match starts in here */
	memcpy(r->tail, buf + len - keep, (size_t)keep);
	r->tail_len = keep;
	return hit;
}

static float logprob_of(const float *logits, int n, int32_t tok)
{
	float mx = -INFINITY;
	for (int i = 0; i < n; i++)
		mx = logits[i] > mx ? logits[i] : mx;
	double sum = 0;
	for (int i = 0; i < n; i++)
		sum += exp((double)(logits[i] - mx));
	return (float)((double)(logits[tok] - mx) - log(sum));
}

/* One sampled token for R, from output row LI of the step: its logits when they came to
 * the host, else its greedy id or its top-k candidates (see add()). */
static void on_token(ModelEntry *m, Req *r, int li, Req **pending_final)
{
	uint64_t now = now_ns();
	if (r->state == REQ_PREFILL) {
		r->state = REQ_DECODE;
		r->t_first = now;
	}
	const int32_t greedy = ctx_argmax(m->ctx, li);
	float *logits = ctx_logits(m->ctx, li);
	const int32_t *top_ids;
	const float *top_vals;
	int n_top;
	int32_t tok;
	if (r->logprobs && logits) /* of the model's distribution, before any penalty */
		memcpy(m->scratch, logits, (size_t)m->n_vocab * sizeof *logits);
	if ((n_top = ctx_topk(m->ctx, li, &top_ids, &top_vals)) >= 0)
		tok = sampler_sample_top(r->sampler, top_ids, top_vals, n_top, greedy);
	else /* logits NULL (left on the device): -EINVAL unless a plain greedy sampler */
		tok = sampler_sample_known(r->sampler, logits, greedy);
	if (tok < 0 || tok >= m->n_vocab) {
		sched_finish(r, QD_FINISH_ERROR, EIO, pending_final);
		return;
	}
	sampler_accept(r->sampler, tok);
	m->sample_ns += now_ns() - now; /* wall time: two vDSO reads per token are cheap */
	m->tokens_generated++;
	m->win_tokens++;
	if (tok_is_eog(m->tok, tok)) {
		sched_finish(r, QD_FINISH_EOG, 0, pending_final);
		return;
	}
	float lp = 0;
	if (r->logprobs && logits)
		lp = logprob_of(m->scratch, m->n_vocab, tok);
	char piece[QD_PIECE_MAX];
	int n = tok_piece(m->tok, tok, false, piece, sizeof piece);
	n = n < 0 ? 0 : n > (int)QD_PIECE_MAX ? (int)QD_PIECE_MAX : n;
	QdTokenRec tr = {
		.request_id = r->id, .t_ns = now_ns(), .token = tok, .logprob = lp,
		.index = r->n_gen, .piece_len = (uint16_t)n,
	};
	int rc = qd_ring_push(&r->shm->complete, QD_REC_TOKEN, &tr, sizeof tr, piece, (uint32_t)n);
	if (rc < 0) { /* room was checked before the step: only a corrupted head gets here */
		atomic_store(&r->shm->dead, 1);
		worker_kill_session(r->session_id, "complete ring indices corrupted");
		sched_finish(r, QD_FINISH_ERROR, EPROTO, pending_final);
		return;
	}
	worker_wake_client(r->shm, r->session_id);
	r->n_gen++;
	r->last_token = tok;
	if (hit_stop(r, piece, n))
		sched_finish(r, QD_FINISH_STOP, 0, pending_final);
	else if (r->n_gen >= r->max_tokens)
		sched_finish(r, QD_FINISH_LENGTH, 0, pending_final);
	else if (r->n_past - r->queued >= m->n_ctx) /* (a queued step's position is not one more) */
		sched_finish(r, QD_FINISH_CONTEXT, 0, pending_final);
}

static void admit(ModelEntry *m)
{
	for (int s = 0; s < m->n_slots && m->queue; s++) {
		if (m->slot[s])
			continue;
		Req *r = m->queue;
		m->queue = r->next;
		if (!m->queue)
			m->queue_tail = &m->queue;
		m->n_queued--;
		r->next = NULL;
		r->slot = s;
		r->state = REQ_PREFILL;
		r->t_start = now_ns();
		ctx_seq_truncate(m->ctx, s, 0);
		m->slot[s] = r;
		m->n_running++;
	}
}

/* Whether R's complete ring can take NEED bytes now (a token and a final record: NEED_BYTES). */
static bool has_room(Req *r, uint64_t need)
{
	uint64_t fr;
	if (qd_ring_free(&r->shm->complete, &fr) < 0) {
		atomic_store(&r->shm->dead, 1);
		worker_kill_session(r->session_id, "complete ring indices corrupted");
		return false;
	}
	if (fr >= need)
		return true;
	/* Ask the client to ring the submit doorbell once it has read; re-check after
	 * raising the flag so a read that happened meanwhile is not missed. */
	return !qd_ring_producer_sleep(&r->shm->complete, need);
}

static void add(ModelEntry *m, int *n, Req *r, int32_t tok, int32_t pos, bool want)
{
	m->b_tok[*n] = tok;
	m->b_pos[*n] = pos;
	m->b_seq[*n] = r->slot;
	/* Without logprobs, a plain greedy request needs only the row's greedy id, and one with
	 * top_k (and no repetition penalty) only the row's top_k largest logits. */
	const int k = sampler_topk(r->sampler);
	m->b_want[*n] = !want		      ? WANT_NONE
			: r->logprobs		      ? WANT_LOGITS
			: sampler_is_greedy(r->sampler) ? WANT_ARGMAX
			: k > 0			      ? WANT_TOPK
						      : WANT_LOGITS;
	m->b_topk[*n] = k;
	m->b_req[*n] = r;
	(*n)++;
}

/* The engine thread's CPU time when its last forward pass ended; 0: none since the engine
 * last went idle (sched_idle), and the next step measures from its own start. */
static _Thread_local uint64_t fwd_end_cpu;

void sched_idle(void)
{
	fwd_end_cpu = 0;
}

/* Charges a forward call that ran from T1 to T2 (this thread's CPU time, not wall time:
 * the overhead figure must not count the time other processes, clients included, held
 * the cores): everything this thread did since the last one's end (emitting tokens, the
 * loop's own work, building the batch) is host work.  Two clock reads a call (each a
 * system call, ~0.4 µs here) instead of four. */
static void charge_fwd(ModelEntry *m, uint64_t t1, uint64_t t2)
{
	m->host_ns += fwd_end_cpu && t1 > fwd_end_cpu ? t1 - fwd_end_cpu : 0;
	m->compute_ns += t2 - t1;
	fwd_end_cpu = t2;
}

/* Whether the greedy step queued ahead (m->a_req) may be followed by the next one fed by
 * its ids: the same requests would make the next batch (every running request, none
 * blocked, none in prefill), each still decoding, with room for the queued step's token
 * and the next one's, and with a next token to come (length and context). */
static bool ahead_continues(ModelEntry *m)
{
	if (m->n_running != m->a_n)
		return false;
	for (int i = 0; i < m->a_n; i++) {
		Req *r = m->a_req[i];
		if (!r || r->state != REQ_DECODE || r->slot < 0 || shm_dead(r) || r->n_gen + 1 >= r->max_tokens ||
		    r->n_past >= m->n_ctx || !has_room(r, NEED_BYTES + QD_REC_SIZE(sizeof(QdTokenRec) + QD_PIECE_MAX)))
			return false;
	}
	return true;
}

/* The greedy step queued ahead: the next one queued behind it (fed by its ids) when
 * ahead_continues (*RET_MORE), else nothing more queued; then its ids emitted.  Returns its
 * rows; on a failure its requests end with the error and *RET_MORE is false. */
static int ahead_step(ModelEntry *m, Req **pending_final, bool *ret_more)
{
	const int n = m->a_n;
	const bool more = *ret_more = ahead_continues(m);
	for (int i = 0; i < n; i++) {
		Req *r = m->a_req[i];
		m->b_req[i] = r;
		if (!r)
			continue;
		r->queued = more;
		if (more) {
			m->b_pos[i] = r->n_past++;
			m->b_seq[i] = r->slot;
		}
	}
	const uint64_t t1 = thread_cpu_ns();
	Batch b = { .n_tokens = n, .token = NULL, .pos = m->b_pos, .seq = m->b_seq };
	const int rc = more ? ctx_decode_ahead(m->ctx, &b) : ctx_decode_flush(m->ctx);
	charge_fwd(m, t1, thread_cpu_ns());
	if (!more)
		m->a_n = 0;
	if (rc != 1) {
		log_err("model %s: queued decode of %d tokens failed: %s", m->name, n, strerror(rc < 0 ? -rc : EIO));
		m->a_n = 0;
		*ret_more = false;
		for (int i = 0; i < n; i++)
			if (m->b_req[i] && m->b_req[i]->m)
				sched_finish(m->b_req[i], QD_FINISH_ERROR, rc < 0 ? -rc : EIO, pending_final);
		return n;
	}
	/* (a request that ends here leaves the step queued behind: its row's id is dropped) */
	for (int i = 0; i < n; i++)
		if (m->b_req[i] && m->b_req[i]->m) {
			on_token(m, m->b_req[i], i, pending_final);
			m->host_tokens++;
		}
	return n;
}

int sched_step(ModelEntry *m, Req **pending_final)
{
	if (!fwd_end_cpu && (m->queue || m->n_running))
		fwd_end_cpu = thread_cpu_ns(); /* the first step after idle: not the idle time */
	admit(m);
	int emitted = 0;
	if (m->a_n) {
		bool more = false;
		emitted = ahead_step(m, pending_final, &more);
		if (more)
			return emitted;
	}
	int n = 0, n_pre = 0;
	for (int s = 0; s < m->n_slots; s++) {
		Req *r = m->slot[s];
		if (!r)
			continue;
		r->blocked = shm_dead(r) || !has_room(r, NEED_BYTES);
		if (r->blocked)
			continue;
		if (r->state == REQ_DECODE && n < m->n_batch) {
			add(m, &n, r, r->last_token, r->n_past, true);
			r->n_past++;
		} else if (r->state == REQ_PREFILL) {
			n_pre++;
		}
	}
	/* Prompt chunks share what the decode tokens left of the batch. */
	for (int s = 0; s < m->n_slots && n_pre > 0; s++) {
		Req *r = m->slot[s];
		if (!r || r->blocked || r->state != REQ_PREFILL)
			continue;
		int share = (m->n_batch - n) / n_pre--;
		int chunk = r->n_prompt - r->n_fed;
		if (chunk > share)
			chunk = share;
		for (int k = 0; k < chunk; k++) {
			bool last = r->n_fed + 1 == r->n_prompt;
			add(m, &n, r, r->prompt[r->n_fed], r->n_past, last);
			r->n_fed++;
			r->n_past++;
		}
	}
	if (n == 0)
		return emitted;
	/* Only greedy decode rows: queued ahead, their ids emitted at the next step. */
	bool ahead = m->ahead_on && n_pre == 0;
	for (int i = 0; i < n && ahead; i++)
		ahead = m->b_want[i] == WANT_ARGMAX;
	Batch b = { .n_tokens = n, .token = m->b_tok, .pos = m->b_pos, .seq = m->b_seq,
		    .want_logits = ahead ? NULL : m->b_want, .top_k = m->b_topk };
	const uint64_t t1 = thread_cpu_ns();
	int rc = ahead ? ctx_decode_ahead(m->ctx, &b) : ctx_decode(m->ctx, &b);
	charge_fwd(m, t1, thread_cpu_ns());
	if (rc < 0) {
		log_err("model %s: decode of %d tokens failed: %s", m->name, n, strerror(-rc));
		for (int i = 0; i < n; i++) {
			Req *r = m->b_req[i];
			if (r->m && r->slot >= 0 && (i == n - 1 || m->b_req[i + 1] != r))
				sched_finish(r, QD_FINISH_ERROR, -rc, pending_final);
		}
		return n;
	}
	if (ahead) {
		memcpy(m->a_req, m->b_req, sizeof(Req *) * (size_t)n);
		m->a_n = n;
		return n;
	}
	/* The forward pass has just streamed the weights through the caches: start every
	 * miss the emission below will take (token tables, request and ring state) at once
	 * instead of one after another. */
	for (int i = 0, j = 0; i < n; i++) {
		if (!m->b_want[i])
			continue;
		Req *r = m->b_req[i];
		tok_prefetch(m->tok, ctx_argmax(m->ctx, j++));
		__builtin_prefetch(r);
		__builtin_prefetch(r->sampler);
		__builtin_prefetch(r->shm, 1);
		__builtin_prefetch(&r->shm->complete, 1);
	}
	int li = 0;
	for (int i = 0; i < n; i++) {
		if (!m->b_want[i])
			continue;
		on_token(m, m->b_req[i], li++, pending_final);
	}
	uint64_t now = now_ns();
	m->host_tokens += (uint64_t)li;
	if (!m->win_t0)
		m->win_t0 = now;
	if (now - m->win_t0 >= 2000000000ull) {
		m->tps = (double)m->win_tokens * 1e9 / (double)(now - m->win_t0);
		m->win_t0 = now;
		m->win_tokens = 0;
	}
	return n;
}
