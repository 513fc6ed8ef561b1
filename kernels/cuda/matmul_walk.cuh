/* kernels/cuda/matmul_walk.cuh: the decode products' per-warp work (k_mmv, k_mmv_2,
 * k_mmv_norm, k_mmv_swi in matmul.cu): a warp's walk over its (group, chunk) items with two
 * register stages (KbLoader, kb_mmv_step, kb_mmv_body), and the block's flush at the end of
 * each group with its epilogues: RoPE + KV stores (q/k/v), the next RMSNorm's first half
 * (k_mmv_norm), SwiGLU (k_mmv_swi), and the 1 / rms of activations that hold y * g.
 * Included only by matmul.cu, after KbMmvArgs, kb_chunk and matmul_i8.cuh. */
#ifndef QD_KERNELS_CUDA_MATMUL_WALK_CUH
#define QD_KERNELS_CUDA_MATMUL_WALK_CUH

/* How many blocks walk A's row groups (block b takes groups b, b + count, ...): the grid,
 * or with PAIR (k_mmv_pair, whose grid holds a run of blocks for each of two products) A's
 * run. */
template <bool PAIR> __device__ __forceinline__ int kb_nblk(const KbMmvArgs &a)
{
	return PAIR ? a.nblk : (int)gridDim.x;
}

/* This block's place among them. */
template <bool PAIR> __device__ __forceinline__ int kb_blk(const KbMmvArgs &a)
{
	return PAIR ? (int)blockIdx.x - a.blk0 : (int)blockIdx.x;
}

/* With item i of this warp's list (cnt chunks a group, total items), the L2 request for the
 * item `prefetch` places after the next one (RG 1 walks only). */
template <int T, int RT, int RG, bool PAIR>
__device__ __forceinline__ void kb_prefetch_item(const KbMmvArgs &a, int i, int cnt, int total, int warp, int nw,
						 int lane)
{
	if (RG == 1 && a.prefetch) {
		const int ip = i + 1 + a.prefetch;
		if (ip < total)
			kb_prefetch_chunk<T, RT>(a, kb_blk<PAIR>(a) + (ip / cnt) * kb_nblk<PAIR>(a), warp + (ip % cnt) * nw,
						 lane);
	}
}

/* Loads (group, chunk) item i of this warp's list into w, and asks L2 for the item
 * `prefetch` places after the next one. */
template <int T, int RT, int RG = 1, bool PAIR = false>
__device__ __forceinline__ void kb_load_item(const KbMmvArgs &a, int i, int j, int ch, int cnt, int total,
					     int warp, int nw, int lane, KbWRegs<T> (&w)[RT], int wt = 0)
{
	int si;
	int64_t tile0;
	const KbTilePtr b = kb_group_tile(a, kb_blk<PAIR>(a) + j * kb_nblk<PAIR>(a), RT * RG, &si, &tile0);
	if constexpr (RG > 1)
		tile0 += wt * RT; /* this warp's tiles of the group */
	kb_prefetch_item<T, RT, RG, PAIR>(a, i, cnt, total, warp, nw, lane);
	KB_UNROLL
	for (int rt = 0; rt < RT; rt++) {
		KbTilePtr tp;
		tp.q = b.q + (tile0 + rt) * a.q_tile;
		tp.s = b.s + (tile0 + rt) * a.s_tile;
		tp.d = b.d + (tile0 + rt) * a.d_tile;
		kb_load_w<T>(tp, ch, lane, &w[rt]);
	}
}

/* One output of the q/k/v product with the RoPE + KV-store epilogue: segment si (0 q,
 * 1 k, 2 v), row, token, its sum and its pair partner's (row ^ 1).  The angle's sine and
 * cosine, the position and the slot come from rs (kb_rope_pre), and the rotation is rounded
 * step by step exactly as rope_kv_store does (elementwise.cu), so fused and separate
 * launches give the same bits. */
template <bool LL>
__device__ __forceinline__ void kb_rope_epilogue(const KbMmvRope &r, const KbRopeSm *rs, int si, int64_t row, int tok,
						 bool store, float sum, float other, float *y, int64_t ldy)
{
	if (!store)
		return;
	float val = sum;
	const int rh = (int)row % r.hd; /* row < rows: an int */
	if (si < 2 && rh < r.rot_dim) {
		const float2 v = rs->sc[tok][rh / 2];
		const float sn = v.x, cs = v.y;
		const bool odd = rh & 1;
		const float x0 = odd ? other : sum, x1 = odd ? sum : other;
		val = odd ? __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, cs)) : __fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn));
	}
	y[tok * ldy + row] = val;
	if (si > 0) {
		const int64_t dst = (int64_t)rs->seq[tok] * r.stride + (int64_t)rs->pos[tok] * r.kvd + row;
		(si == 1 ? r.kc : r.vc)[dst] = __float2half_rn(val);
	}
	/* LL (one token: KbCudaLL): the row for attention too, last.  Attention then runs
	 * without waiting for this launch, so no kernel after it may count on this launch
	 * having finished: only on the rows attention took (their other stores, the cache's
	 * here, are read in later steps only, after the step's first copy has waited for
	 * every kernel before it) */
	if constexpr (LL)
		kb_st_relaxed_u64(r.ll + (si == 0 ? row : si == 1 ? r.nq + row : r.nq + r.kvd + row),
				  (unsigned long long)rs->tag << 32 | __float_as_uint(val));
}

