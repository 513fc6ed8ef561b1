/* kernels/cuda/gemm.cu: products of many tokens (prefill, batches above KB_CUDA_MAX_TOK)
 * on the tensor cores, from the same repacked weights as the decode kernels (layout.cuh).
 *
 * Why another kernel: matmul.cu's decode kernels take at most 8 tokens per pass, so a
 * batch of 64 read every weight 8 times and a 512-token prompt 64 times, and they apply
 * each 32-column block's scale to f32 partial sums per token, which costs as many
 * instructions as the mmas once the weights are reused across tokens.  Here a block
 * multiplies RT row tiles per warp (4 warps) by TB = 8 NT tokens: each weight fragment is
 * decoded once, with its scales folded in (f16: d*q, d*q + m, d*sc*q - dmin*m, ...), and
 * then feeds NT mmas.  Weights and activations of a chunk are staged in shared memory,
 * two stages, so the next chunk's copies run under the current mmas: on sm_90 by the copy
 * engine (cp.async.bulk, a few copies a warp, an mbarrier a stage: mmq_stage_bulk; 7B
 * prefill +6-17% and 70B +10% against cp.async on the H200, bench/NOTES-gpu.md session
 * 34), elsewhere with cp.async, 16 bytes a thread at a time (mmq_stage).
 *
 * Rounding: the weights are f16 after scaling (relative error <= 2^-11; BF16 weights are
 * converted, so values beyond the f16 range would clamp), activations f16 as in the decode
 * path for every type but BF16 (whose decode path keeps activations as bf16 hi + lo), sums
 * in f32.  So a token's results differ from the decode kernels' in the last bits, and
 * with the launch's shape (the weights launched together and the token count decide how
 * its column chunks are grouped, mmq_shares); never with timing (shared row blocks are
 * summed in a fixed order, whichever block finishes last), so a graph replay or a repeat
 * gives the same bits.
 *
 * Grid: x = token blocks (fastest, so that the blocks sharing a row block's weights run
 * together and all but the first read them from L2), y = equal shares of a token block's
 * work, which is gy x n_chunks units (row block of 4 * RT tiles of every weight of the
 * launch, q/k/v or gate/up as one; chunk of columns), row block major: block (x, j) of
 * nb takes the j-th of nb consecutive shares of its U = gy n_chunks units, the first U %
 * nb of them one unit longer (mmq_u0).  With nb = gy each block has one row block; with
 * more (batched decode, where gy alone leaves multiprocessors idle or a last wave half
 * full), the shares cross row blocks, and a row block shared by several blocks is summed
 * by the last of them to finish (mmq_finish). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string.h>

#include "internal.cuh"

#define MMQ_WARPS 4

/* ---- weight fragments with the scales folded in ---- */

KB_HD uint32_t kb_bcast_lo(uint32_t v) { return kb_prmt(v, 0, 0x1010); }
KB_HD uint32_t kb_bcast_hi(uint32_t v) { return kb_prmt(v, 0, 0x3232); }

__device__ __forceinline__ uint32_t kb_h2(float lo, float hi)
{
	const __half2 h = __floats2half2_rn(lo, hi);
	return *(const uint32_t *)&h;
}

/* v clamped to the f16 range; NaN stays NaN (both comparisons are false), as in kb_act_put */
__device__ __forceinline__ float kb_clamp_h(float v)
{
	return v > 65504.f ? 65504.f : (v < -65504.f ? -65504.f : v);
}

#define KB_H2_NEG0 0x80008000u /* a * b + (-0) = a * b exactly */

/* a = the A registers of mma m of the chunk as f16 weights: rows g (a[0], a[2]) and g+8
 * (a[1], a[3]) scaled by their own block's factors. */
template <int T> __device__ __forceinline__ void kb_frag_a_w(const KbWRegs<T> *w, int m, uint32_t a[4])
{
	if constexpr (T == QD_TYPE_BF16) {
		const uint4 v = w->q[m][0];
		const uint32_t r[4] = { v.x, v.y, v.z, v.w };
		KB_UNROLL
		for (int k = 0; k < 4; k++) {
			const float2 f = __bfloat1622float2(*(const __nv_bfloat162 *)&r[k]);
			a[k] = kb_h2(f.x, f.y);
		}
		return;
	}
	kb_frag_a<T>(w, m, a);
	uint32_t s0 = 0x3c003c00u, s1 = 0x3c003c00u; /* row g, row g+8: a * s + n */
	uint32_t n0 = KB_H2_NEG0, n1 = KB_H2_NEG0;
	if constexpr (T == QD_TYPE_F16) {
		return;
	} else if constexpr (T == QD_TYPE_Q4_0 || T == QD_TYPE_Q4_1) {
		const int p = m / 4, b = (m % 4) / 2;
		const uint4 s = w->s[p];
		const uint32_t dv = b == 0 ? s.x : s.y;
		s0 = kb_bcast_lo(dv);
		s1 = kb_bcast_hi(dv);
		if constexpr (T == QD_TYPE_Q4_1) {
			const uint32_t mv = b == 0 ? s.z : s.w;
			n0 = kb_bcast_lo(mv);
			n1 = kb_bcast_hi(mv);
		}
	} else if constexpr (T == QD_TYPE_Q8_0 || T == KB_TYPE_Q8_0_F16) {
		const uint32_t dv = w->s[m / 2].x;
		s0 = kb_bcast_lo(dv);
		s1 = kb_bcast_hi(dv);
	} else if constexpr (T == QD_TYPE_Q4_K) {
		int sc0, mn0, sc1, mn1;
		const int j = m / 2;
		kb_q4k_scale(w->d[0], j, &sc0, &mn0);
		kb_q4k_scale(w->d[1], j, &sc1, &mn1);
		const float f0 = kb_f16lo(w->d[0].x) * (float)sc0, g0 = -kb_f16hi(w->d[0].x) * (float)mn0;
		const float f1 = kb_f16lo(w->d[1].x) * (float)sc1, g1 = -kb_f16hi(w->d[1].x) * (float)mn1;
		s0 = kb_h2(f0, f0);
		s1 = kb_h2(f1, f1);
		n0 = kb_h2(g0, g0);
		n1 = kb_h2(g1, g1);
	} else { /* Q6_K: m is the 16-column sub-block; packet m/8, sub-block m%8 in it */
		const int p = m / 8, k = m % 8;
		const uint4 s = w->s[p];
		const float f0 = kb_f16lo(w->d[0].x) * kb_s8f(k < 4 ? s.x : s.y, k % 4);
		const float f1 = kb_f16hi(w->d[0].x) * kb_s8f(k < 4 ? s.z : s.w, k % 4);
		s0 = kb_h2(f0, f0);
		s1 = kb_h2(f1, f1);
	}
	a[0] = kb_h2fma(a[0], s0, n0);
	a[2] = kb_h2fma(a[2], s0, n0);
	a[1] = kb_h2fma(a[1], s1, n1);
	a[3] = kb_h2fma(a[3], s1, n1);
}

