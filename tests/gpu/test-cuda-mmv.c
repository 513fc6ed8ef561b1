/* tests/gpu/test-cuda-mmv.c: the CUDA context, uploads, decode matrix-vector products and
 * the many-token products' work sharing against a double-precision CPU reference on the
 * dequantized weights.
 * Without a usable GPU every test prints SKIP and the suite passes. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda.h"
#include "kernels/cuda/ops.h"
#include "tests/gpu/qgen.h"
#include "tests/testutil.h"

static KbCuda *ctx;

/* QD_CUDA_TEST_SMALL=1: small shapes only (for compute-sanitizer runs). */
static int small(void)
{
	const char *e = getenv("QD_CUDA_TEST_SMALL");
	return e && *e && *e != '0';
}

/* skip_if of every test: the tests need a CUDA device. */
static const char *gpu_skip(void)
{
	int n = 0;
	return kb_cuda_device_count(&n) < 0 ? "no CUDA device or driver" : NULL;
}

/* The context, created by the first test that runs; a device that is present but
 * cannot be initialized is a failure. */
static int ensure_ctx(const char *test)
{
	if (ctx)
		return 1;
	int r = kb_cuda_init(0, &ctx);
	CU_ASSERT_EQUAL(r, 0);
	if (r < 0)
		printf("\n    %s: kb_cuda_init: %s\n", test, strerror(-r));
	return r == 0;
}

static void test_errors(void)
{
	if (!ensure_ctx("errors"))
		return;
	uint8_t raw[18 * 4];
	uint64_t s = 11;
	KbCudaWeight *w = NULL;
	KbCudaAct *act = NULL;
	qg_fill(QD_TYPE_Q4_0, raw, 4, &s);
	CU_ASSERT_EQUAL(kb_cuda_weight_upload(ctx, QD_TYPE_Q5_0, 1, 32, raw, &w), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_weight_upload(ctx, QD_TYPE_F32, 1, 32, raw, &w), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_weight_upload(ctx, 999, 1, 32, raw, &w), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_weight_upload(ctx, QD_TYPE_Q4_0, 1, 48, raw, &w), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_weight_upload(ctx, QD_TYPE_Q4_0, 0, 32, raw, &w), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_weight_upload(ctx, QD_TYPE_Q4_0, 1, 32, NULL, &w), -EINVAL);
	CU_ASSERT_PTR_NULL(w);
	CU_ASSERT_EQUAL(kb_cuda_init(1 << 20, &(KbCuda *){ NULL }), -ENODEV);
	CU_ASSERT_EQUAL(kb_cuda_set_mmv_config(ctx, 0, 9, -1, -1, -1), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_set_mmv_config(ctx, 0, -1, 3, -1, -1), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_set_mmv_config(ctx, 9, -1, -1, -1, -1), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_set_mmv_stages(ctx, 0, 9), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_set_mmv_stages(ctx, 0, -2), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_set_mmv_stages(ctx, 9, 2), -EINVAL);

	CU_ASSERT_EQUAL_FATAL(kb_cuda_weight_upload(ctx, QD_TYPE_Q4_0, 2, 64, raw, &w), 0);
	CU_ASSERT_EQUAL_FATAL(kb_cuda_act_new(ctx, 128, &act), 0);
	float *x = NULL, *y = NULL;
	CU_ASSERT_EQUAL_FATAL(kb_cuda_alloc(ctx, 8 * 128 * sizeof(float), (void **)&x), 0);
	CU_ASSERT_EQUAL_FATAL(kb_cuda_alloc(ctx, 8 * 128 * sizeof(float), (void **)&y), 0);
	CU_ASSERT_EQUAL(kb_cuda_memset(ctx, x, 0, 8 * 128 * sizeof(float)), 0);
	/* an act not yet prepared, or prepared for other columns, is refused */
	CU_ASSERT_EQUAL(kb_cuda_mmv_act(ctx, w, act, y, 2), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_act_prepare(ctx, act, x, 128, 129, 1), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_act_prepare(ctx, act, x, 64, 96, 1), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_act_prepare(ctx, act, x, 96, 96, 0), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_act_prepare(ctx, act, x, 96, 96, 9), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_act_prepare(ctx, act, x, 96, 96, 1), 0);
	CU_ASSERT_EQUAL(kb_cuda_mmv_act(ctx, w, act, y, 2), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_act_prepare(ctx, act, x, 64, 64, 1), 0);
	CU_ASSERT_EQUAL(kb_cuda_mmv_act(ctx, w, act, y, 1), -EINVAL); /* ldy < rows */
	CU_ASSERT_EQUAL(kb_cuda_mmv_act(ctx, w, act, y, 2), 0);
	/* prepared for f16 products, then int8 turned on: the int8 planes were never written */
	CU_ASSERT_EQUAL(kb_cuda_set_mmv_i8(ctx, 1, 0), 0);
	CU_ASSERT_EQUAL(kb_cuda_act_prepare(ctx, act, x, 64, 64, 1), 0);
	CU_ASSERT_EQUAL(kb_cuda_set_mmv_i8(ctx, 1, 1), 0);
	CU_ASSERT_EQUAL(kb_cuda_mmv_act(ctx, w, act, y, 2), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_act_prepare(ctx, act, x, 64, 64, 1), 0);
	CU_ASSERT_EQUAL(kb_cuda_mmv_act(ctx, w, act, y, 2), 0);
	CU_ASSERT_EQUAL(kb_cuda_set_mmv_i8(ctx, 0, -1), 0);
	CU_ASSERT_EQUAL(kb_cuda_set_mmv_i8(ctx, 0, 2), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_mmv(ctx, w, x, 64, y, 2, 0), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_sync(ctx), 0);
	KbCudaWeightInfo wi;
	kb_cuda_weight_info(w, &wi);
	CU_ASSERT_EQUAL(wi.gguf_bytes, 2 * 2 * 18);
	CU_ASSERT(wi.dev_bytes >= wi.gguf_bytes);
	kb_cuda_dev_free(ctx, x);
	kb_cuda_dev_free(ctx, y);
	kb_cuda_act_free(act);
	kb_cuda_weight_free(w);
	kb_cuda_weight_free(NULL);
	kb_cuda_act_free(NULL);
}

