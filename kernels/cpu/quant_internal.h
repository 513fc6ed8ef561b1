/* kernels/cpu/quant_internal.h: what quant.c, quant_avx2.c and matmul.c share inside the
 * CPU backend and nobody else needs: the row-kernel signatures, the AVX2 tables and a way
 * for hot loops to fetch the dispatched kernel once instead of switching per call. */
#ifndef QD_KERNELS_CPU_QUANT_INTERNAL_H
#define QD_KERNELS_CPU_QUANT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../types.h"

typedef void (*KbDequantFn)(const void *src, float *dst, int64_t n);
typedef void (*KbQuantFn)(const float *src, void *dst, int64_t n);
typedef void (*KbVecDotFn)(int64_t n, const void *w, const void *x, float *ret);
/* ret[r] = dot(weight row r, x) for r < 4, the rows ws bytes apart. */
typedef void (*KbVecDot4Fn)(int64_t n, const void *w, size_t ws, const void *x, float *ret);

/* The dispatched kernels (after kb_cpu_init()), or NULL when the type has none. */
KbQuantFn kb_cpu_quantize_fn(int type);
KbVecDotFn kb_cpu_vec_dot_fn(int wtype);
/* The four-row form where one exists (hot types only), else NULL. */
KbVecDot4Fn kb_cpu_vec_dot4_fn(int wtype);

/* Activations repacked for a matrix product with Q4_0 or Q4_1 weights.  In kb_matmul the
 * same activation row meets every weight row, so it pays to lay it out once the way the
 * kernel wants it: per pair of 32-blocks, the halves of the two blocks' values side by side
 * to match one load of the two weight blocks' nibbles, the f16 scales already in f32, and
 * for Q4_0 the sums that turn unsigned nibbles into nib - 8.  Same integers and scales as
 * the dot-type row it is made from, so the dot products are the same sums. */
#define KB_XPAIR_BYTES 112
static inline size_t kb_xpack_row_size(int64_t n)
{
	return (size_t)((n / 32 + 1) / 2) * KB_XPAIR_BYTES;
}

typedef struct {
	KbVecDotFn dot; /* weights x packed activations */
	void (*pack)(const void *xq, int64_t n, void *dst); /* dot-type row -> packed */
} KbXPackKernels;

/* The packed path for weights of wtype, or NULL (type without one, no AVX2, or forced
 * scalar). */
const KbXPackKernels *kb_cpu_xpack_kernels(int wtype);

/* quant_avx2.c: AVX2+FMA+F16C versions, NULL where a type has none.  Calling what they
 * return on a CPU without those features is undefined; quant.c asks only after checking. */
KbDequantFn kb_avx2_dequantize_fn(int type);
KbQuantFn kb_avx2_quantize_fn(int type);
KbVecDotFn kb_avx2_vec_dot_fn(int wtype);
KbVecDot4Fn kb_avx2_vec_dot4_fn(int wtype);
const KbXPackKernels *kb_avx2_xpack_kernels(int wtype);

/* The 12 scale bytes of a Q4_K block hold 8 six-bit scales and 8 six-bit mins: sub-blocks
 * 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 take their low
 * 4 bits from the nibbles of bytes 8-11 and their top 2 bits from the top of bytes 0-7. */
static inline void q4k_scale_min(const uint8_t *s, int j, int *ret_sc, int *ret_m)
{
	if (j < 4) {
		*ret_sc = s[j] & 63;
		*ret_m = s[j + 4] & 63;
	} else {
		*ret_sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
		*ret_m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
	}
}

/* The inverse: stores six-bit scale LS and min LM of sub-block J (the 12 bytes start at 0
 * and are OR-ed into for sub-blocks 0-3, so callers zero them first). */
static inline void q4k_pack_scale_min(uint8_t *s, int j, uint8_t ls, uint8_t lm)
{
	if (j < 4) {
		s[j] |= ls;
		s[j + 4] |= lm;
	} else {
		s[j + 4] = (uint8_t)((ls & 0x0f) | ((lm & 0x0f) << 4));
		s[j - 4] |= (uint8_t)((ls >> 4) << 6);
		s[j] |= (uint8_t)((lm >> 4) << 6);
	}
}

/* Round to nearest (ties to even) for |f| < 2^22, through the float adder: adding 1.5 * 2^23
 * puts the integer in the mantissa's low bits.  ggml's K-quant reference rounds this way,
 * so we must too (roundf would break ties differently). */
static inline int nearest_int(float f)
{
	float v = f + 12582912.f;
	int32_t i;
	memcpy(&i, &v, 4);
	return (i & 0x007fffff) - 0x00400000;
}

/* A Q4_K superblock's header from its eight sub-blocks' fitted scales and mins: d and
 * dmin as f16 of the largest over 63, and each scale and min as six bits of those
 * (the scalar and AVX2 quantizers share it, so both write the same bytes). */
static inline void q4k_set_header(BlockQ4_K *y, const float *scales, const float *mins)
{
	float max_scale = 0, max_min = 0;
	for (int j = 0; j < 8; j++) {
		if (scales[j] > max_scale)
			max_scale = scales[j];
		if (mins[j] > max_min)
			max_min = mins[j];
	}
	const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
	const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
	memset(y->scales, 0, sizeof y->scales);
	for (int j = 0; j < 8; j++) {
		uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
		uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
		q4k_pack_scale_min(y->scales, j, ls < 63 ? ls : 63, lm < 63 ? lm : 63);
	}
	y->d = qd_f32_to_f16(max_scale / 63.0f);
	y->dmin = qd_f32_to_f16(max_min / 63.0f);
}

#endif
