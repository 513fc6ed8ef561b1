/* kernels/cuda/matmul_i8.cuh: the decode products' int8 arithmetic (Q4_0, Q4_1, Q4_K, Q6_K, Q8_0).
 * Included only by matmul.cu, after KbMmvArgs; k_mmv calls kb_chunk8 instead of kb_chunk
 * when its I8 parameter says so.
 *
 * Why: the f16 path (kb_chunk) is bound by instruction issue, not by memory (bench/NOTES-gpu.md,
 * sessions 2-5).  Each Q4 word becomes four f16x2 A registers in 9 integer and f16
 * instructions, and a 32-column block takes two m16n8k16 and six more for its scale.  With
 * the activations as int8 levels and a scale per 32-column block (the CPU backend's Q8_0
 * activations, kb_act_put), a block is one m16n8k32 whose A registers are 3 instructions a
 * Q4 word (kb_dec_q4_i8; a word is one row of one block) or 4 PRMT for a Q8_0 block, and
 * its activation registers half as many.
 *
 * Arithmetic: c = sum over the block of A q_x in int32 (exact), then acc += (d_w d_x) c,
 * plus m_w s_x for Q4_1 (s_x = d_x sum(q_x) rounded to f16, Q8_1's s): what the CPU
 * backend computes, so both backends round the same activations the same way.  Q4_K
 * the same per 32-column sub-block, d_w = d sc and m_w = -dmin mn (kb_post8_begin / _end
 * apply d and dmin once a superblock); its CPU dot product takes Q8_K activations (one
 * scale per 256 columns), so there the backends round x differently, the GPU more finely.  Q4_0's A is 16 (q - 8) (signed,
 * without a per-block correction), so its sums are 16 times the product's; the flush
 * scales them back (kb_i8_post, a power of two: exact).  The data side of this (where the
 * levels live, the A registers, the scaling) is layout_i8.cuh.
 *
 * Q6_K's scales are per 16 columns and its A is 4 (q - 32) (layout.cuh): a block takes two
 * mmas, B masked to one half's levels in each, whose sums its 8-bit scales merge into one in
 * int32 (kb_q6_merge); the flush scales by 1/4.  Its CPU dot product takes Q8_K activations
 * too, so here also the GPU rounds x more finely than the CPU.  (Until session 14 Q6_K took f16
 * activations: Q4_K_M's last f16 products, 22% of its bytes.)
 *
 * One token of Q4_0, Q4_1, Q4_K, Q6_K or Q8_0 (kb_chunk8_one): each block (Q4_K: sub-block) of a chunk
 * in an mma column of its own, so that the scale work runs once a chunk for all eight
 * instead of after each mma (layout_i8.cuh says how).  Session 12 measured what the scale
 * work costs by leaving it out (wrong results): Q4_0 +14%, Q8_0 +7%; this form took 7B batch
 * 1 Q4_0 618 -> 639 tok/s, Q4_1 568 -> 591, Q4_K_M 418 -> 457 and 70B Q4_0 92.0 -> 94.1.
 * Q8_0, whose chunk then held 4 blocks, measured 2% slower that way; with its decode chunk
 * 8 packets (session 13) 442 -> 461 (74% -> 77%), so every int8 type takes it at one token. */
#ifndef QD_KERNELS_CUDA_MATMUL_I8_CUH
#define QD_KERNELS_CUDA_MATMUL_I8_CUH

#include "layout_i8.cuh"

/* c += A B on the tensor cores (m16n8k32, int8, s32); A unsigned for Q4_1, Q4_K. */
template <int T> __device__ __forceinline__ void kb_imma_acc(int c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
#define KB_IMMA_ASM(AT) \
	asm volatile("mma.sync.aligned.m16n8k32.row.col.s32." AT ".s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, " \
		     "{%0,%1,%2,%3};" \
		     : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3]) \
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
	if constexpr (kb_has_min(T))
		KB_IMMA_ASM("u8");
	else
		KB_IMMA_ASM("s8");
#undef KB_IMMA_ASM
}

/* c = A B (from zero). */
template <int T> __device__ __forceinline__ void kb_imma(int c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
	c[0] = c[1] = c[2] = c[3] = 0;
	kb_imma_acc<T>(c, a, b0, b1);
}

/* The k_mmv modes (its I8 parameter): 0 f16 activations (kb_chunk); 1 int8 activations;
 * 2 int8 for exactly one token. */
__host__ __device__ constexpr bool kb_i8_one(int i8) { return i8 == 2; }

#ifndef KB_COL_CHAINS
#define KB_COL_CHAINS 4 /* accumulating mma chains in kb_chunk8_one: 4 measured +1% over 2 (Q4_0, Q4_1; session 12) */
#endif

