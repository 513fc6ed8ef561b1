/* kernels/cuda/internal.cuh: what the CUDA backend's .cu files share: the context and
 * object structs, CUDA error mapping, kernel launch with programmatic dependent launch,
 * and the PTX helpers for it. */
#ifndef QD_KERNELS_CUDA_INTERNAL_CUH
#define QD_KERNELS_CUDA_INTERNAL_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <stdint.h>
#include <type_traits>

#include "cuda.h"
#include "layout.cuh"
#include "layout_i8.cuh"

#define KB_STAGE_BYTES ((size_t)32 << 20)

/* Product kernel configuration; index 0 is for 1 token, ..., 7 for 8 tokens. */
typedef struct {
	int warps, row_tiles, prefetch, persist;
	int stages; /* > 0: the bulk-copy pipeline (matmul_bulk.cuh, sm_90) with this many slots a warp;
		     * 0: register loads; -1: by weight type */
	int i8;     /* int8 activations (matmul_i8.cuh) for the types that have them (KbI8):
		     * 1 on, 0 off, -1 where they measured faster (kb_i8_use) */
} KbMmvConfig;

/* Calls f(std::integral_constant<int, T>()) for the product type TYPE (the seven that
 * layout.cuh packs), so that one generic lambda instantiates a kernel per type; -EINVAL
 * for any other type. */
template <typename F> static int kb_with_product_type(int type, F &&f)
{
	switch (type) {
	case QD_TYPE_Q4_0: return f(std::integral_constant<int, QD_TYPE_Q4_0>());
	case QD_TYPE_Q4_1: return f(std::integral_constant<int, QD_TYPE_Q4_1>());
	case QD_TYPE_Q8_0: return f(std::integral_constant<int, QD_TYPE_Q8_0>());
	case QD_TYPE_Q4_K: return f(std::integral_constant<int, QD_TYPE_Q4_K>());
	case QD_TYPE_Q6_K: return f(std::integral_constant<int, QD_TYPE_Q6_K>());
	case QD_TYPE_F16: return f(std::integral_constant<int, QD_TYPE_F16>());
	case QD_TYPE_BF16: return f(std::integral_constant<int, QD_TYPE_BF16>());
	default: return -EINVAL;
	}
}

/* Index of a product type in per-type tables. */
static inline int kb_type_slot(int type)
{
	switch (type) {
	case QD_TYPE_Q4_0: return 0;
	case QD_TYPE_Q4_1: return 1;
	case QD_TYPE_Q8_0: return 2;
	case KB_TYPE_Q8_0_F16: return 2; /* Q8_0's f16 instances: Q8_0's own are never launched */
	case QD_TYPE_Q4_K: return 3;
	case QD_TYPE_Q6_K: return 4;
	case QD_TYPE_F16: return 5;
	default: return 6;
	}
}

struct KbCuda {
	int device, cc_major, sm_count;
	size_t smem_optin;      /* shared memory a block may opt in to (99 KiB on sm_86/89) */
	int traced;             /* a -DQD_TRACE build's context that holds the block trace's ring */
	int type_live[32];      /* product weights of each type now uploaded (which planes producers write) */
	uint64_t live_bytes;    /* and their GGUF bytes (kb_i8_use) */
	cudaStream_t stream;
	void *stage[2];         /* pinned host staging */
	cudaEvent_t stage_ev[2]; /* recorded after the copy out of stage[i] */
	size_t stage_bytes;
	uint8_t *scratch;       /* device buffer for raw rows awaiting repack */
	size_t scratch_bytes;
	cudaEvent_t t0, t1;
	cudaEvent_t mark[2];    /* kb_cuda_mark: the ends of the steps a caller reads a step late */
	int pdl;
	KbMmvConfig mmv[KB_CUDA_MAX_TOK];
	int occ[7][18][9];      /* resident blocks per SM: [type slot][variant (kb_variant) + 3 I8 + 9 RMS][warps] */
	int occ_norm[7][3][2];  /* the same for k_mmv_norm: [type slot][I8][epilogue planes: any, kb_epi_pl's] */
	int occ_swi[7][2][2];   /* and k_mmv_swi: [type slot][RMS][planes] */
	int occ_bulk[7][18][9][9]; /* the same for k_mmv_bulk, [...][ring slots] */
	int occ_pair[2][9];     /* and k_mmv_pair (its one type pair): [RMS][warps] */
	int occ_ll[7][2][9];    /* and the one-token q/k/v walks with the hand-over words: [type slot][RMS][warps] */
	uint64_t up_bytes;
	double up_sec;
	KbCudaAct *act;         /* for kb_cuda_mmv */
	float *att_part;        /* split attention partials, KB_ATT_PARTS x (256 + 2) floats */
	unsigned *att_cnt;      /* per (token, head): splits finished; back to 0 after each */
	int att_split_keys;     /* fewest keys an attention split takes (KB_ATT_SPLIT_KEYS) */
	int mmq_occ[7][3];      /* gemm.cu: resident blocks per SM, [type slot][16/32/64-token]; 0:
				 * not asked yet, nor the shared-memory opt-in done */
	uint8_t mmv_smem_set[7][18]; /* bulk kernel (matmul_bulk.cuh): opt-in done, [type slot][variant] */
	int mmq_max_waves, mmq_min_units; /* how blocks share a launch's work (mmq_shares) */
	int mmq_bulk;           /* gemm.cu: k_mmq as loaded for this device stages with bulk copies
				 * and reads mmq_xo's layout (1), or with cp.async (0): kb_cuda_mmq_probe */
	float *mmq_part;        /* shared row blocks of many-token products: partial sums (gemm.cu) */
	unsigned *mmq_cnt;
};

