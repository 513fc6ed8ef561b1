/* kernels/cpu/quant.c: scalar reference kernels for the block types and the run-time
 * dispatch to the AVX2 versions.
 *
 * The reference code is the definition the SIMD code and the tests are held to.  Its
 * quantizers reproduce ggml's quantize_row_*_ref arithmetic operation for operation (same
 * float expressions in the same order, same tie-breaking in the max searches), because a
 * single different rounding changes the bytes. */

/* The quantizers must evaluate a*b + c as two roundings, like ggml's reference built
 * without FMA; never let the compiler fuse them, whatever -m flags a build adds. */
#pragma GCC optimize("fp-contract=off")

#include "quant.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "quant_internal.h"

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* ggml treats a group whose largest magnitude is below this as all zero. */
#define GROUP_MAX_EPS 1e-15f

/* ------------------------------------------------------------------ dequantization */

static void dq_f32(const void *src, float *dst, int64_t n)
{
	memcpy(dst, src, (size_t)n * sizeof(float));
}

static void dq_f16(const void *src, float *dst, int64_t n)
{
	const uint16_t *s = src;
	for (int64_t i = 0; i < n; i++)
		dst[i] = qd_f16_to_f32(s[i]);
}

static void dq_bf16(const void *src, float *dst, int64_t n)
{
	const uint16_t *s = src;
	for (int64_t i = 0; i < n; i++)
		dst[i] = qd_bf16_to_f32(s[i]);
}

static void dq_q8_0(const void *src, float *dst, int64_t n)
{
	const BlockQ8_0 *b = src;
	for (int64_t i = 0; i < n / QD_QK; i++, dst += QD_QK) {
		float d = qd_f16_to_f32(b[i].d);
		for (int j = 0; j < QD_QK; j++)
			dst[j] = (float)b[i].qs[j] * d;
	}
}

static void dq_q8_1(const void *src, float *dst, int64_t n)
{
	const BlockQ8_1 *b = src;
	for (int64_t i = 0; i < n / QD_QK; i++, dst += QD_QK) {
		float d = qd_f16_to_f32(b[i].d);
		for (int j = 0; j < QD_QK; j++)
			dst[j] = (float)b[i].qs[j] * d;
	}
}

static void dq_q4_0(const void *src, float *dst, int64_t n)
{
	const BlockQ4_0 *b = src;
	for (int64_t i = 0; i < n / QD_QK; i++, dst += QD_QK) {
		float d = qd_f16_to_f32(b[i].d);
		for (int j = 0; j < QD_QK / 2; j++) {
			dst[j] = (float)((b[i].qs[j] & 0x0f) - 8) * d;
			dst[j + QD_QK / 2] = (float)((b[i].qs[j] >> 4) - 8) * d;
		}
	}
}

static void dq_q4_1(const void *src, float *dst, int64_t n)
{
	const BlockQ4_1 *b = src;
	for (int64_t i = 0; i < n / QD_QK; i++, dst += QD_QK) {
		float d = qd_f16_to_f32(b[i].d), m = qd_f16_to_f32(b[i].m);
		for (int j = 0; j < QD_QK / 2; j++) {
			dst[j] = (float)(b[i].qs[j] & 0x0f) * d + m;
			dst[j + QD_QK / 2] = (float)(b[i].qs[j] >> 4) * d + m;
		}
	}
}

static void dq_q4_k(const void *src, float *dst, int64_t n)
{
	const BlockQ4_K *b = src;
	for (int64_t i = 0; i < n / QD_QK_K; i++) {
		float d = qd_f16_to_f32(b[i].d), dmin = qd_f16_to_f32(b[i].dmin);
		for (int j = 0; j < QD_QK_K / 32; j++) {
			int sc, m;
			q4k_scale_min(b[i].scales, j, &sc, &m);
			const float d1 = d * (float)sc, m1 = dmin * (float)m;
			/* sub-block j: nibble j&1 of the 32 bytes at (j/2)*32 */
			const uint8_t *q = b[i].qs + (j / 2) * 32;
			int shift = (j & 1) * 4;
			for (int l = 0; l < 32; l++)
				*dst++ = d1 * (float)((q[l] >> shift) & 0x0f) - m1;
		}
	}
}

/* 6-bit value e (0..255) of a Q6_K block, without the -32 offset.  Within each half of
 * 128, quarter k takes nibble k/2 of ql[64h + 32(k&1) + l] and bits 2k of qh[32h + l]. */
