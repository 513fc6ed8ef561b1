/* kernels/cpu/matmul.h: multithreaded products of a weight matrix (any computable type,
 * rows of `cols` elements, in place in the mapped file) with a batch of f32 activations.
 *
 *   y[t][r] = sum_c W[r][c] * x[t][c]     for t < n_tok, r < rows
 *
 * x is [n_tok][cols] f32, y is [n_tok][rows] f32 (row stride `rows`).  The activations are
 * quantized once to the weight's dot type into `scratch` (kb_matmul_scratch_size bytes),
 * then the rows are split across the pool; for n_tok > 1 each weight row is read once per
 * tile of tokens so the batch costs little more memory traffic than one token. */
#ifndef QD_KERNELS_CPU_MATMUL_H
#define QD_KERNELS_CPU_MATMUL_H

#include <stddef.h>
#include <stdint.h>

#include "threadpool.h"

/* Bytes of scratch kb_matmul needs, or 0 when wtype is not computable. */
size_t kb_matmul_scratch_size(int wtype, int64_t cols, int64_t n_tok);

/* Returns 0 or -EINVAL (type not computable, cols not a block multiple). */
int kb_matmul(KbThreadPool *tp, int wtype, const void *w, int64_t rows, int64_t cols,
	      const float *x, int64_t n_tok, float *y, void *scratch);

/* kb_matmul, and ret_idx[t] = the first r of the largest y[t][r] (NaNs skipped; 0 when
 * every value is NaN), i.e. a greedy token for each row of logits.  Each worker scans the
 * rows it has just computed while they are still in its cache, so the caller need not
 * read the whole output again. */
int kb_matmul_argmax(KbThreadPool *tp, int wtype, const void *w, int64_t rows, int64_t cols,
		     const float *x, int64_t n_tok, float *y, void *scratch, int32_t *ret_idx);

#endif
