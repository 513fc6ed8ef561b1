/* bench/bench-sm90.cuh: what the standalone sm_90 benchmarks (bench-persist.cu,
 * bench-pdl.cu) share: a CUDA call that must succeed (these are programs, not library
 * code: a failure ends them with the call named), the global timer, the give-up test
 * of their spin-waits (a second without progress, or another thread gave up first), and
 * the wait for a counter; on the host, the results file and the run's date. */
#ifndef QD_BENCH_SM90_CUH
#define QD_BENCH_SM90_CUH

#include <cuda_runtime.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHECK(call) \
	do { \
		cudaError_t e_ = (call); \
		if (e_ != cudaSuccess) { \
			fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
			exit(1); \
		} \
	} while (0)

__device__ __forceinline__ uint64_t gtime(void)
{
	uint64_t t;
	asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
	return t;
}

/* A spin that started at T0 should stop: a second has passed or *ERR is set. */
__device__ __forceinline__ bool spin_expired(uint64_t t0, const unsigned *err)
{
	return gtime() - t0 > 1000000000ull || *(const volatile unsigned *)err;
}

/* A counter as the pollers read it: relaxed, at GPU scope. */
__device__ __forceinline__ unsigned ld_relaxed(const unsigned *p)
{
	unsigned v;
	asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
	return v;
}

/* One thread: until *CNT reaches TARGET, then an acquire fence; after a second without it,
 * or once another thread gave up, sets *ERR instead. */
__device__ __forceinline__ void spin_count(const unsigned *cnt, unsigned target, unsigned *err)
{
	const uint64_t t0 = gtime();
	while (ld_relaxed(cnt) < target) {
		if (spin_expired(t0, err)) {
			atomicExch(err, 1u);
			break;
		}
	}
	asm volatile("fence.acq_rel.gpu;" ::: "memory");
}

/* The results file OUT opened for appending (NULL: none) into *JF, and the run's UTC time
 * into DATE; -1 (after perror) when OUT cannot be opened. */
static inline int bench_out_open(const char *out, FILE **jf, char date[32])
{
	*jf = out ? fopen(out, "a") : NULL;
	if (out && !*jf) {
		perror(out);
		return -1;
	}
	const time_t t = time(NULL);
	strftime(date, 32, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
	return 0;
}

#endif
