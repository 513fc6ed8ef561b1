/* bench/bench-persist.cu: what one persistent kernel per decode step would reach on this GPU.
 *
 * Session 11 measured that the waits between the decode kernels (each product waits for
 * the whole kernel before it) cost a 7B batch-1 step ~14% (bench/NOTES-gpu.md).  This program
 * measures the mechanics of the alternative before anyone builds it into the engine: one
 * cooperative kernel, one block per multiprocessor, that runs a 7B step's 128 products
 * (per layer q/k/v 12288x4096, o 4096x4096, gate/up 22016x4096, down 4096x11008; int8
 * weights, one byte each, no scales) in order.  In each block a producer warp streams the
 * block's rows of every product, one after the other, through a ring of shared-memory
 * slots with bulk copies (cp.async.bulk + mbarrier; one thread of the warp issues them), never waiting for anything but a free
 * slot, so it runs ahead across product boundaries; seven consumer warps take the slots in
 * turn (slot s always to warp s % 7), multiply the rows with x (dp4a) and write y.  Modes:
 * "barrier": at the end of each product a block's consumers meet on a named barrier, one
 * of them bumps the product's counter and spins until every block has, and only then do
 * they start on the next product (a grid-wide dependency, as decode has between its
 * products; each counter on a 128-byte line of its own, polled relaxed by one thread a
 * block, one acquire fence after); "free": no such wait, the streaming alone; "sync": the
 * 128 barriers alone, no weights (what each costs by itself); "dyn-barrier" and "dyn-free":
 * the same with rows handed out as blocks ask for them (k_step_dyn); "chunk": each block
 * waits only for the 256-row chunks of the product before that its next unit reads
 * (k_step_chunk); "chunk-free": the same units with no waits.
 *
 *   bench-persist [-r REPS] [-s SLOTS: 7 or 14] [-o OUT.jsonl]
 *
 * Prints GB/s of weight bytes and % of 4.22 TB/s (the H200's measured copy bandwidth, the
 * engine's roofline).  The arithmetic is lighter than any quantized product's (no scales,
 * no dequantization), so this is a ceiling for the structure, not a product kernel. */
#include "bench-sm90.cuh"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REF_GBPS 4220.0
#define NT 256      /* warp 0 the producer, 1..7 consumers */
#define NCW 7       /* consumer warps */
#define SLOT 16384  /* bytes a ring slot */
#define MAX_SLOTS 14 /* 2 a consumer warp: 224 KiB */
#define LAYERS 32
#define NP (4 * LAYERS)
#define DONE_STRIDE 32 /* a product's counter on a 128-byte line of its own */
#define XBYTES 16384
#define RC_MAX 96      /* 256-row chunks of a product (up to 24,576 rows) */
#define CH_ROWS 64     /* k_step_chunk's unit: up to 64 of a block's rows x 256 columns */
#define MAX_BROWS 168  /* a block's rows of one product (22016 / 132 rounded up) */

typedef struct {
	const int8_t *w;
	float *y;
	int rows, cols;
} Prod;

typedef struct {
	Prod p[NP];
	const int8_t *x;
	unsigned *done; /* [NP * DONE_STRIDE]: blocks whose consumers finished each product */
	unsigned *err;
	unsigned *next; /* [NP * DONE_STRIDE]: k_step_dyn's next batch of each product */
	unsigned *rc;   /* [NP][RC_MAX] * DONE_STRIDE: k_step_chunk's blocks done with each 256 rows */
	const uint8_t *rexp; /* [NP][RC_MAX]: blocks that own rows of each 256 rows */
	int barrier, slots; /* the mode: 0 free, 1 barrier, 2 sync (barriers only, no weights), 3 dyn-barrier,
			     * 4 dyn-free, 5 chunk, 6 chunk-free */
} Args;

