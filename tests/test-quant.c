/* tests/test-quant.c: the CPU block kernels (kernels/cpu/quant.h).
 *
 * Error bounds asserted for quantize -> dequantize (d: the block's scale before f16
 * rounding, amax: the largest |x| of the block, 2^-11: f16's relative rounding):
 *   F32   exact                    F16   |e| <= max(|x| 2^-11, 2^-25)
 *   BF16  |e| <= |x| 2^-8          Q8_0, Q8_1  |e| <= d (1/2 + 127 2^-11), d = amax/127
 *   Q8_K  |e| <= d/2 (f32 scale)   Q4_0  |e| <= |d| (1 + 8 2^-11), d = amax/8: the value
 *                                        opposite the max clips from level 16 to 15
 *   Q4_1  |e| <= d (1/2 + 15 2^-11) + |min| 2^-11, d = (max - min)/15
 *   Q4_K  |e| <= amax/8   of the 256-value super-block  (searched scales; measured 0.08)
 *   Q6_K  |e| <= amax/40  of the super-block            (measured 0.016)
 * Every f16 scale s adds its own rounding, max(|s| 2^-11, 2^-25) times the largest level:
 * in rows of tiny values the scales underflow f16 and only that absolute term is left.  * The dot products are held to the double-precision dot of the dequantized operands within
 * 2e-5 of sum |w_i x_i| (computed with the block's offset part taken in absolute value),
 * plus, for Q4_1, the f16 rounding of the activation block sum s.
 * AVX2 quantizers and dequantizers must match the reference byte for byte. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "tests/hexdigit.h"
#include "tests/testutil.h"

static const int weight_types[] = { QD_TYPE_F32, QD_TYPE_F16, QD_TYPE_BF16, QD_TYPE_Q8_0,
				    QD_TYPE_Q4_0, QD_TYPE_Q4_1, QD_TYPE_Q4_K, QD_TYPE_Q6_K };
static const int all_types[] = { QD_TYPE_F32, QD_TYPE_F16, QD_TYPE_BF16, QD_TYPE_Q8_0, QD_TYPE_Q8_1,
				 QD_TYPE_Q4_0, QD_TYPE_Q4_1, QD_TYPE_Q4_K, QD_TYPE_Q6_K, QD_TYPE_Q8_K };
static const int64_t lengths[] = { 32, 256, 576, 1536, 4096, 1003 };

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))
#define MAXN 8192

static const char *tname(int t)
{
	return qd_type_traits(t)->name;
}

static int blck(int t)
{
	return qd_type_traits(t)->blck;
}

static size_t row_bytes(int t, int64_t n)
{
	uint64_t r = 0;
	qd_row_size(t, (uint64_t)n, &r);
	return (size_t)r;
}

static int have_avx2(void)
{
	kb_cpu_force_scalar(0);
	return strcmp(kb_cpu_init(), "scalar") != 0;
}

static const char *skip_without_avx2(void)
{
	return have_avx2() ? NULL : "CPU lacks AVX2+FMA+F16C: only the scalar kernels exist here";
}

/* ------------------------------------------------------------------ test inputs */

enum { SHAPE_UNIFORM, SHAPE_NORMALISH, SHAPE_CUBIC, SHAPE_ZERO, SHAPE_OUTLIER, SHAPE_NEGATIVE,
       SHAPE_TIES, SHAPE_F16_MAX, SHAPE_TINY, SHAPE_POSITIVE_OFFSET, N_SHAPES };

static const char *shape_name[N_SHAPES] = { "uniform", "normalish", "cubic", "zero", "outlier",
					    "negative", "ties", "f16max", "tiny", "offset" };

