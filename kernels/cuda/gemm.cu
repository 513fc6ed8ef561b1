/* kernels/cuda/gemm.cu: products of many tokens (prefill, batches above KB_CUDA_MAX_TOK)
 * on the tensor cores, from the same repacked weights as the decode kernels (layout.cuh).
 *
 * Why another kernel: matmul.cu's decode kernels take at most 8 tokens per pass, so a
 * batch of 64 read every weight 8 times and a 512-token prompt 64 times, and they apply
 * each 32-column block's scale to f32 partial sums per token, which costs as many
 * instructions as the mmas once the weights are reused across tokens.  Here a block
 * multiplies RT row tiles per warp (4 warps) by TB = 8 NT tokens: each weight fragment is
 * decoded once, with its scales folded in (f16: d*q, d*q + m, d*sc*q - dmin*m, ...), and
 * then feeds NT mmas.  Weights and activations of a chunk are staged in shared memory
 * with cp.async, two stages, so the next chunk's copies run under the current mmas.
 *
 * Rounding: the weights are f16 after scaling (relative error <= 2^-11; BF16 weights are
 * converted, so values beyond the f16 range would clamp), activations f16 as in the decode
 * path for every type but BF16 (whose decode path keeps activations as bf16 hi + lo), sums
 * in f32.  So a token's results differ from the decode
 * kernels' in the last bits; they do not depend on the launch (column splits are summed
 * in a fixed order, whichever block finishes last), so a graph replay gives the same
 * bits.
 *
 * Grid: x = token blocks (fastest, so that the blocks sharing a row block's weights run
 * together and all but the first read them from L2), y = row blocks of 4 * RT tiles of
 * every weight of the launch (q/k/v or gate/up run as one), z = splits of the columns
 * when x * y alone would leave multiprocessors idle (batched decode). */
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
	} else if constexpr (T == QD_TYPE_Q8_0) {
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

__device__ __forceinline__ void kb_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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
	int n_chunks, n, acc, ks;
	const uint16_t *x; /* [n][ldx] f16, permuted as the decode activations */
	int64_t ldx;
	float *part;       /* ks > 1: [ks][grid x * grid y][tile values] partial sums */
	unsigned *cnt;     /* ks > 1: per block tile, splits finished (reset by the last) */
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

template <int T, int RT, int NT>
__device__ __forceinline__ void mmq_stage(const KbMmqArgs &a, const KbMmqSeg &sg, uint32_t st, int ch,
					  int64_t tile0, int tok0)
{
	typedef Lay<T> L;
	typedef MmqGeo<T> G;
	constexpr int TILES = MMQ_WARPS * RT, XP = L::CC * 2 / 16, NTH = MMQ_WARPS * 32;
	const int left = (int)(sg.n_tiles - tile0 < TILES ? sg.n_tiles - tile0 : TILES);
	mmq_stage_region<G::QB / 16, TILES, G::WB>(sg.q + tile0 * a.q_tile + (int64_t)ch * G::QB, (uint32_t)a.q_tile,
						   left, st);
	if constexpr (G::SBY > 0)
		mmq_stage_region<G::SBY / 16, TILES, G::WB>(sg.s + tile0 * a.s_tile + (int64_t)ch * G::SBY,
							    (uint32_t)a.s_tile, left, st + G::QB);
	if constexpr (G::DBY > 0)
		mmq_stage_region<G::DBY / 16, TILES, G::WB>(sg.d + tile0 * a.d_tile + (int64_t)ch * G::DBY,
							    (uint32_t)a.d_tile, left, st + G::QB + G::SBY);
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

/* Block (x, y, z): tokens [64x, ...) (8 NT of them), the RT tiles of each of its 4 warps
 * in row block y, chunks of split z.  With splits, the partial sums meet as in
 * attention.cu: the last block of a tile adds them up in split order. */
template <int T, int RT, int NT>
__global__ void __launch_bounds__(MMQ_WARPS * 32) k_mmq(const KbMmqArgs a)
{
	typedef Lay<T> L;
	typedef MmqGeo<T> G;
	extern __shared__ __align__(16) uint8_t kb_sm[];
	__shared__ int last;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
	const int tok0 = blockIdx.x * NT * 8, by = blockIdx.y;
	const int si = a.nseg > 1 && by >= a.seg[0].y1 ? (a.nseg > 2 && by >= a.seg[1].y1 ? 2 : 1) : 0;
	const KbMmqSeg &sg = si == 0 ? a.seg[0] : si == 1 ? a.seg[1] : a.seg[2];
	const int64_t tile0 = (int64_t)(by - sg.y0) * MMQ_WARPS * RT, wtile = tile0 + warp * RT;
	const int ch0 = (int)((int64_t)a.n_chunks * blockIdx.z / a.ks);
	const int ch1 = (int)((int64_t)a.n_chunks * (blockIdx.z + 1) / a.ks);
	constexpr size_t STAGE = MMQ_WARPS * RT * G::WB + NT * 8 * G::XR;
	const uint32_t sm0 = (uint32_t)__cvta_generic_to_shared(kb_sm);
	kb_pdl_trigger();
	kb_pdl_wait();

	float acc[RT][NT][4];
	KB_UNROLL
	for (int rt = 0; rt < RT; rt++)
		KB_UNROLL
		for (int nt = 0; nt < NT; nt++)
			acc[rt][nt][0] = acc[rt][nt][1] = acc[rt][nt][2] = acc[rt][nt][3] = 0.f;

	if (ch0 < ch1)
		mmq_stage<T, RT, NT>(a, sg, sm0, ch0, tile0, tok0);
	kb_cp_commit();
	for (int ch = ch0; ch < ch1; ch++) {
		const int b = (ch - ch0) & 1;
		if (ch + 1 < ch1)
			mmq_stage<T, RT, NT>(a, sg, sm0 + (b ^ 1) * (uint32_t)STAGE, ch + 1, tile0, tok0);
		kb_cp_commit();
		kb_cp_wait<1>();
		__syncthreads();
		const uint8_t *st = kb_sm + b * STAGE;
		if (wtile < sg.n_tiles) {
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
							kb_mma(acc[rt][nt], fa[rt][i], bw[2 * i], bw[2 * i + 1]);
				}
			}
		}
		__syncthreads();
	}

	constexpr int TV = MMQ_WARPS * RT * NT * 4 * 32; /* values of a block tile */
	/* where this lane's acc[rt][nt][c] sits in a partial tile: lane-major, so that the
	 * stores and loads of a warp coalesce */
	auto pidx = [&](int rt, int nt, int c) { return (((warp * RT + rt) * NT + nt) * 4 + c) * 32 + lane; };
	const int64_t bt = (int64_t)blockIdx.y * gridDim.x + blockIdx.x;
	if (a.ks > 1) {
		/* leave this split's sums */
		float *pp = a.part + ((int64_t)blockIdx.z * gridDim.x * gridDim.y + bt) * TV;
		KB_UNROLL
		for (int rt = 0; rt < RT; rt++)
			KB_UNROLL
			for (int nt = 0; nt < NT; nt++)
				KB_UNROLL
				for (int c = 0; c < 4; c++)
					pp[pidx(rt, nt, c)] = acc[rt][nt][c];
		__threadfence();
		__syncthreads();
		if (threadIdx.x == 0) {
			last = atomicAdd(&a.cnt[bt], 1u) == (unsigned)a.ks - 1;
			if (last)
				a.cnt[bt] = 0; /* ready for the next launch (graph replays too) */
		}
		__syncthreads();
		if (!last)
			return;
		__threadfence();
		/* splits outermost, so that a split's loads are all in flight together; each
		 * value's sum still runs in split order */
		KB_UNROLL
		for (int rt = 0; rt < RT; rt++)
			KB_UNROLL
			for (int nt = 0; nt < NT; nt++)
				acc[rt][nt][0] = acc[rt][nt][1] = acc[rt][nt][2] = acc[rt][nt][3] = 0.f;
		for (int z = 0; z < a.ks; z++) {
			const float *pz = a.part + ((int64_t)z * gridDim.x * gridDim.y + bt) * TV;
			KB_UNROLL
			for (int rt = 0; rt < RT; rt++)
				KB_UNROLL
				for (int nt = 0; nt < NT; nt++)
					KB_UNROLL
					for (int c = 0; c < 4; c++)
						acc[rt][nt][c] += __ldcg(pz + pidx(rt, nt, c));
		}
	}
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

/* x (f32 [n][ldx], cols a multiple of 4) -> f16 in the decode activations' column order
 * (layout.cuh: x[64q + 16i + 4tq + j] at 64q + 16tq + 4i + j), padded with zeros to ldo
 * columns.  A thread takes one (token, 64-column group, tq): four float4 loads, two
 * 16-byte stores; few wide blocks, since launching a block per 64 values cost more than
 * the conversion itself. */
__global__ void __launch_bounds__(256) k_mmq_x(const float *x, int64_t ldx, int64_t cols, uint16_t *xo, int64_t ldo,
					       int64_t units)
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
		uint4 *o = (uint4 *)(xo + t * ldo + 64 * q + 16 * tq);
		o[0] = make_uint4(h[0], h[1], h[2], h[3]);
		o[1] = make_uint4(h[4], h[5], h[6], h[7]);
	}
}

