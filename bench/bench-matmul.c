/* bench/bench-matmul.c: throughput of kb_matmul, to compare the decode matvec with the
 * machine's memory bandwidth.
 *
 *   bench-matmul [seconds-per-case [type]]      (default 0.3, all types)
 *
 * Prints, per weight type and shape: GB/s of weight bytes streamed at n_tok 1 with 1 and
 * 2 threads, "cold" (cycling through copies of the matrix totalling >= 256 MiB, so the
 * weights come from DRAM as in a real decode step) and "hot" (the same matrix again, from
 * cache where it fits); and GFLOP/s at n_tok 16.  First it measures single-thread and
 * two-thread read bandwidth with a plain summing loop over 1 GiB (SSE2 loads). */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/threadpool.h"
#include "kernels/types.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x853c49e6748fea9bull;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng_state = x;
	return x * 0x2545f4914f6cdd1dull;
}

static float rnd_f(void)
{
	return (float)((rnd() >> 40) * (1.0 / (1 << 24)) * 2.0 - 1.0);
}

/* ---------------------------------------------------------------- read bandwidth */

typedef struct {
	const uint64_t *p;
	size_t n; /* words */
	uint64_t sums[64];
	atomic_size_t next; /* next 1 MiB piece, handed out like kb_matmul's row chunks */
} SumTask;

static uint64_t sum_words(const uint64_t *p, size_t n)
{
	/* 16-byte loads into four independent chains (SSE2, in every x86-64), so that the
	 * loop is limited by memory and not by the adds of one core */
#if defined(__SSE2__)
	__m128i s0 = _mm_setzero_si128(), s1 = s0, s2 = s0, s3 = s0;
	const __m128i *v = (const __m128i *)p;
	for (size_t i = 0; i + 8 <= n / 2; i += 8) {
		s0 = _mm_add_epi64(s0, _mm_add_epi64(_mm_load_si128(v + i), _mm_load_si128(v + i + 1)));
		s1 = _mm_add_epi64(s1, _mm_add_epi64(_mm_load_si128(v + i + 2), _mm_load_si128(v + i + 3)));
		s2 = _mm_add_epi64(s2, _mm_add_epi64(_mm_load_si128(v + i + 4), _mm_load_si128(v + i + 5)));
		s3 = _mm_add_epi64(s3, _mm_add_epi64(_mm_load_si128(v + i + 6), _mm_load_si128(v + i + 7)));
	}
	uint64_t out[2];
	_mm_storeu_si128((__m128i *)out, _mm_add_epi64(_mm_add_epi64(s0, s1), _mm_add_epi64(s2, s3)));
	return out[0] + out[1];
#else
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	for (size_t i = 0; i + 4 <= n; i += 4) {
		s0 += p[i];
		s1 += p[i + 1];
		s2 += p[i + 2];
		s3 += p[i + 3];
	}
	return s0 + s1 + s2 + s3;
#endif
}

#define PIECE_WORDS ((size_t)1 << 17)

static void sum_task(void *arg, int ith, int nth)
{
	SumTask *t = arg;
	uint64_t s = 0;
	(void)nth;
	for (;;) {
		size_t lo = atomic_fetch_add(&t->next, 1) * PIECE_WORDS;
		if (lo >= t->n)
			break;
		s += sum_words(t->p + lo, lo + PIECE_WORDS < t->n ? PIECE_WORDS : t->n - lo);
	}
	t->sums[ith] = s;
}

static double read_bandwidth(KbThreadPool *tp, const uint64_t *p, size_t bytes)
{
	SumTask t = { .p = p, .n = bytes / 8 };
	double best = 0;
	for (int rep = 0; rep < 5; rep++) {
		atomic_store(&t.next, 0);
		double t0 = now_s();
		kb_threadpool_run(tp, sum_task, &t);
		double dt = now_s() - t0;
		if (bytes / dt > best)
			best = bytes / dt;
	}
	uint64_t s = 0;
	for (int i = 0; i < 64; i++)
		s += t.sums[i];
	if (s == 42) /* keep the sums alive */
		printf(" ");
	return best / 1e9;
}

/* --------------------------------------------------------------------- matmul */

/* Random weight rows of type t with finite, modest scales. */
static void fill_weights(int t, uint8_t *w, int64_t rows, int64_t cols)
{
	const QdTypeTraits *tr = qd_type_traits(t);
	uint64_t row;
	qd_row_size(t, (uint64_t)cols, &row);
	size_t total = (size_t)row * (size_t)rows;
	if (!tr->quantized) {
		float x[256];
		for (size_t off = 0; off < total;) {
			for (int i = 0; i < 256; i++)
				x[i] = rnd_f();
			size_t chunk = (size_t)256 * tr->size;
			if (chunk > total - off)
				chunk = total - off;
			uint8_t tmp[1024];
			kb_cpu_quantize_row(t, x, tmp, 256);
			memcpy(w + off, tmp, chunk);
			off += chunk;
		}
		return;
	}
	for (size_t i = 0; i < total; i += 8) {
		uint64_t r = rnd();
		memcpy(w + i, &r, total - i < 8 ? total - i : 8);
	}
	uint16_t d = qd_f32_to_f16(0.01f);
	size_t nb = total / tr->size;
	for (size_t b = 0; b < nb; b++) {
		uint8_t *p = w + b * tr->size;
		if (t == QD_TYPE_Q6_K)
			memcpy(p + tr->size - 2, &d, 2);
		else if (t == QD_TYPE_Q4_1 || t == QD_TYPE_Q4_K) {
			memcpy(p, &d, 2);
			memcpy(p + 2, &d, 2);
		} else
			memcpy(p, &d, 2);
	}
}

