/* kernels/cuda/backend_cuda.c: the CUDA implementation of the ops table (kernels/backend.h).
 * Activations, norm vectors and the KV cache live in device memory; matrices are uploaded
 * and repacked once by weight_prepare (kb_cuda_weight_upload) and multiplied with the
 * tensor-core matrix-vector kernels of matmul.cu for up to eight tokens, and with the
 * many-token kernel of gemm.cu above that (prefill, large batches).  Embedding rows
 * are decoded on the device from a raw copy of the table, uploaded the first time
 * get_rows needs it.  Host index arrays (token ids, positions, slots) are copied to the
 * device in stream order; a copy is skipped when the array equals the previous one, so a
 * forward pass uploads its positions once, not once per layer.
 *
 * Steps (step_begin/step_end, recorded as CUDA graphs) are in backend_steps.c, and the
 * products with the ops fused into them (matmul_rope_kv, matmul_res_norm, matmul_swiglu)
 * in backend_products.c; the ops take a step's index arrays from its device copy
 * (step_idx) and refuse what a capture cannot record.  The structs the files share are in
 * backend_internal.h.
 *
 * Products share converted activations: the backend remembers which f32 buffer its
 * activation buffer holds (set by a product or by rmsnorm, which converts in the same
 * launch when the next product can use it), and every other op forgets it, since any of
 * them may write that buffer.  So q/k/v and gate/up convert once, from the norm itself.
 *
 * QD_CUDA_GRAPHS=0 and QD_CUDA_FUSE=0 in the environment turn the graphs and the fused
 * launches (shared conversions, multi-weight products, the q/k/v RoPE, norm and SwiGLU
 * epilogues) off (for measuring each; results are the same bits either way, except the
 * norm and SwiGLU epilogues': kernels/backend.h); QD_CUDA_GEMM=0 runs many-token
 * products as passes of eight through matmul.cu instead (slower; the last bits differ,
 * see gemm.cu); QD_CUDA_ATT_TC=0 keeps many-token steps' attention on the per-token
 * kernel instead of attention_tc.cu; QD_CUDA_ATT_LL=0 makes one-token attention wait for the
 * whole q/k/v launch instead of taking its head's rows by their tags (KbCudaLL; the same
 * bits); QD_CUDA_MMV_STAGES=N and QD_CUDA_ATT_SPLIT_KEYS=N override the product
 * kernels' bulk-copy ring and attention's split size (kb_cuda_set_mmv_stages,
 * kb_cuda_set_att_split_keys); QD_CUDA_MMV_I8=0/1 the one-token products' activations
 * (kb_cuda_set_mmv_i8); QD_CUDA_MMQ_SHARES=W,M how many-token products share a launch's
 * work (kb_cuda_set_mmq_shares). */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../backend.h"
#include "../types.h"
#include "backend_internal.h"
#include "cuda.h"
#include "ops.h"

static void idx_done(KbCuda *ctx, IdxBuf *ib)
{
	kb_cuda_dev_free(ctx, ib->dev);
	free(ib->shadow);
	memset(ib, 0, sizeof(*ib));
}

/* Device copy of host[0..n) into *ret_dev, queued; reuses the previous copy when equal. */
static int idx_get(KbCuda *ctx, IdxBuf *ib, const int32_t *host, int n, const int32_t **ret_dev)
{
	if (n < 1 || !host)
		return -EINVAL;
	if (ib->dev && ib->n == n && !memcmp(ib->shadow, host, sizeof(int32_t) * (size_t)n)) {
		*ret_dev = ib->dev;
		return 0;
	}
	int r;
	if (n > ib->cap) {
		/* the old buffer may still be read by queued kernels */
		if ((r = kb_cuda_sync(ctx)) < 0)
			return r;
		int cap = n > 2 * ib->cap ? n : 2 * ib->cap;
		int32_t *sh = malloc(sizeof(int32_t) * (size_t)cap);
		void *dev = NULL;
		if (!sh)
			return -ENOMEM;
		if ((r = kb_cuda_alloc(ctx, sizeof(int32_t) * (size_t)cap, &dev)) < 0) {
			free(sh);
			return r;
		}
		idx_done(ctx, ib);
		ib->dev = dev;
		ib->shadow = sh;
		ib->cap = cap;
	}
	ib->n = 0; /* invalid until the copy is queued */
	if ((r = kb_cuda_upload_async(ctx, ib->dev, host, sizeof(int32_t) * (size_t)n)) < 0)
		return r;
	memcpy(ib->shadow, host, sizeof(int32_t) * (size_t)n);
	ib->n = n;
	*ret_dev = ib->dev;
	return 0;
}

