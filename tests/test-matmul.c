/* tests/test-matmul.c: kb_matmul and the thread pool under it.
 *
 * kb_matmul is checked for every computable weight type against a double-precision
 * product of the dequantized weights with the activations as the kernel sees them
 * (quantized to the dot type by the reference quantizer, then dequantized), on shapes whose
 * rows are not a multiple of the chunk (16) or of the four-row kernel, batches of 1, 3, 8,
 * 17 and one past the token tile, with 1 and 2 threads.  Tolerance per output: 2e-5 of
 * sum |w||x| (offset parts in absolute value) plus, for Q4_1, the f16 rounding of the
 * activation block sums.  Outputs outside y's [n_tok][rows] must stay untouched. */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/threadpool.h"
#include "kernels/cpu/topk.h"
#include "tests/testutil.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

static const int weight_types[] = { QD_TYPE_F32, QD_TYPE_F16, QD_TYPE_BF16, QD_TYPE_Q8_0,
				    QD_TYPE_Q4_0, QD_TYPE_Q4_1, QD_TYPE_Q4_K, QD_TYPE_Q6_K };

static size_t row_bytes(int t, int64_t n)
{
	uint64_t r = 0;
	CU_ASSERT_FATAL(qd_row_size(t, (uint64_t)n, &r) == 0);
	return (size_t)r;
}

/* ------------------------------------------------------------------- thread pool */

typedef struct {
	int nth_expected;
	long call;
	long seen[8];       /* call number each worker last ran for */
	atomic_long hits;   /* worker runs in total */
	atomic_int bad_nth; /* runs that saw a wrong nth */
} PoolProbe;