struct KbCudaWeight {
	KbCuda *ctx;
	int type;
	int64_t rows, cols, rows_pad, cols_pad, n_tiles;
	KbTileGeom geo;
	uint8_t *base, *q, *s, *d; /* one allocation */
	uint64_t gguf_bytes, dev_bytes;
	int live; /* counted in ctx->type_live and live_bytes */
};

struct KbCudaAct {
	KbCuda *ctx;
	int64_t cap;   /* padded column capacity (multiple of KB_ACT_PAD) */
	int64_t cols;  /* of the last prepare */
	int n_tok;     /* of the last prepare; 0 before */
	void *base;
	uint16_t *xh, *xhi, *xlo;
	float *xs;
	int8_t *xq;    /* int8 levels, [8][cap] in kb_act8_pos order */
	float *xd;     /* their 32-column block scales, kb_act8_d order */
	float *xe;     /* each block's scale x sum of levels, rounded to f16 (Q8_1's s), kb_act8_d order */
	unsigned planes; /* KB_PL_* the last producer wrote (mmv_launch checks a product's) */
	/* rms_on: the planes hold y * g, not the norm's output y / rms(y) * g, and the products
	 * scale their sums by 1 / rms from rms_part (kb_cuda_mmv_res_norm); every other
	 * producer clears it (kb_act_out) */
	int rms_on;
	const double *rms_part;
	float rms_eps;
};

/* Whether products of TYPE over n_tok tokens take int8 activations (matmul_i8.cuh).  By
 * default only where that measured faster on the H200 (bench/NOTES-gpu.md, sessions 6 and
 * 14), with at least KB_I8_MIN_BYTES of product weights uploaded: one token (7B Q4_0 decode
 * step +4%, 70B +9%), and 2-8 tokens of the types whose f16 decode is the heaviest (7B
 * 2 / 4 / 8 tokens: Q4_K +10 / +8.5 / +9%, Q4_K_M +3.6 / +2.5 / +2.4%, Q4_1 +2.4 / +3.1 /
 * +6.9%; session 14), not Q4_0 (within 1%) nor Q8_0 (-13 to -16%: its f16 products take
 * the bulk-copy ring there).  In a small model (SmolLM2, 0.1 GB) the products gain less
 * than rounding to int8 costs the norms. */
#define KB_I8_MIN_BYTES ((uint64_t)1 << 30)
static inline int kb_i8_use(const KbCuda *ctx, int type, int n_tok)
{
	if (!kb_i8_type(type) || n_tok < 1 || n_tok > KB_CUDA_MAX_TOK)
		return 0;
	const int v = ctx->mmv[n_tok - 1].i8;
	if (v >= 0)
		return v;
	const int many = type == QD_TYPE_Q4_1 || type == QD_TYPE_Q4_K || type == QD_TYPE_Q6_K;
	return (n_tok == 1 || many) && ctx->live_bytes >= KB_I8_MIN_BYTES;
}

