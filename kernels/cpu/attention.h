/* kernels/cpu/attention.h: one query head against its sequence's f16 KV cache: scores,
 * softmax, weighted sum of values.  The scalar form is the reference; the AVX2/F16C form
 * (attention_avx2.c) computes the same sums in the same order per 8 lanes, so results
 * agree to float rounding, not bit for bit. */
#ifndef QD_KERNELS_CPU_ATTENTION_H
#define QD_KERNELS_CPU_ATTENTION_H

#include <stdint.h>

/* q[hd] (rounded to f16 first, as the reference rounds queries meeting f16 keys);
 * k/v: len rows of f16, stride elements apart; scratch: len floats; out[hd]. */
typedef void (*KbAttnHeadFn)(const float *q, const uint16_t *k, const uint16_t *v, int len, int64_t stride,
			     int hd, float scale, float *scratch, float *out);

void kb_attn_head_ref(const float *q, const uint16_t *k, const uint16_t *v, int len, int64_t stride, int hd,
		      float scale, float *scratch, float *out);
void kb_attn_head_avx2(const float *q, const uint16_t *k, const uint16_t *v, int len, int64_t stride, int hd,
		       float scale, float *scratch, float *out);

/* The dispatched form for this CPU. */
KbAttnHeadFn kb_attn_head_fn(void);

/* f32 -> f16 rows (KV cache stores), n elements. */
void kb_f32_to_f16_row(const float *x, uint16_t *y, int64_t n);

#endif
