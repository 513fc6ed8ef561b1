/* kernels/cuda/elementwise.cu: RMSNorm, RoPE (also fused with the KV-cache store), SwiGLU
 * and add for the forward pass, sampling help (each logits row's argmax and top-k), and
 * the small asynchronous upload the ops table uses for index arrays.  In steps of up to
 * KB_CUDA_MAX_TOK tokens (kb_small_pdl) the forward pass's kernels here launch with
 * programmatic dependent launch: each lets its successor start at once and itself waits
 * for its predecessor before touching memory it writes, so launches overlap the kernel
 * before.  So do argmax and top-k, which follow the output head's product. */
#include <limits.h>
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

/* Columns a thread keeps in registers: rows up to RMS_THREADS * RMS_VEC wide are read
 * once, every load issued together (a decode step's norm is a chain of memory latencies:
 * with one load per loop trip, each trip waited for its own weight from DRAM). */
#define RMS_VEC 8

/* The block's row and the norm weights, column threadIdx.x + j * blockDim.x in slot j,
 * and the row's 1 / rms.  The weights never depend on the previous kernel, so they are
 * requested before waiting for it (kb_pdl_wait is called here). */
__device__ static float rms_load(const float *xr, const float *w, int dim, float eps, float (&xv)[RMS_VEC],
				 float (&wv)[RMS_VEC])
{
	const int b = (int)blockDim.x;
	KB_UNROLL
	for (int j = 0; j < RMS_VEC; j++) {
		const int col = (int)threadIdx.x + j * b;
		wv[j] = col < dim ? w[col] : 0.f;
	}
	kb_pdl_wait();
	__shared__ double red[32];
	double ss = 0;
	KB_UNROLL
	for (int j = 0; j < RMS_VEC; j++) {
		const int col = (int)threadIdx.x + j * b;
		xv[j] = col < dim ? xr[col] : 0.f;
	}
	/* sum of squares in double, like the CPU */
	KB_UNROLL
	for (int j = 0; j < RMS_VEC; j++)
		if ((int)threadIdx.x + j * b < dim)
			ss += (double)xv[j] * xv[j];
	for (int i = (int)threadIdx.x + RMS_VEC * b; i < dim; i += b)
		ss += (double)xr[i] * xr[i];
	ss = block_sum(ss, red);
	return 1.0f / sqrtf((float)(ss / dim) + eps);
}

/* The normalized row (the columns rms_load read, kept in xv/wv, then the rest) into yr,
 * and each of its first END columns' value (0 past dim) to put(column, value); END >= dim.
 * Columns go threadIdx.x + j * blockDim.x, so whole warps reach put together. */
template <typename F>
__device__ __forceinline__ void rms_store(const float *xr, const float *w, int dim, float scale,
					  const float (&xv)[RMS_VEC], const float (&wv)[RMS_VEC], float *yr, int end, F &&put)
{
	const int b = (int)blockDim.x;
	KB_UNROLL
	for (int j = 0; j < RMS_VEC; j++) {
		const int col = (int)threadIdx.x + j * b;
		if (col >= end) /* the same for the whole warp when END is a multiple of 32 */
			break;
		float v = 0.f;
		if (col < dim) {
			v = __fmul_rn(__fmul_rn(xv[j], scale), wv[j]);
			yr[col] = v;
		}
		put(col, v);
	}
	for (int col = (int)threadIdx.x + RMS_VEC * b; col < end; col += b) {
		float v = 0.f;
		if (col < dim) {
			v = __fmul_rn(__fmul_rn(xr[col], scale), w[col]);
			yr[col] = v;
		}
		put(col, v);
	}
}

__global__ void __launch_bounds__(RMS_THREADS) k_rmsnorm(int trig, const float *x, const float *w, int dim, float eps,
							  float *y)
{
	KB_TRACE();
	if (trig)
		kb_pdl_trigger();
	const float *xr = x + (int64_t)blockIdx.x * dim;
	float xv[RMS_VEC], wv[RMS_VEC];
	const float scale = rms_load(xr, w, dim, eps, xv, wv);
	rms_store(xr, w, dim, scale, xv, wv, y + (int64_t)blockIdx.x * dim, dim, [](int, float) {});
}