/* The tokens' 1 / rms (kb_rms_early's, KB_RMS_SM_BYTES) after the reduction slots RED of
 * NW warps, and the RoPE epilogue's KbRopeSm after them. */
template <int RT> __device__ __forceinline__ float *kb_rsm_at(float4 *red, int nw)
{
	return (float *)(red + kb_slot_f4(nw, RT));
}

template <int RT> __device__ __forceinline__ KbRopeSm *kb_rope_sm_at(float4 *red, int nw)
{
	return (KbRopeSm *)(kb_rsm_at<RT>(red, nw) + KB_RMS_SM_BYTES / 4);
}

/* Before the wait, with ROPE: KbRopeSm for the block's flushes, token t's by warp
 * nw - 1 - t % nw (the warps wait there anyway; warp 0 has kb_rms_early after it, which
 * runs at one token only).  The step's indices are
 * copied before its first kernel starts, so they may be read before the wait, as attention
 * does.  Lane l builds the angles of pairs l and l + 32 by rope_kv_store's repeated
 * multiplication (theta_scale^i, rounded each time) and takes their sincosf: the flush then
 * needs neither the chain (up to 63 dependent multiplications) nor sincosf's registers (in
 * Q4_0's 80-register k_mmv_3 its 8-byte spill went), nor the indices' global reads.
 * rot_dim <= 2 KB_ROPE_TAB (kb_cuda_mmv_qkv_rope). */
template <bool ROPE, int RT, bool LL = false>
__device__ __forceinline__ void kb_rope_pre(const KbMmvArgs &a, float4 *red, int nw, int warp, int lane)
{
	if (!ROPE)
		return;
	KbRopeSm *rs = kb_rope_sm_at<RT>(red, nw);
	for (int t = nw - 1 - warp; t < a.x.n_tok; t += nw) { /* more tokens than warps: a loop */
		const int pos = a.rope.pos[t], half = a.rope.rot_dim / 2;
		if (lane == 0) {
			rs->pos[t] = pos;
			rs->seq[t] = a.rope.seq[t];
			if (LL && t == 0) /* copied with the indices: readable before the wait too */
				rs->tag = kb_ll_tag(*a.rope.serial, a.rope.layer);
		}
		float th = (float)pos;
		for (int i = 0; i < lane; i++)
			th = __fmul_rn(th, a.rope.theta_scale);
		for (int i = lane; i < half; i += 32) {
			float sn, cs;
			sincosf(th, &sn, &cs);
			rs->sc[t][i] = make_float2(sn, cs);
			for (int k = 0; k < 32; k++)
				th = __fmul_rn(th, a.rope.theta_scale);
		}
	}
}

/* k_mmv_norm's flush needs, for the block's first group, the residual rows it adds to
 * (written earlier in the step) and the norm's weights (model data): both long gone from
 * L2 by then (the products stream past them), so read at the flush they were two DRAM
 * misses in series at the kernel's end (~0.7 and ~0.9 us after the barrier, traced).  Token
 * WARP's row LANE of group 0 into registers instead: the weight before the wait, the
 * residual right after it.  Later groups of the block read theirs in the flush. */
struct KbNormPre {
	float y, g;
};

/* 1 / rms of token w (KbMmvRms) from the partial sums of squares, by warp w. */
__device__ __forceinline__ float kb_rms_inv(const KbMmvRms &r, int w, int lane)
{
	double s = 0;
	for (int i = lane; i < r.nb; i += 32)
		s += r.part[(int64_t)w * r.nb + i];
	for (int o = 16; o; o >>= 1)
		s += __shfl_xor_sync(0xffffffffu, s, o);
	return 1.0f / sqrtf((float)(s / r.dim) + r.eps);
}

/* k_mmv_norm's epilogue, warp w = token w: the group's new rows (lane l: row tile0 * 16 + l;
 * rows are a multiple of 32) from the product's sums S, their sum of squares, and y * g into
 * the planes of the products that read the norm (PL: kb_act_put's, kb_epi_pl). */
template <unsigned PL>
__device__ __forceinline__ void kb_norm_epi(const KbMmvArgs &a, const KbMmvSeg &g, const KbNormPre *np, int j,
					    int64_t tile0, int warp, int lane, float s)
{
	const int64_t row = tile0 * 16 + lane;
	const bool pre = j == 0 && np; /* kb_norm_pre's registers */
	const float y = (pre ? np->y : g.y[warp * g.ldy + row]) + s;
	g.y[warp * g.ldy + row] = y;
	double ss = (double)y * y;
	for (int o = 16; o; o >>= 1)
		ss += __shfl_xor_sync(0xffffffffu, ss, o);
	if (lane == 0)
		a.nrm.part[(int64_t)warp * a.nrm.nb + tile0 / 2] = ss;
	kb_act_put<PL>(a.nrm.o, warp, row, __fmul_rn(y, pre ? np->g : a.nrm.g[row]));
}

