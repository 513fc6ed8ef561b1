/* daemon/engine/gptq.c: GPTQ (Frantar et al., IST-DASLab/gptq) expressed in ggml block
 * types: the Hessian of a linear layer's inputs, dampening, the upper Cholesky factor of
 * its inverse, and column-by-column quantization with the error of each column spread over
 * the columns not yet quantized.
 *
 * GPTQ's rows are independent (the Hessian is shared), so the sweep runs over blocks of
 * GPTQ_ROWS rows, one block per task: each row of U = chol(H^-1) is loaded once per block
 * and applied to all its rows, which is the CPU form of GPTQ's lazy batched updates (the
 * same arithmetic in a cache-friendly order).  A group of 32 columns is one ggml block;
 * its scale (and min) are fitted like ggml's reference quantizer on the columns as they
 * are when the sweep reaches the group, and stored as f16, and the values are rounded to
 * that stored grid so the error fed back is the one the file will really have. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/quant.h"
#include "../../kernels/types.h"
#include "gptq_internal.h"

#define GPTQ_ROWS 8

static void axpy(float *y, const float *x, float a, int64_t n)
{
	if (kb_cpu_use_avx2()) {
		gptq_axpy_avx2(y, x, a, n);
		return;
	}
	for (int64_t i = 0; i < n; i++)
		y[i] += a * x[i];
}

float gptq_dot(const float *x, const float *y, int64_t n)
{
	if (kb_cpu_use_avx2())
		return gptq_dot_avx2(x, y, n);
	float s = 0;
	for (int64_t i = 0; i < n; i++)
		s += x[i] * y[i];
	return s;
}

/* ---------------------------------------------------------------- Hessian */

typedef struct {
	float *H;
	int64_t d, T;
	const float *A;
} SyrkJob;

static void syrk_worker(void *arg, int ith, int nth)
{
	SyrkJob *j = arg;
	/* Row i costs ~i: hand out 4-row strips round-robin so the triangle is balanced. */
	for (int64_t i = 4 * ith; i < j->d; i += 4 * nth) {
		if (kb_cpu_use_avx2()) {
			gptq_syrk_rows_avx2(j->H, j->d, j->A, j->T, i, i + 4);
			continue;
		}
		for (int64_t r = i; r < i + 4; r++)
			for (int64_t t = 0; t < j->T; t++)
				axpy(j->H + r * j->d, j->A + t * j->d, j->A[t * j->d + r], r + 1);
	}
}

void gptq_hessian_add(KbThreadPool *tp, float *H, int64_t d, const float *A, int64_t T)
{
	SyrkJob j = { H, d, T, A };
	kb_threadpool_run(tp, syrk_worker, &j);
}

void gptq_hessian_finish(float *H, int64_t d)
{
	for (int64_t i = 0; i < d; i++)
		for (int64_t k = i + 1; k < d; k++)
			H[i * d + k] = H[k * d + i];
}

/* ---------------------------------------------------------------- linear algebra */

/* In place: the upper triangle of A becomes U with A = U^T U.  -EDOM if not positive. */
static int chol_upper(float *A, int64_t n)
{
	for (int64_t k = 0; k < n; k++) {
		float *rk = A + k * n;
		if (!(rk[k] > 0))
			return -EDOM;
		float u = sqrtf(rk[k]);
		rk[k] = u;
		for (int64_t j = k + 1; j < n; j++)
			rk[j] /= u;
		for (int64_t i = k + 1; i < n; i++)
			axpy(A + i * n + i, rk + i, -rk[i], n - i);
	}
	return 0;
}

/* U (upper) -> V = U^-1 (upper) in place of a separate buffer. */
static void tri_inverse(const float *U, float *V, int64_t n, float *acc)
{
	for (int64_t i = n - 1; i >= 0; i--) {
		float *vi = V + i * n;
		memset(vi, 0, sizeof(float) * (size_t)n);
		memset(acc, 0, sizeof(float) * (size_t)n);
		for (int64_t k = i + 1; k < n; k++)
			axpy(acc + k, V + k * n + k, U[i * n + k], n - k);
		float inv = 1.0f / U[i * n + i];
		vi[i] = inv;
		for (int64_t j = i + 1; j < n; j++)
			vi[j] = -acc[j] * inv;
	}
}

/* H^-1 = V V^T for V = U^-1 upper: entry (i, j), j >= i, is row i . row j from column j. */
static void gram_upper(const float *V, float *out, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		for (int64_t j = i; j < n; j++)
			out[i * n + j] = gptq_dot(V + i * n + j, V + j * n + j, n - j);
}

/* ---------------------------------------------------------------- block grids */

typedef struct {
	float d, m; /* dequantized value: Q8_0 d*q, Q4_0 d*(q-8), Q4_1 d*q + m (d, m f16-rounded) */
} Grid;

static float f16r(float x)
{
	return qd_f16_to_f32(qd_f32_to_f16(x));
}