/* Any op but a product may write the buffer the activations were converted from. */
void act_forget(CudaBackend *c)
{
	c->act_x = NULL;
}

/* Before a buffer that queued kernels and recorded graphs may use is replaced: refused
 * while a step is being captured, and waits for queued work.  The caller then drops the
 * graphs (they point at the old buffer) and frees it. */
int regrow_begin(CudaBackend *c)
{
	return c->step.capturing ? -EBUSY : c->base.ops->sync(&c->base);
}

/* c->act with room for COLS columns (see regrow_begin). */
int act_ensure(CudaBackend *c, int64_t cols)
{
	KbCudaAct *a = NULL;
	if (c->act && kb_cuda_act_cap(c->act) >= cols)
		return 0;
	int r = regrow_begin(c);
	if (r == 0)
		r = kb_cuda_act_new(c->ctx, cols, &a);
	if (r < 0)
		return r;
	graphs_drop(c);
	kb_cuda_act_free(c->act);
	kb_cuda_act_free(c->act_alt); /* regrown with act's room when next needed */
	c->act = a;
	c->act_alt = NULL;
	act_forget(c);
	return 0;
}

/* Device buffer *buf (*have bytes) with at least BYTES, its contents not kept (see
 * regrow_begin).  Returns 1 when it was replaced, 0 when it was large enough, or -errno
 * (the old buffer then stays). */
int dev_grow(CudaBackend *c, void **buf, size_t *have, size_t bytes)
{
	void *p = NULL;
	if (*buf && *have >= bytes)
		return 0;
	int r = regrow_begin(c);
	if (r == 0)
		r = kb_cuda_alloc(c->ctx, bytes, &p);
	if (r < 0)
		return r;
	kb_cuda_dev_free(c->ctx, *buf);
	*buf = p;
	*have = bytes;
	return 1;
}

/* The same for mapped host memory (kb_cuda_host_alloc): *host and *dev. */
int host_grow(CudaBackend *c, void **host, void **dev, size_t *have, size_t bytes)
{
	void *h = NULL, *d = NULL;
	if (*host && *have >= bytes)
		return 0;
	int r = regrow_begin(c);
	if (r == 0)
		r = kb_cuda_host_alloc(c->ctx, bytes, &h, &d);
	if (r < 0)
		return r;
	kb_cuda_host_free(c->ctx, *host);
	*host = h;
	*dev = d;
	*have = bytes;
	return 1;
}

/* c->xq with at least BYTES; recorded steps that used the old one are dropped. */
int xq_ensure(CudaBackend *c, size_t bytes)
{
	const int r = dev_grow(c, &c->xq, &c->xq_bytes, bytes);
	if (r > 0)
		graphs_drop(c);
	return r < 0 ? r : 0;
}

/* Device copy of an index array: the step's own when HOST is one of the step's arrays
 * (WHICH: 0 ids, 1 positions, 2 slots), else through IB.  While capturing, any other
 * array is refused: its copy would be recorded and replay stale host memory. */
int step_idx(CudaBackend *c, IdxBuf *ib, int which, const int32_t *host, int n, const int32_t **ret_dev)
{
	StepState *st = &c->step;
	if (st->active) {
		const int32_t *h = which == 0 ? st->tok : which == 1 ? st->pos : st->seq;
		if (host == h && n == st->n) {
			*ret_dev = st->dev + (int64_t)which * n;
			return 0;
		}
		if (st->capturing)
			return -EINVAL;
	}
	return idx_get(c->ctx, ib, host, n, ret_dev);
}