/* Splits of the columns when the tiles alone leave multiprocessors idle: enough blocks
 * for MMQ_WAVE per multiprocessor, each split at least 4 chunks long.  Depends only on
 * the shape, so a launch is always split alike.  (H200, 7B Q4_0, 32/64 sequences: waves
 * of 2, 4 and 8 and splits of 2 or 4 chunks were within 5% of each other; 4/4 was best.) */
#define MMQ_WAVE 4
#define MMQ_PART_TILES(ctx) ((size_t)2 * MMQ_WAVE * (ctx)->sm_count)

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
	a.n_chunks = (int)w[0]->geo.n_chunks;
	a.n = n;
	a.acc = acc;
	a.x = xh;
	a.ldx = ldx;
	const int64_t gx = (n + NT * 8 - 1) / (NT * 8), tiles = gx * gy, want = (int64_t)MMQ_WAVE * ctx->sm_count;
	if (gx > 0x7fffffff || gy > 65535)
		return -EINVAL;
	int ks = 1;
	if (tiles < ctx->sm_count) {
		ks = (int)((want + tiles - 1) / tiles);
		if (ks > a.n_chunks / 4)
			ks = a.n_chunks / 4;
		if (ks < 1)
			ks = 1;
	}
	a.ks = ks;
	constexpr size_t TV = (size_t)MMQ_WARPS * RT * NT * 4 * 32;
	if (ks > 1) {
		/* tiles * ks < 2 * want: room allocated once, so recorded graphs stay valid */
		int r = kb_cuda_split_scratch(ctx, MMQ_PART_TILES(ctx) * 2 * 8 * 4 * 32 * MMQ_WARPS * sizeof(float),
					      MMQ_PART_TILES(ctx), &ctx->mmq_part, &ctx->mmq_cnt);
		if (r < 0)
			return r;
		if ((size_t)(tiles * ks) > MMQ_PART_TILES(ctx) || TV > (size_t)2 * 8 * 4 * 32 * MMQ_WARPS)
			return -EINVAL; /* cannot happen with the choice above */
		a.part = ctx->mmq_part;
		a.cnt = ctx->mmq_cnt;
	}
	constexpr size_t smem = mmq_smem<T, RT, NT>();
	/* above 48 KiB needs the opt-in, which is per device: once per context and kernel */
	static_assert(RT == 2 && (NT == 4 || NT == 8), "mmq_smem_set covers these shapes");
	uint8_t *set = &ctx->mmq_smem_set[kb_type_slot(T)][NT == 8];
	if (!*set) {
		int r = kb_err(cudaFuncSetAttribute(k_mmq<T, RT, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
						    (int)smem));
		if (r < 0)
			return r;
		*set = 1;
	}
	return kb_launch(ctx, k_mmq<T, RT, NT>, dim3((unsigned)gx, (unsigned)gy, (unsigned)ks), dim3(MMQ_WARPS * 32),
			 smem, a);
}

