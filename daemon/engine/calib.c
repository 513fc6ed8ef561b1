/* daemon/engine/calib.c: calibration activations for the calibrated methods, computed by
 * our own forward pass one block at a time (the engine's forward.c is not touched: this
 * file drives the same public CPU kernels through the backend ops table).
 *
 * State: the residual stream X of every calibration token, [N][n_embd] f32, N = seqs x ctx.
 * For block il, in GPTQ's sequential order:
 *   xn = RMSNorm(X)·attn_norm     -> H_attn   -> GPTQ of q, k, v
 *   att = attention(q, k, v)      (with the quantized q, k, v)   -> H_o -> GPTQ of o
 *   X += Wo_q·att
 *   xn = RMSNorm(X)·ffn_norm      -> H_ffn    -> GPTQ of gate, up
 *   h = silu(gate_q·xn) * up_q·xn -> H_down   -> GPTQ of down
 *   X += Wdown_q·h
 * so each layer is calibrated on the inputs the quantized model really gives it. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errmsg.h"
#include "../../kernels/backend.h"
#include "../../kernels/cpu/quant.h"
#include "../../kernels/types.h"
#include "awq_internal.h"
#include "gptq_internal.h"
#include "model_internal.h"
#include "quantize_internal.h"

struct QuantCalib {
	const QuantParams *p;
	Model *m;
	KbThreadPool *tp;
	KbBackend *be;
	const QPlanTensor *plan;
	size_t n_plan;
	int64_t n_seq, ctx, N;
	float *X;      /* [N][n_embd] residual stream */
	float *XN;     /* [N][n_embd] normed input of the current sub-block */
	float *ATT;    /* [N][q_dim] */
	float *HID;    /* [N][n_ff] */
	float *q, *k, *v, *tmp, *gate, *up; /* one sequence: [ctx][...] */
	uint16_t *kc, *vc; /* one sequence's KV cache [ctx][kv_dim] f16 */
	int32_t *pos, *seq;
	float *H;      /* [n_ff][n_ff] Hessian scratch */
	float *W;      /* dequantized weight scratch */
	double awq_alpha[4], awq_shrink[QL_COUNT]; /* AWQ: sums over the blocks so far, for a note */
};

void calib_free(QuantCalib *c)
{
	if (!c)
		return;
	if (c->be)
		c->be->ops->free(c->be);
	model_free(c->m);
	free(c->X);
	free(c->XN);
	free(c->ATT);
	free(c->HID);
	free(c->q);
	free(c->k);
	free(c->v);
	free(c->tmp);
	free(c->gate);
	free(c->up);
	free(c->kc);
	free(c->vc);
	free(c->pos);
	free(c->seq);
	free(c->H);
	free(c->W);
	free(c);
}

void quant_layer_out_done(QuantLayerOut *o)
{
	for (int k = 0; k < QL_COUNT; k++)
		free(o->w[k]);
	free(o->attn_norm);
	free(o->ffn_norm);
	memset(o, 0, sizeof(*o));
}

static float *alloc_f(int64_t a, int64_t b)
{
	return malloc(sizeof(float) * (size_t)a * (size_t)b);
}

