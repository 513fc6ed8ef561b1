/* daemon/query.c: the engine thread's read-only answers: ListModels, Stats, Tokenize and
 * Detokenize (see worker_internal.h).  Nothing here changes a model or a request. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/engine/chat.h"
#include "daemon/engine/tokenizer.h"
#include "proto/quantd.pb-c.h"
#include "worker_internal.h"

#define MAX_PS_ROWS 100 /* keeps a StatsReply well under QD_MSG_MAX */

void query_fill_info(const ModelEntry *m, Quantd__ModelInfo *mi)
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

/* The model T names, or an error reply (and NULL). */
static ModelEntry *task_model(Worker *w, Task *t)
{
	ModelEntry *m = worker_find_model(w, t->model);
	if (!m) {
		char e[200];
		worker_no_model(w, t->model, e, sizeof e);
		worker_reply_err(w, t, ENOENT, e);
	}
	return m;
}

void query_tokenize(Worker *w, Task *t)
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
		worker_reply_err(w, t, n, n == -ENOMEM ? "out of memory" : "cannot tokenize the text");
	} else {
		Quantd__TokenizeReply tr = QUANTD__TOKENIZE_REPLY__INIT;
		tr.n_tokens = (size_t)n;
		tr.tokens = ids;
		Quantd__Reply rep = QUANTD__REPLY__INIT;
		rep.body_case = QUANTD__REPLY__BODY_TOKENIZED;
		rep.tokenized = &tr;
		worker_reply(w, t, &rep);
	}
	free(ids);
}

void query_detokenize(Worker *w, Task *t)
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
			worker_reply_err(w, t, EINVAL, e);
			return;
		}
	/* The reply is bounded by a packet: a longer text is refused by worker_reply() anyway. */
	char *text = malloc(QD_MSG_MAX + 1);
	int len = text ? tok_decode(m->tok, ids, n, t->show_special, text, QD_MSG_MAX) : -ENOMEM;
	if (len < 0) {
		worker_reply_err(w, t, len, len == -ENOMEM ? "out of memory" : "cannot decode the ids");
	} else if (len > (int)QD_MSG_MAX) {
		worker_reply_err(w, t, E2BIG, "the text does not fit in one control packet");
	} else {
		Quantd__DetokenizeReply dr = QUANTD__DETOKENIZE_REPLY__INIT;
		dr.text.data = (uint8_t *)text;
		dr.text.len = (size_t)len;
		Quantd__Reply rep = QUANTD__REPLY__INIT;
		rep.body_case = QUANTD__REPLY__BODY_DETOKENIZED;
		rep.detokenized = &dr;
		worker_reply(w, t, &rep);
	}
	free(text);
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

void query_stats(Worker *w, Task *t)
{
	int nm = atomic_load(&w->n_models);
	Quantd__ModelStats *ms = calloc((size_t)nm + 1, sizeof *ms);
	Quantd__ModelStats **mp = calloc((size_t)nm + 1, sizeof *mp);
	PsArg ps = { calloc(MAX_PS_ROWS, sizeof *ps.rows), calloc(MAX_PS_ROWS, sizeof *ps.ptrs), 0 };
	if (!ms || !mp || !ps.rows || !ps.ptrs) {
		worker_reply_err(w, t, ENOMEM, "out of memory");
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
		worker_each_req(w, ps_one, &ps);
		sr.n_requests = ps.n;
		sr.requests = ps.ptrs;
	}
	Quantd__Reply rep = QUANTD__REPLY__INIT;
	rep.body_case = QUANTD__REPLY__BODY_STATS;
	rep.stats = &sr;
	worker_reply(w, t, &rep);
out:
	free(ms);
	free(mp);
	free(ps.rows);
	free(ps.ptrs);
}

void query_list(Worker *w, Task *t)
{
	int nm = atomic_load(&w->n_models);
	Quantd__ModelInfo *mi = calloc((size_t)nm + 1, sizeof *mi);
	Quantd__ModelInfo **mp = calloc((size_t)nm + 1, sizeof *mp);
	if (!mi || !mp) {
		worker_reply_err(w, t, ENOMEM, "out of memory");
	} else {
		size_t i = 0;
		for (ModelEntry *m = w->models; m; m = m->next, i++) {
			query_fill_info(m, &mi[i]);
			mp[i] = &mi[i];
		}
		Quantd__ModelList ml = QUANTD__MODEL_LIST__INIT;
		ml.n_models = i;
		ml.models = mp;
		Quantd__Reply rep = QUANTD__REPLY__INIT;
		rep.body_case = QUANTD__REPLY__BODY_MODELS;
		rep.models = &ml;
		worker_reply(w, t, &rep);
	}
	free(mi);
	free(mp);
}