/* Tokens per block by token count: 32 for batched decode, 64 above where the device lets a
 * block have the shared memory (104-119 KiB; sm_86/89 allow 99 KiB, so they stay at 32;
 * every type's 32-token block, at most 86 KiB, fits every device this is built for). */
template <int T>
static int mmq_type(KbCuda *ctx, int nw, const KbCudaWeight *const *w, const uint16_t *xh, int64_t ldx, int n,
		    float *const *y, int acc)
{
	if (n <= 32 || mmq_smem<T, 2, 8>() + 64 > ctx->smem_optin)
		return mmq_launch<T, 2, 4>(ctx, nw, w, xh, ldx, n, y, acc);
	return mmq_launch<T, 2, 8>(ctx, nw, w, xh, ldx, n, y, acc);
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
	return (size_t)pad * (size_t)n * sizeof(uint16_t);
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
	int r = kb_launch(ctx, k_mmq_x, dim3((unsigned)grid), dim3(256), 0, x, cols, cols, xh, ldo, units);
	/* one launch for weights of one type (q/k/v, gate/up), else one per weight */
	int same = 1;
	for (int i = 1; i < nw; i++)
		same &= w[i]->type == w[0]->type;
	for (int i = 0; i < nw && r == 0; i += same ? nw : 1) {
		const int m = same ? nw : 1;
		r = kb_with_product_type(w[i]->type, [&](auto t) {
			return mmq_type<decltype(t)::value>(ctx, m, w + i, xh, ldo, n, y + i, acc);
		});
	}
	return r;
}
