/* kernels/cuda/activations.cu: the products' activation buffers (KbCudaAct): the planes a
 * product of each type reads (f16, bf16 hi + lo, 32-column sums, int8 levels and scales,
 * their level sums) for up to KB_CUDA_MAX_TOK tokens, and the conversion of an f32 x into
 * them (kb_cuda_act_prepare) for products whose producer did not write them itself (the
 * norms, attention and SwiGLU usually do: kb_act_put in internal.cuh).  Split out of
 * matmul.cu, which reads them. */
#include <stdlib.h>

#include "internal.cuh"

/* x (f32) -> permuted f16, bf16 hi/lo, and 32-column sums.  Grid (cols_pad/64, n_tok),
 * 64 threads: thread c converts column 64*blockIdx.x + c; each warp is one 32-block. */
template <unsigned PL>
__global__ void __launch_bounds__(64) k_act_prep(const float *x, int64_t ldx, int64_t cols, const KbActOut o)
{
	KB_TRACE();
	kb_pdl_trigger();
	kb_pdl_wait();
	const int t = blockIdx.y;
	const int64_t col = (int64_t)blockIdx.x * 64 + threadIdx.x;
	kb_act_put<PL>(o, t, col, col < cols ? x[t * ldx + col] : 0.f);
}

extern "C" void kb_cuda_act_free(KbCudaAct *act)
{
	if (!act)
		return;
	kb_cuda_dev_free(act->ctx, act->base);
	free(act);
}

extern "C" int kb_cuda_act_new(KbCuda *ctx, int64_t max_cols, KbCudaAct **ret_act)
{
	if (!ctx || !ret_act || max_cols < 1 || max_cols > ((int64_t)1 << 31))
		return -EINVAL;
	KbCudaAct *a = (KbCudaAct *)calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->ctx = ctx;
	a->cap = (max_cols + KB_ACT_PAD - 1) / KB_ACT_PAD * KB_ACT_PAD;
	const size_t h = (size_t)KB_MAX_TOK * (size_t)a->cap * 2;
	const size_t xs = (size_t)a->cap / 64 * KB_MAX_TOK * 2 * sizeof(float);
	const size_t xq = (size_t)KB_MAX_TOK * (size_t)a->cap;
	const size_t xd = (size_t)a->cap / 32 * KB_MAX_TOK * sizeof(float);
	const size_t bytes = 3 * h + xs + xq + 2 * xd;
	int r = kb_cuda_alloc(ctx, bytes, &a->base);
	/* zeros: columns and tokens never prepared must read as finite values */
	if (r == 0)
		r = kb_cuda_memset(ctx, a->base, 0, bytes);
	if (r == 0)
		r = kb_cuda_sync(ctx);
	if (r < 0) {
		kb_cuda_act_free(a);
		return r;
	}
	a->xh = (uint16_t *)a->base;
	a->xhi = (uint16_t *)((uint8_t *)a->base + h);
	a->xlo = (uint16_t *)((uint8_t *)a->base + 2 * h);
	a->xs = (float *)((uint8_t *)a->base + 3 * h);
	a->xq = (int8_t *)((uint8_t *)a->base + 3 * h + xs);
	a->xd = (float *)((uint8_t *)a->base + 3 * h + xs + xq); /* 16-byte aligned: cap is a multiple of 256 */
	a->xe = (float *)((uint8_t *)a->base + 3 * h + xs + xq + xd);
	*ret_act = a;
	return 0;
}

extern "C" int64_t kb_cuda_act_cap(const KbCudaAct *act)
{
	return act ? act->cap : 0;
}

extern "C" int kb_cuda_act_prepare(KbCuda *ctx, KbCudaAct *act, const float *x_dev, int64_t ldx,
				   int64_t cols, int n_tok)
{
	if (!ctx || !act || act->ctx != ctx || !x_dev || cols < 1 || cols > act->cap || ldx < cols ||
	    n_tok < 1 || n_tok > KB_CUDA_MAX_TOK)
		return -EINVAL;
	const int64_t cols_pad = (cols + KB_ACT_PAD - 1) / KB_ACT_PAD * KB_ACT_PAD;
	const KbActOut o = kb_act_out(act, n_tok, true); /* whatever product asked for it */
	int r = kb_with_planes(o, [&](auto pl) {
		return kb_launch(ctx, k_act_prep<decltype(pl)::value>, dim3((unsigned)(cols_pad / 64), (unsigned)n_tok),
				 dim3(64), 0, x_dev, ldx, cols, o);
	});
	if (r == 0) {
		act->cols = cols;
		act->n_tok = n_tok;
	}
	return r;
}
