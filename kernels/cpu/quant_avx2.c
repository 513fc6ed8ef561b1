/* kernels/cpu/quant_avx2.c: AVX2 + FMA + F16C versions of the row kernels in quant.c.
 *
 * Built with -mavx2 -mfma -mf16c; quant.c only calls into it after checking the CPU.
 * Contract with the reference (tested in tests/test-quant.c):
 *   - quantizers and dequantizers give the same bytes / floats as the scalar reference
 *     (NaN inputs excepted: their payloads and the int conversion of NaN differ);
 *   - dot products agree to float rounding: the integer parts are exact, only the order of
 *     the float accumulation differs.
 * The integer dot products use _mm256_maddubs_epi16 (unsigned x signed bytes -> pairs of
 * int16) and _mm256_madd_epi16 (pairs of int16 -> int32); a signed x signed product takes
 * the sign of one operand onto the other first (_mm256_sign_epi8). */

/* Dequantization must round d*q and then + m separately, as the reference does. */
#pragma GCC optimize("fp-contract=off")

#include <string.h>

#include "quant.h"
#include "quant_internal.h"
#include "simd_avx2.h"

/* ------------------------------------------------------------------------ helpers */

/* Rounding half away from zero, exactly roundf: truncate, then step away from zero when
 * the (exactly representable) fraction is at least one half.  _mm256_round_ps's nearest
 * mode would round halves to even and change bytes. */
static inline __m256 round_away(__m256 v)
{
	__m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
	__m256 half = _mm256_cmp_ps(abs_ps(_mm256_sub_ps(v, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
	__m256 step = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, _mm256_set1_ps(-0.0f)));
	return _mm256_add_ps(t, _mm256_and_ps(half, step));
}

/* Four vectors of 8 int32 (each within int8 range) -> 32 bytes in order. */
static inline void store_i8x32(int8_t *dst, __m256i a, __m256i b, __m256i c, __m256i d)
{
	__m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
	p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
	_mm256_storeu_si256((__m256i *)dst, p);
}

/* 8 bytes -> 8 floats */
static inline __m256 i8x8_ps(const void *p)
{
	return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* ------------------------------------------------------------------ dequantization */

static void dq_f16(const void *src, float *dst, int64_t n)
{
	const uint16_t *s = src;
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
	for (; i < n; i++)
		dst[i] = f16(s[i]);
}

static inline __m256 bf16x8_ps(const uint16_t *s)
{
	__m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)s));
	return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static void dq_bf16(const void *src, float *dst, int64_t n)
{
	const uint16_t *s = src;
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dst + i, bf16x8_ps(s + i));
	for (; i < n; i++)
		dst[i] = qd_bf16_to_f32(s[i]);
}

static void dq_q8_0(const void *src, float *dst, int64_t n)
{
	const BlockQ8_0 *b = src;
	for (int64_t i = 0; i < n / QD_QK; i++, dst += QD_QK) {
		__m256 d = _mm256_set1_ps(f16(b[i].d));
		for (int j = 0; j < QD_QK; j += 8)
			_mm256_storeu_ps(dst + j, _mm256_mul_ps(i8x8_ps(b[i].qs + j), d));
	}
}

static void dq_q4_0(const void *src, float *dst, int64_t n)
{
	const BlockQ4_0 *b = src;
	int8_t q[QD_QK];
	for (int64_t i = 0; i < n / QD_QK; i++, dst += QD_QK) {
		__m256 d = _mm256_set1_ps(f16(b[i].d));
		_mm256_storeu_si256((__m256i *)q, _mm256_sub_epi8(nibbles32(b[i].qs), _mm256_set1_epi8(8)));
		for (int j = 0; j < QD_QK; j += 8)
			_mm256_storeu_ps(dst + j, _mm256_mul_ps(i8x8_ps(q + j), d));
	}
}

static void dq_q4_1(const void *src, float *dst, int64_t n)
{
	const BlockQ4_1 *b = src;
	int8_t q[QD_QK];
	for (int64_t i = 0; i < n / QD_QK; i++, dst += QD_QK) {
		__m256 d = _mm256_set1_ps(f16(b[i].d)), m = _mm256_set1_ps(f16(b[i].m));
		_mm256_storeu_si256((__m256i *)q, nibbles32(b[i].qs));
		for (int j = 0; j < QD_QK; j += 8)
			_mm256_storeu_ps(dst + j, _mm256_add_ps(_mm256_mul_ps(i8x8_ps(q + j), d), m));
	}
}