/* Planes of KbCudaAct a producer fills: f16, bf16 hi + lo, block sums, int8 + scales,
 * and the int8 blocks' scaled level sums (for Q4_1's and Q4_K's minimum). */
enum { KB_PL_H = 1, KB_PL_B = 2, KB_PL_S = 4, KB_PL_Q = 8, KB_PL_E = 16, KB_PL_ALL = 31 };
#define KB_PL_DYN 0x100u   /* kb_act_put: the planes read at run time, int8 code included */
#define KB_PL_DYN16 0x200u /* ... without the int8 code */

/* The planes an int8 product of TYPE reads: the levels and scales, and the level sums where
 * the type has a minimum. */
__host__ __device__ constexpr unsigned kb_i8_planes(int type)
{
	return (unsigned)KB_PL_Q | (kb_has_min(type) ? (unsigned)KB_PL_E : 0u);
}

/* The planes a product of TYPE over n_tok tokens reads. */
static inline unsigned kb_act_need(const KbCuda *ctx, int type, int n_tok)
{
	if (kb_i8_use(ctx, type, n_tok))
		return kb_i8_planes(type);
	if (type == QD_TYPE_BF16)
		return KB_PL_B;
	return KB_PL_H | (kb_has_min(type) ? KB_PL_S : 0);
}

/* The planes products of n_tok tokens read, for the product weights uploaded now (all of
 * them when there are none).  Writing only those keeps the one-block producers (RMSNorm)
 * short: each plane costs every thread a few instructions per column.  Producers (the
 * norms, attention, SwiGLU: EVERY false) write the planes of the types that make up at
 * least 1/16 of the product weights, the ones layers read: a head of another type (a Q4_0
 * model's Q6_K output reads int8 at 2-8 tokens where Q4_0 reads f16) converts its input
 * itself (kb_cuda_act_prepare: EVERY), instead of every producer of the step writing its
 * planes too (which cost a 7B Q4_0 at batch 8 6%: bench/NOTES-gpu.md, sessions 19-20). */
static inline unsigned kb_act_planes(const KbCuda *ctx, int n_tok, bool every)
{
	int total = 0;
	for (int t = 0; t < 32; t++)
		total += ctx->type_live[t];
	unsigned p = 0;
	for (int t = 0; t < 32; t++)
		if (ctx->type_live[t] > 0 && (every || 16 * ctx->type_live[t] >= total))
			p |= kb_act_need(ctx, t, n_tok);
	return p ? p : (unsigned)KB_PL_ALL;
}

/* Where a producer stores activations in the product layout (planes: which of them). */
typedef struct {
	uint16_t *xh, *xhi, *xlo;
	float *xs;
	int8_t *xq;
	float *xd, *xe;
	int64_t cap;
	unsigned planes; /* KB_PL_*; 0: none */
} KbActOut;

/* Calls f(std::integral_constant<unsigned, PL>()) with the producer instance for O's planes:
 * the plane sets models use have their own (no per-column branches: the one-block RMSNorm
 * runs its code cold from the instruction cache every launch), anything else KB_PL_DYN. */
template <typename F> static auto kb_with_planes(const KbActOut &o, F &&f)
{
	switch (o.planes) {
	case KB_PL_H: return f(std::integral_constant<unsigned, KB_PL_H>());
	case KB_PL_H | KB_PL_S: return f(std::integral_constant<unsigned, KB_PL_H | KB_PL_S>());
	case KB_PL_Q: return f(std::integral_constant<unsigned, KB_PL_Q>());
	case KB_PL_Q | KB_PL_E: return f(std::integral_constant<unsigned, KB_PL_Q | KB_PL_E>());
	/* a prepare for a head of another form than the layers' (kb_act_planes' EVERY: an F16
	 * head after int8 layers, a Q6_K head after Q4_0's f16 at 2-8 tokens; E: Q4_1's or
	 * Q4_K's sums) */
	case KB_PL_Q | KB_PL_H: return f(std::integral_constant<unsigned, KB_PL_Q | KB_PL_H>());
	case KB_PL_Q | KB_PL_E | KB_PL_H: return f(std::integral_constant<unsigned, KB_PL_Q | KB_PL_E | KB_PL_H>());
	default: return f(std::integral_constant<unsigned, KB_PL_DYN>());
	}
}