extern "C" int kb_cuda_rmsnorm(KbCuda *ctx, const float *x, const float *w, int n, int dim, float eps, float *y)
{
	if (!ctx || !x || !w || !y || n < 0 || dim < 1)
		return -EINVAL;
	if (n == 0)
		return 0;
	const int pdl = kb_small_pdl(n);
	return kb_launch_ex(ctx, pdl, k_rmsnorm, dim3((unsigned)n), dim3(RMS_THREADS), 0, pdl, x, w, dim, eps,
			y);
}

/* k_rmsnorm, and each result also stored in the product layout (kb_act_put), padding
 * columns as zeros: one launch instead of a norm and an act_prep. */
template <unsigned PL>
__global__ void __launch_bounds__(RMS_THREADS) k_rmsnorm_act(int trig, const float *x, const float *w, int dim,
							      float eps, float *y, const KbActOut o, int cols_pad)
{
	KB_TRACE();
	if (trig)
		kb_pdl_trigger();
	const float *xr = x + (int64_t)blockIdx.x * dim;
	float xv[RMS_VEC], wv[RMS_VEC];
	const float scale = rms_load(xr, w, dim, eps, xv, wv);
	/* cols_pad is a multiple of 32: whole warps reach kb_act_put together */
	rms_store(xr, w, dim, scale, xv, wv, y + (int64_t)blockIdx.x * dim, cols_pad, [&](int col, float v) {
		kb_act_put<PL>(o, (int)blockIdx.x, col, v);
	});
}

extern "C" int kb_cuda_rmsnorm_act(KbCuda *ctx, const float *x, const float *w, int n, int dim, float eps, float *y,
				   KbCudaAct *act)
{
	if (!ctx || !x || !w || !y || !act || act->ctx != ctx || n < 1 || n > KB_CUDA_MAX_TOK || dim < 1 ||
	    dim > act->cap)
		return -EINVAL;
	const int64_t cols_pad = ((int64_t)dim + KB_ACT_PAD - 1) / KB_ACT_PAD * KB_ACT_PAD;
	if (cols_pad > INT_MAX)
		return -EINVAL;
	static_assert(KB_ACT_PAD % 32 == 0, "k_rmsnorm_act hands kb_act_put whole warps");
	const int pdl = kb_small_pdl(n);
	const KbActOut o = kb_act_out(act, n);
	int r = kb_with_planes(o, [&](auto pl) {
		return kb_launch_ex(ctx, pdl, k_rmsnorm_act<decltype(pl)::value>, dim3((unsigned)n), dim3(RMS_THREADS), 0,
				    pdl, x, w, dim, eps, y, o, (int)cols_pad);
	});
	if (r == 0) {
		act->cols = dim;
		act->n_tok = n;
	}
	return r;
}

/* Angles pos * theta_scale^i, i < half, built by thread 0 by repeated multiplication
 * (the same float sequence as the CPU), into th. */
__device__ static void rope_angles(float *th, int32_t pos, int half, float theta_scale)
{
	if (threadIdx.x == 0) {
		float theta = (float)pos;
		for (int i = 0; i < half; i++) {
			th[i] = theta;
			theta = __fmul_rn(theta, theta_scale);
		}
	}
	__syncthreads();
}

/* Rotates the pair p[0], p[1] by the angle whose sine and cosine are s and c, rounding
 * each step as the CPU does. */