/* Whether a one-token walk (kb_mmv_body's k_mmv, one tile a warp: RG 1, RT 1) runs as
 * k_mmv_3: three 8-warp blocks a multiprocessor instead of two, in 80 registers, which its
 * kb_chunk8_one fits with two mma chains (four spill 40-48 bytes).  Q4_0 only, whose
 * one-token k_mmv needs 88-103 registers (Q4_K's 110-116 would spill).  Its launches (a
 * step's q/k/v; the head where it is Q4_0, and the unfused products) then keep 24 warps a
 * multiprocessor: 7B Q4_0 batch 1 +1.95% (+1.1% with every product at two chains;
 * bench/NOTES-gpu.md, session 19).  Two chains there whatever KB_COL_CHAINS says. */
template <int T, int RT, int I8, int RG> __host__ __device__ constexpr bool kb_mmv_occ3()
{
	return T == QD_TYPE_Q4_0 && I8 == 2 && RG == 1 && RT == 1;
}

/* The accumulating mma chains of a walk's one-token items (kb_chunk8_one's NCH). */
template <int T, int RT, int I8, int RG> __host__ __device__ constexpr int kb_col_chains()
{
	return kb_mmv_occ3<T, RT, I8, RG>() ? 2 : KB_COL_CHAINS;
}

/* kb_mmv_body's NW for a walk of type T and activations I8 launched with WARPS warps a block
 * (KB_WIDE_NW in k_mmv_norm and k_mmv_swi, KB_MMV_WARPS in the RG 1 walks at the default
 * configuration): WARPS, so that the chunk stride, the reduction slots' places and the
 * flush's loops fold, for the one-token walks of every type but Q4_0, else 0 (read from
 * blockDim).  7B batch 1 Q4_K +1.6%, Q4_K_M +1.9%, Q8_0 +0.9%, Q4_1 +0.9%; Q4_0's walks lost
 * 0.3-0.4% that way (ptxas's schedules of its k_mmv_3 and wide kernels; bench/NOTES-gpu.md,
 * session 31, where the rule was kb_const_nw). */
template <int T, int I8> __host__ __device__ constexpr int kb_fixed_nw(int warps)
{
	return kb_i8_one(I8) && T != QD_TYPE_Q4_0 ? warps : 0;
}

/* Whether kb_chunk8_one asks for the next item's packets after its whole mma chain (before the
 * scale work) rather than each after its own blocks: Q4_K, 7B batch 1 +0.9% that way, where
 * Q4_0 measured 1.1% slower (bench/NOTES-gpu.md, session 28). */
__host__ __device__ constexpr bool kb_reload_late(int t)
{
	return t == QD_TYPE_Q4_K;
}

/* What kb_chunk8_one calls once it has made the A registers of tile rt's packet p (RL(rt, p)):
 * nothing, or the walk's request for the next item's packet into the same registers
 * (kb_mmv_step, kb_early_reload). */
struct KbNoReload {
	__device__ __forceinline__ void operator()(int, int) const {}
};

/* One token: the chunk's blocks in columns of their own (layout_i8.cuh), NCH chains of
 * accumulating mmas (block bi in chain bi % NCH; Q6_K, two mmas a block: NCH / 2 chains a
 * half) so that each waits on fewer.  S1: w holds the scales of the lane's blocks only.
 * RL: called after each packet's last block, or for every packet after the chain
 * (kb_reload_late). */
