/* kernels/cpu/quant.h: CPU block-type kernels.  Dequantization, quantization and fused
 * dot products for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K, with a scalar
 * reference (the *_ref functions, the readable definition) and AVX2/FMA/F16C versions
 * chosen once at run time (kb_cpu_init()).  The dispatched entry points are what callers
 * use; the *_ref ones exist for tests and for machines without AVX2.
 *
 * Dot products follow ggml's scheme so that results agree with llama.cpp closely: the
 * activation row is first quantized to the weight type's partner type
 * (kb_cpu_vec_dot_type): Q8_0 for Q4_0 and Q8_0 weights, Q8_1 for Q4_1, Q8_K for Q4_K and
 * Q6_K, F16 for F16, BF16 for BF16, F32 for F32.
 *
 * No function here allocates, logs or fails on valid arguments; lengths must be a
 * multiple of the type's block size (checked by callers: qd_row_size()). */
#ifndef QD_KERNELS_CPU_QUANT_H
#define QD_KERNELS_CPU_QUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "../types.h"

/* Detects CPU features and picks implementations.  Idempotent and thread-safe.
 * Returns a short description such as "avx2+fma+f16c" or "scalar". */
const char *kb_cpu_init(void);

/* Whether the AVX2/FMA/F16C paths are in use (detected and not forced off). */
bool kb_cpu_use_avx2(void);

/* Forces the scalar reference paths (tests); call before kb_cpu_init or after. */
void kb_cpu_force_scalar(int on);

/* Partner activation type for weights of type wtype, or -EINVAL if not computable. */
int kb_cpu_vec_dot_type(int wtype);

/* dst[0..n) = dequantized src row.  Returns 0 or -EINVAL (type not supported). */
int kb_cpu_dequantize_row(int type, const void *src, float *dst, int64_t n);

/* Round-to-nearest quantization of one row, byte-identical to ggml's reference
 * quantize_row_*_ref for Q8_0, Q8_1, Q8_K, Q4_0, Q4_1, Q4_K, Q6_K; F16/BF16 round to
 * nearest even.  Returns 0 or -EINVAL. */
int kb_cpu_quantize_row(int type, const float *src, void *dst, int64_t n);

/* *ret = dot(weight row of wtype, activation row already in kb_cpu_vec_dot_type(wtype)). */
void kb_cpu_vec_dot(int wtype, int64_t n, const void *w, const void *x, float *ret);

/* Scalar references of the three above (always available). */
int kb_cpu_dequantize_row_ref(int type, const void *src, float *dst, int64_t n);
int kb_cpu_quantize_row_ref(int type, const float *src, void *dst, int64_t n);
void kb_cpu_vec_dot_ref(int wtype, int64_t n, const void *w, const void *x, float *ret);

#endif
