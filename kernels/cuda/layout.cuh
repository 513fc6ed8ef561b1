/* kernels/cuda/layout.cuh: the GPU weight layout, shared by the repack kernels
 * (repack.cu), the matrix-vector kernels (matmul.cu) and host-side checks.  Everything
 * here is __host__ __device__ so the packing and decoding can be verified without a GPU.
 *
 * Why a layout of our own: the decode kernels multiply with tensor-core mma.sync
 * m16n8k16 (f16 or bf16 operands, f32 accumulators), weights as the 16x16 A operand and
 * up to 8 tokens as the 16x8 B operand.  The repacked layout lets each lane fetch its A
 * fragments for several mmas with one coalesced 16-byte load, with no shuffles.
 *
 * Tiles and packets.  Rows are grouped in tiles of 16 (padded to KB_ROW_PAD with zero
 * weights).  Columns are split into packets of Lay<T>::P columns; one packet of one tile
 * is 32 lanes x 16 bytes per "q vector" (Lay<T>::QV of them), lane L = 4g + tq holding
 * data of rows g and g+8 of the tile.  A chunk (Lay<T>::CPK packets, 64..256 columns)
 * is the unit of work of one warp; columns are padded to a chunk multiple with zeros.
 *
 *   q region: [tile][packet][QV][lane][16 B]       quants (or f16/bf16 values)
 *   s region: [tile][packet][g][SB bytes]          per-packet scales for rows g, g+8
 *   d region: [tile][superblock][g][DB bytes]      per-256-column data (K types)
 *
 * Column order.  mma i of a packet covers columns 16i..16i+15 of it; lane tq holds the
 * four consecutive columns 4tq..4tq+3 of them (the mma's k index is permuted, which is
 * harmless because the activations use the same permutation).  Within a 16-bit pair
 * (an f16x2 register) the lower column is in the low half.
 *
 *   Q4 word (Q4_0, Q4_1, Q4_K): one per row and 32-column block (mmas 2j, 2j+1 of the
 *   packet), the lane's words in the order (block 0 row g, block 0 row g+8, block 1 row g,
 *   block 1 row g+8).  Nibble slot s (bits 4s..4s+3) holds column
 *   16*((s>>1)&1) + 4tq + 2*(s&1) + (s>>2) of the block.  So w & 0x000f000f gives the
 *   row's A reg of mma 2j for cols +0,+1, (w >> 4) for +2,+3, and (w >> 8), (w >> 12) the
 *   same for mma 2j+1; and the low nibbles in byte order are the row's int8 A register for
 *   k = 4tq..4tq+3 of the block's m16n8k32, the high ones for k = 16 + 4tq.. (layout_i8.cuh),
 *   with no byte permute.  (Until session 8 a word held rows g and g+8 of one mma, which
 *   cost the int8 path two PRMT a word.)
 *   Q6_K: three words per 32-column block (X, Y, Z: the packet's q vectors 0, 1, 2, block
 *   k in component k), holding the int8 A registers a0..a3 of the block's m16n8k32
 *   (layout_i8.cuh: a0 row g, k = 4tq..4tq+3; a1 row g+8, the same k; a2 row g, k = 16 +
 *   4tq..; a3 row g+8; k in kb_act8_pos's order) as 6-bit codes c = q ^ 32, the two's
 *   complement of q - 32: byte b of X is c(a0, b) << 2 | (c(a2, b) & 3), of Y c(a1, b) << 2
 *   | (c(a3, b) & 3), of Z (c(a2, b) >> 2) << 4 | c(a3, b) >> 2.  So the int8 registers,
 *   4 (q - 32), are X & 0xfc.., Y & 0xfc.. and two three- or four-instruction merges
 *   (kb_q6_dec8), and the f16 ones of mma 2k + h are their bytes h and 2 + h (lane tq's
 *   columns 4tq, 4tq + 1 of that mma; a2, a3: 4tq + 2, + 3).  Code 0 is q = 32, a zero
 *   weight, so zero bytes are zero weights.  (Until session 14 a nibble word per mma and
 *   a high-bit word per mma pair, which only the f16 products could read cheaply.)
 *   Q8_0: two words per mma: bytes (row g c0, row g c1, row g+8 c0, row g+8 c1), then
 *   the same for columns c2, c3.
 *   F16/BF16: the four A registers of the mma, in order (row g c0c1, row g+8 c0c1,
 *   row g c2c3, row g+8 c2c3).
 *
 * Scales are applied in f32 after the mmas of each block (Q4_0/Q4_1/Q8_0/Q4_K: 32
 * columns, 2 mmas; Q6_K: 16 columns, 1 mma), so A holds exact small integers and the
 * only rounding is the activations' conversion to f16.  (The int8 products: a block's
 * m16n8k32, Q6_K's two merged in int32 first; layout_i8.cuh.)
 *   Q4_0 s (8 B):  f16 d[row g, blk 0], d[g+8, 0], d[g, 1], d[g+8, 1]
 *   Q4_1 s (16 B): the same four d, then the four m
 *   Q8_0 s (4 B):  f16 d[g], d[g+8]
 *   Q4_K d (32 B): the GGUF block header (f16 d, f16 dmin, 12 scale bytes) of row g,
 *                  then that of row g+8, copied verbatim (the bytes stay 144 per 256)
 *   Q6_K s (16 B): int8 scales of the packet's 8 sub-blocks for row g, then row g+8
 *   Q6_K d (4 B):  f16 d[g], d[g+8]
 * Byte counts equal GGUF's exactly, except for the row and column padding.
 *
 * Activations ("act"): per token, f16 (and bf16 hi/lo for BF16 weights) in a permuted
 * order, so that a lane's B fragments of four mmas are 32 contiguous bytes: within each
 * group of 64 columns, x[64q + 16i + 4tq + j] is stored at 64q + 16tq + 4i + j.  For
 * Q4_1 and Q4_K, sums of each 32-column block: xs[group][token 0..7][2].  For the int8
 * products, int8 levels and an f32 scale per 32-column block (layout_i8.cuh). */
