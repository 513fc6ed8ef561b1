/* kernels/cuda/layout_i8.cuh: the int8 side of the decode products' layout (Q4_0, Q4_1,
 * Q4_K, Q6_K, Q8_0 weights with int8 activations; the kernels are in matmul_i8.cuh): where the int8
 * activation levels and scales live, how a repacked weight word becomes int8 A registers,
 * and the per-block scaling.  __host__ __device__ like layout.cuh, so
 * tests/gpu/check-cuda-layout.cu runs the same functions on the host with an emulated
 * m16n8k32. */
#ifndef QD_KERNELS_CUDA_LAYOUT_I8_CUH
#define QD_KERNELS_CUDA_LAYOUT_I8_CUH

#include "layout.cuh"

/* Types whose decode products can take int8 activations (matmul_i8.cuh). */
__host__ __device__ constexpr bool kb_i8_type(int t)
{
	return t == QD_TYPE_Q4_0 || t == QD_TYPE_Q4_1 || t == QD_TYPE_Q4_K || t == QD_TYPE_Q6_K || t == QD_TYPE_Q8_0;
}
template <int T> struct KbI8 {
	static constexpr bool ok = kb_i8_type(T);
};

/* The m16n8k32 a 32-column block takes: one, but two for Q6_K, whose scales are per 16
 * columns: mma h with B masked to the levels of half h (kb_i8_bmask), the two sums then
 * merged with their scales (kb_q6_merge, kb_q6_merge_one). */
__host__ __device__ constexpr int kb_i8_halves(int t)
{
	return t == QD_TYPE_Q6_K ? 2 : 1;
}
/* The B register bytes of half h of a block, out of NH halves: kb_act8_pos puts columns
 * 0-15 of a block in the even bytes. */
KB_HD uint32_t kb_i8_bmask(int nh, int h)
{
	return nh == 1 ? 0xffffffffu : h == 0 ? 0x00ff00ffu : 0xff00ff00u;
}

/* The int8 activations (decode products with int8 mma, matmul_i8.cuh).  Within each
 * 64-column group the 16 bytes of lane tq are, for blocks b = 0, 1 of the group, the two B
 * registers of block b's m16n8k32: k = 4tq..4tq+3, then k = 16 + 4tq..+3.  The mma's k
 * runs over the block's columns in the order of a Q4 word's nibbles (layout.cuh: low
 * nibbles, then high ones), so that one word is two A registers without a byte permute:
 * k = 4tq + j is column 4tq + j/2 + 16 (j & 1), k = 16 + 4tq + j column 4tq + 2 + j/2 +
 * 16 (j & 1). */
KB_HD int64_t kb_act8_pos(int64_t c)
{
	const int r = (int)(c & 31), b = (int)((c >> 5) & 1), r4 = r & 3;
	return (c & ~(int64_t)63) + 16 * ((r >> 2) & 3) + 8 * b + 4 * (r4 >> 1) + 2 * (r4 & 1) + (r >> 4);
}

/* Index of the scale of 32-column block blk of token t: four consecutive blocks of one
 * token are one 16-byte vector. */
KB_HD int64_t kb_act8_d(int64_t blk, int t)
{
	return ((blk >> 2) * KB_MAX_TOK + t) * 4 + (blk & 3);
}

/* The int8 rounding of one 32-column block, exactly the CPU backend's Q8_0 / Q8_1
 * (kernels/cpu/quant.c): from the block's largest |x|, the scale d = amax / 127 and its
 * reciprocal; a level round(x / d) half away from zero, as x times that reciprocal; d kept
 * as f16; Q8_1's s = f16(sum of levels x d), d before its rounding (here held to the f16
 * range: the CPU's is infinite beyond it).  tests/gpu/check-cuda-layout.cu compares these
 * with the CPU's quantizer. */
