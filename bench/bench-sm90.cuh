/* bench/bench-sm90.cuh: what the standalone sm_90 benchmarks (bench-persist.cu,
 * bench-pdl.cu) share: a CUDA call that must succeed (these are programs, not library
 * code: a failure ends them with the call named), the global timer, and the give-up test
 * of their spin-waits (a second without progress, or another thread gave up first). */
#ifndef QD_BENCH_SM90_CUH
#define QD_BENCH_SM90_CUH

#include <cuda_runtime.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

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

#endif