static void fill(float *x, int64_t n, int shape, uint64_t seed)
{
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + (uint64_t)shape + 1;
	for (int64_t i = 0; i < n; i++) {
		float u = tu_rand_f32(&s);
		switch (shape) {
		case SHAPE_UNIFORM: x[i] = u; break;
		case SHAPE_NORMALISH: x[i] = (u + tu_rand_f32(&s) + tu_rand_f32(&s)) * 0.7f; break;
		case SHAPE_CUBIC: x[i] = u * u * u * 10.0f; break;
		case SHAPE_ZERO: x[i] = 0.0f; break;
		case SHAPE_OUTLIER: x[i] = u * 0.01f; break;
		case SHAPE_NEGATIVE: x[i] = -fabsf(u) - 0.001f; break;
		case SHAPE_TIES: {
			/* power-of-two scale 2^-2 and a block max of 127 scale units: x/d lands
			 * exactly on k + .5, where roundf and round-half-even differ */
			int64_t k = i % 32;
			float v = k == 0 ? 127.0f : (float)((i * 7) % 120) + 0.5f;
			x[i] = (k & 1 ? -v : v) * 0.25f;
			break;
		}
		case SHAPE_F16_MAX: x[i] = u * 65504.0f; break;
		case SHAPE_TINY: x[i] = u * 1e-7f; break;
		case SHAPE_POSITIVE_OFFSET: x[i] = 10.0f + u * 0.1f; break;
		}
	}
	if (shape == SHAPE_OUTLIER && n > 17)
		x[17] = 300.0f;
	if (shape == SHAPE_F16_MAX && n >= 4) {
		x[0] = 65504.0f;
		x[1] = -65504.0f;
	}
}

/* ------------------------------------------------------------------ error bounds */

/* Largest |x| over [lo, hi). */
static double amax_of(const float *x, int64_t lo, int64_t hi)
{
	double m = 0;
	for (int64_t i = lo; i < hi; i++)
		m = fmax(m, fabs(x[i]));
	return m;
}

/* f16 rounding error of a scale v: relative 2^-11, but never below 2^-25, half the
 * smallest subnormal (rows of tiny values have scales that underflow f16). */
static double f16err(double v)
{
	return fmax(fabs(v) / 2048, ldexp(1.0, -25));
}

/* The bound on |x_i - dequant(quant(x))_i| stated at the top, for element i. */
static double err_bound(int t, const float *x, int64_t i)
{
	int b = blck(t);
	int64_t lo = i / b * b, hi = lo + b;
	double am = amax_of(x, lo, hi), slop = am * 1e-6;
	switch (t) {
	case QD_TYPE_F32: return 0;
	case QD_TYPE_F16: return f16err(x[i]);
	case QD_TYPE_BF16: return fabs(x[i]) / 256;
	case QD_TYPE_Q8_0:
	case QD_TYPE_Q8_1: return am / 127 * 0.5 + 127 * f16err(am / 127) + slop;
	case QD_TYPE_Q8_K: return am / 127 * 0.5 + slop;
	case QD_TYPE_Q4_0: return am / 8 + 8 * f16err(am / 8) + slop;
	case QD_TYPE_Q4_1: {
		double mn = x[lo], mx = x[lo];
		for (int64_t j = lo; j < hi; j++) {
			mn = fmin(mn, x[j]);
			mx = fmax(mx, x[j]);
		}
		return (mx - mn) / 15 * 0.5 + 15 * f16err((mx - mn) / 15) + f16err(mn) + slop;
	}
	/* super-block scales times 6-bit sub-scales times levels: 63*15 + 63 and 128*32 */
	case QD_TYPE_Q4_K: return am / 8 + 1008 * ldexp(1.0, -25) + slop;
	case QD_TYPE_Q6_K: return am / 40 + 4096 * ldexp(1.0, -25) + slop;
	}
	return 0;
}

static void check_roundtrip(int t, const float *x, int64_t n, const char *what)
{
	uint8_t *q = malloc(row_bytes(t, n) + 1);
	float *y = malloc((size_t)n * sizeof(float));
	CU_ASSERT_FATAL(q && y);
	CU_ASSERT_EQUAL(kb_cpu_quantize_row_ref(t, x, q, n), 0);
	CU_ASSERT_EQUAL(kb_cpu_dequantize_row_ref(t, q, y, n), 0);
	int bad = 0;
	for (int64_t i = 0; i < n; i++) {
		double e = fabs((double)x[i] - (double)y[i]);
		if (!(e <= err_bound(t, x, i))) {
			if (bad++ < 3)
				printf("\n    %s %s n=%lld: x[%lld]=%g -> %g, |e| %g > bound %g", tname(t), what,
				       (long long)n, (long long)i, x[i], y[i], e, err_bound(t, x, i));
		}
	}
	CU_ASSERT_EQUAL(bad, 0);
	free(q);
	free(y);
}

