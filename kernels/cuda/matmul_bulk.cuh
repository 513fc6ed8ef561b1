/* kernels/cuda/matmul_bulk.cuh: the bulk-copy variant of the decode products (sm_90:
 * k_mmv_bulk, its ring of cp.async.bulk slots in shared memory, and launch_bulk).
 * Included only by matmul.cu, at one spot: it uses what matmul.cu defines before it
 * (KbMmvArgs, KbCursor and kb_cursor_*, kb_chunk, kb_flush, KbChunkBytes, kb_fit_grid), and matmul.cu
 * uses kb_auto_stages and kb_variant from it after. */
#ifndef QD_KERNELS_CUDA_MATMUL_BULK_CUH
#define QD_KERNELS_CUDA_MATMUL_BULK_CUH

/* ---- the bulk-copy pipeline (sm_90: cp.async.bulk into shared memory) ----
 *
 * The same work split and arithmetic as k_mmv, but a warp's weights do not pass through
 * its registers on the way in: lane 0 asks the copy engine for whole items (a chunk of
 * the group's tiles: q, s and d pieces, each contiguous in the layout) into a ring of
 * `stages` slots in shared memory, each slot with an mbarrier that completes when its
 * bytes have landed.  Up to `stages` items per warp are in flight however long the
 * arithmetic of the current one takes; with programmatic dependent launch the first
 * `stages` items are requested before the previous kernel has finished; and without a
 * second register stage the kernel needs fewer registers (Q4_1: 128 instead of 170, so
 * two blocks fit a multiprocessor instead of one).  The arithmetic is k_mmv's for either
 * activation form (kb_item: f16, or int8 with I8).  Where it is used by default:
 * kb_auto_stages. */
template <int T, int RT> struct KbBulk {
	typedef KbChunkBytes<T> C;
	static constexpr int QB = C::Q, SBB = C::S, DBB = C::D;
	static constexpr int TILE = QB + SBB + DBB;
	static constexpr int BYTES = RT * TILE; /* one ring slot */
	static_assert(QB % 16 == 0 && SBB % 16 == 0 && DBB % 16 == 0, "bulk copies move 16-byte units");
};

/* Shared memory of k_mmv_bulk: reduction slots (and the tokens' 1 / rms, kb_rms_early's,
 * read by kb_flush, and with ROPE KbRopeSm), then the mbarriers, then the rings. */
template <bool ROPE> __host__ __device__ static inline size_t kb_bulk_red_bytes(int nw, int rt)
{
	return kb_slot_bytes(nw, rt) + (KB_RMS_SM_BYTES + kb_rope_sm<ROPE>() + 127) / 128 * 128; /* rings 128-aligned */
}
template <bool ROPE> __host__ __device__ static inline size_t kb_bulk_ring_off(int nw, int rt, int stages)
{
	return kb_bulk_red_bytes<ROPE>(nw, rt) + ((size_t)nw * stages * 8 + 127) / 128 * 128;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/* Lane 0: requests the cursor's item into ring slot st. */
template <int T, int RT>
__device__ __forceinline__ void kb_bulk_issue(const KbMmvArgs &a, const KbCursor &c, int st, uint32_t ring,
					      uint32_t bar0)
{
	typedef KbBulk<T, RT> B;
	const uint32_t bar = bar0 + 8 * st, dst = ring + (uint32_t)(st * B::BYTES);
	kb_mbar_expect(bar, B::BYTES);
	KB_UNROLL
	for (int rt = 0; rt < RT; rt++) {
		const uint32_t d0 = dst + rt * B::TILE;
		kb_bulk_copy(d0, c.q + rt * a.q_tile, B::QB, bar);
		if constexpr (B::SBB > 0)
			kb_bulk_copy(d0 + B::QB, c.s + rt * a.s_tile, B::SBB, bar);
		if constexpr (B::DBB > 0)
			kb_bulk_copy(d0 + B::QB + B::SBB, c.d + rt * a.d_tile, B::DBB, bar);
	}
}

__device__ __forceinline__ uint4 kb_lds16(uint32_t p)
{
	uint4 v;
	asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(p));
	return v;
}
__device__ __forceinline__ uint2 kb_lds8(uint32_t p)
{
	uint2 v;
	asm volatile("ld.shared.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(p));
	return v;
}
__device__ __forceinline__ uint32_t kb_lds4(uint32_t p)
{
	uint32_t v;
	asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(p));
	return v;
}