static void cuda_free(KbBackend *b)
{
	CudaBackend *c = cb(b);
	if (!c)
		return;
	kb_cuda_sync(c->ctx);
	graphs_drop(c);
	kb_cuda_act_free(c->act);
	kb_cuda_act_free(c->act_alt);
	kb_cuda_dev_free(c->ctx, c->norm_part);
	kb_cuda_dev_free(c->ctx, c->ll);
	kb_cuda_dev_free(c->ctx, c->xq);
	kb_cuda_host_free(c->ctx, c->amax);
	kb_cuda_dev_free(c->ctx, c->topk_dev);
	free(c->topk_host);
	kb_cuda_dev_free(c->ctx, c->step.dev);
	kb_cuda_host_free(c->ctx, c->step.host);
	idx_done(c->ctx, &c->ids);
	idx_done(c->ctx, &c->pos);
	idx_done(c->ctx, &c->att_tiles);
	free(c->tiles_host);
	idx_done(c->ctx, &c->seq);
	kb_cuda_free(c->ctx);
	free(c);
}

static const char *cuda_describe(KbBackend *b)
{
	return cb(b)->desc;
}

static int cuda_alloc(KbBackend *b, size_t bytes, void **ret)
{
	return kb_cuda_alloc(cb(b)->ctx, bytes ? bytes : 256, ret);
}

static void cuda_release(KbBackend *b, void *p)
{
	if (p) {
		/* queued kernels may still use it, and recorded steps may point at it */
		kb_cuda_sync(cb(b)->ctx);
		graphs_drop(cb(b));
		act_forget(cb(b));
		kb_cuda_dev_free(cb(b)->ctx, p);
	}
}

static int cuda_upload(KbBackend *b, void *dst, const void *src, size_t bytes)
{
	act_forget(cb(b));
	if (dst == cb(b)->pend.y_norm) /* written now: readable again */
		cb(b)->pend.y_norm = NULL;
	return kb_cuda_upload(cb(b)->ctx, dst, src, bytes);
}

static int cuda_download(KbBackend *b, void *dst, const void *src, size_t bytes)
{
	return kb_cuda_download(cb(b)->ctx, dst, src, bytes);
}

static int cuda_copy(KbBackend *b, void *dst, const void *src, size_t bytes)
{
	act_forget(cb(b));
	if (dst == cb(b)->pend.y_norm)
		cb(b)->pend.y_norm = NULL;
	return kb_cuda_copy(cb(b)->ctx, dst, src, bytes);
}

/* Bytes of a GGUF row (kept here so that this library needs nothing from the engine's). */
static int row_bytes_of(int type, int64_t cols, int64_t *ret)
{
	int blck, bsize;
	switch (type) {
	case QD_TYPE_F32: blck = 1; bsize = 4; break;
	case QD_TYPE_F16: case QD_TYPE_BF16: blck = 1; bsize = 2; break;
	case QD_TYPE_Q4_0: blck = 32; bsize = 18; break;
	case QD_TYPE_Q4_1: blck = 32; bsize = 20; break;
	case QD_TYPE_Q8_0: blck = 32; bsize = 34; break;
	case QD_TYPE_Q4_K: blck = 256; bsize = 144; break;
	case QD_TYPE_Q6_K: blck = 256; bsize = 210; break;
	default: return -EOPNOTSUPP;
	}
	if (cols < 1 || cols % blck || cols > ((int64_t)1 << 40))
		return -EINVAL;
	*ret = cols / blck * bsize;
	return 0;
}

