/* daemon/engine/awq.c: AWQ (Lin et al., mit-han-lab/llm-awq) expressed in ggml block types.
 *
 * A few input channels of each linear layer carry much larger activations than the rest;
 * the weights that meet them matter more.  AWQ multiplies those columns by a per-channel
 * scale s before quantizing (so they get finer steps relative to the block's range) and
 * divides the layer's input by s, which is free when the input comes out of something
 * linear per channel: an RMSNorm weight, or the rows of a preceding linear layer.
 *
 * The search measures error the way GPTQ does, through the Gram matrix H = X^T X of the
 * group's calibration inputs: ||X (W - W')^T||^2 = tr(E H E^T).  That is exactly the
 * squared error of the layer outputs over all calibration tokens, at a cost that does not
 * grow with the number of tokens (llm-awq instead re-runs the module on a sample of them).
 * The clipping search uses only H's 32 x 32 diagonal blocks: each block of the file is
 * clipped on its own, as llm-awq clips each group on its own. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/quant.h"
#include "../../kernels/types.h"
#include "awq_internal.h"
#include "gptq_internal.h"

#define AWQ_ROWS 8 /* rows whose errors share one pass over H */

void awq_absmean(const float *A, int64_t T, int64_t d, float *out)
{
	double *acc = calloc((size_t)d, sizeof(double));
	if (acc) {
		for (int64_t t = 0; t < T; t++)
			for (int64_t c = 0; c < d; c++)
				acc[c] += fabsf(A[t * d + c]);
		for (int64_t c = 0; c < d; c++)
			out[c] = T ? (float)(acc[c] / (double)T) : 0;
		free(acc);
		return;
	}
	/* no memory for the double accumulators: float ones, in the output itself */
	memset(out, 0, sizeof(float) * (size_t)d);
	for (int64_t t = 0; t < T; t++)
		for (int64_t c = 0; c < d; c++)
			out[c] += fabsf(A[t * d + c]);
	for (int64_t c = 0; c < d; c++)
		out[c] = T ? out[c] / (float)T : 0;
}

void awq_scale_cols(float *W, int64_t rows, int64_t cols, const float *s)
{
	for (int64_t r = 0; r < rows; r++)
		for (int64_t c = 0; c < cols; c++)
			W[r * cols + c] *= s[c];
}

void awq_div_rows(float *W, int64_t rows, int64_t cols, const float *s)
{
	for (int64_t r = 0; r < rows; r++) {
		float inv = 1.0f / s[r];
		for (int64_t c = 0; c < cols; c++)
			W[r * cols + c] *= inv;
	}
}

void awq_tie_heads(float *xm, int n_head, int n_head_kv, int head_dim)
{
	if (n_head_kv < 1 || n_head_kv >= n_head || n_head % n_head_kv)
		return;
	const int group = n_head / n_head_kv;
	for (int kv = 0; kv < n_head_kv; kv++)
		for (int j = 0; j < head_dim; j++) {
			float m = 0;
			for (int h = kv * group; h < (kv + 1) * group; h++)
				m += xm[h * head_dim + j];
			for (int h = kv * group; h < (kv + 1) * group; h++)
				xm[h * head_dim + j] = m / (float)group;
		}
}

int awq_fold_block(AwqBlock *b, const float *const s[4])
{
	const int64_t d = b->n_embd, ff = b->n_ff, hd = b->head_dim, qd = (int64_t)b->n_head * hd,
		      kvd = (int64_t)b->n_head_kv * hd;
	float *sv = malloc(sizeof(float) * (size_t)kvd);
	if (!sv)
		return -ENOMEM;
	/* v row of kv head g, channel j feeds channel j of query heads g*group .. : take the first */
	for (int64_t i = 0; i < kvd; i++)
		sv[i] = s[1][(i / hd) * (b->n_head / b->n_head_kv) * hd + i % hd];
	for (int64_t i = 0; i < d; i++) {
		b->attn_norm[i] /= s[0][i];
		b->ffn_norm[i] /= s[2][i];
	}
	awq_scale_cols(b->w[0], qd, d, s[0]);
	awq_scale_cols(b->w[1], kvd, d, s[0]);
	awq_scale_cols(b->w[2], kvd, d, s[0]);
	awq_div_rows(b->w[2], kvd, d, sv);
	awq_scale_cols(b->w[3], d, qd, s[1]);
	awq_scale_cols(b->w[4], ff, d, s[2]);
	awq_scale_cols(b->w[5], ff, d, s[2]);
	awq_div_rows(b->w[5], ff, d, s[3]);
	awq_scale_cols(b->w[6], d, ff, s[3]);
	free(sv);
	return 0;
}