KB_HD float kb_f16_round(float x)
{
#ifdef __CUDA_ARCH__
	return __half2float(__float2half_rn(x));
#else
	return qd_f16_to_f32(qd_f32_to_f16(x));
#endif
}
KB_HD float kb_q8_scale(float amax, float *ret_id)
{
	const float d = amax / 127.0f;
	*ret_id = d != 0.f ? 1.0f / d : 0.f;
	return d;
}
KB_HD int kb_q8_level(float x, float id)
{
	return (int)roundf(x * id);
}
KB_HD float kb_q8_sum_scale(int qsum, float d)
{
	return kb_f16_round(fminf(fmaxf((float)qsum * d, -65504.f), 65504.f));
}

/* Int8 A registers (m16n8k32) of one row from its Q4 word (layout.cuh: one row, one 32-column
 * block): lo = k 4tq..4tq+3 (the word's low nibbles), hi = k 16 + 4tq..+3 (the high ones),
 * in kb_act8_pos's k order; 3 instructions (with session 7's word of two rows, whose bytes
 * had to be regathered by two PRMT, 5).  Signed (Q4_0): 16 (q - 8), the nibble in the
 * byte's high half with its top bit flipped by k80 = 0x80808080 (a value the caller holds
 * in a register, so each byte op is one LOP3 with an immediate); unsigned (Q4_1): q. */
template <bool SIGNED> KB_HD void kb_dec_q4_i8(uint32_t w, uint32_t k80, uint32_t *lo, uint32_t *hi)
{
	if (SIGNED) {
		*lo = kb_andxor(w << 4, 0xf0f0f0f0u, k80);
		*hi = kb_andxor(w, 0xf0f0f0f0u, k80);
	} else {
		*lo = w & 0x0f0f0f0fu;
		*hi = (w >> 4) & 0x0f0f0f0fu;
	}
}

/* Int8 A registers of the m16n8k32 of 32-column block bi (0..CC/32-1) of the chunk, its
 * k the block's natural column order: Q4_0 16 (q - 8), Q4_1 and Q4_K q, Q6_K 4 (q - 32),
 * Q8_0 q.  k80: 0x80808080. */
template <int T> KB_HD void kb_frag_a8(const KbWRegs<T> *w, int bi, uint32_t k80, uint32_t a[4])
{
	static_assert(KbI8<T>::ok, "an int8 decode type");
	if constexpr (T == QD_TYPE_Q8_0) {
		/* words (g c0, g c1, g+8 c0, g+8 c1), (the same for c2, c3), then the next 16
		 * columns; gathered into kb_act8_pos's k order: (c0, 16 + c0, c1, 16 + c1) and
		 * (c2, 16 + c2, c3, 16 + c3) */
		const uint4 v = w->q[bi][0];
		a[0] = kb_prmt(v.x, v.z, 0x5140);
		a[1] = kb_prmt(v.x, v.z, 0x7362);
		a[2] = kb_prmt(v.y, v.w, 0x5140);
		a[3] = kb_prmt(v.y, v.w, 0x7362);
	} else if constexpr (T == QD_TYPE_Q6_K) {
		/* block bi % 4 of packet bi / 4: its X, Y, Z words (layout.cuh) */
		const int p = bi / 4, k = bi % 4;
		kb_q6_dec8<false>(w->q[p], k, a);
		(void)k80;
	} else {
		/* block bi's words: row g, then row g+8 */
		const uint4 v = w->q[bi / 2][0];
		kb_dec_q4_i8<T == QD_TYPE_Q4_0>(bi % 2 == 0 ? v.x : v.z, k80, &a[0], &a[2]);
		kb_dec_q4_i8<T == QD_TYPE_Q4_0>(bi % 2 == 0 ? v.y : v.w, k80, &a[1], &a[3]);
	}
}

/* Activation registers of one chunk: token g's levels (per 64-column group: block 0's two
 * B registers, then block 1's), the block scales of tokens 2tq and 2tq + 1 (four blocks a
 * vector), and for Q4_1 and Q4_K their scaled level sums (xe) the same way. */
