/* daemon/engine/forward.c: the Llama forward pass over a batch of tokens from any
 * sequences, through the backend ops table, with an f16 KV cache per sequence slot.
 *
 *   x = embed(tokens)
 *   per layer:  x += Wo · attention(rope(Wq·n(x)), rope(Wk·n(x)), Wv·n(x))   n = RMSNorm
 *               x += Wdown · (silu(Wgate·n(x)) * Wup·n(x))
 *   logits = Wout · n(x)   (only for the tokens that ask for them) */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../kernels/types.h"
#include "model_internal.h"

/* A layer's weights as this context's backend sees them: prepared (uploaded, repacked)
 * matrices and norm vectors in backend memory. */
typedef struct {
	Layer l;
	float *attn_norm_buf, *ffn_norm_buf; /* backend copies, NULL on host-memory backends */
} CtxLayer;

struct Context {
	const Model *m;
	KbBackend *be;
	CtxLayer *layers;     /* [n_layer] */
	KbWeight tok_embd, output;
	const float *output_norm;
	float *output_norm_buf;
	float *logits_host;   /* download target when the backend's memory is not the host's */
	int n_seq, n_ctx, n_batch;
	int64_t kv_dim, slot_stride;
	uint16_t **k_cache, **v_cache; /* per layer: [n_seq][n_ctx][kv_dim] f16 */
	int32_t *seq_len;              /* [n_seq] positions held per slot */
	int32_t *seq_len_next;         /* [n_seq] check_batch's scratch */
	/* activations, [n_batch][...] */
	float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *up;
	float *logits;                 /* [n_out][n_vocab] */
	int32_t *out_rows;             /* [n_batch] batch index of each logits row */
	int32_t *out_argmax;           /* [n_batch] greedy token of each logits row, if have_argmax */
	uint8_t *out_want;             /* [n_batch] WANT_* of each logits row */
	uint8_t *out_host;             /* [n_batch] whether the row is in logits_host */
	uint8_t *out_topk;             /* [n_batch] whether the row is WANT_TOPK (ops->topk's need) */
	int32_t *topk_ids;             /* [n_out][topk_k] ops->topk's candidates, or NULL */
	float *topk_vals;              /* the same */
	int32_t *topk_n;               /* [n_batch] how many each row has */
	int n_out, have_argmax, topk_k; /* topk_k: the k of the last ops->topk call, 0: none */
	/* ctx_decode_ahead: its steps' tokens when fed ([n_batch]: zeros, never written, where
	 * the backend feeds them, else the last step's ids), and on backends without sync_lag the queued
	 * step's ids ([n_batch], after feed_tok); how many steps are queued unread (0 or 1),
	 * and n_tokens of the last ahead step (0: the next one cannot be fed) */
	int32_t *feed_tok, *ahead_ids;
	uint8_t *ahead_want;           /* [n_batch] WANT_ARGMAX (the host's way: ctx_decode's rows) */
	int ahead, feed_n;
	int ids_only;                  /* the readable rows are an ahead step's: ids, no logits */
};

static const ContextParams default_params = { .n_seq = 1, .n_ctx = 0, .n_batch = 512, .n_threads = 0 };

/* Layer matrices, in one list so prepare and release walk the same set. */
static KbWeight *layer_weights(Layer *l, int i)
{
	KbWeight *ws[] = { &l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down };
	return i < 7 ? ws[i] : NULL;
}

const char *ctx_backend_name(const Context *c)
{
	return c->be->ops->describe(c->be);
}

int ctx_n_ctx(const Context *c)
{
	return c->n_ctx;
}

uint64_t ctx_kv_bytes(const Context *c)
{
	return 2ull * (uint64_t)c->m->cfg.n_layer * (uint64_t)c->slot_stride * (uint64_t)c->n_seq * 2;
}

