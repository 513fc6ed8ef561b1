/* kernels/cpu/simd_avx2.h: small AVX2/F16C helpers shared by the *_avx2.c files.
 * Include it only from files built with -mavx2 -mfma -mf16c. */
#ifndef QD_KERNELS_CPU_SIMD_AVX2_H
#define QD_KERNELS_CPU_SIMD_AVX2_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "../types.h"

static inline float f16(uint16_t h)
{
	return _cvtsh_ss(h);
}

/* F16C rounds to nearest even like qd_f32_to_f16 (identical for every non-NaN input). */
static inline uint16_t to_f16(float f)
{
	return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

static inline float hsum_ps(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

static inline float hmax_ps(__m256 v)
{
	__m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_max_ps(s, _mm_movehl_ps(s, s));
	s = _mm_max_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

static inline int hsum_i32_4(__m128i v)
{
	v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
	v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
	return _mm_cvtsi128_si32(v);
}

static inline int hsum_i32_8(__m256i v)
{
	return hsum_i32_4(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

static inline __m256 abs_ps(__m256 v)
{
	return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

/* 16 bytes of packed nibbles -> 32 bytes: low nibbles (elements 0-15), then high (16-31).
 * One broadcast load; the high lane's 64-bit words shift right by 4, then every byte keeps
 * its low nibble. */
static inline __m256i nibbles32(const uint8_t *qs)
{
	__m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
	b = _mm256_srlv_epi64(b, _mm256_setr_epi64x(0, 0, 4, 4));
	return _mm256_and_si256(b, _mm256_set1_epi8(0x0f));
}

/* sum of u[i]*s[i] over each group of 4 bytes, as 8 int32 */
static inline __m256i dot_u8_i8(__m256i u, __m256i s)
{
	return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* The same for signed a: move a's sign onto b.  a = -128 works (|a| = 128 as unsigned);
 * b = -128 would not, and our quantizers never produce it. */
static inline __m256i dot_i8_i8(__m256i a, __m256i b)
{
	return dot_u8_i8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

static inline uint32_t ld32(const void *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

/* broadcast lane k of v */
static inline __m256 lane(__m256 v, int k)
{
	return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(k));
}

#endif
