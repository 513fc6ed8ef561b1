/* tests/test-backend.c: the CUDA backend against the CPU backend, op by op through the
 * ops table (kernels/backend.h) on fresh random inputs: embedding rows, products of 1-100
 * tokens for every type (both product kernels and every GEMM shape) against a double
 * reference, several weights in one product, norms, RoPE, SwiGLU, the KV store and
 * attention; and backend selection.  The fused forms and the device's sampling are in
 * test-fused.c, whole steps and models in test-steps.c.  Tests
 * that need a GPU are skipped (CUnit "Inactive") on machines without one and in builds
 * without CUDA; the backend-selection test runs everywhere. */
#include "tests/backend_util.h"
#ifdef QD_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

static const int all_types[] = { QD_TYPE_Q4_0, QD_TYPE_Q4_1, QD_TYPE_Q8_0, QD_TYPE_Q4_K,
				 QD_TYPE_Q6_K, QD_TYPE_F16, QD_TYPE_BF16 };

/* get_rows of 9 rows (repeats, first and last) of a random 37-row TYPE table COLS wide:
 * the GPU's rows equal the CPU's, and an id past the table is refused. */
static void get_rows_case(int type, int64_t cols, uint64_t *s)
{
	const int64_t rows = 37;
	size_t bytes;
	uint8_t *raw = rand_weight(type, rows, cols, s, &bytes);
	CU_ASSERT_PTR_NOT_NULL_FATAL(raw);
	KbWeight wc = { type, rows, cols, raw, NULL, 0 }, wg = wc;
	CU_ASSERT_EQUAL_FATAL(cpu->ops->weight_prepare(cpu, &wc), 0);
	CU_ASSERT_EQUAL_FATAL(gpu->ops->weight_prepare(gpu, &wg), 0);
	int32_t ids[9] = { 0, 36, 5, 5, 17, 1, 35, 20, 0 };
	float *oc = malloc(sizeof(float) * 9 * cols), *og = malloc(sizeof(float) * 9 * cols);
	float *dg = buf_in(gpu, NULL, sizeof(float) * 9 * cols);
	CU_ASSERT_FATAL(oc && og && dg);
	CU_ASSERT_EQUAL(cpu->ops->get_rows(cpu, &wc, ids, 9, oc), 0);
	CU_ASSERT_EQUAL(gpu->ops->get_rows(gpu, &wg, ids, 9, dg), 0);
	CU_ASSERT_EQUAL(buf_out(gpu, og, dg, sizeof(float) * 9 * cols), 0);
	int64_t at = 0;
	double w = worst(og, oc, oc, 9 * cols, 1e-30, 1e-6, &at);
	CU_ASSERT(w <= 1);
	if (w > 1)
		printf("\n    get_rows %s: element %lld gpu %g cpu %g\n", qd_type_traits(type)->name,
		       (long long)at, og[at], oc[at]);
	int32_t bad[2] = { 1, (int32_t)rows };
	CU_ASSERT_EQUAL(gpu->ops->get_rows(gpu, &wg, bad, 2, dg), -EINVAL);
	gpu->ops->release(gpu, dg);
	gpu->ops->weight_release(gpu, &wg);
	cpu->ops->weight_release(cpu, &wc);
	free(oc);
	free(og);
	free(raw);
}

static void test_get_rows(void)
{
	if (!ready())
		return;
	const int types[] = { QD_TYPE_F32, QD_TYPE_F16, QD_TYPE_BF16, QD_TYPE_Q8_0,
			      QD_TYPE_Q4_0, QD_TYPE_Q4_1, QD_TYPE_Q4_K, QD_TYPE_Q6_K };
	/* rows of 768 columns; of 576, SmolLM2's width (the K types have none); of 8448 */
	const int64_t widths[] = { 768, 576, 8448 };
	uint64_t s = 0x51;
	for (size_t wi = 0; wi < sizeof(widths) / sizeof(widths[0]); wi++)
		for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++)
			if (widths[wi] % qd_type_traits(types[ti])->blck == 0)
				get_rows_case(types[ti], widths[wi], &s);
}

