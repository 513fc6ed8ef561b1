/* kernels/cuda/attention.cu: f16 KV-cache stores and attention over the cache for a
 * batch of query tokens (decode, and steps small enough to be recorded as graphs; larger
 * steps take attention_tc.cu when the head size allows).
 *
 * Attention: blocks of 4 warps per (token, head), several per pair when there are few
 * pairs (decode) and the context is long (at least att_split_keys keys a split), each
 * over a share of the keys (split-K, merged by the last one).  Warp w takes the w-th
 * quarter of its block's keys, in tiles of 32: each lane scores one key of the tile (a
 * whole dot product over head_dim, the row in one round of 16-byte loads; at decode
 * sizes, VPRE, the warp scores the tile with mmas instead, att_scores), the warp updates
 * its running max and sum (online softmax), then walks the tile's 32 weights
 * accumulating values, each lane owning head_dim/32 dimensions (coalesced row reads; with
 * VPRE the tile's V rows are requested with its K rows).  The four warps' partial
 * results meet in shared memory at the end. */
#include <cuda_fp16.h>
#include <math.h>
#include <string.h>

#include "internal.cuh"
#include "ops.h"

__global__ void k_kv_store(int trig, const float *k, const float *v, __half *kc, __half *vc, const int32_t *pos,
			   const int32_t *seq, int kvd, int64_t stride)
{
	KB_TRACE();
	if (trig)
		kb_pdl_trigger();
	kb_pdl_wait();
	/* one element per thread over (token, column block): a decode step's few rows
	 * spread over many multiprocessors instead of looping in one block */
	const int t = blockIdx.x, i = blockIdx.y * blockDim.x + threadIdx.x;
	if (i >= kvd)
		return;
	const int64_t off = (int64_t)seq[t] * stride + (int64_t)pos[t] * kvd;
	kc[off + i] = __float2half_rn(k[(int64_t)t * kvd + i]);
	vc[off + i] = __float2half_rn(v[(int64_t)t * kvd + i]);
}

extern "C" int kb_cuda_kv_store(KbCuda *ctx, const float *k, const float *v, uint16_t *k_cache, uint16_t *v_cache,
				const int32_t *pos, const int32_t *seq, int n, int kvd, int64_t slot_stride)
{
	if (!ctx || !k || !v || !k_cache || !v_cache || !pos || !seq || n < 0 || kvd < 1 || slot_stride < kvd)
		return -EINVAL;
	if (n == 0)
		return 0;
	const int pdl = kb_small_pdl(n);
	return kb_launch_ex(ctx, pdl, k_kv_store, dim3((unsigned)n, (unsigned)((kvd + 255) / 256)), dim3(256),
			0, pdl, k, v, (__half *)k_cache, (__half *)v_cache, pos, seq, kvd, slot_stride);
}

#define ATT_WARPS 4
#define KB_ATT_WAVE 4 /* split attention aims at this many blocks per multiprocessor */
#define ATT_MAXPER 8 /* head_dim / 32 */

/* The warp's largest value: one integer reduction on the float's bits mapped to an int of
 * the same order (negative values' magnitude bits flipped; the map is its own inverse),
 * instead of five dependent shuffles. */
__device__ __forceinline__ float warp_max(float v)
{
	int i = __float_as_int(v);
	i ^= (i >> 31) & 0x7fffffff;
	i = __reduce_max_sync(0xffffffffu, i);
	i ^= (i >> 31) & 0x7fffffff;
	return __int_as_float(i);
}