/* k_mmv_swi's (one token: warp 0 = token 0): silu(gate) * up of the group's 32 rows,
 * k_swiglu_act's arithmetic, into gate's y and the down product's planes (PL as above). */
template <unsigned PL>
__device__ __forceinline__ void kb_swi_epi(const KbMmvArgs &a, const KbMmvSeg &g, int64_t tile0, int warp, int lane,
					   float gate, float up)
{
	const int64_t row = tile0 * 16 + lane;
	const float h = kb_silu_mul(gate, up);
	g.y[warp * g.ldy + row] = h;
	kb_act_put<PL>(a.swo, warp, row, h);
}

/* One token: row r of tile rt of warp set wt from the slots F (NWC warps a tile), where
 * kb_fold8 left it (lane 4 (r & 7), element 2 (r >> 3)), summed in the general loop's order
 * and scaled as it is (POST, and with RMS the token's 1 / rms RSM[0]). */
template <int RT, bool RMS>
__device__ __forceinline__ float kb_one_row(const float *f, int wt, int rt, int r, int nwc, float post, const float *rsm)
{
	const int l = 4 * (r & 7), ci = 2 * (r >> 3);
	float sum = 0.f;
	for (int k = 0; k < nwc; k++)
		sum += f[(((wt * nwc + k) * RT + rt) * 32 + l) * 4 + ci];
	sum *= post;
	if (RMS)
		sum *= rsm[0];
	return sum;
}

/* End of the block's group j: the warps' partial sums meet in shared memory (two
 * slots, alternating, so one barrier per group suffices) and go to y.  RG: the group's
 * tiles are split among the warps (warps [t nw/RG, (t+1) nw/RG) take tile t), as
 * k_mmv_norm's 32-row groups are; NORM: that kernel's epilogue (KbMmvNorm); RMS: the
 * activations hold y * g (KbMmvRms: only the instances that read them have the code, so
 * every other keeps its registers); ONE: exactly one token (the int8 one-token instances),
 * whose rows warp 0 sums straight from the slots while the other warps go on; PL: the planes
 * the NORM and SwiGLU epilogues write (kb_act_put's). */
template <int RT, bool ROPE, int RG = 1, bool NORM = false, bool RMS = false, bool PAIR = false, bool ONE = false,
	  unsigned PL = KB_PL_DYN, bool LL = false>