static void test_upload(void)
{
	if (!ensure_ctx("upload"))
		return;
	/* larger than one staging buffer, odd length: exercises both buffers and the tail */
	const size_t n = (small() ? ((size_t)3 << 20) : ((size_t)70 << 20)) + 4093;
	uint8_t *a = malloc(n), *b = malloc(n);
	void *dev = NULL;
	uint64_t s = 5, bytes0, bytes1;
	double sec0, sec1;
	CU_ASSERT_FATAL(a && b);
	for (size_t i = 0; i < n; i++)
		a[i] = (uint8_t)(qg_next(&s) >> 56);
	memset(b, 0, n);
	kb_cuda_upload_stats(ctx, &bytes0, &sec0);
	CU_ASSERT_EQUAL_FATAL(kb_cuda_alloc(ctx, n, &dev), 0);
	CU_ASSERT_EQUAL(kb_cuda_upload(ctx, dev, a, n), 0);
	CU_ASSERT_EQUAL(kb_cuda_download(ctx, b, dev, n), 0);
	CU_ASSERT(memcmp(a, b, n) == 0);
	kb_cuda_upload_stats(ctx, &bytes1, &sec1);
	CU_ASSERT_EQUAL(bytes1 - bytes0, n);
	CU_ASSERT(sec1 > sec0);
	printf("\n    upload %.1f MiB: %.2f GB/s\n", n / 1048576.0, n / (sec1 - sec0) / 1e9);
	kb_cuda_dev_free(ctx, dev);
	free(a);
	free(b);
}

/* ---- products ---- */

typedef struct {
	int64_t rows, cols;
} Shape;

typedef struct {
	int warps, rt, pf, persist, stages;
} Cfg;

/* persist 1 (one block per multiprocessor) makes blocks walk several row groups */
/* stages > 0: the bulk-copy pipeline (sm_90; elsewhere the same configuration without it);
 * 2 slots with persist 1 make each warp's ring wrap many times */
static const Cfg cfgs[] = { { 8, 1, 0, 64, 0 }, { 8, 2, 1, 1, 0 }, { 4, 2, 0, 0, 0 }, { 1, 1, 2, 1, 0 },
			    { 8, 1, 2, 0, 0 }, { 8, 1, 0, 64, 4 }, { 8, 2, 0, 1, 2 }, { 4, 1, 0, 0, 3 },
			    { 1, 2, 0, 1, 8 } };

/* Bound on ||y - ref|| / ||sum_c |w x|||: f16 activations round each product by at
 * most 2^-11 relative; bf16 hi + lo by about 2^-16; int8 levels by up to 1/254 of their
 * block's largest value (a one-row 32-column product reaches 1.5e-3), so those get the
 * CPU backend's bound and a much tighter one against the rounded x (I8_EXACT_BOUND).
 * (||ref|| itself can be small by cancellation; a wrong layout still shows as about
 * 1/sqrt(cols), >= 1e-2 here.) */
static double bound_for(int type, int i8)
{
	return i8 ? 1e-2 : type == QD_TYPE_BF16 ? 1e-4 : 1e-3;
}

/* x rounded as the int8 products see it: each 32-column block to Q8_0 levels exactly as
 * the CPU backend's activations (d = amax / 127, q = roundf(x / d), d kept as f16); and
 * per block corr = s - sum(out) with s Q8_1's f16(d sum(q)), which Q4_1's and Q4_K's
 * minimums meet. */
static void q8_levels(const float *x, int64_t cols, double *out, double *corr)
{
	for (int64_t b = 0; b < (cols + 31) / 32; b++) {
		const int64_t c0 = b * 32, n = cols - c0 < 32 ? cols - c0 : 32;
		float amax = 0.f;
		for (int64_t j = 0; j < n; j++)
			amax = fabsf(x[c0 + j]) > amax ? fabsf(x[c0 + j]) : amax;
		const float d = amax / 127.0f, id = d != 0.f ? 1.0f / d : 0.f;
		const double d16 = qd_f16_to_f32(qd_f32_to_f16(d));
		int qsum = 0;
		for (int64_t j = 0; j < n; j++) {
			const float q = roundf(x[c0 + j] * id);
			qsum += (int)q;
			out[c0 + j] = d16 * (double)q;
		}
		corr[b] = (double)qd_f16_to_f32(qd_f32_to_f16((float)qsum * d)) - d16 * qsum;
	}
}