/* Whether the CUDA backend gives TYPE's products of n tokens int8 activations: its default
 * (kb_i8_use: one token, and only with more than this suite's 1 GiB of weights, so none
 * here) or what QD_CUDA_MMV_I8 forces (run the suite with QD_CUDA_MMV_I8=1 to check every
 * int8 path against the CPU). */
static int gpu_i8(int type, int n)
{
#ifdef QD_HAVE_CUDA
	const char *e = getenv("QD_CUDA_MMV_I8");
	/* above 8 tokens the backend runs the GEMM (f16 activations) */
	if (n > 8 || !kb_cuda_i8_type(type))
		return 0;
	if (e && *e)
		return atoi(e) != 0;
#else
	(void)type;
	(void)n;
#endif
	return 0;
}

/* GPU and CPU products against a double-precision product of the dequantized weights,
 * each within a share of sum |w x| (the size of the terms, not of the result): the GPU
 * rounds activations to f16 (2^-11 relative), the CPU to 8-bit blocks, and so does the
 * GPU for Q4_0, Q4_1, Q4_K, Q6_K and Q8_0 up to 8 tokens (int8 products): there the two
 * backends round the same activations the same way, so their results agree to f32
 * accumulation, except Q4_K's and Q6_K's, whose CPU dot products take Q8_K activations
 * (one scale per 256 columns; the GPU's is per 32), so only the 1e-2 bound applies to them. */
