/* kernels/cuda/matmul.cu: decode matrix-vector products (1..8 tokens) on tensor cores.
 *
 * Work split: the rows form groups of RT tiles of 16 (RT = 1 or 2).  A block owns groups
 * b, b + grid, ... (persistent: by default only as many blocks as fit at once); its warps
 * take each group's chunks in turn (warp w: chunks w, w + nw, ...) and keep per-lane f32
 * partial sums in the mma C layout, which meet in shared memory at the end of a group.
 * A warp walks its (group, chunk) items with two register stages: the next item's weight
 * loads are in flight while it decodes the current one.  With programmatic dependent
 * launch the first two items' weights (both register stages) are requested before
 * waiting for the previous kernel, since weights never depend on it; only the activations
 * do.  The walk and the flush (with the RoPE, norm and SwiGLU epilogues) are in
 * matmul_walk.cuh; this file has the kernels, their launches and the API.
 *
 * Where the time goes (H200, Nsight Compute, Q4_0 11008x4096, 1 token): DRAM at 42% of
 * peak, each scheduler issuing every 2.2 cycles with 3.7 resident warps (127 registers),
 * 8 cycles between a warp's instructions, a third of them waiting for global loads.
 * The quantized paths are bound by dependency latency inside each item (decode -> mma ->
 * scale) at low occupancy, not by bandwidth: deeper pipelines (cp.async stages,
 * activations loaded an item ahead, the bulk-copy ring of matmul_bulk.cuh) and a third
 * fewer instructions per item (an item cursor) were measured and did not move Q4_0
 * (bench/NOTES-gpu.md, sessions 2 and 3).  The bulk-copy variant is the default for Q4_1,
 * where it wins by occupancy (kb_auto_stages).  The q/k/v product may carry RoPE and the
 * KV-cache stores in its flush (kb_rope_epilogue, its own kernel instances). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <string.h>

#include "internal.cuh"

/* ---- products ---- */

/* One weight of a product launch: the launch's row groups [g0, g1) are its groups. */
typedef struct {
	const uint8_t *q, *s, *d; /* regions, tile 0 */
	int64_t rows, ldy;
	float *y;
	int g0, g1;
} KbMmvSeg;

/* The q/k/v product's epilogue (KbCudaRope): RoPE on the q and k rows and the KV-cache
 * stores of k and v, done where the flush has each row pair's sums (rope_kv_store's
 * arithmetic, so the same bits as the two launches). */
typedef struct {
	const int32_t *pos, *seq;
	__half *kc, *vc;
	int64_t stride;
	int hd, rot_dim, kvd;
	float theta_scale;
	/* one token: the rows also to ll (KbCudaLL; NULL: not), q's at 0, k's at nq, v's at
	 * nq + kvd, tagged (*serial << 8) | layer */
	unsigned long long *ll;
	const uint32_t *serial;
	int layer, nq;
} KbMmvRope;

/* The residual product's epilogue that starts the next RMSNorm (k_mmv_norm): each 32-row
 * group's new rows y (after the add) go to y as usual, their sum of squares (double, per
 * token) to part[token][group], and y * g into the activation planes o, so the products
 * that read the norm's output need no norm kernel: they scale their sums by the row's
 * 1 / rms instead (KbMmvRms). */
typedef struct {
	const float *g; /* the norm's weights */
	double *part;   /* [KB_MAX_TOK][nb] */
	KbActOut o;
	int nb;         /* 32-row groups of the row: rows / 32 */
} KbMmvNorm;

/* Activations that hold y * g rather than the norm's output (KbCudaAct.rms): the flush
 * multiplies a token's sums by 1 / sqrt(sum(part) / dim + eps), the CPU's formula. */
typedef struct {
	const double *part;
	int nb, dim, on;
	float eps;
} KbMmvRms;

typedef struct {
	KbMmvSeg seg[KB_CUDA_MMV_MAX_W];
	int nseg;
	int64_t q_tile, s_tile, d_tile; /* bytes per tile (equal for all: same type and cols) */
	int n_chunks, n_groups, prefetch, acc;
	int stages; /* k_mmv_bulk: ring slots per warp */
	KbActView x;
	KbMmvRope rope; /* k_mmv<..., true>: segments 0, 1, 2 = q, k, v (k_mmv_pair: from si0 on) */
	KbMmvNorm nrm;  /* k_mmv_norm */
	KbMmvRms rms;
	KbActOut swo;   /* k_mmv_swi: the planes of silu(gate) * up */
	/* k_mmv_pair: blocks blk0..blk0+nblk-1 of the launch walk these groups (kb_blk), their
	 * segment 0 is q (si0 0), k (1) or v (2) (last, so the other kernels' arguments keep
	 * their places) */
	int blk0, nblk, si0;
} KbMmvArgs;

/* Shared memory of the products after the reduction slots ([2][warps][RT][32] float4):
 * the tokens' 1 / rms (KbMmvRms), then for k_mmv_norm of 2-8 tokens the group's new rows,
 * two buffers (one token's flush, and k_mmv_swi's, which is always one token's, read the
 * slots directly: kb_flush), for the RoPE epilogue KbRopeSm. */
#define KB_RMS_SM_BYTES 32
#define KB_NORM_SM_BYTES (2 * KB_MAX_TOK * 32 * 4)

/* The reduction slots: two of [warps NW][RT tiles][32 lanes] float4; their float4s and
 * bytes. */
__host__ __device__ constexpr size_t kb_slot_f4(int nw, int rt)
{
	return (size_t)2 * nw * rt * 32;
}
__host__ __device__ constexpr size_t kb_slot_bytes(int nw, int rt)
{
	return kb_slot_f4(nw, rt) * sizeof(float4);
}

/* A register-walk launch's shared memory: the slots, the 1 / rms, then EPI bytes (k_mmv_norm's
 * rows, or KbRopeSm). */
static inline size_t kb_mmv_smem(int nw, int rt, size_t epi)
{
	return kb_slot_bytes(nw, rt) + KB_RMS_SM_BYTES + epi;
}