static int cuda_weight_prepare(KbBackend *b, KbWeight *w)
{
	CudaBackend *c = cb(b);
	/* a table only read by rows (an embedding not tied to the output head) stays as
	 * stored: its rows are uploaded on first use, no product copy is made */
	const int mm_ok = kb_cuda_type_supported(w->type) && !w->rows_only;
	if (!mm_ok && !kb_cuda_get_rows_supported(w->type))
		return -EOPNOTSUPP;
	CudaWeight *cw = calloc(1, sizeof(*cw));
	if (!cw)
		return -ENOMEM;
	int r = row_bytes_of(w->type, w->cols, &cw->row_bytes);
	if (r == 0 && mm_ok)
		r = kb_cuda_weight_upload(c->ctx, w->type, w->rows, w->cols, w->data, &cw->mm);
	/* a new type may need activation planes the last producer did not write */
	act_forget(c);
	if (r < 0) {
		free(cw);
		return r;
	}
	w->priv = cw;
	return 0;
}

static void cuda_weight_release(KbBackend *b, KbWeight *w)
{
	CudaWeight *cw = w->priv;
	if (!cw)
		return;
	kb_cuda_sync(cb(b)->ctx);
	graphs_drop(cb(b));
	kb_cuda_weight_free(cw->mm);
	kb_cuda_dev_free(cb(b)->ctx, cw->raw);
	free(cw);
	w->priv = NULL;
}

static int cuda_get_rows(KbBackend *b, const KbWeight *w, const int32_t *ids, int n, float *out)
{
	CudaBackend *c = cb(b);
	CudaWeight *cw = w->priv;
	if (!cw || n < 1)
		return -EINVAL;
	if (!kb_cuda_get_rows_supported(w->type))
		return -EOPNOTSUPP;
	for (int i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= w->rows)
			return -EINVAL;
	int r;
	act_forget(c);
	if (!cw->raw) {
		if (c->step.capturing)
			return -EBUSY; /* a synchronous upload cannot be recorded */
		size_t bytes = (size_t)cw->row_bytes * (size_t)w->rows;
		void *raw = NULL;
		if ((r = kb_cuda_alloc(c->ctx, bytes, &raw)) < 0)
			return r;
		if ((r = kb_cuda_upload(c->ctx, raw, w->data, bytes)) < 0) {
			kb_cuda_dev_free(c->ctx, raw);
			return r;
		}
		cw->raw = raw;
	}
	const int32_t *dids;
	if ((r = step_idx(c, &c->ids, 0, ids, n, &dids)) < 0)
		return r;
	return kb_cuda_get_rows(c->ctx, w->type, cw->raw, cw->row_bytes, w->cols, dids, n, out);
}

/* Every row, NEED or not: one block per row runs side by side, and one launch and one copy
 * serve them all. */
static int cuda_topk(KbBackend *b, const float *y, int n, int64_t cols, int k, const uint8_t *need,
		     int32_t *ret_ids, float *ret_vals, int32_t *ret_n)
{
	(void)need;
	CudaBackend *c = cb(b);
	if (!y || !ret_ids || !ret_vals || !ret_n || n < 1 || cols < 1 || k < 1 || k > KB_TOPK_MAX ||
	    k > KB_CUDA_TOPK_MAX)
		return -EINVAL;
	const size_t nk = (size_t)n * (size_t)k, bytes = (2 * nk + (size_t)n) * 4;
	int r = dev_grow(c, &c->topk_dev, &c->topk_bytes, bytes);
	if (r < 0)
		return r;
	if (r > 0) { /* the host copy follows the device buffer */
		free(c->topk_host);
		if (!(c->topk_host = malloc(bytes))) {
			c->topk_bytes = 0; /* both again next time */
			return -ENOMEM;
		}
	}
	int32_t *ids = c->topk_dev, *cnt = ids + 2 * nk;
	float *vals = (float *)(ids + nk);
	if ((r = kb_cuda_topk(c->ctx, y, n, cols, cols, k, ids, vals, cnt)) < 0 ||
	    (r = kb_cuda_download(c->ctx, c->topk_host, c->topk_dev, bytes)) < 0)
		return r;
	const int32_t *h = c->topk_host;
	memcpy(ret_ids, h, nk * 4);
	memcpy(ret_vals, h + nk, nk * 4);
	memcpy(ret_n, h + 2 * nk, (size_t)n * 4);
	return 0;
}