/* The 8 six-bit scales (bytes 0-7) and mins (bytes 8-15) of a Q4_K block; see
 * q4k_scale_min() in quant_internal.h for the packing. */
static inline __m128i q4k_scales_mins(const uint8_t *s)
{
	uint32_t u[3];
	memcpy(u, s, 12);
	uint32_t sc_lo = u[0] & 0x3f3f3f3f, mn_lo = u[1] & 0x3f3f3f3f;
	uint32_t sc_hi = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
	uint32_t mn_hi = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
	return _mm_set_epi32((int)mn_hi, (int)mn_lo, (int)sc_hi, (int)sc_lo);
}

static void dq_q4_k(const void *src, float *dst, int64_t n)
{
	const BlockQ4_K *b = src;
	uint8_t sm[16];
	int8_t q[64];
	for (int64_t i = 0; i < n / QD_QK_K; i++) {
		float d = f16(b[i].d), dmin = f16(b[i].dmin);
		_mm_storeu_si128((__m128i *)sm, q4k_scales_mins(b[i].scales));
		for (int c = 0; c < 4; c++) {
			__m256i v = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * c));
			__m256i m4 = _mm256_set1_epi8(0x0f);
			_mm256_storeu_si256((__m256i *)q, _mm256_and_si256(v, m4));
			_mm256_storeu_si256((__m256i *)(q + 32), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
			for (int h = 0; h < 2; h++) {
				int j = 2 * c + h;
				__m256 d1 = _mm256_set1_ps(d * (float)sm[j]), m1 = _mm256_set1_ps(dmin * (float)sm[8 + j]);
				for (int l = 0; l < 32; l += 8, dst += 8)
					_mm256_storeu_ps(dst, _mm256_sub_ps(_mm256_mul_ps(d1, i8x8_ps(q + 32 * h + l)), m1));
			}
		}
	}
}

/* The four 32-byte rows of 6-bit values (0..63) of one 128-element half of a Q6_K block:
 * quarter k holds elements 32k..32k+31 of the half. */
static inline void q6k_half(const BlockQ6_K *b, int h, __m256i ret[4])
{
	const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
	__m256i l0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
	__m256i l1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
	__m256i hb = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
	/* 16-bit shifts leak bits between bytes; the masks keep only each byte's own */
	ret[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
	ret[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
	ret[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30));
	ret[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
				 _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
}

static void dq_q6_k(const void *src, float *dst, int64_t n)
{
	const BlockQ6_K *b = src;
	int8_t q[32];
	for (int64_t i = 0; i < n / QD_QK_K; i++) {
		float d = f16(b[i].d);
		for (int h = 0; h < 2; h++) {
			__m256i v[4];
			q6k_half(&b[i], h, v);
			for (int k = 0; k < 4; k++, dst += 32) {
				_mm256_storeu_si256((__m256i *)q, _mm256_sub_epi8(v[k], _mm256_set1_epi8(32)));
				for (int g = 0; g < 2; g++) {
					/* (d * scale) * q, rounded twice like the reference */
					__m256 ds = _mm256_set1_ps(d * (float)b[i].scales[8 * h + 2 * k + g]);
					_mm256_storeu_ps(dst + 16 * g, _mm256_mul_ps(ds, i8x8_ps(q + 16 * g)));
					_mm256_storeu_ps(dst + 16 * g + 8, _mm256_mul_ps(ds, i8x8_ps(q + 16 * g + 8)));
				}
			}
		}
	}
}

static void dq_q8_k(const void *src, float *dst, int64_t n)
{
	const BlockQ8_K *b = src;
	for (int64_t i = 0; i < n / QD_QK_K; i++) {
		__m256 d = _mm256_set1_ps(b[i].d);
		for (int j = 0; j < QD_QK_K; j += 8, dst += 8)
			_mm256_storeu_ps(dst, _mm256_mul_ps(d, i8x8_ps(b[i].qs + j)));
	}
}

/* -------------------------------------------------------------------- quantization */

static void q_f16(const float *src, void *dst, int64_t n)
{
	uint16_t *d = dst;
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(d + i),
				 _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
	for (; i < n; i++)
		d[i] = to_f16(src[i]);
}

/* qd_f32_to_bf16 on 8 lanes: round to nearest even, NaN kept quiet. */
static void q_bf16(const float *src, void *dst, int64_t n)
{
	uint16_t *d = dst;
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256i x = _mm256_castps_si256(_mm256_loadu_ps(src + i));
		__m256i odd = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
		__m256i r = _mm256_srli_epi32(_mm256_add_epi32(x, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
		__m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff)),
						 _mm256_set1_epi32(0x7f800000));
		__m256i qn = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(64));
		r = _mm256_blendv_epi8(r, qn, nan);
		__m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), _MM_SHUFFLE(3, 1, 2, 0));
		_mm_storeu_si128((__m128i *)(d + i), _mm256_castsi256_si128(p));
	}
	for (; i < n; i++)
		d[i] = qd_f32_to_bf16(src[i]);
}