__device__ __forceinline__ void rope_pair(float *p, float s, float c)
{
	const float x0 = p[0], x1 = p[1];
	p[0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
	p[1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}

/* Rotates the pairs of one head (xt) by the angles th; each thread takes pairs. */
__device__ static void rope_head(float *xt, const float *th, int half)
{
	for (int i = threadIdx.x; i < half; i += blockDim.x) {
		float s, c;
		sincosf(th[i], &s, &c);
		rope_pair(xt + 2 * i, s, c);
	}
}

/* One block per (token, head). */
__global__ void __launch_bounds__(64) k_rope(int trig, float *x, const int32_t *pos, int n_head, int head_dim,
					      int rot_dim,
					      float theta_scale)
{
	KB_TRACE();
	if (trig)
		kb_pdl_trigger();
	kb_pdl_wait();
	__shared__ float th[256];
	rope_angles(th, pos[blockIdx.x], rot_dim / 2, theta_scale);
	rope_head(x + ((int64_t)blockIdx.x * n_head + blockIdx.y) * head_dim, th, rot_dim / 2);
}

/* One block per (token, head of q or kv head): q heads rotate in place; a kv head
 * rotates its k head, then stores k and v (f16, round to nearest even) into the caches
 * at seq[t] * stride + pos[t] * kvd: rope twice and kv_store in one launch. */
__global__ void __launch_bounds__(64) k_rope_kv(int trig, float *q, float *k, const float *v, __half *kc, __half *vc,
						 const int32_t *pos, const int32_t *seq, int n_head, int n_head_kv,
						 int hd, int rot_dim, float theta_scale, int64_t stride)
{
	KB_TRACE();
	if (trig)
		kb_pdl_trigger();
	kb_pdl_wait();
	__shared__ float th[256];
	const int t = blockIdx.x, h = blockIdx.y;
	rope_angles(th, pos[t], rot_dim / 2, theta_scale);
	if (h < n_head) {
		rope_head(q + ((int64_t)t * n_head + h) * hd, th, rot_dim / 2);
		return;
	}
	const int kvd = n_head_kv * hd;
	const int64_t src = (int64_t)t * kvd + (int64_t)(h - n_head) * hd;
	rope_head(k + src, th, rot_dim / 2);
	__syncthreads(); /* the rotated values come from other threads */
	const int64_t dst = (int64_t)seq[t] * stride + (int64_t)pos[t] * kvd + (int64_t)(h - n_head) * hd;
	for (int i = threadIdx.x; i < hd; i += blockDim.x) {
		kc[dst + i] = __float2half_rn(k[src + i]);
		vc[dst + i] = __float2half_rn(v[src + i]);
	}
}

/* k_rope_kv for steps of many tokens: one block per token over all its heads, the angles'
 * sines and cosines computed once (the same calls, so the same bits).  A block per
 * (token, head) of 64 threads, each building its angles in one thread, was bound by
 * launching 32k small blocks for a 512-token step. */
__global__ void __launch_bounds__(256) k_rope_kv_tok(float *q, float *k, const float *v, __half *kc, __half *vc,
						      const int32_t *pos, const int32_t *seq, int n_head,
						      int n_head_kv, int hd, int rot_dim, float theta_scale,
						      int64_t stride)
{
	kb_pdl_wait(); /* launched without early start (many tokens); kept should that change */
	__shared__ float th[256], sn[256], cs[256];
	const int t = blockIdx.x, half = rot_dim / 2, b = (int)blockDim.x;
	rope_angles(th, pos[t], half, theta_scale);
	for (int i = threadIdx.x; i < half; i += b)
		sincosf(th[i], &sn[i], &cs[i]);
	__syncthreads();
	const int kvd = n_head_kv * hd;
	for (int e = threadIdx.x; e < (n_head + n_head_kv) * half; e += b) {
		const int h = e / half, i = e % half;
		rope_pair(h < n_head ? q + ((int64_t)t * n_head + h) * hd + 2 * i
				     : k + (int64_t)t * kvd + (int64_t)(h - n_head) * hd + 2 * i,
			  sn[i], cs[i]);
	}
	__syncthreads(); /* the rotated values come from other threads */
	const int64_t src = (int64_t)t * kvd, dst = (int64_t)seq[t] * stride + (int64_t)pos[t] * kvd;
	for (int i = threadIdx.x; i < kvd; i += b) {
		kc[dst + i] = __float2half_rn(k[src + i]);
		vc[dst + i] = __float2half_rn(v[src + i]);
	}
}

extern "C" int kb_cuda_rope_kv_store(KbCuda *ctx, float *q, float *k, const float *v, uint16_t *k_cache,
				     uint16_t *v_cache, const int32_t *pos, const int32_t *seq, int n, int n_head,
				     int n_head_kv, int head_dim, int rot_dim, float theta_scale, int64_t slot_stride)
{
	if (!ctx || !q || !k || !v || !k_cache || !v_cache || !pos || !seq || n < 0 || n_head < 1 ||
	    n_head_kv < 1 || head_dim < 1 || rot_dim < 0 || rot_dim % 2 || rot_dim > 512 || rot_dim > head_dim ||
	    slot_stride < (int64_t)n_head_kv * head_dim)
		return -EINVAL;
	if (n == 0)
		return 0;
	if (n >= ctx->sm_count) /* below, a block per token leaves the device idle (batch 32: -3%) */
		return kb_launch_ex(ctx, 0, k_rope_kv_tok, dim3((unsigned)n), dim3(256), 0, q, k, v, (__half *)k_cache,
				 (__half *)v_cache, pos, seq, n_head, n_head_kv, head_dim, rot_dim, theta_scale,
				 slot_stride);
	const int pdl = kb_small_pdl(n);
	return kb_launch_ex(ctx, pdl, k_rope_kv, dim3((unsigned)n, (unsigned)(n_head + n_head_kv)), dim3(64),
			0, pdl, q, k, v, (__half *)k_cache, (__half *)v_cache, pos, seq, n_head, n_head_kv,
			head_dim, rot_dim, theta_scale, slot_stride);
}

extern "C" int kb_cuda_rope(KbCuda *ctx, float *x, const int32_t *pos, int n, int n_head, int head_dim, int rot_dim,
			    float theta_scale)
{
	if (!ctx || !x || !pos || n < 0 || n_head < 1 || rot_dim < 0 || rot_dim % 2 || rot_dim > 512 ||
	    rot_dim > head_dim)
		return -EINVAL;
	if (n == 0 || rot_dim == 0)
		return 0;
	const int pdl = kb_small_pdl(n);
	return kb_launch_ex(ctx, pdl, k_rope, dim3((unsigned)n, (unsigned)n_head), dim3(64), 0, pdl, x, pos,
			n_head, head_dim, rot_dim, theta_scale);
}


__global__ void k_swiglu(int trig, const float *g, const float *u, int64_t n, float *y)
{
	KB_TRACE();
	if (trig)
		kb_pdl_trigger();
	kb_pdl_wait();
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
		y[i] = kb_silu_mul(g[i], u[i]);
	}
}

__global__ void k_add(int trig, float *x, const float *y, int64_t n)
{
	KB_TRACE();
	if (trig)
		kb_pdl_trigger();
	kb_pdl_wait();
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
		x[i] += y[i];
}

static unsigned grid_for(int64_t n)
{
	int64_t b = (n + 255) / 256;
	return (unsigned)(b > 65536 ? 65536 : b);
}

/* k_swiglu over float4s (n4 of them), grid-stride: a 512-token step of a 7B shape is 1.4 M
 * of them, and a block per 256 single values spent its time launching blocks. */
__global__ void __launch_bounds__(256) k_swiglu4(const float4 *g, const float4 *u, int64_t n4, float4 *y)
{
	kb_pdl_wait(); /* launched without early start (many tokens); kept should that change */
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (int64_t)gridDim.x * blockDim.x) {
		const float4 a = g[i], b = u[i];
		y[i] = make_float4(kb_silu_mul(a.x, b.x), kb_silu_mul(a.y, b.y), kb_silu_mul(a.z, b.z),
				   kb_silu_mul(a.w, b.w));
	}
}