/* With int8 activations the products must equal the CPU backend's int8 dot products,
 * (weight) x (rounded x), up to f32 accumulation: any misplaced level or block scale is
 * far above this. */
#define I8_EXACT_BOUND 1e-5

/* One (type, shape): the reference for 8 tokens once, then every n_tok and config. */
static void check_shape(int type, Shape sh, uint64_t seed)
{
	int bsz, blck = qg_block(type, &bsz);
	const int64_t rows = sh.rows, cols = sh.cols, ldy = rows + 5, ldx = cols + 3;
	const int64_t row_bytes = cols / blck * bsz;
	uint64_t s = seed;
	uint8_t *raw = malloc((size_t)(rows * row_bytes));
	float *x = malloc(sizeof(float) * 8 * ldx);
	double *ref = calloc((size_t)(8 * rows), sizeof(double));
	double *mag = calloc((size_t)(8 * rows), sizeof(double)); /* sum_c |w x| */
	double *ref8 = calloc((size_t)(8 * rows), sizeof(double)); /* the same with x8 */
	double *x8 = malloc(sizeof(double) * 8 * cols), *corr = calloc((size_t)(8 * (cols / 32 + 1)), sizeof(double));
	double *wrow = malloc(sizeof(double) * cols);
	uint32_t *y = malloc(sizeof(float) * 8 * ldy);
	CU_ASSERT_FATAL(raw && x && ref && mag && ref8 && x8 && corr && wrow && y);
	qg_fill(type, raw, rows * (cols / blck), &s);
	for (int64_t i = 0; i < 8 * ldx; i++)
		x[i] = qg_signed(&s, 0.f, 2.f);
	for (int t = 0; t < 8; t++)
		q8_levels(x + t * ldx, cols, x8 + t * cols, corr + t * (cols / 32 + 1));
	for (int64_t r = 0; r < rows; r++) {
		qg_dequant_row(type, raw + r * row_bytes, cols, wrow);
		for (int t = 0; t < 8; t++) {
			double acc = 0, am = 0, a8 = 0;
			for (int64_t c = 0; c < cols; c++) {
				acc += wrow[c] * x[t * ldx + c];
				am += fabs(wrow[c] * x[t * ldx + c]);
				a8 += wrow[c] * x8[t * cols + c];
			}
			for (int64_t b = 0; b < cols / 32; b++) /* + m (s - sum(x8)) */
				a8 += qg_block_min(type, raw + r * row_bytes, b) * corr[t * (cols / 32 + 1) + b];
			ref[t * rows + r] = acc;
			mag[t * rows + r] = am;
			ref8[t * rows + r] = a8;
		}
	}

	KbCudaWeight *w = NULL;
	KbCudaAct *act = NULL;
	float *dx = NULL, *dy = NULL;
	int r = kb_cuda_weight_upload(ctx, type, rows, cols, raw, &w);
	CU_ASSERT_EQUAL(r, 0);
	if (r == 0)
		r = kb_cuda_act_new(ctx, cols, &act);
	if (r == 0)
		r = kb_cuda_alloc(ctx, sizeof(float) * 8 * ldx, (void **)&dx);
	if (r == 0)
		r = kb_cuda_alloc(ctx, sizeof(float) * 8 * ldy, (void **)&dy);
	if (r == 0)
		r = kb_cuda_upload(ctx, dx, x, sizeof(float) * 8 * ldx);
	CU_ASSERT_EQUAL(r, 0);
	static const int ntoks[] = { 1, 2, 3, 8 };
	const size_t ncfg = sizeof(cfgs) / sizeof(cfgs[0]);
	for (size_t k = 0; r == 0 && k < sizeof(ntoks) / sizeof(ntoks[0]); k++) {
		const int nt = ntoks[k];
		/* the int8 types: every configuration with int8 activations, then with f16 */
		for (size_t cj = 0; cj < (kb_cuda_i8_type(type) ? 2 * ncfg : ncfg); cj++) {
			const Cfg *c = &cfgs[cj % ncfg];
			const int i8 = kb_cuda_i8_type(type) && cj < ncfg;
			CU_ASSERT_EQUAL(kb_cuda_set_mmv_config(ctx, nt, c->warps, c->rt, c->pf, c->persist), 0);
			CU_ASSERT_EQUAL(kb_cuda_set_mmv_stages(ctx, nt, c->stages), 0);
			CU_ASSERT_EQUAL(kb_cuda_set_mmv_i8(ctx, nt, i8), 0);
			/* poison: 0xffffffff is a NaN; rows past the end and tokens past n_tok
			 * must keep it, every other element must be overwritten */
			int rr = kb_cuda_memset(ctx, dy, 0xff, sizeof(float) * 8 * ldy);
			if (rr == 0)
				rr = kb_cuda_act_prepare(ctx, act, dx, ldx, cols, nt);
			if (rr == 0)
				rr = kb_cuda_mmv_act(ctx, w, act, dy, ldy);
			if (rr == 0)
				rr = kb_cuda_download(ctx, y, dy, sizeof(float) * 8 * ldy);
			CU_ASSERT_EQUAL(rr, 0);
			if (rr < 0) {
				r = rr;
				break;
			}
			double num = 0, den = 0, num8 = 0;
			int64_t bad_guard = 0, bad_val = 0;
			for (int t = 0; t < 8; t++)
				for (int64_t i = 0; i < ldy; i++) {
					uint32_t bits = y[t * ldy + i];
					if (t >= nt || i >= rows) {
						bad_guard += bits != 0xffffffffu;
						continue;
					}
					float v;
					memcpy(&v, &bits, 4);
					if (!isfinite(v)) {
						bad_val++;
						continue;
					}
					double e = v - ref[t * rows + i], e8 = v - ref8[t * rows + i];
					num += e * e;
					num8 += e8 * e8;
					den += mag[t * rows + i] * mag[t * rows + i];
				}
			double rel = den > 0 ? sqrt(num / den) : INFINITY;
			double rel8 = den > 0 ? sqrt(num8 / den) : INFINITY;
			const int exact = i8;
			int ok = bad_guard == 0 && bad_val == 0 && rel <= bound_for(type, i8) &&
				 (!exact || rel8 <= I8_EXACT_BOUND);
			printf("\n    %-4s %5lldx%-5lld n_tok=%d w%d/rt%d/pf%d/ps%d/st%d%s: rel %.2e (bound %.0e)",
			       qd_type_traits(type)->name, (long long)rows, (long long)cols, nt, c->warps,
			       c->rt, c->pf, c->persist, c->stages, i8 ? "/i8" : "", rel,
			       bound_for(type, i8));
			if (exact)
				printf(", to rounded x %.2e (bound %.0e)", rel8, I8_EXACT_BOUND);
			printf("%s", ok ? "" : "  FAIL");
			if (bad_guard || bad_val)
				printf(" guard %lld non-finite %lld", (long long)bad_guard, (long long)bad_val);
			CU_ASSERT(ok);
		}
	}
	printf("\n");
	kb_cuda_dev_free(ctx, dx);
	kb_cuda_dev_free(ctx, dy);
	kb_cuda_act_free(act);
	kb_cuda_weight_free(w);
	free(raw);
	free(x);
	free(ref);
	free(mag);
	free(ref8);
	free(x8);
	free(corr);
	free(wrow);
	free(y);
}