/* One block of 32 to Q8_0 levels, as the reference: d = amax/127, q = roundf(x/d).
 * Returns d and the sum of the levels. */
static inline float q8_block(const float *x, int8_t *qs, int *ret_sum)
{
	__m256 v[4];
	for (int k = 0; k < 4; k++)
		v[k] = _mm256_loadu_ps(x + 8 * k);
	__m256 am = _mm256_max_ps(_mm256_max_ps(abs_ps(v[0]), abs_ps(v[1])), _mm256_max_ps(abs_ps(v[2]), abs_ps(v[3])));
	const float amax = hmax_ps(am);
	const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
	__m256 vid = _mm256_set1_ps(id);
	__m256i q[4];
	for (int k = 0; k < 4; k++)
		q[k] = _mm256_cvtps_epi32(round_away(_mm256_mul_ps(v[k], vid)));
	store_i8x32(qs, q[0], q[1], q[2], q[3]);
	*ret_sum = hsum_i32_8(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
	return d;
}

static void q_q8_0(const float *x, void *dst, int64_t n)
{
	BlockQ8_0 *y = dst;
	int sum;
	for (int64_t i = 0; i < n / QD_QK; i++, x += QD_QK)
		y[i].d = to_f16(q8_block(x, y[i].qs, &sum));
}

static void q_q8_1(const float *x, void *dst, int64_t n)
{
	BlockQ8_1 *y = dst;
	int sum;
	for (int64_t i = 0; i < n / QD_QK; i++, x += QD_QK) {
		float d = q8_block(x, y[i].qs, &sum);
		y[i].d = to_f16(d);
		y[i].s = to_f16((float)sum * d);
	}
}

static void q_q8_k(const float *x, void *dst, int64_t n)
{
	BlockQ8_K *y = dst;
	for (int64_t i = 0; i < n / QD_QK_K; i++, x += QD_QK_K) {
		__m256 am = _mm256_setzero_ps();
		for (int j = 0; j < QD_QK_K; j += 8)
			am = _mm256_max_ps(am, abs_ps(_mm256_loadu_ps(x + j)));
		const float amax = hmax_ps(am);
		if (!amax) {
			memset(&y[i], 0, sizeof y[i]);
			continue;
		}
		/* the reference scales by the first value of largest magnitude, sign included */
		float max = 0;
		for (int j = 0; j < QD_QK_K; j += 8) {
			__m256 eq = _mm256_cmp_ps(abs_ps(_mm256_loadu_ps(x + j)), _mm256_set1_ps(amax), _CMP_EQ_OQ);
			int mask = _mm256_movemask_ps(eq);
			if (mask) {
				max = x[j + __builtin_ctz((unsigned)mask)];
				break;
			}
		}
		const float iscale = -127.0f / max;
		__m256 vs = _mm256_set1_ps(iscale);
		__m256i lim = _mm256_set1_epi32(127), sums[8];
		for (int c = 0; c < 8; c++) {
			__m256i q[4];
			for (int k = 0; k < 4; k++) /* cvtps rounds half to even, as nearest_int */
				q[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 32 * c + 8 * k), vs)), lim);
			store_i8x32(y[i].qs + 32 * c, q[0], q[1], q[2], q[3]);
			/* sums of 4: lane 0 holds group 2c's, lane 1 group 2c+1's */
			__m256i b = _mm256_loadu_si256((const __m256i *)(y[i].qs + 32 * c));
			sums[c] = dot_u8_i8(_mm256_set1_epi8(1), b);
		}
		for (int c = 0; c < 8; c += 4) {
			__m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(sums[c], sums[c + 1]),
						      _mm256_hadd_epi32(sums[c + 2], sums[c + 3]));
			h = _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
			__m128i p = _mm_packs_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
			_mm_storeu_si128((__m128i *)(y[i].bsums + 2 * c), p);
		}
		y[i].d = 1 / iscale;
	}
}