int cuda_rmsnorm(KbBackend *b, const float *x, const float *weight, int n, int dim, float eps, float *y)
{
	CudaBackend *c = cb(b);
	act_forget(c);
	if (y == c->pend.y_norm)
		c->pend.y_norm = NULL;
	/* convert for the next products in the same launch when they fit one pass */
	if (c->fuse && n >= 1 && n <= KB_CUDA_MAX_TOK && c->act && dim <= kb_cuda_act_cap(c->act)) {
		int r = kb_cuda_rmsnorm_act(c->ctx, x, weight, n, dim, eps, y, c->act);
		if (r == 0) {
			c->act_x = y;
			c->act_n = n;
			c->act_cols = dim;
		}
		return r;
	}
	return kb_cuda_rmsnorm(c->ctx, x, weight, n, dim, eps, y);
}

static int cuda_rope(KbBackend *b, float *x, const int32_t *pos, int n, int n_head, int head_dim, int rot_dim,
		     float base)
{
	CudaBackend *c = cb(b);
	if (rot_dim > 512 || rot_dim % 2 || rot_dim > head_dim || n < 1)
		return -EINVAL;
	const int32_t *dpos;
	act_forget(c);
	int r = step_idx(c, &c->pos, 1, pos, n, &dpos);
	if (r < 0)
		return r;
	/* the same float the CPU computes */
	const float theta_scale = powf(base, -2.0f / (float)rot_dim);
	return kb_cuda_rope(c->ctx, x, dpos, n, n_head, head_dim, rot_dim, theta_scale);
}

static int idx_pos_seq(CudaBackend *c, const KbAttention *a, const int32_t **ret_pos, const int32_t **ret_seq)
{
	act_forget(c);
	int r = step_idx(c, &c->pos, 1, a->pos, a->n_tokens, ret_pos);
	return r < 0 ? r : step_idx(c, &c->seq, 2, a->seq, a->n_tokens, ret_seq);
}

static int cuda_kv_store(KbBackend *b, const KbAttention *a, const float *k, const float *v)
{
	CudaBackend *c = cb(b);
	const int32_t *dpos, *dseq;
	int r = idx_pos_seq(c, a, &dpos, &dseq);
	if (r < 0)
		return r;
	return kb_cuda_kv_store(c->ctx, k, v, a->k_cache, a->v_cache, dpos, dseq, a->n_tokens,
				a->n_head_kv * a->head_dim, a->kv_slot_stride);
}

int cuda_rope_kv_store(KbBackend *b, const KbAttention *a, float *q, float *k, const float *v, int rot_dim,
			      float base)
{
	CudaBackend *c = cb(b);
	const int32_t *dpos, *dseq;
	if (rot_dim > 512 || rot_dim % 2 || rot_dim > a->head_dim || a->n_tokens < 1)
		return -EINVAL;
	int r = idx_pos_seq(c, a, &dpos, &dseq);
	if (r < 0)
		return r;
	const float theta_scale = powf(base, -2.0f / (float)rot_dim);
	c->ll_pend = 0; /* q, k and v come from here now, not from a hand-over */
	return kb_cuda_rope_kv_store(c->ctx, q, k, v, a->k_cache, a->v_cache, dpos, dseq, a->n_tokens, a->n_head,
				     a->n_head_kv, a->head_dim, rot_dim, theta_scale, a->kv_slot_stride);
}

/* Tiles for kb_cuda_attention_tc, into c->tiles_host: runs of consecutive tokens of one
 * sequence at consecutive positions, at most 16 each (a tile reads the keys up to its last
 * position for every row, so those must be keys the step itself wrote or older ones).
 * Returns the count or -errno. */