template <int T> struct KbX8Regs {
	typedef Lay<T> L;
	static constexpr int ND = (L::CC / 32 + 3) / 4;
	uint32_t dep; /* 0, computed from every load (as KbXRegs::dep) */
	uint32_t b[L::NG][4];
	float4 d[2][ND];
	float4 e[kb_has_min(T) ? 2 : 1][kb_has_min(T) ? ND : 1];
};

template <int T> KB_HD void kb_load_x8(const KbActView *a, int64_t ch, int lane, KbX8Regs<T> *x)
{
	typedef Lay<T> L;
	const int g = lane >> 2, tq = lane & 3;
	const int64_t col0 = ch * L::CC; /* a multiple of 256 */
	uint32_t dep = 0;
	KB_UNROLL
	for (int q = 0; q < L::NG; q++) {
		const uint4 v = kb_ld_x16(a->xq + g * a->cap + col0 + 64 * q + 16 * tq, g < a->n_tok);
		dep ^= v.x;
		x->b[q][0] = v.x;
		x->b[q][1] = v.y;
		x->b[q][2] = v.z;
		x->b[q][3] = v.w;
	}
	KB_UNROLL
	for (int j = 0; j < 2; j++) {
		const int tk = 2 * tq + j;
		KB_UNROLL
		for (int k = 0; k < KbX8Regs<T>::ND; k++) {
			uint4 e = { 0, 0, 0, 0 };
			const uint4 u = kb_ld_x16(a->xd + kb_act8_d(col0 / 32 + 4 * k, tk), tk < a->n_tok);
			dep ^= u.x;
			if constexpr (kb_has_min(T)) {
				e = kb_ld_x16(a->xe + kb_act8_d(col0 / 32 + 4 * k, tk), tk < a->n_tok);
				dep ^= e.x;
			}
			memcpy(&x->d[j][k], &u, 16);
			if constexpr (kb_has_min(T))
				memcpy(&x->e[j][k], &e, 16);
		}
	}
	x->dep = dep & (uint32_t)(a->n_tok >> 8); /* see kb_load_x */
}

/* Q4_K's per-chunk state (a chunk is one superblock, its 8 blocks the sub-blocks): the
 * 6-bit scales and mins of rows g and g+8, four to a register (byte j of sc[r][0] and
 * mn[r][0] is sub-block j, of sc[r][1] and mn[r][1] sub-block 4 + j), unpacked once a
 * chunk with byte-parallel masks; and the chunk's sums before d and dmin: ts = sum over
 * the sub-blocks of sc c d_x, tm = sum of mn s_x (per C element).  Q6_K's: the chunk's
 * sums of c d_x (c merged by kb_q6_merge) before d.  Empty for the others. */
template <int T> struct KbPost8 {
};
template <> struct KbPost8<QD_TYPE_Q4_K> {
	uint32_t sc[2][2], mn[2][2];
	float ts[4], tm[4];
};
template <> struct KbPost8<QD_TYPE_Q6_K> { /* sums of c d_x, before d */
	float ts[4];
};

/* Q6_K: c0 sc_k + c1 sc_(k+1), the two halves' sums of a block merged with their 8-bit
 * scales, bytes k and k + 1 of V (four of a row's scales). */
KB_HD int kb_q6_mix(int c0, int c1, uint32_t v, int k)
{
	return c0 * (int)(int8_t)(uint8_t)(v >> (8 * k)) + c1 * (int)(int8_t)(uint8_t)(v >> (8 * k + 8));
}

/* Q6_K, 2-8 tokens: block bi's half sums c0 (columns 0-15) and c1 merged with the halves'
 * scales (sub-blocks 2 bi, 2 bi + 1), per C element (c[0], c[1] row g; c[2], c[3] row g +
 * 8); exact in int32 (|c| <= 16 * 128 * 127, |sc| <= 128; the f32 conversion after may
 * round above 2^24). */
