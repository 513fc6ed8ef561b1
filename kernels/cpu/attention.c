/* kernels/cpu/attention.c: reference attention for one head, and the dispatch. */
#include "attention.h"

#include <math.h>
#include <pthread.h>

#include "../types.h"
#include "quant.h"

/* f16 -> f32 by table (256 KiB, built once): the scalar path reads many cache entries. */
static float f16_table[1 << 16];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_init(void)
{
	for (uint32_t i = 0; i < (1u << 16); i++)
		f16_table[i] = qd_f16_to_f32((uint16_t)i);
}

void kb_attn_head_ref(const float *q, const uint16_t *k, const uint16_t *v, int len, int64_t stride, int hd,
		      float scale, float *sc, float *out)
{
	pthread_once(&table_once, table_init);
	float qh[512];
	for (int i = 0; i < hd; i++)
		qh[i] = f16_table[qd_f32_to_f16(q[i])];
	float mx = -INFINITY;
	for (int p = 0; p < len; p++) {
		const uint16_t *kr = k + (int64_t)p * stride;
		float s = 0;
		for (int i = 0; i < hd; i++)
			s += qh[i] * f16_table[kr[i]];
		sc[p] = s * scale;
		if (sc[p] > mx)
			mx = sc[p];
	}
	double sum = 0;
	for (int p = 0; p < len; p++) {
		sc[p] = expf(sc[p] - mx);
		sum += sc[p];
	}
	float inv = (float)(1.0 / sum);
	for (int i = 0; i < hd; i++)
		out[i] = 0;
	for (int p = 0; p < len; p++) {
		const uint16_t *vr = v + (int64_t)p * stride;
		float w = sc[p] * inv;
		for (int i = 0; i < hd; i++)
			out[i] += w * f16_table[vr[i]];
	}
}

KbAttnHeadFn kb_attn_head_fn(void)
{
	return kb_cpu_use_avx2() ? kb_attn_head_avx2 : kb_attn_head_ref;
}

void kb_f32_to_f16_row(const float *x, uint16_t *y, int64_t n)
{
	if (kb_cpu_use_avx2()) {
		kb_cpu_quantize_row(QD_TYPE_F16, x, y, n - n % 8);
		for (int64_t i = n - n % 8; i < n; i++)
			y[i] = qd_f32_to_f16(x[i]);
		return;
	}
	for (int64_t i = 0; i < n; i++)
		y[i] = qd_f32_to_f16(x[i]);
}