/* The activation planes a one-token step of a model whose products are of type T reads, as
 * kb_act_planes makes them (its int8 levels and scales, and the level sums where a type has a
 * minimum; Q6_K, in Q4_K_M's mix with Q4_K, beside those sums): k_mmv_norm's and k_mmv_swi's
 * epilogues for these planes are instances of their own, written without reading the plane
 * set at run time (any other set: KB_PL_DYN).  With decode attention's output alike, 7B
 * batch 1 Q4_0 +1.65%, Q4_K +0.65%, Q4_K_M +1.1%, Q8_0 +0.7%; the same sets tested first at
 * run time in kb_act_put's general instance gained none of it (bench/NOTES-gpu.md, session
 * 31). */
__host__ __device__ constexpr unsigned kb_epi_pl(int t)
{
	return kb_i8_planes(t) | (t == QD_TYPE_Q6_K ? (unsigned)KB_PL_E : 0u);
}

/* Whether a producer writing O needs an instance with the int8 code. */
static inline bool kb_act_q8(const KbActOut &o)
{
	return (o.planes & KB_PL_Q) != 0;
}

/* A producer's view of A for a step of n_tok tokens; records the planes in A (the caller
 * launches the producer next).  EVERY: the planes of every live type (kb_act_planes). */
static inline KbActOut kb_act_out(KbCudaAct *a, int n_tok, bool every = false)
{
	KbActOut o = { a->xh, a->xhi, a->xlo, a->xs, a->xq, a->xd, a->xe, a->cap, kb_act_planes(a->ctx, n_tok, every) };
	a->planes = o.planes;
	a->rms_on = 0;
	return o;
}

struct KbCudaGraph {
	cudaGraph_t graph;
	cudaGraphExec_t exec;
};

/* CUDA status -> 0 / negative errno.  Allocation failures are -ENOMEM; a missing
 * driver or device -ENODEV; everything else -EIO. */
static inline int kb_err(cudaError_t e)
{
	switch (e) {
	case cudaSuccess:
		return 0;
	case cudaErrorMemoryAllocation:
		return -ENOMEM;
	case cudaErrorNoDevice:
	case cudaErrorInsufficientDriver:
	case cudaErrorInvalidDevice:
		return -ENODEV;
	default:
		return -EIO;
	}
}

/* The decode products' warps a block: KB_MMV_WARPS unless configured otherwise
 * (KbMmvConfig.warps), and always KB_WIDE_NW in k_mmv_norm and k_mmv_swi (matmul.cu's
 * launch_wide).  kb_flush (matmul_walk.cuh) takes them as constants, so that its loops over
 * a tile's warps unroll, and so does the whole walk of the one-token products of
 * the types kb_fixed_nw takes (kb_mmv_body's NW). */
#define KB_MMV_WARPS 8
#define KB_WIDE_NW 16

/* *occ: resident blocks per multiprocessor of kernel K with THREADS and SMEM a block (at
 * least 1), asked of the runtime the first time (*occ 0) and cached there. */
template <typename K> static int kb_occupancy(K k, int threads, size_t smem, int *occ)
{
	if (*occ == 0) {
		int n = 0;
		int r = kb_err(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, threads, smem));
		if (r < 0)
			return r;
		*occ = n > 0 ? n : 1;
	}
	return 0;
}

/* Launches kernel K on the context's stream, allowing the next kernel to start early
 * (programmatic dependent launch) when the device supports it.  Every kernel launched
 * this way must call kb_pdl_wait() before touching memory a predecessor writes or reads. */
template <typename... KArgs, typename... Args>
static int kb_launch_ex(KbCuda *ctx, int pdl, void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem,
			Args... args)
{
	cudaLaunchConfig_t cfg = {};
	cudaLaunchAttribute attr[1];
	cfg.gridDim = grid;
	cfg.blockDim = block;
	cfg.dynamicSmemBytes = smem;
	cfg.stream = ctx->stream;
	if (pdl && ctx->pdl) {
		attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
		attr[0].val.programmaticStreamSerializationAllowed = 1;
		cfg.attrs = attr;
		cfg.numAttrs = 1;
	}
	return kb_err(cudaLaunchKernelEx(&cfg, k, args...));
}

template <typename... KArgs, typename... Args>
static int kb_launch(KbCuda *ctx, void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem, Args... args)
{
	return kb_launch_ex(ctx, 1, k, grid, block, smem, args...);
}