/* sum over the nr rows e of E = [nr][n] of e^T H e, from H's lower triangle: each row of H
 * is read once for all nr rows. */
static double quad_rows(const float *H, int64_t n, const float *E, int nr)
{
	double acc = 0;
	for (int64_t i = 0; i < n; i++) {
		const float *h = H + i * n;
		for (int r = 0; r < nr; r++) {
			const float *e = E + (int64_t)r * n;
			if (e[i] == 0)
				continue;
			float t = gptq_dot(h, e, i);
			acc += (double)e[i] * (2.0 * t + (double)h[i] * e[i]);
		}
	}
	return acc;
}

/* e = w - Q(w s) / s for one row; tmp/deq [n] f32, q one row of TYPE. */
static int fake_err(int type, const float *w, const float *s, int64_t n, float *tmp, float *deq, void *q,
		    float *e)
{
	if (type == QD_TYPE_F32) {
		memset(e, 0, sizeof(float) * (size_t)n);
		return 0;
	}
	for (int64_t c = 0; c < n; c++)
		tmp[c] = w[c] * s[c];
	if (kb_cpu_quantize_row(type, tmp, q, n) < 0 || kb_cpu_dequantize_row(type, q, deq, n) < 0)
		return -EINVAL;
	for (int64_t c = 0; c < n; c++)
		e[c] = w[c] - deq[c] / s[c];
	return 0;
}

/* ---------------------------------------------------------------- scale search */

typedef struct {
	const AwqWeight *w;
	int nw;
	int64_t cols, total_rows;
	const float *H, *s;
	float *scratch;  /* per thread: E [AWQ_ROWS][cols], tmp, deq [cols], q (row bytes) */
	size_t per_thread; /* floats */
	double *loss;    /* [nth] */
	int err;
} SearchJob;

static void search_worker(void *arg, int ith, int nth)
{
	SearchJob *j = arg;
	const int64_t n = j->cols;
	float *E = j->scratch + (size_t)ith * j->per_thread, *tmp = E + AWQ_ROWS * n, *deq = tmp + n, *q = deq + n;
	int64_t lo, hi;
	kb_split(j->total_rows, AWQ_ROWS, ith, nth, &lo, &hi);
	double acc = 0;
	int wi = 0;
	int64_t base = 0; /* first global row of weight wi */
	for (int64_t r0 = lo; r0 < hi; r0 += AWQ_ROWS) {
		int nr = hi - r0 < AWQ_ROWS ? (int)(hi - r0) : AWQ_ROWS;
		for (int r = 0; r < nr; r++) {
			int64_t g = r0 + r;
			while (g >= base + j->w[wi].rows)
				base += j->w[wi++].rows;
			const AwqWeight *w = &j->w[wi];
			if (fake_err(w->type, w->W + (g - base) * n, j->s, n, tmp, deq, q, E + (int64_t)r * n) < 0)
				j->err = -EINVAL;
		}
		acc += quad_rows(j->H, n, E, nr);
	}
	j->loss[ith] = acc;
}