__device__ __forceinline__ void kb_flush(const KbMmvArgs &a, int j, int warp, int nw, int lane,
					 float (&acc)[RT][4], float4 *red, float post = 1.0f, const KbNormPre *np = nullptr)
{
	static_assert(!NORM || (RG == 2 && RT == 1 && !ROPE), "k_mmv_norm: 32-row groups, one tile a warp");
	constexpr bool SWI = RG == 4; /* k_mmv_swi: gate's tiles 2 jl, 2 jl + 1, then up's */
	static_assert(!SWI || (RT == 1 && !ROPE && !NORM && ONE), "k_mmv_swi: one tile a warp, one token");
	KB_MARK(0); /* trace builds: thread 0's stages of the block's last flush */
	float4 *slot = red + (size_t)(j & 1) * nw * RT * 32;
	/* kb_rsm_at's place, written out: through the call ptxas schedules k_mmv_norm's 2-8-token
	 * instances differently (up to 2% more instructions) */
	float *rsm = (float *)(red + (size_t)2 * nw * RT * 32);
	KB_UNROLL
	for (int rt = 0; rt < RT; rt++) {
		slot[(warp * RT + rt) * 32 + lane] = make_float4(acc[rt][0], acc[rt][1], acc[rt][2], acc[rt][3]);
		acc[rt][0] = acc[rt][1] = acc[rt][2] = acc[rt][3] = 0.f;
	}
	__syncthreads();
	KB_MARK(1);
	const float *f = (const float *)slot;
	int si;
	int64_t tile0;
	const int jl = kb_blk<PAIR>(a) + j * kb_nblk<PAIR>(a);
	kb_group_tile(a, jl, RT * RG, &si, &tile0);
	if constexpr (SWI) {
		si = 0;
		tile0 = 2 * (int64_t)jl;
	}
	const KbMmvSeg &g = si == 0 ? a.seg[0] : si == 1 ? a.seg[1] : a.seg[2];
	/* warps a tile: with RG > 1 (k_mmv_norm, k_mmv_swi) a constant, so that the loops over
	 * them (kb_one_row's, the general one's) unroll and their slot reads go out together:
	 * 7B batch 1 Q4_0 +2.3%, Q4_K +1.7%, Q4_K_M +1.9%, Q8_0 +1.6% against nw / RG read at
	 * run time (bench/NOTES-gpu.md, session 30) */
	const int nwc = RG == 1 ? nw : KB_WIDE_NW / RG;
	if constexpr ((NORM || SWI) && ONE) {
		/* one token (the int8 one-token instances): lane l of warp 0 adds up row l of the
		 * group (for SWI gate's and up's) straight from the slots, in the loop's order
		 * below, so the other warps go on with their items: no share of the loop (whose
		 * other lanes hold tokens 1-7: none), no ysm and no second barrier */
		if (warp == 0) {
			const int r = lane & 15, rg = lane >> 4; /* row r of tile rg (SWI: gate's, then up's rg + 2) */
			if constexpr (NORM)
				kb_norm_epi<PL>(a, g, np, j, tile0, 0, lane,
					    tile0 * 16 + lane < g.rows ? kb_one_row<RT, RMS>(f, rg, 0, r, nwc, post, rsm) : 0.f);
			else
				kb_swi_epi<PL>(a, g, tile0, 0, lane, kb_one_row<RT, RMS>(f, rg, 0, r, nwc, post, rsm),
					   kb_one_row<RT, RMS>(f, rg + 2, 0, r, nwc, post, rsm));
		}
		KB_MARK(3);
		return;
	}
	if constexpr (ONE && RG == 1 && RT <= 2) {
		/* one token, the same way: thread u < 32 (warp 0) takes row u & 15 of tile u >> 4
		 * (with one tile, lanes 16-31 repeat tile 0's rows and store nothing), the other
		 * warps go on; rows 2i and 2i + 1 are lanes u and u ^ 1.  (Written as
		 * a loop, not as a branch on the warp, which made Q4_0's k_mmv_3 spill 16 bytes.) */
		for (int u = threadIdx.x; u < 32; u += blockDim.x) {
			const int rt = RT == 1 ? 0 : u >> 4, r = u & 15;
			/* the default warps a block as a constant too (as nwc above) where the walk
			 * reads the count at run time: since kb_fixed_nw, Q4_0's walks (for the other
			 * types' run-time instances, at other warp counts, it is dead code).  Session
			 * 30: 7B batch 1 Q4_0 +0.1%, Q4_K +0.5%, Q4_K_M +1.3%; session 31 without it,
			 * Q4_0 -0.6% */
			const float sum = nw == KB_MMV_WARPS ? kb_one_row<RT, RMS>(f, 0, rt, r, KB_MMV_WARPS, post, rsm)
							     : kb_one_row<RT, RMS>(f, 0, rt, r, nwc, post, rsm);
			const int64_t row = (tile0 + rt) * 16 + r;
			const bool mine = u < RT * 16 && row < g.rows;
			if constexpr (ROPE) {
				const float other = __shfl_xor_sync(0xffffffffu, sum, 1);
				kb_rope_epilogue<LL>(a.rope, kb_rope_sm_at<RT>(red, nw), (PAIR ? a.si0 : 0) + si,
						     row, 0, mine, sum, other, g.y, g.ldy);
			} else if (mine) {
				float *yp = g.y + row;
				*yp = a.acc ? *yp + sum : sum;
			}
		}
		KB_MARK(3);
		return;
	}
	float *ysm = rsm + KB_RMS_SM_BYTES / 4 + (j & 1) * KB_MAX_TOK * 32; /* NORM of 2-8 tokens */
	for (int v = threadIdx.x; v < RG * RT * 128; v += blockDim.x) {
		const int rg = v >> 7, l = (v >> 2) & 31, ci = v & 3;
		const int wt = rg / RT, rt = rg % RT;
		float sum = 0.f;
		for (int k = 0; k < nwc; k++)
			sum += f[(((wt * nwc + k) * RT + rt) * 32 + l) * 4 + ci];
		sum *= post; /* 1 but for kb_i8_post */
		const int64_t row = (tile0 + rg) * 16 + (l >> 2) + 8 * (ci >> 1);
		const int tok = 2 * (l & 3) + (ci & 1);
		if (RMS && tok < a.x.n_tok)
			sum *= rsm[tok];
		if constexpr (ROPE) {
			/* rows 2i and 2i+1 are in threads v and v ^ 16 of the same warp (whole warps
			 * run this loop, so the shuffle is uniform) */
			const float other = __shfl_xor_sync(0xffffffffu, sum, 16);
			kb_rope_epilogue<false>(a.rope, kb_rope_sm_at<RT>(red, nw), (PAIR ? a.si0 : 0) + si, row,
					 tok, row < g.rows && tok < a.x.n_tok, sum, other, g.y, g.ldy);
			continue;
		}
		if constexpr (NORM) {
			if (tok < a.x.n_tok)
				ysm[tok * 32 + rg * 16 + (l >> 2) + 8 * (ci >> 1)] = row < g.rows ? sum : 0.f;
			continue;
		}
		if (row < g.rows && tok < a.x.n_tok) {
			float *yp = g.y + tok * g.ldy + row;
			*yp = a.acc ? *yp + sum : sum; /* acc: the same bits as a product, then add */
		}
	}
	KB_MARK(2);
	if constexpr (NORM) {
		__syncthreads();
		if (warp < a.x.n_tok)
			kb_norm_epi<PL>(a, g, np, j, tile0, warp, lane, ysm[warp * 32 + lane]);
	}
	KB_MARK(3);
}