/* The lane's registers of one tile of a landed slot (the layout of kb_load_w, ch = 0). */
template <int T, int RT>
__device__ __forceinline__ void kb_bulk_regs(uint32_t tile, int lane, KbWRegs<T> *w)
{
	typedef Lay<T> L;
	typedef KbBulk<T, RT> B;
	const int g = lane >> 2;
	KB_UNROLL
	for (int p = 0; p < L::CPK; p++) {
		KB_UNROLL
		for (int v = 0; v < L::QV; v++)
			w->q[p][v] = kb_lds16(tile + ((p * L::QV + v) * 32 + lane) * 16);
		const uint32_t sp = tile + B::QB + (p * 8 + g) * L::SB;
		if constexpr (L::SB == 16)
			w->s[p] = kb_lds16(sp);
		else if constexpr (L::SB == 8) {
			const uint2 v = kb_lds8(sp);
			w->s[p].x = v.x;
			w->s[p].y = v.y;
		} else if constexpr (L::SB == 4)
			w->s[p].x = kb_lds4(sp);
	}
	const uint32_t dp = tile + B::QB + B::SBB + g * L::DB;
	if constexpr (L::DB == 32) {
		w->d[0] = kb_lds16(dp);
		w->d[1] = kb_lds16(dp + 16);
	} else if constexpr (L::DB == 4) {
		w->d[0].x = kb_lds4(dp);
	}
}
#endif