KB_HD void kb_q6_merge(const KbWRegs<QD_TYPE_Q6_K> *w, int bi, const int c0[4], const int c1[4], int c[4])
{
	/* packet bi / 4: row g's scales in s.x, s.y, row g + 8's in s.z, s.w; sub-blocks 2 (bi % 4), + 1 */
	const uint4 s = w->s[bi / 4];
	const int k = 2 * (bi % 4);
	const uint32_t v0 = k < 4 ? s.x : s.y, v1 = k < 4 ? s.z : s.w;
	KB_UNROLL
	for (int i = 0; i < 4; i++)
		c[i] = kb_q6_mix(c0[i], c1[i], i >> 1 ? v1 : v0, k % 4);
}

/* The GGUF Q4_K header's 12 scale bytes (h.y, h.z, h.w) as kb_q4k_scale reads them, for
 * sub-blocks 4 q..4 q + 3 (byte j of *sc and *mn is sub-block 4 q + j), ... */
KB_HD void kb_q4k_word(uint4 h, int q, uint32_t *sc, uint32_t *mn)
{
	*sc = q ? (h.w & 0x0f0f0f0fu) | ((h.y >> 2) & 0x30303030u) : h.y & 0x3f3f3f3fu;
	*mn = q ? ((h.w >> 4) & 0x0f0f0f0fu) | ((h.z >> 2) & 0x30303030u) : h.z & 0x3f3f3f3fu;
}
/* ... and all eight sub-blocks at once. */
KB_HD void kb_q4k_unpack(uint4 h, uint32_t sc[2], uint32_t mn[2])
{
	kb_q4k_word(h, 0, &sc[0], &mn[0]);
	kb_q4k_word(h, 1, &sc[1], &mn[1]);
}

/* Byte k of v, zero-extended (one PRMT). */
KB_HD int kb_byte(uint32_t v, int k)
{
	return (int)kb_prmt(v, 0u, 0x4440u | (uint32_t)k);
}

template <int T> KB_HD void kb_post8_begin(const KbWRegs<T> *w, KbPost8<T> *st)
{
	if constexpr (T == QD_TYPE_Q4_K) {
		kb_q4k_unpack(w->d[0], st->sc[0], st->mn[0]);
		kb_q4k_unpack(w->d[1], st->sc[1], st->mn[1]);
		KB_UNROLL
		for (int i = 0; i < 4; i++)
			st->ts[i] = st->tm[i] = 0.f;
	} else if constexpr (T == QD_TYPE_Q6_K) {
		KB_UNROLL
		for (int i = 0; i < 4; i++)
			st->ts[i] = 0.f;
	}
	(void)w;
	(void)st;
}

/* acc += the scaled sums of block bi (C layout: c[0], c[1] row g tokens 2tq, 2tq + 1;
 * c[2], c[3] row g + 8): the CPU backend's dot products (quant.c) block by block,
 * d_w d_x sum(q_w q_x), + m_w s_x for Q4_1.  Q4_K's go to st (d_w = d sc, m_w = -dmin mn:
 * sc c is an exact integer, below 2^22) and reach acc in kb_post8_end, as do Q6_K's (c
 * already merged over the block's halves with their scales, kb_q6_merge).  (One token
 * takes kb_post8_one, a column a block.) */