extern "C" int kb_cuda_swiglu(KbCuda *ctx, const float *g, const float *u, int64_t n, float *y)
{
	if (!ctx || !g || !u || !y || n < 0)
		return -EINVAL;
	if (n == 0)
		return 0;
	if (n % 4 == 0 && ((uintptr_t)g | (uintptr_t)u | (uintptr_t)y) % 16 == 0 && n >= 4 * 256 * 64) {
		const int64_t n4 = n / 4, blocks = (n4 + 255) / 256, cap = (int64_t)4 * ctx->sm_count;
		return kb_launch_ex(ctx, 0, k_swiglu4, dim3((unsigned)(blocks < cap ? blocks : cap)), dim3(256),
				 0, (const float4 *)g, (const float4 *)u, n4, (float4 *)y);
	}
	return kb_launch_ex(ctx, 0, k_swiglu, dim3(grid_for(n)), dim3(256), 0, 0, g, u, n, y);
}

/* k_swiglu over one row per blockIdx.y, each result also stored in the product layout:
 * grid (cols_pad / 256, n).  Padding columns get zeros. */
template <unsigned PL>
__global__ void __launch_bounds__(256) k_swiglu_act(int trig, const float *g, const float *u, int64_t dim, float *y,
						    const KbActOut o)
{
	KB_TRACE();
	if (trig)
		kb_pdl_trigger();
	kb_pdl_wait();
	const int t = blockIdx.y;
	const int64_t col = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, i = (int64_t)t * dim + col;
	float v = 0.f;
	if (col < dim) {
		v = kb_silu_mul(g[i], u[i]);
		y[i] = v;
	}
	kb_act_put<PL>(o, t, col, v);
}

