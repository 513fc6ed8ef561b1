/* kernels/cuda/attention.cu: f16 KV-cache stores and attention over the cache for a
 * batch of query tokens (decode and prefill alike).
 *
 * Attention: one block of 4 warps per (token, head).  Warp w takes keys in tiles of 32,
 * w*32, w*32 + 128, ...: each lane scores one key of the tile (a whole dot product over
 * head_dim, 16-byte loads), the warp updates its running max and sum (online softmax),
 * then walks the tile's 32 weights accumulating values, each lane owning head_dim/32
 * dimensions (coalesced row reads).  The four warps' partial results meet in shared
 * memory at the end. */
#include <cuda_fp16.h>
#include <math.h>
#include <string.h>

#include "internal.cuh"
#include "ops.h"

__global__ void k_kv_store(const float *k, const float *v, __half *kc, __half *vc, const int32_t *pos,
			   const int32_t *seq, int kvd, int64_t stride)
{
	/* one element per thread over (token, column block): a decode step's few rows
	 * spread over many multiprocessors instead of looping in one block */
	const int t = blockIdx.x, i = blockIdx.y * blockDim.x + threadIdx.x;
	if (i >= kvd)
		return;
	const int64_t off = (int64_t)seq[t] * stride + (int64_t)pos[t] * kvd;
	kc[off + i] = __float2half_rn(k[(int64_t)t * kvd + i]);
	vc[off + i] = __float2half_rn(v[(int64_t)t * kvd + i]);
}

extern "C" int kb_cuda_kv_store(KbCuda *ctx, const float *k, const float *v, uint16_t *k_cache, uint16_t *v_cache,
				const int32_t *pos, const int32_t *seq, int n, int kvd, int64_t slot_stride)
{
	if (!ctx || !k || !v || !k_cache || !v_cache || !pos || !seq || n < 0 || kvd < 1 || slot_stride < kvd)
		return -EINVAL;
	if (n == 0)
		return 0;
	k_kv_store<<<dim3((unsigned)n, (unsigned)((kvd + 255) / 256)), 256, 0, ctx->stream>>>(k, v, (__half *)k_cache, (__half *)v_cache, pos, seq, kvd,
							 slot_stride);
	return kb_err(cudaGetLastError());
}

/* Where attention also stores its output in the product layout (xh NULL: nowhere). */
typedef struct {
	uint16_t *xh, *xhi, *xlo;
	float *xs;
	int64_t cap;
} ActOut;

#define ATT_WARPS 4
#define ATT_MAXPER 8 /* head_dim / 32 */

