/* kernels/cuda/matmul_i8.cuh: the decode products' int8 arithmetic (Q4_0, Q4_1, Q4_K, Q8_0).
 * Included only by matmul.cu, after KbMmvArgs; k_mmv calls kb_chunk8 instead of kb_chunk
 * when its I8 parameter says so.
 *
 * Why: the f16 path (kb_chunk) is bound by instruction issue, not by memory (bench/NOTES.md,
 * sessions 2-5).  Each Q4 word becomes four f16x2 A registers in 9 integer and f16
 * instructions, and a 32-column block takes two m16n8k16 and six more for its scale.  With
 * the activations as int8 levels and a scale per 32-column block (the CPU backend's Q8_0
 * activations, kb_act_put), a block is one m16n8k32 whose A registers are 3 instructions a
 * Q4 word (kb_dec_q4_i8; a word is one row of one block) or 4 PRMT for a Q8_0 block, its
 * activation registers half as many, and
 * at one token the scale work of the odd token columns is skipped (ONE).
 *
 * Arithmetic: c = sum over the block of A q_x in int32 (exact), then acc += (d_w d_x) c,
 * plus m_w s_x for Q4_1 (s_x = d_x sum(q_x) rounded to f16, Q8_1's s): what the CPU
 * backend computes, so both backends round the same activations the same way.  Q4_K
 * the same per 32-column sub-block, d_w = d sc and m_w = -dmin mn (kb_post8_begin / _end
 * apply d and dmin once a superblock); its CPU dot product takes Q8_K activations (one
 * scale per 256 columns), so there the backends round x differently, the GPU more finely.  Q4_0's A is 16 (q - 8) (signed,
 * without a per-block correction), so its sums are 16 times the product's; the flush
 * scales them back (kb_i8_post, a power of two: exact).  The data side of this (where the
 * levels live, the A registers, the scaling) is layout_i8.cuh. */
#ifndef QD_KERNELS_CUDA_MATMUL_I8_CUH
#define QD_KERNELS_CUDA_MATMUL_I8_CUH

#include "layout_i8.cuh"

/* c = A B on the tensor cores (m16n8k32, int8, s32 from zero); A unsigned for Q4_1, Q4_K. */
template <int T> __device__ __forceinline__ void kb_imma(int c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
	if constexpr (kb_has_min(T))
		asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};"
		    : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
		    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
	else
		asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};"
		    : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
		    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
}

/* The k_mmv modes (its I8 parameter): 0 f16 activations (kb_chunk); 1 int8 activations;
 * 2 int8 for exactly one token. */
__host__ __device__ constexpr bool kb_i8_one(int i8) { return i8 == 2; }

/* The products of one chunk of the block's RT tiles, into acc (kb_chunk's int8 form). */
template <int T, int RT, bool ONE>
__device__ __forceinline__ void kb_chunk8(const KbActView &xv, const KbWRegs<T> (&w)[RT], int64_t ch, int lane,
					  float (&acc)[RT][4])
{
	constexpr int NB = Lay<T>::CC / 32;
	KbX8Regs<T> x;
	kb_load_x8<T, ONE>(&xv, ch, lane, &x);
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
			int c[4];
			kb_imma<T>(c, fa, x.b[q][k] | (rt == 0 && bi == 0 ? x.dep : 0u), x.b[q][k + 1]);
			kb_post8<T, ONE>(&w[rt], &x, bi, c, acc[rt], &st);
		}
		kb_post8_end<T, ONE>(&w[rt], &st, acc[rt]);
	}
}

#endif