static int att_tiles(CudaBackend *c, const KbAttention *a)
{
	const int n = a->n_tokens;
	if (n > c->tiles_cap) {
		int32_t *h = realloc(c->tiles_host, sizeof(int32_t) * 2 * (size_t)n);
		if (!h)
			return -ENOMEM;
		c->tiles_host = h;
		c->tiles_cap = n;
	}
	int nt = 0;
	for (int t = 0; t < n;) {
		int e = t + 1;
		while (e < n && e - t < 16 && a->seq[e] == a->seq[t] && a->pos[e] == a->pos[e - 1] + 1)
			e++;
		c->tiles_host[2 * nt] = t;
		c->tiles_host[2 * nt + 1] = e - t;
		nt++;
		t = e;
	}
	return nt;
}

/* At one token the next product (wo) may launch at attention's start and load its weights
 * while attention runs when they are at most this many bytes: 7B wo of 9.4 MB (Q4_0, Q4_K_M)
 * and 17.8 MB (Q8_0) gained 1.0-1.8% a step, 7B F16's 33.5 MB lost 4.9% and 70B Q4_0's 37.7
 * MB 0.2% (their preloads delay q/k/v's last loads and attention's rows; session 23). */
#define ATT_EARLY_NEXT_BYTES (24ull << 20)

static int att_early(const KbAttention *a)
{
	if (a->n_tokens != 1 || !a->next || !a->next->priv)
		return 0;
	const CudaWeight *w = a->next->priv;
	if (!w->mm)
		return 0;
	KbCudaWeightInfo info;
	kb_cuda_weight_info(w->mm, &info);
	return info.gguf_bytes <= ATT_EARLY_NEXT_BYTES;
}

/* Attention converts its output for the next product (wo) in the same launch when that
 * fits one pass, as rmsnorm does.  Steps too large for a recorded graph (the host's
 * positions and slots are this call's) take the tensor cores where the head size allows. */
static int cuda_attention(KbBackend *b, const KbAttention *a)
{
	CudaBackend *c = cb(b);
	const int32_t *dpos, *dseq;
	if (a->n_head_kv < 1 || a->n_head % a->n_head_kv || a->head_dim % 32 || a->head_dim > 256)
		return -EINVAL;
	int r = idx_pos_seq(c, a, &dpos, &dseq);
	if (r < 0)
		return r;
	c->att_heads = a->n_head;
	const int tc_shape = (a->head_dim == 64 || a->head_dim == 128) && a->kv_slot_stride % 8 == 0 &&
			     ((uintptr_t)a->q | (uintptr_t)a->out | (uintptr_t)a->k_cache | (uintptr_t)a->v_cache) % 16 == 0;
	if (c->att_tc && a->n_tokens > STEP_GRAPH_MAX_TOK && !c->step.capturing && tc_shape) {
		const int nt = att_tiles(c, a);
		if (nt < 0)
			return nt;
		/* tiles of 4 tokens or more on average: a tile is one warp over its whole
		 * context, so single decode tokens of many sequences stay with the per-token
		 * kernel's 4 warps a token */
		if (a->n_tokens >= 4 * nt) {
			const int32_t *dtiles;
			if ((r = idx_get(c->ctx, &c->att_tiles, c->tiles_host, 2 * nt, &dtiles)) < 0)
				return r;
			return kb_cuda_attention_tc(c->ctx, a->q, a->k_cache, a->v_cache, dpos, dseq, dtiles, nt,
						    a->n_head, a->n_head_kv, a->head_dim, a->kv_slot_stride, a->scale,
						    a->out);
		}
	}
	const int64_t cols = (int64_t)a->n_head * a->head_dim;
	KbCudaAct *act = c->fuse && a->n_tokens <= KB_CUDA_MAX_TOK && c->act && cols <= kb_cuda_act_cap(c->act)
				 ? c->act
				 : NULL;
	/* q, k and v handed over by matmul_rope_kv of this layer in this step (KbCudaLL): the
	 * output then goes to act_alt, since the q/k/v launch may still read act, and the two
	 * swap after */
	const int ll = c->ll_pend && c->ll_pend == a->layer_id && c->step.active && a->n_tokens == 1 && act &&
		       c->act_alt && cols <= kb_cuda_act_cap(c->act_alt) && (a->head_dim == 64 || a->head_dim == 128);
	c->ll_pend = 0;
	const KbCudaLL llv = { .ll = c->ll, .serial = ll ? step_serial(c) : NULL, .layer = a->layer_id - 1,
			       .nq = (int)cols, .nkv = a->n_head_kv * a->head_dim };
	r = kb_cuda_attention(c->ctx, a->q, a->k_cache, a->v_cache, dpos, dseq, a->n_tokens, a->n_head, a->n_head_kv,
			      a->head_dim, a->kv_slot_stride, a->scale, step_max_len(a->pos, a->n_tokens), att_early(a),
			      a->out, ll ? c->act_alt : act, ll ? &llv : NULL);
	if (r > 0) { /* it took the hand-over */
		c->step.stats.att_ll++;
		r = 0;
	}
	if (r == 0 && act) {
		if (ll) { /* act_alt holds the output, whether it took the hand-over or waited */
			c->act = c->act_alt;
			c->act_alt = act;
		}
		c->act_x = a->out;
		c->act_n = a->n_tokens;
		c->act_cols = cols;
	}
	return r;
}