/* Block b owns row-tile groups b, b + grid, b + 2 grid, ... (RT tiles each); warp w
 * takes chunks w, w + nw, ... of each, so its work is a list of (group, chunk) items
 * that it walks with two register stages: the next item's loads are in flight while
 * it computes the current one, across group boundaries too. */
template <int T, int RT, bool ROPE, int I8, bool S1 = false, int NCH = KB_COL_CHAINS, class RL = KbNoReload>
__device__ __forceinline__ void kb_item(const KbMmvArgs &a, const KbWRegs<T> (&w)[RT], int64_t ch, int lane,
					float (&acc)[RT][4], const RL &rl = RL())
{
	if constexpr (I8 != 0)
		kb_chunk8<T, RT, kb_i8_one(I8), S1, NCH, RL>(a.x, w, ch, lane, acc, rl);
	else
		kb_chunk<T, RT>(a, w, ch, lane, acc);
}

/* A warp's next (group, chunk) item after chunk ch of group j; true when it starts a new
 * group. */
__device__ __forceinline__ bool kb_walk_next(int &j, int &ch, int warp, int nw, int n_chunks)
{
	ch += nw;
	if (ch < n_chunks)
		return false;
	ch = warp;
	j++;
	return true;
}

/* Where a warp loads its next item from.  CUR (the int8 kernels): tile 0 of the block's
 * group in each region, kept as pointers, since the block's next group is grid groups on,
 * a constant number of bytes within one weight; only crossing into the next weight (q/k/v,
 * gate/up) works them out again (kb_group_tile).  An item's load path is then ~60-80
 * instructions instead of ~103 (SASS, Q4_0 int8): 7B Q4_0 batch 1 +2.2% on the H200
 * (bench/NOTES-gpu.md, session 8).  Without CUR each item's pointers are
 * worked out from (group, chunk) as kb_load_item does: the cursor's registers would cost
 * the f16 kernels occupancy (Q4_K 128 -> 168). */
template <int T, int RT, bool CUR, int RG = 1, bool S1 = false, bool PAIR = false> struct KbLoader {
	static_assert(RG != 4 || (CUR && RT == 1), "k_mmv_swi: int8 kernels, one tile a warp");
	static_assert(!S1 || CUR, "the lane's scales only: the int8 kernels' cursor loads only");
	int lj, lch;             /* the next item: chunk lch of the block's group lj */
	int wt;                  /* RG > 1: the warp's tiles of each group (kb_flush) */
	KbTilePtr b;             /* CUR: tile 0 of that group */
	int jg, g1;              /* CUR: its launch group, and its weight's end */
	int64_t sq, ss, sd;      /* CUR: bytes from one of the block's groups to the next */

	__device__ __forceinline__ void set(const KbMmvArgs &a)
	{
		if constexpr (RG == 4) { /* k_mmv_swi: tile 2 jg + (wt & 1) of gate (wt < 2) or up */
			const KbMmvSeg &g = wt < 2 ? a.seg[0] : a.seg[1];
			const int64_t tile0 = 2 * (int64_t)jg + (wt & 1);
			b.q = g.q + tile0 * a.q_tile;
			b.s = g.s + tile0 * a.s_tile;
			b.d = g.d + tile0 * a.d_tile;
			g1 = a.n_groups;
			return;
		}
		int si;
		int64_t tile0;
		const KbTilePtr t = kb_group_tile(a, jg, RT * RG, &si, &tile0);
		if constexpr (RG > 1)
			tile0 += wt * RT;
		b.q = t.q + tile0 * a.q_tile;
		b.s = t.s + tile0 * a.s_tile;
		b.d = t.d + tile0 * a.d_tile;
		g1 = si == 0 ? a.seg[0].g1 : si == 1 ? a.seg[1].g1 : a.seg[2].g1;
	}

	__device__ __forceinline__ void init(const KbMmvArgs &a, int warp, int tile_set = 0)
	{
		lj = 0;
		lch = warp;
		wt = tile_set;
		if constexpr (CUR) {
			/* tiles of one weight a group (unsigned: gridDim's widening, so the SASS stays) */
			const int64_t gs = (int64_t)(unsigned)kb_nblk<PAIR>(a) * (RG == 4 ? 2 : RT * RG);
			sq = gs * a.q_tile;
			ss = gs * a.s_tile;
			sd = gs * a.d_tile;
			jg = kb_blk<PAIR>(a);
			set(a);
		}
	}

	/* to the item after this one */
	__device__ __forceinline__ void next(const KbMmvArgs &a, int warp, int nw)
	{
		if (!kb_walk_next(lj, lch, warp, nw, a.n_chunks) || !CUR)
			return;
		jg += kb_nblk<PAIR>(a);
		if (jg < g1) {
			b.q += sq;
			b.s += ss;
			b.d += sd;
		} else {
			set(a);
		}
	}

	/* CUR: tile rt of the cursor's group */
	__device__ __forceinline__ KbTilePtr tile(const KbMmvArgs &a, int rt) const
	{
		KbTilePtr tp;
		tp.q = b.q + rt * a.q_tile;
		tp.s = b.s + rt * a.s_tile;
		tp.d = b.d + rt * a.d_tile;
		return tp;
	}

	/* the q vectors of packet p of tile rt of the item (CUR only; load_sd brings the rest) */
	__device__ __forceinline__ void load_q(const KbMmvArgs &a, int rt, int p, int lane, KbWRegs<T> &w)
	{
		static_assert(CUR, "the int8 kernels' cursor");
		kb_load_wq<T>(tile(a, rt), lch, p, lane, &w);
	}

	/* the item's scales and d (after load_q's packets).  Without load's L2 prefetch:
	 * the early reload's refill (kb_mmv_step) asks for none, whatever a.prefetch says (a
	 * knob for bench-cuda-mmv's sweeps, 0 by default): its code alone, never run, cost the
	 * one-token Q4_K walks 1% (7B batch 1; Q4_0 0; bench/NOTES-gpu.md, session 29). */
	__device__ __forceinline__ void load_sd(const KbMmvArgs &a, int lane, KbWRegs<T> (&w)[RT])
	{
		static_assert(CUR, "the int8 kernels' cursor");
		KB_UNROLL
		for (int rt = 0; rt < RT; rt++) {
			const KbTilePtr tp = tile(a, rt);
			KB_UNROLL
			for (int p = 0; p < Lay<T>::CPK; p++)
				kb_load_ws<T, S1>(tp, lch, p, lane, &w[rt]);
			kb_load_wd<T>(tp, lch, lane, &w[rt]);
		}
	}

	/* item i (the list position, for the L2 prefetch) into w */
	__device__ __forceinline__ void load(const KbMmvArgs &a, int i, int cnt, int total, int warp, int nw, int lane,
					     KbWRegs<T> (&w)[RT])
	{
		if constexpr (!CUR) {
			kb_load_item<T, RT, RG, PAIR>(a, i, lj, lch, cnt, total, warp, nw, lane, w, wt);
		} else {
			kb_prefetch_item<T, RT, RG, PAIR>(a, i, cnt, total, warp, nw, lane);
			KB_UNROLL
			for (int rt = 0; rt < RT; rt++)
				kb_load_w<T, S1>(tile(a, rt), lch, lane, &w[rt]);
		}
	}
};