void ctx_free(Context *c)
{
	if (!c)
		return;
	if (c->be) {
		const KbOps *o = c->be->ops;
		for (int il = 0; c->layers && il < c->m->cfg.n_layer; il++) {
			CtxLayer *cl = &c->layers[il];
			for (int i = 0; i < 7; i++)
				if (layer_weights(&cl->l, i)->priv)
					o->weight_release(c->be, layer_weights(&cl->l, i));
			o->release(c->be, cl->attn_norm_buf);
			o->release(c->be, cl->ffn_norm_buf);
		}
		if (c->tok_embd.priv)
			o->weight_release(c->be, &c->tok_embd);
		if (c->output.priv && !c->m->cfg.tied_output)
			o->weight_release(c->be, &c->output);
		o->release(c->be, c->output_norm_buf);
		for (int il = 0; c->k_cache && il < c->m->cfg.n_layer; il++) {
			o->release(c->be, c->k_cache[il]);
			o->release(c->be, c->v_cache[il]);
		}
		float *bufs[] = { c->x, c->xn, c->q, c->k, c->v, c->att, c->tmp, c->gate, c->up, c->logits };
		for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
			o->release(c->be, bufs[i]);
		o->free(c->be);
	}
	free(c->layers);
	free(c->logits_host);
	free(c->k_cache);
	free(c->v_cache);
	free(c->seq_len);
	free(c->seq_len_next);
	free(c->out_rows);
	free(c->out_argmax);
	free(c->feed_tok);
	free(c->ahead_want);
	free(c->out_want);
	free(c->topk_ids);
	free(c->topk_vals);
	free(c->topk_n);
	free(c);
}

static int alloc_f32(Context *c, float **ret, int64_t per_token, int64_t rows)
{
	return c->be->ops->alloc(c->be, sizeof(float) * (size_t)per_token * (size_t)rows, (void **)ret);
}

static int backend_new(const ContextParams *p, KbBackend **ret)
{
	const char *want = p->backend ? p->backend : "cpu";
	bool is_auto = !strcmp(want, "auto");
	if (!strcmp(want, "cuda") || is_auto) {
#ifdef QD_HAVE_CUDA
		int r = kb_cuda_backend_new(p->device, ret);
		if (r == 0 || !is_auto)
			return r;
#else
		if (!is_auto)
			return -ENODEV;
#endif
	} else if (strcmp(want, "cpu") != 0) {
		return -EINVAL;
	}
	return kb_cpu_backend_new(p->n_threads, ret);
}

/* A norm vector in backend memory: the mapping itself on host-memory backends. */
static int prepare_vector(Context *c, const float *host, int64_t n, const float **ret, float **ret_buf)
{
	const KbOps *o = c->be->ops;
	*ret_buf = NULL;
	if (o->host_memory) {
		*ret = host;
		return 0;
	}
	int r = o->alloc(c->be, sizeof(float) * (size_t)n, (void **)ret_buf);
	if (r < 0)
		return r;
	if ((r = o->upload(c->be, *ret_buf, host, sizeof(float) * (size_t)n)) < 0)
		return r;
	*ret = *ret_buf;
	return 0;
}

/* Gives this context's backend its copy of every weight (a no-op on the CPU). */
static int prepare_weights(Context *c)
{
	const Model *m = c->m;
	const KbOps *o = c->be->ops;
	int r;
	c->layers = calloc((size_t)m->cfg.n_layer, sizeof(CtxLayer));
	if (!c->layers)
		return -ENOMEM;
	for (int il = 0; il < m->cfg.n_layer; il++) {
		CtxLayer *cl = &c->layers[il];
		cl->l = m->layers[il];
		for (int i = 0; i < 7; i++)
			if ((r = o->weight_prepare(c->be, layer_weights(&cl->l, i))) < 0)
				return r;
		if ((r = prepare_vector(c, m->layers[il].attn_norm, m->cfg.n_embd, &cl->l.attn_norm, &cl->attn_norm_buf)) < 0 ||
		    (r = prepare_vector(c, m->layers[il].ffn_norm, m->cfg.n_embd, &cl->l.ffn_norm, &cl->ffn_norm_buf)) < 0)
			return r;
	}
	c->tok_embd = m->tok_embd;
	c->tok_embd.rows_only = !m->cfg.tied_output; /* else it is the output head too */
	if ((r = o->weight_prepare(c->be, &c->tok_embd)) < 0)
		return r;
	if (m->cfg.tied_output) {
		c->output = c->tok_embd;
	} else {
		c->output = m->output;
		if ((r = o->weight_prepare(c->be, &c->output)) < 0)
			return r;
	}
	return prepare_vector(c, m->output_norm, m->cfg.n_embd, &c->output_norm, &c->output_norm_buf);
}