#ifndef QD_KERNELS_CUDA_LAYOUT_CUH
#define QD_KERNELS_CUDA_LAYOUT_CUH

#include <stdint.h>
#include <string.h>
#include <vector_types.h>
#ifdef __CUDACC__
#include <cuda_fp16.h>
#endif

extern "C" {
#include "../types.h"
}

#define KB_HD __host__ __device__ __forceinline__
#ifdef __CUDA_ARCH__
#define KB_UNROLL _Pragma("unroll")
#else
#define KB_UNROLL
#endif

#define KB_ROW_PAD 64   /* rows padded to this (largest row-tiles-per-block x 16) */
#define KB_ACT_PAD 256  /* activation columns padded to this (largest chunk) */
#define KB_MAX_TOK 8

/* Per-type layout parameters (compile time). */
template <int T> struct Lay;
/* P: columns per packet; CPK: packets per chunk; QV: 16-byte vectors per lane per packet;
 * SB: s bytes per g per packet; DB: d bytes per g per superblock; GS: mmas per scale group. */
#define KB_LAY(T_, P_, CPK_, QV_, SB_, DB_, GS_) \
	template <> struct Lay<T_> { \
		static constexpr int P = P_, CPK = CPK_, QV = QV_, SB = SB_, DB = DB_, GS = GS_; \
		static constexpr int CC = P_ * CPK_;       /* chunk columns */ \
		static constexpr int NM = CC / 16;         /* mmas per chunk per tile */ \
		static constexpr int NG = CC / 64 > 0 ? CC / 64 : 1; /* 64-col act groups */ \
	};
KB_LAY(QD_TYPE_Q4_0, 64, 4, 1, 8, 0, 2)
KB_LAY(QD_TYPE_Q4_1, 64, 4, 1, 16, 0, 2)
KB_LAY(QD_TYPE_Q8_0, 32, 8, 1, 4, 0, 2) /* 256 columns: the one-token column form's 8 blocks (layout_i8.cuh) */
/* Q8_0 in chunks of 4 packets, the same bytes (the layout does not depend on the grouping;
 * a Q8_0 chunk is two of these): what its f16 register products (matmul.cu's launch_f16)
 * and the GEMM (gemm.cu) walk.  8-packet items cost the f16 register kernel twice the
 * weights a stage (80 -> 158 registers; SmolLM2 Q8_0 -10%, 7B batch 8 -10%:
 * bench/NOTES-gpu.md, session 13) and the GEMM twice the shared memory a stage.  Not a
 * GGUF type: no weight has it. */
#define KB_TYPE_Q8_0_F16 0x1008
KB_LAY(KB_TYPE_Q8_0_F16, 32, 4, 1, 4, 0, 2)
/* The layout T's f16 products and its GEMM walk: Q8_0's in chunks of 4 packets. */
template <int T> constexpr int kb_f16_type()
{
	return T == QD_TYPE_Q8_0 ? KB_TYPE_Q8_0_F16 : T;
}
KB_LAY(QD_TYPE_Q4_K, 64, 4, 1, 0, 32, 2)
KB_LAY(QD_TYPE_Q6_K, 128, 2, 3, 16, 4, 1)
KB_LAY(QD_TYPE_F16, 16, 4, 1, 0, 0, 4)
KB_LAY(QD_TYPE_BF16, 16, 4, 1, 0, 0, 4)
#undef KB_LAY

/* Runtime view of the same numbers. */
typedef struct {
	int P, CPK, QV, SB, DB;
} KbLay;

static inline int kb_lay(int type, KbLay *ret)
{
	switch (type) {
#define C_(T_) case T_: ret->P = Lay<T_>::P; ret->CPK = Lay<T_>::CPK; ret->QV = Lay<T_>::QV; \
		ret->SB = Lay<T_>::SB; ret->DB = Lay<T_>::DB; return 0;
	C_(QD_TYPE_Q4_0) C_(QD_TYPE_Q4_1) C_(QD_TYPE_Q8_0) C_(QD_TYPE_Q4_K) C_(QD_TYPE_Q6_K)
	C_(QD_TYPE_F16) C_(QD_TYPE_BF16)
#undef C_
	default: return -1;
	}
}

/* Sizes of one tile in each region for a padded column count. */
typedef struct {
	int64_t n_pk, n_sb, n_chunks;
	int64_t q_tile, s_tile, d_tile; /* bytes */
} KbTileGeom;

static inline void kb_tile_geom(const KbLay *l, int64_t cols_pad, KbTileGeom *g)
{
	g->n_pk = cols_pad / l->P;
	g->n_sb = cols_pad / 256;
	g->n_chunks = g->n_pk / l->CPK;
	g->q_tile = g->n_pk * l->QV * 512;
	g->s_tile = g->n_pk * 8 * l->SB;
	g->d_tile = l->DB ? g->n_sb * 8 * l->DB : 0;
}

/* ---- reading GGUF blocks (one element or one scale at a time; repack only) ---- */