#ifdef QD_DEV_NOARITH
/* Dev-only bound (-DQD_DEV_NOARITH through tools/gpu-variant.sh; wrong results): an item
 * whose weights are loaded as usual but used for nothing, no activation loads, no math, so a
 * step times what the walk costs without its arithmetic (session 27: 7B Q4_0 77.1%, Q4_K
 * 75.9% of the roofline against 66% / 62%).  Every register field goes into one value
 * behind a store that never happens, and kb_mmv_body zeroes the registers first: fields the
 * loader never writes are undefined, and a first version that read them let the compiler
 * drop every load (the build timed 193% of the roofline).  Check a build's PTX: its count of
 * ld.global.nc.L1::no_allocate per kernel must equal the default build's.  The walk's
 * kernels only (k_mmv, k_mmv_2, k_mmv_3, k_mmv_norm, k_mmv_swi, k_mmv_pair), not k_mmv_bulk. */
template <int T, int RT>
__device__ __forceinline__ void kb_item_noarith(const KbMmvArgs &a, const KbWRegs<T> (&w)[RT])
{
	KB_UNROLL
	for (int rt = 0; rt < RT; rt++) {
		uint32_t h = w[rt].d[0].x ^ w[rt].d[0].y ^ w[rt].d[0].z ^ w[rt].d[0].w ^ w[rt].d[1].x ^ w[rt].d[1].y ^
			     w[rt].d[1].z ^ w[rt].d[1].w;
		KB_UNROLL
		for (int c = 0; c < Lay<T>::CPK; c++) {
			h ^= w[rt].s[c].x ^ w[rt].s[c].y ^ w[rt].s[c].z ^ w[rt].s[c].w;
			KB_UNROLL
			for (int v = 0; v < Lay<T>::QV; v++)
				h ^= w[rt].q[c][v].x ^ w[rt].q[c][v].y ^ w[rt].q[c][v].z ^ w[rt].q[c][v].w;
		}
		if (h == 0x9e3779b9u) /* practically never */
			*(volatile uint32_t *)a.seg[0].y = h;
	}
}
#endif

/* Whether a walk asks for item i + 2's packets while it computes item i, each as soon as
 * item i's packet in the same registers is decoded (kb_chunk8_one's RL), and its scales once
 * item i's are applied, rather than after the whole item and its flush: the one-token int8
 * walks.  Asked for only after the item, a stage's next bytes waited for the item's mma
 * chain, its scale work and, at a group's end, the flush's barrier; with two stages a warp
 * the time from an item's arrival to its registers' refill is time with one item in flight
 * instead of two.  7B batch 1: Q4_0 +2.8%, Q4_K +3.2%, Q4_K_M +2.0%, SmolLM2 (Q4_1) 0; Q8_0
 * -1.1% (a packet a block, eight reloads an item, in kernels at the 128-register cap): not
 * Q8_0 (bench/NOTES-gpu.md, session 28). */
