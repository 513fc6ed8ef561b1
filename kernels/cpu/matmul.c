/* kernels/cpu/matmul.c: weight matrix x activation batch on the CPU pool.
 *
 * Two phases.  First the activations are quantized to the weight type's dot type (the
 * owner does it alone when the batch is small: waking the pool would cost more).  Then
 * the weight rows are handed out in chunks from a shared counter, so a worker that was
 * descheduled (the machine is shared) does not hold everyone up.
 *
 * One token (decode) is bound by memory bandwidth: each worker streams its rows one after
 * the other.  A batch is bound by arithmetic: chunks of 16 rows stay in cache while every
 * token of a tile (sized to stay in L2 next to the chunk) passes over them, four rows at a
 * time where the type has a four-row kernel; the weights, the bulk of the traffic, come
 * from memory once per call unless the batch is very large.
 *
 * Q4_0 and Q4_1 take a faster path on AVX2 machines, for one token and for batches: each
 * quantized activation row is also repacked once into the layout their kernels want
 * (quant_internal.h), which saves a third of the per-block work on every weight row. */
#include "matmul.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../types.h"
#include "quant.h"
#include "quant_internal.h"

#define CHUNK_MIN_ROWS 16
/* L2 share for one tile of quantized activations (the CPUs we target have >= 1 MiB) */
#define TILE_BYTES (256 * 1024)
/* Below this many activation values the owner quantizes them alone. */
#define QUANT_PARALLEL_MIN 65536

typedef struct {
	KbVecDotFn dot;
	KbVecDot4Fn dot4; /* four rows at once where the type has it, else NULL */
	const uint8_t *w;
	size_t w_row; /* bytes per weight row */
	int64_t rows, cols;
	const uint8_t *xq;
	size_t x_row; /* bytes per activation row as the products read it: dot type or packed */
	int64_t n_tok, tile;
	float *y;
	int64_t chunk;  /* rows per chunk (batches), minimum rows per chunk (one token) */
	int nth;
	_Alignas(64) atomic_llong next; /* next row to hand out */

	/* quantization phase */
	KbQuantFn quant;
	const float *x;
	uint8_t *xq_out;          /* [n_tok] rows of the dot type, xq_row bytes each */
	size_t xq_row;
	const KbXPackKernels *xk; /* packed activations, when the type has them */
	uint8_t *xp_out;          /* [n_tok] packed rows, x_row bytes each */

	/* kb_matmul_argmax: per token, the best (value, row) so far as one ordered key */
	_Atomic uint64_t *best;
} MatmulTask;

/* (v, r) as a key whose unsigned order is: larger v first, then smaller r.  The float's
 * bits are made monotonic (negative values flipped), the row complemented. */
static uint64_t argmax_key(float v, int64_t r)
{
	uint32_t b;
	if (v == 0.0f)
		v = 0.0f; /* -0 and +0 are equal logits: the earlier row must win, as in a scan */
	memcpy(&b, &v, sizeof b);
	b = b & 0x80000000u ? ~b : b | 0x80000000u;
	return (uint64_t)b << 32 | (uint32_t)(0xffffffffu - (uint32_t)r);
}

/* Rows [r0, r1) of every token, just computed by this worker, into m->best. */
static void argmax_rows(const MatmulTask *m, int64_t r0, int64_t r1)
{
	for (int64_t t = 0; t < m->n_tok; t++) {
		const float *yt = m->y + t * m->rows;
		float bv = -INFINITY;
		int64_t br = -1;
		for (int64_t r = r0; r < r1; r++)
			/* NaN never qualifies; the first of equal values stays (-inf counts) */
			if (yt[r] > bv || (br < 0 && yt[r] == bv)) {
				bv = yt[r];
				br = r;
			}
		if (br < 0)
			continue;
		uint64_t k = argmax_key(bv, br), cur = atomic_load_explicit(&m->best[t], memory_order_relaxed);
		while (k > cur && !atomic_compare_exchange_weak_explicit(&m->best[t], &cur, k, memory_order_relaxed,
									 memory_order_relaxed))
			;
	}
}

static void quant_task(void *arg, int ith, int nth)
{
	MatmulTask *m = arg;
	int64_t lo, hi;
	kb_split(m->n_tok, 1, ith, nth, &lo, &hi);
	for (int64_t t = lo; t < hi; t++) {
		uint8_t *q = m->xq_out + (size_t)t * m->xq_row;
		m->quant(m->x + t * m->cols, q, m->cols);
		if (m->xk)
			m->xk->pack(q, m->cols, m->xp_out + (size_t)t * m->x_row);
	}
}