/* Device memory a context needs: weights as uploaded (the products' copies, plus the
 * embedding table as stored), the KV cache, the activation buffers, and a reserve for the
 * backend's own buffers (converted activations, graphs, split scratch) and padding. */
static int check_device_memory(Context *c, const ContextParams *p)
{
	const KbOps *o = c->be->ops;
	const ModelConfig *cfg = &c->m->cfg;
	uint64_t free_b = 0, total_b = 0, emb = 0;
	if (!o->mem_info)
		return 0;
	int r = o->mem_info(c->be, &free_b, &total_b);
	if (r < 0)
		return r;
	const KbWeight *e = &c->m->tok_embd;
	if (qd_row_size(e->type, (uint64_t)e->cols, &emb) < 0)
		return -EINVAL;
	emb *= (uint64_t)e->rows;
	const uint64_t mib = 1 << 20, weights = model_weight_bytes(c->m) + emb;
	const uint64_t kv = 2ull * (uint64_t)cfg->n_layer * sizeof(uint16_t) * (uint64_t)c->slot_stride * (uint64_t)c->n_seq;
	const uint64_t per_tok = 3ull * (uint64_t)cfg->n_embd + 2ull * (uint64_t)cfg->n_head * (uint64_t)cfg->head_dim +
				 2ull * (uint64_t)c->kv_dim + 2ull * (uint64_t)cfg->n_ff + (uint64_t)cfg->n_vocab;
	const uint64_t act = sizeof(float) * per_tok * (uint64_t)c->n_batch;
	const uint64_t need = weights + weights / 50 + kv + act + 256 * mib;
	if (need <= free_b)
		return 0;
	if (p->err && p->errlen)
		snprintf(p->err, p->errlen,
			 "needs about %" PRIu64 " MiB of GPU memory (weights %" PRIu64 ", KV cache %" PRIu64
			 " for %d x %d positions, activations %" PRIu64 ", reserve %" PRIu64 "), the device has %" PRIu64
			 " MiB free of %" PRIu64,
			 need / mib, weights / mib, kv / mib, c->n_seq, c->n_ctx, act / mib,
			 (weights / 50 + 256 * mib) / mib, free_b / mib, total_b / mib);
	return -ENOMEM;
}

