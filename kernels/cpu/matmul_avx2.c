/* kernels/cpu/matmul_avx2.c: AVX2 kernels that exist for kb_matmul's sake: a product of
 * four weight rows with one activation row (Q8_0), and the packed-activation path for Q4_0
 * and Q4_1 (layout in quant_internal.h).  Built with -mavx2 -mfma -mf16c; quant.c hands
 * them out only after checking the CPU.  They compute the same integer sums as the row
 * kernels of quant_avx2.c; only the order of the float accumulation differs. */
#include <string.h>

#include "quant.h"
#include "quant_internal.h"
#include "simd_avx2.h"

/* ------------------------------------------------ four weight rows, one activation row */

/* The activation block is loaded and its scales converted once for four weight rows, which
 * saves about a fifth of the work of dot_q8_0 in quant_avx2.c.  ret[r] = dot(row r, x), rows ws
 * bytes apart.  Four rows read side by side are four memory streams, which the hardware
 * prefetcher follows poorly: kb_matmul uses this only on rows already in cache. */

static inline const void *row_at(const void *w, size_t ws, int r)
{
	return (const uint8_t *)w + (size_t)r * ws;
}

/* f16 scales of four weight blocks (one u16 each) times the activation's: lanes 0-3 */
static inline __m128 scales4(uint16_t d0, uint16_t d1, uint16_t d2, uint16_t d3, uint16_t dx)
{
	__m128 w = _mm_cvtph_ps(_mm_setr_epi16((short)d0, (short)d1, (short)d2, (short)d3, 0, 0, 0, 0));
	return _mm_mul_ps(w, _mm_set1_ps(f16(dx)));
}

static inline __m256 lane4(__m128 v, int k)
{
	return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_set1_epi32(k));
}

/* Four rows against one activation row.  Each row's sum is formed exactly as dot_q8_0
 * forms it (even and odd blocks in separate accumulators, the same products, the same
 * final reduction), so a token's result does not depend on which kernel the batch
 * composition chose: batched and single-sequence decoding give bit-identical logits. */
static void dot4_q8_0(int64_t n, const void *w, size_t ws, const void *x, float *ret)
{
	const BlockQ8_0 *a[4] = { w, row_at(w, ws, 1), row_at(w, ws, 2), row_at(w, ws, 3) };
	const BlockQ8_0 *b = x;
	const int64_t nb = n / QD_QK;
	__m256 ev[4], od[4];
	for (int r = 0; r < 4; r++)
		ev[r] = od[r] = _mm256_setzero_ps();
	int64_t i = 0;
	for (; i + 2 <= nb; i += 2) {
		__m256i y0 = _mm256_loadu_si256((const __m256i *)b[i].qs);
		__m256i y1 = _mm256_loadu_si256((const __m256i *)b[i + 1].qs);
		__m128 s0 = scales4(a[0][i].d, a[1][i].d, a[2][i].d, a[3][i].d, b[i].d);
		__m128 s1 = scales4(a[0][i + 1].d, a[1][i + 1].d, a[2][i + 1].d, a[3][i + 1].d, b[i + 1].d);
		for (int r = 0; r < 4; r++) {
			__m256i p0 = dot_i8_i8(_mm256_loadu_si256((const __m256i *)a[r][i].qs), y0);
			__m256i p1 = dot_i8_i8(_mm256_loadu_si256((const __m256i *)a[r][i + 1].qs), y1);
			ev[r] = _mm256_fmadd_ps(lane4(s0, r), _mm256_cvtepi32_ps(p0), ev[r]);
			od[r] = _mm256_fmadd_ps(lane4(s1, r), _mm256_cvtepi32_ps(p1), od[r]);
		}
	}
	for (; i < nb; i++) {
		__m256i y = _mm256_loadu_si256((const __m256i *)b[i].qs);
		__m128 sc = scales4(a[0][i].d, a[1][i].d, a[2][i].d, a[3][i].d, b[i].d);
		for (int r = 0; r < 4; r++)
			ev[r] = _mm256_fmadd_ps(lane4(sc, r),
						_mm256_cvtepi32_ps(dot_i8_i8(_mm256_loadu_si256((const __m256i *)a[r][i].qs), y)),
						ev[r]);
	}
	for (int r = 0; r < 4; r++)
		ret[r] = hsum_ps(_mm256_add_ps(ev[r], od[r]));
}