static inline int q6k_value(const BlockQ6_K *b, int e)
{
	int h = e / 128, k = (e % 128) / 32, l = e % 32;
	int lo = (b->ql[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0x0f;
	int hi = (b->qh[32 * h + l] >> (2 * k)) & 3;
	return lo | (hi << 4);
}

static void dq_q6_k(const void *src, float *dst, int64_t n)
{
	const BlockQ6_K *b = src;
	for (int64_t i = 0; i < n / QD_QK_K; i++) {
		float d = qd_f16_to_f32(b[i].d);
		for (int e = 0; e < QD_QK_K; e++)
			*dst++ = d * (float)b[i].scales[e / 16] * (float)(q6k_value(&b[i], e) - 32);
	}
}

static void dq_q8_k(const void *src, float *dst, int64_t n)
{
	const BlockQ8_K *b = src;
	for (int64_t i = 0; i < n / QD_QK_K; i++)
		for (int j = 0; j < QD_QK_K; j++)
			*dst++ = b[i].d * (float)b[i].qs[j];
}

/* -------------------------------------------------------------------- quantization */

static void q_f32(const float *src, void *dst, int64_t n)
{
	memcpy(dst, src, (size_t)n * sizeof(float));
}

static void q_f16(const float *src, void *dst, int64_t n)
{
	uint16_t *d = dst;
	for (int64_t i = 0; i < n; i++)
		d[i] = qd_f32_to_f16(src[i]);
}

static void q_bf16(const float *src, void *dst, int64_t n)
{
	uint16_t *d = dst;
	for (int64_t i = 0; i < n; i++)
		d[i] = qd_f32_to_bf16(src[i]);
}

static void q_q8_0(const float *x, void *dst, int64_t n)
{
	BlockQ8_0 *y = dst;
	for (int64_t i = 0; i < n / QD_QK; i++, x += QD_QK) {
		float amax = 0.0f;
		for (int j = 0; j < QD_QK; j++)
			amax = MAX(amax, fabsf(x[j]));
		const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
		y[i].d = qd_f32_to_f16(d);
		for (int j = 0; j < QD_QK; j++)
			y[i].qs[j] = (int8_t)roundf(x[j] * id);
	}
}

static void q_q8_1(const float *x, void *dst, int64_t n)
{
	BlockQ8_1 *y = dst;
	for (int64_t i = 0; i < n / QD_QK; i++, x += QD_QK) {
		float amax = 0.0f;
		for (int j = 0; j < QD_QK; j++)
			amax = MAX(amax, fabsf(x[j]));
		const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
		int sum = 0;
		for (int j = 0; j < QD_QK; j++) {
			y[i].qs[j] = (int8_t)roundf(x[j] * id);
			sum += y[i].qs[j];
		}
		y[i].d = qd_f32_to_f16(d);
		y[i].s = qd_f32_to_f16((float)sum * d); /* d before its f16 rounding, as ggml */
	}
}

static void q_q4_0(const float *x, void *dst, int64_t n)
{
	BlockQ4_0 *y = dst;
	for (int64_t i = 0; i < n / QD_QK; i++, x += QD_QK) {
		float amax = 0.0f, max = 0.0f; /* max: the signed value of largest magnitude */
		for (int j = 0; j < QD_QK; j++) {
			if (amax < fabsf(x[j])) {
				amax = fabsf(x[j]);
				max = x[j];
			}
		}
		const float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
		y[i].d = qd_f32_to_f16(d);
		for (int j = 0; j < QD_QK / 2; j++) {
			uint8_t a = (uint8_t)MIN(15, (int8_t)(x[j] * id + 8.5f));
			uint8_t b = (uint8_t)MIN(15, (int8_t)(x[j + QD_QK / 2] * id + 8.5f));
			y[i].qs[j] = (uint8_t)(a | (b << 4));
		}
	}
}

static void q_q4_1(const float *x, void *dst, int64_t n)
{
	BlockQ4_1 *y = dst;
	for (int64_t i = 0; i < n / QD_QK; i++, x += QD_QK) {
		float min = FLT_MAX, max = -FLT_MAX;
		for (int j = 0; j < QD_QK; j++) {
			if (x[j] < min)
				min = x[j];
			if (x[j] > max)
				max = x[j];
		}
		const float d = (max - min) / 15.0f, id = d ? 1.0f / d : 0.0f;
		y[i].d = qd_f32_to_f16(d);
		y[i].m = qd_f32_to_f16(min);
		for (int j = 0; j < QD_QK / 2; j++) {
			uint8_t a = (uint8_t)MIN(15, (int8_t)((x[j] - min) * id + 0.5f));
			uint8_t b = (uint8_t)MIN(15, (int8_t)((x[j + QD_QK / 2] - min) * id + 0.5f));
			y[i].qs[j] = (uint8_t)(a | (b << 4));
		}
	}
}

/* Scale and min for one group of n values with levels 0..nmax, minimizing the weighted
 * squared error: start from (max-min)/nmax, then try nstep+1 other level spacings around it
 * and keep the least-squares (scale, min) fit of whichever level assignment errs least.
 * Writes levels to L, -min to *ret_min, returns the scale.  Laux is scratch of n bytes.
 * This is ggml's make_qkx2_quants with use_mad = false, the only form Q4_K uses. */
static float qkx2_fit(int n, int nmax, const float *x, const float *w, uint8_t *L, float *ret_min,
		      uint8_t *Laux, float rmin, float rdelta, int nstep)
{
	float min = x[0], max = x[0];
	float sum_w = w[0], sum_x = sum_w * x[0];
	for (int i = 1; i < n; i++) {
		if (x[i] < min)
			min = x[i];
		if (x[i] > max)
			max = x[i];
		sum_w += w[i];
		sum_x += w[i] * x[i];
	}
	if (min > 0)
		min = 0;
	if (max == min) {
		memset(L, 0, (size_t)n);
		*ret_min = -min;
		return 0.0f;
	}
	float iscale = (float)nmax / (max - min), scale = 1 / iscale, best_err = 0;
	for (int i = 0; i < n; i++) {
		int l = nearest_int(iscale * (x[i] - min));
		L[i] = (uint8_t)MAX(0, MIN(nmax, l));
		float diff = scale * (float)L[i] + min - x[i];
		best_err += w[i] * (diff * diff);
	}
	for (int is = 0; is <= nstep; is++) {
		iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
		float sum_l = 0, sum_l2 = 0, sum_xl = 0;
		for (int i = 0; i < n; i++) {
			int l = nearest_int(iscale * (x[i] - min));
			l = MAX(0, MIN(nmax, l));
			Laux[i] = (uint8_t)l;
			sum_l += w[i] * (float)l;
			sum_l2 += w[i] * (float)l * (float)l;
			sum_xl += w[i] * (float)l * x[i];
		}
		float D = sum_w * sum_l2 - sum_l * sum_l;
		if (!(D > 0))
			continue;
		float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
		float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
		if (this_min > 0) {
			this_min = 0;
			this_scale = sum_xl / sum_l2;
		}
		float err = 0;
		for (int i = 0; i < n; i++) {
			float diff = this_scale * (float)Laux[i] + this_min - x[i];
			err += w[i] * (diff * diff);
		}
		if (err < best_err) {
			memcpy(L, Laux, (size_t)n);
			best_err = err;
			scale = this_scale;
			min = this_min;
		}
	}
	*ret_min = -min;
	return scale;
}

static void q_q4_k(const float *x, void *dst, int64_t n)
{
	BlockQ4_K *y = dst;
	uint8_t L[QD_QK_K], Laux[32];
	float w[32], mins[8], scales[8];
	for (int64_t i = 0; i < n / QD_QK_K; i++, x += QD_QK_K) {
		for (int j = 0; j < 8; j++) {
			const float *xs = x + 32 * j;
			float sum_x2 = 0;
			for (int l = 0; l < 32; l++)
				sum_x2 += xs[l] * xs[l];
			/* weights: the group's rms plus each value's magnitude */
			float av_x = sqrtf(sum_x2 / 32);
			for (int l = 0; l < 32; l++)
				w[l] = av_x + fabsf(xs[l]);
			scales[j] = qkx2_fit(32, 15, xs, w, L + 32 * j, &mins[j], Laux, -1.0f, 0.1f, 20);
		}
		q4k_set_header(&y[i], scales, mins);
		/* requantize each group against the scales as they will be decoded */
		for (int j = 0; j < 8; j++) {
			int sc, m;
			q4k_scale_min(y[i].scales, j, &sc, &m);
			const float d = qd_f16_to_f32(y[i].d) * (float)sc;
			if (!d)
				continue;
			const float dm = qd_f16_to_f32(y[i].dmin) * (float)m;
			for (int l = 0; l < 32; l++) {
				int q = nearest_int((x[32 * j + l] + dm) / d);
				L[32 * j + l] = (uint8_t)MAX(0, MIN(15, q));
			}
		}
		for (int c = 0; c < 4; c++)
			for (int l = 0; l < 32; l++)
				y[i].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
	}
}

/* Symmetric levels -nmax..nmax-1 (stored +nmax in L) for one group, weighted by x^2: the
 * scale of the largest magnitude, then 18 nearby spacings, keeping the least-squares fit
 * that explains most of the weighted energy.  ggml's make_qx_quants(rmse_type 1, no qw). */
static float qx_fit(int n, int nmax, const float *x, int8_t *L)
{
	float max = 0, amax = 0;
	for (int i = 0; i < n; i++) {
		float ax = fabsf(x[i]);
		if (ax > amax) {
			amax = ax;
			max = x[i];
		}
	}
	if (amax < GROUP_MAX_EPS) {
		memset(L, 0, (size_t)n);
		return 0.0f;
	}
	float iscale = (float)-nmax / max, sumlx = 0, suml2 = 0;
	for (int i = 0; i < n; i++) {
		int l = nearest_int(iscale * x[i]);
		l = MAX(-nmax, MIN(nmax - 1, l));
		L[i] = (int8_t)(l + nmax);
		float w = x[i] * x[i];
		sumlx += w * x[i] * (float)l;
		suml2 += w * (float)l * (float)l;
	}
	float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
	for (int is = -9; is <= 9; is++) {
		if (is == 0)
			continue;
		iscale = -((float)nmax + 0.1f * (float)is) / max;
		sumlx = suml2 = 0;
		for (int i = 0; i < n; i++) {
			int l = nearest_int(iscale * x[i]);
			l = MAX(-nmax, MIN(nmax - 1, l));
			float w = x[i] * x[i];
			sumlx += w * x[i] * (float)l;
			suml2 += w * (float)l * (float)l;
		}
		if (suml2 > 0 && sumlx * sumlx > best * suml2) {
			for (int i = 0; i < n; i++) {
				int l = nearest_int(iscale * x[i]);
				L[i] = (int8_t)(nmax + MAX(-nmax, MIN(nmax - 1, l)));
			}
			scale = sumlx / suml2;
			best = scale * sumlx;
		}
	}
	return scale;
}

static void q_q6_k(const float *x, void *dst, int64_t n)
{
	BlockQ6_K *y = dst;
	int8_t L[QD_QK_K];
	float scales[16];
	for (int64_t i = 0; i < n / QD_QK_K; i++, x += QD_QK_K) {
		float max_scale = 0, max_abs_scale = 0;
		for (int g = 0; g < 16; g++) {
			scales[g] = qx_fit(16, 32, x + 16 * g, L + 16 * g);
			if (fabsf(scales[g]) > max_abs_scale) {
				max_abs_scale = fabsf(scales[g]);
				max_scale = scales[g];
			}
		}
		if (max_abs_scale < GROUP_MAX_EPS) {
			memset(&y[i], 0, sizeof y[i]);
			continue;
		}
		float iscale = -128.0f / max_scale;
		y[i].d = qd_f32_to_f16(1 / iscale);
		for (int g = 0; g < 16; g++)
			y[i].scales[g] = (int8_t)MIN(127, nearest_int(iscale * scales[g]));
		for (int g = 0; g < 16; g++) {
			float d = qd_f16_to_f32(y[i].d) * (float)y[i].scales[g];
			if (!d)
				continue;
			for (int l = 0; l < 16; l++) {
				int q = nearest_int(x[16 * g + l] / d);
				L[16 * g + l] = (int8_t)(MAX(-32, MIN(31, q)) + 32);
			}
		}
		memset(y[i].ql, 0, sizeof y[i].ql);
		memset(y[i].qh, 0, sizeof y[i].qh);
		for (int e = 0; e < QD_QK_K; e++) { /* the inverse of q6k_value() */
			int h = e / 128, k = (e % 128) / 32, l = e % 32, v = L[e];
			y[i].ql[64 * h + 32 * (k & 1) + l] |= (uint8_t)((v & 0x0f) << (4 * (k >> 1)));
			y[i].qh[32 * h + l] |= (uint8_t)((v >> 4) << (2 * k));
		}
	}
}

static void q_q8_k(const float *x, void *dst, int64_t n)
{
	BlockQ8_K *y = dst;
	for (int64_t i = 0; i < n / QD_QK_K; i++, x += QD_QK_K) {
		float max = 0, amax = 0;
		for (int j = 0; j < QD_QK_K; j++) {
			float ax = fabsf(x[j]);
			if (ax > amax) {
				amax = ax;
				max = x[j];
			}
		}
		if (!amax) {
			/* ggml leaves bsums unwritten here; zero them so the bytes are defined */
			memset(&y[i], 0, sizeof y[i]);
			continue;
		}
		const float iscale = -127.0f / max;
		for (int j = 0; j < QD_QK_K; j++)
			y[i].qs[j] = (int8_t)MIN(127, nearest_int(iscale * x[j]));
		for (int g = 0; g < QD_QK_K / 16; g++) {
			int sum = 0;
			for (int l = 0; l < 16; l++)
				sum += y[i].qs[16 * g + l];
			y[i].bsums[g] = (int16_t)sum;
		}
		y[i].d = 1 / iscale;
	}
}

/* ------------------------------------------------------------------- dot products */

static void dot_f32(int64_t n, const void *w, const void *x, float *ret)
{
	const float *a = w, *b = x;
	double sum = 0;
	for (int64_t i = 0; i < n; i++)
		sum += (double)a[i] * (double)b[i];
	*ret = (float)sum;
}

static void dot_f16(int64_t n, const void *w, const void *x, float *ret)
{
	const uint16_t *a = w, *b = x;
	double sum = 0;
	for (int64_t i = 0; i < n; i++)
		sum += (double)qd_f16_to_f32(a[i]) * (double)qd_f16_to_f32(b[i]);
	*ret = (float)sum;
}

static void dot_bf16(int64_t n, const void *w, const void *x, float *ret)
{
	const uint16_t *a = w, *b = x;
	double sum = 0;
	for (int64_t i = 0; i < n; i++)
		sum += (double)qd_bf16_to_f32(a[i]) * (double)qd_bf16_to_f32(b[i]);
	*ret = (float)sum;
}

static void dot_q8_0(int64_t n, const void *w, const void *x, float *ret)
{
	const BlockQ8_0 *a = w, *b = x;
	float sum = 0;
	for (int64_t i = 0; i < n / QD_QK; i++) {
		int isum = 0;
		for (int j = 0; j < QD_QK; j++)
			isum += a[i].qs[j] * b[i].qs[j];
		sum += qd_f16_to_f32(a[i].d) * qd_f16_to_f32(b[i].d) * (float)isum;
	}
	*ret = sum;
}

static void dot_q4_0(int64_t n, const void *w, const void *x, float *ret)
{
	const BlockQ4_0 *a = w;
	const BlockQ8_0 *b = x;
	float sum = 0;
	for (int64_t i = 0; i < n / QD_QK; i++) {
		int isum = 0;
		for (int j = 0; j < QD_QK / 2; j++) {
			isum += ((a[i].qs[j] & 0x0f) - 8) * b[i].qs[j];
			isum += ((a[i].qs[j] >> 4) - 8) * b[i].qs[j + QD_QK / 2];
		}
		sum += qd_f16_to_f32(a[i].d) * qd_f16_to_f32(b[i].d) * (float)isum;
	}
	*ret = sum;
}

/* w = d*q + m, x = dx*qx: dot = d*dx*sum(q*qx) + m*(dx*sum(qx)), the last factor being
 * the activation block's precomputed s. */
static void dot_q4_1(int64_t n, const void *w, const void *x, float *ret)
{
	const BlockQ4_1 *a = w;
	const BlockQ8_1 *b = x;
	float sum = 0;
	for (int64_t i = 0; i < n / QD_QK; i++) {
		int isum = 0;
		for (int j = 0; j < QD_QK / 2; j++) {
			isum += (a[i].qs[j] & 0x0f) * b[i].qs[j];
			isum += (a[i].qs[j] >> 4) * b[i].qs[j + QD_QK / 2];
		}
		sum += qd_f16_to_f32(a[i].d) * qd_f16_to_f32(b[i].d) * (float)isum +
		       qd_f16_to_f32(a[i].m) * qd_f16_to_f32(b[i].s);
	}
	*ret = sum;
}

/* w = d*sc*q - dmin*m per group of 32: the min part needs only the activation's sums per
 * 16 (bsums), so it costs 8 multiplies per block. */
static void dot_q4_k(int64_t n, const void *w, const void *x, float *ret)
{
	const BlockQ4_K *a = w;
	const BlockQ8_K *b = x;
	float sum = 0;
	for (int64_t i = 0; i < n / QD_QK_K; i++) {
		int isum = 0, msum = 0;
		for (int j = 0; j < 8; j++) {
			int sc, m, s = 0;
			q4k_scale_min(a[i].scales, j, &sc, &m);
			const uint8_t *q = a[i].qs + (j / 2) * 32;
			int shift = (j & 1) * 4;
			for (int l = 0; l < 32; l++)
				s += ((q[l] >> shift) & 0x0f) * b[i].qs[32 * j + l];
			isum += sc * s;
			msum += m * (b[i].bsums[2 * j] + b[i].bsums[2 * j + 1]);
		}
		sum += qd_f16_to_f32(a[i].d) * b[i].d * (float)isum -
		       qd_f16_to_f32(a[i].dmin) * b[i].d * (float)msum;
	}
	*ret = sum;
}

static void dot_q6_k(int64_t n, const void *w, const void *x, float *ret)
{
	const BlockQ6_K *a = w;
	const BlockQ8_K *b = x;
	float sum = 0;
	for (int64_t i = 0; i < n / QD_QK_K; i++) {
		int isum = 0;
		for (int g = 0; g < 16; g++) {
			int s = 0;
			for (int l = 0; l < 16; l++)
				s += (q6k_value(&a[i], 16 * g + l) - 32) * b[i].qs[16 * g + l];
			isum += a[i].scales[g] * s;
		}
		sum += qd_f16_to_f32(a[i].d) * b[i].d * (float)isum;
	}
	*ret = sum;
}

/* ----------------------------------------------------------------------- dispatch */

typedef struct {
	KbDequantFn dequant;
	KbQuantFn quant;
	KbVecDotFn dot; /* weights of this type against its partner type */
	int dot_type;
	KbVecDot4Fn dot4; /* SIMD only */
	const KbXPackKernels *xpack; /* SIMD only */
} TypeKernels;

static const TypeKernels ref_kernels[QD_TYPE_COUNT] = {
	[QD_TYPE_F32] = { dq_f32, q_f32, dot_f32, QD_TYPE_F32 },
	[QD_TYPE_F16] = { dq_f16, q_f16, dot_f16, QD_TYPE_F16 },
	[QD_TYPE_BF16] = { dq_bf16, q_bf16, dot_bf16, QD_TYPE_BF16 },
	[QD_TYPE_Q8_0] = { dq_q8_0, q_q8_0, dot_q8_0, QD_TYPE_Q8_0 },
	[QD_TYPE_Q8_1] = { dq_q8_1, q_q8_1, NULL, -1 },
	[QD_TYPE_Q4_0] = { dq_q4_0, q_q4_0, dot_q4_0, QD_TYPE_Q8_0 },
	[QD_TYPE_Q4_1] = { dq_q4_1, q_q4_1, dot_q4_1, QD_TYPE_Q8_1 },
	[QD_TYPE_Q4_K] = { dq_q4_k, q_q4_k, dot_q4_k, QD_TYPE_Q8_K },
	[QD_TYPE_Q6_K] = { dq_q6_k, q_q6_k, dot_q6_k, QD_TYPE_Q8_K },
	[QD_TYPE_Q8_K] = { dq_q8_k, q_q8_k, NULL, -1 },
};

/* The dispatched table: ref_kernels with AVX2 entries swapped in.  Written once under
 * init_once, then only read. */
static TypeKernels fast_kernels[QD_TYPE_COUNT];
static const char *cpu_desc = "scalar";
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static atomic_int force_scalar;

static void init_tables(void)
{
	memcpy(fast_kernels, ref_kernels, sizeof fast_kernels);
	__builtin_cpu_init();
	if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
	      __builtin_cpu_supports("f16c")))
		return;
	for (int t = 0; t < QD_TYPE_COUNT; t++) {
		KbDequantFn dq = kb_avx2_dequantize_fn(t);
		KbQuantFn q = kb_avx2_quantize_fn(t);
		KbVecDotFn dot = kb_avx2_vec_dot_fn(t);
		if (dq && fast_kernels[t].dequant)
			fast_kernels[t].dequant = dq;
		if (q && fast_kernels[t].quant)
			fast_kernels[t].quant = q;
		if (dot && fast_kernels[t].dot)
			fast_kernels[t].dot = dot;
		if (fast_kernels[t].dot) {
			fast_kernels[t].dot4 = kb_avx2_vec_dot4_fn(t);
			fast_kernels[t].xpack = kb_avx2_xpack_kernels(t);
		}
	}
	cpu_desc = "avx2+fma+f16c";
}