int ctx_new(const Model *m, const ContextParams *p, Context **ret)
{
	const ModelConfig *cfg = &m->cfg;
	ContextParams pp = p ? *p : default_params;
	if (pp.n_ctx == 0)
		pp.n_ctx = cfg->n_ctx_train < 4096 ? cfg->n_ctx_train : 4096;
	if (pp.n_seq < 1 || pp.n_seq > 4096 || pp.n_ctx < 1 || pp.n_ctx > (1 << 22) || pp.n_batch < 1 ||
	    pp.n_batch > (1 << 16))
		return -EINVAL;
	Context *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->m = m;
	c->n_seq = pp.n_seq;
	c->n_ctx = pp.n_ctx;
	c->n_batch = pp.n_batch;
	c->kv_dim = (int64_t)cfg->n_head_kv * cfg->head_dim;
	c->slot_stride = (int64_t)c->n_ctx * c->kv_dim;
	int r = backend_new(&pp, &c->be);
	if (r < 0)
		goto err;
	const KbOps *o = c->be->ops;
	if ((r = check_device_memory(c, &pp)) < 0 || (r = prepare_weights(c)) < 0)
		goto err;
	r = -ENOMEM;
	c->k_cache = calloc((size_t)cfg->n_layer, sizeof(*c->k_cache));
	c->v_cache = calloc((size_t)cfg->n_layer, sizeof(*c->v_cache));
	c->seq_len = calloc((size_t)c->n_seq, sizeof(*c->seq_len));
	c->seq_len_next = calloc((size_t)c->n_seq, sizeof(*c->seq_len_next));
	c->out_rows = calloc((size_t)c->n_batch, sizeof(*c->out_rows));
	c->out_argmax = calloc((size_t)c->n_batch, sizeof(*c->out_argmax));
	c->feed_tok = calloc(2 * (size_t)c->n_batch, sizeof(*c->feed_tok));
	c->ahead_ids = c->feed_tok ? c->feed_tok + c->n_batch : NULL;
	if ((c->ahead_want = malloc((size_t)c->n_batch)))
		memset(c->ahead_want, WANT_ARGMAX, (size_t)c->n_batch);
	c->out_want = calloc((size_t)c->n_batch, 3);
	c->out_host = c->out_want ? c->out_want + c->n_batch : NULL;
	c->out_topk = c->out_want ? c->out_want + 2 * (size_t)c->n_batch : NULL;
	if (!c->k_cache || !c->v_cache || !c->seq_len || !c->seq_len_next || !c->out_rows || !c->out_argmax ||
	    !c->feed_tok || !c->ahead_want || !c->out_want)
		goto err;
	size_t layer_bytes = sizeof(uint16_t) * (size_t)c->slot_stride * (size_t)c->n_seq;
	for (int il = 0; il < cfg->n_layer; il++)
		if ((r = o->alloc(c->be, layer_bytes, (void **)&c->k_cache[il])) < 0 ||
		    (r = o->alloc(c->be, layer_bytes, (void **)&c->v_cache[il])) < 0)
			goto err;
	const int64_t qd = (int64_t)cfg->n_head * cfg->head_dim;
	if ((r = alloc_f32(c, &c->x, cfg->n_embd, c->n_batch)) < 0 ||
	    (r = alloc_f32(c, &c->xn, cfg->n_embd, c->n_batch)) < 0 ||
	    (r = alloc_f32(c, &c->q, qd, c->n_batch)) < 0 || (r = alloc_f32(c, &c->k, c->kv_dim, c->n_batch)) < 0 ||
	    (r = alloc_f32(c, &c->v, c->kv_dim, c->n_batch)) < 0 || (r = alloc_f32(c, &c->att, qd, c->n_batch)) < 0 ||
	    (r = alloc_f32(c, &c->tmp, cfg->n_embd, c->n_batch)) < 0 ||
	    (r = alloc_f32(c, &c->gate, cfg->n_ff, c->n_batch)) < 0 ||
	    (r = alloc_f32(c, &c->up, cfg->n_ff, c->n_batch)) < 0 ||
	    (r = alloc_f32(c, &c->logits, cfg->n_vocab, c->n_batch)) < 0)
		goto err;
	if (!o->host_memory &&
	    !(c->logits_host = malloc(sizeof(float) * (size_t)cfg->n_vocab * (size_t)c->n_batch))) {
		r = -ENOMEM;
		goto err;
	}
	if (o->topk && o->matmul_argmax) {
		const size_t nk = (size_t)c->n_batch * KB_TOPK_MAX;
		c->topk_ids = malloc(sizeof(int32_t) * nk);
		c->topk_vals = malloc(sizeof(float) * nk);
		c->topk_n = malloc(sizeof(int32_t) * (size_t)c->n_batch);
		if (!c->topk_ids || !c->topk_vals || !c->topk_n) {
			r = -ENOMEM;
			goto err;
		}
	}
	*ret = c;
	return 0;
err:
	ctx_free(c);
	return r;
}

int ctx_seq_truncate(Context *c, int seq, int32_t from)
{
	if (seq < 0 || seq >= c->n_seq || from < 0)
		return -EINVAL;
	if (from < c->seq_len[seq])
		c->seq_len[seq] = from;
	return 0;
}

float *ctx_logits(Context *c, int32_t i)
{
	if (i < 0 || i >= c->n_out || c->ids_only || (c->logits_host && !c->out_host[i]))
		return NULL;
	return (c->logits_host ? c->logits_host : c->logits) + (int64_t)i * c->m->cfg.n_vocab;
}

int32_t ctx_argmax(const Context *c, int32_t i)
{
	return c->have_argmax && i >= 0 && i < c->n_out ? c->out_argmax[i] : -1;
}

int ctx_topk(const Context *c, int32_t i, const int32_t **ids, const float **vals)
{
	if (!c->topk_k || i < 0 || i >= c->n_out || c->out_want[i] != WANT_TOPK || (c->logits_host && c->out_host[i]))
		return -1;
	*ids = c->topk_ids + (size_t)i * (size_t)c->topk_k;
	*vals = c->topk_vals + (size_t)i * (size_t)c->topk_k;
	return c->topk_n[i];
}