static void test_matmul(void)
{
	if (!ready())
		return;
	static const struct { int64_t rows, cols; int n; } shapes[] = {
		{ 1, 256, 1 }, { 37, 512, 3 }, { 100, 768, 8 }, /* the decode kernels */
		/* 9-100 tokens: the many-token kernel's 16-, 32- and 64-token blocks, one or two */
		{ 129, 1280, 9 }, { 300, 2304, 20 }, { 70, 512, 40 }, { 200, 1024, 100 },
		{ 2100, 256, 520 }, /* ... and prefill-sized steps, whose row blocks are not shared */
	};
	uint64_t s = 0x77;
	for (size_t ti = 0; ti < sizeof(all_types) / sizeof(all_types[0]); ti++) {
		const int type = all_types[ti];
		for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
			const int64_t rows = shapes[si].rows, cols = shapes[si].cols;
			const int n = shapes[si].n;
			const int i8 = gpu_i8(type, n), same8 = i8 && type != QD_TYPE_Q4_K && type != QD_TYPE_Q6_K;
			size_t bytes;
			uint8_t *raw = rand_weight(type, rows, cols, &s, &bytes);
			float *x = rand_f32((size_t)(n * cols), &s, 1.0f);
			float *yc = malloc(sizeof(float) * (size_t)(n * rows)), *yg = malloc(sizeof(float) * (size_t)(n * rows));
			float *wf = malloc(sizeof(float) * (size_t)cols);
			CU_ASSERT_FATAL(raw && x && yc && yg && wf);
			KbWeight wc = { type, rows, cols, raw, NULL, 0 }, wg = wc;
			int cpu_ok = cpu->ops->weight_prepare(cpu, &wc) == 0;
			CU_ASSERT_EQUAL_FATAL(gpu->ops->weight_prepare(gpu, &wg), 0);
			float *dx = buf_in(gpu, x, sizeof(float) * (size_t)(n * cols));
			float *dy = buf_in(gpu, NULL, sizeof(float) * (size_t)(n * rows));
			CU_ASSERT_FATAL(dx && dy);
			CU_ASSERT_EQUAL(gpu->ops->matmul(gpu, &wg, dx, n, dy), 0);
			CU_ASSERT_EQUAL(buf_out(gpu, yg, dy, sizeof(float) * (size_t)(n * rows)), 0);
			if (cpu_ok)
				CU_ASSERT_EQUAL(cpu->ops->matmul(cpu, &wc, x, n, yc), 0);
			uint64_t rb;
			qd_row_size(type, (uint64_t)cols, &rb);
			double wg_worst = 0, wc_worst = 0, w8_worst = 0;
			for (int64_t r = 0; r < rows; r++) {
				kb_cpu_dequantize_row_ref(type, raw + (size_t)r * rb, wf, cols);
				for (int t = 0; t < n; t++) {
					double ref = 0, mag = 0;
					for (int64_t c = 0; c < cols; c++) {
						ref += (double)wf[c] * x[t * cols + c];
						mag += fabs((double)wf[c] * x[t * cols + c]);
					}
					double eg = fabs(yg[t * rows + r] - ref) / ((i8 ? 1e-2 : 1e-3) * mag + 1e-6);
					double ec = cpu_ok ? fabs(yc[t * rows + r] - ref) / (1e-2 * mag + 1e-6) : 0;
					double e8 = same8 && cpu_ok ? fabs(yg[t * rows + r] - yc[t * rows + r]) / (1e-5 * mag + 1e-6) : 0;
					if (!(eg <= wg_worst))
						wg_worst = isnan(eg) ? INFINITY : eg;
					if (!(e8 <= w8_worst))
						w8_worst = isnan(e8) ? INFINITY : e8;
					if (ec > wc_worst)
						wc_worst = ec;
				}
			}
			CU_ASSERT(wg_worst <= 1);
			CU_ASSERT(wc_worst <= 1);
			CU_ASSERT(w8_worst <= 1);
			if (wg_worst > 1 || wc_worst > 1 || w8_worst > 1)
				printf("\n    matmul %s %lldx%lld n=%d: gpu error %.3g, cpu error %.3g, int8 gpu - cpu %.3g of "
				       "the bound\n", qd_type_traits(type)->name, (long long)rows, (long long)cols, n,
				       wg_worst, wc_worst, w8_worst);
			gpu->ops->release(gpu, dx);
			gpu->ops->release(gpu, dy);
			gpu->ops->weight_release(gpu, &wg);
			if (cpu_ok)
				cpu->ops->weight_release(cpu, &wc);
			free(raw);
			free(x);
			free(yc);
			free(yg);
			free(wf);
		}
	}
	/* a type without a product kernel is refused, not mangled */
	uint8_t dummy[22 * 4] = { 0 };
	KbWeight w5 = { QD_TYPE_Q5_0, 1, 128, dummy, NULL, 0 };
	CU_ASSERT_EQUAL(gpu->ops->weight_prepare(gpu, &w5), -EOPNOTSUPP);
}

/* matmul_multi: two weights of one type (one launch), and those with a third of another
 * type, with and without acc, equal single products and a separate add: bit for bit for
 * a decode batch; for the many-token kernel to f32 rounding (1e-5 of the largest output),
 * because its blocks share a launch's (row block, column chunk) units evenly, so one
 * weight's chunks are summed in other groups when it shares a launch (test-cuda-mmv
 * checks every sharing against a double reference), and there bit for bit between two
 * launches alike. */
