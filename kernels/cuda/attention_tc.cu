/* kernels/cuda/attention_tc.cu: attention for steps of many query tokens (prefill) on the
 * tensor cores, flash-attention style: a warp takes a tile of up to 16 query tokens of one
 * sequence and one head, walks the keys in blocks of 16 with an online softmax, and keeps
 * S = Q K^T and O += P V in mma.sync m16n8k16 registers (f16 operands, f32 sums).
 *
 * Why: the per-token kernel (attention.cu) scores a key per lane with a serial dot
 * product; a 512-token prefill of a 7B shape spent ~390 us a layer there (30% of the
 * prefill), doing 2 GFLOP at ~5 TFLOP/s.
 *
 * Fragments without shared memory.  The dot products' k index (head dimensions) is
 * permuted so that lane (g = lane/4, tq = lane%4) reads its operands with 16-byte loads:
 * the k-step i's logical columns {2tq, 2tq+1, 2tq+8, 2tq+9} are dimensions
 * DQ*tq + 4i + {0, 1, 2, 3} (DQ = head_dim/4) in Q and in K alike, so a lane's share of a
 * K row is one contiguous quarter.  In O = P V the output columns are permuted too: n-tile
 * jj's column n is dimension (head_dim/8)*n + jj, so a lane's B operand for all n-tiles is
 * one contiguous eighth of each of its four V rows, and its results are the contiguous
 * quarter DQ*tq .. DQ*tq + DQ - 1 of rows g and g+8.  P (the softmax weights, in [0, 1])
 * goes into the mma as f16 hi + lo parts, two products, so that its rounding stays near
 * f32 (the per-token kernel's); Q is rounded to f16 as there.
 *
 * Tiles come from the host (kb_cuda_attention_tc): runs of consecutive batch tokens of one
 * sequence, at most 16 each.  Each row masks the keys after its own position, but a warp
 * reads (and multiplies by a zero weight) the keys up to its tile's last position for
 * every row, so those must hold finite values: the host makes tiles of consecutive
 * positions, whose keys the step itself has just written. */
#include <cuda_fp16.h>
#include <math.h>

#include "internal.cuh"
#include "ops.h"

#define TC_WARPS 4 /* heads a block: the warps of a block share K/V rows through L1 under GQA */