/* ------------------------------------------------ activations packed for kb_matmul */

/* One pair of 32-blocks (2k, 2k+1) of an activation row; see quant_internal.h. */
typedef struct {
	int8_t lo[32];  /* values 0-15 of block 2k, then of block 2k+1 */
	int8_t hi[32];  /* values 16-31 of both */
	int16_t y8[16]; /* 8 * (lo[2j] + lo[2j+1] + hi[2j] + hi[2j+1]): Q4_0's offset, in
			 * the int16 lanes maddubs produces */
	float sc[4];    /* d and s of block 2k, then of 2k+1 (s: Q8_1 only, else 0) */
} XPair;

_Static_assert(sizeof(XPair) == KB_XPAIR_BYTES, "XPair layout");

/* An odd last block pairs with an empty one: zero values and scales. */
static void xpack_pair(const int8_t *q0, const int8_t *q1, float d0, float s0, float d1, float s1, XPair *p)
{
	static const int8_t zero[32];
	if (!q1)
		q1 = zero;
	memcpy(p->lo, q0, 16);
	memcpy(p->lo + 16, q1, 16);
	memcpy(p->hi, q0 + 16, 16);
	memcpy(p->hi + 16, q1 + 16, 16);
	for (int j = 0; j < 16; j++)
		p->y8[j] = (int16_t)(8 * (p->lo[2 * j] + p->lo[2 * j + 1] + p->hi[2 * j] + p->hi[2 * j + 1]));
	p->sc[0] = d0;
	p->sc[1] = s0;
	p->sc[2] = d1;
	p->sc[3] = s1;
}

static void xpack_q8_0(const void *xq, int64_t n, void *dst)
{
	const BlockQ8_0 *b = xq;
	XPair *p = dst;
	int64_t nb = n / QD_QK;
	for (int64_t i = 0; i < nb; i += 2, p++) {
		int last = i + 1 >= nb;
		xpack_pair(b[i].qs, last ? NULL : b[i + 1].qs, f16(b[i].d), 0, last ? 0 : f16(b[i + 1].d), 0, p);
	}
}

static void xpack_q8_1(const void *xq, int64_t n, void *dst)
{
	const BlockQ8_1 *b = xq;
	XPair *p = dst;
	int64_t nb = n / QD_QK;
	for (int64_t i = 0; i < nb; i += 2, p++) {
		int last = i + 1 >= nb;
		xpack_pair(b[i].qs, last ? NULL : b[i + 1].qs, f16(b[i].d), f16(b[i].s), last ? 0 : f16(b[i + 1].d),
			   last ? 0 : f16(b[i + 1].s), p);
	}
}

/* Nibbles of weight blocks a0 and a1 (a1 NULL: none; its lanes then meet zero values) ->
 * low nibbles and high nibbles, each [block a0 | block a1], matching XPair's lo and hi. */
static inline void nibbles_pair(const uint8_t *a0, const uint8_t *a1, __m256i *ret_lo, __m256i *ret_hi)
{
	const __m256i m4 = _mm256_set1_epi8(0x0f);
	__m128i q0 = _mm_loadu_si128((const __m128i *)a0);
	__m256i q = a1 ? _mm256_inserti128_si256(_mm256_castsi128_si256(q0), _mm_loadu_si128((const __m128i *)a1), 1)
		       : _mm256_inserti128_si256(_mm256_castsi128_si256(q0), _mm_setzero_si128(), 1);
	*ret_lo = _mm256_and_si256(q, m4);
	*ret_hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
}

/* int16 products of a weight block pair with its XPair, summed over lo and hi */
static inline __m256i pair_products(const uint8_t *a0, const uint8_t *a1, const XPair *p)
{
	__m256i lo, hi;
	nibbles_pair(a0, a1, &lo, &hi);
	return _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)p->lo)),
				_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)p->hi)));
}

static const __m256i *pair_lanes(void)
{
	/* lanes 0-3 take the products' lane 0 (block 2k), lanes 4-7 lane 2 (block 2k+1) */
	static const int32_t idx[8] = { 0, 0, 0, 0, 2, 2, 2, 2 };
	return (const __m256i *)idx;
}