__device__ __forceinline__ uint32_t sm_addr(const void *p)
{
	return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void mbar_init(uint64_t *b, unsigned count)
{
	asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(sm_addr(b)), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_expect(uint64_t *b, uint32_t bytes)
{
	asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(sm_addr(b)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t *b)
{
	asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(sm_addr(b)) : "memory");
}

__device__ __forceinline__ void mbar_wait(uint64_t *b, uint32_t parity)
{
	asm volatile("{\n\t.reg .pred p;\n"
		     "WAIT_%=:\n\t"
		     "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n\t"
		     "@!p bra WAIT_%=;\n\t}" ::"r"(sm_addr(b)),
		     "r"(parity)
		     : "memory");
}

__device__ __forceinline__ void bulk_copy(void *dst, const void *src, uint32_t bytes, uint64_t *bar)
{
	asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
			     sm_addr(dst)),
		     "l"(src), "r"(bytes), "r"(sm_addr(bar))
		     : "memory");
}

/* Rows of product P a slot holds. */
__device__ __forceinline__ int slot_rows(const Prod &p)
{
	return SLOT / p.cols > 0 ? SLOT / p.cols : 1;
}

/* Block b's rows of product P: [r0, r1), in chunks of K rows (one slot each). */
__device__ __forceinline__ void block_rows(const Prod &p, int *r0, int *r1, int *k)
{
	*r0 = (int)((int64_t)p.rows * blockIdx.x / gridDim.x);
	*r1 = (int)((int64_t)p.rows * (blockIdx.x + 1) / gridDim.x);
	*k = slot_rows(p);
}