typedef struct {
	double gbs_cold, gbs_hot, us_cold, gflops;
} Result;

static Result bench_case(KbThreadPool *tp, int t, int64_t rows, int64_t cols, double secs)
{
	Result res = { 0, 0, 0, 0 };
	uint64_t row;
	qd_row_size(t, (uint64_t)cols, &row);
	size_t wbytes = (size_t)row * (size_t)rows;
	int copies = (int)((256u << 20) / wbytes) + 1;
	if (copies > 64)
		copies = 64;
	uint8_t *w = malloc(wbytes * (size_t)copies);
	const int ntok_batch = 16;
	float *x = malloc(sizeof(float) * (size_t)cols * ntok_batch);
	float *y = malloc(sizeof(float) * (size_t)rows * ntok_batch);
	size_t ss = kb_matmul_scratch_size(t, cols, ntok_batch);
	void *scratch = malloc(ss);
	if (!w || !x || !y || !scratch) {
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	fill_weights(t, w, rows, cols);
	for (int c = 1; c < copies; c++)
		memcpy(w + wbytes * (size_t)c, w, wbytes);
	for (int64_t i = 0; i < cols * ntok_batch; i++)
		x[i] = rnd_f();

	/* cold: a different copy every call */
	long calls = 0;
	double t0 = now_s(), t1;
	do {
		kb_matmul(tp, t, w + wbytes * (size_t)(calls % copies), rows, cols, x, 1, y, scratch);
		calls++;
		t1 = now_s();
	} while (t1 - t0 < secs || calls < 3);
	res.us_cold = (t1 - t0) / calls * 1e6;
	res.gbs_cold = (double)wbytes * calls / (t1 - t0) / 1e9;

	/* hot: the same copy */
	calls = 0;
	t0 = now_s();
	do {
		kb_matmul(tp, t, w, rows, cols, x, 1, y, scratch);
		calls++;
		t1 = now_s();
	} while (t1 - t0 < secs || calls < 3);
	res.gbs_hot = (double)wbytes * calls / (t1 - t0) / 1e9;

	/* batch */
	calls = 0;
	t0 = now_s();
	do {
		kb_matmul(tp, t, w + wbytes * (size_t)(calls % copies), rows, cols, x, ntok_batch, y, scratch);
		calls++;
		t1 = now_s();
	} while (t1 - t0 < secs || calls < 2);
	res.gflops = 2.0 * rows * cols * ntok_batch * calls / (t1 - t0) / 1e9;

	free(w);
	free(x);
	free(y);
	free(scratch);
	return res;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 0.3;
	int only = argc > 2 ? qd_type_from_name(argv[2]) : -1;
	if (argc > 2 && only < 0) {
		fprintf(stderr, "unknown type %s\n", argv[2]);
		return 1;
	}
	printf("kernels: %s\n", kb_cpu_init());
	KbThreadPool *tp[2] = { NULL, NULL };
	if (kb_threadpool_new(1, &tp[0]) < 0 || kb_threadpool_new(2, &tp[1]) < 0) {
		fprintf(stderr, "cannot start threads\n");
		return 1;
	}

	size_t gib = (size_t)1 << 30;
	uint64_t *mem = aligned_alloc(64, gib);
	if (!mem) {
		fprintf(stderr, "out of memory\n");
		return 1;
	}
	for (size_t i = 0; i < gib / 8; i++)
		mem[i] = i;
	printf("read bandwidth (sum over 1 GiB): 1 thread %.1f GB/s, 2 threads %.1f GB/s\n\n",
	       read_bandwidth(tp[0], mem, gib), read_bandwidth(tp[1], mem, gib));
	free(mem);

	static const int types[] = { QD_TYPE_F32, QD_TYPE_F16, QD_TYPE_BF16, QD_TYPE_Q8_0,
				     QD_TYPE_Q4_0, QD_TYPE_Q4_1, QD_TYPE_Q4_K, QD_TYPE_Q6_K };
	static const int64_t shapes[][2] = { { 4096, 4096 }, { 576, 1536 } };
	printf("%-5s %-10s %3s | %9s %9s %9s | %12s\n", "type", "rows x cols", "thr", "cold GB/s", "us/call",
	       "hot GB/s", "n16 GFLOP/s");
	for (size_t s = 0; s < 2; s++) {
		for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
			for (int th = 0; th < 2; th++) {
				int t = types[ti];
				if (only >= 0 && t != only)
					continue;
				Result r = bench_case(tp[th], t, shapes[s][0], shapes[s][1], secs);
				char shape[32];
				snprintf(shape, sizeof shape, "%lldx%lld", (long long)shapes[s][0], (long long)shapes[s][1]);
				printf("%-5s %-10s %3d | %9.1f %9.1f %9.1f | %12.1f\n", qd_type_traits(t)->name, shape,
				       th + 1, r.gbs_cold, r.us_cold, r.gbs_hot, r.gflops);
				fflush(stdout);
			}
		}
	}
	kb_threadpool_free(tp[0]);
	kb_threadpool_free(tp[1]);
	return 0;
}