static void test_roundtrip_error(void)
{
	float *x = malloc(MAXN * sizeof(float));
	CU_ASSERT_FATAL(x != NULL);
	for (size_t ti = 0; ti < N_ELEMS(all_types); ti++) {
		int t = all_types[ti];
		for (size_t li = 0; li < N_ELEMS(lengths); li++) {
			int64_t n = lengths[li];
			if (n % blck(t))
				continue;
			for (int shape = 0; shape < N_SHAPES; shape++) {
				/* F16 cannot hold values past its range: its limits have their own test */
				if (t == QD_TYPE_F16 && shape == SHAPE_F16_MAX)
					continue;
				fill(x, n, shape, (uint64_t)(n + t));
				check_roundtrip(t, x, n, shape_name[shape]);
			}
		}
	}
	free(x);
}

/* All-zero rows stay zero; F16's rounding at its range limit. */
static void test_edge_values(void)
{
	float x[256] = { 0 }, y[256];
	uint8_t q[1024];
	for (size_t ti = 0; ti < N_ELEMS(all_types); ti++) {
		int t = all_types[ti];
		memset(y, 0x55, sizeof y);
		CU_ASSERT_EQUAL(kb_cpu_quantize_row(t, x, q, 256), 0);
		CU_ASSERT_EQUAL(kb_cpu_dequantize_row(t, q, y, 256), 0);
		for (int i = 0; i < 256; i++)
			CU_ASSERT_EQUAL(y[i], 0.0f);
	}
	/* f16 limits: the largest finite value survives, half an ulp above it overflows, and
	 * values under half the smallest subnormal flush to zero */
	float lim[8] = { 65504.0f, -65504.0f, 65519.0f, 65520.0f, -65520.0f, 1e-8f, 3e-8f, 6.0975552e-5f };
	uint16_t h[8];
	for (int pass = 0; pass < 2; pass++) {
		int r = pass ? kb_cpu_quantize_row(QD_TYPE_F16, lim, h, 8) : kb_cpu_quantize_row_ref(QD_TYPE_F16, lim, h, 8);
		CU_ASSERT_EQUAL(r, 0);
		CU_ASSERT_EQUAL(h[0], 0x7bff);
		CU_ASSERT_EQUAL(h[1], 0xfbff);
		CU_ASSERT_EQUAL(h[2], 0x7bff);
		CU_ASSERT_EQUAL(h[3], 0x7c00);
		CU_ASSERT_EQUAL(h[4], 0xfc00);
		CU_ASSERT_EQUAL(h[5], 0x0000);
		CU_ASSERT_EQUAL(h[6], 0x0001);
		CU_ASSERT_EQUAL(h[7], 0x03ff); /* largest subnormal */
	}
	/* invalid arguments */
	CU_ASSERT_EQUAL(kb_cpu_quantize_row(QD_TYPE_Q4_0, x, q, 33), -EINVAL);
	CU_ASSERT_EQUAL(kb_cpu_quantize_row(QD_TYPE_Q5_0, x, q, 32), -EINVAL);
	CU_ASSERT_EQUAL(kb_cpu_dequantize_row(99, q, y, 32), -EINVAL);
	CU_ASSERT_EQUAL(kb_cpu_vec_dot_type(QD_TYPE_Q4_1), QD_TYPE_Q8_1);
	CU_ASSERT_EQUAL(kb_cpu_vec_dot_type(QD_TYPE_Q4_K), QD_TYPE_Q8_K);
	CU_ASSERT_EQUAL(kb_cpu_vec_dot_type(QD_TYPE_Q8_K), -EINVAL);
}

/* ---------------------------------------------------------------- AVX2 == scalar */