int calib_new(const char *path, const QuantParams *p, const QPlanTensor *plan, size_t n_plan, KbThreadPool *tp,
	      QuantCalib **ret, char *err, size_t errlen)
{
	QuantCalib *c = calloc(1, sizeof(*c));
	if (!c)
		return qd_errf(err, errlen, -ENOMEM, "out of memory");
	c->p = p;
	c->tp = tp;
	c->plan = plan;
	c->n_plan = n_plan;
	int r = model_load(path, &c->m, err, errlen);
	if (r < 0)
		goto out;
	const ModelConfig *cfg = &c->m->cfg;
	if (cfg->n_embd % 16 || cfg->n_ff % 16 || (cfg->n_head * cfg->head_dim) % 16) {
		r = qd_errf(err, errlen, -EOPNOTSUPP, "calibration needs layer widths that are multiples of 16");
		goto out;
	}
	c->ctx = p->calib_ctx;
	int n = tok_encode(c->m->tok, p->calib_text, p->calib_len, false, false, NULL, 0);
	if (n < 0) {
		r = qd_errf(err, errlen, n, "cannot tokenize the calibration text");
		goto out;
	}
	c->n_seq = n / c->ctx < p->calib_seqs ? n / c->ctx : p->calib_seqs;
	if (c->n_seq < 1) {
		r = qd_errf(err, errlen, -EINVAL, "the calibration text has %d tokens, fewer than one sequence of %lld", n,
			 (long long)c->ctx);
		goto out;
	}
	c->N = c->n_seq * c->ctx;
	int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
	if (!ids || tok_encode(c->m->tok, p->calib_text, p->calib_len, false, false, ids, (size_t)n) != n) {
		free(ids);
		r = qd_errf(err, errlen, -ENOMEM, "out of memory");
		goto out;
	}
	const int64_t d = cfg->n_embd, qd = (int64_t)cfg->n_head * cfg->head_dim,
		      kvd = (int64_t)cfg->n_head_kv * cfg->head_dim, ff = cfg->n_ff;
	int64_t wmax = ff * d > qd * d ? ff * d : qd * d;
	c->X = alloc_f(c->N, d);
	c->XN = alloc_f(c->N, d);
	c->ATT = alloc_f(c->N, qd);
	c->HID = alloc_f(c->N, ff);
	c->q = alloc_f(c->ctx, qd);
	c->k = alloc_f(c->ctx, kvd);
	c->v = alloc_f(c->ctx, kvd);
	c->tmp = alloc_f(c->ctx, d);
	c->gate = alloc_f(c->ctx, ff);
	c->up = alloc_f(c->ctx, ff);
	c->kc = malloc(sizeof(uint16_t) * (size_t)(c->ctx * kvd));
	c->vc = malloc(sizeof(uint16_t) * (size_t)(c->ctx * kvd));
	c->pos = malloc(sizeof(int32_t) * (size_t)c->ctx);
	c->seq = calloc((size_t)c->ctx, sizeof(int32_t));
	c->H = alloc_f(ff > qd ? (ff > d ? ff : d) : (qd > d ? qd : d), ff > qd ? (ff > d ? ff : d) : (qd > d ? qd : d));
	c->W = alloc_f(wmax, 1);
	if (!c->X || !c->XN || !c->ATT || !c->HID || !c->q || !c->k || !c->v || !c->tmp || !c->gate || !c->up ||
	    !c->kc || !c->vc || !c->pos || !c->seq || !c->H || !c->W) {
		free(ids);
		r = qd_errf(err, errlen, -ENOMEM, "out of memory for %lld calibration tokens", (long long)c->N);
		goto out;
	}
	for (int64_t i = 0; i < c->ctx; i++)
		c->pos[i] = (int32_t)i;
	if ((r = kb_cpu_backend_new(p->n_threads, &c->be)) < 0) {
		free(ids);
		qd_errf(err, errlen, r, "cannot start the CPU backend");
		goto out;
	}
	r = c->be->ops->get_rows(c->be, &c->m->tok_embd, ids, (int)c->N, c->X);
	free(ids);
	if (r < 0) {
		qd_errf(err, errlen, r, "embedding the calibration tokens failed");
		goto out;
	}
	*ret = c;
	return 0;
out:
	calib_free(c);
	return r;
}

/* Output type of block il's linear layer k, from the plan. */
static int plan_type(const QuantCalib *c, int il, int k)
{
	char name[GGUF_MAX_NAME + 1];
	snprintf(name, sizeof(name), "blk.%d.%s.weight", il, quant_linear_names[k]);
	for (size_t i = 0; i < c->n_plan; i++)
		if (!strcmp(c->plan[i].src->name, name))
			return c->plan[i].type;
	return -1;
}