__device__ __forceinline__ float warp_sum(float v)
{
	for (int o = 16; o; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

/* Splits: a (token, head) gets min(ceil(len / split_keys), gridDim.y) blocks, each over a
 * contiguous share of its keys, so that a decode step with few (token, head) pairs still
 * fills the GPU.  With more than one split each block leaves its (max, sum, unnormalized
 * values) in PART; the last block of the pair to finish (a counter in CNT, reset by that
 * block) merges them in split order, so the result does not depend on which block
 * finished last. */
/* PER = head_dim / 32 values per lane: lane l owns dimensions PER*l .. PER*l + PER-1, so
 * that a value row is one load of 2*PER bytes per lane. */
template <int PER>
__device__ __forceinline__ void att_vload(const __half *vr, int lane, float (&v)[ATT_MAXPER])
{
	const __half *p = vr + PER * lane;
	if constexpr (PER == 1) {
		v[0] = __half2float(*p);
	} else if constexpr (PER == 2) {
		const float2 f = __half22float2(*(const __half2 *)p);
		v[0] = f.x;
		v[1] = f.y;
	} else if constexpr (PER == 4) {
		const uint2 u = *(const uint2 *)p;
		const float2 a = __half22float2(*(const __half2 *)&u.x), b = __half22float2(*(const __half2 *)&u.y);
		v[0] = a.x;
		v[1] = a.y;
		v[2] = b.x;
		v[3] = b.y;
	} else if constexpr (PER != 8) { /* 3, 5, 6, 7: not a vector size */
#pragma unroll
		for (int k = 0; k < PER; k++)
			v[k] = __half2float(p[k]);
	} else {
		const uint4 u = *(const uint4 *)p;
		const uint32_t w[4] = { u.x, u.y, u.z, u.w };
#pragma unroll
		for (int k = 0; k < 4; k++) {
			const float2 f = __half22float2(*(const __half2 *)&w[k]);
			v[2 * k] = f.x;
			v[2 * k + 1] = f.y;
		}
	}
}

/* A tile's loads (k_attention's VPRE instances), for keys in [lo, hi) below kw1; other
 * registers keep what they hold.  K in the A-operand order of att_scores: lane (g, tq)
 * (g = lane / 4, tq = lane % 4) takes keys j0 + g + 8 r (r = 0..3) at dimensions
 * 32 m + 8 tq .. +7 (m = 0..PER-1), u[r * PER + m]: one 16-byte load each, a row's 64
 * bytes a load across its four lanes.  V: the tile's 32 rows, lane l's PER halves of
 * each (vpre[jj], the row j0 + jj). */
template <int PER>
__device__ __forceinline__ void att_tile_load(const __half *kc, const __half *vc, int64_t base, int kvd, int j0,
					      int kw1, int lo, int hi, int lane, uint4 (&u)[4 * PER],
					      uint2 (&vpre)[32])
{
	/* rows j0 + [a, b) as a bit mask, and one pointer stepped a row at a time: four
	 * instructions a row.  Written with each row's conditions and address, the compiler
	 * rebuilt both from the constant bank for every row (~13 instructions): the step's
	 * own rows, loaded after the wait by the warp that holds them, cost that warp ~440
	 * instructions while the block's first barrier waited for it (ncu; 7B batch 1 Q4_0
	 * +2.5%, Q8_0 +1.2%: bench/NOTES-gpu.md, session 24) */
	const int a = (lo > j0 ? lo : j0) - j0;
	int b = (hi < kw1 ? hi : kw1) - j0;
	b = b < 32 ? b : 32;
	const uint32_t below_b = b <= 0 ? 0u : b >= 32 ? 0xffffffffu : (1u << b) - 1u;
	const uint32_t below_a = a >= 32 ? 0xffffffffu : (1u << a) - 1u;
	const uint32_t rows = below_b & ~below_a;
	const int g = lane >> 2;
	const __half *kr = kc + base + (int64_t)(j0 + g) * kvd + 8 * (lane & 3);
#pragma unroll
	for (int r = 0; r < 4; r++, kr += 8 * (int64_t)kvd) {
		if (rows >> (g + 8 * r) & 1u) {
#pragma unroll
			for (int m = 0; m < PER; m++)
				u[r * PER + m] = *(const uint4 *)(kr + 32 * m);
		}
	}
	const __half *vr = vc + base + (int64_t)j0 * kvd + PER * lane;
#pragma unroll
	for (int jj = 0; jj < 32; jj++, vr += kvd) {
		if (rows >> jj & 1u) {
			if constexpr (PER == 4)
				vpre[jj] = *(const uint2 *)vr;
			else
				vpre[jj].x = *(const uint32_t *)vr;
		}
	}
}

/* The tile's 32 scores q . k on the tensor cores (VPRE): keys as the rows of A (16 a
 * mma, u in att_tile_load's order), q as B's column 0 (qb: lane (0, tq)'s halves of q at
 * 32 m + 8 tq .. +7, zeros in the other lanes).  A k-step takes 16 dimensions, permuted
 * alike in A and B, so each sum is the whole dot product: f16 x f16 products, exact in
 * f32, accumulated by the tensor cores in f32 (in another order, and not with IEEE
 * rounding at every add, than the lane-per-key form this replaced, 327 instructions a
 * warp; q as A and keys as B's columns, 8 keys an mma, measured slower:
 * bench/NOTES-gpu.md, session 25).  TWO: keys 16-31 of the tile too (the same for the
 * whole warp).  Returns key j0 + lane's score in lane lane (unscaled); lanes past the
 * tile's keys get whatever their A rows held (unloaded registers: possibly NaN), which
 * the caller masks.  A row's sum depends on that row alone, so they reach no other. */
template <int PER>
__device__ __forceinline__ float att_scores(const uint4 (&u)[4 * PER], const uint32_t (&qb)[PER][4], int lane,
					    bool two)
{
	/* c[mt][hs]: M-tile mt (keys 16 mt .. +15), the k-steps of each load's halves hs in
	 * chains of their own; column 0 holds the scores, rows g (c[0]) and g + 8 (c[2]) */
	float c[2][2][4];
#pragma unroll
	for (int mt = 0; mt < 2; mt++)
#pragma unroll
		for (int hs = 0; hs < 2; hs++)
			c[mt][hs][0] = c[mt][hs][1] = c[mt][hs][2] = c[mt][hs][3] = 0.f;
#pragma unroll
	for (int mt = 0; mt < 2; mt++) {
		if (mt == 1 && !two)
			break;
#pragma unroll
		for (int m = 0; m < PER; m++)
#pragma unroll
			for (int hs = 0; hs < 2; hs++) {
				const uint4 &lo = u[(2 * mt) * PER + m], &hi = u[(2 * mt + 1) * PER + m];
				const uint32_t a[4] = { kb_u4_word(lo, 2 * hs), kb_u4_word(hi, 2 * hs),
							kb_u4_word(lo, 2 * hs + 1), kb_u4_word(hi, 2 * hs + 1) };
				kb_mma_f16(c[mt][hs], a, qb[m][2 * hs], qb[m][2 * hs + 1]);
			}
	}
	/* key 8 r + g sits in lane 4 g: r = 2 mt + (row g + 8) */
	const int src = (lane & 7) << 2, r = lane >> 3;
	const float s0 = __shfl_sync(0xffffffffu, c[0][0][0] + c[0][1][0], src);
	const float s1 = __shfl_sync(0xffffffffu, c[0][0][2] + c[0][1][2], src);
	const float s2 = __shfl_sync(0xffffffffu, c[1][0][0] + c[1][1][0], src);
	const float s3 = __shfl_sync(0xffffffffu, c[1][0][2] + c[1][1][2], src);
	return r == 0 ? s0 : r == 1 ? s1 : r == 2 ? s2 : s3;
}

/* The LL instances (KbCudaLL): lane l's PER words of q (dimensions PER l ..) and, in the
 * warp that holds the step's own key (OWN), of its K and V rows, polled until every one
 * carries TAG; then q as floats and K, V as the caches hold them (f16 of the same floats:
 * rope_kv_store's rounding), two to a word.  Traps after ~2 s of polling: a hand-over that
 * never comes is a bug, and an error the caller sees (-EIO) beats a hang. */
template <int PER>
__device__ __forceinline__ void att_ll_poll(const KbCudaLL &ll, unsigned tag, int h, int kvh, int hd, bool own,
					    int lane, float (&qv)[PER], uint32_t (&kw)[PER / 2],
					    uint32_t (&vw)[PER / 2])
{
	const unsigned long long *base = (const unsigned long long *)ll.ll;
	const unsigned long long *pq = base + (int64_t)h * hd + PER * lane;
	const unsigned long long *pk = base + ll.nq + (int64_t)kvh * hd + PER * lane, *pv = pk + ll.nkv;
	unsigned long long eq[PER], ek[PER], ev[PER], t0 = 0;
	for (unsigned spins = 0;; spins++) {
		bool ok = true;
#pragma unroll
		for (int i = 0; i < PER; i++) {
			eq[i] = kb_ld_relaxed_u64(pq + i);
			ek[i] = ev[i] = (unsigned long long)tag << 32;
			if (own) {
				ek[i] = kb_ld_relaxed_u64(pk + i);
				ev[i] = kb_ld_relaxed_u64(pv + i);
			}
		}
#pragma unroll
		for (int i = 0; i < PER; i++)
			ok &= (unsigned)(eq[i] >> 32) == tag && (unsigned)(ek[i] >> 32) == tag &&
			      (unsigned)(ev[i] >> 32) == tag;
		if (__all_sync(0xffffffffu, ok))
			break;
		/* the clock read only once the rows are late (every 1024th poll) */
		if ((spins & 1023) == 1023) {
			const unsigned long long t = kb_gtime();
			if (!t0)
				t0 = t;
			else if (t - t0 > 2000000000ull)
				__trap();
		}
	}
#pragma unroll
	for (int i = 0; i < PER; i++)
		qv[i] = __uint_as_float((uint32_t)eq[i]);
#pragma unroll
	for (int i = 0; i < PER / 2; i++) {
		kw[i] = kb_pack_h2(__uint_as_float((uint32_t)ek[2 * i]), __uint_as_float((uint32_t)ek[2 * i + 1]));
		vw[i] = kb_pack_h2(__uint_as_float((uint32_t)ev[2 * i]), __uint_as_float((uint32_t)ev[2 * i + 1]));
	}
}

/* Word k (0-3) of the f16 words of dimensions 32 m + 8 tq .. + 7 (att_scores' operand order),
 * from the lanes that hold them PER to a lane (W: their words, two dimensions each). */
template <int PER>
__device__ __forceinline__ uint32_t att_ll_word(const uint32_t (&w)[PER / 2], int m, int tq, int k)
{
	/* (32 m + 8 tq + 2 k) mod PER does not depend on tq (PER 2 or 4): a constant index */
	return __shfl_sync(0xffffffffu, w[(2 * k % PER) / 2], (32 * m + 8 * tq + 2 * k) / PER);
}

/* PL: the planes the output goes to (kb_act_put's: KB_PL_DYN, KB_PL_DYN16 without the int8
 * code, or att_kernel_vpre's fixed sets).  LL (VPRE only): q and the step's own K and V rows
 * from the q/k/v launch's hand-over words (KbCudaLL) instead of after waiting for it. */
template <int PER, bool VPRE, unsigned PL, bool LL = false>
__global__ void __launch_bounds__(ATT_WARPS * 32) k_attention(int trig, const float *q, const __half *kc,
							      const __half *vc,
							      const int32_t *pos, const int32_t *seq, int n_head,
							      int group, int hd, int kvd, int64_t stride, float scale,
							      int split_keys,
							      float *out, KbActOut act /* planes 0: none */, float *part,
							      unsigned *cnt, const KbCudaLL ll)
{
	static_assert(!LL || VPRE, "the hand-over words: the decode instances");
	KB_TRACE();
	/* TRIG: 0 no early launch of the next kernel; 1 once this block has asked for its
	 * rows (below); 2 now (kb_cuda_attention's EARLY) */
	if (trig == 2)
		kb_pdl_trigger();
	extern __shared__ __align__(16) float sm[]; /* qs[hd], acc[ATT_WARPS][hd], m[ATT_WARPS], l[ATT_WARPS] */
	__shared__ int last;
	float *qs = sm, *wacc = sm + hd, *wm = wacc + ATT_WARPS * hd, *wl = wm + ATT_WARPS;
	const int bh = blockIdx.x, t = bh / n_head, h = bh % n_head, sp = blockIdx.y;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	/* Read before waiting for the previous kernel (the q/k/v product or RoPE, which
	 * write q and this step's K and V rows): the positions and slots, and in the decode
	 * instances (VPRE; elsewhere the held rows would cost occupancy: 60 -> 202 registers
	 * at PER 4 on sm_90a) the first tile's K and V rows of keys below the smallest
	 * position this step writes in the token's slot (a step may rewind a sequence:
	 * positions 5, 6, 2).  Both were written before the step's first kernel started: a
	 * step begins with the copy of its indices (cuda_step_begin), which waits for every
	 * earlier kernel (outside steps, test-backend's direct calls, positions are copied
	 * when they change: idx_get).  Without an early launch (trig 0) everything before
	 * has finished. */
	const int len = pos[t] + 1;
	/* splits in use: at least split_keys keys each.  The launch (and a recorded graph)
	 * has gridDim.y splits for the step's longest context (or for any, when the caller
	 * did not say); at shorter ones the merge would cost more than the split saves, so
	 * the spare blocks leave at once. */
	const int S_all = gridDim.y, S_need = (len + split_keys - 1) / split_keys;
	const int S = S_need < S_all ? S_need : S_all;
	if (sp >= S)
		return;
	const int k0 = (int)((int64_t)len * sp / S), k1 = (int)((int64_t)len * (sp + 1) / S);
	const int sl = seq[t];
	int kready = len;
	if (VPRE && trig) {
		const int n_tok = (int)gridDim.x / n_head;
		for (int u = 0; u < n_tok; u++) {
			const int pu = pos[u];
			if (seq[u] == sl && pu < kready)
				kready = pu;
		}
	}
	const int64_t base = (int64_t)sl * stride + (int64_t)(h / group) * hd;
	if (kready >= 0) /* trace builds: the indices read (a branch on them, so the mark waits) */
		KB_MARK(7);
	/* each warp takes a contiguous quarter of the split's keys, in tiles of 32: a short
	 * context (decode) keeps all four warps busy on a few keys each rather than one
	 * warp walking them all */
	const int kw0 = k0 + (int)((int64_t)(k1 - k0) * warp / ATT_WARPS);
	const int kw1 = k0 + (int)((int64_t)(k1 - k0) * (warp + 1) / ATT_WARPS);
	/* VPRE (head sizes 64 and 128, PER 2 or 4): a tile's 32 V rows are requested with its
	 * K rows, before the scores (32 words or pairs of words a lane), so a tile costs one
	 * memory latency instead of one per eight V rows.  Taken when the launch is at most a
	 * wave of (token, head) pairs: its registers (202 a thread at PER 4 with the mma
	 * scores, 126 at PER 2; 60 without VPRE) cost occupancy that many blocks need (7B, 64
	 * tokens: -1.5%, measured at 168). */
	static_assert(!VPRE || PER == 2 || PER == 4, "V rows preloaded for head sizes 64 and 128");
	constexpr int NV = 4 * PER;
	uint4 u[NV];
	uint2 vpre[VPRE ? 32 : 1] = {}; /* rows past the context weigh 0 in the V sums: finite */
	if constexpr (VPRE)
		if (kw0 < kw1)
			att_tile_load<PER>(kc, vc, base, kvd, kw0, kw1, 0, kready, lane, u, vpre);
	/* by default the next kernel (o) launches once every block has asked for its rows
	 * (a block's first warp here counts for it; SASS keeps the loads before), so they are
	 * ahead of o's weight preloads, which still load while attention runs (launched at the
	 * block's start, o's preloads delayed the rows: Q8_0 batch 8 -0.5%, F16 batch 1 -5%;
	 * bench/NOTES-gpu.md, session 23) */
	if (trig == 1)
		kb_pdl_trigger();
	/* LL: the step's own key (one token: the last, kready) and, where this warp holds it,
	 * its K and V from the hand-over words, injected into the tile that holds it below */
	const bool own = LL && kw0 < kw1 && kready < kw1;
	uint32_t llk[PER / 2 > 0 ? PER / 2 : 1], llv[PER / 2 > 0 ? PER / 2 : 1]; /* LL only */
	uint32_t qb[VPRE ? PER : 1][4];
	if constexpr (LL) {
		/* no wait: the rows' tags say when they are there (the K/V rows below kready and
		 * the indices were written before the step's first kernel, as above) */
		float qv[PER];
		att_ll_poll<PER>(ll, kb_ll_tag(*ll.serial, ll.layer), h, h / group, hd, own, lane, qv, llk, llv);
		uint32_t wq[PER / 2];
#pragma unroll
		for (int i = 0; i < PER / 2; i++)
			wq[i] = kb_pack_h2(qv[2 * i], qv[2 * i + 1]);
#pragma unroll
		for (int m = 0; m < PER; m++)
#pragma unroll
			for (int k = 0; k < 4; k++) {
				const uint32_t v = att_ll_word<PER>(wq, m, lane & 3, k);
				qb[m][k] = lane < 4 ? v : 0u;
			}
	} else {
#ifdef QD_DEV_NOWAIT_ATT
		/* dev-only bound (tools/gpu-variant.sh; wrong results): attention on stale q, K and V
		 * rows, without waiting for the q/k/v product (session 32's "attention alone") */
		if (!trig)
#endif
			kb_pdl_wait();
	}
	const float *qr = q + ((int64_t)t * n_head + h) * hd;
	/* VPRE: q as att_scores' B operand, straight to registers (lanes 0-3 of each warp;
	 * no shared memory, no barrier); otherwise in shared memory, rounded to f16 alike */
	if constexpr (LL) {
		(void)qr;
	} else if constexpr (VPRE) {
#pragma unroll
		for (int m = 0; m < PER; m++) {
			float4 x0 = make_float4(0.f, 0.f, 0.f, 0.f), x1 = x0;
			if (lane < 4) {
				x0 = *(const float4 *)(qr + 32 * m + 8 * lane);
				x1 = *(const float4 *)(qr + 32 * m + 8 * lane + 4);
			}
			qb[m][0] = kb_pack_h2(x0.x, x0.y);
			qb[m][1] = kb_pack_h2(x0.z, x0.w);
			qb[m][2] = kb_pack_h2(x1.x, x1.y);
			qb[m][3] = kb_pack_h2(x1.z, x1.w);
		}
		if (kw0 < kw1 && kready < kw1) /* the rows this step wrote */
			att_tile_load<PER>(kc, vc, base, kvd, kw0, kw1, kready, kw1, lane, u, vpre);
	} else {
		for (int i = threadIdx.x; i < hd; i += blockDim.x)
			qs[i] = __half2float(__float2half_rn(qr[i]));
		__syncthreads();
	}
	KB_MARK(0);
#ifdef QD_TRACE
	if (VPRE && threadIdx.x == 0 && kw0 < kw1) { /* thread 0's rows asked before the wait, in */
		volatile uint32_t sink = u[0].x ^ vpre[0].x;
		(void)sink;
		KB_MARK(6);
	}
#endif

	float acc[ATT_MAXPER];
#pragma unroll
	for (int k = 0; k < ATT_MAXPER; k++)
		acc[k] = 0.f;
	float m = -INFINITY, l = 0.f;
	for (int j0 = kw0; j0 < kw1; j0 += 32) {
		const int j = j0 + lane;
		float s = -INFINITY;
		if constexpr (VPRE) {
			if (j0 > kw0) /* the first tile's rows are loaded above */
				att_tile_load<PER>(kc, vc, base, kvd, j0, kw1, 0, LL ? kready : kw1, lane, u, vpre);
			if (own && kready - j0 < 32) { /* LL: the tile with the step's own key */
				const int jj = kready - j0, go = jj & 7, ro = jj >> 3, g = lane >> 2;
#pragma unroll
				for (int m = 0; m < PER; m++)
#pragma unroll
					for (int k = 0; k < 4; k++) {
						const uint32_t v = att_ll_word<PER>(llk, m, lane & 3, k);
#pragma unroll
						for (int r = 0; r < 4; r++)
							if (g == go && r == ro) {
								uint4 &x = u[r * PER + m];
								(k == 0 ? x.x : k == 1 ? x.y : k == 2 ? x.z : x.w) = v;
							}
					}
#pragma unroll
				for (int x = 0; x < 32; x++)
					if (x == jj) {
						vpre[x].x = llv[0];
						if constexpr (PER == 4)
							vpre[x].y = llv[PER / 2 - 1];
					}
			}
			const float d = att_scores<PER>(u, qb, lane, kw1 - j0 > 16);
			if (j < kw1)
				s = d * scale;
		} else if (j < kw1) {
			/* the key's V row on its way to L2 while the score is computed */
			const __half *vr = vc + base + (int64_t)j * kvd;
			for (int b = 0; b < hd; b += 64)
				asm volatile("prefetch.global.L2 [%0];" ::"l"(vr + b));
			const __half *kr = kc + base + (int64_t)j * kvd;
#pragma unroll
			for (int v = 0; v < NV; v++)
				u[v] = *(const uint4 *)(kr + 8 * v);
			/* the whole K row requested at once (hd = 32 * PER halves, 4 * PER loads),
			 * then four independent sums: one memory latency and a quarter of the
			 * dependent adds of a single running sum */
			float d4[4] = { 0.f, 0.f, 0.f, 0.f };
#pragma unroll
			for (int v = 0; v < NV; v++) {
				const __half2 *h2 = (const __half2 *)&u[v];
				const float4 qa = *(const float4 *)(qs + 8 * v), qc = *(const float4 *)(qs + 8 * v + 4);
				const float2 f0 = __half22float2(h2[0]), f1 = __half22float2(h2[1]);
				const float2 f2 = __half22float2(h2[2]), f3 = __half22float2(h2[3]);
				d4[v & 3] = fmaf(qa.x, f0.x, d4[v & 3]);
				d4[v & 3] = fmaf(qa.y, f0.y, d4[v & 3]);
				d4[v & 3] = fmaf(qa.z, f1.x, d4[v & 3]);
				d4[v & 3] = fmaf(qa.w, f1.y, d4[v & 3]);
				d4[v & 3] = fmaf(qc.x, f2.x, d4[v & 3]);
				d4[v & 3] = fmaf(qc.y, f2.y, d4[v & 3]);
				d4[v & 3] = fmaf(qc.z, f3.x, d4[v & 3]);
				d4[v & 3] = fmaf(qc.w, f3.y, d4[v & 3]);
			}
			s = ((d4[0] + d4[1]) + (d4[2] + d4[3])) * scale;
		}
		const float mnew = fmaxf(m, warp_max(s)); /* finite: lane 0's key is in range */
		const float p = j < kw1 ? expf(s - mnew) : 0.f;
		const float corr = expf(m - mnew);
		l = l * corr + warp_sum(p);
#pragma unroll
		for (int k = 0; k < ATT_MAXPER; k++)
			acc[k] *= corr;
		const int cnt_j = kw1 - j0 < 32 ? kw1 - j0 : 32;
		if constexpr (VPRE) {
			/* eight rows a group without a branch inside, so that its eight
			 * shuffles issue back to back (a test and a branch a row kept each
			 * row's shuffle behind the one before).  Rows past cnt_j in a group
			 * have p = 0 and registers that hold zeros or an earlier tile's rows
			 * (finite: an earlier tile's inf would have made the sums non-finite
			 * already), so they add +-0: the same sums in the same order, up to
			 * the sign of a zero sum */
#pragma unroll
			for (int g = 0; g < 32; g += 8) {
				if (g >= cnt_j) /* the same for the whole warp */
					break;
				float pj[8];
#pragma unroll
				for (int jj = 0; jj < 8; jj++)
					pj[jj] = __shfl_sync(0xffffffffu, p, g + jj);
#pragma unroll
				for (int jj = 0; jj < 8; jj++) {
					const float2 a = __half22float2(*(const __half2 *)&vpre[g + jj].x);
					acc[0] = fmaf(pj[jj], a.x, acc[0]);
					acc[1] = fmaf(pj[jj], a.y, acc[1]);
					if constexpr (PER == 4) {
						const float2 b = __half22float2(*(const __half2 *)&vpre[g + jj].y);
						acc[2] = fmaf(pj[jj], b.x, acc[2]);
						acc[3] = fmaf(pj[jj], b.y, acc[3]);
					}
				}
			}
		} else {
			/* unrolled so that several rows' loads are in flight together; each
			 * lane's sums keep their order */
#pragma unroll 8
			for (int jj = 0; jj < cnt_j; jj++) {
				const float pj = __shfl_sync(0xffffffffu, p, jj);
				float v[ATT_MAXPER];
				att_vload<PER>(vc + base + (int64_t)(j0 + jj) * kvd, lane, v);
#pragma unroll
				for (int k = 0; k < PER; k++)
					acc[k] = fmaf(pj, v[k], acc[k]);
			}
		}
		m = mnew;
		if (j0 == kw0)
			KB_MARK(1);
	}
	KB_MARK(2);
#pragma unroll
	for (int k = 0; k < PER; k++)
		wacc[warp * hd + PER * lane + k] = acc[k];
	if (lane == 0) {
		wm[warp] = m;
		wl[warp] = l;
	}
	__syncthreads();
	KB_MARK(3);
	/* warps without keys have m = -inf, l = 0 and weigh nothing */
	float M = wm[0];
	for (int w = 1; w < ATT_WARPS; w++)
		M = fmaxf(M, wm[w]);
	float L = 0.f, f[ATT_WARPS];
	for (int w = 0; w < ATT_WARPS; w++) {
		f[w] = wl[w] > 0.f ? expf(wm[w] - M) : 0.f;
		L += wl[w] * f[w];
	}
	float *o = out + ((int64_t)t * n_head + h) * hd;
	if (S > 1) {
		float *pp = part + ((int64_t)bh * S_all + sp) * (hd + 2);
		for (int i = threadIdx.x; i < hd; i += blockDim.x) {
			float sum = 0.f;
			for (int w = 0; w < ATT_WARPS; w++)
				sum += wacc[w * hd + i] * f[w];
			pp[i] = sum;
		}
		if (threadIdx.x == 0) {
			pp[hd] = M;
			pp[hd + 1] = L;
		}
		__threadfence();
		__syncthreads();
		if (threadIdx.x == 0) {
			last = atomicAdd(&cnt[bh], 1u) == (unsigned)S - 1;
			if (last)
				cnt[bh] = 0; /* ready for the next launch (graph replays too) */
		}
		__syncthreads();
		if (!last)
			return;
		__threadfence();
		/* the splits' maxima, sums and weights in shared memory (wacc is free now) */
		const float *p0 = part + (int64_t)bh * S_all * (hd + 2);
		static_assert(KB_ATT_MAX_SPLITS <= 16, "the merge's shared arrays");
		float *sm_m = wacc, *sm_l = wacc + 16, *sm_w = wacc + 32;
		if (threadIdx.x < S) {
			sm_m[threadIdx.x] = __ldcg(p0 + threadIdx.x * (hd + 2) + hd);
			sm_l[threadIdx.x] = __ldcg(p0 + threadIdx.x * (hd + 2) + hd + 1);
		}
		__syncthreads();
		M = -INFINITY;
		for (int s2 = 0; s2 < S; s2++)
			if (sm_l[s2] > 0.f)
				M = fmaxf(M, sm_m[s2]);
		if (threadIdx.x < S) /* splits without keys weigh nothing */
			sm_w[threadIdx.x] = sm_l[threadIdx.x] > 0.f ? expf(sm_m[threadIdx.x] - M) : 0.f;
		__syncthreads();
		L = 0.f;
		for (int s2 = 0; s2 < S; s2++)
			L += sm_l[s2] * sm_w[s2];
		const float inv = 1.0f / L;
		/* hd is a multiple of 32: whole warps reach kb_act_put together */
		for (int i = threadIdx.x; i < hd; i += blockDim.x) {
			float sum = 0.f;
#pragma unroll 4
			for (int s2 = 0; s2 < S; s2++)
				sum += __ldcg(p0 + s2 * (hd + 2) + i) * sm_w[s2];
			o[i] = sum * inv;
			if (act.planes)
				kb_act_put<PL>(act, t, (int64_t)h * hd + i, sum * inv);
		}
		return;
	}
	const float inv = 1.0f / L;
	for (int i = threadIdx.x; i < hd; i += blockDim.x) {
		float s = 0.f;
		for (int w = 0; w < ATT_WARPS; w++)
			s += wacc[w * hd + i] * f[w];
		o[i] = s * inv;
		if (act.planes)
			kb_act_put<PL>(act, t, (int64_t)h * hd + i, s * inv);
	}
	KB_MARK(4);
}

typedef void (*AttKernel)(int, const float *, const __half *, const __half *, const int32_t *, const int32_t *, int,
			  int, int, int, int64_t, float, int, float *, KbActOut, float *, unsigned *, const KbCudaLL);

/* The k_attention instance for a head size (a multiple of 32, at most 256) that does not
 * preload V (att_kernel_vpre's are the decode ones); PL KB_PL_DYN or KB_PL_DYN16. */
template <unsigned PL> static AttKernel att_kernel(int head_dim)
{
	switch (head_dim / 32) {
	case 1: return k_attention<1, false, PL>;
	case 2: return k_attention<2, false, PL>;
	case 3: return k_attention<3, false, PL>;
	case 4: return k_attention<4, false, PL>;
	case 5: return k_attention<5, false, PL>;
	case 6: return k_attention<6, false, PL>;
	case 7: return k_attention<7, false, PL>;
	default: return k_attention<8, false, PL>;
	}
}

/* The decode instances (VPRE), built for head sizes 64 and 128 (NULL for others); LL: the
 * hand-over's (KbCudaLL). */
template <unsigned PL, bool LL> static AttKernel att_vpre(int head_dim)
{
	return head_dim == 64 ? k_attention<2, true, PL, LL> : head_dim == 128 ? k_attention<4, true, PL, LL> : NULL;
}

/* The decode instance for the output's PLANES.  Where they are one of the sets an int8
 * model's one-token products read (kb_epi_pl's), with those planes as constants: the output's
 * code is then what those planes need, not every plane's behind tests of the set (with the
 * products' epilogues alike, 7B batch 1 Q4_0 +1.65%, Q4_K +0.65%; bench/NOTES-gpu.md, session
 * 31); else the run-time sets (Q8: with the int8 planes). */
template <bool LL> static AttKernel att_kernel_vpre(unsigned planes, bool q8, int head_dim)
{
	if (planes == KB_PL_Q)
		return att_vpre<KB_PL_Q, LL>(head_dim);
	if (planes == (KB_PL_Q | KB_PL_E))
		return att_vpre<KB_PL_Q | KB_PL_E, LL>(head_dim);
	return q8 ? att_vpre<KB_PL_DYN, LL>(head_dim) : att_vpre<KB_PL_DYN16, LL>(head_dim);
}

extern "C" int kb_cuda_set_att_split_keys(KbCuda *ctx, int keys)
{
	if (!ctx || keys < 1 || keys > (1 << 24))
		return -EINVAL;
	ctx->att_split_keys = keys;
	return 0;
}

/* Splits per (token, head): enough blocks for KB_ATT_WAVE in all, at most what the
 * longest context can use. */
extern "C" int kb_cuda_att_splits(const KbCuda *ctx, int64_t pairs, int max_len)
{
	const int64_t want = (int64_t)KB_ATT_WAVE * ctx->sm_count;
	int most = KB_ATT_MAX_SPLITS;
	if (max_len > 0) {
		const int64_t need = ((int64_t)max_len + ctx->att_split_keys - 1) / ctx->att_split_keys;
		if (need < most)
			most = (int)need;
	}
	if (pairs >= want)
		return 1;
	const int64_t s = (want + pairs - 1) / pairs;
	return (int)(s > most ? most : s);
}

extern "C" int kb_cuda_attention(KbCuda *ctx, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
				 const int32_t *pos, const int32_t *seq, int n, int n_head, int n_head_kv, int head_dim,
				 int64_t slot_stride, float scale, int max_len, int early, float *out, KbCudaAct *act,
				 const KbCudaLL *ll)
{
	if (!ctx || !q || !k_cache || !v_cache || !pos || !seq || !out || n < 0 || n_head < 1 || n_head_kv < 1 ||
	    n_head % n_head_kv || head_dim < 32 || head_dim % 32 || head_dim > 32 * ATT_MAXPER)
		return -EINVAL;
	/* the hand-over: one token, a VPRE head size, the words of these heads */
	if (ll && (n != 1 || !ll->ll || !ll->serial || (head_dim != 64 && head_dim != 128) ||
		   ll->nq != n_head * head_dim || ll->nkv != n_head_kv * head_dim || ll->layer < 0 || ll->layer > 255))
		return -EINVAL;
	/* and the decode instances with the early launch; where those are not taken (more
	 * heads than a wave of blocks: a device of few multiprocessors) attention waits for
	 * the q/k/v launch as usual, which wrote q and the caches all the same */
	if (ll && (!kb_small_pdl(n) || (int64_t)n_head > (int64_t)KB_ATT_WAVE * ctx->sm_count))
		ll = NULL;
	if (n == 0)
		return 0;
	const int64_t blocks = (int64_t)n * n_head;
	if (blocks > 0x7fffffff)
		return -EINVAL;
	/* the output also into ACT: columns [0, n_head*head_dim) as kb_cuda_act_prepare would
	 * make them; padding columns keep what they held (finite: every producer clamps), and
	 * the weights there are zeros, so products see the same sums */
	KbActOut av;
	memset(&av, 0, sizeof(av));
	if (act) {
		if (act->ctx != ctx || n > KB_CUDA_MAX_TOK || (int64_t)n_head * head_dim > act->cap)
			return -EINVAL;
		av = kb_act_out(act, n);
	}
	const int S = kb_cuda_att_splits(ctx, blocks, max_len);
	if (kb_cuda_att_splits(ctx, blocks, 0) > 1) {
		/* room for every split launch: pairs * S < 2 * wave.  Allocated when a launch of
		 * this size could split at any context, not only at this one: a step's first
		 * (plain) run must allocate it before the step is recorded at a longer context
		 * (no allocation inside a capture) */
		const size_t parts = (size_t)2 * KB_ATT_WAVE * ctx->sm_count;
		int r = kb_cuda_split_scratch(ctx, parts * (32 * ATT_MAXPER + 2) * sizeof(float), parts, &ctx->att_part,
					      &ctx->att_cnt);
		if (r < 0)
			return r;
	}
	const size_t smem = sizeof(float) * ((size_t)(1 + ATT_WARPS) * head_dim + 2 * ATT_WARPS);
	/* at most a wave of (token, head) pairs (decode): V rows preloaded (k_attention's VPRE) */
	const bool pre = (head_dim == 64 || head_dim == 128) && blocks <= (int64_t)KB_ATT_WAVE * ctx->sm_count;
	const bool q8 = kb_act_q8(av);
	AttKernel k = ll ? att_kernel_vpre<true>(av.planes, q8, head_dim)
		    : pre ? att_kernel_vpre<false>(av.planes, q8, head_dim)
			  : q8 ? att_kernel<KB_PL_DYN>(head_dim) : att_kernel<KB_PL_DYN16>(head_dim);
	const KbCudaLL llv = ll ? *ll : KbCudaLL{};
	const int pdl = kb_small_pdl(n), trig = pdl ? (early ? 2 : 1) : 0;
	int r = kb_launch_ex(ctx, pdl, k, dim3((unsigned)blocks, (unsigned)S), dim3(ATT_WARPS * 32), smem, trig,
			q, (const __half *)k_cache, (const __half *)v_cache, pos, seq, n_head,
			n_head / n_head_kv, head_dim, (int)(n_head_kv * head_dim), slot_stride, scale, ctx->att_split_keys,
			out, av,
			ctx->att_part, ctx->att_cnt, llv);
	if (r == 0 && act) {
		act->cols = (int64_t)n_head * head_dim;
		act->n_tok = n;
	}
	return r == 0 && ll ? 1 : r;
}
