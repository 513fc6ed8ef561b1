/* bench/bench-pdl.cu: what the hand-over between two decode kernels costs, by mechanism.
 *
 * A decode step is a chain of ~250 kernels, each reading what the one before wrote.  The
 * engine's kernels start early (programmatic dependent launch: the one before lets them
 * launch at its start) and wait in griddepcontrol.wait until the kernel before has
 * completed and its writes are visible.  Session 11 measured that those waits cost a 7B
 * step 14-21%, and bench-persist that a grid barrier inside one kernel costs as much.
 * This program measures the hand-over alone: a chain of NK kernels (one CUDA graph), each
 * of G blocks of 256 threads; every block reads the whole 4096-float vector the kernel
 * before wrote (a block's slice each), sums it, and writes its own slice of the next
 * vector.  Modes:
 *   "serial": plain stream order (no early launch);
 *   "pdl":    early launch, griddepcontrol.wait (the engine's way);
 *   "flag":   early launch, no griddepcontrol.wait: each block, after its writes, adds 1
 *             to its kernel's counter (release), and a kernel's blocks start once the
 *             counter of the kernel before reaches G (one thread polls, relaxed, then an
 *             acquire fence and a block barrier);
 *   "none":   early launch and no wait at all (wrong results; the floor).
 *
 * With -w MB each kernel also streams a weight slab of its own (int8, MB megabytes, as a
 * decode product does; -w A,B,C,... gives kernel k the k % n-th size of the list, e.g. a
 * decode layer's products with 0 for its attention): each warp requests its first two items (32 lanes x 64 bytes)
 * before the wait, as the engine's products do, then takes its items with two register
 * stages and multiplies them with x (dp4a).  -s BYTES gives each block that much dynamic
 * shared memory (unused), which decides whether the next kernel's blocks fit on a
 * multiprocessor beside this one's: the engine's kernels fill the register file, so the
 * next kernel's early launch cannot place a block where one of them still runs.
 * -a 0|1[,0|1...] makes the kernels marked 1 (the k % n-th of the list) split-K products:
 * every block adds a whole vector of partial sums into y with float4 atomics instead of
 * writing its own slice (y zeroed first; the partials are small integers, so their sum
 * does not depend on the atomics' order and the sums check still holds).  That is what a
 * layer costs when a product is folded into the kernel before it (o into attention,
 * down into gate/up): one grid-wide dependency fewer, 4,096 atomics a block more.  With
 * -c C (2, 4 or 8) the split-K kernels run in clusters of C blocks that add their partials
 * in distributed shared memory first, so only one block in C adds to each element of y.
 * -R N spreads those adds over N replicas of y (cluster c adds into replica c % N; the next
 * kernel reads and sums all N), -t starts each cluster's adds at a different line of y,
 * -G B launches the split-K kernels with B blocks (the others with -g's).
 *
 *   bench-pdl [-n KERNELS] [-g BLOCKS] [-w MB[,MB...]] [-a 0|1[,...]] [-c CLUSTER] [-G BLOCKS]
 *             [-R REPLICAS] [-t] [-s BYTES] [-r REPS] [-o OUT.jsonl]
 *
 * Prints microseconds a kernel for each mode (and with -w the weights' GB/s and % of 4.22
 * TB/s over the whole chain), and checks the sums of the modes that wait against the serial one's. */
#include "bench-sm90.cuh"

#include <cooperative_groups.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NT 256
#define VEC 4096
#define MAX_K 1024
#define ITEM 64 /* bytes a lane loads an item: four 16-byte vectors */
#define MAX_W 16 /* sizes in a -w list */

namespace cg = cooperative_groups;

enum { M_SERIAL, M_PDL, M_FLAG, M_NONE, M_COUNT };

/* A warp's item it of the block's share of the slab (its items are it = warp, warp + 8, ...). */
__device__ __forceinline__ void load_item(const int8_t *w, int64_t it, int64_t n_items, int lane, int4 v[ITEM / 16])
{
	if (it < n_items) {
		const int4 *p = (const int4 *)(w + it * 32 * ITEM) + lane;
#pragma unroll
		for (int u = 0; u < ITEM / 16; u++)
			v[u] = __ldcs(p + 32 * u);
	} else {
#pragma unroll
		for (int u = 0; u < ITEM / 16; u++)
			v[u] = make_int4(0, 0, 0, 0);
	}
}