KB_HD uint16_t kb_rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* Integer quant of column c of a GGUF row: Q4_0/Q4_1/Q4_K 0..15, Q6_K 0..63, Q8_0 signed. */
template <int T> KB_HD int kb_raw_q(const uint8_t *row, int64_t c)
{
	if constexpr (T == QD_TYPE_Q4_0 || T == QD_TYPE_Q4_1) {
		const int hdr = T == QD_TYPE_Q4_0 ? 2 : 4, bs = T == QD_TYPE_Q4_0 ? 18 : 20;
		const uint8_t *b = row + (c / 32) * bs + hdr;
		int j = (int)(c % 32);
		return j < 16 ? (b[j] & 15) : (b[j - 16] >> 4);
	} else if constexpr (T == QD_TYPE_Q8_0) {
		return (int8_t)row[(c / 32) * 34 + 2 + c % 32];
	} else if constexpr (T == QD_TYPE_Q4_K) {
		const uint8_t *qs = row + (c / 256) * 144 + 16;
		int e = (int)(c % 256), ch = e / 64, l = e % 64;
		uint8_t v = qs[ch * 32 + (l % 32)];
		return l < 32 ? (v & 15) : (v >> 4);
	} else { /* Q6_K: ql[128] qh[64] scales[16] d */
		const uint8_t *b = row + (c / 256) * 210;
		int e = (int)(c % 256), h = e / 128, l4 = e % 128, qd = l4 / 32, l = l4 % 32;
		uint8_t ql = b[h * 64 + l + (qd & 1) * 32];
		int lo = qd < 2 ? (ql & 15) : (ql >> 4);
		int hi = (b[128 + h * 32 + l] >> (2 * qd)) & 3;
		return lo | (hi << 4);
	}
}

/* ---- repacking: one thread per (tile, packet, lane) ---- */

/* Where a band of raw GGUF rows goes.  Rows >= rows_valid and columns >= cols are zero. */
typedef struct {
	const uint8_t *raw;   /* band's first row */
	int64_t row_bytes;
	int64_t rows_valid;   /* rows of raw present in this band */
	int64_t cols;         /* real columns */
	uint8_t *q, *s, *d;   /* the band's first tile in each region */
	KbTileGeom geo;
} KbRepack;

/* Writes the lane's q vectors of (tile tl, packet pk) and, for tq == 0, row pair g's
 * scales.  tl is relative to the band. */
template <int T> KB_HD void kb_repack_lane(const KbRepack *r, int64_t tl, int64_t pk, int lane)
{
	typedef Lay<T> L;
	const int g = lane >> 2, tq = lane & 3;
	const int64_t r0 = tl * 16 + g, r1 = r0 + 8;
	const uint8_t *row[2] = { r->raw + r0 * r->row_bytes, r->raw + r1 * r->row_bytes };
	const bool ok[2] = { r0 < r->rows_valid, r1 < r->rows_valid };
	const int64_t c0 = pk * L::P;
	uint32_t w[L::QV * 4];
	for (int i = 0; i < L::QV * 4; i++)
		w[i] = 0;

	if constexpr (T == QD_TYPE_Q4_0 || T == QD_TYPE_Q4_1 || T == QD_TYPE_Q4_K) {
		/* a nibble word per row and 32-column block: row g's, then row g+8's */
		for (int j = 0; j < L::P / 32; j++)
			for (int h = 0; h < 2; h++)
				for (int s = 0; s < 8; s++) {
					int64_t c = c0 + 32 * j + 16 * ((s >> 1) & 1) + 4 * tq + 2 * (s & 1) + (s >> 2);
					int q = ok[h] && c < r->cols ? kb_raw_q<T>(row[h], c) : 0;
					w[2 * j + h] |= (uint32_t)(q & 15) << (4 * s);
				}
	} else if constexpr (T == QD_TYPE_Q6_K) {
		/* block k's X, Y, Z words (top comment); padding codes 0 (q = 32) */
		for (int k = 0; k < L::P / 32; k++)
			for (int b = 0; b < 4; b++) {
				uint32_t cv[4];
				for (int ri = 0; ri < 4; ri++) { /* a0 .. a3: row g + 8 (ri & 1), k 16 (ri >> 1) + 4tq + b */
					const int h = ri & 1;
					const int64_t c = c0 + 32 * k + 4 * tq + 2 * (ri >> 1) + b / 2 + 16 * (b & 1);
					const int q = ok[h] && c < r->cols ? kb_raw_q<T>(row[h], c) : 32;
					cv[ri] = (uint32_t)(q ^ 32);
				}
				w[k] |= (cv[0] << 2 | (cv[2] & 3)) << (8 * b);
				w[4 + k] |= (cv[1] << 2 | (cv[3] & 3)) << (8 * b);
				w[8 + k] |= ((cv[2] >> 2) << 4 | cv[3] >> 2) << (8 * b);
			}
	} else if constexpr (T == QD_TYPE_Q8_0) {
		for (int i = 0; i < 2; i++)
			for (int hw = 0; hw < 2; hw++)
				for (int k = 0; k < 4; k++) {
					int h = k >> 1;
					int64_t c = c0 + 16 * i + 4 * tq + 2 * hw + (k & 1);
					int q = ok[h] && c < r->cols ? kb_raw_q<T>(row[h], c) : 0;
					w[2 * i + hw] |= (uint32_t)(uint8_t)q << (8 * k);
				}
	} else { /* F16, BF16: the raw 16-bit values */
		for (int k = 0; k < 4; k++)
			for (int e = 0; e < 2; e++) {
				int h = k & 1;
				int64_t c = c0 + 4 * tq + 2 * (k >> 1) + e;
				uint32_t v = ok[h] && c < r->cols ? kb_rd16(row[h] + 2 * c) : 0;
				w[k] |= v << (16 * e);
			}
	}
	uint8_t *qdst = r->q + tl * r->geo.q_tile + (pk * L::QV * 32 + lane) * 16;
	for (int v = 0; v < L::QV; v++) {
		uint4 u = { w[4 * v], w[4 * v + 1], w[4 * v + 2], w[4 * v + 3] };
		*(uint4 *)(qdst + v * 512) = u; /* 16-byte aligned by construction */
	}

	if (tq != 0)
		return;
	/* scales of rows g and g+8 for this packet */
	uint8_t sb[16 > L::SB ? 16 : L::SB];
	memset(sb, 0, sizeof(sb));
	if constexpr (T == QD_TYPE_Q4_0 || T == QD_TYPE_Q4_1 || T == QD_TYPE_Q8_0) {
		const int bs = T == QD_TYPE_Q4_0 ? 18 : T == QD_TYPE_Q4_1 ? 20 : 34;
		const int nb = L::P / 32; /* blocks per packet */
		for (int b = 0; b < nb; b++)
			for (int h = 0; h < 2; h++) {
				int64_t blk = c0 / 32 + b;
				bool in = ok[h] && blk * 32 < r->cols;
				const uint8_t *bp = row[h] + blk * bs;
				uint16_t dv = in ? kb_rd16(bp) : 0;
				memcpy(sb + 2 * (2 * b + h), &dv, 2);
				if constexpr (T == QD_TYPE_Q4_1) {
					uint16_t mv = in ? kb_rd16(bp + 2) : 0;
					memcpy(sb + 8 + 2 * (2 * b + h), &mv, 2);
				}
			}
	} else if constexpr (T == QD_TYPE_Q6_K) {
		int64_t sbk = c0 / 256;
		int half = (int)((c0 / 128) & 1);
		for (int h = 0; h < 2; h++)
			for (int k = 0; k < 8; k++) {
				bool in = ok[h] && sbk * 256 < r->cols;
				sb[8 * h + k] = in ? row[h][sbk * 210 + 192 + 8 * half + k] : 0;
			}
	}
	if constexpr (L::SB)
		memcpy(r->s + tl * r->geo.s_tile + (pk * 8 + g) * L::SB, sb, L::SB);
	if (L::DB && (c0 % 256) == 0) {
		int64_t sbk = c0 / 256;
		uint8_t db[32];
		memset(db, 0, sizeof(db));
		for (int h = 0; h < 2; h++) {
			bool in = ok[h] && sbk * 256 < r->cols;
			if (!in)
				continue;
			if constexpr (T == QD_TYPE_Q4_K)
				memcpy(db + 16 * h, row[h] + sbk * 144, 16);
			else
				memcpy(db + 2 * h, row[h] + sbk * 210 + 208, 2);
		}
		memcpy(r->d + tl * r->geo.d_tile + (sbk * 8 + g) * L::DB, db, L::DB);
	}
}