static void probe_task(void *arg, int ith, int nth)
{
	PoolProbe *p = arg;
	if (nth != p->nth_expected || ith < 0 || ith >= nth)
		atomic_fetch_add(&p->bad_nth, 1);
	else
		p->seen[ith] = p->call;
	atomic_fetch_add(&p->hits, 1);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void test_threadpool_run(void)
{
	for (int n = 1; n <= 3; n++) {
		KbThreadPool *tp = NULL;
		CU_ASSERT_EQUAL_FATAL(kb_threadpool_new(n, &tp), 0);
		CU_ASSERT_EQUAL(kb_threadpool_size(tp), n);
		PoolProbe p = { .nth_expected = n };
		for (int i = 0; i < n; i++)
			p.seen[i] = -1;
		const long calls = 10000;
		long missed = 0;
		double t0 = now_s();
		for (p.call = 0; p.call < calls; p.call++) {
			kb_threadpool_run(tp, probe_task, &p);
			/* every worker has run for this call before run returned */
			for (int i = 0; i < n; i++)
				missed += p.seen[i] != p.call;
		}
		double us = (now_s() - t0) / calls * 1e6;
		CU_ASSERT_EQUAL(missed, 0);
		CU_ASSERT_EQUAL(atomic_load(&p.hits), calls * n);
		CU_ASSERT_EQUAL(atomic_load(&p.bad_nth), 0);
		printf("\n    %d thread(s): %.2f us per run", n, us);
		kb_threadpool_free(tp);
	}
	/* no pool: inline, once, as worker 0 of 1 */
	PoolProbe p = { .nth_expected = 1, .call = 7 };
	kb_threadpool_run(NULL, probe_task, &p);
	CU_ASSERT_EQUAL(p.seen[0], 7);
	CU_ASSERT_EQUAL(atomic_load(&p.hits), 1);
	CU_ASSERT_EQUAL(kb_threadpool_size(NULL), 1);
	kb_threadpool_free(NULL);
	/* workers that went to sleep wake up for the next run */
	KbThreadPool *tp = NULL;
	CU_ASSERT_EQUAL_FATAL(kb_threadpool_new(2, &tp), 0);
	PoolProbe q = { .nth_expected = 2, .seen = { -1, -1 } };
	for (q.call = 0; q.call < 3; q.call++) {
		struct timespec ts = { 0, 2000000 }; /* 2 ms: past the spin phase */
		nanosleep(&ts, NULL);
		kb_threadpool_run(tp, probe_task, &q);
		CU_ASSERT_EQUAL(q.seen[1], q.call);
	}
	kb_threadpool_free(tp);
}

static void split_check(int64_t n, int64_t grain, int nth)
{
	int64_t next = 0;
	for (int i = 0; i < nth; i++) {
		int64_t lo, hi;
		kb_split(n, grain, i, nth, &lo, &hi);
		CU_ASSERT(lo == next || lo == hi);
		CU_ASSERT(lo <= hi);
		CU_ASSERT(lo % grain == 0 || lo == n);
		if (hi > lo)
			next = hi;
	}
	CU_ASSERT_EQUAL(next, n);
}

static void test_split(void)
{
	split_check(100, 16, 3);
	split_check(5, 16, 2);
	split_check(4096, 1, 7);
	split_check(1, 1, 4);
}

/* ---------------------------------------------------------------------- matmul */

/* |a_i| + |b_i| for w_i = a_i - b_i, b the block's offset part (see test-quant.c) */
static void magnitudes(int t, const uint8_t *w, int64_t n, const float *wf, float *ret)
{
	size_t nb = row_bytes(t, n), bs = qd_type_traits(t)->size;
	uint8_t *c = malloc(nb);
	CU_ASSERT_FATAL(c != NULL);
	memcpy(c, w, nb);
	if (t == QD_TYPE_Q4_1 || t == QD_TYPE_Q4_K)
		for (size_t b = 0; b < nb / bs; b++)
			memset(c + b * bs + 2, 0, 2);
	kb_cpu_dequantize_row_ref(t, c, ret, n);
	for (int64_t i = 0; i < n; i++)
		ret[i] = fabsf(ret[i]) + fabsf(ret[i] - wf[i]);
	free(c);
}

typedef struct {
	int fails;
	double worst; /* largest error / tolerance */
} Check;

/* One kb_matmul call checked against the double reference. */
static void check_matmul(KbThreadPool *tp, int wt, int64_t rows, int64_t cols, int64_t n_tok, uint64_t seed, Check *ck)
{
	int xt = kb_cpu_vec_dot_type(wt);
	size_t wrow = row_bytes(wt, cols), xrow = row_bytes(xt, cols);
	uint8_t *w = malloc(wrow * (size_t)rows), *xq = malloc(xrow);
	float *x = malloc(sizeof(float) * (size_t)(cols * n_tok)), *tmp = malloc(sizeof(float) * (size_t)cols);
	float *wf = malloc(sizeof(float) * (size_t)(rows * cols)), *wm = malloc(sizeof(float) * (size_t)(rows * cols));
	float *xf = malloc(sizeof(float) * (size_t)(cols * n_tok));
	float *y = malloc(sizeof(float) * (size_t)(rows * n_tok + 16));
	size_t ss = kb_matmul_scratch_size(wt, cols, n_tok);
	void *scratch = malloc(ss);
	CU_ASSERT_FATAL(w && xq && x && tmp && wf && wm && xf && y && scratch && ss > 0);

	uint64_t s = seed;
	for (int64_t r = 0; r < rows; r++) {
		/* rows of different scales and offsets */
		float scale = 0.1f + (float)(r % 7), off = (r % 3 == 0) ? 0.5f * scale : 0.0f;
		for (int64_t c = 0; c < cols; c++)
			tmp[c] = tu_rand_f32(&s) * scale + off;
		kb_cpu_quantize_row_ref(wt, tmp, w + (size_t)r * wrow, cols);
		kb_cpu_dequantize_row_ref(wt, w + (size_t)r * wrow, wf + r * cols, cols);
		magnitudes(wt, w + (size_t)r * wrow, cols, wf + r * cols, wm + r * cols);
	}
	for (int64_t i = 0; i < cols * n_tok; i++)
		x[i] = tu_rand_f32(&s) * 2.0f;
	for (int64_t t = 0; t < n_tok; t++) {
		kb_cpu_quantize_row_ref(xt, x + t * cols, xq, cols);
		kb_cpu_dequantize_row_ref(xt, xq, xf + t * cols, cols);
	}
	for (int64_t i = 0; i < rows * n_tok + 16; i++)
		y[i] = 12345.0f;

	CU_ASSERT_EQUAL(kb_matmul(tp, wt, w, rows, cols, x, n_tok, y, scratch), 0);

	for (int64_t i = rows * n_tok; i < rows * n_tok + 16; i++)
		if (y[i] != 12345.0f)
			ck->fails++;
	for (int64_t t = 0; t < n_tok; t++) {
		/* Q4_1: the kernel uses each block's s = f16(d*sum q), see test-quant.c */
		const BlockQ8_1 *xb = NULL;
		if (wt == QD_TYPE_Q4_1) {
			kb_cpu_quantize_row_ref(xt, x + t * cols, xq, cols);
			xb = (const void *)xq;
		}
		for (int64_t r = 0; r < rows; r++) {
			double ref = 0, mag = 0, extra = 0;
			const float *wr = wf + r * cols, *mr = wm + r * cols, *xr = xf + t * cols;
			for (int64_t c = 0; c < cols; c++) {
				ref += (double)wr[c] * xr[c];
				mag += (double)mr[c] * fabs(xr[c]);
			}
			if (xb) {
				const BlockQ4_1 *a = (const void *)(w + (size_t)r * wrow);
				for (int64_t b = 0; b < cols / QD_QK; b++) {
					int sq = 0;
					for (int j = 0; j < QD_QK; j++)
						sq += xb[b].qs[j];
					extra += fabs(qd_f16_to_f32(a[b].m)) *
						 (fabs(qd_f16_to_f32(xb[b].s)) + fabs(qd_f16_to_f32(xb[b].d) * (double)sq)) / 1024;
				}
			}
			double tol = 2e-5 * mag + extra + 1e-30, err = fabs(y[t * rows + r] - ref);
			if (err / tol > ck->worst)
				ck->worst = err / tol;
			if (!(err <= tol)) {
				if (ck->fails < 5)
					printf("\n    %s %lldx%lld n_tok %lld threads %d: y[%lld][%lld] = %.9g, want %.9g (tol %.3g)",
					       qd_type_traits(wt)->name, (long long)rows, (long long)cols, (long long)n_tok,
					       kb_threadpool_size(tp), (long long)t, (long long)r, y[t * rows + r], ref, tol);
				ck->fails++;
			}
		}
	}
	free(w);
	free(xq);
	free(x);
	free(tmp);
	free(wf);
	free(wm);
	free(xf);
	free(y);
	free(scratch);
}

static void test_matmul_types(void)
{
	/* rows: below one chunk, not a multiple of 4 or 16, and a few chunks plus a tail */
	static const int64_t rows_list[] = { 1, 37, 130 };
	static const int64_t ntok_list[] = { 1, 3, 8, 17 };
	printf("\n    kernels: %s", kb_cpu_init());
	for (int th = 1; th <= 2; th++) {
		KbThreadPool *tp = NULL;
		CU_ASSERT_EQUAL_FATAL(kb_threadpool_new(th, &tp), 0);
		for (size_t ti = 0; ti < N_ELEMS(weight_types); ti++) {
			int wt = weight_types[ti];
			int blck = qd_type_traits(wt)->blck;
			/* one block, an odd number of blocks (7: pairs and a lone last one), more */
			int64_t cols_list[4] = { blck == 1 ? 33 : blck, blck == QD_QK_K ? 768 : 224, 512, 1536 };
			Check ck = { 0, 0 };
			for (size_t ri = 0; ri < N_ELEMS(rows_list); ri++)
				for (size_t ci = 0; ci < 4; ci++)
					for (size_t ni = 0; ni < N_ELEMS(ntok_list); ni++)
						check_matmul(tp, wt, rows_list[ri], cols_list[ci], ntok_list[ni],
							     (uint64_t)(ri * 100 + ci * 10 + ni + wt), &ck);
			/* a batch longer than one token tile, and a matrix of many chunks */
			check_matmul(tp, wt, 21, 4096, 60, 77, &ck);
			check_matmul(tp, wt, 1030, 256, 1, 78, &ck);
			check_matmul(tp, wt, 1030, 256, 5, 79, &ck);
			CU_ASSERT_EQUAL(ck.fails, 0);
			printf("\n    %-5s %d thread(s): worst error %.3f of tolerance", qd_type_traits(wt)->name, th, ck.worst);
		}
		kb_threadpool_free(tp);
	}
}

/* The scalar kernels through kb_matmul too (the dispatched ones are SIMD where the CPU
 * has it). */
static void test_matmul_scalar(void)
{
	kb_cpu_force_scalar(1);
	Check ck = { 0, 0 };
	for (size_t ti = 0; ti < N_ELEMS(weight_types); ti++) {
		int wt = weight_types[ti];
		check_matmul(NULL, wt, 19, 512, 3, 5, &ck);
	}
	kb_cpu_force_scalar(0);
	CU_ASSERT_EQUAL(ck.fails, 0);
}

/* Batch invariance: a token's outputs are bit-identical whether it is multiplied alone or
 * as one of a batch (any position in it), with any thread count.  Continuous batching
 * relies on it: a request's greedy tokens must not depend on who else is being served. */
static void test_matmul_batch_invariance(void)
{
	const int64_t rows = 133, cols = 1536, n_tok = 37;
	KbThreadPool *tp = NULL;
	CU_ASSERT_EQUAL_FATAL(kb_threadpool_new(2, &tp), 0);
	for (size_t ti = 0; ti < N_ELEMS(weight_types); ti++) {
		int wt = weight_types[ti];
		size_t wb = row_bytes(wt, cols) * (size_t)rows;
		float *wf = malloc(sizeof(float) * (size_t)(rows * cols)), *x = malloc(sizeof(float) * (size_t)(n_tok * cols));
		uint8_t *w = malloc(wb);
		float *yb = malloc(sizeof(float) * (size_t)(n_tok * rows)), y1[133];
		void *scr = malloc(kb_matmul_scratch_size(wt, cols, n_tok));
		uint64_t seed = 1000 + (uint64_t)wt;
		for (int64_t i = 0; i < rows * cols; i++)
			wf[i] = tu_rand_f32(&seed);
		for (int64_t i = 0; i < n_tok * cols; i++)
			x[i] = 3 * tu_rand_f32(&seed);
		for (int64_t r = 0; r < rows; r++)
			CU_ASSERT_EQUAL_FATAL(kb_cpu_quantize_row(wt, wf + r * cols, w + (size_t)r * row_bytes(wt, cols), cols), 0);
		CU_ASSERT_EQUAL_FATAL(kb_matmul(tp, wt, w, rows, cols, x, n_tok, yb, scr), 0);
		int differ = 0;
		for (int64_t t = 0; t < n_tok; t++) {
			CU_ASSERT_EQUAL_FATAL(kb_matmul(t % 2 ? tp : NULL, wt, w, rows, cols, x + t * cols, 1, y1, scr), 0);
			differ += memcmp(y1, yb + t * rows, sizeof(float) * (size_t)rows) != 0;
		}
		if (differ)
			printf("\n    %s: %d of %lld tokens differ between batched and single products",
			       qd_type_traits(wt)->name, differ, (long long)n_tok);
		CU_ASSERT_EQUAL(differ, 0);
		free(wf);
		free(x);
		free(w);
		free(yb);
		free(scr);
	}
	kb_threadpool_free(tp);
}

/* First index of the largest value, NaNs skipped, -inf counting: the sampler's argmax. */
static int32_t first_max(const float *y, int64_t n)
{
	int32_t b = -1;
	for (int64_t i = 0; i < n; i++)
		if (!isnan(y[i]) && (b < 0 || y[i] > y[b]))
			b = (int32_t)i;
	return b < 0 ? 0 : b;
}

/* kb_matmul_argmax gives kb_matmul's bits and each token's first largest output, for one
 * token and batches (through the heap past 64 tokens), one and two threads; ties, NaN and
 * -inf through an F32 identity-like weight whose outputs are chosen. */
static void test_matmul_argmax(void)
{
	static const int64_t toks[] = { 1, 5, 70 };
	const int64_t rows = 1000, cols = 256;
	KbThreadPool *tp = NULL;
	CU_ASSERT_EQUAL_FATAL(kb_threadpool_new(2, &tp), 0);
	for (size_t ti = 0; ti < N_ELEMS(weight_types); ti++)
		for (size_t ni = 0; ni < N_ELEMS(toks); ni++) {
			const int wt = weight_types[ti];
			const int64_t n_tok = toks[ni];
			size_t wb = row_bytes(wt, cols) * (size_t)rows;
			float *wf = malloc(sizeof(float) * (size_t)cols), *x = malloc(sizeof(float) * (size_t)(n_tok * cols));
			uint8_t *w = malloc(wb);
			float *ya = malloc(sizeof(float) * (size_t)(n_tok * rows));
			float *yb = malloc(sizeof(float) * (size_t)(n_tok * rows));
			int32_t *idx = malloc(sizeof(int32_t) * (size_t)n_tok);
			void *scr = malloc(kb_matmul_scratch_size(wt, cols, n_tok));
			CU_ASSERT_FATAL(wf && x && w && ya && yb && idx && scr);
			uint64_t seed = 77 + (uint64_t)wt * 3 + (uint64_t)n_tok;
			for (int64_t r = 0; r < rows; r++) {
				for (int64_t c = 0; c < cols; c++)
					wf[c] = tu_rand_f32(&seed);
				CU_ASSERT_EQUAL_FATAL(kb_cpu_quantize_row(wt, wf, w + (size_t)r * row_bytes(wt, cols), cols), 0);
			}
			for (int64_t i = 0; i < n_tok * cols; i++)
				x[i] = tu_rand_f32(&seed);
			KbThreadPool *p = ni == 1 ? NULL : tp;
			CU_ASSERT_EQUAL(kb_matmul(p, wt, w, rows, cols, x, n_tok, ya, scr), 0);
			CU_ASSERT_EQUAL(kb_matmul_argmax(p, wt, w, rows, cols, x, n_tok, yb, scr, idx), 0);
			CU_ASSERT_EQUAL(memcmp(ya, yb, sizeof(float) * (size_t)(n_tok * rows)), 0);
			int wrong = 0;
			for (int64_t t = 0; t < n_tok; t++)
				wrong += idx[t] != first_max(ya + t * rows, rows);
			CU_ASSERT_EQUAL(wrong, 0);
			free(wf);
			free(x);
			free(w);
			free(ya);
			free(yb);
			free(idx);
			free(scr);
		}

	/* chosen outputs: F32 weights of one column times x = 1 give the weights themselves */
	enum { R = 96 };
	float wv[5][R], one = 1.f, y[R], scr[64];
	for (int i = 0; i < R; i++) {
		wv[0][i] = (float)(i % 7); /* ties: the first 6 (row 6) */
		wv[1][i] = NAN;            /* all NaN: 0 */
		wv[2][i] = -INFINITY;      /* all -inf but a NaN first: the first -inf (1) */
		wv[3][i] = i == 50 ? 3.f : (i < 30 ? NAN : -1.f);
		/* equal largest values in different chunks: the first (20).  (A product turns -0
		 * into +0, so the -0 here does not reach y; argmax_key maps -0 to +0 as well.) */
		wv[4][i] = i == 20 ? -0.f : (i == 70 ? 0.f : -5.f);
	}
	wv[2][0] = NAN;
	static const int32_t want[5] = { 6, 0, 1, 50, 20 };
	for (int k = 0; k < 5; k++) {
		int32_t idx1 = -7;
		CU_ASSERT_EQUAL(kb_matmul_argmax(tp, QD_TYPE_F32, wv[k], R, 1, &one, 1, y, scr, &idx1), 0);
		CU_ASSERT_EQUAL(idx1, want[k]);
		CU_ASSERT_EQUAL(idx1, first_max(y, R));
	}
	kb_threadpool_free(tp);
}

static void test_matmul_args(void)
{
	float x[64] = { 0 }, y[4];
	uint8_t w[256] = { 0 }, scratch[512];
	CU_ASSERT_EQUAL(kb_matmul(NULL, QD_TYPE_Q5_0, w, 1, 32, x, 1, y, scratch), -EINVAL);
	CU_ASSERT_EQUAL(kb_matmul(NULL, QD_TYPE_Q4_0, w, 1, 48, x, 1, y, scratch), -EINVAL);
	CU_ASSERT_EQUAL(kb_matmul(NULL, QD_TYPE_Q4_K, w, 1, 32, x, 1, y, scratch), -EINVAL);
	CU_ASSERT_EQUAL(kb_matmul(NULL, QD_TYPE_Q8_K, w, 1, 256, x, 1, y, scratch), -EINVAL);
	CU_ASSERT_EQUAL(kb_matmul(NULL, QD_TYPE_Q4_0, w, -1, 32, x, 1, y, scratch), -EINVAL);
	CU_ASSERT_EQUAL(kb_matmul_scratch_size(QD_TYPE_Q5_0, 32, 1), 0);
	CU_ASSERT(kb_matmul_scratch_size(QD_TYPE_Q4_1, 64, 3) >= 3 * 2 * sizeof(BlockQ8_1));
	CU_ASSERT_EQUAL(kb_matmul_scratch_size(QD_TYPE_Q6_K, 512, 2), 2 * 2 * sizeof(BlockQ8_K));
	/* empty products succeed and write nothing */
	y[0] = 3.0f;
	CU_ASSERT_EQUAL(kb_matmul(NULL, QD_TYPE_Q4_0, w, 0, 32, x, 1, y, scratch), 0);
	CU_ASSERT_EQUAL(kb_matmul(NULL, QD_TYPE_Q4_0, w, 1, 32, x, 0, y, scratch), 0);
	CU_ASSERT_EQUAL(y[0], 3.0f);
	/* F32 reads x in place: no scratch needed */
	float wf[4] = { 1, 2, 3, 4 }, xf[4] = { 1, 1, 1, 1 };
	CU_ASSERT_EQUAL(kb_matmul(NULL, QD_TYPE_F32, wf, 1, 4, xf, 1, y, NULL), 0);
	CU_ASSERT_EQUAL(y[0], 10.0f);
}

/* kb_topk_rows against a sort: rows shared among 1-3 threads and rows split into pieces
 * (fewer rows than threads), random rows, few distinct values (ties at the k-th place),
 * -0 and +0, NaN and -inf, fewer candidates than k, none, all equal. */
static void test_topk_rows(void)
{
	static const struct { int64_t cols; int k, n; } shapes[] = {
		{ 49152, 40, 1 }, { 49152, 40, 2 }, { 5000, 7, 7 }, { 100, 40, 3 }, { 1, 1, 1 }, { 32000, 256, 1 },
	};
	uint64_t s = 0x70;
	int bad = 0, rows_checked = 0;
	for (int nt = 1; nt <= 3; nt++) {
		KbThreadPool *tp = NULL;
		CU_ASSERT_EQUAL_FATAL(kb_threadpool_new(nt, &tp), 0);
		for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
			const int64_t cols = shapes[si].cols;
			const int k = shapes[si].k, n = shapes[si].n;
			float *y = malloc(sizeof(float) * (size_t)(n * cols));
			int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n * k)), *cnt = malloc(sizeof(int32_t) * (size_t)n);
			float *vals = malloc(sizeof(float) * (size_t)(n * k));
			const size_t sb = kb_topk_scratch(tp, n, k);
			void *scratch = sb ? aligned_alloc(64, (sb + 63) / 64 * 64) : NULL;
			CU_ASSERT_FATAL(y && ids && cnt && vals && (!sb || scratch));
			for (int t = 0; t < n; t++)
				for (int64_t c = 0; c < cols; c++) {
					const int kind = (t + (int)si + nt) % 6;
					float v = 8.0f * tu_rand_f32(&s);
					if (kind == 1)
						v = floorf(v);
					if (kind == 2 && c % 5 == 0)
						v = c % 2 ? NAN : -INFINITY;
					if (kind == 2 && c % 7 == 0)
						v = c % 3 ? -0.0f : 0.0f;
					if (kind == 3 && c >= k / 2)
						v = c % 2 ? NAN : -INFINITY;
					if (kind == 4)
						v = c % 2 ? NAN : -INFINITY;
					if (kind == 5)
						v = 1.5f;
					y[t * cols + c] = v;
				}
			CU_ASSERT_EQUAL(kb_topk_rows(tp, y, n, cols, k, NULL, ids, vals, cnt, scratch), 0);
			for (int t = 0; t < n; t++) {
				const bool ok = tu_topk_matches(y + t * cols, cols, k, ids + t * k, vals + t * k, cnt[t]);
				if (!ok)
					printf("\n    %d thread(s), cols %lld k %d row %d: %d candidates, not the top k", nt,
					       (long long)cols, k, t, cnt[t]);
				bad += !ok;
				rows_checked++;
			}
			free(y);
			free(ids);
			free(cnt);
			free(vals);
			free(scratch);
		}
		kb_threadpool_free(tp);
	}
	CU_ASSERT_EQUAL(bad, 0);
	{
		/* rows NEED leaves out are skipped (count 0); the others as always, also when a
		 * lone needed row is split among the workers */
		KbThreadPool *tp = NULL;
		CU_ASSERT_EQUAL_FATAL(kb_threadpool_new(2, &tp), 0);
		const int64_t cols = 4096;
		const int k = 10;
		float *y = malloc(sizeof(float) * 3 * cols), vals[30];
		int32_t ids[30], cnt[3] = { -1, -1, -1 };
		const uint8_t need[3] = { 0, 1, 0 };
		void *scratch = malloc(kb_topk_scratch(tp, 3, k));
		CU_ASSERT_FATAL(y && scratch);
		for (int64_t i = 0; i < 3 * cols; i++)
			y[i] = tu_rand_f32(&s);
		CU_ASSERT_EQUAL(kb_topk_rows(tp, y, 3, cols, k, need, ids, vals, cnt, scratch), 0);
		CU_ASSERT_EQUAL(cnt[0], 0);
		CU_ASSERT_EQUAL(cnt[2], 0);
		CU_ASSERT(tu_topk_matches(y + cols, cols, k, ids + k, vals + k, cnt[1]));
		free(y);
		free(scratch);
		kb_threadpool_free(tp);
	}
	CU_ASSERT_EQUAL(kb_topk_rows(NULL, (const float *)&s, 1, 1, 0, NULL, (int32_t *)&s, (float *)&s, (int32_t *)&s, NULL),
			-EINVAL);
	printf("\n    %d rows, %d differ\n", rows_checked, bad);
}

int main(void)
{
	static const TuTest tests[] = {
		{ "threadpool_run", test_threadpool_run, NULL },
		{ "split", test_split, NULL },
		{ "matmul_types", test_matmul_types, NULL },
		{ "matmul_scalar", test_matmul_scalar, NULL },
		{ "matmul_batch_invariance", test_matmul_batch_invariance, NULL },
		{ "matmul_argmax", test_matmul_argmax, NULL },
		{ "topk_rows: vs a sort, pieces and ties", test_topk_rows, NULL },
		{ "matmul_args", test_matmul_args, NULL },
		{ NULL, NULL, NULL },
	};
	return tu_main("matmul", tests);
}