/* ggml's reference parameters for one block of 32 values. */
static Grid fit(int type, const float *x, int64_t stride)
{
	Grid g = { 0, 0 };
	if (type == QD_TYPE_Q4_1) {
		float mn = INFINITY, mx = -INFINITY;
		for (int j = 0; j < QD_QK; j++) {
			mn = fminf(mn, x[j * stride]);
			mx = fmaxf(mx, x[j * stride]);
		}
		g.d = f16r((mx - mn) / 15.0f);
		g.m = f16r(mn);
		return g;
	}
	float amax = 0, vmax = 0;
	for (int j = 0; j < QD_QK; j++)
		if (fabsf(x[j * stride]) > amax) {
			amax = fabsf(x[j * stride]);
			vmax = x[j * stride];
		}
	g.d = f16r(type == QD_TYPE_Q8_0 ? amax / 127.0f : vmax / -8.0f);
	return g;
}

/* Rounds w to grid g: the stored integer through ret_q, the value it stands for returned. */
static float round_to(int type, Grid g, float w, int *ret_q)
{
	int q;
	if (g.d == 0) {
		q = type == QD_TYPE_Q4_0 ? 8 : 0;
		*ret_q = q;
		return type == QD_TYPE_Q4_1 ? g.m : 0;
	}
	if (type == QD_TYPE_Q8_0) {
		q = (int)lrintf(w / g.d);
		q = q < -127 ? -127 : q > 127 ? 127 : q;
		*ret_q = q;
		return g.d * (float)q;
	}
	if (type == QD_TYPE_Q4_0) {
		q = (int)lrintf(w / g.d) + 8;
		q = q < 0 ? 0 : q > 15 ? 15 : q;
		*ret_q = q;
		return g.d * (float)(q - 8);
	}
	q = (int)lrintf((w - g.m) / g.d);
	q = q < 0 ? 0 : q > 15 ? 15 : q;
	*ret_q = q;
	return g.d * (float)q + g.m;
}

/* One row of stored integers and grids into TYPE blocks. */
static void pack_row(int type, const int8_t *q, const Grid *g, int64_t cols, uint8_t *out)
{
	for (int64_t b = 0; b < cols / QD_QK; b++) {
		const int8_t *qb = q + b * QD_QK;
		if (type == QD_TYPE_Q8_0) {
			BlockQ8_0 *blk = (BlockQ8_0 *)(void *)out + b;
			blk->d = qd_f32_to_f16(g[b].d);
			memcpy(blk->qs, qb, QD_QK);
		} else if (type == QD_TYPE_Q4_0) {
			BlockQ4_0 *blk = (BlockQ4_0 *)(void *)out + b;
			blk->d = qd_f32_to_f16(g[b].d);
			for (int j = 0; j < QD_QK / 2; j++)
				blk->qs[j] = (uint8_t)(qb[j] | qb[j + QD_QK / 2] << 4);
		} else {
			BlockQ4_1 *blk = (BlockQ4_1 *)(void *)out + b;
			blk->d = qd_f32_to_f16(g[b].d);
			blk->m = qd_f32_to_f16(g[b].m);
			for (int j = 0; j < QD_QK / 2; j++)
				blk->qs[j] = (uint8_t)(qb[j] | qb[j + QD_QK / 2] << 4);
		}
	}
}

/* ---------------------------------------------------------------- the sweep */

typedef struct {
	int type;
	bool act_order;
	float *W;         /* [rows][cols], columns in sweep order */
	const float *U;   /* [cols][cols] upper Cholesky factor of H^-1 (sweep order) */
	const int32_t *perm; /* sweep position -> original column */
	int64_t rows, cols;
	uint64_t row_bytes;
	Grid *grids;      /* [rows][cols/32] by original group; prefilled with act-order */
	uint8_t *out;
	int8_t *qbuf;     /* [nth][GPTQ_ROWS][cols] */
} SweepJob;

static void sweep_worker(void *arg, int ith, int nth)
{
	SweepJob *j = arg;
	const int64_t cols = j->cols, ng = cols / QD_QK;
	int8_t *q = j->qbuf + (int64_t)ith * GPTQ_ROWS * cols;
	for (int64_t r0 = (int64_t)ith * GPTQ_ROWS; r0 < j->rows; r0 += (int64_t)nth * GPTQ_ROWS) {
		int64_t nr = j->rows - r0 < GPTQ_ROWS ? j->rows - r0 : GPTQ_ROWS;
		for (int64_t i = 0; i < cols; i++) {
			const float *u = j->U + i * cols;
			int64_t c = j->perm ? j->perm[i] : i;
			for (int64_t r = 0; r < nr; r++) {
				float *w = j->W + (r0 + r) * cols;
				Grid *g = j->grids + (r0 + r) * ng + c / QD_QK;
				if (!j->act_order && c % QD_QK == 0)
					*g = fit(j->type, w + i, 1);
				int qi;
				float deq = round_to(j->type, *g, w[i], &qi);
				q[r * cols + c] = (int8_t)qi;
				float err = (w[i] - deq) / u[i];
				axpy(w + i + 1, u + i + 1, -err, cols - i - 1);
			}
		}
		for (int64_t r = 0; r < nr; r++)
			pack_row(j->type, q + r * cols, j->grids + (r0 + r) * ng, cols, j->out + (uint64_t)(r0 + r) * j->row_bytes);
	}
}