int cuda_swiglu(KbBackend *b, const float *g, const float *u, int n, int64_t dim, float *y)
{
	CudaBackend *c = cb(b);
	act_forget(c);
	if (n < 1 || dim < 1)
		return n == 0 ? 0 : -EINVAL;
	if (c->fuse && n <= KB_CUDA_MAX_TOK && c->act && dim <= kb_cuda_act_cap(c->act)) {
		int r = kb_cuda_swiglu_act(c->ctx, g, u, n, dim, y, c->act);
		if (r == 0) {
			c->act_x = y;
			c->act_n = n;
			c->act_cols = dim;
		}
		return r;
	}
	return kb_cuda_swiglu(c->ctx, g, u, (int64_t)n * dim, y);
}

static int cuda_add(KbBackend *b, float *x, const float *y, int64_t n)
{
	act_forget(cb(b));
	return kb_cuda_add(cb(b)->ctx, x, y, n);
}

static int cuda_mem_info(KbBackend *b, uint64_t *ret_free, uint64_t *ret_total)
{
	KbCudaInfo info;
	int r = kb_cuda_info(cb(b)->ctx, &info);
	if (r < 0)
		return r;
	*ret_free = info.mem_free;
	*ret_total = info.mem_total;
	return 0;
}

static int cuda_sync(KbBackend *b)
{
	CudaBackend *c = cb(b);
	StepState *st = &c->step;
	const int r = kb_cuda_sync(c->ctx);
	if (r == 0) {
		/* greedy ids (cuda_matmul_argmax): the queued steps' in order, then one outside
		 * a step */
		lag_deliver(c, st->n_lag);
		st->copy_queued[0] = st->copy_queued[1] = 0;
		if (c->amax_to)
			memcpy(c->amax_to, c->amax, sizeof(int32_t) * (size_t)c->amax_to_n);
	}
	st->n_lag = 0;
	c->amax_to = NULL;
	return r;
}

static int cuda_sync_lag(KbBackend *b, int keep)
{
	CudaBackend *c = cb(b);
	StepState *st = &c->step;
	if (keep < 0 || keep > 1 || st->active)
		return -EINVAL;
	if (!keep || c->amax_to)
		return cuda_sync(b);
	if (st->n_lag <= keep)
		return 0;
	/* the mark after the oldest step, which also follows everything queued before it */
	const int r = kb_cuda_mark_wait(c->ctx, st->lag[0].half);
	if (r < 0) {
		st->n_lag = 0;
		return r;
	}
	lag_deliver(c, 1);
	return 0;
}