static void test_avx2_quantize_identical(void)
{
	float *x = malloc(MAXN * sizeof(float));
	uint8_t *a = malloc(MAXN * 4), *b = malloc(MAXN * 4);
	CU_ASSERT_FATAL(x && a && b);
	for (size_t ti = 0; ti < N_ELEMS(all_types); ti++) {
		int t = all_types[ti];
		for (size_t li = 0; li < N_ELEMS(lengths); li++) {
			int64_t n = lengths[li];
			if (n % blck(t))
				continue;
			for (int shape = 0; shape < N_SHAPES; shape++) {
				fill(x, n, shape, (uint64_t)(3 * n + t));
				size_t nb = row_bytes(t, n);
				memset(a, 0xaa, nb);
				memset(b, 0x55, nb);
				CU_ASSERT_EQUAL(kb_cpu_quantize_row(t, x, a, n), 0);
				CU_ASSERT_EQUAL(kb_cpu_quantize_row_ref(t, x, b, n), 0);
				if (memcmp(a, b, nb)) {
					printf("\n    %s %s n=%lld: AVX2 bytes differ from the reference", tname(t),
					       shape_name[shape], (long long)n);
					CU_FAIL("quantize bytes differ");
				}
			}
		}
	}
	/* F16/BF16 conversion over a sweep of every 65521st float bit pattern (NaNs left
	 * out: their payloads are not part of the contract) */
	for (int t = QD_TYPE_F16; t <= QD_TYPE_BF16; t += QD_TYPE_BF16 - QD_TYPE_F16) {
		int bad = 0;
		for (uint64_t base = 0; base < (1ull << 32); base += 65521ull * 4096) {
			int n = 0;
			for (uint64_t k = 0; k < 4096; k++) {
				uint32_t bits = (uint32_t)(base + k * 65521ull);
				if ((bits & 0x7fffffffu) > 0x7f800000u)
					bits = 0x3f800000u;
				memcpy(&x[n++], &bits, 4);
			}
			kb_cpu_quantize_row(t, x, a, n);
			kb_cpu_quantize_row_ref(t, x, b, n);
			bad += memcmp(a, b, (size_t)n * 2) != 0;
		}
		CU_ASSERT_EQUAL(bad, 0);
	}
	free(x);
	free(a);
	free(b);
}

/* Blocks of type t for tests: quantized from a random row, or random bytes with sane
 * scales (so that every nibble pattern shows up, not only the ones quantizing produces). */
static void make_blocks(int t, int64_t n, uint64_t seed, int random_bytes, uint8_t *q)
{
	float *x = malloc((size_t)n * sizeof(float));
	CU_ASSERT_FATAL(x != NULL);
	fill(x, n, SHAPE_NORMALISH, seed);
	kb_cpu_quantize_row_ref(t, x, q, n);
	free(x);
	if (!random_bytes || !qd_type_traits(t)->quantized)
		return;
	uint64_t s = seed + 99;
	size_t bs = qd_type_traits(t)->size;
	for (int64_t b = 0; b < n / blck(t); b++) {
		uint8_t *p = q + (size_t)b * bs;
		for (size_t j = 0; j < bs; j++)
			p[j] = (uint8_t)tu_rand_u64(&s);
		uint16_t d = qd_f32_to_f16(0.01f + 0.01f * tu_rand_f32(&s));
		uint16_t m = qd_f32_to_f16(0.1f * tu_rand_f32(&s));
		switch (t) {
		case QD_TYPE_Q8_0: case QD_TYPE_Q4_0: memcpy(p, &d, 2); break;
		case QD_TYPE_Q8_1: memcpy(p, &d, 2); memcpy(p + 2, &m, 2); break;
		case QD_TYPE_Q4_1: case QD_TYPE_Q4_K: memcpy(p, &d, 2); memcpy(p + 2, &d, 2); break;
		case QD_TYPE_Q6_K: memcpy(p + bs - 2, &d, 2); break;
		case QD_TYPE_Q8_K: {
			float fd = 0.01f;
			memcpy(p, &fd, 4);
			break;
		}
		}
	}
}