const char *kb_cpu_init(void)
{
	pthread_once(&init_once, init_tables);
	return atomic_load_explicit(&force_scalar, memory_order_relaxed) ? "scalar" : cpu_desc;
}

bool kb_cpu_use_avx2(void)
{
	pthread_once(&init_once, init_tables);
	return !atomic_load_explicit(&force_scalar, memory_order_relaxed) && cpu_desc[0] == 'a';
}

void kb_cpu_force_scalar(int on)
{
	atomic_store(&force_scalar, on != 0);
}

static const TypeKernels *kernels_for(int type)
{
	if (type < 0 || type >= QD_TYPE_COUNT)
		return NULL;
	pthread_once(&init_once, init_tables);
	if (atomic_load_explicit(&force_scalar, memory_order_relaxed))
		return &ref_kernels[type];
	return &fast_kernels[type];
}

static const TypeKernels *ref_for(int type)
{
	return type >= 0 && type < QD_TYPE_COUNT ? &ref_kernels[type] : NULL;
}

const KbXPackKernels *kb_cpu_xpack_kernels(int wtype)
{
	const TypeKernels *k = kernels_for(wtype);
	return k ? k->xpack : NULL;
}

KbVecDot4Fn kb_cpu_vec_dot4_fn(int wtype)
{
	const TypeKernels *k = kernels_for(wtype);
	return k ? k->dot4 : NULL;
}