/* Checks ids, slots and positions, and that each sequence continues where its cache ends
 * (or rewrites earlier positions, which drops what followed). */
static int check_batch(Context *c, const Batch *b)
{
	if (b->n_tokens < 1 || b->n_tokens > c->n_batch || !b->token || !b->pos || !b->seq)
		return -EINVAL;
	int32_t *len = c->seq_len_next; /* the lengths as the batch leaves them, if it is valid */
	memcpy(len, c->seq_len, sizeof(int32_t) * (size_t)c->n_seq);
	int r = 0;
	for (int t = 0; t < b->n_tokens && !r; t++) {
		int32_t s = b->seq[t], p = b->pos[t];
		if (b->token[t] < 0 || b->token[t] >= c->m->cfg.n_vocab || s < 0 || s >= c->n_seq || p < 0 ||
		    p >= c->n_ctx || p > len[s] || (b->want_logits && b->want_logits[t] > WANT_TOPK))
			r = -EINVAL;
		else
			len[s] = p + 1;
	}
	if (!r)
		memcpy(c->seq_len, len, sizeof(int32_t) * (size_t)c->n_seq);
	return r;
}

/* y[i] = W[i] . x (acc: y[i] += W[i] . x) for i < nw through the backend's fused op, or
 * one product at a time (acc through c->tmp and add) where it has none. */
static int mm(Context *c, int nw, const KbWeight *const *w, const float *x, int n, float *const *y, int acc)
{
	const KbOps *o = c->be->ops;
	if (o->matmul_multi)
		return o->matmul_multi(c->be, nw, w, x, n, y, acc);
	int r = 0;
	for (int i = 0; i < nw && r == 0; i++) {
		if (!acc)
			r = o->matmul(c->be, w[i], x, n, y[i]);
		else if (w[i]->rows > c->m->cfg.n_embd) /* c->tmp holds n_embd per token */
			r = -EINVAL;
		else if ((r = o->matmul(c->be, w[i], x, n, c->tmp)) == 0)
			r = o->add(c->be, y[i], c->tmp, (int64_t)n * w[i]->rows);
	}
	return r;
}

/* RoPE on q and k, then k and v into the cache. */
static int rope_store(Context *c, const KbAttention *a, const Batch *b)
{
	const ModelConfig *cfg = &c->m->cfg;
	const KbOps *o = c->be->ops;
	KbBackend *be = c->be;
	const int n = b->n_tokens;
	if (o->rope_kv_store)
		return o->rope_kv_store(be, a, c->q, c->k, c->v, cfg->rope_dim, cfg->rope_base);
	int r;
	if ((r = o->rope(be, c->q, b->pos, n, cfg->n_head, cfg->head_dim, cfg->rope_dim, cfg->rope_base)) < 0 ||
	    (r = o->rope(be, c->k, b->pos, n, cfg->n_head_kv, cfg->head_dim, cfg->rope_dim, cfg->rope_base)) < 0)
		return r;
	return o->kv_store(be, a, c->k, c->v);
}

/* x += W . in (the residual product), then xn = rmsnorm(x, norm_w): one op where the
 * backend has it (KbOps.matmul_res_norm), else the product and the norm. */
static int res_norm(Context *c, const KbWeight *w, const float *in, int n, const float *norm_w)
{
	const KbOps *o = c->be->ops;
	const ModelConfig *cfg = &c->m->cfg;
	float *const res[1] = { c->x };
	if (o->matmul_res_norm)
		return o->matmul_res_norm(c->be, w, in, n, c->x, norm_w, cfg->n_embd, cfg->norm_eps, c->xn);
	int r = mm(c, 1, (const KbWeight *const[1]){ w }, in, n, res, 1);
	return r < 0 ? r : o->rmsnorm(c->be, c->x, norm_w, n, cfg->n_embd, cfg->norm_eps, c->xn);
}

/* gate = swiglu(W_gate . xn, W_up . xn): one op where the backend has it
 * (KbOps.matmul_swiglu), else the products and the SwiGLU. */