static void test_matmul_multi(void)
{
	if (!ready())
		return;
	static const int ns[] = { 3, 40 };
	static const struct { int type; int64_t rows; } ws[3] = {
		{ QD_TYPE_Q4_K, 96 }, { QD_TYPE_Q4_K, 33 }, { QD_TYPE_Q6_K, 50 },
	};
	const int64_t cols = 2304;
	uint64_t s = 0x3d;
	uint8_t *raw[3];
	KbWeight w[3];
	for (int i = 0; i < 3; i++) {
		size_t bytes;
		raw[i] = rand_weight(ws[i].type, ws[i].rows, cols, &s, &bytes);
		CU_ASSERT_FATAL(raw[i] != NULL);
		w[i] = (KbWeight){ ws[i].type, ws[i].rows, cols, raw[i], NULL, 0 };
		CU_ASSERT_EQUAL_FATAL(gpu->ops->weight_prepare(gpu, &w[i]), 0);
	}
	for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
		const int n = ns[ni];
		float *x = rand_f32((size_t)(n * cols), &s, 1.0f), *y0 = rand_f32((size_t)(n * 96), &s, 1.0f);
		float *a = malloc(sizeof(float) * (size_t)(n * 96)), *b = malloc(sizeof(float) * (size_t)(n * 96));
		float *dx = buf_in(gpu, x, sizeof(float) * (size_t)(n * cols));
		float *dy[3], *ds[3];
		CU_ASSERT_FATAL(x && y0 && a && b && dx);
		for (int i = 0; i < 3; i++) {
			dy[i] = buf_in(gpu, y0, sizeof(float) * (size_t)(n * ws[i].rows));
			ds[i] = buf_in(gpu, NULL, sizeof(float) * (size_t)(n * ws[i].rows));
			CU_ASSERT_FATAL(dy[i] && ds[i]);
		}
		const KbWeight *wp[3] = { &w[0], &w[1], &w[2] };
		for (int run = 0; run < 4; run++) {
			const int acc = run & 1, nw = 2 + (run >> 1);
			for (int i = 0; i < 3; i++)
				CU_ASSERT_EQUAL(gpu->ops->upload(gpu, dy[i], y0, sizeof(float) * (size_t)(n * ws[i].rows)), 0);
			CU_ASSERT_EQUAL(gpu->ops->matmul_multi(gpu, nw, wp, dx, n, dy, acc), 0);
			int diff = 0;
			for (int i = 0; i < nw; i++) {
				const int64_t m = (int64_t)n * ws[i].rows;
				CU_ASSERT_EQUAL(gpu->ops->matmul(gpu, &w[i], dx, n, ds[i]), 0);
				CU_ASSERT_EQUAL(buf_out(gpu, a, dy[i], sizeof(float) * (size_t)m), 0);
				CU_ASSERT_EQUAL(buf_out(gpu, b, ds[i], sizeof(float) * (size_t)m), 0);
				float big = 0.f;
				for (int64_t k = 0; k < m; k++)
					big = fabsf(b[k]) > big ? fabsf(b[k]) : big;
				for (int64_t k = 0; k < m; k++) {
					const float want = acc ? y0[k] + b[k] : b[k];
					if (n <= 8)
						diff += memcmp(&a[k], &want, sizeof(float)) != 0;
					else
						diff += !(fabsf(a[k] - want) <= 1e-5f * big);
				}
				if (n > 8) { /* the same launch again: the same bits */
					for (int j = 0; j < 3; j++)
						CU_ASSERT_EQUAL(gpu->ops->upload(gpu, dy[j], y0, sizeof(float) *
										 (size_t)(n * ws[j].rows)), 0);
					CU_ASSERT_EQUAL(gpu->ops->matmul_multi(gpu, nw, wp, dx, n, dy, acc), 0);
					CU_ASSERT_EQUAL(buf_out(gpu, b, dy[i], sizeof(float) * (size_t)m), 0);
					diff += memcmp(a, b, sizeof(float) * (size_t)m) != 0;
				}
			}
			CU_ASSERT_EQUAL(diff, 0);
			if (diff)
				printf("\n    matmul_multi n=%d nw=%d acc=%d: %d values differ\n", n, nw, acc, diff);
		}
		for (int i = 0; i < 3; i++) {
			gpu->ops->release(gpu, dy[i]);
			gpu->ops->release(gpu, ds[i]);
		}
		gpu->ops->release(gpu, dx);
		free(x);
		free(y0);
		free(a);
		free(b);
	}
	for (int i = 0; i < 3; i++) {
		gpu->ops->weight_release(gpu, &w[i]);
		free(raw[i]);
	}
}