/* Permuted position of column c within an activation row (see the top comment). */
KB_HD int64_t kb_act_pos(int64_t c)
{
	int64_t q = c >> 6;
	int r = (int)(c & 63), i = r >> 4, tq = (r >> 2) & 3, j = r & 3;
	return (q << 6) + 16 * tq + 4 * i + j;
}

/* ---- f16x2 arithmetic on bit patterns (exact on the small integers used here) ---- */

KB_HD uint32_t kb_h2sub(uint32_t a, uint32_t b)
{
#ifdef __CUDA_ARCH__
	uint32_t d;
	asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
	return d;
#else
	uint16_t lo = qd_f32_to_f16(qd_f16_to_f32((uint16_t)a) - qd_f16_to_f32((uint16_t)b));
	uint16_t hi = qd_f32_to_f16(qd_f16_to_f32((uint16_t)(a >> 16)) - qd_f16_to_f32((uint16_t)(b >> 16)));
	return lo | ((uint32_t)hi << 16);
#endif
}

KB_HD uint32_t kb_h2fma(uint32_t a, uint32_t b, uint32_t c)
{
#ifdef __CUDA_ARCH__
	uint32_t d;
	asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
	return d;
#else
	float r0 = qd_f16_to_f32((uint16_t)a) * qd_f16_to_f32((uint16_t)b) + qd_f16_to_f32((uint16_t)c);
	float r1 = qd_f16_to_f32((uint16_t)(a >> 16)) * qd_f16_to_f32((uint16_t)(b >> 16)) +
		   qd_f16_to_f32((uint16_t)(c >> 16));
	return qd_f32_to_f16(r0) | ((uint32_t)qd_f32_to_f16(r1) << 16);
#endif
}

KB_HD uint32_t kb_prmt(uint32_t a, uint32_t b, uint32_t sel)
{
#ifdef __CUDA_ARCH__
	return __byte_perm(a, b, sel);
#else
	uint64_t x = a | ((uint64_t)b << 32);
	uint32_t r = 0;
	for (int n = 0; n < 4; n++)
		r |= (uint32_t)((x >> (8 * ((sel >> (4 * n)) & 7))) & 0xff) << (8 * n);
	return r;
#endif
}

KB_HD float kb_f16lo(uint32_t v)
{
#ifdef __CUDA_ARCH__
	return __half2float(__ushort_as_half((unsigned short)(v & 0xffff)));
#else
	return qd_f16_to_f32((uint16_t)v);
#endif
}
KB_HD float kb_f16hi(uint32_t v) { return kb_f16lo(v >> 16); }

/* Signed byte k of w as a float, without the I2F unit: 0x4B0000uu is 2^23 + u. */
KB_HD float kb_s8f(uint32_t w, int k)
{
	uint32_t u = ((w >> (8 * k)) & 0xff) ^ 0x80;
	float f;
	uint32_t bits = 0x4B000000u | u;
	memcpy(&f, &bits, 4);
	return f - 8388736.0f; /* 2^23 + 128 */
}