__device__ __forceinline__ float warp_max(float v)
{
	for (int o = 16; o; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

__device__ __forceinline__ float warp_sum(float v)
{
	for (int o = 16; o; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

__global__ void __launch_bounds__(ATT_WARPS * 32) k_attention(const float *q, const __half *kc, const __half *vc,
							      const int32_t *pos, const int32_t *seq, int n_head,
							      int group, int hd, int kvd, int64_t stride, float scale,
							      float *out, ActOut act)
{
	extern __shared__ float sm[]; /* qs[hd], acc[ATT_WARPS][hd], m[ATT_WARPS], l[ATT_WARPS] */
	float *qs = sm, *wacc = sm + hd, *wm = wacc + ATT_WARPS * hd, *wl = wm + ATT_WARPS;
	const int t = blockIdx.x / n_head, h = blockIdx.x % n_head;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, per = hd >> 5;
	const int len = pos[t] + 1;
	const int64_t base = (int64_t)seq[t] * stride + (int64_t)(h / group) * hd;
	const float *qr = q + ((int64_t)t * n_head + h) * hd;
	for (int i = threadIdx.x; i < hd; i += blockDim.x)
		qs[i] = __half2float(__float2half_rn(qr[i]));
	__syncthreads();

	float acc[ATT_MAXPER];
#pragma unroll
	for (int k = 0; k < ATT_MAXPER; k++)
		acc[k] = 0.f;
	float m = -INFINITY, l = 0.f;
	for (int j0 = warp * 32; j0 < len; j0 += ATT_WARPS * 32) {
		const int j = j0 + lane;
		float s = -INFINITY;
		if (j < len) {
			const __half *kr = kc + base + (int64_t)j * kvd;
			float d = 0.f;
#pragma unroll 4
			for (int i = 0; i < hd; i += 8) {
				const uint4 u = *(const uint4 *)(kr + i);
				const __half2 *h2 = (const __half2 *)&u;
#pragma unroll
				for (int e = 0; e < 4; e++) {
					const float2 f = __half22float2(h2[e]);
					d = fmaf(qs[i + 2 * e], f.x, d);
					d = fmaf(qs[i + 2 * e + 1], f.y, d);
				}
			}
			s = d * scale;
		}
		const float mnew = fmaxf(m, warp_max(s)); /* finite: lane 0's key is in range */
		const float p = j < len ? expf(s - mnew) : 0.f;
		const float corr = expf(m - mnew);
		l = l * corr + warp_sum(p);
#pragma unroll
		for (int k = 0; k < ATT_MAXPER; k++)
			acc[k] *= corr;
		const int cnt = len - j0 < 32 ? len - j0 : 32;
		/* unrolled so that several rows' loads are in flight together; each lane's
		 * sums keep their order */
#pragma unroll 8
		for (int jj = 0; jj < cnt; jj++) {
			const float pj = __shfl_sync(0xffffffffu, p, jj);
			const __half *vr = vc + base + (int64_t)(j0 + jj) * kvd;
#pragma unroll
			for (int k = 0; k < ATT_MAXPER; k++)
				if (k < per)
					acc[k] = fmaf(pj, __half2float(vr[lane + 32 * k]), acc[k]);
		}
		m = mnew;
	}
#pragma unroll
	for (int k = 0; k < ATT_MAXPER; k++)
		if (k < per)
			wacc[warp * hd + lane + 32 * k] = acc[k];
	if (lane == 0) {
		wm[warp] = m;
		wl[warp] = l;
	}
	__syncthreads();
	float M = wm[0];
	for (int w = 1; w < ATT_WARPS; w++)
		M = fmaxf(M, wm[w]);
	float L = 0.f, f[ATT_WARPS];
	for (int w = 0; w < ATT_WARPS; w++) {
		f[w] = wl[w] > 0.f ? expf(wm[w] - M) : 0.f; /* warps without keys: m = -inf */
		L += wl[w] * f[w];
	}
	const float inv = 1.0f / L;
	float *o = out + ((int64_t)t * n_head + h) * hd;
	/* hd is a multiple of 32: whole warps reach kb_act_put together */
	for (int i = threadIdx.x; i < hd; i += blockDim.x) {
		float s = 0.f;
		for (int w = 0; w < ATT_WARPS; w++)
			s += wacc[w * hd + i] * f[w];
		o[i] = s * inv;
		if (act.xh)
			kb_act_put(act.xh, act.xhi, act.xlo, act.xs, act.cap, t, (int64_t)h * hd + i, s * inv);
	}
}

extern "C" int kb_cuda_attention(KbCuda *ctx, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
				 const int32_t *pos, const int32_t *seq, int n, int n_head, int n_head_kv, int head_dim,
				 int64_t slot_stride, float scale, float *out, KbCudaAct *act)
{
	if (!ctx || !q || !k_cache || !v_cache || !pos || !seq || !out || n < 0 || n_head < 1 || n_head_kv < 1 ||
	    n_head % n_head_kv || head_dim < 32 || head_dim % 32 || head_dim > 32 * ATT_MAXPER)
		return -EINVAL;
	if (n == 0)
		return 0;
	const int64_t blocks = (int64_t)n * n_head;
	if (blocks > 0x7fffffff)
		return -EINVAL;
	/* the output also into ACT: it then holds what kb_cuda_act_prepare would make of it */
	ActOut av;
	memset(&av, 0, sizeof(av));
	if (act) {
		if (act->ctx != ctx || n > KB_CUDA_MAX_TOK || (int64_t)n_head * head_dim > act->cap)
			return -EINVAL;
		av.xh = act->xh;
		av.xhi = act->xhi;
		av.xlo = act->xlo;
		av.xs = act->xs;
		av.cap = act->cap;
	}
	const size_t smem = sizeof(float) * ((size_t)(1 + ATT_WARPS) * head_dim + 2 * ATT_WARPS);
	k_attention<<<(unsigned)blocks, ATT_WARPS * 32, smem, ctx->stream>>>(
		q, (const __half *)k_cache, (const __half *)v_cache, pos, seq, n_head, n_head / n_head_kv, head_dim,
		n_head_kv * head_dim, slot_stride, scale, out, av);
	int r = kb_err(cudaGetLastError());
	if (r == 0 && act) {
		act->cols = (int64_t)n_head * head_dim;
		act->n_tok = n;
	}
	return r;
}
