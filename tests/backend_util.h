/* tests/backend_util.h: what the CUDA-against-CPU suites (test-backend.c: the ops;
 * test-steps.c: whole steps and models) share: the two backends, skips, buffers moved
 * through the ops table, random inputs and the error measure.  Header-only, static: each
 * suite is its own program. */
#ifndef QD_TESTS_BACKEND_UTIL_H
#define QD_TESTS_BACKEND_UTIL_H

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/engine/model.h"
#include "daemon/engine/synth.h"
#include "kernels/backend.h"
#include "kernels/cpu/quant.h"
#include "kernels/types.h"
#include "tests/gpu/qgen.h"
#include "tests/testutil.h"

#define TB_UNUSED __attribute__((unused))

static TB_UNUSED int cuda_new(int device, KbBackend **ret)
{
#ifdef QD_HAVE_CUDA
	return kb_cuda_backend_new(device, ret);
#else
	(void)device;
	(void)ret;
	return -ENODEV;
#endif
}

#ifdef QD_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

static KbBackend *cpu, *gpu;
static int gpu_rc = 1; /* 1: not tried yet */

static TB_UNUSED const char *gpu_skip(void)
{
	if (gpu_rc == 1)
		gpu_rc = cuda_new(0, &gpu);
	return gpu_rc == -ENODEV ? "no CUDA device (or a build without CUDA)" : NULL;
}

static TB_UNUSED const char *gpu_model_skip(void)
{
	const char *why = gpu_skip();
	if (why)
		return why;
	FILE *f = fopen(tu_model_path(), "rb");
	if (!f)
		return "default model missing (make model)";
	fclose(f);
	return NULL;
}

/* Both backends ready; a GPU that is present but fails to start is a failure. */
static TB_UNUSED int ready(void)
{
	CU_ASSERT_EQUAL(gpu_rc, 0);
	if (gpu_rc != 0)
		return 0;
	if (!cpu && kb_cpu_backend_new(2, &cpu) < 0)
		return 0;
	return cpu != NULL;
}

/* A backend buffer holding a copy of HOST (BYTES), or NULL. */
static TB_UNUSED void *buf_in(KbBackend *b, const void *host, size_t bytes)
{
	void *p = NULL;
	if (b->ops->alloc(b, bytes, &p) < 0)
		return NULL;
	if (host && b->ops->upload(b, p, host, bytes) < 0) {
		b->ops->release(b, p);
		return NULL;
	}
	return p;
}

static TB_UNUSED int buf_out(KbBackend *b, void *host, const void *p, size_t bytes)
{
	int r = b->ops->sync(b);
	return r < 0 ? r : b->ops->download(b, host, p, bytes);
}

static TB_UNUSED float *rand_f32(size_t n, uint64_t *s, float amp)
{
	float *x = malloc(sizeof(float) * n);
	for (size_t i = 0; x && i < n; i++)
		x[i] = amp * tu_rand_f32(s);
	return x;
}

/* Random GGUF rows of TYPE: rows x cols. */
static TB_UNUSED uint8_t *rand_weight(int type, int64_t rows, int64_t cols, uint64_t *s, size_t *ret_bytes)
{
	uint64_t rb;
	if (qd_row_size(type, (uint64_t)cols, &rb) < 0)
		return NULL;
	size_t bytes = (size_t)rb * (size_t)rows;
	uint8_t *raw = malloc(bytes);
	if (!raw)
		return NULL;
	if (type == QD_TYPE_F32) {
		for (int64_t i = 0; i < rows * cols; i++)
			((float *)raw)[i] = tu_rand_f32(s);
	} else {
		int bb, blck = qg_block(type, &bb);
		qg_fill(type, raw, rows * cols / blck, s);
	}
	*ret_bytes = bytes;
	return raw;
}

/* max |a - b| / (tol_abs + tol_rel * |ref|) over n: <= 1 passes. */
static TB_UNUSED double worst(const float *a, const float *b, const float *ref, int64_t n, double tol_abs,
			      double tol_rel, int64_t *ret_at)
{
	double w = 0;
	for (int64_t i = 0; i < n; i++) {
		double e = fabs((double)a[i] - (double)b[i]) / (tol_abs + tol_rel * fabs((double)ref[i]));
		if (!(e <= w)) { /* NaN counts as worst */
			w = isnan(e) ? INFINITY : e;
			*ret_at = i;
		}
	}
	return w;
}

/* Frees both backends (the last test of a suite). */
static TB_UNUSED void test_cleanup(void)
{
	if (gpu)
		gpu->ops->free(gpu);
	if (cpu)
		cpu->ops->free(cpu);
	gpu = cpu = NULL;
	gpu_rc = 1;
	CU_PASS("backends freed");
}

#endif
