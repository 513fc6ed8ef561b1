/* kernels/cpu/backend_cpu.c: the CPU implementation of the ops table.  Weights are used
 * in place from the mapping; matrix products go through kb_matmul on the thread pool,
 * attention is split over (token, head) pairs.  Activations are plain host memory. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "../backend.h"
#include "../types.h"
#include "attention.h"
#include "matmul.h"
#include "quant.h"
#include "topk.h"
#include "threadpool.h"

typedef struct {
	KbBackend base;
	KbThreadPool *pool;
	void *scratch; /* kb_matmul activation scratch, grown on demand */
	size_t scratch_size;
	void *topk_scratch; /* kb_topk_rows' pieces, grown on demand */
	size_t topk_size;
	char desc[96];
} CpuBackend;

static CpuBackend *cpu(KbBackend *b)
{
	return (CpuBackend *)b;
}

static void cpu_free(KbBackend *b)
{
	CpuBackend *c = cpu(b);
	if (!c)
		return;
	kb_threadpool_free(c->pool);
	free(c->scratch);
	free(c->topk_scratch);
	free(c);
}

static const char *cpu_describe(KbBackend *b)
{
	return cpu(b)->desc;
}

static int cpu_alloc(KbBackend *b, size_t bytes, void **ret)
{
	void *p = NULL;
	if (posix_memalign(&p, 64, bytes ? bytes : 64))
		return -ENOMEM;
	*ret = p;
	return 0;
}

static void cpu_release(KbBackend *b, void *p)
{
	free(p);
}

static int cpu_copy(KbBackend *b, void *dst, const void *src, size_t bytes)
{
	memcpy(dst, src, bytes);
	return 0;
}

static int cpu_weight_prepare(KbBackend *b, KbWeight *w)
{
	if (kb_cpu_vec_dot_type(w->type) < 0)
		return -EOPNOTSUPP;
	w->priv = NULL;
	return 0;
}

static void cpu_weight_release(KbBackend *b, KbWeight *w)
{
	w->priv = NULL;
}

static int cpu_get_rows(KbBackend *b, const KbWeight *w, const int32_t *ids, int n, float *out)
{
	uint64_t row_bytes;
	int r = qd_row_size(w->type, (uint64_t)w->cols, &row_bytes);
	if (r < 0)
		return r;
	for (int i = 0; i < n; i++) {
		if (ids[i] < 0 || ids[i] >= w->rows)
			return -EINVAL;
		r = kb_cpu_dequantize_row(w->type, (const uint8_t *)w->data + (uint64_t)ids[i] * row_bytes,
					  out + (int64_t)i * w->cols, w->cols);
		if (r < 0)
			return r;
	}
	return 0;
}

/* *buf (64-byte aligned, *size bytes) with room for NEED bytes; its contents are not kept. */
static int grow_aligned(void **buf, size_t *size, size_t need)
{
	if (need <= *size)
		return 0;
	void *p = NULL;
	if (posix_memalign(&p, 64, need))
		return -ENOMEM;
	free(*buf);
	*buf = p;
	*size = need;
	return 0;
}

/* Scratch for a product of W with n tokens. */
static int scratch_for(CpuBackend *c, const KbWeight *w, int n)
{
	size_t need = kb_matmul_scratch_size(w->type, w->cols, n);
	if (!need)
		return -EOPNOTSUPP;
	return grow_aligned(&c->scratch, &c->scratch_size, need);
}

static int cpu_matmul(KbBackend *b, const KbWeight *w, const float *x, int n, float *y)
{
	CpuBackend *c = cpu(b);
	int r = scratch_for(c, w, n);
	return r < 0 ? r : kb_matmul(c->pool, w->type, w->data, w->rows, w->cols, x, n, y, c->scratch);
}

static int cpu_matmul_argmax(KbBackend *b, const KbWeight *w, const float *x, int n, float *y, int32_t *ret_idx)
{
	CpuBackend *c = cpu(b);
	int r = scratch_for(c, w, n);
	return r < 0 ? r : kb_matmul_argmax(c->pool, w->type, w->data, w->rows, w->cols, x, n, y, c->scratch, ret_idx);
}

/* Top-k candidates of logits rows, spread over the pool (rows, or pieces of a row when
 * there are fewer rows than threads), so a sampler with top_k reads k candidates instead
 * of scanning a whole row on the engine thread. */
static int cpu_topk(KbBackend *b, const float *y, int n, int64_t cols, int k, const uint8_t *need,
		    int32_t *ret_ids, float *ret_vals, int32_t *ret_n)
{
	CpuBackend *c = cpu(b);
	if (n < 1 || k < 1 || k > KB_TOPK_MAX)
		return -EINVAL;
	const int r = grow_aligned(&c->topk_scratch, &c->topk_size, kb_topk_scratch(c->pool, n, k));
	return r < 0 ? r : kb_topk_rows(c->pool, y, n, cols, k, need, ret_ids, ret_vals, ret_n, c->topk_scratch);
}

static int cpu_rmsnorm(KbBackend *b, const float *x, const float *weight, int n, int dim, float eps, float *y)
{
	for (int t = 0; t < n; t++) {
		const float *xr = x + (int64_t)t * dim;
		float *yr = y + (int64_t)t * dim;
		double ss = 0;
		for (int i = 0; i < dim; i++)
			ss += (double)xr[i] * xr[i];
		float scale = 1.0f / sqrtf((float)(ss / dim) + eps);
		for (int i = 0; i < dim; i++)
			yr[i] = xr[i] * scale * weight[i];
	}
	return 0;
}