/* Scratch: the dot-type rows, then (for types that may have a packed path, whatever this
 * CPU has, so a size asked for earlier always fits) the packed rows at a 64-byte offset. */
static bool may_pack(int wtype)
{
	return wtype == QD_TYPE_Q4_0 || wtype == QD_TYPE_Q4_1;
}

static size_t packed_offset(size_t xq_bytes)
{
	return (xq_bytes + 63) / 64 * 64;
}

/* Rows [r0, r1) against tokens [t0, t1), one row at a time: a single sequential stream. */
static void rows_single(const MatmulTask *m, int64_t r0, int64_t r1, int64_t t0, int64_t t1)
{
	for (int64_t r = r0; r < r1; r++) {
		const uint8_t *wr = m->w + (size_t)r * m->w_row;
		for (int64_t t = t0; t < t1; t++)
			m->dot(m->cols, wr, m->xq + (size_t)t * m->x_row, m->y + t * m->rows + r);
	}
}

/* The same four rows at a time where the type has a four-row kernel. */
static void rows_quad(const MatmulTask *m, int64_t r0, int64_t r1, int64_t t0, int64_t t1)
{
	int64_t r = r0;
	for (; m->dot4 && r + 4 <= r1; r += 4) {
		const uint8_t *wr = m->w + (size_t)r * m->w_row;
		for (int64_t t = t0; t < t1; t++) {
			float out[4], *yt = m->y + t * m->rows + r;
			m->dot4(m->cols, wr, m->w_row, m->xq + (size_t)t * m->x_row, out);
			yt[0] = out[0];
			yt[1] = out[1];
			yt[2] = out[2];
			yt[3] = out[3];
		}
	}
	rows_single(m, r, r1, t0, t1);
}

/* Takes the next chunk of rows into [*ret_r0, *ret_r1); false when none are left.  One
 * token: guided sizes, a share of what remains, so chunks are long at first (long
 * sequential streams, few atomics) and short at the end (workers finish together). */
static bool take_rows(MatmulTask *m, int64_t *ret_r0, int64_t *ret_r1)
{
	int64_t r0 = atomic_load_explicit(&m->next, memory_order_relaxed), n;
	do {
		if (r0 >= m->rows)
			return false;
		n = m->chunk;
		if (m->n_tok == 1) {
			int64_t share = (m->rows - r0) / (2 * m->nth);
			share = share / CHUNK_MIN_ROWS * CHUNK_MIN_ROWS;
			n = share > n ? share : n;
		}
	} while (!atomic_compare_exchange_weak_explicit(&m->next, &r0, r0 + n, memory_order_relaxed,
							memory_order_relaxed));
	*ret_r0 = r0;
	*ret_r1 = r0 + n < m->rows ? r0 + n : m->rows;
	return true;
}

static void dot_task(void *arg, int ith, int nth)
{
	MatmulTask *m = arg;
	int64_t r0, r1;
	(void)ith;
	(void)nth;
	while (take_rows(m, &r0, &r1)) {
		if (m->n_tok == 1) {
			rows_single(m, r0, r1, 0, 1);
			if (m->best)
				argmax_rows(m, r0, r1);
			continue;
		}
		/* Several rows read side by side are several streams, which the hardware
		 * prefetcher follows poorly (a third of the bandwidth on our test machine), so
		 * the first token takes the rows one by one, pulling the chunk into cache in a
		 * single stream; the four-row kernel then reuses it from there. */
		rows_single(m, r0, r1, 0, 1);
		rows_quad(m, r0, r1, 1, m->tile < m->n_tok ? m->tile : m->n_tok);
		for (int64_t t0 = m->tile; t0 < m->n_tok; t0 += m->tile)
			rows_quad(m, r0, r1, t0, t0 + m->tile < m->n_tok ? t0 + m->tile : m->n_tok);
		if (m->best)
			argmax_rows(m, r0, r1);
	}
}

size_t kb_matmul_scratch_size(int wtype, int64_t cols, int64_t n_tok)
{
	int dt = kb_cpu_vec_dot_type(wtype);
	uint64_t row, total;
	if (dt < 0 || cols < 0 || n_tok < 0 || qd_row_size(dt, (uint64_t)cols, &row) < 0)
		return 0;
	/* F32 weights use x in place; the size is still reported so that 0 means only
	 * "not computable" */
	if (__builtin_mul_overflow(row, (uint64_t)n_tok, &total) || total > SIZE_MAX / 2)
		return 0;
	if (may_pack(wtype)) {
		uint64_t packed;
		if (__builtin_mul_overflow((uint64_t)kb_xpack_row_size(cols), (uint64_t)n_tok, &packed) ||
		    packed > SIZE_MAX / 2)
			return 0;
		total = packed_offset((size_t)total) + packed + 64;
	}
	return total ? (size_t)total : 1;
}