static int gate_up(Context *c, const KbWeight *const *wgu, int n)
{
	const KbOps *o = c->be->ops;
	float *const gu[2] = { c->gate, c->up };
	if (o->matmul_swiglu)
		return o->matmul_swiglu(c->be, wgu, c->xn, n, gu, c->gate);
	int r = mm(c, 2, wgu, c->xn, n, gu, 0);
	return r < 0 ? r : o->swiglu(c->be, c->gate, c->up, n, c->m->cfg.n_ff, c->gate);
}

/* The embedding and the layers: what a step does for any n tokens, reading the batch's
 * ids, positions and slots only through the ops' index arguments, so that a backend
 * may record it (step_begin/step_end) and replay it.  HEAD (every row wants only its
 * greedy id, and the backend finds them: a greedy decode step): the output part too, in
 * the same unit: the last layer's residual product also starts the output norm (as the
 * other layers' start the next attn_norm: res_norm), then the head with the ids, which
 * the backend may deliver at the next sync (KbOps.matmul_argmax). */
static int run_layers(Context *c, const Batch *b, int head)
{
	const ModelConfig *cfg = &c->m->cfg;
	const KbOps *o = c->be->ops;
	KbBackend *be = c->be;
	const int n = b->n_tokens, d = cfg->n_embd;
	int r;
	if ((r = o->get_rows(be, &c->tok_embd, b->token, n, c->x)) < 0)
		return r;
	KbAttention a = {
		.n_tokens = n, .n_head = cfg->n_head, .n_head_kv = cfg->n_head_kv, .head_dim = cfg->head_dim,
		.pos = b->pos, .seq = b->seq, .q = c->q, .kv_slot_stride = c->slot_stride,
		.scale = 1.0f / sqrtf((float)cfg->head_dim), .out = c->att,
	};
	float *const qkv[3] = { c->q, c->k, c->v }, *const res[1] = { c->x };
	int normed = 0; /* the last layer's down product also did this layer's attn_norm */
	for (int il = 0; il < cfg->n_layer; il++) {
		const Layer *l = &c->layers[il].l;
		const KbWeight *const wqkv[3] = { &l->wq, &l->wk, &l->wv }, *const wgu[2] = { &l->w_gate, &l->w_up };
		a.k_cache = c->k_cache[il];
		a.v_cache = c->v_cache[il];
		a.next = &l->wo;
		a.layer_id = il + 1;
		/* the residual adds ride on the products (acc), and so may the norms after them */
		if (!normed && (r = o->rmsnorm(be, c->x, l->attn_norm, n, d, cfg->norm_eps, c->xn)) < 0)
			return r;
		if (o->matmul_rope_kv)
			r = o->matmul_rope_kv(be, wqkv, c->xn, n, qkv, &a, cfg->rope_dim, cfg->rope_base);
		else if ((r = mm(c, 3, wqkv, c->xn, n, qkv, 0)) == 0)
			r = rope_store(c, &a, b);
		if (r < 0 || (r = o->attention(be, &a)) < 0 ||
		    (r = res_norm(c, &l->wo, c->att, n, l->ffn_norm)) < 0 || (r = gate_up(c, wgu, n)) < 0)
			return r;
		/* the next layer's attn_norm with this down product, or the output norm when no
		 * rows are gathered first (ctx_decode) */
		normed = il + 1 < cfg->n_layer && o->matmul_res_norm;
		if (normed)
			r = res_norm(c, &l->w_down, c->gate, n, c->layers[il + 1].l.attn_norm);
		else if (il + 1 == cfg->n_layer && head)
			r = res_norm(c, &l->w_down, c->gate, n, c->output_norm);
		else
			r = mm(c, 1, (const KbWeight *const[1]){ &l->w_down }, c->gate, n, res, 1);
		if (r < 0)
			return r;
	}
	return head ? o->matmul_argmax(be, &c->output, c->xn, n, c->logits, c->out_argmax) : 0;
}