#define KB_H2_1024 0x64006400u

/* Any function of three words in one LOP3: LUT is its truth table over a = 0xF0,
 * b = 0xCC, c = 0xAA (written out, so that the compiler neither splits it in two nor
 * folds two constant operands into one).  kb_andor (a & b) | c, kb_andxor (a & b) ^ c. */
template <int LUT> KB_HD uint32_t kb_lop3(uint32_t a, uint32_t b, uint32_t c)
{
#ifdef __CUDA_ARCH__
	uint32_t d;
	asm("lop3.b32 %0, %1, %2, %3, %4;" : "=r"(d) : "r"(a), "r"(b), "r"(c), "n"(LUT));
	return d;
#else
	uint32_t r = 0;
	for (int i = 0; i < 8; i++)
		if (LUT >> i & 1)
			r |= (i & 4 ? a : ~a) & (i & 2 ? b : ~b) & (i & 1 ? c : ~c);
	return r;
#endif
}
KB_HD uint32_t kb_andor(uint32_t a, uint32_t b, uint32_t c) { return kb_lop3<0xEA>(a, b, c); }
KB_HD uint32_t kb_andxor(uint32_t a, uint32_t b, uint32_t c) { return kb_lop3<0x6A>(a, b, c); }

/* A registers of one mma from the Q4 words of its rows g (wg) and g+8 (w8), already
 * shifted right by 8 for the second mma of their block; values are nibble - off. off_lo
 * is f16x2 of 1024 + off, off_hi of -(64 + off). */
KB_HD void kb_dec_q4(uint32_t wg, uint32_t w8, uint32_t off_lo, uint32_t off_hi, uint32_t a[4])
{
	a[0] = kb_h2sub(kb_andor(wg, 0x000f000fu, KB_H2_1024), off_lo);
	a[2] = kb_h2fma(kb_andor(wg, 0x00f000f0u, KB_H2_1024), 0x2c002c00u /* 1/16 */, off_hi);
	a[1] = kb_h2sub(kb_andor(w8, 0x000f000fu, KB_H2_1024), off_lo);
	a[3] = kb_h2fma(kb_andor(w8, 0x00f000f0u, KB_H2_1024), 0x2c002c00u, off_hi);
}

/* (a & m) | (b & ~m) in one LOP3. */
KB_HD uint32_t kb_sel(uint32_t a, uint32_t b, uint32_t m) { return kb_lop3<0xE4>(a, b, m); }

