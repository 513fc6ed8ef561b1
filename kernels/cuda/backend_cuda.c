/* kernels/cuda/backend_cuda.c: the CUDA implementation of the ops table (kernels/backend.h).
 * Activations, norm vectors and the KV cache live in device memory; matrices are uploaded
 * and repacked once by weight_prepare (kb_cuda_weight_upload) and multiplied with the
 * tensor-core matrix-vector kernels of matmul.cu, eight tokens per pass (larger batches
 * run as several passes: correct, but each pass reads the weights again).  Embedding rows
 * are decoded on the device from a raw copy of the table, uploaded the first time
 * get_rows needs it.  Host index arrays (token ids, positions, slots) are copied to the
 * device in stream order; a copy is skipped when the array equals the previous one, so a
 * forward pass uploads its positions once, not once per layer. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../backend.h"
#include "../types.h"
#include "cuda.h"
#include "ops.h"

/* A device copy of the last host index array of one kind. */
typedef struct {
	int32_t *dev;
	int32_t *shadow; /* host copy of what dev holds */
	int cap, n;
} IdxBuf;

/* What weight_prepare leaves in KbWeight.priv. */
typedef struct {
	KbCudaWeight *mm; /* repacked for the products; NULL if the type has no product kernel */
	uint8_t *raw;     /* GGUF rows for get_rows, uploaded on first use */
	int64_t row_bytes;
} CudaWeight;

typedef struct {
	KbBackend base;
	KbCuda *ctx;
	IdxBuf ids, pos, seq;
	char desc[352];
} CudaBackend;

static CudaBackend *cb(KbBackend *b)
{
	return (CudaBackend *)b;
}

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

static void cuda_free(KbBackend *b)
{
	CudaBackend *c = cb(b);
	if (!c)
		return;
	idx_done(c->ctx, &c->ids);
	idx_done(c->ctx, &c->pos);
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
		/* queued kernels may still use it */
		kb_cuda_sync(cb(b)->ctx);
		kb_cuda_dev_free(cb(b)->ctx, p);
	}
}

static int cuda_upload(KbBackend *b, void *dst, const void *src, size_t bytes)
{
	return kb_cuda_upload(cb(b)->ctx, dst, src, bytes);
}

static int cuda_download(KbBackend *b, void *dst, const void *src, size_t bytes)
{
	return kb_cuda_download(cb(b)->ctx, dst, src, bytes);
}

static int cuda_copy(KbBackend *b, void *dst, const void *src, size_t bytes)
{
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
	const int mm_ok = kb_cuda_type_supported(w->type);
	if (!mm_ok && !kb_cuda_get_rows_supported(w->type))
		return -EOPNOTSUPP;
	CudaWeight *cw = calloc(1, sizeof(*cw));
	if (!cw)
		return -ENOMEM;
	int r = row_bytes_of(w->type, w->cols, &cw->row_bytes);
	if (r == 0 && mm_ok)
		r = kb_cuda_weight_upload(c->ctx, w->type, w->rows, w->cols, w->data, &cw->mm);
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
	if (!cw->raw) {
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
	if ((r = idx_get(c->ctx, &c->ids, ids, n, &dids)) < 0)
		return r;
	return kb_cuda_get_rows(c->ctx, w->type, cw->raw, cw->row_bytes, w->cols, dids, n, out);
}

static int cuda_matmul(KbBackend *b, const KbWeight *w, const float *x, int n, float *y)
{
	CudaBackend *c = cb(b);
	CudaWeight *cw = w->priv;
	if (!cw || n < 1)
		return -EINVAL;
	if (!cw->mm)
		return -EOPNOTSUPP;
	for (int t0 = 0; t0 < n; t0 += KB_CUDA_MAX_TOK) {
		int nt = n - t0 < KB_CUDA_MAX_TOK ? n - t0 : KB_CUDA_MAX_TOK;
		int r = kb_cuda_mmv(c->ctx, cw->mm, x + (int64_t)t0 * w->cols, w->cols, y + (int64_t)t0 * w->rows,
				    w->rows, nt);
		if (r < 0)
			return r;
	}
	return 0;
}

static int cuda_rmsnorm(KbBackend *b, const float *x, const float *weight, int n, int dim, float eps, float *y)
{
	return kb_cuda_rmsnorm(cb(b)->ctx, x, weight, n, dim, eps, y);
}

static int cuda_rope(KbBackend *b, float *x, const int32_t *pos, int n, int n_head, int head_dim, int rot_dim,
		     float base)
{
	CudaBackend *c = cb(b);
	if (rot_dim > 512 || rot_dim % 2 || rot_dim > head_dim || n < 1)
		return -EINVAL;
	const int32_t *dpos;
	int r = idx_get(c->ctx, &c->pos, pos, n, &dpos);
	if (r < 0)
		return r;
	/* the same float the CPU computes */
	const float theta_scale = powf(base, -2.0f / (float)rot_dim);
	return kb_cuda_rope(c->ctx, x, dpos, n, n_head, head_dim, rot_dim, theta_scale);
}

static int idx_pos_seq(CudaBackend *c, const KbAttention *a, const int32_t **ret_pos, const int32_t **ret_seq)
{
	int r = idx_get(c->ctx, &c->pos, a->pos, a->n_tokens, ret_pos);
	return r < 0 ? r : idx_get(c->ctx, &c->seq, a->seq, a->n_tokens, ret_seq);
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

static int cuda_attention(KbBackend *b, const KbAttention *a)
{
	CudaBackend *c = cb(b);
	const int32_t *dpos, *dseq;
	if (a->n_head_kv < 1 || a->n_head % a->n_head_kv || a->head_dim % 32 || a->head_dim > 256)
		return -EINVAL;
	int r = idx_pos_seq(c, a, &dpos, &dseq);
	if (r < 0)
		return r;
	return kb_cuda_attention(c->ctx, a->q, a->k_cache, a->v_cache, dpos, dseq, a->n_tokens, a->n_head,
				 a->n_head_kv, a->head_dim, a->kv_slot_stride, a->scale, a->out);
}

static int cuda_swiglu(KbBackend *b, const float *g, const float *u, int64_t n, float *y)
{
	return kb_cuda_swiglu(cb(b)->ctx, g, u, n, y);
}

static int cuda_add(KbBackend *b, float *x, const float *y, int64_t n)
{
	return kb_cuda_add(cb(b)->ctx, x, y, n);
}

static int cuda_sync(KbBackend *b)
{
	return kb_cuda_sync(cb(b)->ctx);
}

static const KbOps cuda_ops = {
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
	.add = cuda_add,
	.sync = cuda_sync,
};

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
	KbCudaInfo info;
	if (kb_cuda_info(ctx, &info) == 0)
		snprintf(c->desc, sizeof(c->desc), "cuda %.200s (sm_%d%d, %d SMs, %.0f GiB), device %d", info.name,
			 info.cc_major, info.cc_minor, info.sm_count, (double)info.mem_total / (1 << 30), device);
	else
		snprintf(c->desc, sizeof(c->desc), "cuda device %d", device);
	*ret = &c->base;
	return 0;
}