int ctx_decode(Context *c, const Batch *b)
{
	const Model *m = c->m;
	const ModelConfig *cfg = &m->cfg;
	const KbOps *o = c->be->ops;
	KbBackend *be = c->be;
	const int n = b->n_tokens, d = cfg->n_embd;
	/* no row of an earlier batch stays readable, whatever happens below, nor, once the
	 * batch is accepted, the ids of a queued ahead step (its work is done before this
	 * batch's, in order) */
	c->n_out = 0;
	c->have_argmax = 0;
	c->ids_only = 0;
	c->topk_k = 0;
	int r = check_batch(c, b);
	if (r < 0)
		return r; /* (a queued ahead step stays queued) */
	c->ahead = 0;
	c->feed_n = 0;

	/* The rows that want logits, known first: when every row wants only its greedy id
	 * (run_layers' HEAD), the output part is a part of the step; else the rows are
	 * gathered to the front after the layers, normed and multiplied then. */
	int n_out = 0, topk_k = 0, head = o->matmul_argmax != NULL;
	for (int t = 0; t < n; t++) {
		int want = b->want_logits ? b->want_logits[t] : t == n - 1 ? WANT_LOGITS : WANT_NONE;
		if (want == WANT_TOPK) {
			const int k = b->top_k ? b->top_k[t] : 0;
			if (!c->topk_ids || k < 1 || k > KB_TOPK_MAX)
				want = WANT_LOGITS; /* no candidates from the backend: the whole row */
			else if (k > topk_k)
				topk_k = k;
		}
		head &= want == WANT_ARGMAX;
		if (want) {
			c->out_want[n_out] = (uint8_t)want;
			c->out_topk[n_out] = want == WANT_TOPK;
			c->out_rows[n_out++] = t;
		}
	}

	/* Backends with steps may replay the layers as a whole (see KbOps.step_begin); with
	 * the output part or without, they are different steps (variant). */
	const KbStep st = { .n_tokens = n, .token = b->token, .pos = b->pos, .seq = b->seq, .variant = head };
	if (!o->step_begin || (r = o->step_begin(be, &st)) == 0) {
		r = run_layers(c, b, head);
		if (o->step_begin) {
			int re = o->step_end(be, r);
			r = re == 1 ? run_layers(c, b, head) : re;
		}
	}
	if (r < 0)
		return r;
	if (n_out == 0)
		return o->sync(be);

	/* The head's rows: gathered (ascending, each row moves down or stays; none moves when
	 * every row wants its id, HEAD), normed, then one product with the output head. */
	for (int i = 0; i < n_out; i++)
		if (c->out_rows[i] != i &&
		    (r = o->copy(be, c->x + (int64_t)i * d, c->x + (int64_t)c->out_rows[i] * d, sizeof(float) * (size_t)d)) < 0)
			return r;
	if (!head && ((r = o->rmsnorm(be, c->x, c->output_norm, n_out, d, cfg->norm_eps, c->xn)) < 0 ||
		      (r = o->matmul_argmax ? o->matmul_argmax(be, &c->output, c->xn, n_out, c->logits, c->out_argmax)
					    : o->matmul(be, &c->output, c->xn, n_out, c->logits)) < 0))
		return r;
	/* Rows go to the host in runs; a WANT_ARGMAX row whose id the backend found stays, and
	 * so does a WANT_TOPK row, whose candidates come instead (the WANT_TOPK rows' top-k in
	 * one call, k the largest asked for; a row asking less takes the best of them). */
	if (topk_k && (r = o->topk(be, c->logits, n_out, cfg->n_vocab, topk_k, c->out_topk, c->topk_ids,
				    c->topk_vals, c->topk_n)) < 0)
		return r;
	const size_t row = sizeof(float) * (size_t)cfg->n_vocab;
#define KEEP_ON_DEVICE(i) (o->matmul_argmax && c->out_want[i] >= WANT_ARGMAX)
	for (int i = 0; c->logits_host && i < n_out;) {
		const int keep = KEEP_ON_DEVICE(i);
		int e = i + 1;
		while (e < n_out && KEEP_ON_DEVICE(e) == keep)
			e++;
		memset(c->out_host + i, !keep, (size_t)(e - i));
		if (!keep && (r = o->download(be, (char *)c->logits_host + row * (size_t)i,
					      (const char *)c->logits + row * (size_t)i, row * (size_t)(e - i))) < 0)
			return r;
		i = e;
	}
	if ((r = o->sync(be)) < 0)
		return r;
#undef KEEP_ON_DEVICE
	c->n_out = n_out;
	c->have_argmax = o->matmul_argmax != NULL;
	c->topk_k = topk_k;
	return 0;
}

