/* kernels/cuda/backend_products.c: the CUDA ops table's products and the ops fused with
 * them: matmul, matmul_multi, matmul_argmax, matmul_rope_kv (RoPE and the KV stores in the
 * q/k/v product's flush), matmul_res_norm (the next RMSNorm's first half in the residual
 * product's flush) and matmul_swiglu (SwiGLU in the gate/up products' flush).  All of them
 * share the converted activations (CudaBackend.act): a product whose x is the buffer the
 * last producer converted reads them as they are. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../backend.h"
#include "../types.h"
#include "backend_internal.h"
#include "cuda.h"
#include "ops.h"

/* The norm matmul_res_norm left to the products, run now: y_norm written, act converted. */
static int norm_settle(CudaBackend *c)
{
	const float *y = c->pend.y_norm;
	int r = cuda_rmsnorm(&c->base, c->pend.y_res, c->pend.norm_w, c->pend.n, c->pend.dim, c->pend.eps,
			     (float *)y);
	if (r == 0 && c->act_x != y) /* not converted there (never: matmul_res_norm's dims fit act) */
		r = kb_cuda_act_prepare(c->ctx, c->act, y, c->pend.dim, c->pend.dim, c->pend.n);
	if (r < 0) {
		act_forget(c);
		return r;
	}
	c->act_x = y;
	c->act_n = c->pend.n;
	c->act_cols = c->pend.dim;
	return 0;
}

/* A product's input X when it may be matmul_res_norm's unwritten y_norm: refused unless
 * act still holds it (REUSE), and the norm run first unless the product scales by 1 / rms
 * itself (SCALES).  0 or -errno. */
static int pend_input(CudaBackend *c, const float *x, int reuse, int scales)
{
	if (!c->pend.y_norm || x != c->pend.y_norm)
		return 0;
	if (!reuse)
		return -EINVAL; /* after another op: its memory was never written */
	return scales ? 0 : norm_settle(c);
}

/* Whether act holds X (n tokens of cols), converted by the last product or producer. */
static int act_is(const CudaBackend *c, const float *x, int n, int64_t cols)
{
	return x && x == c->act_x && n == c->act_n && cols == c->act_cols;
}

/* Whether act holds the planes the products of the NW weights W read. */
static int act_holds(const CudaBackend *c, int nw, const KbWeight *const *w)
{
	for (int i = 0; i < nw; i++)
		if (!kb_cuda_act_holds(c->act, w[i]->type))
			return 0;
	return 1;
}

/* y[i] = W[i] . x (acc: +=) for nw weights; one launch per pass of KB_CUDA_MAX_TOK
 * tokens when the weights share type and cols (q/k/v, gate/up), else one per run of
 * weights of one type.
 * With ROPE (nw 3, acc 0), also RoPE and the KV stores in the products' epilogue when the
 * step takes one pass of the decode kernels and one launch holds the weights (one type, or
 * a pair: kb_cuda_mmv_qkv_rope) and the rotation fits its table (rot_dim <= 128), else
 * *rope_done = 0 and the caller runs rope_kv_store. */