template <int T, int RT, bool S1, int NCH = KB_COL_CHAINS, class RL = KbNoReload>
__device__ __forceinline__ void kb_chunk8_one(const KbActView &xv, const KbWRegs<T> (&w)[RT], int64_t ch, int lane,
					      float (&acc)[RT][4], const RL &rl = RL())
{
	constexpr int NH = kb_i8_halves(T); /* Q6_K: an mma a half block, NCH / 2 chains a half */
	constexpr int NC = NCH / NH;
	static_assert(NC >= 1, "NCH: at least one chain a half");
	constexpr int NB = Lay<T>::CC / 32;
	const int tq = lane & 3;
	KbX1Regs x;
	kb_load_x1<T>(&xv, ch, lane, &x);
	const uint32_t zero = (uint32_t)(xv.n_tok >> 8); /* 0 (n_tok <= 8), not a constant the compiler sees */
	const uint32_t k80 = 0x80808080u | zero;
	KbX1Regs xh[NH]; /* the levels of each half (all of them when NH is 1) */
	KB_UNROLL
	for (int h = 0; h < NH; h++) {
		xh[h] = x;
		xh[h].b0 &= kb_i8_bmask(NH, h);
		xh[h].b1 &= kb_i8_bmask(NH, h);
	}
	KB_UNROLL
	for (int rt = 0; rt < RT; rt++) {
		int c[NH][NC][4];
		KB_UNROLL
		for (int h = 0; h < NH; h++)
			KB_UNROLL
			for (int k = 0; k < NC; k++)
				c[h][k][0] = c[h][k][1] = c[h][k][2] = c[h][k][3] = 0;
		KB_UNROLL
		for (int bi = 0; bi < NB; bi++) {
			uint32_t fa[4];
			kb_frag_a8<T>(&w[rt], bi, k80, fa);
			KB_UNROLL
			for (int h = 0; h < NH; h++) {
				uint32_t fb[2];
				kb_x1_b(&xh[h], lane, bi, zero, fb);
				kb_imma_acc<T>(c[h][bi % NC], fa, fb[0] | (rt == 0 && bi == 0 && h == 0 ? x.dep : 0u), fb[1]);
			}
			constexpr int BPP = NB / Lay<T>::CPK; /* blocks a packet */
			if (!kb_reload_late(T) && bi % BPP == BPP - 1)
				rl(rt, bi / BPP);
		}
		if constexpr (kb_reload_late(T))
			KB_UNROLL
			for (int p = 0; p < Lay<T>::CPK; p++)
				rl(rt, p);
		KB_UNROLL
		for (int h = 0; h < NH; h++)
			KB_UNROLL
			for (int k = 1; k < NC; k++)
				KB_UNROLL
				for (int i = 0; i < 4; i++)
					c[h][0][i] += c[h][k][i];
		if constexpr (NH == 2) {
			int cm[4];
			kb_q6_merge_one<S1>(&w[rt], tq, c[0][0], c[1][0], cm);
			kb_post8_one<T, S1>(&w[rt], &x, tq, cm, acc[rt]);
		} else {
			kb_post8_one<T, S1>(&w[rt], &x, tq, c[0][0], acc[rt]);
		}
	}
}

/* Before a block's flush: with kb_chunk8_one a row's sum is spread over its four tq lanes
 * (elements 0 and 2); the flush reads token 0 from lane tq = 0 (the other lanes' elements
 * would be tokens 2, 4, 6, which the flush skips; zeroed all the same). */
template <int T, int I8, int RT> __device__ __forceinline__ void kb_fold8(float (&acc)[RT][4], int lane)
{
	if constexpr (kb_i8_one(I8)) {
		KB_UNROLL
		for (int rt = 0; rt < RT; rt++)
			KB_UNROLL
			for (int i = 0; i < 4; i += 2) {
				float v = acc[rt][i];
				v += __shfl_xor_sync(0xffffffffu, v, 1);
				v += __shfl_xor_sync(0xffffffffu, v, 2);
				acc[rt][i] = (lane & 3) == 0 ? v : 0.f;
			}
	}
	(void)acc;
	(void)lane;
}

/* The products of one chunk of the block's RT tiles, into acc (kb_chunk's int8 form); ONE:
 * exactly one token (kb_chunk8_one's column form). */
template <int T, int RT, bool ONE, bool S1 = false, int NCH = KB_COL_CHAINS, class RL = KbNoReload>
__device__ __forceinline__ void kb_chunk8(const KbActView &xv, const KbWRegs<T> (&w)[RT], int64_t ch, int lane,
					  float (&acc)[RT][4], const RL &rl = RL())
{
	if constexpr (ONE) {
		kb_chunk8_one<T, RT, S1, NCH, RL>(xv, w, ch, lane, acc, rl);
		return;
	}
	(void)rl;
	constexpr int NB = Lay<T>::CC / 32;
	KbX8Regs<T> x;
	kb_load_x8<T>(&xv, ch, lane, &x);
	/* 0x80808080, but not a constant the compiler sees (n_tok <= 8): kept in a register */
	const uint32_t k80 = 0x80808080u | (uint32_t)(xv.n_tok >> 8);
	KB_UNROLL
	for (int rt = 0; rt < RT; rt++) {
		KbPost8<T> st;
		kb_post8_begin<T>(&w[rt], &st);
		KB_UNROLL
		for (int bi = 0; bi < NB; bi++) {
			uint32_t fa[4];
			kb_frag_a8<T>(&w[rt], bi, k80, fa);
			const int q = bi / 2, k = 2 * (bi % 2);
			constexpr int NH = kb_i8_halves(T);
			int c[NH][4];
			KB_UNROLL
			for (int h = 0; h < NH; h++) {
				const uint32_t m = kb_i8_bmask(NH, h);
				kb_imma<T>(c[h], fa, (x.b[q][k] & m) | (rt == 0 && bi == 0 ? x.dep : 0u), x.b[q][k + 1] & m);
			}
			if constexpr (NH == 2) {
				int cm[4];
				kb_q6_merge(&w[rt], bi, c[0], c[1], cm);
				kb_post8<T>(&w[rt], &x, bi, cm, acc[rt], &st);
			} else {
				kb_post8<T>(&w[rt], &x, bi, c[0], acc[rt], &st);
			}
		}
		kb_post8_end<T>(&w[rt], &st, acc[rt]);
	}
}

#endif