template <int T>
KB_HD void kb_post8(const KbWRegs<T> *w, const KbX8Regs<T> *x, int bi, const int c[4], float acc[4],
		    KbPost8<T> *st)
{
	const float xa = kb_v4at(x->d[0][bi / 4], bi % 4);
	const float xb = kb_v4at(x->d[1][bi / 4], bi % 4);
	if constexpr (T == QD_TYPE_Q4_K) {
		const int h = bi / 4, k = bi % 4;
		const int s0 = kb_byte(st->sc[0][h], k), s1 = kb_byte(st->sc[1][h], k);
		const float n0 = (float)kb_byte(st->mn[0][h], k), n1 = (float)kb_byte(st->mn[1][h], k);
		const float sa = kb_v4at(x->e[0][bi / 4], bi % 4);
		st->ts[0] = fmaf((float)(c[0] * s0), xa, st->ts[0]);
		st->ts[2] = fmaf((float)(c[2] * s1), xa, st->ts[2]);
		st->tm[0] = fmaf(n0, sa, st->tm[0]);
		st->tm[2] = fmaf(n1, sa, st->tm[2]);
		const float sb = kb_v4at(x->e[1][bi / 4], bi % 4);
		st->ts[1] = fmaf((float)(c[1] * s0), xb, st->ts[1]);
		st->ts[3] = fmaf((float)(c[3] * s1), xb, st->ts[3]);
		st->tm[1] = fmaf(n0, sb, st->tm[1]);
		st->tm[3] = fmaf(n1, sb, st->tm[3]);
		(void)w;
		(void)acc;
	} else if constexpr (T == QD_TYPE_Q6_K) { /* c: kb_q6_merge's; d at the chunk's end */
		st->ts[0] = fmaf((float)c[0], xa, st->ts[0]);
		st->ts[2] = fmaf((float)c[2], xa, st->ts[2]);
		st->ts[1] = fmaf((float)c[1], xb, st->ts[1]);
		st->ts[3] = fmaf((float)c[3], xb, st->ts[3]);
		(void)w;
		(void)acc;
	} else {
		uint32_t dv;
		uint4 s = { 0, 0, 0, 0 };
		if constexpr (T == QD_TYPE_Q8_0) {
			dv = w->s[bi].x;
		} else {
			s = w->s[bi / 2];
			dv = bi % 2 == 0 ? s.x : s.y;
		}
		const float d0 = kb_f16lo(dv), d1 = kb_f16hi(dv);
		acc[0] = fmaf(d0 * xa, (float)c[0], acc[0]);
		acc[2] = fmaf(d1 * xa, (float)c[2], acc[2]);
		acc[1] = fmaf(d0 * xb, (float)c[1], acc[1]);
		acc[3] = fmaf(d1 * xb, (float)c[3], acc[3]);
		if constexpr (T == QD_TYPE_Q4_1) { /* + m_w s: the minimum times the rounded x's block sum */
			const uint32_t mv = bi % 2 == 0 ? s.z : s.w;
			const float m0 = kb_f16lo(mv), m1 = kb_f16hi(mv);
			const float sa = kb_v4at(x->e[0][bi / 4], bi % 4);
			acc[0] = fmaf(m0, sa, acc[0]);
			acc[2] = fmaf(m1, sa, acc[2]);
			const float sb = kb_v4at(x->e[1][bi / 4], bi % 4);
			acc[1] = fmaf(m0, sb, acc[1]);
			acc[3] = fmaf(m1, sb, acc[3]);
		}
		(void)st;
	}
}

/* After a chunk's blocks: Q4_K's acc += d ts - dmin tm (rows g, g+8: headers d[0], d[1]);
 * Q6_K's acc += d ts (f16 d of rows g, g + 8 in d[0].x). */