static void test_avx2_dequantize_identical(void)
{
	uint8_t *q = malloc(MAXN * 4);
	float *a = malloc(MAXN * sizeof(float)), *b = malloc(MAXN * sizeof(float));
	CU_ASSERT_FATAL(q && a && b);
	for (size_t ti = 0; ti < N_ELEMS(all_types); ti++) {
		int t = all_types[ti];
		for (size_t li = 0; li < N_ELEMS(lengths); li++) {
			int64_t n = lengths[li];
			if (n % blck(t))
				continue;
			for (int rb = 0; rb < 2; rb++) {
				make_blocks(t, n, (uint64_t)(n * 31 + t), rb, q);
				CU_ASSERT_EQUAL(kb_cpu_dequantize_row(t, q, a, n), 0);
				CU_ASSERT_EQUAL(kb_cpu_dequantize_row_ref(t, q, b, n), 0);
				if (memcmp(a, b, (size_t)n * sizeof(float))) {
					printf("\n    %s n=%lld random=%d: AVX2 floats differ", tname(t), (long long)n, rb);
					CU_FAIL("dequantize differs");
				}
			}
		}
	}
	free(q);
	free(a);
	free(b);
}

/* ------------------------------------------------------------------ dot products */

/* Dequantized w with its offset part (Q4_1's m, Q4_K's dmin terms) made non-negative
 * and added in absolute value: |w_i| as the kernel's partial sums see it. */
static void magnitudes(int t, const uint8_t *w, int64_t n, float *ret)
{
	size_t nb = row_bytes(t, n);
	uint8_t *c = malloc(nb);
	float *y = malloc((size_t)n * sizeof(float));
	CU_ASSERT_FATAL(c && y);
	memcpy(c, w, nb);
	kb_cpu_dequantize_row_ref(t, w, y, n);
	size_t bs = qd_type_traits(t)->size;
	/* zero the offset scale: what is left is the positive part a_i of w_i = a_i - b_i */
	for (int64_t b = 0; b < n / blck(t); b++)
		if (t == QD_TYPE_Q4_1 || t == QD_TYPE_Q4_K)
			memset(c + (size_t)b * bs + 2, 0, 2);
	kb_cpu_dequantize_row_ref(t, c, ret, n);
	for (int64_t i = 0; i < n; i++)
		ret[i] = fabsf(ret[i]) + fabsf(ret[i] - y[i]);
	free(c);
	free(y);
}

typedef struct {
	double dot, mag, extra; /* double dot, sum |w||x|, Q4_1's s rounding allowance */
} DotRef;

static DotRef dot_reference(int wt, const uint8_t *w, const uint8_t *xq, int64_t n)
{
	int xt = kb_cpu_vec_dot_type(wt);
	float *wf = malloc((size_t)n * sizeof(float)), *xf = malloc((size_t)n * sizeof(float));
	float *wm = malloc((size_t)n * sizeof(float));
	CU_ASSERT_FATAL(wf && xf && wm);
	kb_cpu_dequantize_row_ref(wt, w, wf, n);
	kb_cpu_dequantize_row_ref(xt, xq, xf, n);
	magnitudes(wt, w, n, wm);
	DotRef r = { 0, 0, 0 };
	for (int64_t i = 0; i < n; i++) {
		r.dot += (double)wf[i] * xf[i];
		r.mag += (double)wm[i] * fabs(xf[i]);
	}
	if (wt == QD_TYPE_Q4_1) {
		/* the kernel uses x's s = f16(d*sum q) where the dequantized x has f16(d)*sum q */
		const BlockQ4_1 *a = (const void *)w;
		const BlockQ8_1 *b = (const void *)xq;
		for (int64_t i = 0; i < n / QD_QK; i++) {
			int sq = 0;
			for (int j = 0; j < QD_QK; j++)
				sq += b[i].qs[j];
			double s = qd_f16_to_f32(b[i].s), ds = qd_f16_to_f32(b[i].d) * (double)sq;
			r.extra += fabs(qd_f16_to_f32(a[i].m)) * (fabs(s) + fabs(ds)) / 1024;
		}
	}
	free(wf);
	free(xf);
	free(wm);
	return r;
}

