/* kernels/cpu/topk.h: the k largest values of float rows (sampling with top-k): one row on
 * the calling thread (the sampler), or many rows and long rows spread over the thread pool
 * (the CPU backend's KbOps.topk).  Candidates leave out NaN and -inf; of equal values the
 * lower indices win; the order of the output is unspecified. */
#ifndef QD_KERNELS_CPU_TOPK_H
#define QD_KERNELS_CPU_TOPK_H

#include <stddef.h>
#include <stdint.h>

#include "threadpool.h"

/* The k (>= 1) best of x[0..n) into ids/vals [k], as indices base + i; returns how many
 * (fewer than k only when x has fewer candidates). */
int32_t kb_topk_row(const float *x, int32_t n, int32_t k, int32_t base, int32_t *ids, float *vals);

/* For each of n rows of y (cols values each, back to back) that NEED marks ([n]; NULL:
 * all): its k best into ids[t * k ..] and vals, counts[t] of them (0 for rows not
 * needed).  The needed rows are shared among the pool's workers, and split among them when
 * there are fewer than workers; SCRATCH (kb_topk_scratch(tp, n, k) bytes, 4-byte aligned)
 * holds the row list and the pieces' candidates.  Returns 0 or -EINVAL. */
size_t kb_topk_scratch(const KbThreadPool *tp, int n, int k);
int kb_topk_rows(KbThreadPool *tp, const float *y, int n, int64_t cols, int k, const uint8_t *need, int32_t *ids,
		 float *vals, int32_t *counts, void *scratch);

#endif