template <int T> KB_HD void kb_post8_end(const KbWRegs<T> *w, const KbPost8<T> *st, float acc[4])
{
	if constexpr (T == QD_TYPE_Q6_K) {
		const float d0 = kb_f16lo(w->d[0].x), d1 = kb_f16hi(w->d[0].x);
		acc[0] = fmaf(d0, st->ts[0], acc[0]);
		acc[1] = fmaf(d0, st->ts[1], acc[1]);
		acc[2] = fmaf(d1, st->ts[2], acc[2]);
		acc[3] = fmaf(d1, st->ts[3], acc[3]);
	}
	if constexpr (T == QD_TYPE_Q4_K) {
		const float d0 = kb_f16lo(w->d[0].x), m0 = kb_f16hi(w->d[0].x);
		const float d1 = kb_f16lo(w->d[1].x), m1 = kb_f16hi(w->d[1].x);
		acc[0] = fmaf(-m0, st->tm[0], fmaf(d0, st->ts[0], acc[0]));
		acc[2] = fmaf(-m1, st->tm[2], fmaf(d1, st->ts[2], acc[2]));
		acc[1] = fmaf(-m0, st->tm[1], fmaf(d0, st->ts[1], acc[1]));
		acc[3] = fmaf(-m1, st->tm[3], fmaf(d1, st->ts[3], acc[3]));
	}
	(void)w;
	(void)st;
	(void)acc;
}

/* ---- one token, a column a block (kb_chunk8_one in matmul_i8.cuh; every int8 type) ----
 *
 * With one token only column 0 of an m16n8k32's eight is data, so each block's two sums a
 * lane (rows g, g+8) sit in the 8 lanes tq = 0, and the scale work after every mma (8
 * instructions) runs in all 32 lanes for those 16 values.  Instead, block bi of the chunk
 * takes column bi: lane group g holds block g's activations as its B registers in mma g
 * and zeros in the others, and the chunk's mmas accumulate into one C.  After the chunk,
 * lane (g, tq) holds rows g and g+8 of blocks 2tq (C elements 0, 2) and 2tq + 1 (1, 3),
 * and one round of scale work covers all of them: a quarter of the instructions, and each
 * lane needs the scales of its own two blocks only.  A row's sum is then spread over its
 * four tq lanes, which kb_fold8 adds up before the block's flush.  A chunk has 8 blocks
 * (Q4_K: sub-blocks).  Q8_0's chunk had 4 until session 13, so half its lanes would have
 * idled through the scale work, and that measured 2% slower (bench/NOTES-gpu.md, session
 * 12); with its decode chunk 8 packets (256 columns; the GEMM keeps chunks of 4,
 * KB_TYPE_Q8_0_F16 in layout.cuh) the column form took 7B batch 1 442 -> 454 tok/s (461
 * with k_mmv_2's register cap, matmul.cu).  Its f16 products (2-8 tokens, and one token in models under 1 GiB)
 * would hold twice the weights an item in registers (80 -> 158; SmolLM2 Q8_0 -10%), so they
 * walk items of 4 packets (KB_TYPE_Q8_0_F16, layout.cuh) but for 2-8 tokens of long rows on
 * sm_90, which take the 8-packet chunks through the bulk-copy ring (matmul.cu's launch_f16;
 * bench/NOTES-gpu.md, session 13). */

/* Whether the one-token products of k_mmv mode I8 (matmul_i8.cuh: 2 is one token) load
 * only the scales of the lane's blocks (kb_load_w's S1). */
__host__ __device__ constexpr bool kb_i8_s1(int t, int i8)
{
	return kb_i8_type(t) && i8 == 2;
}

/* The lane's activations for one chunk: block g's levels (its two B registers), and the
 * scales (and for Q4_1 and Q4_K the level sums) of blocks 2tq and 2tq + 1, token 0. */
struct KbX1Regs {
	uint32_t dep; /* 0, computed from every load (as KbXRegs::dep) */
	uint32_t b0, b1;
	float2 d, e;
};