int awq_search_scale(KbThreadPool *tp, const AwqWeight *w, int nw, int64_t cols, const float *H,
		     const float *xmean, float *ret_s, float *ret_alpha, double *ret_loss)
{
	if (nw < 1 || cols < 1)
		return -EINVAL;
	SearchJob j = { .w = w, .nw = nw, .cols = cols, .H = H };
	uint64_t max_rs = 0;
	for (int i = 0; i < nw; i++) {
		uint64_t rs;
		if (w[i].rows < 1 || qd_row_size(w[i].type, (uint64_t)cols, &rs) < 0)
			return -EINVAL;
		max_rs = rs > max_rs ? rs : max_rs;
		j.total_rows += w[i].rows;
	}
	int nth = tp ? kb_threadpool_size(tp) : 1;
	j.per_thread = (size_t)(AWQ_ROWS + 2) * (size_t)cols + (size_t)(max_rs + 3) / 4;
	j.scratch = malloc(sizeof(float) * j.per_thread * (size_t)nth);
	j.loss = calloc((size_t)nth, sizeof(double));
	float *s = malloc(sizeof(float) * (size_t)cols), *best = malloc(sizeof(float) * (size_t)cols);
	int r = -ENOMEM;
	if (!j.scratch || !j.loss || !s || !best)
		goto out;
	double best_loss = INFINITY;
	float best_alpha = 0;
	j.s = s;
	for (int k = 0; k < AWQ_GRID; k++) {
		float alpha = (float)k / AWQ_GRID, mx = 0, mn = INFINITY;
		for (int64_t c = 0; c < cols; c++) {
			/* llm-awq's floor: channels that never fire would otherwise get a zero scale */
			s[c] = fmaxf(powf(fmaxf(xmean[c], 0), alpha), 1e-4f);
			mx = fmaxf(mx, s[c]);
			mn = fminf(mn, s[c]);
		}
		float norm = 1.0f / sqrtf(mx * mn);
		for (int64_t c = 0; c < cols; c++)
			s[c] *= norm;
		kb_threadpool_run(tp, search_worker, &j);
		if (j.err) {
			r = j.err;
			goto out;
		}
		double loss = 0;
		for (int t = 0; t < nth; t++)
			loss += j.loss[t];
		if (ret_loss)
			ret_loss[k] = loss;
		/* ties (and NaN from a degenerate H) keep the smaller alpha, nearer plain RTN */
		if (loss < best_loss || k == 0) {
			best_loss = loss;
			best_alpha = alpha;
			memcpy(best, s, sizeof(float) * (size_t)cols);
		}
	}
	memcpy(ret_s, best, sizeof(float) * (size_t)cols);
	*ret_alpha = best_alpha;
	r = 0;
out:
	free(j.scratch);
	free(j.loss);
	free(s);
	free(best);
	return r;
}

/* ---------------------------------------------------------------- clipping */

void awq_block_diag(const float *H, const float *s, int64_t cols, float *ret)
{
	for (int64_t b = 0; b < cols / QD_QK; b++)
		for (int i = 0; i < QD_QK; i++) {
			int64_t ci = b * QD_QK + i;
			for (int k = 0; k < QD_QK; k++) {
				int64_t ck = b * QD_QK + k;
				float v = H[ci * cols + ck];
				if (s)
					v /= s[ci] * s[ck];
				ret[(b * QD_QK + i) * QD_QK + k] = v;
			}
		}
}

typedef struct {
	int type, blck;
	bool clip, affine;
	float *W;
	int64_t rows, cols;
	const float *Hb;
	uint8_t *out;
	uint64_t rs, bsz;  /* bytes of a row, of a block */
	float *scratch;    /* per thread: tmp, best, deq, e [blck] + q (block bytes) */
	size_t per_thread; /* floats */
	double *shrink;    /* [nth]: sum of chosen shrinks */
	int err;
} ClipJob;

static double block_loss(const float *Hb, const float *e, int n)
{
	double acc = 0;
	for (int p = 0; p < n / QD_QK; p++)
		acc += quad_rows(Hb + (int64_t)p * QD_QK * QD_QK, QD_QK, e + p * QD_QK, 1);
	return acc;
}

