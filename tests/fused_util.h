/* tests/fused_util.h: helpers of the fused-op suites (test-fused.c, test-fused-qkv.c):
 * CUDA backends with a chosen one-token activation form, and a norm's inputs. */
#ifndef QD_TESTS_FUSED_UTIL_H
#define QD_TESTS_FUSED_UTIL_H

#include "tests/backend_util.h"

/* A CUDA backend made with QD_CUDA_MMV_I8=MODE (1 or 0; -1: unset, the backend's own
 * choice), the caller's setting of it restored afterwards. */
static TB_UNUSED KbBackend *cuda_i8_mode_new(int mode)
{
	const char *old = getenv("QD_CUDA_MMV_I8");
	char *keep = old ? strdup(old) : NULL;
	if (old && !keep)
		return NULL;
	if (mode >= 0)
		setenv("QD_CUDA_MMV_I8", mode ? "1" : "0", 1);
	else
		unsetenv("QD_CUDA_MMV_I8");
	KbBackend *g = NULL;
	int r = cuda_new(0, &g);
	if (keep)
		setenv("QD_CUDA_MMV_I8", keep, 1);
	else
		unsetenv("QD_CUDA_MMV_I8");
	free(keep);
	return r == 0 ? g : NULL;
}

/* A CUDA backend whose one-token Q4_0 products take int8 activations (QD_CUDA_MMV_I8=1),
 * so that matmul_res_norm and matmul_swiglu run fused for 4096-row products. */
static TB_UNUSED KbBackend *cuda_i8_new(void)
{
	return cuda_i8_mode_new(1);
}

/* A norm's test inputs of D columns: x, the residual y0 and norm weights around 1.5 (none
 * near 0), uploaded to G too (dx, dy, dg); 0 or -1. */
static TB_UNUSED int norm_inputs(KbBackend *g, int D, uint64_t *s, float **x, float **y0, float **gw, float **dx,
				   float **dy, float **dg)
{
	*x = rand_f32((size_t)D, s, 1.0f);
	*y0 = rand_f32((size_t)D, s, 4.0f);
	*gw = rand_f32((size_t)D, s, 1.0f);
	if (!*x || !*y0 || !*gw)
		return -1;
	for (int i = 0; i < D; i++)
		(*gw)[i] += 1.5f;
	*dx = buf_in(g, *x, sizeof(float) * (size_t)D);
	*dy = buf_in(g, *y0, sizeof(float) * (size_t)D);
	*dg = buf_in(g, *gw, sizeof(float) * (size_t)D);
	return *dx && *dy && *dg ? 0 : -1;
}

/* Releases what a cuda_i8_new test made: NW weights (and their raw bytes), NB device
 * buffers, norm_inputs' host arrays, the backend. */
static TB_UNUSED void norm_done(KbBackend *g, KbWeight *w, uint8_t **raw, int nw, float **bufs, size_t nb,
				  float *x, float *y0, float *gw)
{
	for (int i = 0; i < nw; i++) {
		g->ops->weight_release(g, &w[i]);
		free(raw[i]);
	}
	for (size_t i = 0; i < nb; i++)
		g->ops->release(g, bufs[i]);
	free(x);
	free(y0);
	free(gw);
	g->ops->free(g);
}

#endif