int kb_cpu_vec_dot_type(int wtype)
{
	const TypeKernels *k = ref_for(wtype);
	return k && k->dot ? k->dot_type : -EINVAL;
}

KbQuantFn kb_cpu_quantize_fn(int type)
{
	const TypeKernels *k = kernels_for(type);
	return k ? k->quant : NULL;
}

KbVecDotFn kb_cpu_vec_dot_fn(int wtype)
{
	const TypeKernels *k = kernels_for(wtype);
	return k ? k->dot : NULL;
}

static int row_ok(int type, int64_t n)
{
	const QdTypeTraits *tr = qd_type_traits(type);
	return tr && n >= 0 && n % tr->blck == 0;
}

int kb_cpu_dequantize_row(int type, const void *src, float *dst, int64_t n)
{
	const TypeKernels *k = kernels_for(type);
	if (!k || !k->dequant || !row_ok(type, n))
		return -EINVAL;
	k->dequant(src, dst, n);
	return 0;
}

int kb_cpu_quantize_row(int type, const float *src, void *dst, int64_t n)
{
	const TypeKernels *k = kernels_for(type);
	if (!k || !k->quant || !row_ok(type, n))
		return -EINVAL;
	k->quant(src, dst, n);
	return 0;
}

void kb_cpu_vec_dot(int wtype, int64_t n, const void *w, const void *x, float *ret)
{
	const TypeKernels *k = kernels_for(wtype);
	if (k && k->dot)
		k->dot(n, w, x, ret);
}

int kb_cpu_dequantize_row_ref(int type, const void *src, float *dst, int64_t n)
{
	const TypeKernels *k = ref_for(type);
	if (!k || !k->dequant || !row_ok(type, n))
		return -EINVAL;
	k->dequant(src, dst, n);
	return 0;
}

int kb_cpu_quantize_row_ref(int type, const float *src, void *dst, int64_t n)
{
	const TypeKernels *k = ref_for(type);
	if (!k || !k->quant || !row_ok(type, n))
		return -EINVAL;
	k->quant(src, dst, n);
	return 0;
}

void kb_cpu_vec_dot_ref(int wtype, int64_t n, const void *w, const void *x, float *ret)
{
	const TypeKernels *k = ref_for(wtype);
	if (k && k->dot)
		k->dot(n, w, x, ret);
}