static void clip_unit(ClipJob *j, float *w, const float *Hb, uint8_t *out, float *sc, double *shrink)
{
	const int n = j->blck;
	float *tmp = sc, *best = tmp + n, *deq = best + n, *e = deq + n;
	uint8_t *q = (uint8_t *)(e + n);
	float mn = INFINITY, mx = -INFINITY, amax = 0;
	for (int i = 0; i < n; i++) {
		mn = fminf(mn, w[i]);
		mx = fmaxf(mx, w[i]);
		amax = fmaxf(amax, fabsf(w[i]));
	}
	double best_loss = INFINITY;
	int best_k = 0;
	for (int k = 0; k <= AWQ_CLIP_STEPS; k++) {
		float ratio = 1.0f - (float)k / AWQ_CLIP_GRID, lo, hi;
		if (j->affine) {
			float mid = 0.5f * (mx + mn), half = 0.5f * (mx - mn) * ratio;
			lo = mid - half;
			hi = mid + half;
		} else {
			hi = amax * ratio;
			lo = -hi;
		}
		for (int i = 0; i < n; i++)
			tmp[i] = k == 0 ? w[i] : fminf(fmaxf(w[i], lo), hi);
		if (kb_cpu_quantize_row(j->type, tmp, q, n) < 0 || kb_cpu_dequantize_row(j->type, q, deq, n) < 0) {
			j->err = -EINVAL;
			return;
		}
		for (int i = 0; i < n; i++)
			e[i] = w[i] - deq[i];
		double loss = block_loss(Hb, e, n);
		if (k == 0 || loss < best_loss) {
			best_loss = loss;
			best_k = k;
			memcpy(best, tmp, sizeof(float) * (size_t)n);
			memcpy(out, q, (size_t)j->bsz);
		}
	}
	memcpy(w, best, sizeof(float) * (size_t)n);
	*shrink += (double)best_k / AWQ_CLIP_GRID;
}

static void clip_worker(void *arg, int ith, int nth)
{
	ClipJob *j = arg;
	float *sc = j->scratch + (size_t)ith * j->per_thread;
	int64_t lo, hi;
	kb_split(j->rows, 1, ith, nth, &lo, &hi);
	double shrink = 0;
	for (int64_t r = lo; r < hi; r++) {
		float *w = j->W + r * j->cols;
		uint8_t *out = j->out + (uint64_t)r * j->rs;
		if (!j->clip) {
			if (kb_cpu_quantize_row(j->type, w, out, j->cols) < 0)
				j->err = -EINVAL;
			continue;
		}
		for (int64_t u = 0; u < j->cols / j->blck; u++)
			clip_unit(j, w + u * j->blck, j->Hb + u * j->blck * QD_QK, out + (uint64_t)u * j->bsz, sc, &shrink);
	}
	j->shrink[ith] = shrink;
}

int awq_clip_quantize(KbThreadPool *tp, int type, float *W, int64_t rows, int64_t cols, const float *Hb,
		      bool clip, void *out, double *ret_shrink)
{
	const QdTypeTraits *tr = qd_type_traits(type);
	ClipJob j = { .type = type, .W = W, .rows = rows, .cols = cols, .Hb = Hb, .out = out };
	if (!tr || rows < 1 || qd_row_size(type, (uint64_t)cols, &j.rs) < 0)
		return -EINVAL;
	j.blck = (int)tr->blck;
	j.bsz = tr->size;
	/* only block types with 32-value pieces can be clipped block by block */
	j.clip = clip && Hb && tr->quantized && j.blck % QD_QK == 0 && cols % QD_QK == 0;
	j.affine = type == QD_TYPE_Q4_1 || type == QD_TYPE_Q4_K;
	int nth = tp ? kb_threadpool_size(tp) : 1;
	j.per_thread = 4 * (size_t)j.blck + (j.bsz + 3) / 4;
	j.scratch = malloc(sizeof(float) * j.per_thread * (size_t)nth);
	j.shrink = calloc((size_t)nth, sizeof(double));
	int r = -ENOMEM;
	if (j.scratch && j.shrink) {
		kb_threadpool_run(tp, clip_worker, &j);
		r = j.err;
	}
	if (r == 0 && ret_shrink) {
		double sum = 0;
		for (int t = 0; t < nth; t++)
			sum += j.shrink[t];
		*ret_shrink = j.clip ? sum / ((double)rows * (double)(cols / j.blck)) : 0;
	}
	free(j.scratch);
	free(j.shrink);
	return r;
}
