/* kernels/cuda/getrows.cu: embedding rows in GGUF block layout -> f32.  Blocks of
 * GR_THREADS over each requested row, an element a thread (a grid-stride loop past 65535
 * blocks a row); each element is decoded from its block alone, with the CPU's float
 * operations in the CPU's order (no fused multiply-adds), so rows match kernels/cpu/quant.c
 * bit for bit. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "internal.cuh"
#include "ops.h"

__device__ __forceinline__ float ld_f16(const uint8_t *p)
{
	return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}

template <int T>
__device__ __forceinline__ float dq_elem(const uint8_t *row, int64_t e)
{
	if constexpr (T == QD_TYPE_F32) {
		return ((const float *)row)[e];
	} else if constexpr (T == QD_TYPE_F16) {
		return ld_f16(row + 2 * e);
	} else if constexpr (T == QD_TYPE_BF16) {
		const uint32_t u = (uint32_t)(row[2 * e] | (row[2 * e + 1] << 8)) << 16;
		return __uint_as_float(u);
	} else if constexpr (T == QD_TYPE_Q8_0) {
		const uint8_t *b = row + (e / 32) * 34;
		return __fmul_rn((float)(int8_t)b[2 + e % 32], ld_f16(b));
	} else if constexpr (T == QD_TYPE_Q4_0) {
		const uint8_t *b = row + (e / 32) * 18;
		const int i = (int)(e % 32);
		const int q = i < 16 ? (b[2 + i] & 15) : (b[2 + i - 16] >> 4);
		return __fmul_rn((float)(q - 8), ld_f16(b));
	} else if constexpr (T == QD_TYPE_Q4_1) {
		const uint8_t *b = row + (e / 32) * 20;
		const int i = (int)(e % 32);
		const int q = i < 16 ? (b[4 + i] & 15) : (b[4 + i - 16] >> 4);
		return __fadd_rn(__fmul_rn((float)q, ld_f16(b)), ld_f16(b + 2));
	} else if constexpr (T == QD_TYPE_Q4_K) {
		const uint8_t *b = row + (e / 256) * 144, *s = b + 4;
		const int r = (int)(e % 256), j = r / 32, l = r % 32;
		int sc, m;
		if (j < 4) {
			sc = s[j] & 63;
			m = s[j + 4] & 63;
		} else {
			sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
			m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
		}
		const float d1 = __fmul_rn(ld_f16(b), (float)sc), m1 = __fmul_rn(ld_f16(b + 2), (float)m);
		const int q = (b[16 + (j / 2) * 32 + l] >> ((j & 1) * 4)) & 15;
		return __fsub_rn(__fmul_rn(d1, (float)q), m1);
	} else { /* Q6_K: ql[128] qh[64] scales[16] d */
		const uint8_t *b = row + (e / 256) * 210;
		const int r = (int)(e % 256), h = r / 128, k = (r % 128) / 32, l = r % 32;
		const int lo = (b[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 15;
		const int hi = (b[128 + 32 * h + l] >> (2 * k)) & 3;
		const float d = ld_f16(b + 208);
		return __fmul_rn(__fmul_rn(d, (float)(int8_t)b[192 + r / 16]), (float)((lo | (hi << 4)) - 32));
	}
}

/* A row is spread over blocks of GR_THREADS, an element a thread (gridDim.y blocks a row), so
 * its bytes are asked for at once: with one block a row, each thread's loop over 16 of a 7B
 * row's elements waited for DRAM at every trip, and the step's first kernel took 9.7 us
 * (traced, bench/NOTES-gpu.md, session 31). */
#define GR_THREADS 256

template <int T>
__global__ void __launch_bounds__(GR_THREADS) k_get_rows(int trig, const uint8_t *raw, int64_t row_bytes,
							 int64_t cols, const int32_t *ids, float *out)
{
	KB_TRACE();
	if (trig)
		kb_pdl_trigger();
	kb_pdl_wait();
	const uint8_t *row = raw + (int64_t)ids[blockIdx.x] * row_bytes;
	float *o = out + (int64_t)blockIdx.x * cols;
	const int64_t step = (int64_t)gridDim.y * blockDim.x;
	for (int64_t e = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; e < cols; e += step)
		o[e] = dq_elem<T>(row, e);
}

extern "C" int kb_cuda_get_rows_supported(int type)
{
	switch (type) {
	case QD_TYPE_F32: case QD_TYPE_F16: case QD_TYPE_BF16: case QD_TYPE_Q8_0:
	case QD_TYPE_Q4_0: case QD_TYPE_Q4_1: case QD_TYPE_Q4_K: case QD_TYPE_Q6_K:
		return 1;
	default:
		return 0;
	}
}

template <int T>
static int launch(KbCuda *ctx, const void *raw, int64_t row_bytes, int64_t cols, const int32_t *ids, int n,
		  float *out)
{
	const int pdl = kb_small_pdl(n);
	const int64_t parts = (cols + GR_THREADS - 1) / GR_THREADS;
	return kb_launch_ex(ctx, pdl, k_get_rows<T>, dim3((unsigned)n, (unsigned)(parts < 65535 ? parts : 65535)),
			    dim3(GR_THREADS), 0, pdl, (const uint8_t *)raw, row_bytes, cols, ids, out);
}

extern "C" int kb_cuda_get_rows(KbCuda *ctx, int type, const void *raw, int64_t row_bytes, int64_t cols,
				const int32_t *ids, int n, float *out)
{
	if (!ctx || !raw || !ids || !out || n < 0 || cols < 1 || row_bytes < 1)
		return -EINVAL;
	if (n == 0)
		return 0;
	switch (type) {
	case QD_TYPE_F32: return launch<QD_TYPE_F32>(ctx, raw, row_bytes, cols, ids, n, out);
	case QD_TYPE_F16: return launch<QD_TYPE_F16>(ctx, raw, row_bytes, cols, ids, n, out);
	case QD_TYPE_BF16: return launch<QD_TYPE_BF16>(ctx, raw, row_bytes, cols, ids, n, out);
	case QD_TYPE_Q8_0: return launch<QD_TYPE_Q8_0>(ctx, raw, row_bytes, cols, ids, n, out);
	case QD_TYPE_Q4_0: return launch<QD_TYPE_Q4_0>(ctx, raw, row_bytes, cols, ids, n, out);
	case QD_TYPE_Q4_1: return launch<QD_TYPE_Q4_1>(ctx, raw, row_bytes, cols, ids, n, out);
	case QD_TYPE_Q4_K: return launch<QD_TYPE_Q4_K>(ctx, raw, row_bytes, cols, ids, n, out);
	case QD_TYPE_Q6_K: return launch<QD_TYPE_Q6_K>(ctx, raw, row_bytes, cols, ids, n, out);
	default: return -EINVAL;
	}
}