static int by_diag_desc_cmp(const void *a, const void *b, void *arg)
{
	const float *diag = arg;
	float x = diag[*(const int32_t *)a], y = diag[*(const int32_t *)b];
	if (x != y)
		return x > y ? -1 : 1;
	return *(const int32_t *)a - *(const int32_t *)b;
}

/* H^-1's upper Cholesky factor into U (H clobbered). */
static int hinv_chol(float *H, float *U, int64_t n, float *acc)
{
	int r = chol_upper(H, n);
	if (r < 0)
		return r;
	tri_inverse(H, U, n, acc);
	gram_upper(U, H, n);
	if ((r = chol_upper(H, n)) < 0)
		return r;
	for (int64_t i = 0; i < n; i++) {
		memset(U + i * n, 0, sizeof(float) * (size_t)i);
		memcpy(U + i * n + i, H + i * n + i, sizeof(float) * (size_t)(n - i));
	}
	return 0;
}

int gptq_quantize(KbThreadPool *tp, int type, float *W, int64_t rows, int64_t cols, float *H, float damp,
		  bool act_order, void *out)
{
	if ((type != QD_TYPE_Q8_0 && type != QD_TYPE_Q4_0 && type != QD_TYPE_Q4_1) || cols % QD_QK || rows < 1)
		return -EINVAL;
	const int64_t ng = cols / QD_QK;
	int nth = tp ? kb_threadpool_size(tp) : 1;
	int r = -ENOMEM;
	float *U = malloc(sizeof(float) * (size_t)(cols * cols)), *acc = malloc(sizeof(float) * (size_t)cols);
	float *Hc = malloc(sizeof(float) * (size_t)(cols * cols)), *diag = malloc(sizeof(float) * (size_t)cols);
	float *Wp = act_order ? malloc(sizeof(float) * (size_t)(rows * cols)) : NULL;
	int32_t *perm = act_order ? malloc(sizeof(int32_t) * (size_t)cols) : NULL;
	Grid *grids = calloc((size_t)(rows * ng), sizeof(Grid));
	int8_t *qbuf = malloc((size_t)nth * GPTQ_ROWS * (size_t)cols);
	uint64_t rs;
	if (!U || !acc || !Hc || !diag || !grids || !qbuf || (act_order && (!Wp || !perm)))
		goto out;
	qd_row_size(type, (uint64_t)cols, &rs);
	/* Dead inputs (never active in calibration): weight irrelevant, keep H invertible. */
	double mean = 0;
	for (int64_t i = 0; i < cols; i++) {
		if (H[i * cols + i] == 0) {
			H[i * cols + i] = 1;
			for (int64_t k = 0; k < rows; k++)
				W[k * cols + i] = 0;
		}
		diag[i] = H[i * cols + i];
		mean += diag[i];
	}
	mean /= (double)cols;
	float *Ws = W;
	if (act_order) {
		for (int64_t i = 0; i < cols; i++)
			perm[i] = (int32_t)i;
		qsort_r(perm, (size_t)cols, sizeof(int32_t), by_diag_desc_cmp, diag);
		for (int64_t k = 0; k < rows; k++) {
			for (int64_t b = 0; b < ng; b++)
				grids[k * ng + b] = fit(type, W + k * cols + b * QD_QK, 1);
			for (int64_t i = 0; i < cols; i++)
				Wp[k * cols + i] = W[k * cols + perm[i]];
		}
		for (int64_t i = 0; i < cols; i++)
			for (int64_t k = 0; k < cols; k++)
				Hc[i * cols + k] = H[(int64_t)perm[i] * cols + perm[k]];
		memcpy(H, Hc, sizeof(float) * (size_t)(cols * cols));
		Ws = Wp;
	}
	/* Dampen; if H is still not positive definite (float rounding), dampen harder. */
	memcpy(Hc, H, sizeof(float) * (size_t)(cols * cols));
	r = -EDOM;
	for (int attempt = 0; attempt < 4 && r == -EDOM; attempt++) {
		if (attempt)
			memcpy(H, Hc, sizeof(float) * (size_t)(cols * cols));
		float add = (float)(damp * mean * pow(10.0, attempt));
		for (int64_t i = 0; i < cols; i++)
			H[i * cols + i] += add;
		r = hinv_chol(H, U, cols, acc);
	}
	if (r < 0)
		goto out;
	SweepJob j = { .type = type, .act_order = act_order, .W = Ws, .U = U, .perm = perm, .rows = rows,
		       .cols = cols, .row_bytes = rs, .grids = grids, .out = out, .qbuf = qbuf };
	kb_threadpool_run(tp, sweep_worker, &j);
	r = 0;
out:
	free(U);
	free(acc);
	free(Hc);
	free(diag);
	free(Wp);
	free(perm);
	free(grids);
	free(qbuf);
	return r;
}