/* Component i of a 4-vector (uint4, float4). */
template <typename V> KB_HD auto kb_v4at(V v, int i) -> decltype(v.x)
{
	return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/* Q6_K: the int8 A registers of block k of a packet from its X, Y, Z words (components k of
 * the packet's q vectors Q[0..2], layout above), 4 (q - 32) as signed bytes; U: 4q as
 * unsigned bytes instead (the f16 decode's: the sign bits flipped).  9 instructions, 10
 * with U. */
template <bool U> KB_HD void kb_q6_dec8(const uint4 *q, int k, uint32_t a[4])
{
	const uint32_t x = kb_v4at(q[0], k), y = kb_v4at(q[1], k);
	uint32_t z = kb_v4at(q[2], k);
	const uint32_t f = U ? 0x80808080u : 0u;
	a[0] = kb_andxor(x, 0xfcfcfcfcu, f);
	a[1] = kb_andxor(y, 0xfcfcfcfcu, f);
	if (U) /* bit 7 of a2 is bit 7 of z, of a3 bit 3 */
		z ^= 0x88888888u;
	a[2] = kb_sel(z, (x & 0x03030303u) << 2, 0xf0f0f0f0u);
	a[3] = kb_sel(z << 4, (y & 0x03030303u) << 2, 0xf0f0f0f0u);
}

/* Q8_0: two words of signed bytes. */
KB_HD void kb_dec_q8(uint32_t wa, uint32_t wb, uint32_t a[4])
{
	const uint32_t off = 0x64806480u; /* 1024 + 128 */
	const uint32_t ua = wa ^ 0x80808080u, ub = wb ^ 0x80808080u;
	a[0] = kb_h2sub(kb_prmt(ua, 0x64646464u, 0x4140), off);
	a[1] = kb_h2sub(kb_prmt(ua, 0x64646464u, 0x4342), off);
	a[2] = kb_h2sub(kb_prmt(ub, 0x64646464u, 0x4140), off);
	a[3] = kb_h2sub(kb_prmt(ub, 0x64646464u, 0x4342), off);
}

/* Q4_K 6-bit scale and min of sub-block j from a block header (d, dmin, scales[12]). */
KB_HD void kb_q4k_scale(uint4 h, int j, int *sc, int *mn)
{
	const uint32_t s0 = h.y, s1 = h.z, s2 = h.w; /* scales[0..3], [4..7], [8..11] */
	if (j < 4) {
		*sc = (s0 >> (8 * j)) & 63;
		*mn = (s1 >> (8 * j)) & 63;
	} else {
		int k = j - 4;
		uint32_t b8 = (s2 >> (8 * k)) & 0xff;
		*sc = (int)((b8 & 15) | (((s0 >> (8 * k + 6)) & 3) << 4));
		*mn = (int)((b8 >> 4) | (((s1 >> (8 * k + 6)) & 3) << 4));
	}
}

/* Types whose weights carry a minimum per 32-column block (w = d q + m: Q4_1, and Q4_K with
 * d and m from the superblock's scales).  The minimum meets the activations' block sums:
 * the f16 products' xs plane, the int8 products' xe plane (Q8_1's s), so the products'
 * A registers hold unsigned levels. */
__host__ __device__ constexpr bool kb_has_min(int t)
{
	return t == QD_TYPE_Q4_1 || t == QD_TYPE_Q4_K;
}

/* ---- per-lane registers of one chunk of one tile, and of the activations ---- */

template <int T> struct KbWRegs {
	uint4 q[Lay<T>::CPK][Lay<T>::QV];
	uint4 s[Lay<T>::CPK]; /* only the first SB bytes are used */
	uint4 d[2];           /* only the first DB bytes are used */
};

template <int T> struct KbXRegs {
	uint32_t dep;               /* 0, but computed from every load (see kb_load_x) */
	uint32_t b[Lay<T>::NG][8];  /* f16 (bf16 hi for BF16) */
	uint32_t bl[T == QD_TYPE_BF16 ? Lay<T>::NG : 1][8]; /* bf16 lo */
	float4 xs[kb_has_min(T) ? Lay<T>::NG : 1];
};

KB_HD uint4 kb_ld_w16(const uint8_t *p)
{
	uint4 v;
#ifdef __CUDA_ARCH__
	/* weights are read once: no L1 allocation */
	asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
	    : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
#else
	memcpy(&v, p, 16);
#endif
	return v;
}

KB_HD uint32_t kb_ld_w4(const uint8_t *p)
{
	uint32_t v;
#ifdef __CUDA_ARCH__
	asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
#else
	memcpy(&v, p, 4);
#endif
	return v;
}

KB_HD uint2 kb_ld_w8(const uint8_t *p)
{
	uint2 v;
#ifdef __CUDA_ARCH__
	asm("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
#else
	memcpy(&v, p, 8);
#endif
	return v;
}

/* Pointers to one tile's regions. */
typedef struct {
	const uint8_t *q, *s, *d;
} KbTilePtr;

/* Where lane `lane` finds its part of chunk ch of a tile: q vector v of packet p of the
 * chunk, the packet's scales (SB bytes), and 16-byte piece k of the chunk's d data. */
template <int T> KB_HD const uint8_t *kb_w_q(KbTilePtr t, int64_t ch, int p, int v, int lane)
{
	return t.q + (((ch * Lay<T>::CPK + p) * Lay<T>::QV + v) * 32 + lane) * 16;
}
template <int T> KB_HD const uint8_t *kb_w_s(KbTilePtr t, int64_t ch, int p, int lane)
{
	return t.s + ((ch * Lay<T>::CPK + p) * 8 + (lane >> 2)) * Lay<T>::SB;
}
template <int T> KB_HD const uint8_t *kb_w_d(KbTilePtr t, int64_t ch, int k, int lane)
{
	/* a chunk is exactly one superblock for the K types */
	return t.d + (ch * 8 + (lane >> 2)) * Lay<T>::DB + 16 * k;
}

/* The q vectors of packet p of chunk ch of a tile into w (kb_load_w's first part, one packet:
 * the one-token walk asks for each packet again as soon as its old one is decoded,
 * kb_mmv_step). */
template <int T> KB_HD void kb_load_wq(KbTilePtr t, int64_t ch, int p, int lane, KbWRegs<T> *w)
{
	KB_UNROLL
	for (int v = 0; v < Lay<T>::QV; v++)
		w->q[p][v] = kb_ld_w16(kb_w_q<T>(t, ch, p, v, lane));
}

/* S1: only the scales of lane tq's blocks 2tq and 2tq + 1, into s[0] (packet tq of the
 * Q4 types' four, packet tq / 2 of Q6_K's two) or s[0], s[1] (packets 2tq, 2tq + 1 of Q8_0's
 * eight): the one-token int8 products' column-a-block form (layout_i8.cuh), where lane tq
 * scales those blocks alone.  Packet p's scales (S1: the lane's p-th packet of them; none
 * past those). */
template <int T, bool S1> KB_HD void kb_load_ws(KbTilePtr t, int64_t ch, int p, int lane, KbWRegs<T> *w)
{
	typedef Lay<T> L;
	constexpr int SP = L::CPK >= 4 ? L::CPK / 4 : 1; /* S1: packets a lane */
	if (S1 && p >= SP)
		return;
	const uint8_t *sp = kb_w_s<T>(t, ch, S1 ? (lane & 3) * L::CPK / 4 + p : p, lane);
	if constexpr (L::SB == 16)
		w->s[p] = kb_ld_w16(sp);
	else if constexpr (L::SB == 8) {
		uint2 v = kb_ld_w8(sp);
		w->s[p].x = v.x;
		w->s[p].y = v.y;
	} else if constexpr (L::SB == 4)
		w->s[p].x = kb_ld_w4(sp);
}

/* The chunk's superblock data (d). */
template <int T> KB_HD void kb_load_wd(KbTilePtr t, int64_t ch, int lane, KbWRegs<T> *w)
{
	if constexpr (Lay<T>::DB == 32) {
		w->d[0] = kb_ld_w16(kb_w_d<T>(t, ch, 0, lane));
		w->d[1] = kb_ld_w16(kb_w_d<T>(t, ch, 1, lane));
	} else if constexpr (Lay<T>::DB == 4) {
		w->d[0].x = kb_ld_w4(kb_w_d<T>(t, ch, 0, lane));
	}
}

/* Chunk ch of a tile into w: each packet's q vectors and scales, then d. */
template <int T, bool S1 = false> KB_HD void kb_load_w(KbTilePtr t, int64_t ch, int lane, KbWRegs<T> *w)
{
	KB_UNROLL
	for (int p = 0; p < Lay<T>::CPK; p++) {
		kb_load_wq<T>(t, ch, p, lane, w);
		kb_load_ws<T, S1>(t, ch, p, lane, w);
	}
	kb_load_wd<T>(t, ch, lane, w);
}

/* Activation buffers as the kernels see them. */
typedef struct {
	const uint16_t *xh, *xhi, *xlo; /* [8][cap] permuted */
	const float *xs;                /* [cap/64][8][2] */
	const int8_t *xq;               /* [8][cap], kb_act8_pos (layout_i8.cuh) */
	const float *xd, *xe;           /* kb_act8_d (layout_i8.cuh) */
	int64_t cap;
	int n_tok;
} KbActView;

/* 16 bytes at p if pred, else zeros.  A plain (coherent) load, in an asm block the
 * compiler keeps where it is written: the data was written by the previous kernel
 * (read only after griddepcontrol.wait), and all of a chunk's activation loads should
 * be in flight together rather than each sunk next to its first use. */
KB_HD uint4 kb_ld_x16(const void *p, bool pred)
{
	uint4 v;
#ifdef __CUDA_ARCH__
	asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %5, 0;\n\t"
		     "mov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\tmov.b32 %2, 0;\n\tmov.b32 %3, 0;\n\t"
		     "@p ld.global.v4.u32 {%0,%1,%2,%3}, [%4];\n\t}"
		     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
		     : "l"(p), "r"((int)pred)
		     : "memory");
#else
	if (pred)
		memcpy(&v, p, 16);
	else
		v.x = v.y = v.z = v.w = 0;
#endif
	return v;
}

/* 8 bytes at p if pred, else zeros: kb_ld_x16's narrower form. */
KB_HD uint2 kb_ld_x8(const void *p, bool pred)
{
	uint2 v;
#ifdef __CUDA_ARCH__
	asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %3, 0;\n\t"
		     "mov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\t"
		     "@p ld.global.v2.u32 {%0,%1}, [%2];\n\t}"
		     : "=r"(v.x), "=r"(v.y)
		     : "l"(p), "r"((int)pred)
		     : "memory");
#else
	if (pred)
		memcpy(&v, p, 8);
	else
		v.x = v.y = 0;
#endif
	return v;
}