static int mm_multi(CudaBackend *c, int nw, const KbWeight *const *w, const float *x, int n, float *const *y,
		    int acc, const KbCudaRope *rope, int *rope_done)
{
	if (rope_done)
		*rope_done = 0;
	const KbCudaWeight *mm[KB_CUDA_MMV_MAX_W];
	if (nw < 1 || nw > KB_CUDA_MMV_MAX_W || n < 1 || !x)
		return -EINVAL;
	int same = 1, scales = 1; /* scales: every product can read y * g (kb_cuda_mmv_rms_ok) */
	for (int i = 0; i < nw; i++) {
		CudaWeight *cw = w[i] ? w[i]->priv : NULL;
		if (!cw || !y[i] || w[i]->cols != w[0]->cols)
			return -EINVAL;
		if (!cw->mm)
			return -EOPNOTSUPP;
		mm[i] = cw->mm;
		same &= w[i]->type == w[0]->type;
		scales &= kb_cuda_mmv_rms_ok(c->ctx, w[i]->type, n);
	}
	const int64_t cols = w[0]->cols;
	int r;
	if (n > KB_CUDA_MAX_TOK && (r = pend_input(c, x, 0, 0)) < 0)
		return r; /* y_norm is one token's */
	/* above one pass of the decode kernels, gemm.cu: two passes of 8 for 9-16 tokens read
	 * every weight twice and ran 12-13% slower (H200, 7B, bench/NOTES-gpu.md session 10) */
	if (c->gemm && n > KB_CUDA_MAX_TOK && kb_cuda_mmq_fits(x, cols)) {
		act_forget(c);
		if ((r = xq_ensure(c, kb_cuda_mmq_scratch(cols, n))) < 0)
			return r;
		return kb_cuda_mmq(c->ctx, nw, mm, x, n, c->xq, y, acc);
	}
	if ((r = act_ensure(c, cols)) < 0)
		return r;
	/* the activations are already converted when the last product or norm left x there,
	 * in the planes these products read (a head of another type than the layers' may
	 * convert x itself: kb_cuda_act_holds; a pending norm is run first so x exists) */
	const int at = c->fuse && act_is(c, x, n, cols);
	const int reuse = at && act_holds(c, nw, w);
	if ((r = pend_input(c, x, at, reuse ? scales : 0)) < 0)
		return r;
	for (int t0 = 0; t0 < n && r == 0; t0 += KB_CUDA_MAX_TOK) {
		int nt = n - t0 < KB_CUDA_MAX_TOK ? n - t0 : KB_CUDA_MAX_TOK;
		float *yt[KB_CUDA_MMV_MAX_W];
		for (int i = 0; i < nw; i++)
			yt[i] = y[i] + (int64_t)t0 * w[i]->rows;
		if (!reuse && (r = kb_cuda_act_prepare(c->ctx, c->act, x + (int64_t)t0 * cols, cols, cols, nt)) < 0)
			break;
		if (c->fuse && rope && nt == n) {
			/* one type, or two where one launch holds the pair (Q4_K_M's use_more_bits layers) */
			r = kb_cuda_mmv_qkv_rope(c->ctx, mm, c->act, yt, rope);
			if (r >= 0) {
				*rope_done = 1 + (r > 0); /* 2: with the hand-over words (KbCudaLL) */
				r = 0;
				c->step.stats.qkv_rope++;
				c->step.stats.qkv_pairs += !same;
				continue;
			}
			if (r != -EOPNOTSUPP)
				continue;
			r = 0;
		}
		/* a launch for each run of one type: one for q/k/v or gate/up of one type, two for
		 * q/k/v of two types without a pair launch (then rope_kv_store runs after, as it
		 * does for one type whose rotation exceeds the epilogue's table) */
		for (int i = 0, m; i < nw && r == 0; i += m) {
			for (m = 1; c->fuse && i + m < nw && w[i + m]->type == w[i]->type; m++)
				;
			r = kb_cuda_mmv_multi(c->ctx, m, &mm[i], c->act, &yt[i], acc);
		}
	}
	act_forget(c);
	/* act holds x's last pass: all of x when there was one, unless a y overwrote x */
	int overlap = 0;
	for (int i = 0; i < nw; i++)
		overlap |= (const float *)y[i] < x + (int64_t)n * cols && x < y[i] + (int64_t)n * w[i]->rows;
	if (r == 0 && n <= KB_CUDA_MAX_TOK && !overlap) {
		c->act_x = x;
		c->act_n = n;
		c->act_cols = cols;
	}
	return r;
}

int cuda_matmul_multi(KbBackend *b, int nw, const KbWeight *const *w, const float *x, int n,
			     float *const *y, int acc)
{
	return mm_multi(cb(b), nw, w, x, n, y, acc, NULL, NULL);
}