extern "C" int kb_cuda_swiglu_act(KbCuda *ctx, const float *g, const float *u, int n, int64_t dim, float *y,
				  KbCudaAct *act)
{
	if (!ctx || !g || !u || !y || !act || act->ctx != ctx || n < 1 || n > KB_CUDA_MAX_TOK || dim < 1 ||
	    dim > act->cap)
		return -EINVAL;
	const int64_t cols_pad = (dim + KB_ACT_PAD - 1) / KB_ACT_PAD * KB_ACT_PAD;
	static_assert(KB_ACT_PAD % 256 == 0, "k_swiglu_act covers the padded columns with whole blocks");
	const int pdl = kb_small_pdl(n);
	const KbActOut o = kb_act_out(act, n);
	int r = kb_with_planes(o, [&](auto pl) {
		return kb_launch_ex(ctx, pdl, k_swiglu_act<decltype(pl)::value>, dim3((unsigned)(cols_pad / 256), (unsigned)n),
				    dim3(256), 0, pdl, g, u, dim, y, o);
	});
	if (r == 0) {
		act->cols = dim;
		act->n_tok = n;
	}
	return r;
}

extern "C" int kb_cuda_add(KbCuda *ctx, float *x, const float *y, int64_t n)
{
	if (!ctx || !x || !y || n < 0)
		return -EINVAL;
	if (n == 0)
		return 0;
	return kb_launch_ex(ctx, 0, k_add, dim3(grid_for(n)), dim3(256), 0, 0, x, y, n);
}

extern "C" int kb_cuda_upload_async(KbCuda *ctx, void *dev, const void *host, size_t bytes)
{
	if (!ctx || ((!dev || !host) && bytes))
		return -EINVAL;
	if (bytes == 0)
		return 0;
	return kb_err(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, ctx->stream));
}

/* ---- greedy sampling: the first index of each row's largest value ---- */

/* (v, i) beats (bv, bi): larger, or equal and earlier.  NaN never wins (every comparison
 * with it is false), -0 equals +0, and -inf still beats "nothing yet" (bi = INT_MAX). */
__device__ __forceinline__ bool kb_amax_better(float v, int i, float bv, int bi)
{
	return v > bv || (v == bv && i < bi);
}

/* The best (value, index) pair of the warp, into every lane's bv, bi. */
__device__ __forceinline__ void kb_amax_warp(float &bv, int &bi)
{
	for (int o = 16; o > 0; o >>= 1) {
		const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
		const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
		if (kb_amax_better(ov, oi, bv, bi)) {
			bv = ov;
			bi = oi;
		}
	}
}

#define SCAN_UNROLL 8