/* H = (2/N) sum x x^T over the rows of A = [N][dim]. */
static void hessian(QuantCalib *c, const float *A, int64_t dim)
{
	memset(c->H, 0, sizeof(float) * (size_t)(dim * dim));
	const int64_t chunk = 256;
	for (int64_t t = 0; t < c->N; t += chunk)
		gptq_hessian_add(c->tp, c->H, dim, A + t * dim, c->N - t < chunk ? c->N - t : chunk);
	gptq_hessian_finish(c->H, dim);
	float s = 2.0f / (float)c->N;
	for (int64_t i = 0; i < dim * dim; i++)
		c->H[i] *= s;
}

/* Quantizes weight w of block il (linear k) with the current c->H into out->w[k] and points
 * *ret at a KbWeight over the new bytes.  c->H is consumed: callers sharing one Hessian
 * between several weights save and restore it. */
static int quantize_weight(QuantCalib *c, int il, int k, const KbWeight *w, const float *Hsaved,
			   QuantLayerOut *out, KbWeight *ret, char *err, size_t errlen)
{
	int type = plan_type(c, il, k);
	uint64_t rs;
	if (type < 0 || qd_row_size(type, (uint64_t)w->cols, &rs) < 0)
		return qd_errf(err, errlen, -EINVAL, "blk.%d.%s: no output type", il, quant_linear_names[k]);
	if (!(out->w[k] = malloc(rs * (uint64_t)w->rows)))
		return qd_errf(err, errlen, -ENOMEM, "out of memory");
	uint64_t srs;
	qd_row_size(w->type, (uint64_t)w->cols, &srs);
	for (int64_t r = 0; r < w->rows; r++)
		if (kb_cpu_dequantize_row(w->type, (const uint8_t *)w->data + (uint64_t)r * srs, c->W + r * w->cols,
					  w->cols) < 0)
			return qd_errf(err, errlen, -EOPNOTSUPP, "blk.%d.%s: cannot dequantize", il, quant_linear_names[k]);
	if (Hsaved)
		memcpy(c->H, Hsaved, sizeof(float) * (size_t)(w->cols * w->cols));
	int r;
	if (type == QD_TYPE_Q8_0 || type == QD_TYPE_Q4_0 || type == QD_TYPE_Q4_1)
		r = gptq_quantize(c->tp, type, c->W, w->rows, w->cols, c->H, c->p->damp, c->p->act_order, out->w[k]);
	else /* a fallback type outside GPTQ's reach (e.g. F16): round to nearest */
		r = quant_rows_rtn(c->tp, QD_TYPE_F32, c->W, w->rows, w->cols, type, out->w[k]);
	if (r < 0)
		return qd_errf(err, errlen, r, "blk.%d.%s: GPTQ failed: %s", il, quant_linear_names[k], strerror(-r));
	*ret = (KbWeight){ .type = type, .rows = w->rows, .cols = w->cols, .data = out->w[k] };
	return 0;
}

static int gptq_group(QuantCalib *c, int il, const int *ks, int nk, const KbWeight *const *ws, int64_t dim,
		      const float *A, QuantLayerOut *out, KbWeight *ret, char *err, size_t errlen)
{
	hessian(c, A, dim);
	float *saved = NULL;
	if (nk > 1 && !(saved = alloc_f(dim, dim)))
		return qd_errf(err, errlen, -ENOMEM, "out of memory");
	if (saved)
		memcpy(saved, c->H, sizeof(float) * (size_t)(dim * dim));
	int r = 0;
	for (int i = 0; i < nk && r == 0; i++)
		r = quantize_weight(c, il, ks[i], ws[i], i ? saved : NULL, out, &ret[i], err, errlen);
	free(saved);
	return r;
}

