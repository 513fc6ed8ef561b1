/* daemon/engine/gptq_internal.h: GPTQ and AWQ building blocks shared by calib.c, gptq.c,
 * awq.c and gptq_avx2.c.  Not for use outside daemon/engine/. */
#ifndef QD_ENGINE_GPTQ_INTERNAL_H
#define QD_ENGINE_GPTQ_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "../../kernels/cpu/threadpool.h"

/* H[d][d] += A^T A for A = [T][d] (the lower triangle and diagonal are accumulated;
 * gptq_hessian_finish mirrors it).  Split over tp.  d must be a multiple of 16. */
void gptq_hessian_add(KbThreadPool *tp, float *H, int64_t d, const float *A, int64_t T);
/* Copies the lower triangle of H onto the upper one. */
void gptq_hessian_finish(float *H, int64_t d);

/* GPTQ on W = [rows][cols] (f32, clobbered) with Hessian H = [cols][cols] (clobbered):
 * dead columns, optional act-order, dampening (damp x mean diagonal), upper Cholesky
 * factor of H^-1, then column by column quantization to TYPE (Q8_0, Q4_0 or Q4_1) with
 * error feedback, for row blocks in parallel.  Group (block) parameters are fitted when
 * the sweep reaches each group's first column, except with act-order, where they are
 * fitted up front from W (GPTQ's static groups).  Writes rows x row-size bytes to out.
 * Returns 0, -EINVAL (type, cols not a multiple of 32), -ENOMEM, -EDOM (H not positive
 * definite even after extra dampening). */
int gptq_quantize(KbThreadPool *tp, int type, float *W, int64_t rows, int64_t cols, float *H, float damp,
		  bool act_order, void *out);

/* AVX2/FMA kernels (gptq_avx2.c), used when kb_cpu_use_avx2(). */
void gptq_axpy_avx2(float *y, const float *x, float a, int64_t n);
float gptq_dot_avx2(const float *x, const float *y, int64_t n);
/* The dispatched f32 dot product (AVX2 when in use), shared by gptq.c and awq.c. */
float gptq_dot(const float *x, const float *y, int64_t n);
void gptq_syrk_rows_avx2(float *H, int64_t d, const float *A, int64_t T, int64_t i0, int64_t i1);

#endif