/* ------------------------------------------------------------------- dot products */

static void dot_f32(int64_t n, const void *w, const void *x, float *ret)
{
	const float *a = w, *b = x;
	__m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
	int64_t i = 0;
	for (; i + 32 <= n; i += 32) {
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
		s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
		s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
	}
	for (; i + 8 <= n; i += 8)
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
	float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
	for (; i < n; i++)
		sum += a[i] * b[i];
	*ret = sum;
}

static inline __m256 f16x8_ps(const uint16_t *p)
{
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static void dot_f16(int64_t n, const void *w, const void *x, float *ret)
{
	const uint16_t *a = w, *b = x;
	__m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
	int64_t i = 0;
	for (; i + 32 <= n; i += 32) {
		s0 = _mm256_fmadd_ps(f16x8_ps(a + i), f16x8_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(f16x8_ps(a + i + 8), f16x8_ps(b + i + 8), s1);
		s2 = _mm256_fmadd_ps(f16x8_ps(a + i + 16), f16x8_ps(b + i + 16), s2);
		s3 = _mm256_fmadd_ps(f16x8_ps(a + i + 24), f16x8_ps(b + i + 24), s3);
	}
	for (; i + 8 <= n; i += 8)
		s0 = _mm256_fmadd_ps(f16x8_ps(a + i), f16x8_ps(b + i), s0);
	float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
	for (; i < n; i++)
		sum += f16(a[i]) * f16(b[i]);
	*ret = sum;
}

static void dot_bf16(int64_t n, const void *w, const void *x, float *ret)
{
	const uint16_t *a = w, *b = x;
	__m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
	int64_t i = 0;
	for (; i + 32 <= n; i += 32) {
		s0 = _mm256_fmadd_ps(bf16x8_ps(a + i), bf16x8_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(bf16x8_ps(a + i + 8), bf16x8_ps(b + i + 8), s1);
		s2 = _mm256_fmadd_ps(bf16x8_ps(a + i + 16), bf16x8_ps(b + i + 16), s2);
		s3 = _mm256_fmadd_ps(bf16x8_ps(a + i + 24), bf16x8_ps(b + i + 24), s3);
	}
	for (; i + 8 <= n; i += 8)
		s0 = _mm256_fmadd_ps(bf16x8_ps(a + i), bf16x8_ps(b + i), s0);
	float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
	for (; i < n; i++)
		sum += qd_bf16_to_f32(a[i]) * qd_bf16_to_f32(b[i]);
	*ret = sum;
}

/* The 32-element block products run two blocks per iteration: the four f16 scales of a
 * pair (weight and activation, two blocks) go through one vcvtph2ps, and the pair's two
 * products accumulate into separate registers. */

/* Two u32 pairs of halves (a0 a1 | b0 b1 from one block pair, c0 c1 | d0 d1 from the next)
 * -> floats [a0 a1 b0 b1 c0 c1 d0 d1], and the products a0*b0, a1*b1, c0*d0, c1*d1 in lanes
 * 0, 1, 4, 5 of the result. */
static inline __m256 half_products(uint32_t a, uint32_t b, uint32_t c, uint32_t d)
{
	__m256 v = _mm256_cvtph_ps(_mm_setr_epi32((int)a, (int)b, (int)c, (int)d));
	return _mm256_mul_ps(v, _mm256_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
}

static void dot_q8_0(int64_t n, const void *w, const void *x, float *ret)
{
	const BlockQ8_0 *a = w, *b = x;
	const int64_t nb = n / QD_QK;
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	int64_t i = 0;
	for (; i + 2 <= nb; i += 2) {
		__m256 sc = half_products(a[i].d, b[i].d, a[i + 1].d, b[i + 1].d);
		__m256i p0 = dot_i8_i8(_mm256_loadu_si256((const __m256i *)a[i].qs), _mm256_loadu_si256((const __m256i *)b[i].qs));
		__m256i p1 = dot_i8_i8(_mm256_loadu_si256((const __m256i *)a[i + 1].qs),
				       _mm256_loadu_si256((const __m256i *)b[i + 1].qs));
		acc0 = _mm256_fmadd_ps(lane(sc, 0), _mm256_cvtepi32_ps(p0), acc0);
		acc1 = _mm256_fmadd_ps(lane(sc, 4), _mm256_cvtepi32_ps(p1), acc1);
	}
	for (; i < nb; i++) {
		__m256i p = dot_i8_i8(_mm256_loadu_si256((const __m256i *)a[i].qs), _mm256_loadu_si256((const __m256i *)b[i].qs));
		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * f16(b[i].d)), _mm256_cvtepi32_ps(p), acc0);
	}
	*ret = hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* (nib - 8) . y as nib . y - 8 . y in int16 (|each| <= 15*127*2), one madd for both. */
static inline __m256i dot_q4_0_block(const uint8_t *qs, __m256i y)
{
	__m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(nibbles32(qs), y),
				     _mm256_maddubs_epi16(_mm256_set1_epi8(8), y));
	return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

static void dot_q4_0(int64_t n, const void *w, const void *x, float *ret)
{
	const BlockQ4_0 *a = w;
	const BlockQ8_0 *b = x;
	const int64_t nb = n / QD_QK;
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	int64_t i = 0;
	for (; i + 2 <= nb; i += 2) {
		__m256 sc = half_products(a[i].d, b[i].d, a[i + 1].d, b[i + 1].d);
		__m256i p0 = dot_q4_0_block(a[i].qs, _mm256_loadu_si256((const __m256i *)b[i].qs));
		__m256i p1 = dot_q4_0_block(a[i + 1].qs, _mm256_loadu_si256((const __m256i *)b[i + 1].qs));
		acc0 = _mm256_fmadd_ps(lane(sc, 0), _mm256_cvtepi32_ps(p0), acc0);
		acc1 = _mm256_fmadd_ps(lane(sc, 4), _mm256_cvtepi32_ps(p1), acc1);
	}
	for (; i < nb; i++) {
		__m256i p = dot_q4_0_block(a[i].qs, _mm256_loadu_si256((const __m256i *)b[i].qs));
		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * f16(b[i].d)), _mm256_cvtepi32_ps(p), acc0);
	}
	*ret = hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* Two blocks' byte products (16 int16 each, from maddubs) -> floats [A A B B | A A B B]:
 * phaddw adds neighbours of both at once, so one madd, one convert and one FMA serve the
 * pair; the scales must be [a a b b | a a b b] to match. */
static inline __m256 pair_sums(__m256i pa, __m256i pb)
{
	return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_hadd_epi16(pa, pb), _mm256_set1_epi16(1)));
}