template <int T> KB_HD void kb_load_x(const KbActView *a, int64_t ch, int lane, KbXRegs<T> *x)
{
	typedef Lay<T> L;
	const int g = lane >> 2, tq = lane & 3;
	const int64_t col0 = ch * L::CC; /* a multiple of 64 */
	const uint4 z = { 0, 0, 0, 0 };
	uint32_t dep = 0;
	KB_UNROLL
	for (int q = 0; q < L::NG; q++) {
		/* chunks narrower than a group (none today) would need an offset here */
		const int64_t off = g * a->cap + col0 + 64 * q + 16 * tq;
		const bool on = g < a->n_tok;
		const uint16_t *hp = T == QD_TYPE_BF16 ? a->xhi : a->xh;
		const uint4 v0 = kb_ld_x16(hp + off, on), v1 = kb_ld_x16(hp + off + 8, on);
		uint4 l0 = z, l1 = z;
		dep ^= v0.x ^ v1.x;
		if constexpr (T == QD_TYPE_BF16) {
			l0 = kb_ld_x16(a->xlo + off, on);
			l1 = kb_ld_x16(a->xlo + off + 8, on);
			dep ^= l0.x ^ l1.x;
		}
		x->b[q][0] = v0.x; x->b[q][1] = v0.y; x->b[q][2] = v0.z; x->b[q][3] = v0.w;
		x->b[q][4] = v1.x; x->b[q][5] = v1.y; x->b[q][6] = v1.z; x->b[q][7] = v1.w;
		if constexpr (T == QD_TYPE_BF16) {
			x->bl[q][0] = l0.x; x->bl[q][1] = l0.y; x->bl[q][2] = l0.z; x->bl[q][3] = l0.w;
			x->bl[q][4] = l1.x; x->bl[q][5] = l1.y; x->bl[q][6] = l1.z; x->bl[q][7] = l1.w;
		}
		if constexpr (kb_has_min(T)) {
			const uint4 u = kb_ld_x16(a->xs + ((col0 / 64 + q) * 8 + 2 * tq) * 2, 2 * tq < a->n_tok);
			dep ^= u.x;
			float4 s;
			memcpy(&s, &u, 16);
			x->xs[q] = s;
		}
	}
	/* n_tok <= 8, so this is 0; the compiler cannot know, and the first mma of the
	 * chunk then waits for all of its activation loads, which is what keeps them
	 * issued together (otherwise ptxas places each one next to its use) */
	x->dep = dep & (uint32_t)(a->n_tok >> 8);
}

/* A registers of mma m (0..NM-1) of the chunk. */
template <int T> KB_HD void kb_frag_a(const KbWRegs<T> *w, int m, uint32_t a[4])
{
	typedef Lay<T> L;
	const int p = m / (L::P / 16), i = m % (L::P / 16);
	if constexpr (T == QD_TYPE_Q4_0 || T == QD_TYPE_Q4_1 || T == QD_TYPE_Q4_K) {
		/* block i / 2's words (rows g, g+8); its second mma takes nibble slots 2, 3, 6, 7 */
		const uint4 v = w->q[p][0];
		const int sh = 8 * (i & 1);
		const uint32_t wg = (i < 2 ? v.x : v.z) >> sh, w8 = (i < 2 ? v.y : v.w) >> sh;
		if constexpr (T == QD_TYPE_Q4_0)
			kb_dec_q4(wg, w8, 0x64086408u /* 1032 */, 0xd480d480u /* -72 */, a);
		else
			kb_dec_q4(wg, w8, KB_H2_1024, 0xd400d400u /* -64 */, a);
	} else if constexpr (T == QD_TYPE_Q6_K) {
		/* block i / 2's int8 registers as 4q, bytes (i & 1, 2 + (i & 1)) of each in f16
		 * (1024 + 4q), then q - 32 = (1024 + 4q) / 4 - 288, exact */
		const int k = i / 2;
		uint32_t u[4];
		kb_q6_dec8<true>(w->q[p], k, u);
		const uint32_t sel = (i & 1) ? 0x4341u : 0x4240u;
		KB_UNROLL
		for (int r = 0; r < 4; r++)
			a[r] = kb_h2fma(kb_prmt(u[r], 0x64646464u, sel), 0x34003400u /* 1/4 */, 0xdc80dc80u /* -288 */);
	} else if constexpr (T == QD_TYPE_Q8_0 || T == KB_TYPE_Q8_0_F16) {
		const uint4 v = w->q[p][0];
		if (i == 0)
			kb_dec_q8(v.x, v.y, a);
		else
			kb_dec_q8(v.z, v.w, a);
	} else {
		const uint4 v = w->q[p][0];
		a[0] = v.x; a[1] = v.y; a[2] = v.z; a[3] = v.w;
	}
}