/* The forward pass's small kernels (norms, RoPE, SwiGLU, attention, embedding rows) take
 * part in programmatic dependent launch, i.e. launch early and let their successor launch
 * early (their `trig` argument), only in steps of up to KB_CUDA_MAX_TOK tokens: there
 * every kernel is one wave and the early starts hide launch latency (H200, 7B Q4_0:
 * batch 1 411 -> 441 tok/s, batch 8 2,974 -> 3,147).  In larger steps, blocks launched
 * early sat waiting on multiprocessors whose registers and shared memory the running
 * kernel's later waves needed (batch 32 5,230 -> 4,615), so there they start as before. */
static inline int kb_small_pdl(int n_tok)
{
	return n_tok <= KB_CUDA_MAX_TOK;
}

/* Lets the next kernel in the stream launch now (its blocks then wait in kb_pdl_wait). */
__device__ __forceinline__ void kb_pdl_trigger(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.launch_dependents;");
#endif
}

/* Shared-memory addresses, mbarriers and bulk copies (cp.async.bulk, sm_90): the decode
 * products' ring (matmul_bulk.cuh) and the many-token products' stages (gemm.cu). */
__device__ __forceinline__ uint32_t kb_smem_u32(const void *p)
{
	return (uint32_t)__cvta_generic_to_shared(p);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/* A phase of bar completes after COUNT arrivals and the bytes they announced. */
__device__ __forceinline__ void kb_mbar_init(uint32_t bar, uint32_t count = 1)
{
	asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

/* An arrival at bar's phase, announcing BYTES to come from bulk copies. */
__device__ __forceinline__ void kb_mbar_expect(uint32_t bar, uint32_t bytes)
{
	asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void kb_mbar_wait(uint32_t bar, uint32_t parity)
{
	asm volatile("{\n\t.reg .pred P;\n"
		     "KB_WAIT:\n\t"
		     "mbarrier.try_wait.parity.shared::cta.b64 P, [%0], %1;\n\t"
		     "@!P bra KB_WAIT;\n\t}" ::"r"(bar), "r"(parity) : "memory");
}

__device__ __forceinline__ void kb_bulk_copy(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar)
{
	asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
		     ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}
#endif

/* The GPU's nanosecond clock (%globaltimer): trace marks, and KbCudaLL's poll limit. */
__device__ __forceinline__ unsigned long long kb_gtime(void)
{
	unsigned long long t;
	asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
	return t;
}

#ifdef QD_TRACE
/* Dev-only block trace (built with -DQD_TRACE through tools/gpu-variant.sh, never by
 * default): thread 0 of every traced block records its launch (%gridid), multiprocessor,
 * and the global timer at its start, at its PDL wait's release and at its end, into a
 * device ring that kb_cuda_free writes to $QD_TRACE_OUT (tools/trace-step.py reads it). */
#define KB_TRACE_MARKS 8
struct KbTraceRec {
	unsigned long long grid, t0, tw, t1;
	unsigned blk, smid, nblk, nthr;
	unsigned long long mark[KB_TRACE_MARKS]; /* KB_MARK(i): thread 0 at a kernel's stage i; 0 unset */
};
static __device__ KbTraceRec *kb_trace_buf;
static __device__ unsigned long long *kb_trace_cnt;
static __device__ unsigned kb_trace_cap;
extern "C" int kb_trace_register(int (*bind)(void *, void *, unsigned));
/* each translation unit has its own copies of the variables above (no -rdc): each
 * registers a binder that kb_cuda_init calls */
static int kb_trace_bind_tu(void *buf, void *cnt, unsigned cap)
{
	if (cudaMemcpyToSymbol(kb_trace_buf, &buf, sizeof(buf)) != cudaSuccess ||
	    cudaMemcpyToSymbol(kb_trace_cnt, &cnt, sizeof(cnt)) != cudaSuccess ||
	    cudaMemcpyToSymbol(kb_trace_cap, &cap, sizeof(cap)) != cudaSuccess)
		return -EIO;
	return 0;
}
static int kb_trace_registered __attribute__((unused)) = kb_trace_register(kb_trace_bind_tu);
__device__ __forceinline__ unsigned long long *kb_trace_tw(void)
{
	__shared__ unsigned long long tw;
	return &tw;
}
__device__ __forceinline__ unsigned long long *kb_trace_marks(void)
{
	__shared__ unsigned long long m[KB_TRACE_MARKS];
	return m;
}
#define KB_MARK(i) do { if (threadIdx.x == 0) kb_trace_marks()[i] = kb_gtime(); } while (0)
struct KbTraceScope {
	unsigned long long t0;
	__device__ KbTraceScope()
	{
		t0 = kb_gtime();
		if (threadIdx.x == 0) {
			*kb_trace_tw() = 0;
			for (int i = 0; i < KB_TRACE_MARKS; i++)
				kb_trace_marks()[i] = 0;
		}
	}
	__device__ ~KbTraceScope()
	{
		if (threadIdx.x != 0 || !kb_trace_buf)
			return;
		KbTraceRec r;
		r.t1 = kb_gtime();
		r.t0 = t0;
		r.tw = *kb_trace_tw();
		asm volatile("mov.u64 %0, %%gridid;" : "=l"(r.grid));
		asm volatile("mov.u32 %0, %%smid;" : "=r"(r.smid));
		r.blk = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
		r.nblk = gridDim.x * gridDim.y * gridDim.z;
		r.nthr = blockDim.x * blockDim.y * blockDim.z;
		for (int i = 0; i < KB_TRACE_MARKS; i++)
			r.mark[i] = kb_trace_marks()[i];
		kb_trace_buf[atomicAdd(kb_trace_cnt, 1ull) % kb_trace_cap] = r;
	}
};
#define KB_TRACE() KbTraceScope kb_trace_scope_
#else
#define KB_TRACE() do { } while (0)
#define KB_MARK(i) do { } while (0)
#endif

/* Waits until the previous kernel in the stream has finished and its writes are visible. */
__device__ __forceinline__ void kb_pdl_wait(void)
{
	/* QD_DEV_NOWAIT: a dev-only bound (tools/gpu-variant.sh; wrong results, racing kernels):
	 * no kernel waits for its predecessor, so a step times its work without the grid-wide
	 * hand-overs (session 32: 7B Q4_0 +19%, Q4_K +18%, Q8_0 +14.5%) */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(QD_DEV_NOWAIT)
	asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#ifdef QD_TRACE
	if (threadIdx.x == 0)
		*kb_trace_tw() = kb_gtime();
#endif
}

/* A 64-bit word stored or loaded whole at the GPU's scope, without a fence: KbCudaLL's
 * hand-over, where a reader takes another block's word only once the word's own tag says
 * it is the one it waits for (volatile: each poll loads again). */
__device__ __forceinline__ void kb_st_relaxed_u64(unsigned long long *p, unsigned long long v)
{
	asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v));
}
__device__ __forceinline__ unsigned long long kb_ld_relaxed_u64(const unsigned long long *p)
{
	unsigned long long v;
	asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p));
	return v;
}

