/* kernels/cpu/threadpool.h: a fixed pool of worker threads running one parallel-for at a
 * time.  The calling thread takes part as worker 0, so a pool of N threads starts N-1.
 * One owner thread submits work; the pool itself is not reentrant. */
#ifndef QD_KERNELS_CPU_THREADPOOL_H
#define QD_KERNELS_CPU_THREADPOOL_H

#include <stdint.h>

typedef struct KbThreadPool KbThreadPool;

/* fn(arg, ith, nth): worker ith of nth; splits the work itself. */
typedef void (*KbTaskFn)(void *arg, int ith, int nth);

/* n_threads <= 0: the number of online CPUs.  Returns 0 or -errno. */
int kb_threadpool_new(int n_threads, KbThreadPool **ret);
void kb_threadpool_free(KbThreadPool *tp); /* NULL-safe, joins workers */
int kb_threadpool_size(const KbThreadPool *tp);

/* Runs fn on every worker and returns when all have finished.  tp may be NULL (runs fn
 * once inline with nth = 1). */
void kb_threadpool_run(KbThreadPool *tp, KbTaskFn fn, void *arg);

/* Helper: the [*ret_lo, *ret_hi) slice of n items that worker ith of nth takes, in units
 * of `grain` items (the last slice takes the remainder). */
static inline void kb_split(int64_t n, int64_t grain, int ith, int nth, int64_t *ret_lo, int64_t *ret_hi)
{
	int64_t units = (n + grain - 1) / grain;
	int64_t per = units / nth, extra = units % nth;
	int64_t lo = ith * per + (ith < extra ? ith : extra);
	int64_t hi = lo + per + (ith < extra ? 1 : 0);
	lo *= grain;
	hi *= grain;
	*ret_lo = lo < n ? lo : n;
	*ret_hi = hi < n ? hi : n;
}

#endif