static void test_norm_rope_elementwise(void)
{
	if (!ready())
		return;
	uint64_t s = 0x99;
	const int dims[] = { 576, 1000, 4096 };
	for (size_t di = 0; di < 3; di++) {
		const int n = 3, dim = dims[di];
		float *x = rand_f32((size_t)(n * dim), &s, 3.0f), *w = rand_f32((size_t)dim, &s, 1.0f);
		float *yc = malloc(sizeof(float) * (size_t)(n * dim)), *yg = malloc(sizeof(float) * (size_t)(n * dim));
		float *dx = buf_in(gpu, x, sizeof(float) * (size_t)(n * dim)), *dw = buf_in(gpu, w, sizeof(float) * (size_t)dim);
		float *dy = buf_in(gpu, NULL, sizeof(float) * (size_t)(n * dim));
		CU_ASSERT_FATAL(x && w && yc && yg && dx && dw && dy);
		CU_ASSERT_EQUAL(cpu->ops->rmsnorm(cpu, x, w, n, dim, 1e-5f, yc), 0);
		CU_ASSERT_EQUAL(gpu->ops->rmsnorm(gpu, dx, dw, n, dim, 1e-5f, dy), 0);
		CU_ASSERT_EQUAL(buf_out(gpu, yg, dy, sizeof(float) * (size_t)(n * dim)), 0);
		int64_t at = 0;
		CU_ASSERT(worst(yg, yc, yc, n * dim, 1e-6, 1e-5, &at) <= 1);
		gpu->ops->release(gpu, dx);
		gpu->ops->release(gpu, dw);
		gpu->ops->release(gpu, dy);
		free(x);
		free(w);
		free(yc);
		free(yg);
	}

	static const struct { int n_head, head_dim, rot_dim; float base; } ropes[] = {
		{ 3, 64, 64, 10000.f }, { 4, 128, 64, 500000.f }, { 9, 64, 64, 100000.f },
	};
	int32_t pos[5] = { 0, 1, 777, 5000, 123456 };
	for (size_t ri = 0; ri < 3; ri++) {
		const int n = 5, len = ropes[ri].n_head * ropes[ri].head_dim;
		float *x = rand_f32((size_t)(n * len), &s, 2.0f), *yg = malloc(sizeof(float) * (size_t)(n * len));
		float *xc = malloc(sizeof(float) * (size_t)(n * len));
		float *dx = buf_in(gpu, x, sizeof(float) * (size_t)(n * len));
		CU_ASSERT_FATAL(x && yg && xc && dx);
		memcpy(xc, x, sizeof(float) * (size_t)(n * len));
		CU_ASSERT_EQUAL(cpu->ops->rope(cpu, xc, pos, n, ropes[ri].n_head, ropes[ri].head_dim, ropes[ri].rot_dim,
					       ropes[ri].base), 0);
		CU_ASSERT_EQUAL(gpu->ops->rope(gpu, dx, pos, n, ropes[ri].n_head, ropes[ri].head_dim, ropes[ri].rot_dim,
					       ropes[ri].base), 0);
		CU_ASSERT_EQUAL(buf_out(gpu, yg, dx, sizeof(float) * (size_t)(n * len)), 0);
		int64_t at = 0;
		double w = worst(yg, xc, xc, n * len, 2e-6, 2e-6, &at);
		CU_ASSERT(w <= 1);
		if (w > 1)
			printf("\n    rope %zu: element %lld gpu %g cpu %g\n", ri, (long long)at, yg[at], xc[at]);
		gpu->ops->release(gpu, dx);
		free(x);
		free(xc);
		free(yg);
	}

	const int64_t n = 12345;
	float *g = rand_f32((size_t)n, &s, 6.0f), *u = rand_f32((size_t)n, &s, 2.0f);
	float *yc = malloc(sizeof(float) * (size_t)n), *yg = malloc(sizeof(float) * (size_t)n);
	float *dg = buf_in(gpu, g, sizeof(float) * (size_t)n), *du = buf_in(gpu, u, sizeof(float) * (size_t)n);
	CU_ASSERT_FATAL(g && u && yc && yg && dg && du);
	CU_ASSERT_EQUAL(cpu->ops->swiglu(cpu, g, u, 1, n, yc), 0);
	CU_ASSERT_EQUAL(gpu->ops->swiglu(gpu, dg, du, 1, n, dg), 0); /* in place, as forward.c does */
	CU_ASSERT_EQUAL(buf_out(gpu, yg, dg, sizeof(float) * (size_t)n), 0);
	int64_t at = 0;
	CU_ASSERT(worst(yg, yc, yc, n, 1e-7, 1e-6, &at) <= 1);
	CU_ASSERT_EQUAL(cpu->ops->add(cpu, yc, u, n), 0);
	CU_ASSERT_EQUAL(gpu->ops->add(gpu, dg, du, n), 0);
	CU_ASSERT_EQUAL(buf_out(gpu, yg, dg, sizeof(float) * (size_t)n), 0);
	CU_ASSERT(worst(yg, yc, yc, n, 1e-7, 1e-6, &at) <= 1);
	/* copy between backend buffers */
	CU_ASSERT_EQUAL(gpu->ops->copy(gpu, du, dg, sizeof(float) * 100), 0);
	CU_ASSERT_EQUAL(buf_out(gpu, yg, du, sizeof(float) * 100), 0);
	CU_ASSERT(worst(yg, yc, yc, 100, 1e-7, 1e-6, &at) <= 1);
	gpu->ops->release(gpu, dg);
	gpu->ops->release(gpu, du);
	free(g);
	free(u);
	free(yc);
	free(yg);
}