static void check_dots(int wt, int64_t n, int shape_w, int shape_x, int random_bytes)
{
	int xt = kb_cpu_vec_dot_type(wt);
	uint8_t *w = malloc(row_bytes(wt, n)), *xq = malloc(row_bytes(xt, n));
	float *x = malloc((size_t)n * sizeof(float));
	CU_ASSERT_FATAL(w && xq && x);
	if (random_bytes) {
		make_blocks(wt, n, (uint64_t)(n + 7 * wt), 1, w);
	} else {
		fill(x, n, shape_w, (uint64_t)(n + wt));
		kb_cpu_quantize_row_ref(wt, x, w, n);
	}
	fill(x, n, shape_x, (uint64_t)(5 * n + wt));
	kb_cpu_quantize_row_ref(xt, x, xq, n);

	DotRef ref = dot_reference(wt, w, xq, n);
	float r_ref = NAN, r_fast = NAN;
	kb_cpu_vec_dot_ref(wt, n, w, xq, &r_ref);
	kb_cpu_vec_dot(wt, n, w, xq, &r_fast);
	double tol = 2e-5 * ref.mag + ref.extra + 1e-30;
	if (!(fabs(r_ref - ref.dot) <= tol) || !(fabs(r_fast - ref.dot) <= tol)) {
		printf("\n    %s n=%lld shapes %s/%s random=%d: ref %.9g fast %.9g double %.9g tol %.3g", tname(wt),
		       (long long)n, shape_name[shape_w], shape_name[shape_x], random_bytes, r_ref, r_fast,
		       ref.dot, tol);
		CU_FAIL("vec_dot off the double-precision dot");
	}
	/* AVX2 against scalar: only the float summation order differs */
	if (!(fabs((double)r_fast - r_ref) <= 2e-5 * ref.mag + 1e-30)) {
		printf("\n    %s n=%lld: AVX2 %.9g vs scalar %.9g", tname(wt), (long long)n, r_fast, r_ref);
		CU_FAIL("AVX2 vec_dot off the scalar one");
	}
	free(w);
	free(xq);
	free(x);
}

static void test_vec_dot(void)
{
	static const int shapes[][2] = {
		{ SHAPE_UNIFORM, SHAPE_NORMALISH }, { SHAPE_CUBIC, SHAPE_UNIFORM }, { SHAPE_OUTLIER, SHAPE_CUBIC },
		{ SHAPE_NEGATIVE, SHAPE_NEGATIVE }, { SHAPE_POSITIVE_OFFSET, SHAPE_UNIFORM },
		{ SHAPE_ZERO, SHAPE_UNIFORM }, { SHAPE_UNIFORM, SHAPE_ZERO }, { SHAPE_TIES, SHAPE_TIES },
		{ SHAPE_TINY, SHAPE_OUTLIER },
	};
	if (!have_avx2())
		tu_skip("vec_dot (AVX2 comparison)", "CPU lacks AVX2+FMA+F16C; checking the scalar kernels only");
	for (size_t ti = 0; ti < N_ELEMS(weight_types); ti++) {
		int wt = weight_types[ti];
		for (size_t li = 0; li < N_ELEMS(lengths); li++) {
			int64_t n = lengths[li];
			if (n % blck(wt))
				continue;
			for (size_t si = 0; si < N_ELEMS(shapes); si++)
				check_dots(wt, n, shapes[si][0], shapes[si][1], 0);
			check_dots(wt, n, 0, SHAPE_NORMALISH, 1);
		}
	}
	/* an all-zero weight row gives exactly 0 */
	uint8_t w[4096] = { 0 }, xq[4096];
	float x[256];
	fill(x, 256, SHAPE_UNIFORM, 1);
	for (size_t ti = 0; ti < N_ELEMS(weight_types); ti++) {
		int wt = weight_types[ti];
		float r = 1;
		kb_cpu_quantize_row(kb_cpu_vec_dot_type(wt), x, xq, 256);
		kb_cpu_vec_dot(wt, 256, w, xq, &r);
		CU_ASSERT_EQUAL(r, 0.0f);
	}
}

/* ------------------------------------------------------------ gguf-py's vectors */

static uint32_t rd32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

/* The bytes of a file of hex digits (line breaks between pairs ignored), decoded in place;
 * NULL if it cannot be read or holds anything else. */