static void check_type(int type, const char *test)
{
	if (!ensure_ctx(test))
		return;
	int bsz, blck = qg_block(type, &bsz);
	Shape shapes[4];
	if (blck == 256) {
		shapes[0] = (Shape){ 37, 256 };
		shapes[1] = (Shape){ 4097, 768 };
		shapes[2] = (Shape){ 130, 11008 };
		shapes[3] = (Shape){ 1, 256 };
	} else {
		shapes[0] = (Shape){ 37, blck == 1 ? 100 : 96 };
		shapes[1] = (Shape){ 4097, 544 };
		shapes[2] = (Shape){ 130, 11008 };
		shapes[3] = (Shape){ 1, 32 };
	}
	for (int i = 0; i < 4; i++)
		if (!small() || i == 0 || i == 3)
			check_shape(type, shapes[i], 1000 + 17 * (uint64_t)type + (uint64_t)i);
	kb_cuda_set_mmv_config(ctx, 0, 8, 1, 0, 64); /* back to the usual */
	kb_cuda_set_mmv_stages(ctx, 0, -1);
	kb_cuda_set_mmv_i8(ctx, 0, -1);
}

static void test_q4_0(void) { check_type(QD_TYPE_Q4_0, "q4_0"); }
static void test_q4_1(void) { check_type(QD_TYPE_Q4_1, "q4_1"); }
static void test_q8_0(void) { check_type(QD_TYPE_Q8_0, "q8_0"); }
static void test_q4_k(void) { check_type(QD_TYPE_Q4_K, "q4_k"); }
static void test_q6_k(void) { check_type(QD_TYPE_Q6_K, "q6_k"); }
static void test_f16(void) { check_type(QD_TYPE_F16, "f16"); }
static void test_bf16(void) { check_type(QD_TYPE_BF16, "bf16"); }

/* A dependent chain x -> W1 -> y1 -> W2 -> y2 run three ways (plain launches,
 * programmatic dependent launch, PDL inside a captured graph) must give identical bits:
 * the kernels are deterministic, so any difference is a race at a kernel boundary. */