/* The RoPE epilogue's inputs, written before the products' wait (kb_rope_pre): the
 * tokens' positions and cache slots, and the sine and cosine of each rotated pair's angle,
 * so the flush reads them instead of the indices in global memory and of an angle chain
 * and sincosf of its own.  The fused epilogue takes rot_dim <= 2 KB_ROPE_TAB (the caller
 * runs rope_kv_store above that). */
#define KB_ROPE_TAB 64
typedef struct {
	int pos[KB_MAX_TOK], seq[KB_MAX_TOK];
	unsigned tag; /* KbMmvRope.ll's tag of this step and layer */
	float2 sc[KB_MAX_TOK][KB_ROPE_TAB]; /* sin, cos of pos * theta_scale^i */
} KbRopeSm;
template <bool ROPE> __host__ __device__ constexpr size_t kb_rope_sm()
{
	return ROPE ? sizeof(KbRopeSm) : 0;
}

/* The weight that owns row group jg, and jg's first tile within it.  Selects rather than
 * an indexed load, so the argument block stays in constant space. */
__device__ __forceinline__ KbTilePtr kb_group_tile(const KbMmvArgs &a, int jg, int RT, int *ret_seg,
						   int64_t *ret_tile)
{
	const int si = a.nseg > 1 && jg >= a.seg[0].g1 ? (a.nseg > 2 && jg >= a.seg[1].g1 ? 2 : 1) : 0;
	const KbMmvSeg &g = si == 0 ? a.seg[0] : si == 1 ? a.seg[1] : a.seg[2];
	KbTilePtr t;
	t.q = g.q;
	t.s = g.s;
	t.d = g.d;
	*ret_seg = si;
	*ret_tile = (int64_t)(jg - g.g0) * RT;
	return t;
}