/* att = attention(q, k, v) of c->XN for every sequence, into c->ATT. */
static int attn_forward(QuantCalib *c, const KbWeight *wq, const KbWeight *wk, const KbWeight *wv)
{
	const ModelConfig *cfg = &c->m->cfg;
	const KbOps *o = c->be->ops;
	KbBackend *be = c->be;
	const int64_t d = cfg->n_embd, qd = (int64_t)cfg->n_head * cfg->head_dim;
	const int n = (int)c->ctx;
	int r = 0;
	KbAttention a = { .n_tokens = n, .n_head = cfg->n_head, .n_head_kv = cfg->n_head_kv,
			  .head_dim = cfg->head_dim, .pos = c->pos, .seq = c->seq, .q = c->q, .k_cache = c->kc,
			  .v_cache = c->vc, .kv_slot_stride = c->ctx * cfg->n_head_kv * cfg->head_dim,
			  .scale = 1.0f / sqrtf((float)cfg->head_dim) };
	for (int64_t s = 0; s < c->n_seq && r == 0; s++) {
		const float *xn = c->XN + s * c->ctx * d;
		a.out = c->ATT + s * c->ctx * qd;
		if ((r = o->matmul(be, wq, xn, n, c->q)) < 0 || (r = o->matmul(be, wk, xn, n, c->k)) < 0 ||
		    (r = o->matmul(be, wv, xn, n, c->v)) < 0 ||
		    (r = o->rope(be, c->q, c->pos, n, cfg->n_head, cfg->head_dim, cfg->rope_dim, cfg->rope_base)) < 0 ||
		    (r = o->rope(be, c->k, c->pos, n, cfg->n_head_kv, cfg->head_dim, cfg->rope_dim, cfg->rope_base)) < 0 ||
		    (r = o->kv_store(be, &a, c->k, c->v)) < 0)
			break;
		r = o->attention(be, &a);
	}
	return r;
}

/* c->HID = silu(gate·xn) * up·xn for every sequence. */
static int ffn_forward(QuantCalib *c, const KbWeight *wg, const KbWeight *wu)
{
	const int64_t d = c->m->cfg.n_embd, ff = c->m->cfg.n_ff;
	const KbOps *o = c->be->ops;
	const int n = (int)c->ctx;
	int r = 0;
	for (int64_t s = 0; s < c->n_seq && r == 0; s++) {
		const float *xn = c->XN + s * c->ctx * d;
		if ((r = o->matmul(c->be, wg, xn, n, c->gate)) == 0 && (r = o->matmul(c->be, wu, xn, n, c->up)) == 0)
			r = o->swiglu(c->be, c->gate, c->up, n, ff, c->HID + s * c->ctx * ff);
	}
	return r;
}

/* X += w·A for every sequence (A = [N][w->cols]). */
static int residual(QuantCalib *c, const KbWeight *w, const float *A)
{
	const int64_t d = c->m->cfg.n_embd;
	const int n = (int)c->ctx;
	int r = 0;
	for (int64_t s = 0; s < c->n_seq && r == 0; s++)
		if ((r = c->be->ops->matmul(c->be, w, A + s * c->ctx * w->cols, n, c->tmp)) == 0)
			r = c->be->ops->add(c->be, c->X + s * c->ctx * d, c->tmp, (int64_t)n * d);
	return r;
}

static int gptq_layer(QuantCalib *c, int il, QuantLayerOut *out, char *err, size_t errlen)
{
	const ModelConfig *cfg = &c->m->cfg;
	const Layer *l = &c->m->layers[il];
	const KbOps *o = c->be->ops;
	KbBackend *be = c->be;
	const int64_t d = cfg->n_embd, qd = (int64_t)cfg->n_head * cfg->head_dim, ff = cfg->n_ff;
	int r;
	KbWeight qw[QL_COUNT];

	/* attention */
	if ((r = o->rmsnorm(be, c->X, l->attn_norm, (int)c->N, (int)d, cfg->norm_eps, c->XN)) < 0)
		return qd_errf(err, errlen, r, "rmsnorm failed");
	const int kqkv[3] = { QL_Q, QL_K, QL_V };
	const KbWeight *wqkv[3] = { &l->wq, &l->wk, &l->wv };
	if ((r = gptq_group(c, il, kqkv, 3, wqkv, d, c->XN, out, &qw[QL_Q], err, errlen)) < 0)
		return r;
	if ((r = attn_forward(c, &qw[QL_Q], &qw[QL_K], &qw[QL_V])) < 0)
		return qd_errf(err, errlen, r, "calibration attention failed");
	const int ko[1] = { QL_O };
	const KbWeight *wo[1] = { &l->wo };
	if ((r = gptq_group(c, il, ko, 1, wo, qd, c->ATT, out, &qw[QL_O], err, errlen)) < 0)
		return r;
	if ((r = residual(c, &qw[QL_O], c->ATT)) < 0)
		return qd_errf(err, errlen, r, "calibration forward failed");

	/* feed-forward */
	if ((r = o->rmsnorm(be, c->X, l->ffn_norm, (int)c->N, (int)d, cfg->norm_eps, c->XN)) < 0)
		return qd_errf(err, errlen, r, "rmsnorm failed");
	const int kgu[2] = { QL_GATE, QL_UP };
	const KbWeight *wgu[2] = { &l->w_gate, &l->w_up };
	if ((r = gptq_group(c, il, kgu, 2, wgu, d, c->XN, out, &qw[QL_GATE], err, errlen)) < 0)
		return r;
	if ((r = ffn_forward(c, &qw[QL_GATE], &qw[QL_UP])) < 0)
		return qd_errf(err, errlen, r, "calibration forward failed");
	const int kd[1] = { QL_DOWN };
	const KbWeight *wd[1] = { &l->w_down };
	if ((r = gptq_group(c, il, kd, 1, wd, ff, c->HID, out, &qw[QL_DOWN], err, errlen)) < 0)
		return r;
	if ((r = residual(c, &qw[QL_DOWN], c->HID)) < 0)
		return qd_errf(err, errlen, r, "calibration forward failed");
	return 0;
}