/* Attention of N queries Q (host) at POS/SEQ on both backends, over the caches AC and AG
 * describe: outputs into OC (CPU) and OG (GPU, copied back); returns the worst error
 * against the bound (2e-5 absolute + 1e-4 relative), its element in *AT. */
static double att_compare(KbAttention ac, KbAttention ag, int n, int32_t *pos, int32_t *seq, const float *q,
			  float *oc, float *og, int64_t *at)
{
	const int64_t m = (int64_t)n * ac.n_head * ac.head_dim;
	float *dq = buf_in(gpu, q, sizeof(float) * (size_t)m), *dout = buf_in(gpu, NULL, sizeof(float) * (size_t)m);
	CU_ASSERT_FATAL(dq && dout);
	ac.n_tokens = ag.n_tokens = n;
	ac.pos = ag.pos = pos;
	ac.seq = ag.seq = seq;
	ac.q = q;
	ac.out = oc;
	ag.q = dq;
	ag.out = dout;
	CU_ASSERT_EQUAL(cpu->ops->attention(cpu, &ac), 0);
	CU_ASSERT_EQUAL(gpu->ops->attention(gpu, &ag), 0);
	CU_ASSERT_EQUAL(buf_out(gpu, og, dout, sizeof(float) * (size_t)m), 0);
	gpu->ops->release(gpu, dq);
	gpu->ops->release(gpu, dout);
	return worst(og, oc, oc, m, 2e-5, 1e-4, at);
}

/* KV stores must agree bit for bit (both round to nearest even); attention within float
 * rounding of differently ordered sums. */