template <int T, int I8> __host__ __device__ constexpr bool kb_early_reload()
{
#ifdef QD_DEV_NOARITH
	return false; /* kb_item_noarith: loads after the item, as it measured */
#else
	return kb_i8_one(I8) && T != QD_TYPE_Q8_0;
#endif
}

/* Item i of kb_mmv_body's walk, chunk ch of the block's group j: computed from W (the group
 * flushed when it ends), and W refilled with item i + 2, the next to load after chunk lch
 * of group lj: during the item (kb_early_reload) or after its flush. */
template <int T, int RT, bool ROPE, int I8, int RG, bool RMS, bool PAIR, unsigned PL, bool LL>
__device__ __forceinline__ void kb_mmv_step(const KbMmvArgs &a, KbWRegs<T> (&w)[RT], int i, int cnt, int total,
					    int &j, int &ch, KbLoader<T, RT, I8 != 0, RG, kb_i8_s1(T, I8), PAIR> &ld, int warp,
					    int nw, int wc, int nwc, int lane, float (&acc)[RT][4], float4 *red, float post,
					    const KbNormPre &np)
{
	constexpr bool ER = kb_early_reload<T, I8>(), S1 = kb_i8_s1(T, I8);
	constexpr int NCH = kb_col_chains<T, RT, I8, RG>();
	if constexpr (ER) {
		const bool more = i + 2 < total;
		if (more)
			ld.next(a, wc, nwc);
		kb_item<T, RT, ROPE, I8, S1, NCH>(a, w, ch, lane, acc, [&](int rt, int p) {
			if (more)
				ld.load_q(a, rt, p, lane, w[rt]);
		});
		if (more)
			ld.load_sd(a, lane, w);
	} else {
#ifdef QD_DEV_NOARITH
		kb_item_noarith<T, RT>(a, w);
#else
		kb_item<T, RT, ROPE, I8, S1, NCH>(a, w, ch, lane, acc);
#endif
	}
	if (kb_walk_next(j, ch, wc, nwc, a.n_chunks)) {
		kb_fold8<T, I8>(acc, lane);
		kb_flush<RT, ROPE, RG, RG == 2, RMS, PAIR, kb_i8_one(I8), PL, LL>(a, j - 1, warp, nw, lane, acc, red, post,
										      &np);
	}
	if (!ER && i + 2 < total) {
		ld.next(a, wc, nwc);
		ld.load(a, i + 2, cnt, total, wc, nwc, lane, w);
	}
}

/* The tokens' 1 / rms (KbMmvRms) into shared memory right after the wait (the partial sums
 * are the previous kernel's), where every flush reads them after its barrier.  Computed in
 * the block's first flush instead, it cost a DRAM round trip with the whole block waiting,
 * and its registers made the capped k_mmv_2 spill (Q8_0 q/k/v's stack 72 -> 32 bytes, the
 * head's 48 -> 0): 7B Q8_0 +3.2-3.7% this way (bench/NOTES-gpu.md, session 18). */
template <int RT, bool RMS>
__device__ __forceinline__ void kb_rms_early(const KbMmvArgs &a, float4 *red, int nw, int warp, int lane)
{
	if (RMS && warp < a.x.n_tok) {
		const float r = kb_rms_inv(a.rms, warp, lane);
		if (lane == 0)
			kb_rsm_at<RT>(red, nw)[warp] = r; /* kb_flush's rsm */
	}
}

template <bool PRE> __device__ __forceinline__ void kb_norm_pre(const KbMmvArgs &a, int J, int warp, int lane,
							       KbNormPre &np)
{
	if (J < 1 || warp >= a.x.n_tok)
		return;
	const int64_t row = (int64_t)blockIdx.x * 32 + lane;
	if (PRE)
		np.g = a.nrm.g[row];
	else
		np.y = a.seg[0].y[warp * a.seg[0].ldy + row];
}

#if defined(QD_DEV_NOWAIT_DOWN) || defined(QD_DEV_NOWAIT_O)
/* Dev-only bounds (tools/gpu-variant.sh; wrong results): whether this residual product
 * (k_mmv_norm, RG 2) starts without waiting for its activations, so that a step times what
 * one hand-over a layer fewer could give: down (more than 8192 columns) with
 * QD_DEV_NOWAIT_DOWN, o (at most 8192) with QD_DEV_NOWAIT_O. */
template <int T, int RG> __device__ __forceinline__ bool kb_dev_nowait_res(const KbMmvArgs &a)
{
	const bool wide = (int64_t)a.n_chunks * Lay<T>::CC > 8192;
	bool skip = false;
#ifdef QD_DEV_NOWAIT_DOWN
	skip |= RG == 2 && wide;
#endif
#ifdef QD_DEV_NOWAIT_O
	skip |= RG == 2 && !wide;
#endif
	return skip;
}
#endif