static uint8_t *read_hex(const char *path, size_t *ret_len)
{
	size_t n = 0, o = 0;
	char *t = tu_read_file(path, &n);
	if (!t)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (t[i] == '\n')
			continue;
		int hi = hex_digit(t[i]), lo = i + 1 < n ? hex_digit(t[i + 1]) : -1;
		if (hi < 0 || lo < 0) {
			free(t);
			return NULL;
		}
		t[o++] = (char)(hi << 4 | lo);
		i++;
	}
	*ret_len = o;
	return (uint8_t *)t;
}

static void test_gguf_py_vectors(void)
{
	const char *path = "tests/data/quant-vectors.hex";
	size_t len = 0;
	uint8_t *buf = read_hex(path, &len);
	if (!buf) {
		printf("\n    cannot read %s (run from the repository root; tools/quant-vectors.py makes it)", path);
		CU_FAIL_FATAL("quant-vectors.hex missing or malformed");
	}
	CU_ASSERT_FATAL(len >= 12 && memcmp(buf, "QDQVEC1\0", 8) == 0);
	uint32_t nrec = rd32(buf + 8);
	size_t off = 12;
	int n_quan = 0, n_dequ = 0;
	for (uint32_t r = 0; r < nrec; r++) {
		CU_ASSERT_FATAL(off + 16 <= len);
		const uint8_t *h = buf + off;
		uint32_t t = rd32(h + 4), n = rd32(h + 8), nbytes = rd32(h + 12);
		off += 16;
		CU_ASSERT_FATAL(qd_type_traits((int)t) && n <= MAXN && nbytes <= MAXN * 4);
		CU_ASSERT_FATAL(off + nbytes + (size_t)n * 4 <= len);
		CU_ASSERT_FATAL(row_bytes((int)t, n) == nbytes);
		int quan = memcmp(h, "QUAN", 4) == 0;
		const uint8_t *fl = quan ? buf + off : buf + off + nbytes;
		const uint8_t *qb = quan ? buf + off + (size_t)n * 4 : buf + off;
		off += nbytes + (size_t)n * 4;
		float *f = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
		uint8_t *q = malloc(nbytes);
		CU_ASSERT_FATAL(f && y && q);
		memcpy(f, fl, (size_t)n * 4);
		for (int pass = 0; pass < 2; pass++) { /* reference, then dispatched */
			if (quan) {
				int rc = pass ? kb_cpu_quantize_row((int)t, f, q, n) : kb_cpu_quantize_row_ref((int)t, f, q, n);
				CU_ASSERT_EQUAL(rc, 0);
				if (memcmp(q, qb, nbytes)) {
					printf("\n    %s quantize (%s) differs from gguf-py", tname((int)t), pass ? "fast" : "ref");
					CU_FAIL("quantize differs from gguf-py");
				}
			} else {
				int rc = pass ? kb_cpu_dequantize_row((int)t, qb, y, n) : kb_cpu_dequantize_row_ref((int)t, qb, y, n);
				CU_ASSERT_EQUAL(rc, 0);
				if (memcmp(y, f, (size_t)n * 4)) {
					printf("\n    %s dequantize (%s) differs from gguf-py", tname((int)t), pass ? "fast" : "ref");
					CU_FAIL("dequantize differs from gguf-py");
				}
			}
		}
		n_quan += quan;
		n_dequ += !quan;
		free(f);
		free(y);
		free(q);
	}
	CU_ASSERT_EQUAL(off, len);
	/* the file covers what gguf-py can quantize (5 types) and dequantize (8) */
	CU_ASSERT_EQUAL(n_quan, 5);
	CU_ASSERT_EQUAL(n_dequ, 8);
	free(buf);
}

int main(void)
{
	printf("kernels: %s\n", kb_cpu_init());
	static const TuTest tests[] = {
		{ "roundtrip_error", test_roundtrip_error, NULL },
		{ "edge_values", test_edge_values, NULL },
		{ "avx2_quantize_identical", test_avx2_quantize_identical, skip_without_avx2 },
		{ "avx2_dequantize_identical", test_avx2_dequantize_identical, skip_without_avx2 },
		{ "vec_dot", test_vec_dot, NULL },
		{ "gguf_py_vectors", test_gguf_py_vectors, NULL },
		{ NULL, NULL, NULL },
	};
	return tu_main("quant", tests);
}
