/* kernels/cpu/topk.c: see topk.h.  One pass through a min-heap of k kept in the output
 * arrays.  Once the heap is full, a block of 64 values whose maximum is not above the
 * root is skipped whole (an equal value comes later, so its index is higher and it ranks
 * after the root), and in the blocks that are read four values at a time are compared with
 * the root (SSE2, the x86-64 baseline; scalar elsewhere).  That is most blocks, so a row
 * costs about a maximum per value: SmolLM2's 49,152 logits, k 40, ~9 µs on one core of the
 * 2-core VM instead of 45 with a comparison per value. */
#include "topk.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define TOPK_BLOCK 64 /* values tested at once against the heap's root */

/* (va, ia) ranks after (vb, ib): lower value, or the same value and a higher index. */
static inline bool worse(float va, int32_t ia, float vb, int32_t ib)
{
	return va < vb || (va == vb && ia > ib);
}

static inline void swap(int32_t *ids, float *vals, int32_t i, int32_t j)
{
	const int32_t ti = ids[i];
	const float tv = vals[i];
	ids[i] = ids[j];
	vals[i] = vals[j];
	ids[j] = ti;
	vals[j] = tv;
}

static void sift_down(int32_t *ids, float *vals, int32_t n, int32_t i)
{
	for (;;) {
		int32_t l = 2 * i + 1, r = l + 1, w = i;
		if (l < n && worse(vals[l], ids[l], vals[w], ids[w]))
			w = l;
		if (r < n && worse(vals[r], ids[r], vals[w], ids[w]))
			w = r;
		if (w == i)
			return;
		swap(ids, vals, i, w);
		i = w;
	}
}

static void push(int32_t *ids, float *vals, int32_t *m, int32_t id, float v)
{
	int32_t j = (*m)++;
	ids[j] = id;
	vals[j] = v;
	while (j > 0 && worse(vals[j], ids[j], vals[(j - 1) / 2], ids[(j - 1) / 2])) {
		swap(ids, vals, j, (j - 1) / 2);
		j = (j - 1) / 2;
	}
}

/* The root (the worst kept) gives way to (id, v). */
static void replace_root(int32_t *ids, float *vals, int32_t m, int32_t id, float v)
{
	ids[0] = id;
	vals[0] = v;
	sift_down(ids, vals, m, 0);
}

/* The largest of x[0..n) (NaNs skipped; -inf when none). */
static float block_max(const float *x, int32_t n)
{
#ifdef __SSE2__
	if (n == TOPK_BLOCK) {
		/* maxps(x, acc) keeps acc where x is NaN */
		__m128 a0 = _mm_set1_ps(-INFINITY), a1 = a0, a2 = a0, a3 = a0;
		for (int32_t i = 0; i < TOPK_BLOCK; i += 16) {
			a0 = _mm_max_ps(_mm_loadu_ps(x + i), a0);
			a1 = _mm_max_ps(_mm_loadu_ps(x + i + 4), a1);
			a2 = _mm_max_ps(_mm_loadu_ps(x + i + 8), a2);
			a3 = _mm_max_ps(_mm_loadu_ps(x + i + 12), a3);
		}
		float v[4];
		_mm_storeu_ps(v, _mm_max_ps(_mm_max_ps(a0, a1), _mm_max_ps(a2, a3)));
		const float ab = v[0] > v[1] ? v[0] : v[1], cd = v[2] > v[3] ? v[2] : v[3];
		return ab > cd ? ab : cd;
	}
#endif
	float mx = -INFINITY;
	for (int32_t i = 0; i < n; i++)
		mx = x[i] > mx ? x[i] : mx;
	return mx;
}

int32_t kb_topk_row(const float *x, int32_t n, int32_t k, int32_t base, int32_t *ids, float *vals)
{
	if (k < 1 || n < 0)
		return 0;
	int32_t m = 0;
	for (int32_t b0 = 0; b0 < n; b0 += TOPK_BLOCK) {
		const int32_t b1 = n - b0 < TOPK_BLOCK ? n : b0 + TOPK_BLOCK;
		if (m == k && !(block_max(x + b0, b1 - b0) > vals[0]))
			continue;
		int32_t i = b0;
#ifdef __SSE2__
		/* heap full: only values above the root can enter (NaN, -inf and equal ones
		 * never do), four compared at once; the root rises as they enter */
		for (; m == k && i + 4 <= b1; i += 4) {
			int bits = _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(x + i), _mm_set1_ps(vals[0])));
			while (bits) {
				const int j = __builtin_ctz((unsigned)bits);
				bits &= bits - 1;
				if (worse(vals[0], ids[0], x[i + j], base + i + j))
					replace_root(ids, vals, m, base + i + j, x[i + j]);
			}
		}