/* One Q4_1 x Q8_1 block pair into acc, its m*s terms into accm (lanes 1, 5 of the half
 * products). */
static inline void q4_1_pair(const BlockQ4_1 *a, const BlockQ8_1 *b, __m256 *acc, __m256 *accm)
{
	const __m256 mlanes = _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, 0, 0, 0, -1, 0, 0));
	__m256 sc = half_products(ld32(&a[0].d), ld32(&b[0].d), ld32(&a[1].d), ld32(&b[1].d));
	__m256i p0 = _mm256_maddubs_epi16(nibbles32(a[0].qs), _mm256_loadu_si256((const __m256i *)b[0].qs));
	__m256i p1 = _mm256_maddubs_epi16(nibbles32(a[1].qs), _mm256_loadu_si256((const __m256i *)b[1].qs));
	__m256 s2 = _mm256_permutevar8x32_ps(sc, _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4));
	*acc = _mm256_fmadd_ps(s2, pair_sums(p0, p1), *acc);
	*accm = _mm256_add_ps(*accm, _mm256_and_ps(sc, mlanes));
}

static void dot_q4_1(int64_t n, const void *w, const void *x, float *ret)
{
	const BlockQ4_1 *a = w;
	const BlockQ8_1 *b = x;
	const int64_t nb = n / QD_QK;
	__m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, accm0 = acc0, accm1 = acc0;
	int64_t i = 0;
	for (; i + 4 <= nb; i += 4) {
		q4_1_pair(a + i, b + i, &acc0, &accm0);
		q4_1_pair(a + i + 2, b + i + 2, &acc1, &accm1);
	}
	if (i + 2 <= nb) {
		q4_1_pair(a + i, b + i, &acc0, &accm0);
		i += 2;
	}
	float summ = hsum_ps(_mm256_add_ps(accm0, accm1));
	if (i < nb) {
		__m256i p = dot_u8_i8(nibbles32(a[i].qs), _mm256_loadu_si256((const __m256i *)b[i].qs));
		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * f16(b[i].d)), _mm256_cvtepi32_ps(p), acc0);
		summ += f16(a[i].m) * f16(b[i].s);
	}
	*ret = hsum_ps(_mm256_add_ps(acc0, acc1)) + summ;
}