static void test_chain(void)
{
	if (!ensure_ctx("chain"))
		return;
	const int64_t n = small() ? 512 : 4096;
	const int nt = 3;
	int bsz, blck = qg_block(QD_TYPE_Q4_0, &bsz);
	const size_t wbytes = (size_t)(n * (n / blck) * bsz);
	uint8_t *raw = malloc(wbytes);
	float *x = malloc(sizeof(float) * nt * n);
	float *y[3];
	uint64_t s = 77;
	CU_ASSERT_FATAL(raw && x);
	for (int i = 0; i < 3; i++) {
		y[i] = malloc(sizeof(float) * nt * n);
		CU_ASSERT_FATAL(y[i] != NULL);
	}
	for (int64_t i = 0; i < nt * n; i++)
		x[i] = qg_signed(&s, 0.f, 1.f);
	KbCudaWeight *w[2] = { NULL, NULL };
	KbCudaAct *act = NULL;
	float *dx = NULL, *d1 = NULL, *d2 = NULL;
	int r = 0;
	for (int i = 0; i < 2 && r == 0; i++) {
		qg_fill(QD_TYPE_Q4_0, raw, n * (n / blck), &s);
		r = kb_cuda_weight_upload(ctx, QD_TYPE_Q4_0, n, n, raw, &w[i]);
	}
	if (r == 0)
		r = kb_cuda_act_new(ctx, n, &act);
	if (r == 0)
		r = kb_cuda_alloc(ctx, sizeof(float) * nt * n, (void **)&dx);
	if (r == 0)
		r = kb_cuda_alloc(ctx, sizeof(float) * nt * n, (void **)&d1);
	if (r == 0)
		r = kb_cuda_alloc(ctx, sizeof(float) * nt * n, (void **)&d2);
	if (r == 0)
		r = kb_cuda_upload(ctx, dx, x, sizeof(float) * nt * n);
	CU_ASSERT_EQUAL_FATAL(r, 0);
	for (int mode = 0; mode < 3; mode++) {
		KbCudaGraph *g = NULL;
		kb_cuda_set_pdl(ctx, mode > 0);
		r = kb_cuda_memset(ctx, d2, 0xff, sizeof(float) * nt * n);
		if (r == 0 && mode == 2)
			r = kb_cuda_capture_begin(ctx);
		/* several rounds so that a late kernel would overlap an early one */
		for (int round = 0; round < 4 && r == 0; round++) {
			r = kb_cuda_act_prepare(ctx, act, dx, n, n, nt);
			if (r == 0)
				r = kb_cuda_mmv_act(ctx, w[0], act, d1, n);
			if (r == 0)
				r = kb_cuda_act_prepare(ctx, act, d1, n, n, nt);
			if (r == 0)
				r = kb_cuda_mmv_act(ctx, w[1], act, d2, n);
		}
		if (r == 0 && mode == 2) {
			r = kb_cuda_capture_end(ctx, &g);
			if (r == 0)
				r = kb_cuda_graph_launch(ctx, g);
		}
		if (r == 0)
			r = kb_cuda_download(ctx, y[mode], d2, sizeof(float) * nt * n);
		kb_cuda_graph_free(g);
		CU_ASSERT_EQUAL(r, 0);
	}
	kb_cuda_set_pdl(ctx, 1);
	int finite = 1;
	for (int64_t i = 0; i < nt * n; i++)
		finite &= isfinite(y[0][i]) != 0;
	CU_ASSERT(finite);
	CU_ASSERT(memcmp(y[0], y[1], sizeof(float) * nt * n) == 0);
	CU_ASSERT(memcmp(y[0], y[2], sizeof(float) * nt * n) == 0);
	kb_cuda_dev_free(ctx, dx);
	kb_cuda_dev_free(ctx, d1);
	kb_cuda_dev_free(ctx, d2);
	kb_cuda_act_free(act);
	kb_cuda_weight_free(w[0]);
	kb_cuda_weight_free(w[1]);
	for (int i = 0; i < 3; i++)
		free(y[i]);
	free(raw);
	free(x);
}

/* kb_cuda_mmv_qkv_rope against kb_cuda_mmv_multi + kb_cuda_rope_kv_store, bit for bit,
 * with fewer warps a block than tokens (configurations of 8, 4 and 2 warps, 8 tokens): the
 * RoPE epilogue's positions, slots and angles are written before the wait by warp
 * nw - 1 - t % nw for token t, so with 2 warps each writes four tokens'. */