template <int T> KB_HD void kb_load_x1(const KbActView *a, int64_t ch, int lane, KbX1Regs *x)
{
	static_assert(KbI8<T>::ok && Lay<T>::CC == 256, "eight blocks a chunk: one a lane group");
	const int g = lane >> 2, tq = lane & 3;
	const int64_t col0 = ch * Lay<T>::CC, blk = col0 / 32 + 2 * tq;
	/* block g of the chunk: 64-column group g / 2, bytes 16 tq + 8 (g & 1) of it */
	const uint2 v = kb_ld_x8(a->xq + col0 + 64 * (g >> 1) + 16 * tq + 8 * (g & 1), true);
	/* blocks 2tq, 2tq + 1 are neighbours in kb_act8_d's vectors of four */
	const uint2 u = kb_ld_x8(a->xd + kb_act8_d(blk, 0), true);
	uint2 e = { 0, 0 };
	if constexpr (kb_has_min(T))
		e = kb_ld_x8(a->xe + kb_act8_d(blk, 0), true);
	x->b0 = v.x;
	x->b1 = v.y;
	memcpy(&x->d, &u, 8);
	memcpy(&x->e, &e, 8);
	x->dep = (v.x ^ u.x ^ e.x) & (uint32_t)(a->n_tok >> 8); /* see kb_load_x */
}

/* The B registers lane group g passes in mma bi of a chunk: block g's levels when bi == g,
 * else zeros (ZERO: 0, held in a register). */
KB_HD void kb_x1_b(const KbX1Regs *x, int lane, int bi, uint32_t zero, uint32_t b[2])
{
	const bool mine = lane >> 2 == bi;
	b[0] = mine ? x->b0 : zero;
	b[1] = mine ? x->b1 : zero;
}

/* The scales of lane tq's block 2tq + j: Q4_0 and Q4_1 f16 d (row g, row g + 8) and
 * Q4_1's m, from packet tq (blocks 2tq, 2tq + 1); Q8_0's d from packet 2tq + j.  S1: w
 * holds only those packets (kb_load_w<T, true>), else all (selects). */
template <int T, bool S1> KB_HD void kb_one_scales(const KbWRegs<T> *w, int tq, int j, uint32_t *dv, uint32_t *mv)
{
	if constexpr (T == QD_TYPE_Q8_0) {
		if (S1) {
			*dv = w->s[j].x;
		} else {
			const int p = 2 * tq + j;
			uint32_t v = w->s[0].x;
			KB_UNROLL
			for (int k = 1; k < Lay<T>::CPK; k++)
				v = p == k ? w->s[k].x : v;
			*dv = v;
		}
		*mv = 0;
	} else {
		const uint4 s = S1 || tq == 0 ? w->s[0] : tq == 1 ? w->s[1] : tq == 2 ? w->s[2] : w->s[3];
		*dv = j == 0 ? s.x : s.y;
		*mv = j == 0 ? s.z : s.w;
	}
}

/* Q6_K, one token: the lane's half sums c0, c1 (C elements j, row g, and 2 + j, row g + 8,
 * of block 2tq + j) merged with the halves' scales: sub-blocks 4tq + 2j + h, packet tq / 2
 * (S1: the only one w holds), sub-block 4 (tq & 1) + 2j + h in it.  Exact, as kb_q6_merge. */
template <bool S1>
KB_HD void kb_q6_merge_one(const KbWRegs<QD_TYPE_Q6_K> *w, int tq, const int c0[4], const int c1[4], int c[4])
{
	const uint4 s = S1 || tq < 2 ? w->s[0] : w->s[1];
	/* the lane's 4 bytes of each row's scales: selected words, then constant bytes */
	const uint32_t v0 = tq & 1 ? s.y : s.x, v1 = tq & 1 ? s.w : s.z;
	KB_UNROLL
	for (int i = 0; i < 4; i++)
		c[i] = kb_q6_mix(c0[i], c1[i], i >> 1 ? v1 : v0, 2 * (i & 1));
}

