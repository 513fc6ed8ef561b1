/* kernels/cpu/threadpool.c: the parallel-for pool behind the CPU kernels.
 *
 * A run publishes (fn, arg) and bumps a generation counter; workers notice the new
 * generation, run fn once each, and count themselves off on `pending`.  Both sides spin
 * for a while before sleeping on a condition variable, because a decode step issues a
 * couple of hundred short runs back to back and a futex wake costs more than the work of
 * a small matrix.  Sleeping uses the Dekker pattern on sequentially consistent atomics:
 * the sleeper announces itself and re-checks the condition under the mutex, the waker
 * publishes first and then checks for sleepers, so one of the two always sees the other.
 *
 * Threads: the owner thread calls kb_threadpool_run/_free; the workers only read the
 * published task and write their own part of `pending`. */
#include "threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* How long an idle worker (or the waiting owner) spins before sleeping.  Long enough to
 * bridge the gap between consecutive matrix products of one token, short enough not to
 * burn a core for long when the model is idle. */
#define SPIN_NS 200000
/* Past this much spinning, yield the CPU at each clock check: when there are more threads
 * than free cores, the thread we wait for may need ours. */
#define YIELD_AFTER_NS 20000

typedef struct {
	KbThreadPool *tp;
	int ith;
	pthread_t thread;
} Worker;

struct KbThreadPool {
	int n;           /* workers including the owner */
	Worker *workers; /* [n]; [0] is the owner and has no thread */
	int started;     /* threads actually created */

	/* the task of the current generation, written by the owner before bumping gen */
	KbTaskFn fn;
	void *arg;

	_Alignas(64) atomic_uint gen;
	atomic_bool stop;
	atomic_int n_sleeping; /* workers waiting (or about to wait) on work_cv */
	_Alignas(64) atomic_int pending; /* workers (not the owner) yet to finish this run */
	atomic_bool owner_sleeping;

	pthread_mutex_t mu;
	pthread_cond_t work_cv; /* gen changed or stop */
	pthread_cond_t done_cv; /* pending reached 0 */
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static inline int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spins until cond(tp, v) holds or SPIN_NS passes; returns whether it holds. */
static bool spin_until(KbThreadPool *tp, bool (*cond)(KbThreadPool *, unsigned), unsigned v)
{
	int64_t deadline = 0;
	for (unsigned i = 0;; i++) {
		if (cond(tp, v))
			return true;
		cpu_relax();
		if ((i & 255) == 255) { /* read the clock rarely: it costs more than a pause */
			int64_t t = now_ns();
			if (!deadline)
				deadline = t + SPIN_NS;
			else if (t > deadline)
				return false;
			else if (t > deadline - SPIN_NS + YIELD_AFTER_NS)
				sched_yield();
		}
	}
}

static bool gen_changed(KbThreadPool *tp, unsigned seen)
{
	return atomic_load_explicit(&tp->gen, memory_order_acquire) != seen ||
	       atomic_load_explicit(&tp->stop, memory_order_relaxed);
}

static bool all_done(KbThreadPool *tp, unsigned unused)
{
	(void)unused;
	return atomic_load_explicit(&tp->pending, memory_order_acquire) == 0;
}

static void *worker_main(void *p)
{
	Worker *w = p;
	KbThreadPool *tp = w->tp;
	/* not the current gen: the owner may have published a run before this thread got
	 * going, and that run is still ours to do */
	unsigned seen = 0;
	for (;;) {
		if (!spin_until(tp, gen_changed, seen)) {
			pthread_mutex_lock(&tp->mu);
			atomic_fetch_add(&tp->n_sleeping, 1);
			while (atomic_load(&tp->gen) == seen && !atomic_load(&tp->stop))
				pthread_cond_wait(&tp->work_cv, &tp->mu);
			atomic_fetch_sub(&tp->n_sleeping, 1);
			pthread_mutex_unlock(&tp->mu);
		}
		if (atomic_load(&tp->stop))
			return NULL;
		/* the owner waits for every worker before the next run: no generation is skipped */
		seen = atomic_load(&tp->gen);
		tp->fn(tp->arg, w->ith, tp->n);
		if (atomic_fetch_sub(&tp->pending, 1) == 1 && atomic_load(&tp->owner_sleeping)) {
			pthread_mutex_lock(&tp->mu);
			pthread_cond_signal(&tp->done_cv);
			pthread_mutex_unlock(&tp->mu);
		}
	}
}

void kb_threadpool_free(KbThreadPool *tp)
{
	if (!tp)
		return;
	pthread_mutex_lock(&tp->mu);
	atomic_store(&tp->stop, true);
	pthread_cond_broadcast(&tp->work_cv);
	pthread_mutex_unlock(&tp->mu);
	for (int i = 1; i <= tp->started; i++)
		pthread_join(tp->workers[i].thread, NULL);
	pthread_cond_destroy(&tp->done_cv);
	pthread_cond_destroy(&tp->work_cv);
	pthread_mutex_destroy(&tp->mu);
	free(tp->workers);
	free(tp);
}

int kb_threadpool_new(int n_threads, KbThreadPool **ret)
{
	if (n_threads <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		n_threads = n > 0 ? (int)n : 1;
	}
	if (n_threads > 1024)
		return -EINVAL;
	KbThreadPool *tp = calloc(1, sizeof *tp);
	if (!tp)
		return -ENOMEM;
	tp->n = n_threads;
	tp->workers = calloc((size_t)n_threads, sizeof *tp->workers);
	if (!tp->workers) {
		free(tp);
		return -ENOMEM;
	}
	pthread_mutex_init(&tp->mu, NULL);
	pthread_cond_init(&tp->work_cv, NULL);
	pthread_cond_init(&tp->done_cv, NULL);
	for (int i = 0; i < n_threads; i++) {
		tp->workers[i].tp = tp;
		tp->workers[i].ith = i;
	}
	for (int i = 1; i < n_threads; i++) {
		int r = pthread_create(&tp->workers[i].thread, NULL, worker_main, &tp->workers[i]);
		if (r) {
			kb_threadpool_free(tp);
			return -r;
		}
		tp->started = i;
	}
	*ret = tp;
	return 0;
}

int kb_threadpool_size(const KbThreadPool *tp)
{
	return tp ? tp->n : 1;
}

void kb_threadpool_run(KbThreadPool *tp, KbTaskFn fn, void *arg)
{
	if (!tp || tp->n == 1) {
		fn(arg, 0, 1);
		return;
	}
	tp->fn = fn;
	tp->arg = arg;
	atomic_store_explicit(&tp->pending, tp->n - 1, memory_order_relaxed);
	atomic_fetch_add(&tp->gen, 1); /* seq_cst: publishes fn/arg/pending */
	if (atomic_load(&tp->n_sleeping) > 0) {
		pthread_mutex_lock(&tp->mu);
		pthread_cond_broadcast(&tp->work_cv);
		pthread_mutex_unlock(&tp->mu);
	}
	fn(arg, 0, tp->n);
	if (spin_until(tp, all_done, 0))
		return;
	pthread_mutex_lock(&tp->mu);
	atomic_store(&tp->owner_sleeping, true);
	while (atomic_load(&tp->pending) != 0)
		pthread_cond_wait(&tp->done_cv, &tp->mu);
	atomic_store(&tp->owner_sleeping, false);
	pthread_mutex_unlock(&tp->mu);
}