/* kb_load_w from a tile chunk staged in shared memory (same byte layout, chunk 0). */
template <int T> __device__ __forceinline__ void kb_load_w_sm(const uint8_t *q, const uint8_t *s, const uint8_t *d,
							     int lane, KbWRegs<T> *w)
{
	typedef Lay<T> L;
	const int g = lane >> 2;
	KB_UNROLL
	for (int p = 0; p < L::CPK; p++) {
		KB_UNROLL
		for (int v = 0; v < L::QV; v++)
			w->q[p][v] = *(const uint4 *)(q + ((p * L::QV + v) * 32 + lane) * 16);
		const uint8_t *sp = s + (p * 8 + g) * L::SB;
		if constexpr (L::SB == 16)
			w->s[p] = *(const uint4 *)sp;
		else if constexpr (L::SB == 8) {
			const uint2 v = *(const uint2 *)sp;
			w->s[p].x = v.x;
			w->s[p].y = v.y;
		} else if constexpr (L::SB == 4)
			w->s[p].x = *(const uint32_t *)sp;
	}
	if constexpr (L::DB == 32) {
		w->d[0] = *(const uint4 *)(d + g * 32);
		w->d[1] = *(const uint4 *)(d + g * 32 + 16);
	} else if constexpr (L::DB == 4) {
		w->d[0].x = *(const uint32_t *)(d + g * 4);
	}
}

/* ---- cp.async ---- */