/* The ring's barriers, by one thread before the block's first __syncthreads. */
__device__ __forceinline__ void ring_init(uint64_t *full, uint64_t *empty, int S)
{
	for (int s = 0; s < S; s++) {
		mbar_init(&full[s], 1);
		mbar_init(&empty[s], 1);
	}
	asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

/* The producer's fill *N (then *N + 1): once its slot is free, BYTES from SRC by a bulk
 * copy, or with BYTES 0 no data (the slot's full barrier completes at once); T goes to
 * TAG[slot] first where there are tags. */
__device__ __forceinline__ void ring_put(int *n, int S, int8_t *ring, uint64_t *full, uint64_t *empty, int *tag,
					 int t, const int8_t *src, uint32_t bytes)
{
	const int s = *n % S;
	if (*n >= S)
		mbar_wait(&empty[s], (uint32_t)((*n / S - 1) & 1));
	if (tag)
		tag[s] = t;
	if (bytes) {
		mbar_expect(&full[s], bytes);
		bulk_copy(ring + (size_t)s * SLOT, src, bytes, &full[s]);
	} else {
		mbar_arrive(&full[s]);
	}
	(*n)++;
}

/* The tagged rings' two ends (k_step_dyn, k_step_chunk): the producer's last fills, a
 * sentinel (tag -1, no data) for each consumer warp; and a consumer's fill N, once it is
 * there: its tag, its slot in *RET_S. */
__device__ __forceinline__ void ring_close(int *n, int S, int8_t *ring, uint64_t *full, uint64_t *empty, int *tag)
{
	for (int i = 0; i < NCW; i++)
		ring_put(n, S, ring, full, empty, tag, -1, NULL, 0);
}

__device__ __forceinline__ int ring_take(int n, int S, uint64_t *full, const int *tag, int *ret_s)
{
	const int s = n % S;
	mbar_wait(&full[s], (uint32_t)((n / S) & 1));
	*ret_s = s;
	return tag[s];
}

/* A consumer warp's NR rows of C16 16-byte vectors in W4 times x: y[i] (dp4a). */
__device__ __forceinline__ void rows_dot(const int4 *w4, const int4 *x4, int nr, int c16, int lane, float *y)
{
	for (int i = 0; i < nr; i++) {
		int acc = 0;
		for (int j = lane; j < c16; j += 32) {
			const int4 wv = w4[i * c16 + j], xv = __ldg(x4 + j);
			acc = __dp4a(wv.x, xv.x, acc);
			acc = __dp4a(wv.y, xv.y, acc);
			acc = __dp4a(wv.z, xv.z, acc);
			acc = __dp4a(wv.w, xv.w, acc);
		}
		for (int o = 16; o; o >>= 1)
			acc += __shfl_xor_sync(0xffffffffu, acc, o);
		if (lane == 0)
			y[i] = (float)acc;
	}
}

/* One thread of a block: this block is done (after its writes), then until every block
 * is; after a second without them, or once another gave up, sets *ERR instead. */
__device__ __forceinline__ void grid_arrive_wait(unsigned *cnt, unsigned *err)
{
	__threadfence();
	atomicAdd(cnt, 1u);
	spin_count(cnt, gridDim.x, err);
}

__global__ void __launch_bounds__(NT, 1) k_step(const __grid_constant__ Args a)
{
	extern __shared__ __align__(128) int8_t ring[];
	__shared__ __align__(8) uint64_t full[MAX_SLOTS], empty[MAX_SLOTS];
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, S = a.slots;
	if (threadIdx.x == 0)
		ring_init(full, empty, S);
	__syncthreads();
	if (warp == 0) { /* the producer: every product's rows, as fast as slots free up */
		if (lane != 0 || a.barrier == 2)
			return;
		int n = 0;
		for (int pi = 0; pi < NP; pi++) {
			const Prod &p = a.p[pi];
			int r0, r1, k;
			block_rows(p, &r0, &r1, &k);
			for (int r = r0; r < r1; r += k) {
				const int nr = r1 - r < k ? r1 - r : k;
				ring_put(&n, S, ring, full, empty, NULL, 0, p.w + (int64_t)r * p.cols,
					 (uint32_t)nr * (uint32_t)p.cols);
			}
		}
		return;
	}
	const int cw = warp - 1;
	int n = 0;
	for (int pi = 0; pi < NP; pi++) {
		const Prod &p = a.p[pi];
		int r0, r1, k;
		block_rows(p, &r0, &r1, &k);
		const int c16 = p.cols / 16;
		const int4 *x4 = (const int4 *)a.x;
		for (int r = r0; r < r1 && a.barrier != 2; r += k, n++) {
			if (n % NCW != cw)
				continue;
			const int s = n % S, nr = r1 - r < k ? r1 - r : k;
			mbar_wait(&full[s], (uint32_t)((n / S) & 1));
			rows_dot((const int4 *)(ring + (size_t)s * SLOT), x4, nr, c16, lane, p.y + r);
			__syncwarp();
			if (lane == 0)
				mbar_arrive(&empty[s]);
		}
		if (!a.barrier)
			continue;
		/* the grid-wide dependency: this block's consumers are done with product pi (named
		 * barrier 1, the producer not in it), its first consumer thread tells the grid
		 * and waits until every block has, and barrier 1 again lets the others go on */
		asm volatile("bar.sync 1, %0;" ::"r"(NCW * 32) : "memory");
		if (threadIdx.x == 32)
			grid_arrive_wait(a.done + pi * DONE_STRIDE, a.err);
		asm volatile("bar.sync 1, %0;" ::"r"(NCW * 32) : "memory");
	}
}

/* The same step with rows handed out as they are asked for (modes "dyn-barrier" and
 * "dyn-free"): a block's producer takes batches of DYN_BATCH chunks of the current product
 * from its counter (a faster block takes more) and tags each fill with (product, chunk);
 * when the product's counter runs out it sends each consumer warp an end marker (a fill
 * without data), and after the last product a sentinel.  The last of a block's consumer
 * warps to reach a product's marker bumps the product's counter of blocks and spins until
 * all have (one poller a block, as in "barrier"), then tells the block's other warps
 * through shared memory; a warp's first chunk of a product waits for that.  Fills come in
 * product order and each slot belongs to one warp, so no wait holds a chunk another needs. */
#define DYN_BATCH 4
#define DYN_END (1 << 30)

__device__ __forceinline__ int units_of(const Prod &p)
{
	return (p.rows + slot_rows(p) - 1) / slot_rows(p);
}

__global__ void __launch_bounds__(NT, 1) k_step_dyn(const __grid_constant__ Args a)
{
	extern __shared__ __align__(128) int8_t ring[];
	__shared__ __align__(8) uint64_t full[MAX_SLOTS], empty[MAX_SLOTS];
	__shared__ int tag[MAX_SLOTS];
	__shared__ unsigned arrived[NP]; /* consumer warps of this block past each product's marker */
	__shared__ volatile int complete; /* the last product every block has finished */
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, S = a.slots;
	if (threadIdx.x == 0) {
		ring_init(full, empty, S);
		for (int i = 0; i < NP; i++)
			arrived[i] = 0;
		complete = -1;
	}
	__syncthreads();
	if (warp == 0) {
		if (lane != 0)
			return;
		int n = 0;
		/* a fill's tag: a chunk ((pi << 16) | u), a marker (DYN_END | pi) or a sentinel (-1) */
		auto put = [&](int t, const int8_t *src, uint32_t bytes) {
			ring_put(&n, S, ring, full, empty, tag, t, src, bytes);
		};
		for (int pi = 0; pi < NP; pi++) {
			const Prod &p = a.p[pi];
			const int U = units_of(p), k = slot_rows(p);
			for (;;) {
				const int u0 = (int)atomicAdd(a.next + pi * DONE_STRIDE, 1u) * DYN_BATCH;
				if (u0 >= U)
					break;
				const int u1 = u0 + DYN_BATCH < U ? u0 + DYN_BATCH : U;
				for (int u = u0; u < u1; u++) {
					const int r = u * k, nr = p.rows - r < k ? p.rows - r : k;
					put((pi << 16) | u, p.w + (int64_t)r * p.cols, (uint32_t)nr * (uint32_t)p.cols);
				}
			}
			for (int i = 0; i < NCW; i++)
				put(DYN_END | pi, NULL, 0);
		}
		ring_close(&n, S, ring, full, empty, tag);
		return;
	}
	const int cw = warp - 1;
	const int4 *x4 = (const int4 *)a.x;
	for (int n = cw;; n += NCW) {
		int s;
		const int t = ring_take(n, S, full, tag, &s);
		if (t < 0)
			break;
		if (t & DYN_END) {
			const int pi = t & 0xffff;
			__syncwarp();
			if (lane == 0) {
				mbar_arrive(&empty[s]);
				if (a.barrier == 3 && atomicAdd(&arrived[pi], 1u) == NCW - 1) {
					grid_arrive_wait(a.done + pi * DONE_STRIDE, a.err);
					complete = pi;
				}
			}
			__syncwarp();
			continue;
		}
		const int pi = t >> 16, u = t & 0xffff;
		if (a.barrier == 3 && pi > 0) {
			const uint64_t t0 = gtime();
			while (complete < pi - 1) {
				if (spin_expired(t0, a.err)) {
					if (lane == 0)
						atomicExch(a.err, 1u);
					break;
				}
			}
			__threadfence_block();
		}
		const Prod &p = a.p[pi];
		const int k = slot_rows(p), r = u * k;
		const int nr = p.rows - r < k ? p.rows - r : k;
		rows_dot((const int4 *)(ring + (size_t)s * SLOT), x4, nr, p.cols / 16, lane, p.y + r);
		__syncwarp();
		if (lane == 0)
			mbar_arrive(&empty[s]);
	}
}

/* Per-chunk dependencies (modes "chunk" and "chunk-free"): each block owns the same rows
 * as in k_step, but streams them a 256-column chunk at a time (the weights read as
 * [chunk][row][256], as the engine's tiles are laid out), all its rows' chunk 0 first.  A
 * unit (up to 64 rows x one chunk) needs only that chunk of x, i.e. the 256-row chunks of
 * the product before that produce it (q, k and v's for o; gate's and up's for down; else
 * the same chunk).  One poller warp a block (warp 8) walks the products in order: its
 * lanes poll the counts of blocks done with the chunks of the product before (relaxed,
 * one acquire fence after a change) and publish in shared memory a mask of the chunks
 * whose inputs are all written; a consumer warp checks that mask (shared memory only)
 * before a unit.  A block's partial sums meet in shared memory (a lane's, by an integer
 * atomic; the rows' final reduction is left out); the warp
 * that finishes a block's last unit of a product bumps the counts of the 256-row chunks
 * the block owns.  "chunk-free": the same streaming without the checks.  No data flows
 * between the products here (x is constant, y unwritten), so the ordering is timed, not
 * checked; and a real step would also need the partial sums double-buffered (warps run
 * ahead into the next product) and each warp's writes fenced before the count: costs
 * this leaves out, so its number is a ceiling. */
#define NT_CHUNK (NT + 32)

__device__ __forceinline__ int deps_of(int pi, int c, int *q)
{
	switch (pi % 4) {
	case 1: q[0] = c; q[1] = 16 + c; q[2] = 32 + c; return 3; /* o after q, k, v */
	case 3: q[0] = c; q[1] = 43 + c; return 2;                 /* down after gate, up */
	default: q[0] = c; return 1;
	}
}

/* The poller: for each product pi > 0 in turn, until every chunk c of its input is ready,
 * ready[pi] |= the chunks whose producers' rows are all done. */
__device__ __forceinline__ void chunk_poller(const Args &a, volatile unsigned long long *ready, int lane)
{
	for (int pi = 1; pi < NP; pi++) {
		const int nc = a.p[pi].cols / 256; /* <= 64 */
		const unsigned long long all = nc == 64 ? ~0ull : (1ull << nc) - 1;
		unsigned long long have = 0;
		const uint64_t t0 = gtime();
		while (have != all) {
			unsigned long long got = 0;
			for (int c0 = 0; c0 < nc; c0 += 32) {
				const int c = c0 + lane;
				bool ok = c < nc;
				if (ok && !(have >> c & 1)) {
					int q[3];
					const int nq = deps_of(pi, c, q);
					for (int i = 0; i < nq; i++) {
						const unsigned *cnt = a.rc + ((size_t)(pi - 1) * RC_MAX + q[i]) * DONE_STRIDE;
						ok = ok && ld_relaxed(cnt) >= a.rexp[(pi - 1) * RC_MAX + q[i]];
					}
				}
				got |= (unsigned long long)__ballot_sync(0xffffffffu, ok) << c0;
			}
			got &= all;
			if (got != have) {
				asm volatile("fence.acq_rel.gpu;" ::: "memory");
				have |= got;
				if (lane == 0)
					ready[pi] = have;
				__threadfence_block();
			}
			if (spin_expired(t0, a.err)) {
				if (lane == 0)
					atomicExch(a.err, 1u);
				if (lane == 0)
					ready[pi] = all; /* let the consumers finish; the timing is void */
				have = all;
			}
		}
	}
}

__global__ void __launch_bounds__(NT_CHUNK, 1) k_step_chunk(const __grid_constant__ Args a)
{
	extern __shared__ __align__(128) int8_t ring[];
	__shared__ __align__(8) uint64_t full[MAX_SLOTS], empty[MAX_SLOTS];
	__shared__ int tag[MAX_SLOTS];
	__shared__ unsigned units_done[NP];
	__shared__ volatile unsigned long long ready[NP];
	__shared__ int acc_sm[MAX_BROWS * 16];
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, S = a.slots;
	const bool check = a.barrier == 5;
	if (threadIdx.x == 0) {
		ring_init(full, empty, S);
		for (int i = 0; i < NP; i++) {
			units_done[i] = 0;
			ready[i] = 0;
		}
	}
	__syncthreads();
	if (warp == NCW + 1) {
		if (check)
			chunk_poller(a, ready, lane);
		return;
	}
	if (warp == 0) {
		if (lane != 0)
			return;
		int n = 0;
		auto put = [&](int t, const int8_t *src, uint32_t bytes) {
			ring_put(&n, S, ring, full, empty, tag, t, src, bytes);
		};
		for (int pi = 0; pi < NP; pi++) {
			const Prod &p = a.p[pi];
			int r0, r1, k;
			block_rows(p, &r0, &r1, &k);
			for (int c = 0; c < p.cols / 256; c++)
				for (int g = 0; r0 + g * CH_ROWS < r1; g++) {
					const int row = r0 + g * CH_ROWS, nr = r1 - row < CH_ROWS ? r1 - row : CH_ROWS;
					put((pi << 16) | (c << 4) | g, p.w + ((int64_t)c * p.rows + row) * 256, (uint32_t)nr * 256u);
				}
		}
		ring_close(&n, S, ring, full, empty, tag);
		return;
	}
	const int cw = warp - 1;
	const int4 *x4 = (const int4 *)a.x;
	for (int n = cw;; n += NCW) {
		int s;
		const int t = ring_take(n, S, full, tag, &s);
		if (t < 0)
			break;
		const int pi = t >> 16, c = (t >> 4) & 0xff, g = t & 15;
		if (check && pi > 0) {
			while (!(ready[pi] >> c & 1))
				;
			__threadfence_block();
		}
		const Prod &p = a.p[pi];
		int r0, r1, k;
		block_rows(p, &r0, &r1, &k);
		const int row = r0 + g * CH_ROWS, nr = r1 - row < CH_ROWS ? r1 - row : CH_ROWS;
		const int4 *w4 = (const int4 *)(ring + (size_t)s * SLOT);
		const int4 xv = __ldg(x4 + c * 16 + (lane & 15));
		/* two rows a pass, half a warp each; a lane's partial sum goes to shared memory as
		 * it is (an integer atomic: another warp may hold another chunk of the row), to be
		 * reduced at the product's end in a real step (left out here) */
		for (int i = lane >> 4; i < nr; i += 2) {
			const int4 wv = w4[i * 16 + (lane & 15)];
			int v = __dp4a(wv.x, xv.x, 0);
			v = __dp4a(wv.y, xv.y, v);
			v = __dp4a(wv.z, xv.z, v);
			v = __dp4a(wv.w, xv.w, v);
			atomicAdd(&acc_sm[(row - r0 + i) * 16 + (lane & 15)], v);
		}
		__syncwarp();
		if (lane == 0) {
			mbar_arrive(&empty[s]);
			const unsigned units = (unsigned)(p.cols / 256) * (unsigned)((r1 - r0 + CH_ROWS - 1) / CH_ROWS);
			if (atomicAdd(&units_done[pi], 1u) == units - 1) { /* the block's rows of pi are done */
				__threadfence();
				for (int qc = r0 / 256; qc * 256 < r1; qc++)
					atomicAdd(a.rc + ((size_t)pi * RC_MAX + qc) * DONE_STRIDE, 1u);
			}
		}
	}
}

int main(int argc, char **argv)
{
	int reps = 20, slots = 2 * NCW;
	const char *out = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-r") && i + 1 < argc)
			reps = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-s") && i + 1 < argc)
			slots = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-o") && i + 1 < argc)
			out = argv[++i];
		else {
			fprintf(stderr, "usage: bench-persist [-r REPS] [-s SLOTS (%d or %d)] [-o OUT.jsonl]\n", NCW,
				2 * NCW);
			return 2;
		}
	}
	/* slot n % S holds fill n, which consumer warp n % NCW takes: with S a multiple of NCW
	 * a slot always goes to the same warp, which takes its fills in order, so no warp can
	 * wait on a slot's next round before its current one is done (a warp two rounds early
	 * would find that parity "complete" and read the slot too soon) */
	if (reps < 1 || slots < NCW || slots > MAX_SLOTS || slots % NCW) {
		fprintf(stderr, "bench-persist: bad -r or -s\n");
		return 2;
	}
	cudaDeviceProp prop;
	CHECK(cudaGetDeviceProperties(&prop, 0));
	if (prop.major != 9 || !prop.cooperativeLaunch) {
		printf("SKIP: built for sm_90a with cooperative launch only; device is sm_%d%d\n", prop.major, prop.minor);
		return 0;
	}
	static const int shape[4][2] = { { 12288, 4096 }, { 4096, 4096 }, { 22016, 4096 }, { 4096, 11008 } };
	Args a;
	memset(&a, 0, sizeof(a));
	size_t wbytes = 0, ybytes = 0;
	for (int i = 0; i < 4; i++)
		if (shape[i][1] % 16 || shape[i][1] > SLOT || shape[i][1] > XBYTES) {
			fprintf(stderr, "bench-persist: a row must be a multiple of 16 bytes that fits a slot and x\n");
			return 1;
		}
	for (int pi = 0; pi < NP; pi++) {
		wbytes += (size_t)shape[pi % 4][0] * shape[pi % 4][1];
		ybytes += (size_t)shape[pi % 4][0];
	}
	int8_t *w, *x;
	float *y;
	CHECK(cudaMalloc((void **)&w, wbytes));
	CHECK(cudaMalloc((void **)&y, ybytes * sizeof(float)));
	CHECK(cudaMalloc((void **)&x, XBYTES));
	CHECK(cudaMalloc((void **)&a.done, NP * DONE_STRIDE * sizeof(unsigned)));
	CHECK(cudaMalloc((void **)&a.next, NP * DONE_STRIDE * sizeof(unsigned)));
	CHECK(cudaMalloc((void **)&a.rc, (size_t)NP * RC_MAX * DONE_STRIDE * sizeof(unsigned)));
	CHECK(cudaMalloc((void **)&a.err, sizeof(unsigned)));
	CHECK(cudaMemset(w, 0x35, wbytes)); /* the values do not change the time */
	CHECK(cudaMemset(x, 0x03, XBYTES));
	CHECK(cudaMemset(a.err, 0, sizeof(unsigned)));
	size_t wo = 0, yo = 0;
	for (int pi = 0; pi < NP; pi++) {
		a.p[pi].w = w + wo;
		a.p[pi].y = y + yo;
		a.p[pi].rows = shape[pi % 4][0];
		a.p[pi].cols = shape[pi % 4][1];
		wo += (size_t)a.p[pi].rows * a.p[pi].cols;
		yo += (size_t)a.p[pi].rows;
	}
	a.x = x;
	a.slots = slots;
	const size_t smem = (size_t)slots * SLOT;
	CHECK(cudaFuncSetAttribute(k_step, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
	CHECK(cudaFuncSetAttribute(k_step_dyn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
	/* the chunk modes' shared partial sums leave room for 7 slots only */
	const bool chunk_fits =
		cudaFuncSetAttribute(k_step_chunk, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) == cudaSuccess;
	(void)cudaGetLastError();
	int per_sm = 0;
	CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_step, NT, smem));
	const int grid = prop.multiProcessorCount;
	if (per_sm < 1) {
		fprintf(stderr, "bench-persist: a block does not fit a multiprocessor\n");
		return 1;
	}
	/* k_step_chunk: how many blocks own rows of each 256-row chunk of each product */
	static uint8_t rexp[NP * RC_MAX];
	memset(rexp, 0, sizeof(rexp));
	for (int pi = 0; pi < NP; pi++)
		for (int b = 0; b < grid; b++) {
			const int r0 = (int)((int64_t)a.p[pi].rows * b / grid), r1 = (int)((int64_t)a.p[pi].rows * (b + 1) / grid);
			if (r1 - r0 > MAX_BROWS || a.p[pi].rows > RC_MAX * 256) {
				fprintf(stderr, "bench-persist: a block's rows exceed MAX_BROWS or a product RC_MAX chunks\n");
				return 1;
			}
			for (int qc = r0 / 256; qc * 256 < r1; qc++)
				rexp[pi * RC_MAX + qc]++;
		}
	uint8_t *d_rexp;
	CHECK(cudaMalloc((void **)&d_rexp, sizeof(rexp)));
	CHECK(cudaMemcpy(d_rexp, rexp, sizeof(rexp), cudaMemcpyHostToDevice));
	a.rexp = d_rexp;
	cudaStream_t st;
	CHECK(cudaStreamCreate(&st));
	cudaEvent_t e0, e1;
	CHECK(cudaEventCreate(&e0));
	CHECK(cudaEventCreate(&e1));
	FILE *jf;
	char date[32];
	if (bench_out_open(out, &jf, date) < 0)
		return 1;
	printf("%s, %d SMs, %d-byte slots x %d, %.2f GB of int8 weights a step (7B shapes, %d products)\n",
	       prop.name, grid, SLOT, slots, wbytes / 1e9, NP);
	printf("%-8s %10s %10s %8s\n", "mode", "us/step", "GB/s", "% 4.22");
	int failed = 0;
	static const char *const mode_name[7] = { "free", "barrier", "sync", "dyn-barrier", "dyn-free", "chunk",
						     "chunk-free" };
	static const int order[7] = { 1, 0, 2, 3, 4, 5, 6 };
	for (int oi = 0; oi < 7; oi++) {
		const int mode = order[oi];
		if (mode >= 5 && !chunk_fits) {
			printf("%-8s (needs -s %d: its partial sums take shared memory)\n", mode_name[mode], NCW);
			continue;
		}
		a.barrier = mode;
		CHECK(cudaMemset(a.err, 0, sizeof(unsigned)));
		double best = 1e30, sum = 0;
		for (int r = 0; r < reps + 1; r++) {
			CHECK(cudaMemsetAsync(a.done, 0, NP * DONE_STRIDE * sizeof(unsigned), st));
			CHECK(cudaMemsetAsync(a.next, 0, NP * DONE_STRIDE * sizeof(unsigned), st));
			CHECK(cudaMemsetAsync(a.rc, 0, (size_t)NP * RC_MAX * DONE_STRIDE * sizeof(unsigned), st));
			void *kargs[] = { &a };
			CHECK(cudaEventRecord(e0, st));
			void *kf = mode >= 5 ? (void *)k_step_chunk : mode >= 3 ? (void *)k_step_dyn : (void *)k_step;
			CHECK(cudaLaunchCooperativeKernel(kf, dim3(grid), dim3(mode >= 5 ? NT_CHUNK : NT), kargs, smem, st));
			CHECK(cudaEventRecord(e1, st));
			CHECK(cudaEventSynchronize(e1));
			float ms;
			CHECK(cudaEventElapsedTime(&ms, e0, e1));
			if (r == 0)
				continue; /* warm-up */
			best = ms < best ? ms : best;
			sum += ms;
		}
		unsigned err = 0;
		CHECK(cudaMemcpy(&err, a.err, sizeof(err), cudaMemcpyDeviceToHost));
		failed |= err != 0;
		const double us = 1e3 * sum / reps, gbps = wbytes / (us * 1e3);
		if (mode == 2)
			printf("%-8s %10.1f %10s %8s   (best %.1f us; %.2f us a barrier)%s\n", mode_name[mode], us, "-", "-",
			       1e3 * best, us / NP, err ? "  BARRIER TIMED OUT: not a timing" : "");
		else
			printf("%-8s %10.1f %10.1f %7.1f%%   (best %.1f us)%s\n", mode_name[mode], us, gbps,
			       100.0 * gbps / REF_GBPS, 1e3 * best, err ? "  BARRIER TIMED OUT: not a timing" : "");
		fflush(stdout); /* a mode that hangs later (killed by a timeout) keeps these lines */
		if (jf && !err) /* the program adds no commit or driver: the caller's sed does */
			fprintf(jf,
				"{\"kind\":\"persist\",\"date\":\"%s\",\"gpu\":\"%s\",\"mode\":\"%s\",\"slots\":%d,\"slot_bytes\":%d,"
				"\"bytes\":%zu,\"us\":%.1f,\"gbps\":%.1f,\"pct\":%.1f,\"command\":\"bench-persist -r %d -s %d\"}\n",
				date, prop.name, mode_name[mode], slots, SLOT, mode == 2 ? (size_t)0 : wbytes, us,
				mode == 2 ? 0.0 : gbps, mode == 2 ? 0.0 : 100.0 * gbps / REF_GBPS, reps, slots);
	}
	if (jf)
		fclose(jf);
	return failed ? 1 : 0; /* a barrier that timed out: its timing is not one */
}