const KbOps cuda_ops = {
	.name = "cuda",
	.host_memory = 0,
	.free = cuda_free,
	.describe = cuda_describe,
	.alloc = cuda_alloc,
	.release = cuda_release,
	.upload = cuda_upload,
	.download = cuda_download,
	.copy = cuda_copy,
	.weight_prepare = cuda_weight_prepare,
	.weight_release = cuda_weight_release,
	.get_rows = cuda_get_rows,
	.matmul = cuda_matmul,
	.rmsnorm = cuda_rmsnorm,
	.rope = cuda_rope,
	.kv_store = cuda_kv_store,
	.attention = cuda_attention,
	.swiglu = cuda_swiglu,
	.matmul_multi = cuda_matmul_multi,
	.matmul_argmax = cuda_matmul_argmax,
	.topk = cuda_topk,
	.rope_kv_store = cuda_rope_kv_store,
	.matmul_rope_kv = cuda_matmul_rope_kv,
	.matmul_res_norm = cuda_matmul_res_norm,
	.matmul_swiglu = cuda_matmul_swiglu,
	.mem_info = cuda_mem_info,
	.add = cuda_add,
	.sync = cuda_sync,
	.step_begin = cuda_step_begin,
	.step_end = cuda_step_end,
	.sync_lag = cuda_sync_lag,
};

/* 1 unless the variable NAME is set to "0". */
static int env_on(const char *name)
{
	const char *v = getenv(name);
	return !(v && !strcmp(v, "0"));
}

int kb_cuda_backend_new(int device, KbBackend **ret)
{
	KbCuda *ctx = NULL;
	int r = kb_cuda_init(device, &ctx);
	if (r < 0)
		return r;
	CudaBackend *c = calloc(1, sizeof(*c));
	if (!c) {
		kb_cuda_free(ctx);
		return -ENOMEM;
	}
	c->base.ops = &cuda_ops;
	c->ctx = ctx;
	c->step.enabled = env_on("QD_CUDA_GRAPHS");
	c->fuse = env_on("QD_CUDA_FUSE");
	c->gemm = env_on("QD_CUDA_GEMM");
	c->att_tc = env_on("QD_CUDA_ATT_TC");
	c->ll_on = env_on("QD_CUDA_ATT_LL");
	/* QD_CUDA_MMV_STAGES=N: the decode products' bulk-copy ring (0: register loads, -1: by type) */
	const char *st = getenv("QD_CUDA_MMV_STAGES");
	if (st && *st)
		kb_cuda_set_mmv_stages(ctx, 0, atoi(st));
	/* QD_CUDA_MMV_I8=0 / 1: the Q4_0, Q4_1, Q4_K, Q6_K and Q8_0 decode products take f16 / int8
	 * activations (unset: kb_i8_use's choice) */
	const char *i8 = getenv("QD_CUDA_MMV_I8");
	if (i8 && *i8)
		kb_cuda_set_mmv_i8(ctx, 0, atoi(i8) != 0);
	/* QD_CUDA_ATT_SPLIT_KEYS=N: fewest keys an attention split takes */
	const char *sk = getenv("QD_CUDA_ATT_SPLIT_KEYS");
	if (sk && *sk)
		kb_cuda_set_att_split_keys(ctx, atoi(sk));
	/* QD_CUDA_MMQ_SHARES=W,M: many-token products' sharing (kb_cuda_set_mmq_shares) */
	const char *sh = getenv("QD_CUDA_MMQ_SHARES");
	if (sh && *sh) {
		const char *comma = strchr(sh, ',');
		kb_cuda_set_mmq_shares(ctx, atoi(sh), comma ? atoi(comma + 1) : KB_MMQ_MIN_UNITS);
	}
	KbCudaInfo info;
	if (kb_cuda_info(ctx, &info) == 0)
		snprintf(c->desc, sizeof(c->desc), "cuda %.200s (sm_%d%d, %d SMs, %.0f GiB), device %d", info.name,
			 info.cc_major, info.cc_minor, info.sm_count, (double)info.mem_total / (1 << 30), device);
	else
		snprintf(c->desc, sizeof(c->desc), "cuda device %d", device);
	*ret = &c->base;
	return 0;
}