/* 16 bytes global -> shared (a shared-space address), zeros where !on */
__device__ __forceinline__ void kb_cp16s(uint32_t dst, const void *src, bool on)
{
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(on ? 16 : 0) : "memory");
}
__device__ __forceinline__ void kb_cp_commit(void) { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void kb_cp_wait(void)
{
	asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

/* ---- the product ---- */

/* One weight of a launch: grid rows [y0, y1) are its row blocks. */
typedef struct {
	const uint8_t *q, *s, *d;
	int64_t n_tiles, rows;
	float *y; /* [n][rows] */
	int y0, y1;
} KbMmqSeg;

typedef struct {
	KbMmqSeg seg[KB_CUDA_MMV_MAX_W];
	int nseg;
	int64_t q_tile, s_tile, d_tile; /* equal for all: same type and cols */
	int n_chunks, n, acc, gy;       /* gy: row blocks of all the weights */
	int sl, sr;        /* shares: the first sr blocks of a token block take sl + 1 units, the rest sl */
	const uint16_t *x; /* f16, permuted as the decode activations: [n][ldx], or chunk by
			    * chunk where the kernel stages with bulk copies (mmq_xo) */
	int64_t ldx;
	float *part;       /* nb > gy: [grid x][nb][2][tile values], the partial sums of a
			    * block's first and last row block */
	unsigned *cnt;     /* nb > gy: [grid x][gy], blocks done with their share of a row
			    * block (reset by the last) */
} KbMmqArgs;

template <int T> struct MmqGeo {
	typedef Lay<T> L;
	static constexpr int QB = L::CPK * L::QV * 512, SBY = L::CPK * 8 * L::SB, DBY = 8 * L::DB;
	static constexpr int WB = QB + SBY + DBY;  /* one tile's chunk */
	static constexpr int XR = L::CC * 2 + 16; /* one token's chunk, padded against bank conflicts */
};

template <int T, int RT, int NT>
static constexpr size_t mmq_smem(void)
{
	return (size_t)2 * (MMQ_WARPS * RT * MmqGeo<T>::WB + NT * 8 * MmqGeo<T>::XR);
}

/* Copies one region (q, s or d) of the block's tiles for one chunk: P 16-byte pieces a
 * tile, from base (the region at the block's first tile and this chunk) + tile *
 * tile_bytes, to dst (a shared address) + tile * WB.  P and the thread count are
 * constants, so a piece's tile and offset cost a multiply-shift, and its offset within the
 * block's tiles is 32 bits: the divisions, region branches and 64-bit products this
 * replaced were ~40% of the staging's instructions (ncu, 7B prefill). */
template <int P, int TILES, int WB>
__device__ __forceinline__ void mmq_stage_region(const uint8_t *base, uint32_t tile_bytes, int tiles_left,
						 uint32_t dst)
{
	constexpr int N = TILES * P, NTH = MMQ_WARPS * 32;
	KB_UNROLL
	for (int j = 0; j < (N + NTH - 1) / NTH; j++) {
		const int i = (int)threadIdx.x + j * NTH;
		if (N % NTH == 0 || i < N) {
			const int tl = i / P, k = (i % P) * 16;
			const bool on = tl < tiles_left;
			kb_cp16s(dst + tl * WB + k, base + (on ? (uint32_t)tl * tile_bytes + k : 0u), on);
		}
	}
}

/* The weight of the launch that row block by belongs to, and the row block's first tile in it. */
template <int RT>
__device__ __forceinline__ const KbMmqSeg &mmq_seg(const KbMmqArgs &a, int by, int64_t *tile0)
{
	const int si = a.nseg > 1 && by >= a.seg[0].y1 ? (a.nseg > 2 && by >= a.seg[1].y1 ? 2 : 1) : 0;
	const KbMmqSeg &sg = si == 0 ? a.seg[0] : si == 1 ? a.seg[1] : a.seg[2];
	*tile0 = (int64_t)(by - sg.y0) * MMQ_WARPS * RT;
	return sg;
}

/* Row block by's tiles: where each region's start at chunk 0, and how many (at most 4 RT;
 * fewer in a weight's last row block).  Worked out once a row block, so that a chunk's
 * staging only adds its offset (what the per-chunk integer work costs: session 5). */
struct MmqRb {
	const uint8_t *q, *s, *d;
	int left;
};

template <int RT>
__device__ __forceinline__ MmqRb mmq_rb(const KbMmqArgs &a, int by)
{
	constexpr int TILES = MMQ_WARPS * RT;
	int64_t tile0;
	const KbMmqSeg &sg = mmq_seg<RT>(a, by, &tile0);
	MmqRb r;
	r.q = sg.q + tile0 * a.q_tile;
	r.s = sg.s + tile0 * a.s_tile;
	r.d = sg.d + tile0 * a.d_tile;
	r.left = (int)(sg.n_tiles - tile0 < TILES ? sg.n_tiles - tile0 : TILES);
	return r;
}

/* The activations as k_mmq_x leaves them for the bulk-copy kernel: chunk by chunk, and
 * in a chunk token by token, each token's CC columns padded to G::XR bytes as they sit in
 * a stage, so that a token block's chunk is one contiguous piece (one bulk copy,
 * mmq_stage_bulk).  Token tok's chunk ch.  (The cp.async kernel reads rows of ldx: with
 * this layout it ran 4-7% slower on the H200, its Q4_K instance spilling.) */
template <int T> __device__ __forceinline__ const uint16_t *mmq_xo(const KbMmqArgs &a, int ch, int tok)
{
	return a.x + ((int64_t)ch * a.n + tok) * (MmqGeo<T>::XR / 2);
}

/* Stages chunk ch of row block rb (and of the block's tokens) into st. */
template <int T, int RT, int NT>
__device__ __forceinline__ void mmq_stage(const KbMmqArgs &a, const MmqRb &rb, int ch, uint32_t st, int tok0)
{
	typedef Lay<T> L;
	typedef MmqGeo<T> G;
	constexpr int TILES = MMQ_WARPS * RT, XP = L::CC * 2 / 16, NTH = MMQ_WARPS * 32;
	mmq_stage_region<G::QB / 16, TILES, G::WB>(rb.q + (int64_t)ch * G::QB, (uint32_t)a.q_tile, rb.left, st);
	if constexpr (G::SBY > 0)
		mmq_stage_region<G::SBY / 16, TILES, G::WB>(rb.s + (int64_t)ch * G::SBY, (uint32_t)a.s_tile, rb.left,
							    st + G::QB);
	if constexpr (G::DBY > 0)
		mmq_stage_region<G::DBY / 16, TILES, G::WB>(rb.d + (int64_t)ch * G::DBY, (uint32_t)a.d_tile, rb.left,
							    st + G::QB + G::SBY);
	/* activations: piece j of thread t is token t / XP + j NTH / XP, 16 bytes t % XP */
	static_assert(NT * 8 * XP % NTH == 0 && NTH % XP == 0, "whole rounds of activation pieces");
	const uint16_t *xb = a.x + (int64_t)tok0 * a.ldx + (int64_t)ch * L::CC;
	const int r0 = (int)threadIdx.x / XP, k = (int)threadIdx.x % XP, n_left = a.n - tok0;
	const uint32_t sx = st + TILES * G::WB + r0 * G::XR + k * 16;
	KB_UNROLL
	for (int j = 0; j < NT * 8 * XP / NTH; j++) {
		const int r = r0 + j * (NTH / XP);
		const bool on = r < n_left;
		kb_cp16s(sx + j * (NTH / XP) * G::XR, xb + (on ? (uint32_t)r * (uint32_t)a.ldx + k * 8 : 0u), on);
	}
}

/* Where the copy engine stages the chunks (sm_90 builds; QD_DEV_MMQ_CPASYNC keeps the
 * per-thread cp.async of mmq_stage there too, for A/B timings): mmq_stage's ~25 copies a
 * thread and their addresses (~330 instructions a chunk and warp, a third of a warp's
 * instructions beside its 256 HMMA: SASS of k_mmq<Q4_0, 2, 8>) become at most 1 + 3 RT
 * bulk copies a warp, issued by its lane 0, with an mbarrier a stage that completes when
 * their bytes have landed. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(QD_DEV_MMQ_CPASYNC)
#define MMQ_BULK 1
#else
#define MMQ_BULK 0
#endif

#if MMQ_BULK
/* Every warp's lane 0: its share of staging chunk ch of row block rb into st, as
 * mmq_stage does: the warp's own RT tiles, and warp 0's also the tokens' chunk (one
 * piece, mmq_xo); each warp's arrival at bar (MMQ_WARPS of them a phase) announces its
 * bytes before it asks for them.  Tiles past the row block's end and tokens past the
 * launch's are left as they are, not zeroed: their sums land only in rows and tokens that
 * mmq_finish does not store. */
template <int T, int RT, int NT>
__device__ __forceinline__ void mmq_stage_bulk(const KbMmqArgs &a, const MmqRb &rb, int ch, uint32_t st, int tok0,
					       uint32_t bar, int warp)
{
	typedef MmqGeo<T> G;
	constexpr int TILES = MMQ_WARPS * RT;
	static_assert(G::QB % 16 == 0 && G::SBY % 16 == 0 && G::DBY % 16 == 0 && G::XR % 16 == 0,
		      "bulk copies move 16-byte units");
	const int n_tok = a.n - tok0 < NT * 8 ? a.n - tok0 : NT * 8;
	const int tiles = rb.left - warp * RT < 0 ? 0 : rb.left - warp * RT < RT ? rb.left - warp * RT : RT;
	kb_mbar_expect(bar, (uint32_t)tiles * G::WB + (warp == 0 ? (uint32_t)n_tok * G::XR : 0u));
	if (warp == 0)
		kb_bulk_copy(st + TILES * G::WB, mmq_xo<T>(a, ch, tok0), (uint32_t)n_tok * G::XR, bar);
	KB_UNROLL
	for (int rt = 0; rt < RT; rt++) {
		const int t = warp * RT + rt;
		if (t < rb.left) {
			const uint32_t dt = st + (uint32_t)t * G::WB;
			kb_bulk_copy(dt, rb.q + (int64_t)ch * G::QB + (int64_t)t * a.q_tile, G::QB, bar);
			if constexpr (G::SBY > 0)
				kb_bulk_copy(dt + G::QB, rb.s + (int64_t)ch * G::SBY + (int64_t)t * a.s_tile, G::SBY, bar);
			if constexpr (G::DBY > 0)
				kb_bulk_copy(dt + G::QB + G::SBY, rb.d + (int64_t)ch * G::DBY + (int64_t)t * a.d_tile,
					     G::DBY, bar);
		}
	}
}
#endif

/* The values of a block tile, and where lane's acc[rt][nt][c] of warp sits among them in a
 * partial tile: lane-major, so that a warp's stores and loads coalesce. */
template <int RT, int NT> struct MmqTile {
	static constexpr int TV = MMQ_WARPS * RT * NT * 4 * 32;
	static __device__ __forceinline__ int idx(int warp, int lane, int rt, int nt, int c)
	{
		return (((warp * RT + rt) * NT + nt) * 4 + c) * 32 + lane;
	}
};

/* Where share j begins, and which share holds unit u. */
__device__ __forceinline__ int mmq_u0(const KbMmqArgs &a, int j)
{
	return j * a.sl + (j < a.sr ? j : a.sr);
}
__device__ __forceinline__ int mmq_share_of(const KbMmqArgs &a, int u)
{
	const int long_end = a.sr * (a.sl + 1);
	return u < long_end ? u / (a.sl + 1) : a.sr + (u - long_end) / a.sl;
}

/* Row block by's sums, from units [us, ue) of the block's share (first: the share's first
 * row block), leave the block: added to y if the block holds all of the row block's
 * units; else left as partial sums (slot 0 for the block's first row block, 1 for its
 * last: a block shares at most those two), and the last of the row block's blocks to do
 * so adds them up in block order, so the bits do not depend on which finishes last, then
 * adds them to y.  Block-uniform. */
template <int T, int RT, int NT>
__device__ __forceinline__ void mmq_finish(const KbMmqArgs &a, float (&acc)[RT][NT][4], int by, int us, int ue,
					   bool first, int tok0, int *last)
{
	typedef MmqTile<RT, NT> P;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
	const int nb = gridDim.y, r0 = by * a.n_chunks, r1 = r0 + a.n_chunks;
	if (us != r0 || ue != r1) {
		/* slot s of share j: part + ((x nb + j) 2 + s) TV; this lane's values at
		 * constant offsets from its first (P::idx) */
		const float *const part = a.part + ((int64_t)blockIdx.x * nb * 2 * P::TV + P::idx(warp, lane, 0, 0, 0));
		float *pp = (float *)part + (int64_t)(blockIdx.y * 2 + (first ? 0 : 1)) * P::TV;
		KB_UNROLL
		for (int rt = 0; rt < RT; rt++)
			KB_UNROLL
			for (int nt = 0; nt < NT; nt++)
				KB_UNROLL
				for (int c = 0; c < 4; c++)
					pp[P::idx(0, 0, rt, nt, c)] = acc[rt][nt][c];
		/* the shares holding units of the row block: those of its first and last unit
		 * and all between */
		const int jf = mmq_share_of(a, r0), jl = mmq_share_of(a, r1 - 1);
		__threadfence();
		__syncthreads();
		if (threadIdx.x == 0) {
			unsigned *c = a.cnt + (int64_t)blockIdx.x * a.gy + by;
			*last = atomicAdd(c, 1u) == (unsigned)(jl - jf);
			if (*last)
				*c = 0; /* ready for the next launch (graph replays too) */
		}
		__syncthreads();
		if (!*last)
			return;
		__threadfence();
		/* blocks outermost, so that a block's loads are all in flight together; each
		 * value's sum still runs in block order */
		KB_UNROLL
		for (int rt = 0; rt < RT; rt++)
			KB_UNROLL
			for (int nt = 0; nt < NT; nt++)
				acc[rt][nt][0] = acc[rt][nt][1] = acc[rt][nt][2] = acc[rt][nt][3] = 0.f;
		for (int jj = jf; jj <= jl; jj++) {
			/* the row block is jj's first unless jj started before it */
			const float *pz = part + (int64_t)(jj * 2 + (mmq_u0(a, jj) >= r0 ? 0 : 1)) * P::TV;
			KB_UNROLL
			for (int rt = 0; rt < RT; rt++)
				KB_UNROLL
				for (int nt = 0; nt < NT; nt++)
					KB_UNROLL
					for (int c = 0; c < 4; c++)
						acc[rt][nt][c] += __ldcg(pz + P::idx(0, 0, rt, nt, c));
		}
	}
	int64_t tile0;
	const KbMmqSeg &sg = mmq_seg<RT>(a, by, &tile0);
	const int64_t wtile = tile0 + warp * RT;
	if (wtile >= sg.n_tiles)
		return;
	/* the sums added to y: every old value is loaded before any store, so the loads'
	 * latencies overlap (stores to y could alias the loads, so the compiler would not
	 * reorder them itself: one L2 round trip per value) */
	float *const yb = sg.y;
	const int64_t rows = sg.rows;
	auto yoff = [&](int rt, int nt, int c, bool *in) {
		const int64_t row = (wtile + rt) * 16 + g + 8 * (c >> 1);
		const int tok = tok0 + nt * 8 + 2 * tq + (c & 1);
		*in = row < rows && tok < a.n;
		return (int64_t)tok * rows + row;
	};
	/* f(value, its offset in y) for each of the lane's values inside y */
	auto each = [&](auto &&f) {
		KB_UNROLL
		for (int rt = 0; rt < RT; rt++)
			KB_UNROLL
			for (int nt = 0; nt < NT; nt++)
				KB_UNROLL
				for (int c = 0; c < 4; c++) {
					bool in;
					const int64_t o = yoff(rt, nt, c, &in);
					if (in)
						f(acc[rt][nt][c], o);
				}
	};
	if (a.acc)
		each([&](float &v, int64_t o) { v += __ldcg(yb + o); });
	each([&](float &v, int64_t o) { yb[o] = v; });
}

/* Block (x, j): tokens [8 NT x, ...) (8 NT of them) and its share of their units (the grid,
 * above), a row block at a time and in it a chunk at a time through two stages: the next
 * chunk is copied in while this one's mmas run, across row blocks too. */
template <int T, int RT, int NT>
__global__ void __launch_bounds__(MMQ_WARPS * 32) k_mmq(const KbMmqArgs a)
{
	typedef Lay<T> L;
	typedef MmqGeo<T> G;
	extern __shared__ __align__(16) uint8_t kb_sm[];
	__shared__ int last;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
	const int tok0 = blockIdx.x * NT * 8, nc = a.n_chunks;
	const int u0 = mmq_u0(a, blockIdx.y), u1 = u0 + a.sl + ((int)blockIdx.y < a.sr);
	constexpr size_t STAGE = MMQ_WARPS * RT * G::WB + NT * 8 * G::XR;
	const uint32_t sm0 = (uint32_t)__cvta_generic_to_shared(kb_sm);
#if MMQ_BULK
	__shared__ __align__(8) uint64_t bars[2]; /* stage b's: complete when its copies have landed */
	const uint32_t bar0 = kb_smem_u32(&bars[0]);
	if (threadIdx.x == 0) {
		kb_mbar_init(bar0, MMQ_WARPS);
		kb_mbar_init(bar0 + 8, MMQ_WARPS);
		asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
	}
	__syncthreads();
	unsigned it = 0; /* chunks consumed: stage it & 1, its phase (it >> 1) & 1 */
#endif
	kb_pdl_trigger();
	kb_pdl_wait();

	float acc[RT][NT][4];
	KB_UNROLL
	for (int rt = 0; rt < RT; rt++)
		KB_UNROLL
		for (int nt = 0; nt < NT; nt++)
			acc[rt][nt][0] = acc[rt][nt][1] = acc[rt][nt][2] = acc[rt][nt][3] = 0.f;

	int by = u0 / nc, ch0 = u0 % nc, b = 0;
	bool first = true;
	MmqRb rb = mmq_rb<RT>(a, by);
#if MMQ_BULK
	if (u0 < u1 && lane == 0)
		mmq_stage_bulk<T, RT, NT>(a, rb, ch0, sm0, tok0, bar0, warp);
#else
	if (u0 < u1)
		mmq_stage<T, RT, NT>(a, rb, ch0, sm0, tok0);
	kb_cp_commit();
#endif
	for (int u = u0; u < u1; by++, ch0 = 0, first = false) {
		/* row block by, chunks [ch0, ch1); then the next row block, if any, from chunk 0 */
		const int ch1 = u1 - u < nc - ch0 ? ch0 + (u1 - u) : nc;
		const bool more = u + (ch1 - ch0) < u1;
		for (int ch = ch0; ch < ch1; ch++, b ^= 1) {
#if MMQ_BULK
			/* stage b ^ 1 was last read before the previous chunk's closing barrier */
			if (lane == 0) {
				const uint32_t nb = sm0 + (b ^ 1) * (uint32_t)STAGE, nbar = bar0 + 8 * (b ^ 1);
				if (ch + 1 < ch1)
					mmq_stage_bulk<T, RT, NT>(a, rb, ch + 1, nb, tok0, nbar, warp);
				else if (more)
					mmq_stage_bulk<T, RT, NT>(a, mmq_rb<RT>(a, by + 1), 0, nb, tok0, nbar, warp);
			}
			kb_mbar_wait(bar0 + 8 * b, (it >> 1) & 1u);
			it++;
#else
			if (ch + 1 < ch1)
				mmq_stage<T, RT, NT>(a, rb, ch + 1, sm0 + (b ^ 1) * (uint32_t)STAGE, tok0);
			else if (more)
				mmq_stage<T, RT, NT>(a, mmq_rb<RT>(a, by + 1), 0, sm0 + (b ^ 1) * (uint32_t)STAGE, tok0);
			kb_cp_commit();
			kb_cp_wait<1>();
			__syncthreads();
#endif
			const uint8_t *st = kb_sm + b * STAGE;
			if (warp * RT < rb.left) {
				KbWRegs<T> w[RT];
				KB_UNROLL
				for (int rt = 0; rt < RT; rt++) {
					const uint8_t *tb = st + (warp * RT + rt) * G::WB;
					kb_load_w_sm<T>(tb, tb + G::QB, tb + G::QB + G::SBY, lane, &w[rt]);
				}
				const uint8_t *sx = st + MMQ_WARPS * RT * G::WB + g * G::XR + tq * 32;
				/* four mmas (64 columns) at a time: their B words are 32 contiguous bytes */
				KB_UNROLL
				for (int mg = 0; mg < L::NM / 4; mg++) {
					uint32_t fa[RT][4][4];
					KB_UNROLL
					for (int rt = 0; rt < RT; rt++)
						KB_UNROLL
						for (int i = 0; i < 4; i++)
							kb_frag_a_w<T>(&w[rt], 4 * mg + i, fa[rt][i]);
					KB_UNROLL
					for (int nt = 0; nt < NT; nt++) {
						const uint8_t *bp = sx + nt * 8 * G::XR + mg * 128;
						const uint4 b0 = *(const uint4 *)bp, b1 = *(const uint4 *)(bp + 16);
						const uint32_t bw[8] = { b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w };
						KB_UNROLL
						for (int i = 0; i < 4; i++)
							KB_UNROLL
							for (int rt = 0; rt < RT; rt++)
								kb_mma_f16(acc[rt][nt], fa[rt][i], bw[2 * i], bw[2 * i + 1]);
					}
				}
			}
#if MMQ_BULK
			/* this thread's reads of stage b (generic proxy) before the copies that refill
			 * it (async proxy) */
			asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
			__syncthreads();
		}
		mmq_finish<T, RT, NT>(a, acc, by, u, u + (ch1 - ch0), first, tok0, &last);
		u += ch1 - ch0;
		if (more)
			rb = mmq_rb<RT>(a, by + 1);
		KB_UNROLL
		for (int rt = 0; rt < RT; rt++)
			KB_UNROLL
			for (int nt = 0; nt < NT; nt++)
				acc[rt][nt][0] = acc[rt][nt][1] = acc[rt][nt][2] = acc[rt][nt][3] = 0.f;
	}
}

/* x (f32 [n][ldx], cols a multiple of 4) -> f16 in the decode activations' column order
 * (layout.cuh: x[64q + 16i + 4tq + j] at 64q + 16tq + 4i + j), padded with zeros to ldo
 * columns: rows of ldo (CC 0), or in mmq_xo's order for chunks of CC columns (token t's
 * chunk ch at (ch n + t) (CC + 8)).  A thread takes one (token, 64-column group, tq):
 * four float4 loads, two 16-byte stores; few wide blocks, since launching a block per 64
 * values cost more than the conversion itself. */
template <int CC>
__global__ void __launch_bounds__(256) k_mmq_x(const float *x, int64_t ldx, int64_t cols, uint16_t *xo, int64_t ldo,
					       int64_t units, int n)
{
	kb_pdl_trigger();
	kb_pdl_wait();
	const int64_t per_tok = ldo / 16;
	for (int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; u < units; u += (int64_t)gridDim.x * blockDim.x) {
		const int64_t t = u / per_tok, r = u % per_tok, q = r >> 2;
		const int tq = (int)(r & 3);
		uint32_t h[8];
		KB_UNROLL
		for (int i = 0; i < 4; i++) {
			const int64_t c = 64 * q + 16 * i + 4 * tq;
			float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
			if (c < cols)
				v = *(const float4 *)(x + t * ldx + c);
			h[2 * i] = kb_h2(kb_clamp_h(v.x), kb_clamp_h(v.y));
			h[2 * i + 1] = kb_h2(kb_clamp_h(v.z), kb_clamp_h(v.w));
		}
		uint4 *o;
		if constexpr (CC == 0) {
			o = (uint4 *)(xo + t * ldo + 64 * q + 16 * tq);
		} else {
			const int64_t ch = 64 * q / CC;
			o = (uint4 *)(xo + (ch * n + t) * (CC + 8) + (64 * q - ch * CC) + 16 * tq);
		}
		o[0] = make_uint4(h[0], h[1], h[2], h[3]);
		o[1] = make_uint4(h[4], h[5], h[6], h[7]);
	}
}

/* The scratch of shared row blocks, allocated once at its first use (so that recorded
 * graphs stay valid): partial sums for 8 tiles of 32 KB a multiprocessor (4 blocks of 64
 * tokens with both their slots: two waves at the 2 that fit; launches that would need
 * more keep fewer shares, mmq_shares) and a counter a block tile. */
#define MMQ_PART_FLOATS(ctx) ((size_t)2 * 4 * (ctx)->sm_count * 8192)
#define MMQ_CNT(ctx) ((size_t)8 * (ctx)->sm_count)

/* How a launch's blocks share its units (the grid, above).  With nb = gy every block has
 * one row block.  Where gx * gy blocks would fill at most ctx->mmq_max_waves waves of the
 * multiprocessors (occupancy from the kernel's registers and shared memory), and less
 * than 90% of them, nb is raised to fill whole waves (at least one) with equal shares,
 * each at least ctx->mmq_min_units units long and all partial sums fitting the scratch:
 * batched decode, whose row blocks alone left most multiprocessors with one block or a
 * last wave half empty.  Depends only on the shape, so a launch is always shared alike.
 * (The fixed column splits this replaced, H200 7B Q4_0: 64 sequences 9,150 -> 9,830
 * tok/s; bench/NOTES-gpu.md, session 10.) */
static int64_t mmq_shares(const KbCuda *ctx, int occ, int64_t gx, int64_t gy, int64_t n_chunks, size_t tv)
{
	const int64_t blocks = gx * gy, U = gy * n_chunks;
	const int64_t slots = (int64_t)occ * ctx->sm_count, waves = (blocks + slots - 1) / slots; /* >= 1 */
	/* whole row blocks already fill 90% of their waves (prefill): sharing them would only
	 * add partial sums (7B o at 512 tokens, 256 blocks on 264 places: +27% time) */
	if (waves > ctx->mmq_max_waves || blocks > (int64_t)MMQ_CNT(ctx) || blocks * 10 >= waves * slots * 9)
		return gy;
	int64_t nb = waves * slots / gx;
	const int64_t by_len = U / ctx->mmq_min_units; /* >= 1: kb_cuda_set_mmq_shares */
	const int64_t by_room = (int64_t)(MMQ_PART_FLOATS(ctx) / (2 * tv)) / gx;
	if (nb > by_len)
		nb = by_len;
	if (nb > by_room)
		nb = by_room;
	if (nb > 65535)
		nb = 65535;
	return nb > gy ? nb : gy;
}

template <int T, int RT, int NT>
static int mmq_launch(KbCuda *ctx, int nw, const KbCudaWeight *const *w, const uint16_t *xh, int64_t ldx, int n,
		      float *const *y, int acc)
{
	KbMmqArgs a;
	memset(&a, 0, sizeof(a));
	int gy = 0;
	for (int i = 0; i < nw; i++) {
		KbMmqSeg *sg = &a.seg[i];
		sg->q = w[i]->q;
		sg->s = w[i]->s;
		sg->d = w[i]->d;
		sg->n_tiles = w[i]->n_tiles;
		sg->rows = w[i]->rows;
		sg->y = y[i];
		sg->y0 = gy;
		gy += (int)((w[i]->n_tiles + MMQ_WARPS * RT - 1) / (MMQ_WARPS * RT));
		sg->y1 = gy;
	}
	/* the staging's offsets within a block's tiles are 32 bits (mmq_stage_region): a
	 * tile of ~19M F16 columns would wrap them */
	if ((uint64_t)w[0]->geo.q_tile * MMQ_WARPS * RT > UINT32_MAX)
		return -EINVAL;
	a.nseg = nw;
	a.q_tile = w[0]->geo.q_tile;
	a.s_tile = w[0]->geo.s_tile;
	a.d_tile = w[0]->geo.d_tile;
	a.n_chunks = (int)(w[0]->cols_pad / Lay<T>::CC); /* T's chunks, not the weight type's */
	a.n = n;
	a.acc = acc;
	a.gy = gy;
	a.x = xh;
	a.ldx = ldx;
	const int64_t gx = (n + NT * 8 - 1) / (NT * 8);
	if (gx > 0x7fffffff || gy > 65535 || (int64_t)gy * a.n_chunks > INT32_MAX)
		return -EINVAL; /* the kernel counts a token block's units in 32 bits */
	constexpr size_t smem = mmq_smem<T, RT, NT>();
	/* above 48 KiB needs the opt-in, which is per device: once per context and kernel,
	 * before the occupancy it leaves is asked (mmq_occ 0 until then) */
	static_assert(RT == 2 && (NT == 2 || NT == 4 || NT == 8), "mmq_occ covers these shapes");
	int *occ = &ctx->mmq_occ[kb_type_slot(T)][NT / 4]; /* NT 2, 4, 8: 0, 1, 2 */
	int r = *occ ? 0 : kb_err(cudaFuncSetAttribute(k_mmq<T, RT, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
						       (int)smem));
	if (r == 0)
		r = kb_occupancy(k_mmq<T, RT, NT>, MMQ_WARPS * 32, smem, occ);
	if (r < 0)
		return r;
	constexpr size_t TV = MmqTile<RT, NT>::TV;
	const int64_t nb = mmq_shares(ctx, *occ, gx, gy, a.n_chunks, TV);
	if (nb < 1 || nb > (int64_t)gy * a.n_chunks)
		return -EINVAL; /* every share at least a unit long */
	if (nb > gy) {
		/* room allocated once, for the most any launch may take (mmq_shares), so
		 * recorded graphs stay valid */
		r = kb_cuda_split_scratch(ctx, MMQ_PART_FLOATS(ctx) * sizeof(float), MMQ_CNT(ctx), &ctx->mmq_part,
					  &ctx->mmq_cnt);
		if (r < 0)
			return r;
		if ((size_t)(gx * nb) * 2 * TV > MMQ_PART_FLOATS(ctx) || (size_t)(gx * gy) > MMQ_CNT(ctx))
			return -EINVAL; /* cannot happen with mmq_shares' choice */
		a.part = ctx->mmq_part;
		a.cnt = ctx->mmq_cnt;
	}
	a.sl = (int)((int64_t)gy * a.n_chunks / nb);
	a.sr = (int)((int64_t)gy * a.n_chunks % nb);
	return kb_launch(ctx, k_mmq<T, RT, NT>, dim3((unsigned)gx, (unsigned)nb), dim3(MMQ_WARPS * 32), smem, a);
}

extern "C" int kb_cuda_set_mmq_shares(KbCuda *ctx, int max_waves, int min_units)
{
	if (!ctx || max_waves < 0 || max_waves > 64 || min_units < 1 || min_units > 64)
		return -EINVAL;
	ctx->mmq_max_waves = max_waves;
	ctx->mmq_min_units = min_units;
	return 0;
}

/* Tokens per block by token count: 16 up to 16 (9-16 tokens: a 32-token block spent half
 * its mmas on padding), 32 up to 32, 64 above where the device lets a block have the
 * shared memory (104-119 KiB; sm_86/89 allow 99 KiB, so they stay at 32; every type's
 * 32-token block, at most 86 KiB, fits every device this is built for). */
template <int T>
static int mmq_type(KbCuda *ctx, int nw, const KbCudaWeight *const *w, const uint16_t *xh, int64_t ldx, int n,
		    float *const *y, int acc)
{
	if (n <= 16)
		return mmq_launch<T, 2, 2>(ctx, nw, w, xh, ldx, n, y, acc);
	if (n <= 32 || mmq_smem<T, 2, 8>() + 64 > ctx->smem_optin)
		return mmq_launch<T, 2, 4>(ctx, nw, w, xh, ldx, n, y, acc);
	return mmq_launch<T, 2, 8>(ctx, nw, w, xh, ldx, n, y, acc);
}

/* MMQ_BULK as the device code loaded for this device was built: the initializer is
 * compiled with each architecture's code, so this is the kernel's own choice whatever the
 * device or a JIT compiled it from.  (cudaFuncGetAttributes' ptxVersion is not that: with
 * sm_90a code only, the H200 ran the bulk kernel on rows of ldx, test-backend 98 failures.) */
__device__ int kb_mmq_bulk_built = MMQ_BULK;

extern "C" int kb_cuda_mmq_probe(KbCuda *ctx)
{
	int v = 0;
	const int r = kb_err(cudaMemcpyFromSymbol(&v, kb_mmq_bulk_built, sizeof(v)));
	if (r == 0)
		ctx->mmq_bulk = v;
	return r;
}

extern "C" int kb_cuda_mmq_fits(const float *x, int64_t cols)
{
	return cols % 4 == 0 && (uintptr_t)x % 16 == 0;
}

extern "C" size_t kb_cuda_mmq_scratch(int64_t cols, int n)
{
	if (cols < 1 || n < 1)
		return 0;
	const int64_t pad = (cols + KB_ACT_PAD - 1) / KB_ACT_PAD * KB_ACT_PAD;
	/* mmq_xo's layout: 16 bytes of padding a token and chunk, at most with 64-column chunks */
	return (size_t)n * ((size_t)pad * sizeof(uint16_t) + (size_t)(pad / 64) * 16);
}

extern "C" int kb_cuda_mmq(KbCuda *ctx, int nw, const KbCudaWeight *const *w, const float *x, int n, void *scratch,
			   float *const *y, int acc)
{
	if (!ctx || nw < 1 || nw > KB_CUDA_MMV_MAX_W || !w || !x || n < 1 || !scratch || !y)
		return -EINVAL;
	for (int i = 0; i < nw; i++)
		if (!w[i] || w[i]->ctx != ctx || !y[i] || w[i]->cols != w[0]->cols)
			return -EINVAL;
	const int64_t cols = w[0]->cols, ldo = (cols + KB_ACT_PAD - 1) / KB_ACT_PAD * KB_ACT_PAD;
	uint16_t *xh = (uint16_t *)scratch;
	if (cols % 4 || (uintptr_t)x % 16)
		return -EINVAL; /* the conversion reads float4s (kb_cuda_mmq_fits) */
	const int64_t units = (int64_t)n * (ldo / 16), blocks = (units + 255) / 256;
	const int64_t grid = blocks < 8 * ctx->sm_count ? blocks : 8 * ctx->sm_count;
	if (ctx->mmq_bulk < 0)
		return -EIO; /* kb_cuda_init asks kb_cuda_mmq_probe */
	const int bulk = ctx->mmq_bulk;
	int r = 0;
	/* one launch for weights of one type (q/k/v, gate/up), else one per weight; the
	 * activations converted once, or for the bulk-copy kernel once a chunk width */
	int cc_done = -1, same = 1;
	for (int i = 1; i < nw; i++)
		same &= w[i]->type == w[0]->type;
	for (int i = 0; i < nw && r == 0; i += same ? nw : 1) {
		const int m = same ? nw : 1;
		/* Q8_0 in chunks of 4 packets (kb_f16_type, layout.cuh): its decode chunk of 8
		 * would double the GEMM's shared memory a stage (past sm_86/89's 99 KiB at 32
		 * tokens) and cost it occupancy */
		r = kb_with_product_type(w[i]->type, [&](auto t) {
			constexpr int TF = kb_f16_type<decltype(t)::value>(), CC = Lay<TF>::CC;
			static_assert(KB_ACT_PAD % CC == 0 && CC % 64 == 0, "whole chunks of 64-column groups");
			const int cc = bulk ? CC : 0; /* k_mmq_x's layout: 0 rows of ldo */
			if (cc != cc_done) {
				const int rc = kb_launch(ctx, bulk ? k_mmq_x<CC> : k_mmq_x<0>, dim3((unsigned)grid), dim3(256),
							 0, x, cols, cols, xh, ldo, units, n);
				if (rc < 0)
					return rc;
				cc_done = cc;
			}
			return mmq_type<TF>(ctx, m, w + i, xh, ldo, n, y + i, acc);
		});
	}
	return r;
}