/* f(column, value) for every column of a row this thread takes, then NaN (which neither
 * argmax nor top-k ever takes) for the padding past the end up to a whole round:
 * SCAN_UNROLL loads a round in flight together, each 16 bytes (four columns) where the row
 * is aligned, so that a pass over a 32,000-column row is one L2 round trip (32 with one
 * column a load and one load in flight, as k_argmax had: 14.6 us on the H200).  Whole
 * warps call f together. */
template <typename F> __device__ __forceinline__ void row_scan(const float *row, int64_t cols, F &&f)
{
	const int64_t nt = blockDim.x;
	int64_t cv = 0; /* the columns before cv went by 16-byte loads */
	if (((uintptr_t)row & 15) == 0) {
		const float4 *r4 = (const float4 *)row;
		const int64_t n4 = cols / 4;
		for (int64_t b = 0; b < n4; b += SCAN_UNROLL * nt) {
			float4 v[SCAN_UNROLL];
			KB_UNROLL
			for (int j = 0; j < SCAN_UNROLL; j++) {
				const int64_t i = b + j * nt + threadIdx.x;
				v[j] = i < n4 ? r4[i] : make_float4(NAN, NAN, NAN, NAN);
			}
			KB_UNROLL
			for (int j = 0; j < SCAN_UNROLL; j++) {
				const int64_t c = 4 * (b + j * nt + threadIdx.x);
				f(c, v[j].x);
				f(c + 1, v[j].y);
				f(c + 2, v[j].z);
				f(c + 3, v[j].w);
			}
		}
		cv = 4 * n4;
	}
	for (int64_t c0 = cv; c0 < cols; c0 += SCAN_UNROLL * (int64_t)blockDim.x) {
		float v[SCAN_UNROLL];
		KB_UNROLL
		for (int j = 0; j < SCAN_UNROLL; j++) {
			const int64_t c = c0 + (int64_t)j * blockDim.x + threadIdx.x;
			v[j] = c < cols ? row[c] : NAN;
		}
		KB_UNROLL
		for (int j = 0; j < SCAN_UNROLL; j++)
			f(c0 + (int64_t)j * blockDim.x + threadIdx.x, v[j]);
	}
}

/* One block per row: each thread scans a stride of the row (row_scan), then the warps and
 * the block reduce (value, index) pairs; the pairs' order decides nothing, so the scan's
 * order does not matter.  A row of only NaNs gives 0.  Launched early (trig), it waits
 * for the product.  Where the id goes: kb_cuda_argmax. */
__global__ void __launch_bounds__(1024) k_argmax(int trig, const float *y, int64_t cols, int64_t ldy, int32_t *idx,
						     const uint32_t *sel, int64_t half, int32_t *feed)
{
	KB_TRACE();
	if (trig)
		kb_pdl_trigger();
	kb_pdl_wait();
	const float *row = y + (int64_t)blockIdx.x * ldy;
	float bv = -INFINITY;
	int bi = INT_MAX;
	row_scan(row, cols, [&](int64_t c, float v) {
		if (kb_amax_better(v, (int)c, bv, bi)) {
			bv = v;
			bi = (int)c;
		}
	});
	kb_amax_warp(bv, bi);
	__shared__ float sv[32];
	__shared__ int si[32];
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	if (lane == 0) {
		sv[warp] = bv;
		si[warp] = bi;
	}
	__syncthreads();
	if (warp == 0) {
		const int nw = (int)(blockDim.x >> 5);
		bv = lane < nw ? sv[lane] : -INFINITY;
		bi = lane < nw ? si[lane] : INT_MAX;
		kb_amax_warp(bv, bi);
		if (lane == 0) {
			const int32_t id = bi == INT_MAX ? 0 : bi;
			idx[(sel ? (int64_t)(*sel & 1u) * half : 0) + blockIdx.x] = id;
			if (feed)
				feed[blockIdx.x] = id;
		}
	}
}