/* The hand-over words' tag of a step (its serial) and a layer (0..255). */
__device__ __forceinline__ unsigned kb_ll_tag(uint32_t serial, int layer)
{
	return serial << 8 | (unsigned)layer;
}

/* Stores activation value v of token t, column col, into the planes o.planes of the
 * product layout (f16, bf16 hi + lo, 32-column sums, int8 levels with their block scale;
 * see KbActView).
 * Called by all 32 lanes of a warp together, lane i holding column col0 + i of a
 * 32-aligned col0: the block's sum is a butterfly over the warp whose lane-0 result is
 * kept, so every kernel that stores activations this way (k_act_prep and the fused
 * producers) writes the same bits.  The int8 levels are the CPU backend's Q8_0
 * activations (quant.c: d = amax / 127, q = roundf(x / d), d kept as f16), taken of the
 * f16-clamped value so that an infinite input gives a finite scale as the f16 plane does;
 * with them, for Q4_1's minimum, Q8_1's s.  So the int8 products see exactly the levels
 * and scales the CPU backend's dot products do.
 * PL: the planes as a compile-time set (no branches; kb_with_planes, kb_epi_pl), or o.planes
 * at run time: KB_PL_DYN with the int8 code, KB_PL_DYN16 without it.  Code a producer does not
 * run still costs it (the int8 code alone made SmolLM2's steps slower where no int8 plane
 * was written: bench/NOTES-gpu.md, session 6). */