/* act and act_alt, both with room for COLS columns (matmul_res_norm, matmul_swiglu). */
static int acts_ensure(CudaBackend *c, int64_t cols)
{
	int r = act_ensure(c, cols);
	if (r < 0 || (c->act_alt && kb_cuda_act_cap(c->act_alt) >= kb_cuda_act_cap(c->act)))
		return r;
	KbCudaAct *a = NULL;
	if ((r = regrow_begin(c)) < 0 || (r = kb_cuda_act_new(c->ctx, kb_cuda_act_cap(c->act), &a)) < 0)
		return r;
	graphs_drop(c);
	kb_cuda_act_free(c->act_alt);
	c->act_alt = a;
	return 0;
}

/* act_alt becomes act, holding X (n tokens x cols). */
static void acts_swap(CudaBackend *c, const float *x, int n, int64_t cols)
{
	KbCudaAct *t = c->act;
	c->act = c->act_alt;
	c->act_alt = t;
	c->act_x = x;
	c->act_n = n;
	c->act_cols = cols;
}

/* Fewest rows for which the epilogues run fused: the fused kernels' 32-row groups are
 * their blocks, so at least about as many as the H200's 132 multiprocessors (7B: 128
 * groups, batch 1 +2.6% (Q4_0) and +6.6% (Q8_0); SmolLM2's 18 lost 11%, bench/NOTES-gpu.md,
 * session 8). */
#define RES_NORM_MIN_ROWS 4096

/* Whether products of weight CW (TYPE, ROWS) over n tokens can carry the norm or SwiGLU
 * epilogue: one token whose products take int8 activations (the only kernels that scale
 * by 1 / rms: kb_cuda_mmv_rms_ok) and enough rows. */
static int epi_fusable(const CudaBackend *c, const CudaWeight *cw, int type, int64_t rows, int n)
{
	return c->fuse && cw && cw->mm && n == 1 && kb_cuda_mmv_rms_ok(c->ctx, type, n) && rows % 32 == 0 &&
	       rows >= RES_NORM_MIN_ROWS;
}

/* The residual product with the next norm's first half in its epilogue
 * (kb_cuda_mmv_res_norm) when the step is one token whose products take int8 activations
 * (the only kernels that scale by 1 / rms: kb_cuda_mmv_rms_ok, asked of W's type; a
 * product of the norm's that cannot, e.g. an F16 head after Q4_0 layers, runs the norm
 * first) and the rows are many enough: y_norm
 * is not written; act (act_alt before the swap) holds y_res * norm_w and the products
 * that read it scale by 1 / rms (a product that cannot runs the norm first: norm_settle).
 * Elsewhere the product and the norm kernel. */
int cuda_matmul_res_norm(KbBackend *b, const KbWeight *w, const float *x, int n, float *y_res,
				const float *norm_w, int dim, float eps, float *y_norm)
{
	CudaBackend *c = cb(b);
	CudaWeight *cw = w ? w->priv : NULL;
	if (!cw || !x || !y_res || !norm_w || !y_norm || n < 1 || dim < 1 || w->rows != dim)
		return -EINVAL;
	float *const yr[1] = { y_res };
	if (!epi_fusable(c, cw, w->type, dim, n)) {
		int r = mm_multi(c, 1, &w, x, n, yr, 1, NULL, NULL);
		return r < 0 ? r : cuda_rmsnorm(b, y_res, norm_w, n, dim, eps, y_norm);
	}
	const int64_t cols = w->cols;
	int r = acts_ensure(c, cols > dim ? cols : dim);
	if (r < 0)
		return r;
	if ((r = dev_grow(c, (void **)&c->norm_part, &c->norm_part_bytes,
			  sizeof(double) * KB_CUDA_MAX_TOK * (size_t)(dim / 32))) < 0)
		return r;
	if (r > 0)
		graphs_drop(c);
	const int at = act_is(c, x, n, cols), reuse = at && act_holds(c, 1, &w);
	/* k_mmv_norm reads only a norm's output itself, never y * g */
	if ((r = pend_input(c, x, at, 0)) < 0)
		return r;
	if (!reuse && (r = kb_cuda_act_prepare(c->ctx, c->act, x, cols, cols, n)) < 0) {
		act_forget(c);
		return r;
	}
	r = kb_cuda_mmv_res_norm(c->ctx, cw->mm, c->act, y_res, norm_w, eps, c->norm_part, c->act_alt);
	act_forget(c);
	if (r < 0)
		return r;
	acts_swap(c, y_norm, n, dim);
	c->pend.y_norm = y_norm;
	c->pend.y_res = y_res;
	c->pend.norm_w = norm_w;
	c->pend.n = n;
	c->pend.dim = dim;
	c->pend.eps = eps;
	return 0;
}