/* One Q4_1 block pair (a1 NULL: a lone last block) into acc, m*s into accm. */
static inline void xpair_q4_1(const BlockQ4_1 *a0, const BlockQ4_1 *a1, const XPair *p, __m256 *acc, __m128 *accm)
{
	/* [d0 m0 d1 m1] * [dx0 sx0 dx1 sx1]: d*dx in lanes 0 and 2, m*s in 1 and 3 */
	__m128 sc = _mm_mul_ps(_mm_cvtph_ps(_mm_setr_epi32((int)ld32(&a0->d), a1 ? (int)ld32(&a1->d) : 0, 0, 0)),
			       _mm_loadu_ps(p->sc));
	*accm = _mm_add_ps(*accm, sc);
	__m256i q = pair_products(a0->qs, a1 ? a1->qs : NULL, p);
	__m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(q, _mm256_set1_epi16(1)));
	*acc = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(_mm256_castps128_ps256(sc), _mm256_loadu_si256(pair_lanes())), f, *acc);
}

static void dot_xpack_q4_1(int64_t n, const void *w, const void *x, float *ret)
{
	const BlockQ4_1 *a = w;
	const XPair *p = x;
	const int64_t nb = n / QD_QK;
	__m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
	__m128 accm = _mm_setzero_ps();
	int64_t i = 0;
	for (; i + 4 <= nb; i += 4, p += 2) {
		xpair_q4_1(&a[i], &a[i + 1], p, &acc0, &accm);
		xpair_q4_1(&a[i + 2], &a[i + 3], p + 1, &acc1, &accm);
	}
	for (; i < nb; i += 2, p++)
		xpair_q4_1(&a[i], i + 1 < nb ? &a[i + 1] : NULL, p, &acc0, &accm);
	float m[4];
	_mm_storeu_ps(m, accm);
	*ret = hsum_ps(_mm256_add_ps(acc0, acc1)) + (m[1] + m[3]);
}

/* One Q4_0 block pair: (nib - 8) . y = nib . y - 8 sum y, the sums precomputed in y8. */
static inline void xpair_q4_0(const BlockQ4_0 *a0, const BlockQ4_0 *a1, const XPair *p, __m256 *acc)
{
	__m128 sc = _mm_mul_ps(_mm_cvtph_ps(_mm_setr_epi32(a0->d, a1 ? a1->d : 0, 0, 0)), _mm_loadu_ps(p->sc));
	__m256i q = _mm256_sub_epi16(pair_products(a0->qs, a1 ? a1->qs : NULL, p), _mm256_loadu_si256((const __m256i *)p->y8));
	__m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(q, _mm256_set1_epi16(1)));
	*acc = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(_mm256_castps128_ps256(sc), _mm256_loadu_si256(pair_lanes())), f, *acc);
}

static void dot_xpack_q4_0(int64_t n, const void *w, const void *x, float *ret)
{
	const BlockQ4_0 *a = w;
	const XPair *p = x;
	const int64_t nb = n / QD_QK;
	__m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
	int64_t i = 0;
	for (; i + 4 <= nb; i += 4, p += 2) {
		xpair_q4_0(&a[i], &a[i + 1], p, &acc0);
		xpair_q4_0(&a[i + 2], &a[i + 3], p + 1, &acc1);
	}
	for (; i < nb; i += 2, p++)
		xpair_q4_0(&a[i], i + 1 < nb ? &a[i + 1] : NULL, p, &acc0);
	*ret = hsum_ps(_mm256_add_ps(acc0, acc1));
}

const KbXPackKernels *kb_avx2_xpack_kernels(int wtype)
{
	static const KbXPackKernels q4_0 = { dot_xpack_q4_0, xpack_q8_0 };
	static const KbXPackKernels q4_1 = { dot_xpack_q4_1, xpack_q8_1 };
	switch (wtype) {
	case QD_TYPE_Q4_0: return &q4_0;
	case QD_TYPE_Q4_1: return &q4_1;
	default: return NULL;
	}
}

KbVecDot4Fn kb_avx2_vec_dot4_fn(int wtype)
{
	switch (wtype) {
	case QD_TYPE_Q8_0: return dot4_q8_0; /* Q4_0, Q4_1: the packed path is faster */
	default: return NULL;
	}
}