static void test_attention(void)
{
	if (!ready())
		return;
	static const struct { int n_head, n_head_kv, head_dim; } cfgs[] = { { 6, 2, 64 }, { 4, 4, 128 }, { 8, 1, 32 } };
	uint64_t s = 0xa7;
	for (size_t ci = 0; ci < 3; ci++) {
		const int nh = cfgs[ci].n_head, nkv = cfgs[ci].n_head_kv, hd = cfgs[ci].head_dim, kvd = nkv * hd;
		const int n_seq = 2, n_ctx = 1300;
		const int64_t stride = (int64_t)n_ctx * kvd, cache = stride * n_seq;
		/* fill: sequence 0 positions 0..1199, sequence 1 positions 0..70 */
		const int nf = 1200 + 71;
		int32_t *fpos = malloc(sizeof(int32_t) * nf), *fseq = malloc(sizeof(int32_t) * nf);
		for (int i = 0; i < nf; i++) {
			fpos[i] = i < 1200 ? i : i - 1200;
			fseq[i] = i < 1200 ? 0 : 1;
		}
		float *k = rand_f32((size_t)nf * kvd, &s, 2.0f), *v = rand_f32((size_t)nf * kvd, &s, 1.0f);
		uint16_t *kc = calloc((size_t)cache, 2), *vc = calloc((size_t)cache, 2);
		uint16_t *kg = calloc((size_t)cache, 2), *vg = calloc((size_t)cache, 2);
		uint16_t *dkc = buf_in(gpu, kc, (size_t)cache * 2), *dvc = buf_in(gpu, vc, (size_t)cache * 2);
		float *dk = buf_in(gpu, k, sizeof(float) * (size_t)nf * kvd), *dv = buf_in(gpu, v, sizeof(float) * (size_t)nf * kvd);
		CU_ASSERT_FATAL(fpos && fseq && k && v && kc && vc && kg && vg && dkc && dvc && dk && dv);
		KbAttention ac = { .n_tokens = nf, .n_head = nh, .n_head_kv = nkv, .head_dim = hd, .pos = fpos,
				   .seq = fseq, .k_cache = kc, .v_cache = vc, .kv_slot_stride = stride,
				   .scale = 1.0f / sqrtf((float)hd) };
		KbAttention ag = ac;
		ag.k_cache = dkc;
		ag.v_cache = dvc;
		CU_ASSERT_EQUAL(cpu->ops->kv_store(cpu, &ac, k, v), 0);
		CU_ASSERT_EQUAL(gpu->ops->kv_store(gpu, &ag, dk, dv), 0);
		CU_ASSERT_EQUAL(buf_out(gpu, kg, dkc, (size_t)cache * 2), 0);
		CU_ASSERT_EQUAL(buf_out(gpu, vg, dvc, (size_t)cache * 2), 0);
		CU_ASSERT(!memcmp(kc, kg, (size_t)cache * 2));
		CU_ASSERT(!memcmp(vc, vg, (size_t)cache * 2));

		/* queries: decode-like and prefill-like positions in both slots; 1199, 700 and 256
		 * take 5, 3 and 2 splits merged (256 keys a split at least), the rest one */
		int32_t qpos[7] = { 1199, 70, 0, 33, 5, 256, 700 }, qseq[7] = { 0, 1, 0, 0, 1, 0, 0 };
		const int nq = 7, qd = nh * hd;
		float *q = rand_f32((size_t)nq * qd, &s, 3.0f);
		float *oc = malloc(sizeof(float) * (size_t)nq * qd), *og = malloc(sizeof(float) * (size_t)nq * qd);
		CU_ASSERT_FATAL(q && oc && og);
		int64_t at = 0;
		double w = att_compare(ac, ag, nq, qpos, qseq, q, oc, og, &at);
		CU_ASSERT(w <= 1);
		/* few (token, head) pairs: the decode kernel's mma scores (VPRE) at head sizes 64
		 * and 128; the per-token kernel at 32 */
		printf("\n    attention cfg %zu, decode (%d tokens): worst %.3f of the bound", ci, nq, w);
		if (w > 1)
			printf("\n    attention cfg %zu: element %lld gpu %g cpu %g\n", ci, (long long)at, og[at], oc[at]);
		/* many-token steps (above a recorded graph's size): the tensor-core kernel for head
		 * sizes 64 and 128, the per-token one for 32.  First the fill itself, as a prefill
		 * of both slots (tiles break where the slot changes); then a mixed batch of runs of
		 * 1..20 tokens at consecutive positions, alternating between the slots (prefill
		 * chunks of several sequences); then single tokens alternating between the slots
		 * at random positions (decode of many sequences: tiles of one token, which go to
		 * the per-token kernel, without preloaded V rows at this many pairs). */
		for (int pass = 0; pass < 3; pass++) {
			const int nm = pass == 0 ? nf : 300;
			int32_t *mpos = malloc(sizeof(int32_t) * nm), *mseq = malloc(sizeof(int32_t) * nm);
			float *mq = rand_f32((size_t)nm * qd, &s, 3.0f);
			float *mc = malloc(sizeof(float) * (size_t)nm * qd), *mg = malloc(sizeof(float) * (size_t)nm * qd);
			CU_ASSERT_FATAL(mpos && mseq && mq && mc && mg);
			for (int i = 0, run = 0, sq = 0, p = 0; i < nm; i++) {
				if (pass == 0) {
					mpos[i] = fpos[i];
					mseq[i] = fseq[i];
					continue;
				}
				if (run == 0) {
					run = pass == 1 ? 1 + (int)(tu_rand_u64(&s) % 20) : 1;
					sq ^= 1;
					p = (int)(tu_rand_u64(&s) % (uint64_t)((sq == 0 ? 1200 : 71) - run + 1));
				}
				run--;
				mseq[i] = sq;
				mpos[i] = p++;
			}
			w = att_compare(ac, ag, nm, mpos, mseq, mq, mc, mg, &at);
			CU_ASSERT(w <= 1);
			printf("\n    attention cfg %zu, %s (%d tokens): worst %.3f of the bound", ci,
			       pass == 0 ? "prefill" : pass == 1 ? "runs" : "single tokens", nm, w);
			if (w > 1)
				printf(" (element %lld gpu %g cpu %g)", (long long)at, mg[at], mc[at]);
			free(mpos);
			free(mseq);
			free(mq);
			free(mc);
			free(mg);
		}
		/* head sizes the kernel does not take are refused */
		KbAttention bad = ag;
		bad.head_dim = 48;
		CU_ASSERT_EQUAL(gpu->ops->attention(gpu, &bad), -EINVAL);
		void *bufs[] = { dkc, dvc, dk, dv };
		for (int i = 0; i < 4; i++)
			gpu->ops->release(gpu, bufs[i]);
		free(fpos);
		free(fseq);
		free(k);
		free(v);
		free(kc);
		free(vc);
		free(kg);
		free(vg);
		free(q);
		free(oc);
		free(og);
	}
}