extern "C" int kb_cuda_argmax(KbCuda *ctx, const float *y, int n, int64_t cols, int64_t ldy, int32_t *idx_dev,
				   const uint32_t *sel, int64_t half, int32_t *feed)
{
	if (!ctx || !y || !idx_dev || n < 1 || cols < 1 || cols > INT_MAX || ldy < cols || (sel && half < n))
		return -EINVAL;
	const int pdl = kb_small_pdl(n);
	return kb_launch_ex(ctx, pdl, k_argmax, dim3((unsigned)n), dim3(1024), 0, pdl, y, cols, ldy, idx_dev, sel,
			    half, feed);
}

/* ---- top-k of each logits row (sampling with top_k on the host from k candidates) ----
 *
 * One block per row.  Logits map to unsigned keys that order like the floats (NaN and
 * -inf to 0: never candidates).  A radix select, 8 bits a pass from the top, finds the
 * key of the k-th largest and how many of the candidates share it; one more pass writes
 * the candidates out: all keys above it, and of the keys equal to it the ones with the
 * lowest indices, which is the host sampler's order (higher logit, then lower id).  When
 * every key equal to the k-th is taken (no tie across the k-th place, the usual case)
 * that pass writes in any order; otherwise in index order.  The row is read from L2 (the
 * product has just written it) five times. */

__device__ __forceinline__ uint32_t kb_topk_key(float v)
{
	if (!(v > -INFINITY)) /* NaN or -inf */
		return 0;
	const uint32_t b = __float_as_uint(v == 0.f ? 0.f : v); /* -0 is +0 */
	return b & 0x80000000u ? ~b : b | 0x80000000u;
}

