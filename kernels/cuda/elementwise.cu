/* kernels/cuda/elementwise.cu: RMSNorm, RoPE, SwiGLU and add for the forward pass, and
 * the small asynchronous upload the ops table uses for index arrays.  These kernels are
 * launched plainly (no programmatic dependent launch): each waits for its predecessor. */
#include <math.h>

#include "internal.cuh"
#include "ops.h"

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets it. */
__device__ static double block_sum(double v, double *red)
{
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	for (int o = 16; o; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	if (lane == 0)
		red[warp] = v;
	__syncthreads();
	double s = 0;
	for (int i = 0; i < nw; i++)
		s += red[i];
	__syncthreads();
	return s;
}

/* Norms run one block of RMS_THREADS per row: a decode step has only a few rows, so
 * wide blocks (few loop trips, each a memory latency) matter more than many blocks. */
#define RMS_THREADS 1024

__global__ void __launch_bounds__(RMS_THREADS) k_rmsnorm(const float *x, const float *w, int dim, float eps, float *y)
{
	__shared__ double red[32];
	const float *xr = x + (int64_t)blockIdx.x * dim;
	float *yr = y + (int64_t)blockIdx.x * dim;
	double ss = 0;
	for (int i = threadIdx.x; i < dim; i += blockDim.x)
		ss += (double)xr[i] * xr[i];
	ss = block_sum(ss, red);
	const float scale = 1.0f / sqrtf((float)(ss / dim) + eps);
	for (int i = threadIdx.x; i < dim; i += blockDim.x)
		yr[i] = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
}

extern "C" int kb_cuda_rmsnorm(KbCuda *ctx, const float *x, const float *w, int n, int dim, float eps, float *y)
{
	if (!ctx || !x || !w || !y || n < 0 || dim < 1)
		return -EINVAL;
	if (n == 0)
		return 0;
	k_rmsnorm<<<(unsigned)n, RMS_THREADS, 0, ctx->stream>>>(x, w, dim, eps, y);
	return kb_err(cudaGetLastError());
}

/* k_rmsnorm, and each result also stored in the product layout (kb_act_put), padding
 * columns as zeros: one launch instead of a norm and an act_prep. */
__global__ void __launch_bounds__(RMS_THREADS) k_rmsnorm_act(const float *x, const float *w, int dim, float eps, float *y,
						     uint16_t *xh, uint16_t *xhi, uint16_t *xlo, float *xs,
						     int64_t cap, int64_t cols_pad)
{
	__shared__ double red[32];
	const float *xr = x + (int64_t)blockIdx.x * dim;
	float *yr = y + (int64_t)blockIdx.x * dim;
	double ss = 0;
	for (int i = threadIdx.x; i < dim; i += blockDim.x)
		ss += (double)xr[i] * xr[i];
	ss = block_sum(ss, red);
	const float scale = 1.0f / sqrtf((float)(ss / dim) + eps);
	/* cols_pad is a multiple of 32: whole warps reach kb_act_put together */
	for (int64_t col = threadIdx.x; col < cols_pad; col += blockDim.x) {
		float v = 0.f;
		if (col < dim) {
			v = __fmul_rn(__fmul_rn(xr[col], scale), w[col]);
			yr[col] = v;
		}
		kb_act_put(xh, xhi, xlo, xs, cap, (int)blockIdx.x, col, v);
	}
}

extern "C" int kb_cuda_rmsnorm_act(KbCuda *ctx, const float *x, const float *w, int n, int dim, float eps, float *y,
				   KbCudaAct *act)
{
	if (!ctx || !x || !w || !y || !act || act->ctx != ctx || n < 1 || n > KB_CUDA_MAX_TOK || dim < 1 ||
	    dim > act->cap)
		return -EINVAL;
	const int64_t cols_pad = ((int64_t)dim + KB_ACT_PAD - 1) / KB_ACT_PAD * KB_ACT_PAD;
	static_assert(KB_ACT_PAD % 32 == 0, "k_rmsnorm_act hands kb_act_put whole warps");
	k_rmsnorm_act<<<(unsigned)n, RMS_THREADS, 0, ctx->stream>>>(x, w, dim, eps, y, act->xh, act->xhi, act->xlo, act->xs,
							     act->cap, cols_pad);
	int r = kb_err(cudaGetLastError());
	if (r == 0) {
		act->cols = dim;
		act->n_tok = n;
	}
	return r;
}

/* One block per (token, head): thread 0 builds the angles by repeated multiplication
 * (the same float sequence as the CPU), then each thread takes pairs of the head. */
__global__ void __launch_bounds__(64) k_rope(float *x, const int32_t *pos, int n_head, int head_dim, int rot_dim,
					      float theta_scale)
{
	__shared__ float th[256];
	const int half = rot_dim / 2;
	if (threadIdx.x == 0) {
		float theta = (float)pos[blockIdx.x];
		for (int i = 0; i < half; i++) {
			th[i] = theta;
			theta = __fmul_rn(theta, theta_scale);
		}
	}
	__syncthreads();
	float *xt = x + ((int64_t)blockIdx.x * n_head + blockIdx.y) * head_dim;
	for (int i = threadIdx.x; i < half; i += blockDim.x) {
		float s, c;
		sincosf(th[i], &s, &c);
		float *p = xt + 2 * i;
		const float x0 = p[0], x1 = p[1];
		p[0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
		p[1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
	}
}

extern "C" int kb_cuda_rope(KbCuda *ctx, float *x, const int32_t *pos, int n, int n_head, int head_dim, int rot_dim,
			    float theta_scale)
{
	if (!ctx || !x || !pos || n < 0 || n_head < 1 || rot_dim < 0 || rot_dim % 2 || rot_dim > 512 ||
	    rot_dim > head_dim)
		return -EINVAL;
	if (n == 0 || rot_dim == 0)
		return 0;
	k_rope<<<dim3((unsigned)n, (unsigned)n_head), 64, 0, ctx->stream>>>(x, pos, n_head, head_dim, rot_dim, theta_scale);
	return kb_err(cudaGetLastError());
}

__global__ void k_swiglu(const float *g, const float *u, int64_t n, float *y)
{
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
		const float gi = g[i];
		y[i] = __fmul_rn(__fdiv_rn(gi, __fadd_rn(1.0f, expf(-gi))), u[i]);
	}
}

__global__ void k_add(float *x, const float *y, int64_t n)
{
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
		x[i] += y[i];
}

static unsigned grid_for(int64_t n)
{
	int64_t b = (n + 255) / 256;
	return (unsigned)(b > 65536 ? 65536 : b);
}

extern "C" int kb_cuda_swiglu(KbCuda *ctx, const float *g, const float *u, int64_t n, float *y)
{
	if (!ctx || !g || !u || !y || n < 0)
		return -EINVAL;
	if (n == 0)
		return 0;
	k_swiglu<<<grid_for(n), 256, 0, ctx->stream>>>(g, u, n, y);
	return kb_err(cudaGetLastError());
}

extern "C" int kb_cuda_add(KbCuda *ctx, float *x, const float *y, int64_t n)
{
	if (!ctx || !x || !y || n < 0)
		return -EINVAL;
	if (n == 0)
		return 0;
	k_add<<<grid_for(n), 256, 0, ctx->stream>>>(x, y, n);
	return kb_err(cudaGetLastError());
}

extern "C" int kb_cuda_upload_async(KbCuda *ctx, void *dev, const void *host, size_t bytes)
{
	if (!ctx || ((!dev || !host) && bytes))
		return -EINVAL;
	if (bytes == 0)
		return 0;
	return kb_err(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, ctx->stream));
}