/* Whether ahead steps run back to back on the backend: it keeps a step's ids for the
 * next step and syncs all but the last step (sync_lag).  A fed step's tokens then never
 * leave the device, so ids past the embedding's rows would not be caught: such a model
 * takes the host's way. */
static int ahead_on_backend(const Context *c)
{
	const KbOps *o = c->be->ops;
	return o->sync_lag && o->step_begin && o->matmul_argmax && c->output.rows <= c->tok_embd.rows;
}

/* Makes the queued ahead step's ids readable (ctx_argmax), N rows of them. */
static void ahead_read(Context *c, int n)
{
	c->n_out = n;
	c->have_argmax = 1;
	c->ids_only = 1;
	for (int i = 0; i < n; i++) {
		c->out_rows[i] = i;
		c->out_want[i] = WANT_ARGMAX;
		c->out_topk[i] = 0;
	}
}

int ctx_decode_ahead(Context *c, const Batch *b)
{
	const KbOps *o = c->be->ops;
	KbBackend *be = c->be;
	const int n = b->n_tokens, had = c->ahead, n_had = c->feed_n;
	if (n < 1 || n > c->n_batch || b->want_logits || (!b->token && c->feed_n != n))
		return -EINVAL;
	const int lag = ahead_on_backend(c);
	Batch fb = *b;
	fb.want_logits = NULL;
	if (!b->token) { /* on the backend: zeros from ctx_new, checked but not read */
		if (!lag)
			memcpy(c->feed_tok, c->ahead_ids, sizeof(int32_t) * (size_t)n);
		fb.token = c->feed_tok;
	}
	/* a refused batch leaves a queued step as it was (its ids still to be read) */
	int r = lag ? check_batch(c, &fb) : 0;
	if (r < 0)
		return r;
	c->n_out = 0;
	c->have_argmax = 0;
	c->ids_only = 0;
	c->topk_k = 0;
	c->ahead = 0;
	c->feed_n = 0;
	if (!lag) {
		/* one step at a time (ctx_decode ends it with a sync): this step's ids wait in
		 * ahead_ids, the last one's become readable */
		fb.want_logits = c->ahead_want;
		if ((r = ctx_decode(c, &fb)) < 0)
			return r;
		for (int i = 0; i < (n > n_had ? n : n_had); i++) {
			const int32_t t = c->ahead_ids[i];
			c->ahead_ids[i] = c->out_argmax[i];
			c->out_argmax[i] = t;
		}
		c->ahead = 1;
		c->feed_n = n;
		c->n_out = 0;
		c->have_argmax = 0;
		if (!had)
			return 0;
		ahead_read(c, n_had);
		return 1;
	}
	const KbStep st = { .n_tokens = n, .token = fb.token, .pos = b->pos, .seq = b->seq, .variant = 1,
			    .feed = !b->token };
	/* as ctx_decode's greedy steps (run_layers' HEAD), but the step is left queued; a
	 * step whose recording failed begins again (then op by op), so that a fed step's
	 * tokens are still taken from the device */
	for (int tries = 0; tries < 2; tries++) {
		if ((r = o->step_begin(be, &st)) != 0) /* 1: replayed */
			break;
		if ((r = o->step_end(be, run_layers(c, &fb, 1))) != 1)
			break;
		r = -EIO; /* nothing ran, twice */
	}
	if (r < 0) {
		(void)o->sync(be);
		return r;
	}
	c->ahead = 1;
	c->feed_n = n;
	if (!had)
		return 0;
	/* the step before this one: waited for, its ids to out_argmax */
	if ((r = o->sync_lag(be, 1)) < 0) {
		c->ahead = 0;
		c->feed_n = 0;
		return r;
	}
	ahead_read(c, n_had);
	return 1;
}

int ctx_decode_queues(const Context *c)
{
	return ahead_on_backend(c);
}

int ctx_decode_flush(Context *c)
{
	const int n = c->feed_n;
	if (!c->ahead)
		return 0;
	c->ahead = 0;
	if (ahead_on_backend(c)) {
		const int r = c->be->ops->sync(c->be);
		if (r < 0) {
			c->feed_n = 0;
			return r;
		}
	} else {
		memcpy(c->out_argmax, c->ahead_ids, sizeof(int32_t) * (size_t)n);
	}
	ahead_read(c, n);
	return 1;
}