template <unsigned PL = KB_PL_DYN>
__device__ __forceinline__ void kb_act_put(const KbActOut &o, int t, int64_t col, float v)
{
	const unsigned pl = PL >= KB_PL_DYN ? o.planes : PL;
	const int64_t dst = t * o.cap + kb_act_pos(col);
	/* clamp to the f16 range (NaN stays NaN: both comparisons are false) */
	const float vc = v > 65504.f ? 65504.f : (v < -65504.f ? -65504.f : v);
	const bool lead = (threadIdx.x & 31) == 0;
	if (pl & KB_PL_H)
		o.xh[dst] = __half_as_ushort(__float2half_rn(vc));
	if (pl & KB_PL_B) {
		const __nv_bfloat16 hi = __float2bfloat16_rn(v);
		o.xhi[dst] = __bfloat16_as_ushort(hi);
		o.xlo[dst] = __bfloat16_as_ushort(__float2bfloat16_rn(v - __bfloat162float(hi)));
	}
	if (pl & KB_PL_S) {
		float s = v;
		for (int off = 16; off; off >>= 1)
			s += __shfl_xor_sync(0xffffffffu, s, off);
		if (lead)
			o.xs[((col >> 6) * KB_MAX_TOK + t) * 2 + ((col >> 5) & 1)] = s;
	}
	if ((PL == KB_PL_DYN || (PL < KB_PL_DYN && (PL & KB_PL_Q))) && (pl & KB_PL_Q)) {
		/* |vc| as bits orders like the values (NaN above every finite one) */
		const float amax = __uint_as_float(__reduce_max_sync(0xffffffffu, __float_as_uint(fabsf(vc))));
		float id;
		const float d = kb_q8_scale(amax, &id);
		const int q = kb_q8_level(vc, id);
		o.xq[t * o.cap + kb_act8_pos(col)] = (int8_t)q;
		if (lead)
			o.xd[kb_act8_d(col >> 5, t)] = kb_f16_round(d);
		if (pl & KB_PL_E) { /* Q8_1's s, held finite: a padding block a later product
					   * multiplies by a zero minimum must not give 0 x inf */
			const int qs = __reduce_add_sync(0xffffffffu, q);
			if (lead)
				o.xe[kb_act8_d(col >> 5, t)] = kb_q8_sum_scale(qs, d);
		}
	}
}

/* silu(g) * u, rounded step by step (SwiGLU: elementwise.cu, and k_mmv_swi's flush). */
__device__ __forceinline__ float kb_silu_mul(float g, float u)
{
	return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

/* c += A B on the tensor cores: mma.sync m16n8k16, f16 operands, f32 sums (the
 * products, the GEMM, attention).  volatile: keeps a product's mmas after its chunk's
 * activation loads (also volatile), so that the compiler issues all of those loads
 * before the first mma instead of sinking each next to its use. */
__device__ __forceinline__ void kb_mma_f16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats as one f16x2 register (lo in the low half, as an mma operand wants). */
__device__ __forceinline__ uint32_t kb_pack_h2(float lo, float hi)
{
	const __half2 h = __floats2half2_rn(lo, hi);
	return *(const uint32_t *)&h;
}

/* Word I (0-3) of a 16-byte load. */
__device__ __forceinline__ uint32_t kb_u4_word(const uint4 &u, int i)
{
	return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w;
}

/* Scratch for split kernels (attention.cu, gemm.cu): *part with PART_BYTES and *cnt with
 * N_CNT zeroed counters, allocated the first time and kept (recorded graphs point at
 * them, so they never move).  Returns 0 or -errno, leaving both NULL on failure. */
int kb_cuda_split_scratch(KbCuda *ctx, size_t part_bytes, size_t n_cnt, float **part, unsigned **cnt);

/* gemm.cu: sets ctx->mmq_bulk from the device code loaded for ctx's device (kb_cuda_init). */
extern "C" int kb_cuda_mmq_probe(KbCuda *ctx);

/* Repack kernels live in repack.cu; the activation buffer is reset by matmul.cu. */
int kb_cuda_repack_band(KbCuda *ctx, KbCudaWeight *w, int64_t tile0, int64_t n_tiles,
			const uint8_t *raw_dev, int64_t rows_valid, int64_t row_bytes);

#endif