/* pshufb control that broadcasts int16 element j of each 128-bit lane */
static inline __m256i bcast16(int j)
{
	return _mm256_set1_epi16((short)(((2 * j + 1) << 8) | (2 * j)));
}

static void dot_q4_k(int64_t n, const void *w, const void *x, float *ret)
{
	const BlockQ4_K *a = w;
	const BlockQ8_K *b = x;
	const __m256i m4 = _mm256_set1_epi8(0x0f);
	__m256 acc = _mm256_setzero_ps();
	float accm = 0;
	for (int64_t i = 0; i < n / QD_QK_K; i++) {
		__m256i sm = _mm256_cvtepu8_epi16(q4k_scales_mins(a[i].scales)); /* 8 scales, 8 mins */
		/* mins against the activation's sums per 32 (adjacent bsums added) */
		__m128i bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)b[i].bsums),
					    _mm_loadu_si128((const __m128i *)(b[i].bsums + 8)));
		int msum = hsum_i32_4(_mm_madd_epi16(_mm256_extracti128_si256(sm, 1), bs));
		__m256i sc = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
		__m256i sumi = _mm256_setzero_si256();
		for (int c = 0; c < 4; c++) {
			__m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c));
			__m256i y0 = _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * c));
			__m256i y1 = _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * c + 32));
			__m256i p0 = _mm256_maddubs_epi16(_mm256_and_si256(q, m4), y0);
			__m256i p1 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), y1);
			p0 = _mm256_madd_epi16(p0, _mm256_shuffle_epi8(sc, bcast16(2 * c)));
			p1 = _mm256_madd_epi16(p1, _mm256_shuffle_epi8(sc, bcast16(2 * c + 1)));
			sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
		}
		acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * b[i].d), _mm256_cvtepi32_ps(sumi), acc);
		accm += f16(a[i].dmin) * b[i].d * (float)msum;
	}
	*ret = hsum_ps(acc) - accm;
}

/* sum((q-32)*y*sc) = sum(q*y*sc) - 32*sum(sc*bsum): the unsigned 6-bit q goes straight
 * into maddubs and the offset comes from the activation's sums per 16. */
static void dot_q6_k(int64_t n, const void *w, const void *x, float *ret)
{
	const BlockQ6_K *a = w;
	const BlockQ8_K *b = x;
	__m256 acc = _mm256_setzero_ps();
	for (int64_t i = 0; i < n / QD_QK_K; i++) {
		__m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a[i].scales));
		__m256i off = _mm256_madd_epi16(sc, _mm256_loadu_si256((const __m256i *)b[i].bsums));
		__m256i sumi = _mm256_setzero_si256();
		/* scales 8h..8h+7 in both lanes; below lane 0 takes group 2k, lane 1 group 2k+1 */
		const __m256i sc_half[2] = { _mm256_permute2x128_si256(sc, sc, 0x00),
					     _mm256_permute2x128_si256(sc, sc, 0x11) };
		for (int h = 0; h < 2; h++) {
			__m256i q[4], sch = sc_half[h];
			q6k_half(&a[i], h, q);
			for (int k = 0; k < 4; k++) {
				__m256i y = _mm256_loadu_si256((const __m256i *)(b[i].qs + 128 * h + 32 * k));
				__m256i shuf = _mm256_set_m128i(_mm256_castsi256_si128(bcast16(2 * k + 1)),
								_mm256_castsi256_si128(bcast16(2 * k)));
				__m256i p = _mm256_maddubs_epi16(q[k], y);
				sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_shuffle_epi8(sch, shuf)));
			}
		}
		sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(off, 5));
		acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * b[i].d), _mm256_cvtepi32_ps(sumi), acc);
	}
	*ret = hsum_ps(acc);
}

/* ----------------------------------------------------------------------- tables */

KbDequantFn kb_avx2_dequantize_fn(int type)
{
	switch (type) {
	case QD_TYPE_F16: return dq_f16;
	case QD_TYPE_BF16: return dq_bf16;
	case QD_TYPE_Q8_0: return dq_q8_0;
	case QD_TYPE_Q4_0: return dq_q4_0;
	case QD_TYPE_Q4_1: return dq_q4_1;
	case QD_TYPE_Q4_K: return dq_q4_k;
	case QD_TYPE_Q6_K: return dq_q6_k;
	case QD_TYPE_Q8_K: return dq_q8_k;
	default: return NULL; /* F32 is a copy either way */
	}
}

