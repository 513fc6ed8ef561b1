/* kernels/cpu/attention_avx2.c: one attention head with F16C loads and FMA: a key row of
 * head_dim f16 values is head_dim/8 converts and FMAs; head_dim must be a multiple of 8
 * (the caller falls back to the reference otherwise). */
#include <immintrin.h>
#include <math.h>

#include "attention.h"

static inline float hsum(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

void kb_attn_head_avx2(const float *q, const uint16_t *k, const uint16_t *v, int len, int64_t stride, int hd,
		       float scale, float *sc, float *out)
{
	if (hd % 8 || hd > 512) {
		kb_attn_head_ref(q, k, v, len, stride, hd, scale, sc, out);
		return;
	}
	const int nv = hd / 8;
	__m256 qv[64];
	for (int j = 0; j < nv; j++) /* round q to f16 like the reference */
		qv[j] = _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(q + 8 * j), _MM_FROUND_TO_NEAREST_INT));
	float mx = -INFINITY;
	for (int p = 0; p < len; p++) {
		const uint16_t *kr = k + (int64_t)p * stride;
		__m256 acc = _mm256_setzero_ps();
		for (int j = 0; j < nv; j++)
			acc = _mm256_fmadd_ps(qv[j], _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kr + 8 * j))), acc);
		sc[p] = hsum(acc) * scale;
		if (sc[p] > mx)
			mx = sc[p];
	}
	double sum = 0;
	for (int p = 0; p < len; p++) {
		sc[p] = expf(sc[p] - mx);
		sum += sc[p];
	}
	const float inv = (float)(1.0 / sum);
	__m256 o[64];
	for (int j = 0; j < nv; j++)
		o[j] = _mm256_setzero_ps();
	for (int p = 0; p < len; p++) {
		const uint16_t *vr = v + (int64_t)p * stride;
		const __m256 w = _mm256_set1_ps(sc[p] * inv);
		for (int j = 0; j < nv; j++)
			o[j] = _mm256_fmadd_ps(w, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vr + 8 * j))), o[j]);
	}
	for (int j = 0; j < nv; j++)
		_mm256_storeu_ps(out + 8 * j, o[j]);
}