/* Backend selection through ContextParams: runs with or without a GPU. */
static void test_select(void)
{
	char err[256];
	Model *m = NULL;
	if (model_load(tu_model_path(), &m, err, sizeof(err)) < 0) {
		tu_skip("select", "default model missing (make model)");
		return;
	}
	Context *c = NULL;
	ContextParams p = { .n_seq = 1, .n_ctx = 64, .n_batch = 8, .n_threads = 1, .backend = "bogus" };
	CU_ASSERT_EQUAL(ctx_new(m, &p, &c), -EINVAL);
	p.backend = "auto";
	CU_ASSERT_EQUAL_FATAL(ctx_new(m, &p, &c), 0);
	const int have_gpu = gpu_skip() == NULL;
	CU_ASSERT_EQUAL(!strncmp(ctx_backend_name(c), "cuda", 4), have_gpu);
	ctx_free(c);
	c = NULL;
	p.backend = "cuda";
	int r = ctx_new(m, &p, &c);
	CU_ASSERT_EQUAL(r, have_gpu ? 0 : -ENODEV);
	ctx_free(c);
	model_free(m);
}

int main(void)
{
	static const TuTest tests[] = {
		{ "get_rows: every type, cuda = cpu", test_get_rows, gpu_skip },
		{ "matmul: every type and odd shapes vs double reference", test_matmul, gpu_skip },
		{ "matmul_multi (acc, mixed types) = single products", test_matmul_multi, gpu_skip },
		{ "rmsnorm, rope, swiglu, add, copy", test_norm_rope_elementwise, gpu_skip },
		{ "kv_store and attention, two slots, GQA", test_attention, gpu_skip },
		{ "backend selection (cpu/cuda/auto)", test_select, NULL },
		{ "cleanup", test_cleanup, NULL },
		{ NULL, NULL, NULL },
	};
	return tu_main("backend", tests);
}