/* ------------------------------------------------------------ Q4_K quantization
 *
 * The reference fits each of a super-block's 8 groups of 32 on its own (qkx2_fit in quant.c:
 * 21 candidate level spacings, each a weighted least-squares pass over the group).  Here the
 * 8 groups are the 8 lanes: lane j walks group j's values in the same order, with the same
 * float operations, so every sum rounds as the reference's does and the bytes are the same.
 * Only the loop over the values is shared. */

static inline __m256i nearest_int_v(__m256 f)
{
	__m256i i = _mm256_castps_si256(_mm256_add_ps(f, _mm256_set1_ps(12582912.f)));
	return _mm256_sub_epi32(_mm256_and_si256(i, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
}

static inline __m256i clamp_levels(__m256i l, int nmax)
{
	return _mm256_max_epi32(_mm256_setzero_si256(), _mm256_min_epi32(l, _mm256_set1_epi32(nmax)));
}

/* xt[i] = value i of each of the 8 groups; returns scale per lane, -min in *ret_min, levels
 * in L[i] (lane j: level of value i of group j). */
static __m256 qkx2_fit8(const __m256 *xt, const __m256 *w, __m256i *L, __m256 *ret_min)
{
	const int nmax = 15, nstep = 20;
	const float rmin = -1.0f, rdelta = 0.1f;
	__m256 mn = xt[0], mx = xt[0], sum_w = w[0], sum_x = _mm256_mul_ps(sum_w, xt[0]);
	for (int i = 1; i < 32; i++) {
		mn = _mm256_min_ps(xt[i], mn); /* x < min ? x : min, as the reference's if */
		mx = _mm256_max_ps(xt[i], mx);
		sum_w = _mm256_add_ps(sum_w, w[i]);
		sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(w[i], xt[i]));
	}
	const __m256 zero = _mm256_setzero_ps();
	mn = _mm256_blendv_ps(mn, zero, _mm256_cmp_ps(mn, zero, _CMP_GT_OQ));
	const __m256 flat = _mm256_cmp_ps(mx, mn, _CMP_EQ_OQ);
	__m256 iscale = _mm256_div_ps(_mm256_set1_ps((float)nmax), _mm256_sub_ps(mx, mn));
	__m256 scale = _mm256_div_ps(_mm256_set1_ps(1.0f), iscale), min = mn, best = zero;
	for (int i = 0; i < 32; i++) {
		L[i] = clamp_levels(nearest_int_v(_mm256_mul_ps(iscale, _mm256_sub_ps(xt[i], mn))), nmax);
		__m256 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, _mm256_cvtepi32_ps(L[i])), min), xt[i]);
		best = _mm256_add_ps(best, _mm256_mul_ps(w[i], _mm256_mul_ps(diff, diff)));
	}
	__m256i Laux[32];
	for (int is = 0; is <= nstep; is++) {
		const float c = rmin + rdelta * (float)is + (float)nmax;
		/* the reference measures from the best min so far, not the group's own min */
		iscale = _mm256_div_ps(_mm256_set1_ps(c), _mm256_sub_ps(mx, min));
		__m256 sum_l = zero, sum_l2 = zero, sum_xl = zero;
		for (int i = 0; i < 32; i++) {
			Laux[i] = clamp_levels(nearest_int_v(_mm256_mul_ps(iscale, _mm256_sub_ps(xt[i], min))), nmax);
			__m256 wl = _mm256_mul_ps(w[i], _mm256_cvtepi32_ps(Laux[i]));
			sum_l = _mm256_add_ps(sum_l, wl);
			sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, _mm256_cvtepi32_ps(Laux[i])));
			sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, xt[i]));
		}
		__m256 D = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
		__m256 ok = _mm256_cmp_ps(D, zero, _CMP_GT_OQ);
		if (!_mm256_movemask_ps(ok))
			continue;
		__m256 ts = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)), D);
		__m256 tm = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)), D);
		__m256 pos = _mm256_cmp_ps(tm, zero, _CMP_GT_OQ);
		ts = _mm256_blendv_ps(ts, _mm256_div_ps(sum_xl, sum_l2), pos);
		tm = _mm256_blendv_ps(tm, zero, pos);
		__m256 err = zero;
		for (int i = 0; i < 32; i++) {
			__m256 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(ts, _mm256_cvtepi32_ps(Laux[i])), tm), xt[i]);
			err = _mm256_add_ps(err, _mm256_mul_ps(w[i], _mm256_mul_ps(diff, diff)));
		}
		__m256 take = _mm256_and_ps(ok, _mm256_cmp_ps(err, best, _CMP_LT_OQ));
		if (!_mm256_movemask_ps(take))
			continue;
		__m256i ti = _mm256_castps_si256(take);
		for (int i = 0; i < 32; i++)
			L[i] = _mm256_blendv_epi8(L[i], Laux[i], ti);
		best = _mm256_blendv_ps(best, err, take);
		scale = _mm256_blendv_ps(scale, ts, take);
		min = _mm256_blendv_ps(min, tm, take);
	}
	/* a flat group: all levels 0, scale 0, min as it is */
	__m256i fi = _mm256_castps_si256(flat);
	for (int i = 0; i < 32; i++)
		L[i] = _mm256_andnot_si256(fi, L[i]);
	scale = _mm256_andnot_ps(flat, scale);
	min = _mm256_blendv_ps(min, mn, flat);
	*ret_min = _mm256_sub_ps(zero, min);
	return scale;
}