static int matmul(KbThreadPool *tp, int wtype, const void *w, int64_t rows, int64_t cols, const float *x,
		  int64_t n_tok, float *y, void *scratch, _Atomic uint64_t *best)
{
	int dt = kb_cpu_vec_dot_type(wtype);
	uint64_t w_row, x_row;
	if (dt < 0 || rows < 0 || cols < 0 || n_tok < 0 || qd_row_size(wtype, (uint64_t)cols, &w_row) < 0 ||
	    qd_row_size(dt, (uint64_t)cols, &x_row) < 0)
		return -EINVAL;
	if (rows == 0 || n_tok == 0)
		return 0;
	kb_cpu_init();
	MatmulTask m = {
		.dot = kb_cpu_vec_dot_fn(wtype),
		.dot4 = kb_cpu_vec_dot4_fn(wtype),
		.w = w,
		.w_row = w_row,
		.rows = rows,
		.cols = cols,
		.x_row = x_row,
		.n_tok = n_tok,
		.y = y,
		.quant = kb_cpu_quantize_fn(dt),
		.x = x,
		.xq_out = scratch,
		.xq_row = x_row,
		.xk = may_pack(wtype) ? kb_cpu_xpack_kernels(wtype) : NULL,
		.best = best,
	};
	if (!m.dot || !m.quant)
		return -EINVAL;
	if (m.xk) {
		/* the packed rows replace the dot-type ones for the products */
		uintptr_t base = (uintptr_t)scratch + packed_offset(x_row * (size_t)n_tok);
		m.xp_out = (uint8_t *)((base + 63) / 64 * 64);
		m.x_row = kb_xpack_row_size(cols);
		m.dot = m.xk->dot;
		m.dot4 = NULL;
	}

	if (dt == QD_TYPE_F32) {
		m.xq = (const uint8_t *)x;
	} else {
		m.xq = m.xk ? m.xp_out : scratch;
		if (n_tok > 1 && cols >= QUANT_PARALLEL_MIN / n_tok)
			kb_threadpool_run(tp, quant_task, &m);
		else
			quant_task(&m, 0, 1);
	}

	/* a batch: chunks small enough to stay in L1/L2 while every token of a tile passes
	 * over them; one token: see take_rows() */
	m.chunk = CHUNK_MIN_ROWS;
	m.nth = kb_threadpool_size(tp);
	int64_t tile = TILE_BYTES / (int64_t)m.x_row;
	m.tile = tile < 1 ? 1 : tile > n_tok ? n_tok : tile;
	atomic_init(&m.next, 0);
	kb_threadpool_run(tp, dot_task, &m);
	return 0;
}

int kb_matmul(KbThreadPool *tp, int wtype, const void *w, int64_t rows, int64_t cols,
	      const float *x, int64_t n_tok, float *y, void *scratch)
{
	return matmul(tp, wtype, w, rows, cols, x, n_tok, y, scratch, NULL);
}

/* The per-token keys: on the stack for the usual output batches, else on the heap. */
int kb_matmul_argmax(KbThreadPool *tp, int wtype, const void *w, int64_t rows, int64_t cols,
		     const float *x, int64_t n_tok, float *y, void *scratch, int32_t *ret_idx)
{
	_Atomic uint64_t stack_keys[64], *keys = stack_keys;
	if (!ret_idx || n_tok < 0 || rows > INT32_MAX)
		return -EINVAL;
	if (n_tok > 64 && !(keys = malloc(sizeof(*keys) * (size_t)n_tok)))
		return -ENOMEM;
	for (int64_t t = 0; t < n_tok; t++)
		atomic_init(&keys[t], 0);
	int r = matmul(tp, wtype, w, rows, cols, x, n_tok, y, scratch, keys);
	for (int64_t t = 0; r == 0 && t < n_tok; t++) {
		uint64_t k = atomic_load_explicit(&keys[t], memory_order_relaxed);
		ret_idx[t] = k ? (int32_t)(0xffffffffu - (uint32_t)k) : 0;
	}
	if (keys != stack_keys)
		free(keys);
	return r;
}