__device__ __forceinline__ int dot_item(const int4 v[ITEM / 16], int xq, int acc)
{
#pragma unroll
	for (int u = 0; u < ITEM / 16; u++) {
		acc = __dp4a(v[u].x, xq, acc);
		acc = __dp4a(v[u].y, xq, acc);
		acc = __dp4a(v[u].z, xq, acc);
		acc = __dp4a(v[u].w, xq, acc);
	}
	return acc;
}

/* A block's four partial sums of y[i..i+3] in split-K mode: small integers. */
__device__ __forceinline__ float4 part4(int t, int i, int b)
{
	return make_float4((float)((t + i + b) & 3), (float)((t + i + 1 + b) & 3), (float)((t + i + 2 + b) & 3),
			   (float)((t + i + 3 + b) & 3));
}

/* Kernel k of the chain: x = vector k, y = vector k + 1 (vectors [NK + 1][R replicas][VEC]).
 * CL: a split-K kernel in clusters (its 16 KiB of partials in shared memory exist only in
 * this instance, so -s alone decides what the other kernels leave free). */
template <bool CL>
__global__ void __launch_bounds__(NT) k_link(int mode, int k, const float *x, float *y, unsigned *cnt, unsigned *err,
					     const int8_t *w, int64_t wbytes, int atom, int rin, int rout, int rot,
					     int prev_grid)
{
	__shared__ float red[NT / 32], total;
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	/* the block's share of this kernel's slab: items of 32 x ITEM bytes */
	const int64_t n_all = wbytes / (32 * ITEM);
	const int64_t i0 = n_all * blockIdx.x / gridDim.x, i1 = n_all * (blockIdx.x + 1) / gridDim.x;
	const int8_t *wb = w + i0 * 32 * ITEM;
	const int64_t n_items = i1 - i0;
	int4 va[ITEM / 16], vb[ITEM / 16];
	if (mode != M_SERIAL)
		asm volatile("griddepcontrol.launch_dependents;");
	if (wbytes) { /* the first two items, before the wait */
		load_item(wb, warp, n_items, lane, va);
		load_item(wb, warp + NT / 32, n_items, lane, vb);
	}
	if (mode == M_PDL) {
		asm volatile("griddepcontrol.wait;" ::: "memory");
	} else if (mode == M_FLAG && k > 0) {
		if (threadIdx.x == 0)
			spin_count(cnt + (k - 1) * 32, (unsigned)prev_grid, err);
		__syncthreads();
	}
	float s = 0.f;
	for (int r = 0; r < rin; r++) /* x's replicas (more than one after a split-K kernel) */
		for (int i = threadIdx.x; i < VEC; i += NT)
			s += x[r * VEC + i];
	if (wbytes) { /* the items, two register stages: compute one, load the one two on */
		const int xq = __float_as_int(x[lane]) & 0x01010101;
		int acc = 0;
		for (int64_t it = warp; it < n_items; it += 2 * (NT / 32)) {
			acc = dot_item(va, xq, acc);
			load_item(wb, it + 2 * (NT / 32), n_items, lane, va);
			acc = dot_item(vb, xq, acc);
			load_item(wb, it + 3 * (NT / 32), n_items, lane, vb);
		}
		s += (float)(acc & 1); /* keeps the work; adds 0 or 1 to the sums */
	}
	for (int o = 16; o; o >>= 1)
		s += __shfl_xor_sync(0xffffffffu, s, o);
	if ((threadIdx.x & 31) == 0)
		red[threadIdx.x >> 5] = s;
	__syncthreads();
	if (threadIdx.x < 32) {
		s = threadIdx.x < NT / 32 ? red[threadIdx.x] : 0.f;
		for (int o = 16; o; o >>= 1)
			s += __shfl_xor_sync(0xffffffffu, s, o);
		if (threadIdx.x == 0)
			total = s;
	}
	__syncthreads();
	if (atom) { /* split-K: partials for all of y, small integers (exact in any order) */
		const int t = (int)total;
		const unsigned csize = CL ? cg::this_cluster().num_blocks() : 1, cid = blockIdx.x / csize;
		float4 *y4 = (float4 *)(y + (cid % rout) * VEC); /* this cluster's replica of y */
		if constexpr (!CL) {
			const unsigned sh = rot ? cid * 97 % (VEC / 4) : 0;
			for (unsigned j = threadIdx.x; j < VEC / 4; j += NT) {
				const unsigned i = (j + sh) % (VEC / 4);
				atomicAdd(y4 + i, part4(t, 4 * i, blockIdx.x));
			}
		} else { /* the cluster's blocks add their partials in distributed shared memory first:
			  * block r of the cluster sums slice r of the vector over the cluster, then adds it to y */
			cg::cluster_group cl = cg::this_cluster();
			__shared__ float4 part[VEC / 4];
			for (int i = threadIdx.x; i < VEC / 4; i += NT)
				part[i] = part4(t, 4 * i, blockIdx.x);
			cl.sync();
			const unsigned r = cl.block_rank(), per = VEC / 4 / csize, sh = rot ? cid * 97 % per : 0;
			for (unsigned j = threadIdx.x; j < per; j += NT) {
				const unsigned i = r * per + (j + sh) % per;
				float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
				for (unsigned b = 0; b < csize; b++) {
					const float4 v = cl.map_shared_rank(part, b)[i];
					a.x += v.x, a.y += v.y, a.z += v.z, a.w += v.w;
				}
				atomicAdd(y4 + i, a);
			}
			cl.sync(); /* no block leaves while the others read its partials */
		}
	} else { /* this block's slice of y: the sum scaled down so the chain stays finite */
		const int per = (VEC + gridDim.x - 1) / gridDim.x;
		const float v = total * (1.0f / VEC);
		for (int i = blockIdx.x * per + threadIdx.x; i < (blockIdx.x + 1) * per && i < VEC; i += NT)
			y[i] = v + (float)(i & 7);
	}
	if (mode == M_FLAG) {
		__syncthreads();
		if (threadIdx.x == 0) {
			__threadfence();
			atomicAdd(cnt + k * 32, 1u);
		}
	}
}