static void q_q4_k(const float *x, void *dst, int64_t n)
{
	BlockQ4_K *y = dst;
	const __m256i gidx = _mm256_setr_epi32(0, 32, 64, 96, 128, 160, 192, 224);
	for (int64_t i = 0; i < n / QD_QK_K; i++, x += QD_QK_K) {
		__m256 xt[32], w[32], sum_x2 = _mm256_setzero_ps(), vmin;
		__m256i Lv[32];
		for (int l = 0; l < 32; l++) {
			xt[l] = _mm256_i32gather_ps(x + l, gidx, 4);
			sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(xt[l], xt[l]));
		}
		/* weights: the group's rms plus each value's magnitude */
		__m256 av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.0f)));
		for (int l = 0; l < 32; l++)
			w[l] = _mm256_add_ps(av_x, abs_ps(xt[l]));
		float scales[8], mins[8];
		_mm256_storeu_ps(scales, qkx2_fit8(xt, w, Lv, &vmin));
		_mm256_storeu_ps(mins, vmin);
		int32_t L[8][32];
		for (int l = 0; l < 32; l++) {
			int32_t t[8];
			_mm256_storeu_si256((__m256i *)t, Lv[l]);
			for (int j = 0; j < 8; j++)
				L[j][l] = t[j];
		}
		q4k_set_header(&y[i], scales, mins);
		/* requantize each group against the scales as they will be decoded */
		for (int j = 0; j < 8; j++) {
			int sc, m;
			q4k_scale_min(y[i].scales, j, &sc, &m);
			const float d = qd_f16_to_f32(y[i].d) * (float)sc;
			if (!d)
				continue;
			const __m256 vd = _mm256_set1_ps(d), vdm = _mm256_set1_ps(qd_f16_to_f32(y[i].dmin) * (float)m);
			for (int l = 0; l < 32; l += 8) {
				__m256 v = _mm256_div_ps(_mm256_add_ps(_mm256_loadu_ps(x + 32 * j + l), vdm), vd);
				_mm256_storeu_si256((__m256i *)&L[j][l], clamp_levels(nearest_int_v(v), 15));
			}
		}
		for (int c = 0; c < 4; c++)
			for (int l = 0; l < 32; l++)
				y[i].qs[32 * c + l] = (uint8_t)(L[2 * c][l] | (L[2 * c + 1][l] << 4));
	}
}

KbQuantFn kb_avx2_quantize_fn(int type)
{
	switch (type) {
	case QD_TYPE_F16: return q_f16;
	case QD_TYPE_BF16: return q_bf16;
	case QD_TYPE_Q8_0: return q_q8_0;
	case QD_TYPE_Q8_1: return q_q8_1;
	case QD_TYPE_Q8_K: return q_q8_k;
	case QD_TYPE_Q4_K: return q_q4_k;
	default: return NULL; /* other weight quantizers run offline: the reference is enough */
	}
}

KbVecDotFn kb_avx2_vec_dot_fn(int wtype)
{
	switch (wtype) {
	case QD_TYPE_F32: return dot_f32;
	case QD_TYPE_F16: return dot_f16;
	case QD_TYPE_BF16: return dot_bf16;
	case QD_TYPE_Q8_0: return dot_q8_0;
	case QD_TYPE_Q4_0: return dot_q4_0;
	case QD_TYPE_Q4_1: return dot_q4_1;
	case QD_TYPE_Q4_K: return dot_q4_k;
	case QD_TYPE_Q6_K: return dot_q6_k;
	default: return NULL;
	}
}