/* The gate and up products with SwiGLU in their epilogue (kb_cuda_mmv_swiglu) under the
 * same conditions as matmul_res_norm's fusion (one token, int8 products, >= 4096 rows):
 * y is not written, act (act_alt before the swap) holds h's activations.  Elsewhere the
 * products and the SwiGLU kernel. */
int cuda_matmul_swiglu(KbBackend *b, const KbWeight *const *w, const float *x, int n, float *const *y,
			      float *h)
{
	CudaBackend *c = cb(b);
	if (!w || !w[0] || !w[1] || !x || !y || !y[0] || !y[1] || !h || n < 1)
		return -EINVAL;
	CudaWeight *cg = w[0]->priv, *cu = w[1]->priv;
	const int64_t rows = w[0]->rows, cols = w[0]->cols;
	int r = 0, fused = epi_fusable(c, cg, w[0]->type, rows, n) && cu && cu->mm && w[1]->type == w[0]->type &&
			   w[1]->rows == rows && w[1]->cols == cols && act_is(c, x, n, cols) && act_holds(c, 1, w);
	/* room for h's activations first; growing act drops what it holds, so a pending norm
	 * is run before (its y_norm then exists for the plain calls) */
	const int64_t need = rows > cols ? rows : cols;
	if (fused && (kb_cuda_act_cap(c->act) < need || !c->act_alt || kb_cuda_act_cap(c->act_alt) < need)) {
		if ((r = pend_input(c, x, 1, 0)) < 0 || (r = acts_ensure(c, need)) < 0)
			return r;
		fused = x == c->act_x; /* not when act was replaced */
	}
	if (!fused) {
		if ((r = mm_multi(c, 2, w, x, n, y, 0, NULL, NULL)) < 0)
			return r;
		return cuda_swiglu(b, y[0], y[1], n, rows, h);
	}
	r = kb_cuda_mmv_swiglu(c->ctx, cg->mm, cu->mm, c->act, h, c->act_alt);
	act_forget(c);
	if (r < 0)
		return r;
	acts_swap(c, h, n, rows);
	return 0;
}

int cuda_matmul(KbBackend *b, const KbWeight *w, const float *x, int n, float *y)
{
	return cuda_matmul_multi(b, 1, &w, x, n, &y, 0);
}

/* The product, then each row's greedy id found on the device: only n ids cross to the
 * host, so a caller that needs no more (a greedy request) can leave the logits there. */
int cuda_matmul_argmax(KbBackend *b, const KbWeight *w, const float *x, int n, float *y,
			      int32_t *ret_idx)
{
	CudaBackend *c = cb(b);
	StepState *st = &c->step;
	if (!w || !ret_idx || n < 1)
		return -EINVAL;
	/* a step's ids go to a half of c->amax of their own, and the next step may take them
	 * as its tokens (KbStep.feed); ids outside a step to the first half, once the ids of
	 * the steps queued before are out of it */
	const int in_step = st->active && n == st->n;
	int r = in_step || !st->n_lag ? 0 : b->ops->sync(b);
	if (r < 0 || (r = cuda_matmul(b, w, x, n, y)) < 0)
		return r;
	/* room for a recorded step's rows at least, so that growing (which drops the graphs:
	 * they write to the old buffer) is rare */
	const int cap = n > STEP_GRAPH_MAX_TOK ? n : STEP_GRAPH_MAX_TOK;
	if ((r = host_grow(c, (void **)&c->amax, (void **)&c->amax_dev, &c->amax_bytes,
			   2 * sizeof(int32_t) * (size_t)cap)) < 0)
		return r;
	if (r > 0) {
		graphs_drop(c);
		c->amax_half = cap;
	}
	/* the ids land in host memory as the kernel writes them (no copy queued) and go to
	 * RET_IDX at the sync (cuda_sync): now, or inside a step (recorded, no waits) at the
	 * caller's next sync or sync_lag */
	if ((r = kb_cuda_argmax(c->ctx, y, n, w->rows, w->rows, c->amax_dev,
				in_step ? step_serial(c) : NULL, c->amax_half, in_step ? st->dev : NULL)) < 0)
		return r;
	c->amax_to = ret_idx;
	c->amax_to_n = n;
	return c->step.active ? 0 : b->ops->sync(b);
}