/* ---------------------------------------------------------------- AWQ
 *
 * AWQ calibrates every block on the unquantized model's activations (llm-awq's order): the
 * block runs once in full precision, each group's scale is searched on the inputs it sees,
 * and only then are the scales folded and the weights clipped and quantized.  Groups, as
 * llm-awq has them for Llama:
 *   q, k, v    input scale folded into attn_norm
 *   o          into v's output rows: with grouped-query attention one v row feeds the same
 *              channel of every query head of its group, so the scale is tied across those
 *              heads (llm-awq skips this group when heads are shared; tying keeps it exact)
 *   gate, up   into ffn_norm
 *   down       into up's output rows (silu(gate)·(up/s) = h/s)
 * q and k are not clipped (llm-awq: their error goes through the q·k product). */

typedef struct {
	float *s, *Hb; /* [cols] scale, [cols/32][32][32] scaled Gram blocks */
	float alpha;
} AwqGroup;

static void awq_group_free(AwqGroup *g)
{
	free(g->s);
	free(g->Hb);
}

/* Searches the scale of the group of layers ks (F32 weights W) on inputs A = [N][cols]. With
 * tie (o_proj), channel j of every query head of a key/value group gets one scale. */
static int awq_group(QuantCalib *c, int il, const int *ks, int nk, float *const *W, const int64_t *rows,
		     int64_t cols, const float *A, bool tie, AwqGroup *g, char *err, size_t errlen)
{
	const ModelConfig *cfg = &c->m->cfg;
	float *xm = alloc_f(cols, 1);
	g->s = alloc_f(cols, 1);
	g->Hb = alloc_f(cols, QD_QK);
	if (!xm || !g->s || !g->Hb) {
		free(xm);
		return qd_errf(err, errlen, -ENOMEM, "out of memory");
	}
	hessian(c, A, cols);
	awq_absmean(A, c->N, cols, xm);
	if (tie)
		awq_tie_heads(xm, cfg->n_head, cfg->n_head_kv, cfg->head_dim);
	AwqWeight aw[3];
	for (int i = 0; i < nk; i++) {
		aw[i] = (AwqWeight){ .W = W[i], .rows = rows[i], .type = plan_type(c, il, ks[i]) };
		if (aw[i].type < 0) {
			free(xm);
			return qd_errf(err, errlen, -EINVAL, "blk.%d.%s: no output type", il, quant_linear_names[ks[i]]);
		}
	}
	int r = awq_search_scale(c->tp, aw, nk, cols, c->H, xm, g->s, &g->alpha, NULL);
	free(xm);
	if (r < 0)
		return qd_errf(err, errlen, r, "blk.%d.%s: AWQ scale search failed: %s", il, quant_linear_names[ks[0]],
			    strerror(-r));
	awq_block_diag(c->H, g->s, cols, g->Hb);
	return 0;
}