#endif
		for (; i < b1; i++) {
			const float v = x[i];
			if (isnan(v) || v == -INFINITY)
				continue;
			if (m < k) {
				push(ids, vals, &m, base + i, v);
			} else if (worse(vals[0], ids[0], v, base + i)) {
				replace_root(ids, vals, m, base + i, v);
			}
		}
	}
	return m;
}

typedef struct {
	const float *y;
	const int32_t *rows;   /* the needed rows, n of them */
	int64_t cols;
	int n, k, segs;        /* segs: pieces a row is split into (1 when rows >= workers) */
	int32_t *ids, *cnt;    /* segs 1: the caller's [row][k], [row]; else [n * segs][k], [n * segs] */
	float *vals;
} TopkTask;

static void topk_task(void *arg, int ith, int nth)
{
	const TopkTask *t = arg;
	int64_t lo, hi;
	kb_split((int64_t)t->n * t->segs, 1, ith, nth, &lo, &hi);
	for (int64_t u = lo; u < hi; u++) {
		const int row = t->rows[u / t->segs], seg = (int)(u % t->segs);
		const int64_t slot = t->segs == 1 ? row : u;
		int64_t c0, c1;
		kb_split(t->cols, TOPK_BLOCK, seg, t->segs, &c0, &c1);
		t->cnt[slot] = kb_topk_row(t->y + (int64_t)row * t->cols + c0, (int32_t)(c1 - c0), t->k, (int32_t)c0,
					   t->ids + slot * t->k, t->vals + slot * t->k);
	}
}

typedef struct {
	int32_t id;
	float v;
} Cand;

static int by_rank(const void *a, const void *b)
{
	const Cand *x = a, *y = b;
	return worse(x->v, x->id, y->v, y->id) ? 1 : worse(y->v, y->id, x->v, x->id) ? -1 : 0;
}

/* Pieces a row is split into: 1 when there are as many rows as workers, else up to the
 * workers per row (kb_topk_rows may use fewer, each piece at least 16 blocks). */
static int pieces(const KbThreadPool *tp, int n)
{
	const int nth = tp ? kb_threadpool_size(tp) : 1;
	return n >= nth ? 1 : nth / n;
}

/* The scratch: the row list [n], then, for pieces (at most a worker's worth: nr * segs <=
 * workers), their ids [units][k], counts [units], values [units][k] and a row's merge
 * candidates [units * k]. */
size_t kb_topk_scratch(const KbThreadPool *tp, int n, int k)
{
	if (n < 1 || k < 1)
		return 0;
	const size_t units = (size_t)(tp ? kb_threadpool_size(tp) : 1);
	return (size_t)n * 4 + units * (size_t)k * 8 + units * 4 + units * (size_t)k * sizeof(Cand);
}

int kb_topk_rows(KbThreadPool *tp, const float *y, int n, int64_t cols, int k, const uint8_t *need, int32_t *ids,
		 float *vals, int32_t *counts, void *scratch)
{
	if (!y || !ids || !vals || !counts || !scratch || n < 1 || cols < 1 || cols > INT32_MAX - TOPK_BLOCK ||
	    k < 1)
		return -EINVAL;
	int32_t *rows = scratch;
	int nr = 0;
	for (int t = 0; t < n; t++) {
		if (!need || need[t])
			rows[nr++] = t;
		else
			counts[t] = 0;
	}
	if (nr == 0)
		return 0;
	int segs = pieces(tp, nr);
	while (segs > 1 && cols / segs < 16 * TOPK_BLOCK)
		segs--;
	TopkTask t = { .y = y, .rows = rows, .cols = cols, .n = nr, .k = k, .segs = segs, .ids = ids, .vals = vals,
		       .cnt = counts };
	if (segs == 1) {
		kb_threadpool_run(tp, topk_task, &t);
		return 0;
	}
	const size_t units = (size_t)nr * (size_t)segs;
	int32_t *sid = rows + n, *scnt = sid + units * (size_t)k;
	float *sval = (float *)(scnt + units);
	Cand *c = (Cand *)(sval + units * (size_t)k);
	t.ids = sid;
	t.vals = sval;
	t.cnt = scnt;
	kb_threadpool_run(tp, topk_task, &t);
	/* each row: the best k of its pieces' candidates */
	for (int r = 0; r < nr; r++) {
		int32_t m = 0;
		for (int s = 0; s < segs; s++) {
			const int64_t u = (int64_t)r * segs + s;
			for (int32_t i = 0; i < scnt[u]; i++)
				c[m++] = (Cand){ sid[u * k + i], sval[u * k + i] };
		}
		qsort(c, (size_t)m, sizeof(Cand), by_rank);
		const int64_t row = rows[r];
		counts[row] = m < k ? m : k;
		for (int32_t i = 0; i < counts[row]; i++) {
			ids[row * k + i] = c[i].id;
			vals[row * k + i] = c[i].v;
		}
	}
	return 0;
}