template <int HD>
__global__ void __launch_bounds__(TC_WARPS * 32) k_attention_tc(const float *q, const __half *kc, const __half *vc,
								 const int32_t *pos, const int32_t *seq,
								 const int32_t *tiles, int n_head, int group, int kvd,
								 int64_t stride, float scale_log2, float *out)
{
	constexpr int KS = HD / 16; /* k-steps of Q K^T */
	constexpr int NT = HD / 8;  /* n-tiles of P V */
	constexpr int DQ = HD / 4;  /* a lane's dimensions of a Q or K row */
	constexpr int KV = DQ / 8;  /* ... in 16-byte loads */
	constexpr int VV = NT / 8;  /* 16-byte loads of a lane's eighth of a V row */
	kb_pdl_wait(); /* launched without early start (many tokens); kept should that change */
	const int lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
	const int h = (int)blockIdx.y * TC_WARPS + (int)(threadIdx.x >> 5);
	if (h >= n_head)
		return;
	const int t0 = tiles[2 * blockIdx.x], cnt = tiles[2 * blockIdx.x + 1];
	const int p0 = g < cnt ? pos[t0 + g] : -1, p1 = g + 8 < cnt ? pos[t0 + g + 8] : -1;
	const int pm = __reduce_max_sync(0xffffffffu, p0 > p1 ? p0 : p1);
	const int64_t base = (int64_t)seq[t0] * stride + (int64_t)(h / group) * HD;
	const int64_t qd = (int64_t)n_head * HD;

	uint32_t qa[KS][4];
	{
		const float *q0 = q + (int64_t)(t0 + g) * qd + (int64_t)h * HD + DQ * tq;
		const float *q1 = q0 + 8 * qd;
		const float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
		for (int i = 0; i < KS; i++) {
			const float4 x0 = p0 >= 0 ? *(const float4 *)(q0 + 4 * i) : z;
			const float4 x1 = p1 >= 0 ? *(const float4 *)(q1 + 4 * i) : z;
			qa[i][0] = kb_pack_h2(x0.x, x0.y);
			qa[i][1] = kb_pack_h2(x1.x, x1.y);
			qa[i][2] = kb_pack_h2(x0.z, x0.w);
			qa[i][3] = kb_pack_h2(x1.z, x1.w);
		}
	}
	float o[NT][4];
#pragma unroll
	for (int jj = 0; jj < NT; jj++)
		o[jj][0] = o[jj][1] = o[jj][2] = o[jj][3] = 0.f;
	float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
	const uint4 z4 = { 0, 0, 0, 0 };

	/* a block's K rows kb + 8j + g (a quarter each) and V rows kb + {2tq, 2tq+1, 2tq+8,
	 * 2tq+9} (an eighth each); keys past the tile's last position read as zeros (they
	 * may lie past the slot's end).  K runs a block ahead: the next block's rows are
	 * requested before this block's softmax and P V, so only V's latency is waited on. */
	uint4 uk[2][KV];
	auto load_k = [&](int kb, uint4 (&dst)[2][KV]) {
#pragma unroll
		for (int j = 0; j < 2; j++) {
			const int key = kb + 8 * j + g;
			const __half *kr = kc + base + (int64_t)key * kvd + DQ * tq;
#pragma unroll
			for (int v = 0; v < KV; v++)
				dst[j][v] = key <= pm ? *(const uint4 *)(kr + 8 * v) : z4;
		}
	};
	load_k(0, uk);
	for (int kb = 0; kb <= pm; kb += 16) {
		uint4 uv[4][VV];
#pragma unroll
		for (int kk = 0; kk < 4; kk++) {
			const int key = kb + 2 * tq + (kk & 1) + 8 * (kk >> 1);
			const __half *vr = vc + base + (int64_t)key * kvd + NT * g;
#pragma unroll
			for (int v = 0; v < VV; v++)
				uv[kk][v] = key <= pm ? *(const uint4 *)(vr + 8 * v) : z4;
		}
		/* S = Q K^T for keys kb .. kb+15: n-tile j holds keys kb + 8j + {2tq, 2tq+1} */
		float s[2][4];
#pragma unroll
		for (int j = 0; j < 2; j++) {
			s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
			for (int i = 0; i < KS; i++)
				kb_mma_f16(s[j], qa[i], kb_u4_word(uk[j][i / 2], 2 * (i % 2)), kb_u4_word(uk[j][i / 2], 2 * (i % 2) + 1));
		}
		load_k(kb + 16, uk);
		float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
		for (int j = 0; j < 2; j++)
#pragma unroll
			for (int e = 0; e < 4; e++) {
				const int key = kb + 8 * j + 2 * tq + (e & 1);
				const float v = key <= (e < 2 ? p0 : p1) ? s[j][e] * scale_log2 : -INFINITY;
				s[j][e] = v;
				if (e < 2)
					mx0 = fmaxf(mx0, v);
				else
					mx1 = fmaxf(mx1, v);
			}
		mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
		mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
		mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
		mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
		const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
		/* a row with no key yet (all masked) keeps weight 0 and skips the rescale */
		const float c0 = n0 == -INFINITY ? 1.f : exp2f(m0 - n0), c1 = n1 == -INFINITY ? 1.f : exp2f(m1 - n1);
		m0 = n0;
		m1 = n1;
		float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
		for (int j = 0; j < 2; j++)
#pragma unroll
			for (int e = 0; e < 4; e++) {
				const float mr = e < 2 ? n0 : n1;
				const float p = s[j][e] == -INFINITY ? 0.f : exp2f(s[j][e] - mr);
				s[j][e] = p;
				if (e < 2)
					ps0 += p;
				else
					ps1 += p;
			}
		l0 = l0 * c0 + ps0;
		l1 = l1 * c1 + ps1;
#pragma unroll
		for (int jj = 0; jj < NT; jj++) {
			o[jj][0] *= c0;
			o[jj][1] *= c0;
			o[jj][2] *= c1;
			o[jj][3] *= c1;
		}
		/* P as the A operand (the C layout of S is that of A's halves), hi and lo */
		uint32_t ah[4], al[4];
		{
			const float pv[4][2] = { { s[0][0], s[0][1] }, { s[0][2], s[0][3] }, { s[1][0], s[1][1] },
						 { s[1][2], s[1][3] } };
#pragma unroll
			for (int r = 0; r < 4; r++) {
				const __half2 hi = __floats2half2_rn(pv[r][0], pv[r][1]);
				const float2 hf = __half22float2(hi);
				ah[r] = *(const uint32_t *)&hi;
				al[r] = kb_pack_h2(pv[r][0] - hf.x, pv[r][1] - hf.y);
			}
		}
		/* O += P V: n-tile jj's column g is dimension NT*g + jj of the lane's V rows */
#pragma unroll
		for (int jj = 0; jj < NT; jj++) {
			const int v = jj / 8, w = (jj % 8) / 2;
			const unsigned sel = jj % 2 ? 0x7632u : 0x5410u;
			const uint32_t b0 = __byte_perm(kb_u4_word(uv[0][v], w), kb_u4_word(uv[1][v], w), sel);
			const uint32_t b1 = __byte_perm(kb_u4_word(uv[2][v], w), kb_u4_word(uv[3][v], w), sel);
			kb_mma_f16(o[jj], ah, b0, b1);
			kb_mma_f16(o[jj], al, b0, b1);
		}
	}
	l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
	l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
	l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
	l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
	/* lane (g, tq): dimensions NT*2tq + jj (o[jj][0], [2]) and NT*(2tq+1) + jj ([1], [3]) */
#pragma unroll
	for (int r = 0; r < 2; r++) {
		if ((r == 0 ? p0 : p1) < 0)
			continue;
		const float inv = 1.0f / (r == 0 ? l0 : l1);
		float *orow = out + (int64_t)(t0 + g + 8 * r) * qd + (int64_t)h * HD + DQ * tq;
#pragma unroll
		for (int half = 0; half < 2; half++)
#pragma unroll
			for (int k = 0; k < NT / 4; k++) {
				const int e = 2 * r + half;
				*(float4 *)(orow + NT * half + 4 * k) =
					make_float4(o[4 * k][e] * inv, o[4 * k + 1][e] * inv, o[4 * k + 2][e] * inv,
						    o[4 * k + 3][e] * inv);
			}
	}
}