static void test_rope_warps(void)
{
	if (!ensure_ctx("rope_warps"))
		return;
	enum { NT = 8, NH = 4, NKV = 2, HD = 64, COLS = 256, CTX = 40 };
	const int64_t rows[3] = { NH * HD, NKV * HD, NKV * HD }, stride = (int64_t)CTX * NKV * HD;
	int bsz, blck = qg_block(QD_TYPE_Q4_0, &bsz);
	uint64_t s = 0x5eed;
	KbCudaWeight *w[3] = { NULL, NULL, NULL };
	KbCudaAct *act = NULL;
	float *x = malloc(sizeof(float) * NT * COLS), *dx = NULL, *dy[2][3] = { { NULL } };
	uint16_t *kc[2] = { NULL, NULL }, *vc[2] = { NULL, NULL };
	int32_t idx[2 * NT], *dpos = NULL;
	const size_t cache = sizeof(uint16_t) * 2 * (size_t)stride; /* two sequences */
	uint8_t *raw = malloc((size_t)(rows[0] * (COLS / blck) * bsz));
	void *ha = malloc(cache), *hb = malloc(cache);
	CU_ASSERT_FATAL(x && raw && ha && hb);
	for (int i = 0; i < NT * COLS; i++)
		x[i] = qg_signed(&s, 0.f, 1.f);
	for (int t = 0; t < NT; t++) {
		idx[t] = 3 + 4 * t + t % 3; /* positions */
		idx[NT + t] = t % 2;        /* slots */
	}
	int r = 0;
	for (int i = 0; i < 3 && r == 0; i++) {
		qg_fill(QD_TYPE_Q4_0, raw, rows[i] * (COLS / blck), &s);
		r = kb_cuda_weight_upload(ctx, QD_TYPE_Q4_0, rows[i], COLS, raw, &w[i]);
	}
	if (r == 0)
		r = kb_cuda_act_new(ctx, COLS, &act);
	if (r == 0)
		r = kb_cuda_alloc(ctx, sizeof(float) * NT * COLS, (void **)&dx);
	if (r == 0)
		r = kb_cuda_alloc(ctx, sizeof(idx), (void **)&dpos);
	for (int k = 0; k < 2 && r == 0; k++) {
		for (int i = 0; i < 3 && r == 0; i++)
			r = kb_cuda_alloc(ctx, sizeof(float) * NT * (size_t)rows[i], (void **)&dy[k][i]);
		if (r == 0)
			r = kb_cuda_alloc(ctx, cache, (void **)&kc[k]);
		if (r == 0)
			r = kb_cuda_alloc(ctx, cache, (void **)&vc[k]);
	}
	if (r == 0)
		r = kb_cuda_upload(ctx, dx, x, sizeof(float) * NT * COLS);
	if (r == 0)
		r = kb_cuda_upload(ctx, dpos, idx, sizeof(idx));
	CU_ASSERT_EQUAL_FATAL(r, 0);
	static const int warps[] = { 8, 4, 2 };
	int bad = 0;
	for (int wi = 0; wi < 3; wi++) {
		CU_ASSERT_EQUAL(kb_cuda_set_mmv_config(ctx, 0, warps[wi], -1, -1, -1), 0);
		for (int k = 0; k < 2; k++) {
			CU_ASSERT_EQUAL(kb_cuda_memset(ctx, kc[k], 0, cache), 0);
			CU_ASSERT_EQUAL(kb_cuda_memset(ctx, vc[k], 0, cache), 0);
		}
		const KbCudaRope rope = { .pos = dpos, .seq = dpos + NT, .k_cache = kc[0], .v_cache = vc[0],
					  .slot_stride = stride, .head_dim = HD, .rot_dim = HD,
					  .theta_scale = powf(10000.f, -2.f / HD) };
		CU_ASSERT_EQUAL(kb_cuda_act_prepare(ctx, act, dx, COLS, COLS, NT), 0);
		CU_ASSERT_EQUAL(kb_cuda_mmv_qkv_rope(ctx, (const KbCudaWeight *const *)w, act, dy[0], &rope), 0);
		CU_ASSERT_EQUAL(kb_cuda_mmv_multi(ctx, 3, (const KbCudaWeight *const *)w, act, dy[1], 0), 0);
		CU_ASSERT_EQUAL(kb_cuda_rope_kv_store(ctx, dy[1][0], dy[1][1], dy[1][2], kc[1], vc[1], dpos, dpos + NT, NT,
						      NH, NKV, HD, HD, rope.theta_scale, stride),
				0);
		int diff = 0;
		for (int i = 0; i < 3; i++) {
			const size_t b = sizeof(float) * NT * (size_t)rows[i];
			CU_ASSERT_EQUAL(kb_cuda_download(ctx, ha, dy[0][i], b), 0);
			CU_ASSERT_EQUAL(kb_cuda_download(ctx, hb, dy[1][i], b), 0);
			diff += memcmp(ha, hb, b) != 0;
		}
		uint16_t *const c[2][2] = { { kc[0], kc[1] }, { vc[0], vc[1] } };
		for (int i = 0; i < 2; i++) {
			CU_ASSERT_EQUAL(kb_cuda_download(ctx, ha, c[i][0], cache), 0);
			CU_ASSERT_EQUAL(kb_cuda_download(ctx, hb, c[i][1], cache), 0);
			diff += memcmp(ha, hb, cache) != 0;
		}
		if (diff)
			printf("\n    %d warps: %d of 5 outputs differ\n", warps[wi], diff);
		bad += diff != 0;
	}
	CU_ASSERT_EQUAL(bad, 0);
	kb_cuda_set_mmv_config(ctx, 0, 8, -1, -1, -1); /* back to the usual */
	for (int k = 0; k < 2; k++) {
		for (int i = 0; i < 3; i++)
			kb_cuda_dev_free(ctx, dy[k][i]);
		kb_cuda_dev_free(ctx, kc[k]);
		kb_cuda_dev_free(ctx, vc[k]);
	}
	kb_cuda_dev_free(ctx, dx);
	kb_cuda_dev_free(ctx, dpos);
	kb_cuda_act_free(act);
	for (int i = 0; i < 3; i++)
		kb_cuda_weight_free(w[i]);
	free(raw);
	free(x);
	free(ha);
	free(hb);
}

/* Poisons (0xff: a NaN) weight i's outputs and the guard after them, uploads y0's first n
 * rows over the outputs when acc, and launches the three weights' product. */