static int cpu_rope(KbBackend *b, float *x, const int32_t *pos, int n, int n_head, int head_dim,
		    int rot_dim, float base)
{
	/* theta_i = pos * base^(-2i/rot_dim), built by repeated multiplication in float as the
	 * reference implementation does, so angles agree to the last bit at long positions. */
	const float theta_scale = powf(base, -2.0f / (float)rot_dim);
	float cs[2 * 256];
	if (rot_dim > 512 || rot_dim % 2)
		return -EINVAL;
	for (int t = 0; t < n; t++) {
		float theta = (float)pos[t];
		for (int i = 0; i < rot_dim / 2; i++) {
			cs[2 * i] = cosf(theta);
			cs[2 * i + 1] = sinf(theta);
			theta *= theta_scale;
		}
		float *xt = x + (int64_t)t * n_head * head_dim;
		for (int h = 0; h < n_head; h++) {
			float *xh = xt + h * head_dim;
			for (int i = 0; i < rot_dim / 2; i++) {
				float x0 = xh[2 * i], x1 = xh[2 * i + 1];
				xh[2 * i] = x0 * cs[2 * i] - x1 * cs[2 * i + 1];
				xh[2 * i + 1] = x0 * cs[2 * i + 1] + x1 * cs[2 * i];
			}
		}
	}
	return 0;
}

static int cpu_kv_store(KbBackend *b, const KbAttention *a, const float *k, const float *v)
{
	const int kvd = a->n_head_kv * a->head_dim;
	for (int t = 0; t < a->n_tokens; t++) {
		int64_t off = (int64_t)a->seq[t] * a->kv_slot_stride + (int64_t)a->pos[t] * kvd;
		kb_f32_to_f16_row(k + (int64_t)t * kvd, a->k_cache + off, kvd);
		kb_f32_to_f16_row(v + (int64_t)t * kvd, a->v_cache + off, kvd);
	}
	return 0;
}

typedef struct {
	const KbAttention *a;
	KbAttnHeadFn head;
	int max_len;   /* longest context in the batch: scores scratch per worker */
	float *scores; /* [nth][max_len] */
} AttnJob;

static void attn_worker(void *arg, int ith, int nth)
{
	AttnJob *j = arg;
	const KbAttention *a = j->a;
	const int hd = a->head_dim, kvd = a->n_head_kv * hd, group = a->n_head / a->n_head_kv;
	float *sc = j->scores + (int64_t)ith * j->max_len;
	int64_t lo, hi;
	kb_split((int64_t)a->n_tokens * a->n_head, 1, ith, nth, &lo, &hi);
	for (int64_t job = lo; job < hi; job++) {
		int t = (int)(job / a->n_head), h = (int)(job % a->n_head), kvh = h / group;
		int64_t base = (int64_t)a->seq[t] * a->kv_slot_stride + kvh * hd;
		j->head(a->q + (int64_t)t * a->n_head * hd + h * hd, a->k_cache + base, a->v_cache + base,
			a->pos[t] + 1, kvd, hd, a->scale, sc, a->out + (int64_t)t * a->n_head * hd + h * hd);
	}
}

static int cpu_attention(KbBackend *b, const KbAttention *a)
{
	CpuBackend *c = cpu(b);
	if (a->head_dim > 512 || a->n_head % a->n_head_kv)
		return -EINVAL;
	int max_len = 1;
	for (int t = 0; t < a->n_tokens; t++)
		if (a->pos[t] + 1 > max_len)
			max_len = a->pos[t] + 1;
	int nth = kb_threadpool_size(c->pool);
	AttnJob j = { a, kb_attn_head_fn(), max_len, malloc(sizeof(float) * (size_t)max_len * (size_t)nth) };
	if (!j.scores)
		return -ENOMEM;
	kb_threadpool_run(c->pool, attn_worker, &j);
	free(j.scores);
	return 0;
}

static int cpu_swiglu(KbBackend *b, const float *g, const float *u, int n_rows, int64_t dim, float *y)
{
	const int64_t n = (int64_t)n_rows * dim;
	for (int64_t i = 0; i < n; i++)
		y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
	return 0;
}

static int cpu_add(KbBackend *b, float *x, const float *y, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		x[i] += y[i];
	return 0;
}

static int cpu_sync(KbBackend *b)
{
	return 0;
}

static const KbOps cpu_ops = {
	.name = "cpu",
	.host_memory = 1,
	.free = cpu_free,
	.describe = cpu_describe,
	.alloc = cpu_alloc,
	.release = cpu_release,
	.upload = cpu_copy,
	.download = cpu_copy,
	.copy = cpu_copy,
	.weight_prepare = cpu_weight_prepare,
	.weight_release = cpu_weight_release,
	.get_rows = cpu_get_rows,
	.matmul = cpu_matmul,
	.rmsnorm = cpu_rmsnorm,
	.rope = cpu_rope,
	.kv_store = cpu_kv_store,
	.attention = cpu_attention,
	.swiglu = cpu_swiglu,
	.matmul_argmax = cpu_matmul_argmax,
	.topk = cpu_topk,
	.add = cpu_add,
	.sync = cpu_sync,
};

int kb_cpu_backend_new(int n_threads, KbBackend **ret)
{
	CpuBackend *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->base.ops = &cpu_ops;
	int r = kb_threadpool_new(n_threads, &c->pool);
	if (r < 0) {
		free(c);
		return r;
	}
	snprintf(c->desc, sizeof(c->desc), "cpu %s, %d threads", kb_cpu_init(), kb_threadpool_size(c->pool));
	*ret = &c->base;
	return 0;
}