/* I8: the activations' form (kb_i8_one in matmul_i8.cuh); 0 f16.  RG: tiles a group's
 * warps split (2: k_mmv_norm, 4: k_mmv_swi).  NW: the warps a block as a constant where the
 * launch fixes them (kb_fixed_nw), 0: read from blockDim.  PL: the planes the norm and
 * SwiGLU epilogues write (kb_epi_pl).  The kernels are in matmul.cu. */
template <int T, int RT, bool ROPE, int I8, int RG = 1, bool RMS = false, bool PAIR = false, int NW = 0,
	  unsigned PL = KB_PL_DYN, bool LL = false>
__device__ __forceinline__ void kb_mmv_body(const KbMmvArgs &a)
{
	static_assert(!LL || (ROPE && kb_i8_one(I8) && RT == 1 && RG == 1 && !PAIR),
		      "the hand-over words (KbCudaLL): the one-token int8 q/k/v walks");
	KB_TRACE();
	constexpr float post = kb_i8_post<T, I8>();
	/* [2][warps][RT][32 lanes], then KB_RMS_SM_BYTES (kb_rms_early's 1 / rms), then k_mmv_norm's
	 * KB_NORM_SM_BYTES (2-8 tokens) or the RoPE epilogue's KbRopeSm */
	extern __shared__ float4 kb_red[];
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = NW ? NW : (int)(blockDim.x >> 5);
	/* RG > 1: warp w takes tile w / nwc of each group, its chunks wc, wc + nwc, ... */
	const int nwc = nw / RG, wc = RG == 1 ? warp : warp % nwc;
	const int J = (a.n_groups - kb_blk<PAIR>(a) + kb_nblk<PAIR>(a) - 1) / kb_nblk<PAIR>(a);
	const int cnt = wc < a.n_chunks ? (a.n_chunks - wc + nwc - 1) / nwc : 0;
	const int total = J * cnt;
	kb_pdl_trigger();

	float acc[RT][4];
	KB_UNROLL
	for (int rt = 0; rt < RT; rt++)
		acc[rt][0] = acc[rt][1] = acc[rt][2] = acc[rt][3] = 0.f;
	/* the first two items' weights are requested before waiting for the previous kernel:
	 * while it finishes (a norm, attention, SwiGLU: one to a few microseconds) two items a
	 * warp are on their way, a decode step's 4096 x 4096 products nearly whole */
#ifdef QD_DEV_NOARITH
	KbWRegs<T> wa[RT] = {}, wb[RT] = {}; /* see kb_item_noarith */
#else
	KbWRegs<T> wa[RT], wb[RT];
#endif
	KbLoader<T, RT, I8 != 0, RG, kb_i8_s1(T, I8), PAIR> ld;
	if (total > 0) {
		ld.init(a, wc, RG == 1 ? 0 : warp / nwc);
		ld.load(a, 0, cnt, total, wc, nwc, lane, wa);
	}
	if (total > 1) {
		ld.next(a, wc, nwc);
		ld.load(a, 1, cnt, total, wc, nwc, lane, wb);
	}
	KbNormPre np = { 0.f, 0.f };
	if constexpr (RG == 2)
		kb_norm_pre<true>(a, J, warp, lane, np);
	kb_rope_pre<ROPE, RT, LL>(a, kb_red, nw, warp, lane);
#if defined(QD_DEV_NOWAIT_DOWN) || defined(QD_DEV_NOWAIT_O)
	if (!kb_dev_nowait_res<T, RG>(a))
#endif
		kb_pdl_wait();
	if constexpr (RG == 2)
		kb_norm_pre<false>(a, J, warp, lane, np);
	kb_rms_early<RT, RMS>(a, kb_red, nw, warp, lane);
	if (cnt == 0) { /* more warps than chunks: only take part in the barriers */
		for (int j = 0; j < J; j++)
			kb_flush<RT, ROPE, RG, RG == 2, RMS, PAIR, kb_i8_one(I8), PL, LL>(a, j, warp, nw, lane, acc, kb_red,
										      post, &np);
		return;
	}
	/* item i is chunk ch of group j; computing it frees its registers for item i + 2 */
	int j = 0, ch = wc;
	for (int i = 0; i < total; i += 2) {
		kb_mmv_step<T, RT, ROPE, I8, RG, RMS, PAIR, PL, LL>(a, wa, i, cnt, total, j, ch, ld, warp, nw, wc, nwc,
								    lane, acc, kb_red, post, np);
#ifdef QD_TRACE_ITEMS
		/* dev-only, with QD_TRACE: thread 0's timer after its items 0-3 (marks 4-7; the
		 * step holds the group's flush where a group ends), session 30's per-item table */
		if (i < 4)
			KB_MARK(4 + i);
#endif
		if (i + 1 >= total)
			break;
		kb_mmv_step<T, RT, ROPE, I8, RG, RMS, PAIR, PL, LL>(a, wb, i + 1, cnt, total, j, ch, ld, warp, nw, wc,
								    nwc, lane, acc, kb_red, post, np);
#ifdef QD_TRACE_ITEMS
		if (i < 4)
			KB_MARK(5 + i);
#endif
	}
}

#endif