static int awq_layer(QuantCalib *c, int il, QuantLayerOut *out, char *err, size_t errlen)
{
	const ModelConfig *cfg = &c->m->cfg;
	const Layer *l = &c->m->layers[il];
	const KbOps *o = c->be->ops;
	KbBackend *be = c->be;
	const int64_t d = cfg->n_embd, qd = (int64_t)cfg->n_head * cfg->head_dim,
		      kvd = (int64_t)cfg->n_head_kv * cfg->head_dim, ff = cfg->n_ff;
	const KbWeight *src[QL_COUNT] = { &l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down };
	float *W[QL_COUNT] = { 0 };
	AwqGroup g[4] = { { 0 } }; /* qkv, o, gate/up, down */
	int r = 0;
	for (int k = 0; k < QL_COUNT && r == 0; k++) {
		uint64_t srs;
		if (qd_row_size(src[k]->type, (uint64_t)src[k]->cols, &srs) < 0) {
			r = qd_errf(err, errlen, -EBADMSG, "blk.%d.%s: bad shape", il, quant_linear_names[k]);
			break;
		}
		if (!(W[k] = alloc_f(src[k]->rows, src[k]->cols))) {
			r = qd_errf(err, errlen, -ENOMEM, "out of memory");
			break;
		}
		for (int64_t i = 0; i < src[k]->rows && r == 0; i++)
			if (kb_cpu_dequantize_row(src[k]->type, (const uint8_t *)src[k]->data + (uint64_t)i * srs,
						  W[k] + i * src[k]->cols, src[k]->cols) < 0)
				r = qd_errf(err, errlen, -EOPNOTSUPP, "blk.%d.%s: cannot dequantize", il, quant_linear_names[k]);
	}
	if (r < 0)
		goto out;
	const int kqkv[3] = { QL_Q, QL_K, QL_V }, ko[1] = { QL_O }, kgu[2] = { QL_GATE, QL_UP }, kd[1] = { QL_DOWN };
	float *Wqkv[3] = { W[QL_Q], W[QL_K], W[QL_V] }, *Wgu[2] = { W[QL_GATE], W[QL_UP] };
	const int64_t rqkv[3] = { qd, kvd, kvd }, rgu[2] = { ff, ff };
	/* the block in full precision, searching each group on its inputs on the way */
	if ((r = o->rmsnorm(be, c->X, l->attn_norm, (int)c->N, (int)d, cfg->norm_eps, c->XN)) < 0)
		goto fwd_failed;
	if ((r = awq_group(c, il, kqkv, 3, Wqkv, rqkv, d, c->XN, false, &g[0], err, errlen)) < 0)
		goto out;
	if ((r = attn_forward(c, &l->wq, &l->wk, &l->wv)) < 0)
		goto fwd_failed;
	if ((r = awq_group(c, il, ko, 1, &W[QL_O], &d, qd, c->ATT, true, &g[1], err, errlen)) < 0)
		goto out;
	if ((r = residual(c, &l->wo, c->ATT)) < 0 ||
	    (r = o->rmsnorm(be, c->X, l->ffn_norm, (int)c->N, (int)d, cfg->norm_eps, c->XN)) < 0)
		goto fwd_failed;
	if ((r = awq_group(c, il, kgu, 2, Wgu, rgu, d, c->XN, false, &g[2], err, errlen)) < 0)
		goto out;
	if ((r = ffn_forward(c, &l->w_gate, &l->w_up)) < 0)
		goto fwd_failed;
	if ((r = awq_group(c, il, kd, 1, &W[QL_DOWN], &d, ff, c->HID, false, &g[3], err, errlen)) < 0)
		goto out;
	if ((r = residual(c, &l->w_down, c->HID)) < 0)
		goto fwd_failed;
	/* fold: the block computes the same function as before */
	_Static_assert(QL_COUNT == 7, "AwqBlock holds the seven linear layers in QL_ order");
	AwqBlock blk = { .n_embd = d, .n_ff = ff, .n_head = cfg->n_head, .n_head_kv = cfg->n_head_kv,
			 .head_dim = cfg->head_dim, .attn_norm = out->attn_norm, .ffn_norm = out->ffn_norm };
	memcpy(blk.w, W, sizeof(blk.w));
	const float *const scales[4] = { g[0].s, g[1].s, g[2].s, g[3].s };
	if ((r = awq_fold_block(&blk, scales)) < 0) {
		qd_errf(err, errlen, r, "out of memory");
		goto out;
	}
	/* clip and quantize */
	static const int group_of[QL_COUNT] = { 0, 0, 0, 1, 2, 2, 3 };
	for (int k = 0; k < QL_COUNT && r == 0; k++) {
		int type = plan_type(c, il, k);
		uint64_t rs;
		double shrink = 0;
		if (type < 0 || qd_row_size(type, (uint64_t)src[k]->cols, &rs) < 0) {
			r = qd_errf(err, errlen, -EINVAL, "blk.%d.%s: no output type", il, quant_linear_names[k]);
			break;
		}
		if (!(out->w[k] = malloc(rs * (uint64_t)src[k]->rows))) {
			r = qd_errf(err, errlen, -ENOMEM, "out of memory");
			break;
		}
		if ((r = awq_clip_quantize(c->tp, type, W[k], src[k]->rows, src[k]->cols, g[group_of[k]].Hb,
					   k != QL_Q && k != QL_K, out->w[k], &shrink)) < 0)
			qd_errf(err, errlen, r, "blk.%d.%s: AWQ clipping failed", il, quant_linear_names[k]);
		c->awq_shrink[k] += shrink;
	}
	for (int i = 0; i < 4; i++)
		c->awq_alpha[i] += g[i].alpha;
	if (r == 0 && il == cfg->n_layer - 1 && c->p->note) {
		char msg[256];
		const double n = cfg->n_layer;
		snprintf(msg, sizeof(msg),
			 "awq: mean alpha qkv %.2f, o %.2f, gate/up %.2f, down %.2f; mean clip shrink v %.1f%%, "
			 "o %.1f%%, gate %.1f%%, up %.1f%%, down %.1f%%",
			 c->awq_alpha[0] / n, c->awq_alpha[1] / n, c->awq_alpha[2] / n, c->awq_alpha[3] / n,
			 100 * c->awq_shrink[QL_V] / n, 100 * c->awq_shrink[QL_O] / n, 100 * c->awq_shrink[QL_GATE] / n,
			 100 * c->awq_shrink[QL_UP] / n, 100 * c->awq_shrink[QL_DOWN] / n);
		c->p->note(c->p->cb_arg, msg);
	}
	goto out;
fwd_failed:
	qd_errf(err, errlen, r, "calibration forward failed");
out:
	for (int k = 0; k < QL_COUNT; k++)
		free(W[k]);
	for (int i = 0; i < 4; i++)
		awq_group_free(&g[i]);
	return r;
}

int calib_layer(QuantCalib *c, int il, QuantLayerOut *out, char *err, size_t errlen)
{
	const int64_t d = c->m->cfg.n_embd;
	const Layer *l = &c->m->layers[il];
	if (c->p->method != QUANT_GPTQ && c->p->method != QUANT_AWQ)
		return qd_errf(err, errlen, -EOPNOTSUPP, "method %s is not calibrated", quant_method_name(c->p->method));
	if (il < 0 || il >= c->m->cfg.n_layer)
		return qd_errf(err, errlen, -EINVAL, "no block %d", il);
	if (!(out->attn_norm = alloc_f(d, 1)) || !(out->ffn_norm = alloc_f(d, 1)))
		return qd_errf(err, errlen, -ENOMEM, "out of memory");
	memcpy(out->attn_norm, l->attn_norm, sizeof(float) * (size_t)d);
	memcpy(out->ffn_norm, l->ffn_norm, sizeof(float) * (size_t)d);
	return c->p->method == QUANT_GPTQ ? gptq_layer(c, il, out, err, errlen) : awq_layer(c, il, out, err, errlen);
}