extern "C" int kb_cuda_attention_tc(KbCuda *ctx, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
				    const int32_t *pos, const int32_t *seq, const int32_t *tiles, int n_tiles,
				    int n_head, int n_head_kv, int head_dim, int64_t slot_stride, float scale,
				    float *out)
{
	const int64_t kvd64 = (int64_t)n_head_kv * head_dim;
	/* the kernel reads float4s of q and out and 16-byte pieces of the caches' rows */
	if (!ctx || !q || !k_cache || !v_cache || !pos || !seq || !tiles || !out || n_tiles < 1 || n_head < 1 ||
	    n_head_kv < 1 || n_head % n_head_kv || (head_dim != 64 && head_dim != 128) || slot_stride < kvd64 ||
	    slot_stride % 8 || (n_head + TC_WARPS - 1) / TC_WARPS > 65535 ||
	    ((uintptr_t)q | (uintptr_t)out | (uintptr_t)k_cache | (uintptr_t)v_cache) % 16)
		return -EINVAL;
	const dim3 grid((unsigned)n_tiles, (unsigned)((n_head + TC_WARPS - 1) / TC_WARPS));
	const float sl2 = scale * 1.4426950408889634f; /* exp(x) = exp2(x log2 e) */
	const int kvd = n_head_kv * head_dim, group = n_head / n_head_kv;
	if (head_dim == 64)
		return kb_launch_ex(ctx, 0, k_attention_tc<64>, grid, dim3(TC_WARPS * 32), 0, q, (const __half *)k_cache,
				 (const __half *)v_cache, pos, seq, tiles, n_head, group, kvd, slot_stride, sl2, out);
	return kb_launch_ex(ctx, 0, k_attention_tc<128>, grid, dim3(TC_WARPS * 32), 0, q, (const __half *)k_cache,
			 (const __half *)v_cache, pos, seq, tiles, n_head, group, kvd, slot_stride, sl2, out);
}
