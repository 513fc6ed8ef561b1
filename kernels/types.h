/* kernels/types.h: tensor element types (GGUF/ggml numbering), their block traits, and
 * the half-precision conversions every backend shares.
 *
 * Type ids are the on-disk GGUF ids, so a value read from a file can be checked with
 * qd_type_traits() and used directly. */
#ifndef QD_KERNELS_TYPES_H
#define QD_KERNELS_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum qd_type {
	QD_TYPE_F32 = 0,
	QD_TYPE_F16 = 1,
	QD_TYPE_Q4_0 = 2,
	QD_TYPE_Q4_1 = 3,
	QD_TYPE_Q5_0 = 6,
	QD_TYPE_Q5_1 = 7,
	QD_TYPE_Q8_0 = 8,
	QD_TYPE_Q8_1 = 9,
	QD_TYPE_Q2_K = 10,
	QD_TYPE_Q3_K = 11,
	QD_TYPE_Q4_K = 12,
	QD_TYPE_Q5_K = 13,
	QD_TYPE_Q6_K = 14,
	QD_TYPE_Q8_K = 15,
	QD_TYPE_BF16 = 30,
	QD_TYPE_COUNT = 40, /* ids at or above this are unknown */
};

#define QD_QK 32   /* weights per block for Q4_0/Q4_1/Q8_0/Q8_1 */
#define QD_QK_K 256 /* weights per super-block for the K types */

/* Block layouts, byte-compatible with ggml-common.h. */
typedef struct { uint16_t d; int8_t qs[QD_QK]; } BlockQ8_0;            /* 34 bytes */
typedef struct { uint16_t d, s; int8_t qs[QD_QK]; } BlockQ8_1;         /* 36: s = d * sum(qs) */
typedef struct { uint16_t d; uint8_t qs[QD_QK / 2]; } BlockQ4_0;       /* 18 */
typedef struct { uint16_t d, m; uint8_t qs[QD_QK / 2]; } BlockQ4_1;    /* 20 */
typedef struct {
	uint16_t d, dmin;
	uint8_t scales[12]; /* 8 x (6-bit scale, 6-bit min), packed */
	uint8_t qs[QD_QK_K / 2];
} BlockQ4_K; /* 144 */
typedef struct {
	uint8_t ql[QD_QK_K / 2]; /* low 4 bits */
	uint8_t qh[QD_QK_K / 4]; /* high 2 bits */
	int8_t scales[QD_QK_K / 16];
	uint16_t d;
} BlockQ6_K; /* 210 */
typedef struct {
	float d;
	int8_t qs[QD_QK_K];
	int16_t bsums[QD_QK_K / 16]; /* sums of each group of 16 qs */
} BlockQ8_K; /* 292 */

typedef struct {
	const char *name;   /* "Q4_0", ... */
	int blck;           /* elements per block (1 for plain floats) */
	size_t size;        /* bytes per block */
	bool quantized;
	bool compute;       /* this build can compute with it (dequantize + dot) */
} QdTypeTraits;

/* Traits of type id t, or NULL when t is not a known type. */
const QdTypeTraits *qd_type_traits(int t);

/* Type id for a name such as "q4_0" or "Q4_K" (case-insensitive); -EINVAL if unknown. */
int qd_type_from_name(const char *name);

/* Bytes of a row of n elements of type t into *ret.  Returns 0, or -EINVAL when the type
 * is unknown or n is not a multiple of its block size, -EOVERFLOW on overflow. */
int qd_row_size(int t, uint64_t n, uint64_t *ret);

static inline float qd_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
	if (exp == 0) {
		if (mant == 0) {
			bits = sign;
		} else { /* subnormal: renormalize */
			int e = -1;
			do { e++; mant <<= 1; } while (!(mant & 0x400));
			bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
		}
	} else if (exp == 31) {
		bits = sign | 0x7f800000u | (mant << 13);
	} else {
		bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
	}
	float f;
	memcpy(&f, &bits, 4);
	return f;
}

/* Round to nearest even, like F16C's vcvtps2ph and numpy's astype(float16). */
static inline uint16_t qd_f32_to_f16(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	uint32_t sign = (x >> 16) & 0x8000;
	uint32_t ax = x & 0x7fffffffu;
	if (ax >= 0x7f800000u) /* inf or nan */
		return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
	if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
		return (uint16_t)(sign | 0x7c00);
	if (ax < 0x38800000u) { /* result is subnormal or zero */
		if (ax < 0x33000000u)
			return (uint16_t)sign;
		uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
		uint32_t shift = 126 - e; /* 14 .. 24 */
		uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
		if (rem > half || (rem == half && (r & 1)))
			r++;
		return (uint16_t)(sign | r);
	}
	uint32_t r = ((ax >> 13) - (112u << 10));
	uint32_t rem = ax & 0x1fff;
	if (rem > 0x1000 || (rem == 0x1000 && (r & 1)))
		r++;
	return (uint16_t)(sign | r);
}

static inline float qd_bf16_to_f32(uint16_t h)
{
	uint32_t bits = (uint32_t)h << 16;
	float f;
	memcpy(&f, &bits, 4);
	return f;
}

static inline uint16_t qd_f32_to_bf16(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	if ((x & 0x7fffffffu) > 0x7f800000u) /* nan: keep it quiet */
		return (uint16_t)((x >> 16) | 64);
	return (uint16_t)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

#endif
