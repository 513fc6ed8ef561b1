/* tests/gpu/qgen.h: random GGUF blocks of every type the CUDA products take, and a
 * double-precision reference dequantizer written from the block definitions in
 * kernels/types.h (independent of both the CPU and the CUDA kernels).  Header-only, for
 * the GPU test and benchmark.
 *
 * Random blocks are never zero: scales are drawn away from 0 and quants uniformly, so
 * a kernel that skips a block or reads the wrong one changes the result. */
#ifndef QD_TESTS_GPU_QGEN_H
#define QD_TESTS_GPU_QGEN_H

#include <stdint.h>
#include <string.h>

#include "kernels/types.h"

static inline uint64_t qg_next(uint64_t *s)
{
	uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* uniform in [lo, hi) */
static inline float qg_unif(uint64_t *s, float lo, float hi)
{
	return lo + (hi - lo) * (float)((qg_next(s) >> 40) * (1.0 / (1 << 24)));
}

static inline float qg_signed(uint64_t *s, float lo, float hi)
{
	float v = qg_unif(s, lo, hi);
	return (qg_next(s) & 1) ? v : -v;
}

/* Elements per block and bytes per block, or 0 for types not generated here. */
static inline int qg_block(int type, int *ret_bytes)
{
	switch (type) {
	case QD_TYPE_Q4_0: *ret_bytes = 18; return 32;
	case QD_TYPE_Q4_1: *ret_bytes = 20; return 32;
	case QD_TYPE_Q8_0: *ret_bytes = 34; return 32;
	case QD_TYPE_Q4_K: *ret_bytes = 144; return 256;
	case QD_TYPE_Q6_K: *ret_bytes = 210; return 256;
	case QD_TYPE_F16:
	case QD_TYPE_BF16: *ret_bytes = 2; return 1;
	default: *ret_bytes = 0; return 0;
	}
}

static inline void qg_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline uint16_t qg_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

/* Fills n_blocks blocks (or elements, for F16/BF16) of TYPE at dst. */
static inline void qg_fill(int type, uint8_t *dst, int64_t n_blocks, uint64_t *s)
{
	for (int64_t b = 0; b < n_blocks; b++) {
		uint8_t *p;
		switch (type) {
		case QD_TYPE_Q4_0:
			p = dst + b * 18;
			qg_put16(p, qd_f32_to_f16(qg_signed(s, 0.002f, 0.02f)));
			for (int i = 0; i < 16; i++)
				p[2 + i] = (uint8_t)qg_next(s);
			break;
		case QD_TYPE_Q4_1:
			p = dst + b * 20;
			qg_put16(p, qd_f32_to_f16(qg_unif(s, 0.001f, 0.01f)));
			qg_put16(p + 2, qd_f32_to_f16(qg_unif(s, -0.08f, -0.01f)));
			for (int i = 0; i < 16; i++)
				p[4 + i] = (uint8_t)qg_next(s);
			break;
		case QD_TYPE_Q8_0:
			p = dst + b * 34;
			qg_put16(p, qd_f32_to_f16(qg_signed(s, 0.0002f, 0.002f)));
			for (int i = 0; i < 32; i++)
				p[2 + i] = (uint8_t)(int8_t)(int)(qg_next(s) % 255 - 127);
			break;
		case QD_TYPE_Q4_K:
			p = dst + b * 144;
			qg_put16(p, qd_f32_to_f16(qg_unif(s, 0.0002f, 0.002f)));
			qg_put16(p + 2, qd_f32_to_f16(qg_unif(s, 0.0001f, 0.001f)));
			for (int i = 0; i < 12 + 128; i++)
				p[4 + i] = (uint8_t)qg_next(s);
			break;
		case QD_TYPE_Q6_K:
			p = dst + b * 210;
			for (int i = 0; i < 192; i++)
				p[i] = (uint8_t)qg_next(s);
			for (int i = 0; i < 16; i++)
				p[192 + i] = (uint8_t)(int8_t)(int)(qg_next(s) % 127 - 63);
			qg_put16(p + 208, qd_f32_to_f16(qg_signed(s, 0.0002f, 0.002f)));
			break;
		case QD_TYPE_F16:
			qg_put16(dst + 2 * b, qd_f32_to_f16(qg_signed(s, 0.001f, 0.1f)));
			break;
		case QD_TYPE_BF16:
			qg_put16(dst + 2 * b, qd_f32_to_bf16(qg_signed(s, 0.001f, 0.1f)));
			break;
		}
	}
}

/* Q4_K: 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes. */
static inline void qg_q4k_sm(const uint8_t *q, int j, int *sc, int *mn)
{
	if (j < 4) {
		*sc = q[j] & 63;
		*mn = q[j + 4] & 63;
	} else {
		*sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
		*mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
	}
}

/* The additive part of 32-column block b of a row (its weights are scale x q + this):
 * Q4_1's m, Q4_K's -dmin mn of the sub-block; 0 for the other types.  The int8 products
 * multiply it by the activations' rounded block sum (Q8_1's s), not by the sum of levels. */
static inline double qg_block_min(int type, const uint8_t *row, int64_t b)
{
	if (type == QD_TYPE_Q4_1)
		return qd_f16_to_f32(qg_get16(row + b * 20 + 2));
	if (type == QD_TYPE_Q4_K) {
		const uint8_t *p = row + (b / 8) * 144;
		int sc, mn;
		qg_q4k_sm(p + 4, (int)(b % 8), &sc, &mn);
		return -(double)qd_f16_to_f32(qg_get16(p + 2)) * mn;
	}
	return 0.0;
}

/* out[0..n) = the row of n elements at src, exactly, in double. */
static inline void qg_dequant_row(int type, const uint8_t *src, int64_t n, double *out)
{
	switch (type) {
	case QD_TYPE_Q4_0:
	case QD_TYPE_Q4_1:
		for (int64_t b = 0; b < n / 32; b++) {
			const uint8_t *p = src + b * (type == QD_TYPE_Q4_0 ? 18 : 20);
			double d = qd_f16_to_f32(qg_get16(p));
			double m = type == QD_TYPE_Q4_1 ? qd_f16_to_f32(qg_get16(p + 2)) : 0;
			const uint8_t *qs = p + (type == QD_TYPE_Q4_0 ? 2 : 4);
			for (int j = 0; j < 16; j++) {
				int lo = qs[j] & 15, hi = qs[j] >> 4;
				if (type == QD_TYPE_Q4_0) {
					out[b * 32 + j] = d * (lo - 8);
					out[b * 32 + j + 16] = d * (hi - 8);
				} else {
					out[b * 32 + j] = d * lo + m;
					out[b * 32 + j + 16] = d * hi + m;
				}
			}
		}
		break;
	case QD_TYPE_Q8_0:
		for (int64_t b = 0; b < n / 32; b++) {
			const uint8_t *p = src + b * 34;
			double d = qd_f16_to_f32(qg_get16(p));
			for (int j = 0; j < 32; j++)
				out[b * 32 + j] = d * (int8_t)p[2 + j];
		}
		break;
	case QD_TYPE_Q4_K:
		for (int64_t b = 0; b < n / 256; b++) {
			const uint8_t *p = src + b * 144;
			double d = qd_f16_to_f32(qg_get16(p)), dmin = qd_f16_to_f32(qg_get16(p + 2));
			const uint8_t *sc12 = p + 4, *qs = p + 16;
			double *y = out + b * 256;
			for (int c = 0; c < 4; c++) { /* 64 elements: low nibbles, then high */
				int sc, mn;
				qg_q4k_sm(sc12, 2 * c, &sc, &mn);
				for (int l = 0; l < 32; l++)
					y[64 * c + l] = d * sc * (qs[32 * c + l] & 15) - dmin * mn;
				qg_q4k_sm(sc12, 2 * c + 1, &sc, &mn);
				for (int l = 0; l < 32; l++)
					y[64 * c + 32 + l] = d * sc * (qs[32 * c + l] >> 4) - dmin * mn;
			}
		}
		break;
	case QD_TYPE_Q6_K:
		for (int64_t b = 0; b < n / 256; b++) {
			const uint8_t *p = src + b * 210;
			const uint8_t *ql = p, *qh = p + 128;
			const int8_t *sc = (const int8_t *)(p + 192);
			double d = qd_f16_to_f32(qg_get16(p + 208));
			double *y = out + b * 256;
			for (int h = 0; h < 2; h++) { /* two halves of 128 */
				for (int l = 0; l < 32; l++) {
					int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
					int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
					int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
					int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
					int is = l / 16;
					y[l] = d * sc[is] * q1;
					y[l + 32] = d * sc[is + 2] * q2;
					y[l + 64] = d * sc[is + 4] * q3;
					y[l + 96] = d * sc[is + 6] * q4;
				}
				y += 128;
				ql += 64;
				qh += 32;
				sc += 8;
			}
		}
		break;
	case QD_TYPE_F16:
		for (int64_t i = 0; i < n; i++)
			out[i] = qd_f16_to_f32(qg_get16(src + 2 * i));
		break;
	case QD_TYPE_BF16:
		for (int64_t i = 0; i < n; i++)
			out[i] = qd_bf16_to_f32(qg_get16(src + 2 * i));
		break;
	}
}

#endif
