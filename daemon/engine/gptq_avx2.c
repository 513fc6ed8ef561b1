/* daemon/engine/gptq_avx2.c: AVX2/FMA inner loops of the GPTQ linear algebra (gptq.c
 * dispatches here when kb_cpu_use_avx2()).  Same contracts as the scalar versions there. */
#include <immintrin.h>
#include <stdint.h>

#include "gptq_internal.h"

void gptq_axpy_avx2(float *y, const float *x, float a, int64_t n)
{
	__m256 va = _mm256_set1_ps(a);
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] += a * x[i];
}

float gptq_dot_avx2(const float *x, const float *y, int64_t n)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), s1);
	}
	s0 = _mm256_add_ps(s0, s1);
	__m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
	h = _mm_add_ps(h, _mm_movehl_ps(h, h));
	h = _mm_add_ss(h, _mm_movehdup_ps(h));
	float s = _mm_cvtss_f32(h);
	for (; i < n; i++)
		s += x[i] * y[i];
	return s;
}

/* H[i][j] += sum_t A[t][i] * A[t][j] for rows i in [i0, i1) (multiples of 4) and columns
 * j < i + 4 in blocks of 16 (d a multiple of 16): 4 x 16 register tiles. */
void gptq_syrk_rows_avx2(float *H, int64_t d, const float *A, int64_t T, int64_t i0, int64_t i1)
{
	for (int64_t i = i0; i < i1; i += 4) {
		for (int64_t j = 0; j < i + 4; j += 16) {
			__m256 c[4][2];
			for (int r = 0; r < 4; r++) {
				c[r][0] = _mm256_setzero_ps();
				c[r][1] = _mm256_setzero_ps();
			}
			for (int64_t t = 0; t < T; t++) {
				const float *a = A + t * d;
				__m256 x0 = _mm256_loadu_ps(a + j), x1 = _mm256_loadu_ps(a + j + 8);
				for (int r = 0; r < 4; r++) {
					__m256 b = _mm256_broadcast_ss(a + i + r);
					c[r][0] = _mm256_fmadd_ps(b, x0, c[r][0]);
					c[r][1] = _mm256_fmadd_ps(b, x1, c[r][1]);
				}
			}
			for (int r = 0; r < 4; r++) {
				float *h = H + (i + r) * d + j;
				_mm256_storeu_ps(h, _mm256_add_ps(_mm256_loadu_ps(h), c[r][0]));
				_mm256_storeu_ps(h + 8, _mm256_add_ps(_mm256_loadu_ps(h + 8), c[r][1]));
			}
		}
	}
}