/* c += A * B on the tensor cores with bf16 operands (kb_mma_f16's form, internal.cuh). */
__device__ __forceinline__ void kb_mma_bf16(float c[4], const uint32_t a[4], const uint32_t b[2])
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
	    : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
	    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void kb_prefetch_l2(const void *p)
{
	asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

/* Requests chunk pc of the block's RT tiles into L2, one 128-byte line per lane. */
template <int T, int RT>
__device__ __forceinline__ void kb_prefetch_chunk(const KbMmvArgs &a, int jg, int64_t pc, int lane)
{
	typedef Lay<T> L;
	int si;
	int64_t tile0;
	const KbTilePtr b = kb_group_tile(a, jg, RT, &si, &tile0);
	constexpr int QL = L::CPK * L::QV * 4;                /* q lines per tile per chunk */
	constexpr int SL = (L::CPK * 8 * L::SB + 127) / 128;  /* s lines */
	constexpr int DL = (8 * L::DB + 127) / 128;           /* d lines */
	for (int i = lane; i < RT * QL; i += 32) {
		const int rt = i / QL, k = i % QL;
		kb_prefetch_l2(b.q + (tile0 + rt) * a.q_tile + pc * (QL * 128) + k * 128);
	}
	if constexpr (SL + DL > 0) {
		if (lane >= RT * (SL + DL))
			return;
		const int rt = lane / (SL + DL), k = lane % (SL + DL);
		if (k < SL)
			kb_prefetch_l2(b.s + (tile0 + rt) * a.s_tile + pc * (L::CPK * 8 * L::SB) + k * 128);
		else
			kb_prefetch_l2(b.d + (tile0 + rt) * a.d_tile + pc * (8 * L::DB) + (k - SL) * 128);
	}
}

/* The products of one chunk of the block's RT tiles, into acc. */
template <int T, int RT>
__device__ __forceinline__ void kb_chunk(const KbMmvArgs &a, const KbWRegs<T> (&w)[RT], int64_t ch,
					 int lane, float (&acc)[RT][4])
{
	typedef Lay<T> L;
	KbXRegs<T> x;
	kb_load_x<T>(&a.x, ch, lane, &x);
	KB_UNROLL
	for (int rt = 0; rt < RT; rt++) {
		KB_UNROLL
		for (int sg = 0; sg < L::NM / L::GS; sg++) {
			float t[4] = { 0.f, 0.f, 0.f, 0.f };
			KB_UNROLL
			for (int mm = 0; mm < L::GS; mm++) {
				const int m = sg * L::GS + mm;
				uint32_t fa[4], fb[2], fl[2];
				kb_frag_a<T>(&w[rt], m, fa);
				kb_frag_b<T>(&x, m, fb, fl);
				if constexpr (T == QD_TYPE_BF16) {
					kb_mma_bf16(t, fa, fb);
					kb_mma_bf16(t, fa, fl);
				} else {
					kb_mma_f16(t, fa, fb[0], fb[1]);
				}
			}
			kb_post<T>(&w[rt], &x, sg, t, acc[rt]);
		}
	}
}

#include "matmul_i8.cuh"

/* Bytes of one chunk of one tile in each region. */
template <int T> struct KbChunkBytes {
	typedef Lay<T> L;
	static constexpr int Q = L::CPK * L::QV * 512, S = L::CPK * 8 * L::SB, D = 8 * L::DB;
};

/* A warp's walk over its (group, chunk) items (k_mmv_bulk's, matmul_bulk.cuh): where the
 * current item's chunk starts in tile 0 of its group, in each region.  Within a group the
 * next item is a few adds away; only at a group's end are the pointers worked out again
 * from the group's weight.  (Tried in k_mmv too, replacing its per-item 64-bit address
 * arithmetic: no gain for Q4_0, F16 20% slower; reverted there.) */
typedef struct {
	const uint8_t *q, *s, *d;
	int j;  /* block-local group */
	int k;  /* the warp's chunk of the group: chunk warp + k * nw */
} KbCursor;

template <int T, int RT>
__device__ __forceinline__ void kb_cursor_group(const KbMmvArgs &a, int j, int warp, KbCursor *c)
{
	typedef KbChunkBytes<T> C;
	int si;
	int64_t tile0;
	const KbTilePtr b = kb_group_tile(a, (int)blockIdx.x + j * (int)gridDim.x, RT, &si, &tile0);
	c->q = b.q + tile0 * a.q_tile + (int64_t)warp * C::Q;
	c->s = b.s + tile0 * a.s_tile + (int64_t)warp * C::S;
	c->d = b.d + tile0 * a.d_tile + (int64_t)warp * C::D;
	c->j = j;
	c->k = 0;
}

template <int T, int RT>
__device__ __forceinline__ void kb_cursor_next(const KbMmvArgs &a, int cnt, int warp, int nw, KbCursor *c)
{
	typedef KbChunkBytes<T> C;
	if (++c->k == cnt) {
		kb_cursor_group<T, RT>(a, c->j + 1, warp, c);
		return;
	}
	c->q += (int64_t)nw * C::Q;
	c->s += (int64_t)nw * C::S;
	c->d += (int64_t)nw * C::D;
}

#include "matmul_walk.cuh"

/* The products.  Q4_1's int8 kernels take 137-162 registers, so one block of 256 threads
 * fits a multiprocessor; capped at 128 (two blocks) they spill 32 bytes and ran 9% faster
 * at one token (bench/NOTES-gpu.md, session 6).  So do Q8_0's since its decode chunk is 8
 * packets (118-158 registers; capped, 48-72 bytes of spills and 7B batch 1 454 -> 461,
 * session 13).  Q4_0's one-token instances run at three blocks (k_mmv_3, kb_mmv_occ3), and
 * k_mmv_swi names its one block (below).  Every other instance keeps the plain bound:
 * naming a minimum of even 1 block changed ptxas's schedule of the f16 kernels and cost 4%
 * of a 7B Q4_0 decode step. */
template <int T, int RT, bool ROPE, int I8, bool RMS = false, int NW = 0, bool LL = false>
__global__ void __launch_bounds__(256) k_mmv(const KbMmvArgs a)
{
	kb_mmv_body<T, RT, ROPE, I8, 1, RMS, false, NW, KB_PL_DYN, LL>(a);
}

template <int T, int RT, bool ROPE, int I8, bool RMS = false, int NW = 0, bool LL = false>
__global__ void __launch_bounds__(256, 2) k_mmv_2(const KbMmvArgs a)
{
	kb_mmv_body<T, RT, ROPE, I8, 1, RMS, false, NW, KB_PL_DYN, LL>(a);
}

/* The residual product that starts the next RMSNorm (KbMmvNorm): 32-row groups, each
 * tile of a group taken by half of the block's 16 warps (so a warp holds one tile's
 * registers, as in k_mmv, and the flush has the 32 rows of one activation block). */
template <int T, int I8, unsigned PL = KB_PL_DYN>
__global__ void __launch_bounds__(KB_WIDE_NW * 32) k_mmv_norm(const KbMmvArgs a)
{
	kb_mmv_body<T, 1, false, I8, 2, false, false, kb_fixed_nw<T, I8>(KB_WIDE_NW), PL>(a);
}

/* gate / up products with SwiGLU in the flush (KbCudaAct out of kb_cuda_mmv_swiglu): a
 * group is 32 rows of both weights, gate's two tiles then up's, each taken by a quarter of
 * the block's 16 warps; the flush has 32 rows of silu(gate) * up, one activation block of
 * the down product's input.  Int8 one-token products only (kb_cuda_mmv_rms_ok).  The
 * minimum of one block changes no limit (128 registers either way) but ptxas's schedule:
 * Q4_0's instance then takes 125 registers instead of 96 and issues the early reload's
 * packet loads before the item's mma chain, where it had sunk them below it (it rebuilt
 * their addresses in registers the chain frees): 7B batch 1 Q4_0 +1.2%, the other types
 * within noise (bench/NOTES-gpu.md, session 29). */
template <int T, bool RMS, unsigned PL = KB_PL_DYN>
__global__ void __launch_bounds__(KB_WIDE_NW * 32, 1) k_mmv_swi(const KbMmvArgs a)
{
	kb_mmv_body<T, 1, false, 2, 4, RMS, false, kb_fixed_nw<T, 2>(KB_WIDE_NW), PL>(a);
}

/* Q4_0's one-token k_mmv at three blocks a multiprocessor (kb_mmv_occ3). */
template <int T, int RT, bool ROPE, int I8, bool RMS = false, int NW = 0, bool LL = false>
__global__ void __launch_bounds__(256, 3) k_mmv_3(const KbMmvArgs a)
{
	kb_mmv_body<T, RT, ROPE, I8, 1, RMS, false, NW, KB_PL_DYN, LL>(a);
}

/* q/k/v of two weight types in one launch (Q4_K_M's use_more_bits layers: q and k in Q4_K,
 * v in Q6_K): blocks [0, b.blk0) walk A's row groups, the rest B's, each with the RoPE +
 * KV-store epilogue of its rows (KbMmvArgs.si0).  (Only these walks offset their block
 * index and count their own blocks, kb_blk and kb_nblk; every other kernel's SASS stays as
 * it was.)  One token, int8 activations, one row tile.  Without it such a layer took a
 * launch per type and then the rope_kv_store kernel: traced, 7B Q4_K_M's split layer added
 * q/k 13.7 + v 6.1 + RoPE 4.7 us, the pair launch 14.4 (bench/NOTES-gpu.md, session 21). */
template <int T1, int T2, bool RMS, int NW = 0>
__global__ void __launch_bounds__(256, 2) k_mmv_pair(const KbMmvArgs a, const KbMmvArgs b)
{
	if ((int)blockIdx.x < b.blk0)
		kb_mmv_body<T1, 1, true, 2, 1, RMS, true, NW>(a);
	else
		kb_mmv_body<T2, 1, true, 2, 1, RMS, true, NW>(b);
}

/* The kernel instance for these parameters. */
template <int T, int RT, bool ROPE, int I8, bool RMS = false, int NW = 0, bool LL = false>
static constexpr void (*kb_mmv_kernel())(const KbMmvArgs)
{
	if constexpr (kb_mmv_occ3<T, RT, I8, 1>())
		return k_mmv_3<T, RT, ROPE, I8, RMS, NW, LL>;
	else if constexpr ((T == QD_TYPE_Q4_1 || T == QD_TYPE_Q8_0) && I8 != 0)
		return k_mmv_2<T, RT, ROPE, I8, RMS, NW, LL>;
	else
		return k_mmv<T, RT, ROPE, I8, RMS, NW, LL>;
}

/* The instance for C's warps a block: at the default warps, kb_fixed_nw's (the count as a
 * constant where it takes it), any other count read at run time. */
template <int T, int RT, bool ROPE, int I8, bool RMS = false, bool LL = false>
static void (*kb_mmv_kernel_for(const KbMmvConfig *c))(const KbMmvArgs)
{
	return c->warps == KB_MMV_WARPS ? kb_mmv_kernel<T, RT, ROPE, I8, RMS, kb_fixed_nw<T, I8>(KB_MMV_WARPS), LL>()
					: kb_mmv_kernel<T, RT, ROPE, I8, RMS, 0, LL>();
}

/* Into *ret_grid: the blocks of kernel K (THREADS, SMEM a block) to launch for n_groups
 * row groups, as many as fit at once, at most PER_SM a multiprocessor (0: no cap), each
 * block then walking several groups; the count that fits is cached in *occ. */
template <typename K>
static int kb_fit_grid(KbCuda *ctx, K k, int threads, size_t smem, int *occ, int per_sm, int n_groups, int *ret_grid)
{
	int r = kb_occupancy(k, threads, smem, occ);
	if (r < 0)
		return r;
	const int use = per_sm > 0 && per_sm < *occ ? per_sm : *occ;
	const int64_t fit = (int64_t)use * ctx->sm_count;
	*ret_grid = fit < n_groups ? (int)fit : n_groups;
	return 0;
}

#include "matmul_bulk.cuh"

template <int T, int RT, bool ROPE, int I8, bool RMS, bool LL>
static int launch_rt(KbCuda *ctx, const KbMmvConfig *c, KbMmvArgs a)
{
	const int nw = c->warps;
	const size_t smem = kb_mmv_smem(nw, RT, kb_rope_sm<ROPE>());
	void (*k)(const KbMmvArgs) = kb_mmv_kernel_for<T, RT, ROPE, I8, RMS, LL>(c);
	int grid = a.n_groups;
	if (c->persist) {
		int *occ = LL ? &ctx->occ_ll[kb_type_slot(T)][RMS][nw]
			      : &ctx->occ[kb_type_slot(T)][kb_variant<RT, ROPE>() + 3 * I8 + 9 * RMS][nw];
		int r = kb_fit_grid(ctx, k, nw * 32, smem, occ, c->persist, a.n_groups, &grid);
		if (r < 0)
			return r;
	}
	return kb_launch(ctx, k, dim3((unsigned)grid), dim3((unsigned)(nw * 32)), smem, a);
}

/* A launch of the hand-over's instances (KbMmvRope.ll): 1 when it was queued, or -errno. */
static inline int kb_ll_done(int r)
{
	return r == 0 ? 1 : r;
}

/* The int8 products: register loads, or the bulk-copy ring where kb_auto_stages (or the
 * configuration) asks for it.  With ROPE.ll the one-token register walks write the
 * hand-over words too (returning 1); the ring and the other paths ignore it. */
template <int T, int I8> static int launch_i8(KbCuda *ctx, const KbMmvConfig *c, const KbMmvArgs &a, bool rope)
{
	const int S = c->stages < 0 ? kb_auto_stages<T, kb_i8_one(I8)>(a.n_chunks) : c->stages;
	const bool bulk = S > 0 && ctx->cc_major >= 9;
	if (a.rms.on) { /* activations of kb_cuda_mmv_res_norm: one token, one row tile (kb_cuda_mmv_rms_ok) */
		if constexpr (I8 == 2) {
			if (c->row_tiles == 1) {
				if (rope && a.rope.ll && !bulk) /* 1: the hand-over words written */
					return kb_ll_done(launch_rt<T, 1, true, I8, true, true>(ctx, c, a));
				if (rope)
					return bulk ? launch_bulk<T, 1, true, I8, true>(ctx, c, S, a)
						    : launch_rt<T, 1, true, I8, true, false>(ctx, c, a);
				return bulk ? launch_bulk<T, 1, false, I8, true>(ctx, c, S, a)
					    : launch_rt<T, 1, false, I8, true, false>(ctx, c, a);
			}
		}
		return -EINVAL;
	}
	if (bulk) {
		if (rope)
			return launch_bulk<T, 1, true, I8, false>(ctx, c, S, a);
		return c->row_tiles == 1 ? launch_bulk<T, 1, false, I8, false>(ctx, c, S, a)
					 : launch_bulk<T, 2, false, I8, false>(ctx, c, S, a);
	}
	if constexpr (kb_i8_one(I8))
		if (rope && a.rope.ll)
			return kb_ll_done(launch_rt<T, 1, true, I8, false, true>(ctx, c, a));
	if (rope)
		return launch_rt<T, 1, true, I8, false, false>(ctx, c, a);
	return c->row_tiles == 1 ? launch_rt<T, 1, false, I8, false, false>(ctx, c, a)
				 : launch_rt<T, 2, false, I8, false, false>(ctx, c, a);
}

/* The 16-warp kernels whose flush holds a whole 32-row group (k_mmv_norm, k_mmv_swi; EPI:
 * their epilogue's shared memory): as many blocks as fit, or with ROUNDS the fewest that
 * take the groups in as many rounds.  k_mmv_swi takes ROUNDS: 7B's 344 groups on the H200
 * in 115 blocks of three rather than 132 of two or three, and the multiprocessors left
 * free can start the down product early (+0.3-0.5% at batch 1, Q8_0 within noise).  The
 * same rule for every product launch lost 0.3-3%, and gate/up's groups split evenly
 * between blocks lost 5% (bench/NOTES-gpu.md, session 15). */
static int launch_wide(KbCuda *ctx, void (*k)(const KbMmvArgs), size_t epi, int *occ, const KbMmvArgs &a,
		       bool rounds = false)
{
	constexpr int NW = KB_WIDE_NW;
	const size_t smem = kb_mmv_smem(NW, 1, epi);
	int grid;
	int r = kb_fit_grid(ctx, k, NW * 32, smem, occ, 0, a.n_groups, &grid);
	if (r < 0)
		return r;
	if (rounds && grid < a.n_groups) {
		const int n = (a.n_groups + grid - 1) / grid;
		grid = (a.n_groups + n - 1) / n;
	}
	return kb_launch(ctx, k, dim3((unsigned)grid), dim3(NW * 32), smem, a);
}

template <int T, int I8> static int launch_norm(KbCuda *ctx, const KbMmvArgs &a)
{
	int *occ = &ctx->occ_norm[kb_type_slot(T)][I8][0];
	if constexpr (kb_i8_one(I8))
		if (a.nrm.o.planes == kb_epi_pl(T))
			return launch_wide(ctx, k_mmv_norm<T, I8, kb_epi_pl(T)>, 0, occ + 1, a);
	return launch_wide(ctx, k_mmv_norm<T, I8>, kb_i8_one(I8) ? 0 : KB_NORM_SM_BYTES, occ, a);
}

/* The items of Q8_0's f16 walk (KB_TYPE_Q8_0_F16) over COLS columns: the padding's all-zero
 * items past them are left out (they would add zeros), so a 576-column row is 5 items, as
 * before its chunks were 8 packets. */
static int kb_q8_f16_items(int64_t cols)
{
	return (int)((cols + Lay<KB_TYPE_Q8_0_F16>::CC - 1) / Lay<KB_TYPE_Q8_0_F16>::CC);
}

/* k_mmv_norm with f16 activations; Q8_0's in items of 4 packets, as launch_f16. */
template <int T> static int launch_f16_norm(KbCuda *ctx, KbMmvArgs a, int64_t cols)
{
	if constexpr (T == QD_TYPE_Q8_0)
		a.n_chunks = kb_q8_f16_items(cols);
	return launch_norm<kb_f16_type<T>(), 0>(ctx, a);
}

/* The arguments every product launch shares: weight i's regions, its y and row groups
 * [g0, g1) (groups of G tiles, or G < 0: its own -G-row groups from 0, k_mmv_swi's), the
 * tile geometry, and the activations (with their 1 / rms when they hold y * g). */
static void kb_args_base(KbMmvArgs *a, int nw, const KbCudaWeight *const *w, float *const *y, const int64_t *ldy,
			 int G, const KbCudaAct *act)
{
	memset(a, 0, sizeof(*a));
	int g = 0;
	for (int i = 0; i < nw; i++) {
		KbMmvSeg *sg = &a->seg[i];
		sg->q = w[i]->q;
		sg->s = w[i]->s;
		sg->d = w[i]->d;
		sg->rows = w[i]->rows;
		sg->ldy = ldy[i];
		sg->y = y[i];
		sg->g0 = G > 0 ? g : 0;
		g = G > 0 ? g + (int)(w[i]->n_tiles / G) : (int)(w[i]->rows / -G);
		sg->g1 = g;
	}
	a->nseg = nw;
	a->q_tile = w[0]->geo.q_tile;
	a->s_tile = w[0]->geo.s_tile;
	a->d_tile = w[0]->geo.d_tile;
	a->n_chunks = (int)w[0]->geo.n_chunks;
	a->n_groups = g;
	a->x.xh = act->xh;
	a->x.xhi = act->xhi;
	a->x.xlo = act->xlo;
	a->x.xs = act->xs;
	a->x.xq = act->xq;
	a->x.xd = act->xd;
	a->x.xe = act->xe;
	a->x.cap = act->cap;
	a->x.n_tok = act->n_tok;
	if (act->rms_on) {
		a->rms.on = 1;
		a->rms.part = act->rms_part;
		a->rms.dim = (int)act->cols;
		a->rms.nb = (int)(act->cols / 32);
		a->rms.eps = act->rms_eps;
	}
}

template <int T> static int launch_f16(KbCuda *ctx, const KbMmvConfig *c, KbMmvArgs a, bool rope, int64_t cols);

/* The epilogue's arguments; KVD: k's rows. */
static void kb_rope_args(KbMmvRope *r, const KbCudaRope *rope, int64_t kvd)
{
	r->pos = rope->pos;
	r->seq = rope->seq;
	r->kc = (__half *)rope->k_cache;
	r->vc = (__half *)rope->v_cache;
	r->stride = rope->slot_stride;
	r->hd = rope->head_dim;
	r->rot_dim = rope->rot_dim;
	r->kvd = (int)kvd;
	r->theta_scale = rope->theta_scale;
	r->ll = (unsigned long long *)rope->ll.ll;
	r->serial = rope->ll.serial;
	r->layer = rope->ll.layer;
	r->nq = rope->ll.nq;
}

template <int T>
static int launch_mmv(KbCuda *ctx, int nw, const KbCudaWeight *const *w, const KbCudaAct *act, float *const *y,
		      const int64_t *ldy, int acc, const KbCudaRope *rope, const KbMmvNorm *nrm)
{
	const KbMmvConfig *c = &ctx->mmv[act->n_tok - 1];
	KbMmvArgs a;
	/* k_mmv_norm: exactly rows / 32 groups (a padded tile past the rows would be a group
	 * whose epilogue writes past y, its sums and the norm's weights) */
	kb_args_base(&a, nw, w, y, ldy, nrm ? -32 : c->row_tiles, act);
	a.prefetch = c->prefetch;
	a.acc = acc;
	if (rope)
		kb_rope_args(&a.rope, rope, w[1]->rows);
	if (nrm) {
		if (a.rms.on) /* its input must be the norm's output itself: k_mmv_norm has no RMS instance */
			return -EINVAL;
		a.nrm = *nrm;
		if constexpr (KbI8<T>::ok) {
			if (kb_i8_use(ctx, T, act->n_tok))
				return act->n_tok == 1 ? launch_norm<T, 2>(ctx, a) : launch_norm<T, 1>(ctx, a);
		}
		return launch_f16_norm<T>(ctx, a, w[0]->cols);
	}
	if constexpr (KbI8<T>::ok) {
		if (kb_i8_use(ctx, T, act->n_tok))
			return act->n_tok == 1 ? launch_i8<T, 2>(ctx, c, a, rope != NULL)
					       : launch_i8<T, 1>(ctx, c, a, rope != NULL);
	}
	if (a.rms.on) /* f16 activations never hold y * g (kb_cuda_mmv_rms_ok) */
		return -EINVAL;
	return launch_f16<T>(ctx, c, a, rope != NULL, w[0]->cols);
}

/* The f16 products of weight type T with S ring slots (0: register loads). */
template <int T> static int launch_f16_as(KbCuda *ctx, const KbMmvConfig *c, const KbMmvArgs &a, bool rope, int S)
{
	const bool bulk = S > 0 && ctx->cc_major >= 9;
	if (rope) /* its own instances (one row tile), so the other products carry none of it */
		return bulk ? launch_bulk<T, 1, true, 0, false>(ctx, c, S, a) : launch_rt<T, 1, true, 0, false, false>(ctx, c, a);
	if (bulk)
		return c->row_tiles == 1 ? launch_bulk<T, 1, false, 0, false>(ctx, c, S, a)
					 : launch_bulk<T, 2, false, 0, false>(ctx, c, S, a);
	if (c->row_tiles == 1)
		return launch_rt<T, 1, false, 0, false, false>(ctx, c, a);
	return launch_rt<T, 2, false, 0, false, false>(ctx, c, a);
}

/* The f16 products of weight type T over COLS columns.  Q8_0's: 2-8 tokens of rows of 8
 * chunks or more on sm_90 (7B) take its 8-packet chunks through the bulk-copy ring (2 / 4 /
 * 8 tokens 771 / 1,527 / 2,991 -> 848 / 1,636 / 3,068 tok/s; with 4-packet items the ring
 * is slower: 716 / 1,386 / 2,672); the rest (one token in models under 1 GiB, short rows,
 * older GPUs) items of 4 packets in registers (KB_TYPE_Q8_0_F16, layout.cuh), the kernel
 * Q8_0 had before its chunks were 8 packets (bench/NOTES-gpu.md, session 13). */
template <int T> static int launch_f16(KbCuda *ctx, const KbMmvConfig *c, KbMmvArgs a, bool rope, int64_t cols)
{
	if constexpr (T == QD_TYPE_Q8_0) {
		if (c->stages < 0 && ctx->cc_major >= 9 && a.x.n_tok > 1 && a.n_chunks >= 8)
			return launch_f16_as<T>(ctx, c, a, rope, 2);
		a.n_chunks = kb_q8_f16_items(cols);
		return launch_f16<kb_f16_type<T>()>(ctx, c, a, rope, cols);
	} else {
		return launch_f16_as<T>(ctx, c, a, rope, c->stages < 0 ? kb_auto_stages<T>(a.n_chunks) : c->stages);
	}
}

/* Whether ACT holds the planes products of TYPE read: the ones its producer wrote must
 * cover them (a weight uploaded or the int8 setting changed in between asks for another
 * prepare). */
static bool kb_act_has_planes(const KbCuda *ctx, int type, const KbCudaAct *act)
{
	const unsigned need = kb_act_need(ctx, type, act->n_tok);
	return (act->planes & need) == need;
}

extern "C" int kb_cuda_act_holds(const KbCudaAct *act, int type)
{
	return act && act->n_tok > 0 && kb_act_has_planes(act->ctx, type, act);
}

/* Whether the NW weights W fit one launch on ACT into Y (LDY): ACT's columns, the planes
 * each weight's type reads in ACT, and with SAME one type. */
static bool kb_mmv_fits(const KbCuda *ctx, int nw, const KbCudaWeight *const *w, const KbCudaAct *act,
			float *const *y, const int64_t *ldy, bool same)
{
	if (!ctx || !act || act->ctx != ctx || act->n_tok < 1 || nw < 1 || nw > KB_CUDA_MMV_MAX_W)
		return false;
	for (int i = 0; i < nw; i++)
		if (!w[i] || w[i]->ctx != ctx || !y[i] || act->cols != w[i]->cols || ldy[i] < w[i]->rows ||
		    (same && w[i]->type != w[0]->type) || !kb_act_has_planes(ctx, w[i]->type, act))
			return false;
	return true;
}

/* The RoPE epilogue's conditions: q, k, v of whole heads, k and v alike, a row pair never
 * split. */
static bool kb_rope_fits(const KbCudaWeight *const *w, const KbCudaRope *rope)
{
	return rope->pos && rope->seq && rope->k_cache && rope->v_cache && rope->head_dim >= 2 &&
	       rope->head_dim % 2 == 0 && rope->rot_dim >= 0 && rope->rot_dim % 2 == 0 && rope->rot_dim <= rope->head_dim &&
	       w[0]->rows % rope->head_dim == 0 && w[1]->rows % rope->head_dim == 0 && w[1]->rows == w[2]->rows &&
	       rope->slot_stride >= w[1]->rows;
}

static int mmv_launch(KbCuda *ctx, int nw, const KbCudaWeight *const *w, const KbCudaAct *act, float *const *y,
		      const int64_t *ldy, int acc, const KbCudaRope *rope, const KbMmvNorm *nrm = NULL)
{
	if (!kb_mmv_fits(ctx, nw, w, act, y, ldy, true) || (rope && (nw != 3 || acc || !kb_rope_fits(w, rope))))
		return -EINVAL;
	return kb_with_product_type(w[0]->type, [&](auto t) {
		return launch_mmv<decltype(t)::value>(ctx, nw, w, act, y, ldy, acc, rope, nrm);
	});
}

/* The type pairs k_mmv_pair is built for: q (and k) of type T1, the rest T2. */
template <typename F> static int kb_with_pair(int t1, int t2, F &&f)
{
	if (t1 == QD_TYPE_Q4_K && t2 == QD_TYPE_Q6_K)
		return f(std::integral_constant<int, QD_TYPE_Q4_K>(), std::integral_constant<int, QD_TYPE_Q6_K>());
	return -EOPNOTSUPP;
}

template <int T1, int T2> static int launch_pair(KbCuda *ctx, const KbMmvConfig *c, KbMmvArgs a, KbMmvArgs b)
{
	const int nw = c->warps;
	const size_t smem = kb_mmv_smem(nw, 1, kb_rope_sm<true>());
	/* at the default warps the count as a constant where both types take it (kb_fixed_nw) */
	constexpr int NW = kb_fixed_nw<T1, 2>(KB_MMV_WARPS) && kb_fixed_nw<T2, 2>(KB_MMV_WARPS) ? KB_MMV_WARPS : 0;
	void (*k)(const KbMmvArgs, const KbMmvArgs) = a.rms.on ? k_mmv_pair<T1, T2, true> : k_mmv_pair<T1, T2, false>;
	if (nw == KB_MMV_WARPS)
		k = a.rms.on ? k_mmv_pair<T1, T2, true, NW> : k_mmv_pair<T1, T2, false, NW>;
	int ga = a.n_groups, gb = b.n_groups, grid = ga + gb;
	if (c->persist) {
		int r = kb_fit_grid(ctx, k, nw * 32, smem, &ctx->occ_pair[a.rms.on][nw], c->persist, ga + gb, &grid);
		if (r < 0)
			return r;
		grid = grid > 2 ? grid : 2; /* a block for each product at least */
	}
	if (grid < ga + gb) {
		/* blocks in proportion to the row groups, not to their bytes: a walk's time goes by
		 * its items (7B Q4_K_M, 512 Q4_K and 256 Q6_K groups on 264 blocks: 176 + 88, three
		 * groups a block, 608 tok/s; by bytes, 128 + 136, 595) */
		const int64_t share = ((int64_t)grid * a.n_groups + (ga + gb) / 2) / (ga + gb);
		ga = share < 1 ? 1 : share > grid - 1 ? grid - 1 : (int)share; /* grid < ga + gb, so */
		gb = grid - ga; /* neither share exceeds its product's groups */
	}
	a.blk0 = 0;
	a.nblk = ga;
	b.blk0 = ga;
	b.nblk = gb;
	return kb_launch(ctx, k, dim3((unsigned)(ga + gb)), dim3((unsigned)(nw * 32)), smem, a, b);
}

/* q/k/v with the RoPE epilogue as one k_mmv_pair launch: the first M weights of one type,
 * the rest of another.  -EOPNOTSUPP where the pair has no instance or the step is not one
 * that k_mmv's int8 one-token walk takes for both types (the caller then launches each
 * type's run and rope_kv_store). */
static int mmv_pair_launch(KbCuda *ctx, const KbCudaWeight *const *w, const KbCudaAct *act, float *const *y,
			   const int64_t *ldy, const KbCudaRope *rope)
{
	if (!kb_mmv_fits(ctx, 3, w, act, y, ldy, false) || !kb_rope_fits(w, rope))
		return -EINVAL;
	const int m = w[1]->type == w[0]->type ? 2 : 1;
	const int t1 = w[0]->type, t2 = w[m]->type;
	const KbMmvConfig *c = &ctx->mmv[0];
	if (w[2]->type != t2 || act->n_tok != 1 || c->row_tiles != 1 || !kb_i8_use(ctx, t1, 1) || !kb_i8_use(ctx, t2, 1))
		return -EOPNOTSUPP;
	return kb_with_pair(t1, t2, [&](auto p1, auto p2) {
		constexpr int T1 = decltype(p1)::value, T2 = decltype(p2)::value;
		const int ring = c->stages >= 0 ? c->stages
						: kb_auto_stages<T1, true>((int)w[0]->geo.n_chunks) +
							  kb_auto_stages<T2, true>((int)w[m]->geo.n_chunks);
		if (ring > 0)
			return -EOPNOTSUPP; /* a type of the pair takes the bulk-copy ring */
		KbMmvArgs a, b;
		kb_args_base(&a, m, w, y, ldy, 1, act);
		kb_args_base(&b, 3 - m, w + m, y + m, ldy + m, 1, act);
		a.prefetch = b.prefetch = c->prefetch;
		kb_rope_args(&a.rope, rope, w[1]->rows);
		kb_rope_args(&b.rope, rope, w[1]->rows);
		b.si0 = m;
		return launch_pair<T1, T2>(ctx, c, a, b);
	});
}

extern "C" int kb_cuda_mmv_act(KbCuda *ctx, const KbCudaWeight *w, const KbCudaAct *act, float *y_dev,
			       int64_t ldy)
{
	return mmv_launch(ctx, 1, &w, act, &y_dev, &ldy, 0, NULL);
}

extern "C" int kb_cuda_mmv_multi(KbCuda *ctx, int nw, const KbCudaWeight *const *w, const KbCudaAct *act,
				 float *const *y_dev, int acc)
{
	if (nw < 1 || nw > KB_CUDA_MMV_MAX_W || !w || !y_dev)
		return -EINVAL;
	int64_t ldy[KB_CUDA_MMV_MAX_W];
	for (int i = 0; i < nw; i++)
		ldy[i] = w[i] ? w[i]->rows : 0;
	return mmv_launch(ctx, nw, w, act, y_dev, ldy, acc, NULL);
}

extern "C" int kb_cuda_mmv_qkv_rope(KbCuda *ctx, const KbCudaWeight *const *w, const KbCudaAct *act,
				    float *const *y_dev, const KbCudaRope *rope)
{
	if (!w || !y_dev || !rope || !w[0] || !w[1] || !w[2])
		return -EINVAL;
	if (rope->rot_dim > 2 * KB_ROPE_TAB)
		return -EOPNOTSUPP; /* beyond KbRopeSm's table */
	int64_t ldy[3];
	for (int i = 0; i < 3; i++)
		ldy[i] = w[i]->rows;
	const KbCudaLL *ll = &rope->ll;
	if (ll->ll && (!act || act->n_tok != 1 || !ll->serial || ll->layer < 0 || ll->layer > 255 ||
		       ll->nq != w[0]->rows || ll->nkv != w[1]->rows))
		return -EINVAL;
	if (w[1]->type != w[0]->type || w[2]->type != w[0]->type)
		return mmv_pair_launch(ctx, w, act, y_dev, ldy, rope); /* 0: no hand-over words */
	return mmv_launch(ctx, 3, w, act, y_dev, ldy, 0, rope);
}

extern "C" int kb_cuda_mmv_rms_ok(const KbCuda *ctx, int type, int n_tok)
{
	return ctx && n_tok == 1 && kb_i8_use(ctx, type, 1) && ctx->mmv[0].row_tiles == 1;
}

extern "C" int kb_cuda_i8_type(int type)
{
	return kb_i8_type(type);
}

extern "C" int kb_cuda_mmv_res_norm(KbCuda *ctx, const KbCudaWeight *w, const KbCudaAct *act, float *y_dev,
				    const float *norm_w, float eps, double *part, KbCudaAct *out)
{
	if (!ctx || !w || !act || !y_dev || !norm_w || !part || !out || out == act || out->ctx != ctx ||
	    w->rows % 32 || w->rows > out->cap || act->n_tok < 1 || act->n_tok > KB_CUDA_MAX_TOK)
		return -EINVAL;
	KbMmvNorm nrm;
	nrm.g = norm_w;
	nrm.part = part;
	nrm.nb = (int)(w->rows / 32);
	nrm.o = kb_act_out(out, act->n_tok);
	const int64_t ldy = w->rows;
	int r = mmv_launch(ctx, 1, &w, act, &y_dev, &ldy, 1, NULL, &nrm);
	if (r < 0) {
		out->n_tok = 0; /* no product may read it */
		return r;
	}
	out->cols = w->rows;
	out->n_tok = act->n_tok;
	out->rms_on = 1;
	out->rms_part = part;
	out->rms_eps = eps;
	return 0;
}

/* k_mmv_swi for TYPE. */
template <int T> static int launch_swi(KbCuda *ctx, const KbMmvArgs &a, bool rms)
{
	if constexpr (KbI8<T>::ok) {
		int *occ = &ctx->occ_swi[kb_type_slot(T)][rms][0];
		if (a.swo.planes == kb_epi_pl(T))
			return launch_wide(ctx, rms ? k_mmv_swi<T, true, kb_epi_pl(T)> : k_mmv_swi<T, false, kb_epi_pl(T)>, 0,
					   occ + 1, a, true);
		return launch_wide(ctx, rms ? k_mmv_swi<T, true> : k_mmv_swi<T, false>, 0, occ, a, true);
	} else {
		(void)ctx;
		(void)a;
		(void)rms;
		return -EINVAL;
	}
}

extern "C" int kb_cuda_mmv_swiglu(KbCuda *ctx, const KbCudaWeight *wg, const KbCudaWeight *wu, const KbCudaAct *act,
				  float *h_dev, KbCudaAct *out)
{
	if (!ctx || !wg || !wu || !act || !h_dev || !out || out == act || out->ctx != ctx || act->ctx != ctx ||
	    wg->ctx != ctx || wu->ctx != ctx || wg->type != wu->type || wg->rows != wu->rows || wg->cols != wu->cols ||
	    wg->rows % 32 || wg->rows > out->cap || act->cols != wg->cols || !kb_cuda_mmv_rms_ok(ctx, wg->type, act->n_tok))
		return -EINVAL;
	if (!kb_act_has_planes(ctx, wg->type, act))
		return -EINVAL;
	KbMmvArgs a;
	const KbCudaWeight *w[2] = { wg, wu };
	float *const y[2] = { h_dev, h_dev }; /* only gate's is written: silu(gate) * up */
	const int64_t ldy[2] = { wg->rows, wg->rows };
	kb_args_base(&a, 2, w, y, ldy, -32, act);
	a.swo = kb_act_out(out, act->n_tok);
	const int r = kb_with_product_type(wg->type, [&](auto t) {
		return launch_swi<decltype(t)::value>(ctx, a, act->rms_on != 0);
	});
	if (r < 0) {
		out->n_tok = 0;
		return r;
	}
	out->cols = wg->rows;
	out->n_tok = act->n_tok;
	return 0;
}

extern "C" int kb_cuda_mmv(KbCuda *ctx, const KbCudaWeight *w, const float *x_dev, int64_t ldx,
			   float *y_dev, int64_t ldy, int n_tok)
{
	if (!ctx || !w)
		return -EINVAL;
	if (!ctx->act || ctx->act->cap < w->cols) {
		/* grow: wait until no queued kernel still reads the old buffer */
		int r = kb_cuda_sync(ctx);
		if (r < 0)
			return r;
		kb_cuda_act_free(ctx->act);
		ctx->act = NULL;
		if ((r = kb_cuda_act_new(ctx, w->cols, &ctx->act)) < 0)
			return r;
	}
	int r = kb_cuda_act_prepare(ctx, ctx->act, x_dev, ldx, w->cols, n_tok);
	return r < 0 ? r : kb_cuda_mmv_act(ctx, w, ctx->act, y_dev, ldy);
}