__global__ void __launch_bounds__(1024) k_topk(int trig, const float *y, int64_t cols, int64_t ldy, int k,
					       int32_t *ids, float *vals, int32_t *counts)
{
	KB_TRACE();
	if (trig)
		kb_pdl_trigger();
	kb_pdl_wait(); /* launched early (trig): the product writes y */
	__shared__ uint32_t hist[256];
	/* the bin chosen, the rank left within it, candidates, the bin's count, output slots */
	__shared__ uint32_t sel_s[5];
	__shared__ uint32_t wgt[32], weq[32];
	const float *row = y + (int64_t)blockIdx.x * ldy;
	int32_t *oid = ids + (int64_t)blockIdx.x * k;
	float *oval = vals + (int64_t)blockIdx.x * k;
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = (int)(blockDim.x >> 5);
	uint32_t prefix = 0, mask = 0, want = (uint32_t)k;
	for (int pass = 0; pass < 4; pass++) {
		const int shift = 24 - 8 * pass;
		for (int i = tid; i < 256; i += blockDim.x)
			hist[i] = 0;
		__syncthreads();
		/* Logits of one row share their top bits, so most keys land in a few bins: the
		 * lanes of a warp with the same bin add once, together (one shared-memory atomic
		 * per bin per warp instead of 32 to the same address). */
		row_scan(row, cols, [&](int64_t, float v) {
			const uint32_t key = kb_topk_key(v);
			const uint32_t bin = key && (key & mask) == prefix ? (key >> shift) & 255u : 256u;
			const uint32_t same = __match_any_sync(0xffffffffu, bin);
			if (bin < 256u && lane == __ffs(same) - 1)
				atomicAdd(&hist[bin], (uint32_t)__popc(same));
		});
		__syncthreads();
		if (warp == 0) {
			/* lane l holds bins 255 - 8l down to 248 - 8l; counts from the top */
			uint32_t h[8], sum = 0;
			for (int j = 0; j < 8; j++)
				sum += h[j] = hist[255 - 8 * lane - j];
			uint32_t incl = sum;
			for (int o = 1; o < 32; o <<= 1) {
				const uint32_t v = __shfl_up_sync(0xffffffffu, incl, o);
				if (lane >= o)
					incl += v;
			}
			const uint32_t total = __shfl_sync(0xffffffffu, incl, 31);
			if (pass == 0 && want > total)
				want = total; /* fewer candidates than k: all of them */
			const uint32_t excl = incl - sum;
			/* the lane whose bins hold the want-th key (none when want is 0) */
			const bool mine = want > 0 && excl < want && want <= incl;
			const uint32_t who = __ballot_sync(0xffffffffu, mine);
			if (mine) {
				uint32_t above = excl;
				int j = 0;
				while (above + h[j] < want) /* terminates: the lane's bins reach want */
					above += h[j++];
				sel_s[0] = 255u - 8u * (uint32_t)lane - (uint32_t)j;
				sel_s[1] = want - above;
				sel_s[3] = h[j];
			}
			if (!who && lane == 0) {
				sel_s[0] = 0;
				sel_s[1] = 0;
			}
			if (pass == 0 && lane == 0) {
				counts[blockIdx.x] = (int32_t)want;
				sel_s[2] = want;
			}
		}
		__syncthreads();
		if (sel_s[2] == 0)
			return; /* no candidates (the same for every thread) */
		want = sel_s[1];
		prefix |= sel_s[0] << shift;
		mask |= 255u << shift;
		__syncthreads();
	}
	/* prefix: the k-th key; want: how many of the keys equal to it are taken */
	const uint32_t kth = prefix, n_eq = want;
	const uint32_t n_gt = sel_s[2] - n_eq;
	if (sel_s[3] == n_eq) {
		/* every key equal to the k-th is taken (the usual case: no tie across the k-th
		 * place): the candidates are exactly the keys >= kth, written in any order */
		if (tid == 0)
			sel_s[4] = 0;
		__syncthreads();
		row_scan(row, cols, [&](int64_t c, float v) {
			const uint32_t key = kb_topk_key(v);
			if (key && key >= kth) {
				const uint32_t slot = atomicAdd(&sel_s[4], 1u);
				oid[slot] = (int32_t)c;
				oval[slot] = v;
			}
		});
		return;
	}
	/* a tie across the k-th place: of the equal keys the lowest indices, in index order */
	uint32_t base_gt = 0, base_eq = 0;
	float vn = tid < cols ? row[tid] : 0.f; /* the next trip's value, loaded a trip ahead */
	for (int64_t c0 = 0; c0 < cols && (base_gt < n_gt || base_eq < n_eq); c0 += blockDim.x) {
		const int64_t c = c0 + tid, cn = c + blockDim.x;
		const float v = vn;
		vn = cn < cols ? row[cn] : 0.f;
		const uint32_t key = c < cols ? kb_topk_key(v) : 0u;
		const bool gt = key > kth, eq = key && key == kth;
		const uint32_t bg = __ballot_sync(0xffffffffu, gt), be = __ballot_sync(0xffffffffu, eq);
		const uint32_t lt = (1u << lane) - 1u;
		if (lane == 0) {
			wgt[warp] = __popc(bg);
			weq[warp] = __popc(be);
		}
		__syncthreads();
		uint32_t pg = 0, pe = 0, tg = 0, te = 0;
		for (int w = 0; w < nwarps; w++) {
			if (w < warp) {
				pg += wgt[w];
				pe += weq[w];
			}
			tg += wgt[w];
			te += weq[w];
		}
		if (gt) {
			const uint32_t slot = base_gt + pg + __popc(bg & lt);
			oid[slot] = (int32_t)c;
			oval[slot] = v;
		} else if (eq) {
			const uint32_t r = base_eq + pe + __popc(be & lt);
			if (r < n_eq) {
				oid[n_gt + r] = (int32_t)c;
				oval[n_gt + r] = v;
			}
		}
		base_gt += tg;
		base_eq += te;
		__syncthreads();
	}
}

extern "C" int kb_cuda_topk(KbCuda *ctx, const float *y, int n, int64_t cols, int64_t ldy, int k, int32_t *ids,
			    float *vals, int32_t *counts)
{
	if (!ctx || !y || !ids || !vals || !counts || n < 1 || cols < 1 || cols > INT_MAX || ldy < cols || k < 1 ||
	    k > KB_CUDA_TOPK_MAX)
		return -EINVAL;
	const int pdl = kb_small_pdl(n);
	return kb_launch_ex(ctx, pdl, k_topk, dim3((unsigned)n), dim3(1024), 0, pdl, y, cols, ldy, k, ids, vals,
			    counts);
}