int cuda_matmul_rope_kv(KbBackend *b, const KbWeight *const *w, const float *x, int n, float *const *y,
			       const KbAttention *a, int rot_dim, float base)
{
	CudaBackend *c = cb(b);
	if (!w || !y || !a || a->n_tokens != n || rot_dim > 512 || rot_dim < 0 || rot_dim % 2 ||
	    rot_dim > a->head_dim || a->n_tokens < 1 || !w[0] || !w[1] || !w[2])
		return -EINVAL;
	const int32_t *dpos, *dseq;
	/* not idx_pos_seq: the activations rmsnorm converted for these products stay valid */
	int r = step_idx(c, &c->pos, 1, a->pos, a->n_tokens, &dpos);
	if (r < 0 || (r = step_idx(c, &c->seq, 2, a->seq, a->n_tokens, &dseq)) < 0)
		return r;
	/* the same float as cuda_rope_kv_store */
	KbCudaRope rope = { .pos = dpos, .seq = dseq, .k_cache = a->k_cache, .v_cache = a->v_cache,
			    .slot_stride = a->kv_slot_stride, .head_dim = a->head_dim, .rot_dim = rot_dim,
			    .theta_scale = powf(base, -2.0f / (float)rot_dim) };
	const int whole = w[0]->rows == (int64_t)a->n_head * a->head_dim &&
			  w[1]->rows == (int64_t)a->n_head_kv * a->head_dim && w[2]->rows == w[1]->rows;
	c->ll_pend = 0;
	/* one token in a step: the rows also go to the hand-over words for this layer's
	 * attention (KbCudaLL; the tags need the step's serial, and a layer below 256) */
	const int64_t words = w[0]->rows + 2 * w[1]->rows;
	/* ... and where attention's output fits act (as the products' x: act is not regrown
	 * here) and act_alt, which it then writes; buffers grow outside captures only (the
	 * step's first, plain run) */
	const int ll = c->ll_on && c->fuse && n == 1 && c->step.active && whole && rot_dim > 0 &&
		       a->layer_id >= 1 && a->layer_id <= 256 && c->act && kb_cuda_act_cap(c->act) >= w[0]->rows &&
		       (!c->step.capturing ||
			(c->ll && c->ll_bytes >= sizeof(uint64_t) * (size_t)words && c->act_alt &&
			 kb_cuda_act_cap(c->act_alt) >= kb_cuda_act_cap(c->act)));
	if (ll) {
		if ((r = acts_ensure(c, kb_cuda_act_cap(c->act))) < 0 ||
		    (r = dev_grow(c, (void **)&c->ll, &c->ll_bytes, sizeof(uint64_t) * (size_t)words)) < 0)
			return r;
		if (r > 0) { /* no tag is 0 (cuda_step_begin): zeros never pass for a row */
			graphs_drop(c);
			if ((r = kb_cuda_memset(c->ctx, c->ll, 0, c->ll_bytes)) < 0)
				return r;
		}
		rope.ll = (KbCudaLL){ .ll = c->ll, .serial = step_serial(c), .layer = a->layer_id - 1,
				      .nq = (int)w[0]->rows, .nkv = (int)w[1]->rows };
	}
	int done = 0;
	if ((r = mm_multi(c, 3, w, x, n, y, 0, whole && rot_dim > 0 ? &rope : NULL, &done)) < 0)
		return r;
	if (done == 2)
		c->ll_pend = a->layer_id;
	return done ? 0 : cuda_rope_kv_store(b, a, y[0], y[1], y[2], rot_dim, base);
}