/* Vector k + 1's replicas past the first zeroed, and its first too after a split-K kernel
 * k (ATOM: a 0/1 a kernel); R replicas a vector, a block a vector. */
__global__ void k_zero(float *vec, const int *atom, int R)
{
	for (int i = atom[blockIdx.x] ? threadIdx.x : VEC + threadIdx.x; i < R * VEC; i += blockDim.x)
		vec[(size_t)(blockIdx.x + 1) * R * VEC + i] = 0.f;
}

/* A list V[,V...] of at most MAX_W numbers in [0, MAX] into OUT: how many, or -1. */
static int read_list(const char *p, double out[MAX_W], double max)
{
	for (int n = 0;; p++) {
		char *end = (char *)p;
		const double v = strtod(p, &end);
		if (n == MAX_W || end == p || v < 0 || v > max || (*end && *end != ','))
			return -1;
		out[n++] = v;
		if (!*end)
			return n;
		p = end;
	}
}

int main(int argc, char **argv)
{
	int nk = 256, reps = 20, grid = 0, smem = 0, nwl, nal, csize = 1, R = 1, rot = 0, agrid = 0;
	int alist[MAX_W] = { 0 };
	const char *aopt = "0";
	double wmb[MAX_W] = { 0 };
	const char *wlist = "0";
	const char *out = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-n") && i + 1 < argc)
			nk = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-g") && i + 1 < argc)
			grid = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-r") && i + 1 < argc)
			reps = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-w") && i + 1 < argc)
			wlist = argv[++i];
		else if (!strcmp(argv[i], "-R") && i + 1 < argc)
			R = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-G") && i + 1 < argc)
			agrid = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-t"))
			rot = 1;
		else if (!strcmp(argv[i], "-c") && i + 1 < argc)
			csize = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-a") && i + 1 < argc)
			aopt = argv[++i];
		else if (!strcmp(argv[i], "-s") && i + 1 < argc)
			smem = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-o") && i + 1 < argc)
			out = argv[++i];
		else {
			fprintf(stderr, "usage: bench-pdl [-n KERNELS] [-g BLOCKS] [-w MB[,MB...]] [-a 0|1[,...]] [-c CLUSTER] [-G BLOCKS] [-R REPLICAS] [-t] [-s BYTES] [-r REPS] [-o OUT.jsonl]\n");
			return 2;
		}
	}
	cudaDeviceProp prop;
	CHECK(cudaGetDeviceProperties(&prop, 0));
	if (prop.major != 9) { /* the binary holds sm_90a code only */
		printf("SKIP: built for sm_90a only; device is sm_%d%d\n", prop.major, prop.minor);
		return 0;
	}
	if (grid <= 0)
		grid = 2 * prop.multiProcessorCount;
	if (agrid <= 0)
		agrid = grid;
	double aval[MAX_W];
	nwl = read_list(wlist, wmb, 512);
	nal = read_list(aopt, aval, 1);
	bool wbad = nal < 1;
	for (int i = 0; i < nal && !wbad; i++) {
		wbad = aval[i] != 0 && aval[i] != 1;
		alist[i] = (int)aval[i];
	}
	if (csize < 1 || csize > 8 || (csize & (csize - 1)) || agrid % csize || R < 1 || R > 16 || agrid > 1024)
		wbad = true;
	if (nk < 2 || nk > MAX_K || reps < 1 || grid > 1024 || wbad || nwl < 1 || smem < 0 ||
	    smem > (int)prop.sharedMemPerBlockOptin) {
		fprintf(stderr, "bench-pdl: bad -n, -g, -w, -a, -c (a power of two up to 8 dividing -G), -R (1-16), -s or -r\n");
		return 2;
	}
	/* a slab a kernel, a whole number of items */
	static int64_t wbytes[MAX_K], woff[MAX_K + 1];
	static int atom[MAX_K];
	int *atom_d, n_atom = 0;
	for (int k = 0; k < nk; k++) {
		atom[k] = alist[k % nal];
		n_atom += atom[k];
		wbytes[k] = (int64_t)(wmb[k % nwl] * 1e6) / (32 * ITEM) * (32 * ITEM);
		woff[k + 1] = woff[k] + wbytes[k];
	}
	int8_t *w = NULL;
	if (woff[nk]) {
		CHECK(cudaMalloc((void **)&w, (size_t)woff[nk]));
		CHECK(cudaMemset(w, 0x35, (size_t)woff[nk])); /* the values do not change the time */
	}
	CHECK(cudaFuncSetAttribute(k_link<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
	CHECK(cudaFuncSetAttribute(k_link<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
	int per_sm = 0;
	CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_link<false>, NT, smem));
	float *vec;
	unsigned *cnt, *err;
	CHECK(cudaMalloc((void **)&atom_d, (size_t)nk * sizeof(int)));
	CHECK(cudaMemcpy(atom_d, atom, (size_t)nk * sizeof(int), cudaMemcpyHostToDevice));
	CHECK(cudaMalloc((void **)&vec, (size_t)(nk + 1) * R * VEC * sizeof(float)));
	CHECK(cudaMalloc((void **)&cnt, (size_t)nk * 32 * sizeof(unsigned)));
	CHECK(cudaMalloc((void **)&err, sizeof(unsigned)));
	cudaStream_t st;
	CHECK(cudaStreamCreate(&st));
	cudaEvent_t e0, e1;
	CHECK(cudaEventCreate(&e0));
	CHECK(cudaEventCreate(&e1));
	static const char *const name[M_COUNT] = { "serial", "pdl", "flag", "none" };
	float *ref = (float *)malloc(VEC * sizeof(float)), *got = (float *)malloc((size_t)R * VEC * sizeof(float));
	double us_of[M_COUNT];
	FILE *jf;
	char date[32];
	if (bench_out_open(out, &jf, date) < 0)
		return 1;
	printf("%s, %d SMs: a chain of %d kernels of %d x %d threads (%d B shared memory a block: %d blocks fit an SM), "
	       "%.2f MB of weights a kernel (-w %s), %d split-K kernels (-a %s), one CUDA graph\n",
	       prop.name, prop.multiProcessorCount, nk, grid, NT, smem, per_sm, woff[nk] / 1e6 / nk, wlist, n_atom, aopt);
	printf("%-8s %12s %14s %10s %8s  %s\n", "mode", "us/kernel", "vs serial", "GB/s", "% 4.22", "sums");
	int failed = 0;
	for (int mode = 0; mode < M_COUNT; mode++) {
		cudaGraph_t g;
		cudaGraphExec_t ge;
		CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
		CHECK(cudaMemsetAsync(cnt, 0, (size_t)nk * 32 * sizeof(unsigned), st));
		/* vector 0 the input, the others NaN (all bits set): a kernel that reads its input
		 * before the one before has written it carries a NaN or an old value to the end,
		 * where the sums are compared with the serial mode's */
		CHECK(cudaMemsetAsync(vec, 0, (size_t)R * VEC * sizeof(float), st));
		CHECK(cudaMemsetAsync(vec + (size_t)R * VEC, 0xff, (size_t)nk * R * VEC * sizeof(float), st));
		if (n_atom || R > 1)
			k_zero<<<nk, 256, 0, st>>>(vec, atom_d, R);
		for (int k = 0; k < nk; k++) {
			cudaLaunchConfig_t cfg = {};
			cudaLaunchAttribute attr[2];
			const bool clustered = csize > 1 && atom[k], after_atom = k > 0 && atom[k - 1];
			cfg.gridDim = dim3(atom[k] ? agrid : grid);
			cfg.blockDim = dim3(NT);
			cfg.dynamicSmemBytes = (size_t)smem;
			cfg.stream = st;
			cfg.attrs = attr;
			if (mode != M_SERIAL && k > 0) {
				attr[cfg.numAttrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
				attr[cfg.numAttrs++].val.programmaticStreamSerializationAllowed = 1;
			}
			if (clustered) {
				attr[cfg.numAttrs].id = cudaLaunchAttributeClusterDimension;
				attr[cfg.numAttrs++].val.clusterDim = { (unsigned)csize, 1, 1 };
			}
			CHECK(cudaLaunchKernelEx(&cfg, clustered ? k_link<true> : k_link<false>, mode, k,
						 (const float *)(vec + (size_t)k * R * VEC), vec + (size_t)(k + 1) * R * VEC, cnt,
						 err, (const int8_t *)(w ? w + woff[k] : NULL), wbytes[k], atom[k],
						 after_atom ? R : 1, R, rot, after_atom ? agrid : grid));
		}
		CHECK(cudaStreamEndCapture(st, &g));
		CHECK(cudaGraphInstantiate(&ge, g, 0));
		CHECK(cudaMemset(err, 0, sizeof(unsigned)));
		double sum = 0;
		for (int r = 0; r < reps + 1; r++) {
			CHECK(cudaEventRecord(e0, st));
			CHECK(cudaGraphLaunch(ge, st));
			CHECK(cudaEventRecord(e1, st));
			CHECK(cudaEventSynchronize(e1));
			float ms;
			CHECK(cudaEventElapsedTime(&ms, e0, e1));
			if (r > 0)
				sum += ms;
		}
		unsigned e = 0;
		CHECK(cudaMemcpy(&e, err, sizeof(e), cudaMemcpyDeviceToHost));
		CHECK(cudaMemcpy(got, vec + (size_t)nk * R * VEC, (size_t)R * VEC * sizeof(float), cudaMemcpyDeviceToHost));
		for (int r = 1; r < R; r++) /* exact: zeros, or small integers after a split-K kernel */
			for (int i = 0; i < VEC; i++)
				got[i] += got[r * VEC + i];
		if (mode == M_SERIAL)
			memcpy(ref, got, VEC * sizeof(float));
		const bool same = !memcmp(ref, got, VEC * sizeof(float));
		const double us = 1e3 * sum / reps / nk;
		us_of[mode] = us;
		const char *verdict = mode == M_SERIAL ? "reference"
				      : mode == M_NONE ? (same ? "equal (by chance)" : "differ (expected: no wait)")
				      : same ? "equal" : "DIFFER";
		if (mode != M_NONE && mode != M_SERIAL && !same)
			failed = 1;
		if (e)
			failed = 1;
		const double gbps = woff[nk] / (double)nk / (us * 1e3);
		printf("%-8s %12.2f %+13.2f %10.1f %7.1f%%  %s%s\n", name[mode], us, us - us_of[0], gbps, 100.0 * gbps / 4220.0,
		       verdict, e ? "  TIMED OUT" : "");
		fflush(stdout);
		if (jf && !e)
			fprintf(jf,
				"{\"kind\":\"pdl\",\"date\":\"%s\",\"gpu\":\"%s\",\"mode\":\"%s\",\"kernels\":%d,\"blocks\":%d,"
				"\"smem\":%d,\"blocks_per_sm\":%d,\"weight_bytes\":%lld,\"us_per_kernel\":%.3f,\"gbps\":%.1f,"
				"\"sums_equal\":%s,\"command\":\"bench-pdl -n %d -g %d -w %s -a %s -c %d -G %d -R %d%s -s %d -r %d\"}\n",
				date, prop.name, name[mode], nk, grid, smem, per_sm, (long long)woff[nk], us, gbps,
				same ? "true" : "false", nk, grid, wlist, aopt, csize, agrid, R, rot ? " -t" : "", smem, reps);
		CHECK(cudaGraphExecDestroy(ge));
		CHECK(cudaGraphDestroy(g));
	}
	if (jf)
		fclose(jf);
	free(ref);
	free(got);
	if (w)
		CHECK(cudaFree(w));
	CHECK(cudaFree(atom_d));
	return failed;
}