template <int T, int RT, bool ROPE, int I8, bool RMS>
__global__ void __launch_bounds__(256) k_mmv_bulk(const KbMmvArgs a)
{
	KB_TRACE();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	typedef KbBulk<T, RT> B;
	constexpr float post = kb_i8_post<T, I8>();
	extern __shared__ __align__(128) uint8_t kb_bulk_sm[];
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	const int S = a.stages;
	float4 *red = (float4 *)kb_bulk_sm;
	const uint32_t bar0 = kb_smem_u32(kb_bulk_sm + kb_bulk_red_bytes<ROPE>(nw, RT)) + 8 * warp * S;
	const uint32_t ring = kb_smem_u32(kb_bulk_sm + kb_bulk_ring_off<ROPE>(nw, RT, S)) + (uint32_t)(warp * S * B::BYTES);
	const int J = (a.n_groups - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
	const int cnt = warp < a.n_chunks ? (a.n_chunks - warp + nw - 1) / nw : 0;
	const int total = J * cnt;
	if (lane == 0) {
		for (int s = 0; s < S; s++)
			kb_mbar_init(bar0 + 8 * s);
		asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
	}
	__syncwarp();
	kb_pdl_trigger();
	/* weights never depend on the previous kernel: ask for them before waiting on it.
	 * iss: the next item to request (the same walk in every lane; lane 0 requests) */
	KbCursor cur, iss;
	kb_cursor_group<T, RT>(a, 0, warp, &cur);
	iss = cur;
	for (int i = 0; i < S && i < total; i++) {
		if (lane == 0)
			kb_bulk_issue<T, RT>(a, iss, i, ring, bar0);
		kb_cursor_next<T, RT>(a, cnt, warp, nw, &iss);
	}
	kb_rope_pre<ROPE, RT>(a, red, nw, warp, lane);
	kb_pdl_wait();
	kb_rms_early<RT, RMS>(a, red, nw, warp, lane);

	float acc[RT][4];
	KB_UNROLL
	for (int rt = 0; rt < RT; rt++)
		acc[rt][0] = acc[rt][1] = acc[rt][2] = acc[rt][3] = 0.f;
	if (cnt == 0) { /* more warps than chunks: only take part in the barriers */
		for (int j = 0; j < J; j++)
			kb_flush<RT, ROPE, 1, false, RMS>(a, j, warp, nw, lane, acc, red, post);
		return;
	}
	int st = 0, ph = 0;
	for (int i = 0; i < total; i++) {
		kb_mbar_wait(bar0 + 8 * st, (uint32_t)ph);
		KbWRegs<T> w[RT];
		KB_UNROLL
		for (int rt = 0; rt < RT; rt++)
			kb_bulk_regs<T, RT>(ring + (uint32_t)(st * B::BYTES + rt * B::TILE), lane, &w[rt]);
		/* every lane has its slot's bytes in registers: the slot may be refilled.  The
		 * fence orders this lane's shared-memory reads (generic proxy) before the bulk
		 * copy's writes (async proxy); __syncwarp alone orders only execution. */
		asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
		__syncwarp();
		if (i + S < total) {
			if (lane == 0)
				kb_bulk_issue<T, RT>(a, iss, st, ring, bar0);
			kb_cursor_next<T, RT>(a, cnt, warp, nw, &iss);
		}
		kb_item<T, RT, ROPE, I8>(a, w, warp + (int64_t)cur.k * nw, lane, acc);
		const int j = cur.j;
		kb_cursor_next<T, RT>(a, cnt, warp, nw, &cur);
		if (cur.j != j) {
			kb_fold8<T, I8>(acc, lane);
			kb_flush<RT, ROPE, 1, false, RMS>(a, j, warp, nw, lane, acc, red, post);
		}
		if (++st == S) {
			st = 0;
			ph ^= 1;
		}
	}
#else
	__trap(); /* launched only on sm_90 and newer, which this build must then target */
#endif
}

/* Ring slots per warp when the configuration leaves the choice to the weight (stages < 0),
 * for f16 and int8 activations alike: two where the bulk-copy kernel measured faster in
 * whole models on the H200, else none (k_mmv).  Q4_1 rows of 4096 (7B shape, batch 1):
 * f16 336 -> 391 tok/s (session 3), int8 478 -> 499-503 (session 8: 103 registers
 * instead of k_mmv_2's 128 with spills); but rows of 576 (SmolLM2: three chunks a row, so
 * each warp has little to keep in flight and the ring's set-up is not repaid): 1,368 ->
 * 1,268.  Q4_K and Q6_K (7B Q4_K_M) came out even, Q4_0 5% slower (441 -> 418), Q8_0 and
 * F16 slower; with int8 activations Q4_0 558 -> 521 (2 slots) / 502 (3) / 546 (4) and
 * Q8_0 416 -> 370 / 386 (bench/NOTES-gpu.md).  (Q8_0's 2-8-token products of long rows
 * choose the ring themselves: matmul.cu's launch_f16.)  ONE: the int8 one-token products,
 * which since session 22's flushes (one warp's, the RoPE table) run faster from registers
 * (k_mmv_2) for Q4_1 too: 7B batch 1 612 -> 658 tok/s (and at session 21's kernels 625 ->
 * 633 already). */
template <int T, bool ONE = false> static int kb_auto_stages(int n_chunks)
{
	return T == QD_TYPE_Q4_1 && n_chunks >= 8 && !ONE ? 2 : 0;
}

template <int T, int RT, bool ROPE, int I8, bool RMS, bool LL>
static int launch_rt(KbCuda *ctx, const KbMmvConfig *c, KbMmvArgs a);

template <int T, int RT, bool ROPE>
static size_t kb_bulk_smem(int nw, int S)
{
	return kb_bulk_ring_off<ROPE>(nw, RT, S) + (size_t)nw * S * KbBulk<T, RT>::BYTES;
}

/* Cache slots of a kernel variant: [row tiles - 1], or 2 for the RoPE epilogue (RT 1). */
template <int RT, bool ROPE> static constexpr int kb_variant()
{
	return ROPE ? 2 : RT - 1;
}

template <int T, int RT, bool ROPE, int I8, bool RMS>
static int launch_bulk(KbCuda *ctx, const KbMmvConfig *c, int S, KbMmvArgs a)
{
	const int nw = c->warps;
	/* a ring too large for a block: fewer slots (every type fits one at 8 warps) */
	while (S > 1 && kb_bulk_smem<T, RT, ROPE>(nw, S) > ctx->smem_optin)
		S--;
	const size_t smem = kb_bulk_smem<T, RT, ROPE>(nw, S);
	if (smem > ctx->smem_optin)
		return launch_rt<T, RT, ROPE, I8, RMS, false>(ctx, c, a);
	a.stages = S;
	uint8_t *set = &ctx->mmv_smem_set[kb_type_slot(T)][kb_variant<RT, ROPE>() + 3 * I8 + 9 * RMS];
	if (!*set) {
		int r = kb_err(cudaFuncSetAttribute(k_mmv_bulk<T, RT, ROPE, I8, RMS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
						    (int)ctx->smem_optin));
		if (r < 0)
			return r;
		*set = 1;
	}
	int grid = a.n_groups;
	if (c->persist) {
		int r = kb_fit_grid(ctx, k_mmv_bulk<T, RT, ROPE, I8, RMS>, nw * 32, smem,
				    &ctx->occ_bulk[kb_type_slot(T)][kb_variant<RT, ROPE>() + 3 * I8 + 9 * RMS][nw][S],
				    c->persist, a.n_groups, &grid);
		if (r < 0)
			return r;
	}
	return kb_launch(ctx, k_mmv_bulk<T, RT, ROPE, I8, RMS>, dim3((unsigned)grid), dim3((unsigned)(nw * 32)), smem, a);
}

#endif