/* B registers of mma m: group m/4, words 2(m%4), 2(m%4)+1. */
template <int T> KB_HD void kb_frag_b(const KbXRegs<T> *x, int m, uint32_t b[2], uint32_t bl[2])
{
	const int q = m / 4, k = 2 * (m % 4);
	b[0] = x->b[q][k] | (m == 0 ? x->dep : 0u);
	b[1] = x->b[q][k + 1];
	if constexpr (T == QD_TYPE_BF16) {
		bl[0] = x->bl[q][k];
		bl[1] = x->bl[q][k + 1];
	}
}

/* acc += scale(group sg) * t, t being the sum of the group's mmas (C layout: t[0], t[1]
 * row g tokens 2tq, 2tq+1; t[2], t[3] row g+8). */
template <int T> KB_HD void kb_post(const KbWRegs<T> *w, const KbXRegs<T> *x, int sg,
				    const float t[4], float acc[4])
{
	typedef Lay<T> L;
	if constexpr (T == QD_TYPE_F16 || T == QD_TYPE_BF16) {
		KB_UNROLL
		for (int c = 0; c < 4; c++)
			acc[c] += t[c];
	} else if constexpr (T == QD_TYPE_Q4_0 || T == QD_TYPE_Q4_1) {
		const int p = sg / 2, b = sg % 2;
		const uint4 s = w->s[p];
		const uint32_t dv = b == 0 ? s.x : s.y;
		const float d0 = kb_f16lo(dv), d1 = kb_f16hi(dv);
		if constexpr (T == QD_TYPE_Q4_0) {
			acc[0] += d0 * t[0];
			acc[1] += d0 * t[1];
			acc[2] += d1 * t[2];
			acc[3] += d1 * t[3];
		} else {
			const uint32_t mv = b == 0 ? s.z : s.w;
			const float m0 = kb_f16lo(mv), m1 = kb_f16hi(mv);
			const float4 xs = x->xs[p]; /* group p: (tok 2tq: b0, b1; tok 2tq+1: b0, b1) */
			const float xa = b == 0 ? xs.x : xs.y, xb = b == 0 ? xs.z : xs.w;
			acc[0] += d0 * t[0] + m0 * xa;
			acc[1] += d0 * t[1] + m0 * xb;
			acc[2] += d1 * t[2] + m1 * xa;
			acc[3] += d1 * t[3] + m1 * xb;
		}
	} else if constexpr (T == QD_TYPE_Q8_0 || T == KB_TYPE_Q8_0_F16) {
		const uint32_t dv = w->s[sg].x;
		const float d0 = kb_f16lo(dv), d1 = kb_f16hi(dv);
		acc[0] += d0 * t[0];
		acc[1] += d0 * t[1];
		acc[2] += d1 * t[2];
		acc[3] += d1 * t[3];
	} else if constexpr (T == QD_TYPE_Q4_K) {
		/* sg = sub-block j of the superblock; group sg/2, block sg%2 */
		int sc0, mn0, sc1, mn1;
		kb_q4k_scale(w->d[0], sg, &sc0, &mn0);
		kb_q4k_scale(w->d[1], sg, &sc1, &mn1);
		const float s0 = kb_f16lo(w->d[0].x) * (float)sc0, n0 = kb_f16hi(w->d[0].x) * (float)mn0;
		const float s1 = kb_f16lo(w->d[1].x) * (float)sc1, n1 = kb_f16hi(w->d[1].x) * (float)mn1;
		const float4 xs = x->xs[sg / 2];
		const float xa = sg % 2 == 0 ? xs.x : xs.y, xb = sg % 2 == 0 ? xs.z : xs.w;
		acc[0] += s0 * t[0] - n0 * xa;
		acc[1] += s0 * t[1] - n0 * xb;
		acc[2] += s1 * t[2] - n1 * xa;
		acc[3] += s1 * t[3] - n1 * xb;
	} else { /* Q6_K: sg = mma = sub-block of 16; packet sg/8, sub-block sg%8 in it */
		const int p = sg / 8, k = sg % 8;
		const uint4 s = w->s[p];
		const float sc0 = kb_s8f(k < 4 ? s.x : s.y, k % 4);
		const float sc1 = kb_s8f(k < 4 ? s.z : s.w, k % 4);
		const float s0 = kb_f16lo(w->d[0].x) * sc0, s1 = kb_f16hi(w->d[0].x) * sc1;
		acc[0] += s0 * t[0];
		acc[1] += s0 * t[1];
		acc[2] += s1 * t[2];
		acc[3] += s1 * t[3];
	}
	(void)L::P;
}

#endif