static int mmq_launch3(const KbCudaWeight *const *w, const float *dx, int n, void *scratch, float *const *dy,
		       float *const *y0, const int64_t *rows, int64_t cap, int acc)
{
	int r = 0;
	for (int i = 0; i < 3 && r == 0; i++) {
		r = kb_cuda_memset(ctx, dy[i], 0xff, sizeof(float) * (size_t)cap);
		if (r == 0 && acc)
			r = kb_cuda_upload(ctx, dy[i], y0[i], sizeof(float) * (size_t)(n * rows[i]));
	}
	return r == 0 ? kb_cuda_mmq(ctx, 3, w, dx, n, scratch, dy, acc) : r;
}

/* The many-token products (kb_cuda_mmq) under each way of sharing a launch's work
 * (kb_cuda_set_mmq_shares: none, and shares of 1-8 units): three weights of one type in
 * one launch, with row counts that leave partial tiles and row blocks (4 + 2 + 3 row
 * blocks, 9 or 36 column chunks, so that shares cross row blocks and weights, or hold a
 * row block whole), 12, 20, 40 and 100 tokens (the 16-, 32- and 64-token kernels, one and
 * two token blocks), with and without acc, each value against the double reference.  A launch
 * after one with another sharing gives the same bits as before (the partial sums meet in
 * a fixed order and their counters are reset), and nothing past a weight's n x rows
 * outputs is written. */