/* kb_post8_one for Q4_0, Q4_1 and Q8_0: a scale d (and Q4_1's minimum m) a block. */
template <int T, bool S1>
KB_HD void kb_post8_one_blocks(const KbWRegs<T> *w, const KbX1Regs *x, int tq, const int c[4], float acc[4])
{
	KB_UNROLL
	for (int j = 0; j < 2; j++) {
		uint32_t dv, mv;
		kb_one_scales<T, S1>(w, tq, j, &dv, &mv);
		const float xa = j == 0 ? x->d.x : x->d.y;
		const float d0 = kb_f16lo(dv), d1 = kb_f16hi(dv);
		acc[0] = fmaf(d0 * xa, (float)c[j], acc[0]);
		acc[2] = fmaf(d1 * xa, (float)c[2 + j], acc[2]);
		if constexpr (T == QD_TYPE_Q4_1) {
			const float sa = j == 0 ? x->e.x : x->e.y;
			acc[0] = fmaf(kb_f16lo(mv), sa, acc[0]);
			acc[2] = fmaf(kb_f16hi(mv), sa, acc[2]);
		}
		(void)mv;
	}
}

/* acc += the scaled sums of the lane's blocks 2tq + j (C elements j, row g, and 2 + j, row
 * g + 8): kb_post8's arithmetic, block by block the same terms.  S1: w holds only the
 * lane's scales (kb_load_w<T, true>), else all (selects: kb_one_scales). */
template <int T, bool S1> KB_HD void kb_post8_one(const KbWRegs<T> *w, const KbX1Regs *x, int tq, const int c[4],
						 float acc[4])
{
	static_assert(Lay<T>::CC == 256, "a chunk of eight blocks: two a lane");
	if constexpr (T == QD_TYPE_Q4_K) {
		/* sub-blocks 2tq, 2tq + 1: bytes 2 (tq & 1) + j of the scale and minimum words tq / 2
		 * (kb_q4k_word: only the lane's word unpacked, not both); kb_post8's ts and tm for
		 * just those two, then kb_post8_end's d and dmin, so each lane adds its share of the
		 * superblock */
		uint32_t sc[2], mn[2];
		kb_q4k_word(w->d[0], tq >> 1, &sc[0], &mn[0]);
		kb_q4k_word(w->d[1], tq >> 1, &sc[1], &mn[1]);
		float ts[2] = { 0.f, 0.f }, tm[2] = { 0.f, 0.f };
		KB_UNROLL
		for (int j = 0; j < 2; j++) {
			const int k = 2 * (tq & 1) + j;
			const float xa = j == 0 ? x->d.x : x->d.y, sa = j == 0 ? x->e.x : x->e.y;
			KB_UNROLL
			for (int r = 0; r < 2; r++) {
				ts[r] = fmaf((float)(c[2 * r + j] * kb_byte(sc[r], k)), xa, ts[r]);
				tm[r] = fmaf((float)kb_byte(mn[r], k), sa, tm[r]);
			}
		}
		KB_UNROLL
		for (int r = 0; r < 2; r++) {
			const uint32_t dm = w->d[r].x; /* f16 d, f16 dmin */
			acc[2 * r] = fmaf(-kb_f16hi(dm), tm[r], fmaf(kb_f16lo(dm), ts[r], acc[2 * r]));
		}
	} else if constexpr (T == QD_TYPE_Q6_K) { /* c: kb_q6_merge_one's; d a row a chunk */
		KB_UNROLL
		for (int r = 0; r < 2; r++) {
			const float d = r == 0 ? kb_f16lo(w->d[0].x) : kb_f16hi(w->d[0].x);
			acc[2 * r] = fmaf(d, fmaf((float)c[2 * r + 1], x->d.y, (float)c[2 * r] * x->d.x), acc[2 * r]);
		}
		(void)tq;
	} else {
		kb_post8_one_blocks<T, S1>(w, x, tq, c, acc);
	}
}

/* What the flush multiplies a product's sums by: Q4_0's int8 A is 16 (q - 8), Q6_K's 4 (q - 32). */
template <int T, int I8> KB_HD constexpr float kb_i8_post()
{
	return I8 && T == QD_TYPE_Q4_0 ? 0.0625f : I8 && T == QD_TYPE_Q6_K ? 0.25f : 1.0f;
}

#endif