static void test_mmq_shares(void)
{
	if (!ensure_ctx("mmq_shares"))
		return;
	/* Q8_0: the GEMM's chunk is half its decode chunk (KB_TYPE_Q8_0_F16), so its units are
	 * twice geo.n_chunks */
	static const int types[] = { QD_TYPE_Q4_0, QD_TYPE_Q4_K, QD_TYPE_Q6_K, QD_TYPE_F16, QD_TYPE_Q8_0 };
	static const int64_t rows[3] = { 390, 130, 300 };
	static const int shares[][2] = { { 0, 2 }, { 1, 1 }, { 2, 2 }, { 2, 3 }, { 2, 5 }, { 2, 8 }, { 4, 1 } };
	static const int ns[] = { 12, 20, 40, 100 };
	const size_t nsh = sizeof(shares) / sizeof(shares[0]);
	const int64_t cols = 2304, guard = 64, rmax = 390;
	const int nmax = 100;
	const int64_t cap = nmax * rmax + guard;
	uint64_t s = 0x5ead;
	for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
		const int type = types[ti];
		int bsz, blck = qg_block(type, &bsz);
		const int64_t row_bytes = cols / blck * bsz;
		uint8_t *raw[3];
		double *ref[3], *mag[3];
		float *y0[3];
		uint32_t *hy[3], *h1 = malloc(sizeof(float) * (size_t)cap);
		float *x = malloc(sizeof(float) * (size_t)(nmax * cols));
		double *wrow = malloc(sizeof(double) * (size_t)cols);
		CU_ASSERT_FATAL(h1 && x && wrow);
		for (int64_t i = 0; i < nmax * cols; i++)
			x[i] = qg_signed(&s, 0.f, 2.f);
		KbCudaWeight *w[3] = { NULL, NULL, NULL };
		float *dy[3] = { NULL, NULL, NULL }, *dx = NULL;
		void *scratch = NULL;
		int r = kb_cuda_alloc(ctx, sizeof(float) * (size_t)(nmax * cols), (void **)&dx);
		if (r == 0)
			r = kb_cuda_upload(ctx, dx, x, sizeof(float) * (size_t)(nmax * cols));
		if (r == 0)
			r = kb_cuda_alloc(ctx, kb_cuda_mmq_scratch(cols, nmax), &scratch);
		for (int i = 0; i < 3; i++) {
			raw[i] = malloc((size_t)(rows[i] * row_bytes));
			ref[i] = calloc((size_t)(nmax * rows[i]), sizeof(double));
			mag[i] = calloc((size_t)(nmax * rows[i]), sizeof(double));
			y0[i] = malloc(sizeof(float) * (size_t)(nmax * rows[i]));
			hy[i] = malloc(sizeof(float) * (size_t)cap);
			CU_ASSERT_FATAL(raw[i] && ref[i] && mag[i] && y0[i] && hy[i]);
			qg_fill(type, raw[i], rows[i] * (cols / blck), &s);
			for (int64_t k = 0; k < nmax * rows[i]; k++)
				y0[i][k] = qg_signed(&s, 0.f, 1.f);
			for (int64_t rr = 0; rr < rows[i]; rr++) {
				qg_dequant_row(type, raw[i] + rr * row_bytes, cols, wrow);
				for (int t = 0; t < nmax; t++) {
					double acc = 0, am = 0;
					for (int64_t c = 0; c < cols; c++) {
						acc += wrow[c] * x[t * cols + c];
						am += fabs(wrow[c] * x[t * cols + c]);
					}
					ref[i][t * rows[i] + rr] = acc;
					mag[i][t * rows[i] + rr] = am;
				}
			}
			if (r == 0)
				r = kb_cuda_weight_upload(ctx, type, rows[i], cols, raw[i], &w[i]);
			if (r == 0)
				r = kb_cuda_alloc(ctx, sizeof(float) * (size_t)cap, (void **)&dy[i]);
		}
		CU_ASSERT_EQUAL(r, 0);
		const KbCudaWeight *wc[3] = { w[0], w[1], w[2] };
		for (size_t ni = 0; r == 0 && ni < sizeof(ns) / sizeof(ns[0]); ni++)
			for (size_t si = 0; r == 0 && si < nsh; si++)
				for (int acc = 0; r == 0 && acc < 2; acc++) {
					const int n = ns[ni];
					CU_ASSERT_EQUAL(kb_cuda_set_mmq_shares(ctx, shares[si][0], shares[si][1]), 0);
					r = mmq_launch3(wc, dx, n, scratch, dy, y0, rows, cap, acc);
					double num = 0, den = 0, worst = 0;
					int64_t bad_guard = 0, bad_val = 0, differ = 0;
					for (int i = 0; i < 3 && r == 0; i++) {
						const int64_t m = n * rows[i];
						r = kb_cuda_download(ctx, hy[i], dy[i], sizeof(float) * (size_t)(m + guard));
						for (int64_t k = 0; r == 0 && k < m + guard; k++) {
							if (k >= m) {
								bad_guard += hy[i][k] != 0xffffffffu;
								continue;
							}
							float v;
							memcpy(&v, &hy[i][k], 4);
							if (!isfinite(v)) {
								bad_val++;
								continue;
							}
							const double e = v - (acc ? (double)y0[i][k] : 0.0) - ref[i][k];
							const double ev = fabs(e) / (bound_for(type, 0) * mag[i][k] + 1e-6);
							worst = ev > worst ? ev : worst;
							num += e * e;
							den += mag[i][k] * mag[i][k];
						}
					}
					/* again, after a launch shared another way, over fresh poison: the same bits */
					if (r == 0 && !acc) {
						r = kb_cuda_set_mmq_shares(ctx, shares[(si + 1) % nsh][0], shares[(si + 1) % nsh][1]);
						if (r == 0)
							r = mmq_launch3(wc, dx, n, scratch, dy, y0, rows, cap, 0);
						if (r == 0)
							r = kb_cuda_set_mmq_shares(ctx, shares[si][0], shares[si][1]);
						if (r == 0)
							r = mmq_launch3(wc, dx, n, scratch, dy, y0, rows, cap, 0);
						for (int i = 0; i < 3 && r == 0; i++) {
							const int64_t m = n * rows[i];
							r = kb_cuda_download(ctx, h1, dy[i], sizeof(float) * (size_t)m);
							for (int64_t k = 0; r == 0 && k < m; k++)
								differ += h1[k] != hy[i][k];
						}
					}
					CU_ASSERT_EQUAL(r, 0);
					const double rel = den > 0 ? sqrt(num / den) : INFINITY;
					const int ok = r == 0 && bad_guard == 0 && bad_val == 0 && differ == 0 && worst <= 1;
					CU_ASSERT(ok);
					printf("\n    mmq %-4s n=%-3d shares %d,%d acc %d: rel %.2e, worst %.3f of the bound%s",
					       qd_type_traits(type)->name, n, shares[si][0], shares[si][1], acc, rel, worst,
					       ok ? "" : "  FAIL");
					if (bad_guard || bad_val || differ)
						printf(" guard %lld non-finite %lld repeat differs %lld", (long long)bad_guard,
						       (long long)bad_val, (long long)differ);
				}
		printf("\n");
		CU_ASSERT_EQUAL(kb_cuda_set_mmq_shares(ctx, KB_MMQ_MAX_WAVES, KB_MMQ_MIN_UNITS), 0);
		for (int i = 0; i < 3; i++) {
			kb_cuda_weight_free(w[i]);
			kb_cuda_dev_free(ctx, dy[i]);
			free(raw[i]);
			free(ref[i]);
			free(mag[i]);
			free(y0[i]);
			free(hy[i]);
		}
		kb_cuda_dev_free(ctx, dx);
		kb_cuda_dev_free(ctx, scratch);
		free(h1);
		free(x);
		free(wrow);
	}
	CU_ASSERT_EQUAL(kb_cuda_set_mmq_shares(ctx, 65, 2), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_set_mmq_shares(ctx, -1, 2), -EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_set_mmq_shares(ctx, 2, 0), -EINVAL);
}

static void test_done(void)
{
	if (!ensure_ctx("done"))
		return;
	CU_ASSERT_EQUAL(kb_cuda_sync(ctx), 0);
	kb_cuda_free(ctx);
	ctx = NULL;
	kb_cuda_free(NULL);
}

int main(void)
{
	static const TuTest tests[] = {
		{ "errors", test_errors, gpu_skip }, { "upload", test_upload, gpu_skip },
		{ "q4_0", test_q4_0, gpu_skip },     { "q4_1", test_q4_1, gpu_skip },
		{ "q8_0", test_q8_0, gpu_skip },     { "q4_k", test_q4_k, gpu_skip },
		{ "q6_k", test_q6_k, gpu_skip },     { "f16", test_f16, gpu_skip },
		{ "bf16", test_bf16, gpu_skip },     { "chain", test_chain, gpu_skip },
		{ "rope_warps", test_rope_warps, gpu_skip },
		{ "mmq_shares", test_mmq_shares, gpu_skip }, { "done", test_done, gpu_skip },
		{ NULL, NULL, NULL },
	};
	return tu_main("cuda-mmv", tests);
}
