/* tests/gpu/check-cuda-layout.cu: verifies the CUDA weight layout without a GPU.
 *
 * Runs, on the host, the very functions the kernels use (layout.cuh: repacking, the
 * activation permutation, fragment decoding and the per-block scaling) and replaces the
 * tensor-core mma with a warp-wide emulation that follows the PTX fragment layout of
 * mma.m16n8k16 (A row-major 16x16, B 16x8, C 16x8).  The result is compared with a
 * double-precision product on the dequantized weights (tests/gpu/qgen.h), for every
 * type, several token counts and shapes that are not multiples of the tile sizes.  For
 * the types with int8 activations (layout_i8.cuh) the m16n8k32 int8 path is emulated too
 * and compared with the product on the activations rounded to Q8_0 levels; the int8
 * rounding is compared with the CPU's quantizer, and the activation planes producers write
 * (internal.cuh) with those the products read.
 * Prints one line per case and "N passed, N failed"; exits non-zero on a failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <vector>

#include "kernels/cuda/internal.cuh"
extern "C" {
#include "kernels/cpu/quant.h"
}
#include "tests/gpu/qgen.h"

static double half_bits(uint16_t h, bool bf)
{
	return bf ? qd_bf16_to_f32(h) : qd_f16_to_f32(h);
}

/* One m16n8k32 of a warp, emulated: the lanes' fragments (PTX layout) into A (16x32,
 * row-major; unsigned bytes for the types with a minimum) and B (32x8), then c[lane] +=
 * the lane's C elements. */
template <int T> static void imma8(const uint32_t fa[32][4], const uint32_t fb[32][2], int c[32][4])
{
	int A[16][32], B[32][8];
	for (int lane = 0; lane < 32; lane++) {
		const int g = lane >> 2, tq = lane & 3;
		for (int rg = 0; rg < 4; rg++)
			for (int e = 0; e < 4; e++) {
				const uint32_t byte = (fa[lane][rg] >> (8 * e)) & 0xff;
				A[g + 8 * (rg & 1)][4 * tq + e + 16 * (rg >> 1)] =
					kb_has_min(T) ? (int)byte : (int)(int8_t)byte;
			}
		for (int rg = 0; rg < 2; rg++)
			for (int e = 0; e < 4; e++)
				B[4 * tq + e + 16 * rg][g] = (int8_t)((fb[lane][rg] >> (8 * e)) & 0xff);
	}
	for (int lane = 0; lane < 32; lane++) {
		const int g = lane >> 2, tq = lane & 3;
		for (int ci = 0; ci < 4; ci++) {
			const int row = g + 8 * (ci >> 1), n = 2 * tq + (ci & 1);
			for (int k = 0; k < 32; k++)
				c[lane][ci] += A[row][k] * B[k][n];
		}
	}
}

/* The int8 path for one tile at 2-8 tokens (one token: tile_i8_cols below):
 * y8[tok * rows + row] of its 16 rows, from the repacked
 * tile and the int8 activation planes, through kb_load_x8 / kb_frag_a8 / kb_post8 (with
 * Q4_K's and Q6_K's kb_post8_begin / _end around a chunk; Q6_K's two masked mmas a block,
 * kb_q6_merge) and the
 * m16n8k32 emulated (A 16x32 row-major, B 32x8, PTX fragment layout). */
template <int T>
static void tile_i8(const KbTilePtr &tp, const KbTileGeom &geo, const KbActView &av, int64_t t, int64_t rows,
		    int n_tok, std::vector<double> &y8)
{
	typedef Lay<T> L;
	constexpr int NH = kb_i8_halves(T);
	std::vector<KbWRegs<T>> w(32);
	std::vector<KbX8Regs<T>> xr(32);
	float acc[32][4] = {};
	std::vector<KbPost8<T>> st(32);
	for (int64_t ch = 0; ch < geo.n_chunks; ch++) {
		for (int lane = 0; lane < 32; lane++) {
			kb_load_w<T>(tp, ch, lane, &w[(size_t)lane]);
			kb_load_x8<T>(&av, ch, lane, &xr[(size_t)lane]);
			kb_post8_begin<T>(&w[(size_t)lane], &st[(size_t)lane]);
		}
		for (int bi = 0; bi < L::CC / 32; bi++) {
			int c[NH][32][4] = {};
			for (int h = 0; h < NH; h++) { /* Q6_K: an mma a half block, B masked to it */
				uint32_t fa[32][4], fb[32][2];
				const uint32_t m = kb_i8_bmask(NH, h);
				for (int lane = 0; lane < 32; lane++) {
					kb_frag_a8<T>(&w[(size_t)lane], bi, 0x80808080u, fa[lane]);
					fb[lane][0] = xr[(size_t)lane].b[bi / 2][2 * (bi % 2)] & m;
					fb[lane][1] = xr[(size_t)lane].b[bi / 2][2 * (bi % 2) + 1] & m;
				}
				imma8<T>(fa, fb, c[h]);
			}
			for (int lane = 0; lane < 32; lane++) {
				int cm[4];
				if constexpr (NH == 2)
					kb_q6_merge(&w[(size_t)lane], bi, c[0][lane], c[1][lane], cm);
				else
					memcpy(cm, c[0][lane], sizeof(cm));
				kb_post8<T>(&w[(size_t)lane], &xr[(size_t)lane], bi, cm, acc[lane], &st[(size_t)lane]);
			}
		}
		for (int lane = 0; lane < 32; lane++)
			kb_post8_end<T>(&w[(size_t)lane], &st[(size_t)lane], acc[lane]);
	}
	for (int lane = 0; lane < 32; lane++)
		for (int ci = 0; ci < 4; ci++) {
			const int64_t row = t * 16 + (lane >> 2) + 8 * (ci >> 1);
			const int tok = 2 * (lane & 3) + (ci & 1);
			if (row < rows && tok < n_tok)
				y8[(size_t)(tok * rows + row)] = acc[lane][ci] * kb_i8_post<T, 1>();
		}
}

/* The one-token int8 path (layout_i8.cuh, kb_chunk8_one; every int8 type): block bi
 * of a chunk in mma column bi, lane group g's B registers block g's levels in mma g and
 * zeros in the others (kb_x1_b, the device's own selection), the chunk's mmas accumulated
 * (integers: the chains' split does not change the sums), each lane's scale work for its
 * blocks 2tq and 2tq + 1 with only their scales loaded (S1), and kb_fold8's sum
 * over the four tq lanes in its order (written out here: the device's are shuffles).  S1
 * false: every packet's scales loaded and the lane's selected, as the bulk-copy kernel does
 * (check() runs both and requires the same sums). */
template <int T, bool S1>
static void tile_i8_cols(const KbTilePtr &tp, const KbTileGeom &geo, const KbActView &av, int64_t t, int64_t rows,
			 std::vector<double> &y8)
{
	constexpr int NB = Lay<T>::CC / 32, NH = kb_i8_halves(T);
	std::vector<KbWRegs<T>> w(32);
	std::vector<KbX1Regs> xr(32);
	float acc[32][4] = {};
	for (int64_t ch = 0; ch < geo.n_chunks; ch++) {
		for (int lane = 0; lane < 32; lane++) {
			kb_load_w<T, S1>(tp, ch, lane, &w[(size_t)lane]);
			kb_load_x1<T>(&av, ch, lane, &xr[(size_t)lane]);
		}
		int c[NH][32][4] = {};
		for (int bi = 0; bi < NB; bi++)
			for (int h = 0; h < NH; h++) { /* Q6_K: an mma a half block, B masked to it */
				uint32_t fa[32][4], fb[32][2];
				for (int lane = 0; lane < 32; lane++) {
					KbX1Regs xm = xr[(size_t)lane];
					xm.b0 &= kb_i8_bmask(NH, h);
					xm.b1 &= kb_i8_bmask(NH, h);
					kb_frag_a8<T>(&w[(size_t)lane], bi, 0x80808080u, fa[lane]);
					kb_x1_b(&xm, lane, bi, 0u, fb[lane]);
				}
				imma8<T>(fa, fb, c[h]);
			}
		for (int lane = 0; lane < 32; lane++) {
			int cm[4];
			if constexpr (NH == 2)
				kb_q6_merge_one<S1>(&w[(size_t)lane], lane & 3, c[0][lane], c[1][lane], cm);
			else
				memcpy(cm, c[0][lane], sizeof(cm));
			kb_post8_one<T, S1>(&w[(size_t)lane], &xr[(size_t)lane], lane & 3, cm, acc[lane]);
		}
	}
	for (int lane = 0; lane < 32; lane += 4)
		for (int ci = 0; ci < 4; ci += 2) {
			const int64_t row = t * 16 + (lane >> 2) + 8 * (ci >> 1);
			/* lane 0 of the four after xor 1 then xor 2: (a0 + a1) + (a2 + a3) */
			const float v = (acc[lane][ci] + acc[lane + 1][ci]) + (acc[lane + 2][ci] + acc[lane + 3][ci]);
			if (row < rows)
				y8[(size_t)row] = v * kb_i8_post<T, 1>();
		}
}

/* Error of the emulated product: ||y - ref|| / ||sum_c |w x|||, the scale the f16
 * rounding of the activations follows (||ref|| itself can be small by cancellation; a
 * layout error still shows as about 1/sqrt(cols)).  For the int8 types *rel8 is the same
 * measure for the int8 path against the product on x rounded to Q8_0 levels (for Q4_1 the
 * minimum times Q8_1's s, as the CPU backend's dot product; Q4_K's the same way, its
 * minimum -dmin mn a sub-block); otherwise -1. */
template <int T> static double run_case(int64_t rows, int64_t cols, int n_tok, uint64_t seed, double *rel8)
{
	typedef Lay<T> L;
	int bsz, blck = qg_block(T, &bsz);
	const int64_t row_bytes = cols / blck * bsz;
	std::vector<uint8_t> raw((size_t)(rows * row_bytes));
	qg_fill(T, raw.data(), rows * (cols / blck), &seed);

	/* repack exactly as k_repack does, one (tile, packet, lane) at a time */
	const int64_t rows_pad = (rows + KB_ROW_PAD - 1) / KB_ROW_PAD * KB_ROW_PAD;
	const int64_t cols_pad = (cols + L::CC - 1) / L::CC * L::CC;
	KbLay l;
	kb_lay(T, &l);
	KbTileGeom geo;
	kb_tile_geom(&l, cols_pad, &geo);
	const int64_t n_tiles = rows_pad / 16;
	std::vector<uint8_t> q((size_t)(geo.q_tile * n_tiles) + 16), s((size_t)(geo.s_tile * n_tiles) + 16),
		d((size_t)(geo.d_tile * n_tiles) + 16);
	KbRepack r;
	r.raw = raw.data();
	r.row_bytes = row_bytes;
	r.rows_valid = rows;
	r.cols = cols;
	r.q = q.data();
	r.s = s.data();
	r.d = d.data();
	r.geo = geo;
	for (int64_t t = 0; t < n_tiles; t++)
		for (int64_t pk = 0; pk < geo.n_pk; pk++)
			for (int lane = 0; lane < 32; lane++)
				kb_repack_lane<T>(&r, t, pk, lane);

	/* activations as k_act_prep writes them */
	const int64_t cap = (cols + KB_ACT_PAD - 1) / KB_ACT_PAD * KB_ACT_PAD;
	std::vector<float> x((size_t)(n_tok * cols));
	for (float &v : x)
		v = qg_signed(&seed, 0.f, 2.f);
	std::vector<uint16_t> xh((size_t)(8 * cap), 0), xhi((size_t)(8 * cap), 0), xlo((size_t)(8 * cap), 0);
	std::vector<float> xs((size_t)(cap / 64 * 16), 0.f);
	/* int8 levels as kb_act_put makes them (the CPU backend's Q8_0 rounding), and x8: x
	 * rounded to them */
	std::vector<int8_t> xq((size_t)(8 * cap), 0);
	std::vector<float> xd((size_t)(cap / 32 * 8), 0.f), xe((size_t)(cap / 32 * 8), 0.f);
	std::vector<double> x8((size_t)(n_tok * cols));
	/* Q4_1's minimum meets s = f16(d sum(q)) (Q8_1), not sum(x8) = d16 sum(q): the
	 * difference per (token, block), for the reference */
	std::vector<double> corr((size_t)(n_tok * (cols + 31) / 32), 0.0);
	for (int t = 0; t < n_tok; t++)
		for (int64_t c = 0; c < cap; c++) {
			const float v = c < cols ? x[(size_t)(t * cols + c)] : 0.f;
			const int64_t dst = t * cap + kb_act_pos(c);
			xh[(size_t)dst] = qd_f32_to_f16(v);
			const uint16_t hi = qd_f32_to_bf16(v);
			xhi[(size_t)dst] = hi;
			xlo[(size_t)dst] = qd_f32_to_bf16(v - qd_bf16_to_f32(hi));
			xs[(size_t)(((c / 64) * 8 + t) * 2 + (c % 64) / 32)] += v;
			if (c % 32 == 0) {
				float amax = 0.f, id;
				for (int64_t j = c; j < c + 32; j++)
					amax = fmaxf(amax, fabsf(j < cols ? x[(size_t)(t * cols + j)] : 0.f));
				const float dd = kb_q8_scale(amax, &id);
				const float d16 = kb_f16_round(dd);
				xd[(size_t)kb_act8_d(c / 32, t)] = d16;
				int qsum = 0;
				for (int64_t j = c; j < c + 32; j++) {
					const float vj = j < cols ? x[(size_t)(t * cols + j)] : 0.f;
					const int lv = kb_q8_level(vj, id);
					qsum += lv;
					xq[(size_t)(t * cap + kb_act8_pos(j))] = (int8_t)lv;
					if (j < cols)
						x8[(size_t)(t * cols + j)] = (double)d16 * lv;
				}
				const float e = kb_q8_sum_scale(qsum, dd);
				xe[(size_t)kb_act8_d(c / 32, t)] = e;
				if (c < cols)
					corr[(size_t)(t * ((cols + 31) / 32) + c / 32)] = (double)e - (double)d16 * qsum;
			}
		}
	const KbActView av = { xh.data(), xhi.data(), xlo.data(), xs.data(), xq.data(), xd.data(), xe.data(), cap, n_tok };

	/* one warp per tile walking all chunks; mma emulated across the 32 lanes */
	std::vector<double> y((size_t)(n_tok * rows), 0.0), y8((size_t)(n_tok * rows), 0.0), y8a(y8);
	const bool bf = T == QD_TYPE_BF16;
	std::vector<KbWRegs<T>> w(32);
	std::vector<KbXRegs<T>> xr(32);
	for (int64_t t = 0; t < n_tiles; t++) {
		const KbTilePtr tp = { q.data() + t * geo.q_tile, s.data() + t * geo.s_tile, d.data() + t * geo.d_tile };
		if constexpr (KbI8<T>::ok) {
			if (n_tok == 1) {
				tile_i8_cols<T, true>(tp, geo, av, t, rows, y8);
				tile_i8_cols<T, false>(tp, geo, av, t, rows, y8a); /* must be the same sums */
			} else
				tile_i8<T>(tp, geo, av, t, rows, n_tok, y8);
		}
		float acc[32][4] = {};
		for (int64_t ch = 0; ch < geo.n_chunks; ch++) {
			for (int lane = 0; lane < 32; lane++) {
				kb_load_w<T>(tp, ch, lane, &w[(size_t)lane]);
				kb_load_x<T>(&av, ch, lane, &xr[(size_t)lane]);
			}
			for (int sg = 0; sg < L::NM / L::GS; sg++) {
				float tt[32][4] = {};
				for (int mm = 0; mm < L::GS; mm++) {
					const int m = sg * L::GS + mm;
					double A[16][16], B[16][8], B2[16][8];
					for (int lane = 0; lane < 32; lane++) {
						const int g = lane >> 2, tq = lane & 3;
						uint32_t fa[4], fb[2], fl[2] = { 0, 0 };
						kb_frag_a<T>(&w[(size_t)lane], m, fa);
						kb_frag_b<T>(&xr[(size_t)lane], m, fb, fl);
						for (int rg = 0; rg < 4; rg++)
							for (int h = 0; h < 2; h++)
								A[g + 8 * (rg & 1)][2 * tq + h + 8 * (rg >> 1)] =
									half_bits((uint16_t)(fa[rg] >> (16 * h)), bf);
						for (int rg = 0; rg < 2; rg++)
							for (int h = 0; h < 2; h++) {
								B[2 * tq + h + 8 * rg][g] = half_bits((uint16_t)(fb[rg] >> (16 * h)), bf);
								B2[2 * tq + h + 8 * rg][g] =
									bf ? half_bits((uint16_t)(fl[rg] >> (16 * h)), bf) : 0.0;
							}
					}
					for (int lane = 0; lane < 32; lane++) {
						const int g = lane >> 2, tq = lane & 3;
						for (int ci = 0; ci < 4; ci++) {
							const int row = g + 8 * (ci >> 1), n = 2 * tq + (ci & 1);
							double sum = 0;
							for (int k = 0; k < 16; k++)
								sum += A[row][k] * (B[k][n] + B2[k][n]);
							tt[lane][ci] += (float)sum;
						}
					}
				}
				for (int lane = 0; lane < 32; lane++)
					kb_post<T>(&w[(size_t)lane], &xr[(size_t)lane], sg, tt[lane], acc[lane]);
			}
		}
		for (int lane = 0; lane < 32; lane++)
			for (int ci = 0; ci < 4; ci++) {
				const int64_t row = t * 16 + (lane >> 2) + 8 * (ci >> 1);
				const int tok = 2 * (lane & 3) + (ci & 1);
				if (row < rows && tok < n_tok)
					y[(size_t)(tok * rows + row)] = acc[lane][ci];
			}
	}

	std::vector<double> wrow((size_t)cols);
	double num = 0, den = 0, num8 = 0;
	for (int64_t rr = 0; rr < rows; rr++) {
		qg_dequant_row(T, raw.data() + rr * row_bytes, cols, wrow.data());
		for (int t = 0; t < n_tok; t++) {
			double ref = 0, mag = 0, ref8 = 0;
			for (int64_t c = 0; c < cols; c++) {
				ref += wrow[(size_t)c] * x[(size_t)(t * cols + c)];
				mag += fabs(wrow[(size_t)c] * x[(size_t)(t * cols + c)]);
				ref8 += wrow[(size_t)c] * x8[(size_t)(t * cols + c)];
			}
			for (int64_t b = 0; b < cols / 32; b++) /* + m (s - sum(x8)) */
				ref8 += qg_block_min(T, raw.data() + rr * row_bytes, b) *
					corr[(size_t)(t * ((cols + 31) / 32) + b)];
			const double e = y[(size_t)(t * rows + rr)] - ref;
			const double e8 = y8[(size_t)(t * rows + rr)] - ref8;
			num += e * e;
			num8 += e8 * e8;
			den += mag * mag;
		}
	}
	*rel8 = !KbI8<T>::ok ? -1.0 : den > 0 ? sqrt(num8 / den) : INFINITY;
	if (n_tok == 1 && KbI8<T>::ok && y8a != y8)
		*rel8 = INFINITY; /* the bulk kernel's selection of the lane's scales differs */
	return den > 0 ? sqrt(num / den) : INFINITY;
}

static int passed, failed;

/* The int8 rounding the CUDA producers use (layout_i8.cuh: kb_q8_scale, kb_q8_level,
 * kb_q8_sum_scale) against the CPU backend's Q8_1 quantizer, dispatched (AVX2 where the
 * machine has it) and scalar: the same d, s and levels, bit for bit, on random blocks of
 * several sizes and on values that sit on rounding boundaries. */
static void check_rounding(void)
{
	const int nblk = 4096;
	std::vector<float> x((size_t)nblk * 32);
	std::vector<BlockQ8_1> cpu((size_t)nblk), ref((size_t)nblk);
	uint64_t s = 99;
	for (int b = 0; b < nblk; b++) {
		const float scale = ldexpf(1.0f, (b % 24) - 12); /* 2^-12 .. 2^11 */
		for (int j = 0; j < 32; j++) {
			float v = qg_signed(&s, 0.f, scale);
			if (b % 7 == 3) /* halfway cases: k + 0.5 levels of a block whose amax is 127 */
				v = j == 0 ? 127.f : (float)((int)(qg_signed(&s, 0.f, 126.f))) + 0.5f;
			if (b % 11 == 5 && j > 0) /* all zero but one, and one all zero */
				v = 0.f;
			x[(size_t)b * 32 + j] = b == 1 ? 0.f : v;
		}
	}
	kb_cpu_init();
	int r = kb_cpu_quantize_row(QD_TYPE_Q8_1, x.data(), cpu.data(), (int64_t)nblk * 32);
	int r2 = kb_cpu_quantize_row_ref(QD_TYPE_Q8_1, x.data(), ref.data(), (int64_t)nblk * 32);
	int64_t bad = 0;
	for (int b = 0; b < nblk && r == 0 && r2 == 0; b++) {
		const float *v = &x[(size_t)b * 32];
		float amax = 0.f, id;
		for (int j = 0; j < 32; j++)
			amax = fmaxf(amax, fabsf(v[j]));
		const float d = kb_q8_scale(amax, &id);
		int qsum = 0, lv[32];
		for (int j = 0; j < 32; j++) {
			lv[j] = kb_q8_level(v[j], id);
			qsum += lv[j];
		}
		const uint16_t dh = qd_f32_to_f16(kb_f16_round(d)), sh = qd_f32_to_f16(kb_q8_sum_scale(qsum, d));
		for (const BlockQ8_1 *c : { &cpu[(size_t)b], &ref[(size_t)b] }) {
			int ok = c->d == dh && c->s == sh;
			for (int j = 0; j < 32; j++)
				ok &= c->qs[j] == lv[j];
			bad += !ok;
		}
	}
	const bool ok = r == 0 && r2 == 0 && bad == 0;
	printf("int8 rounding vs the CPU's Q8_1 (%s and scalar), %d blocks: %lld differ%s\n", kb_cpu_init(), nblk,
	       (long long)bad, ok ? "" : "  FAIL");
	ok ? passed++ : failed++;
}

template <int T> static void check(int64_t rows, int64_t cols, int n_tok, uint64_t seed)
{
	const double bound = T == QD_TYPE_BF16 ? 1e-4 : 1e-3;
	/* int8: exact up to f32 accumulation against the CPU backend's int8 dot product.  The
	 * emulation's sums are deterministic and stay below 1e-8 (session 9: 3e-10 to 9e-9);
	 * 1e-7 keeps a tenfold margin and still catches an error in the block minimums' term
	 * (Q4_1's and Q4_K's m s_x), which with qgen's small minimums moves the error by only
	 * ~1e-6 (test-cuda-mmv keeps 1e-5 for the GPU's other summation order) */
	const double bound8 = 1e-7;
	double rel8;
	const double rel = run_case<T>(rows, cols, n_tok, seed, &rel8);
	const bool ok = rel <= bound && rel8 <= bound8;
	printf("%-4s %5lldx%-5lld n_tok=%d: rel %.2e", qd_type_traits(T)->name, (long long)rows, (long long)cols,
	       n_tok, rel);
	if (rel8 >= 0)
		printf(", int8 %.2e", rel8);
	printf("%s\n", ok ? "" : "  FAIL");
	ok ? passed++ : failed++;
}

/* Which activation planes the producers write and which the products read (internal.cuh:
 * kb_i8_use, kb_act_need, kb_act_planes, kb_with_planes), for the weight sets models have. */
static void check_planes(void)
{
	KbCuda *c = (KbCuda *)calloc(1, sizeof(KbCuda));
	if (!c)
		abort();
	for (int t = 0; t < KB_CUDA_MAX_TOK; t++)
		c->mmv[t].i8 = -1;
	int bad = 0;
	const uint64_t MB = 1 << 20;
	auto expect = [&](const char *what, unsigned got, unsigned want) {
		if (got != want) {
			printf("planes: %s: 0x%x, expected 0x%x  FAIL\n", what, got, want);
			bad++;
		}
	};
	/* the producer instance kb_with_planes launches for these planes */
	auto instance = [](unsigned planes) {
		KbActOut o;
		memset(&o, 0, sizeof(o));
		o.planes = planes;
		return kb_with_planes(o, [](auto pl) { return decltype(pl)::value; });
	};
	/* N1 weights of T1 (a 7B's 224 layer products), one of T2 (its head) */
	auto set = [&](int t1, int t2, uint64_t bytes, int n1 = 224) {
		memset(c->type_live, 0, sizeof(c->type_live));
		c->type_live[t1] += n1;
		if (t2 >= 0)
			c->type_live[t2]++;
		c->live_bytes = bytes;
	};
	auto prod = [&](int n) { return kb_act_planes(c, n, false); }; /* what producers write */
	auto every = [&](int n) { return kb_act_planes(c, n, true); }; /* kb_cuda_act_prepare */
	expect("nothing uploaded", prod(1), KB_PL_ALL);
	expect("nothing uploaded, prepare", every(1), KB_PL_ALL);
	set(QD_TYPE_Q4_1, QD_TYPE_Q8_0, 98 * MB); /* SmolLM2: f16 activations at any size */
	expect("SmolLM2, 1 token", prod(1), KB_PL_H | KB_PL_S);
	expect("SmolLM2, 8 tokens", every(8), KB_PL_H | KB_PL_S);
	set(QD_TYPE_Q4_1, QD_TYPE_Q8_0, 3900 * MB); /* 7B Q4_1 with a Q8_0 head: int8 at one token */
	expect("7B Q4_1, 1 token", prod(1), KB_PL_Q | KB_PL_E);
	/* at 2-8 tokens Q4_1 int8 (session 14), the Q8_0 head f16: only its own prepare writes f16 */
	expect("7B Q4_1 + Q8_0, 8 tokens", prod(8), KB_PL_Q | KB_PL_E);
	expect("7B Q4_1 + Q8_0, 8 tokens, prepare", every(8), KB_PL_Q | KB_PL_E | KB_PL_H);
	set(QD_TYPE_Q4_1, QD_TYPE_Q6_K, 3900 * MB);
	expect("7B Q4_1 + Q6_K, 8 tokens", prod(8), KB_PL_Q | KB_PL_E);
	set(QD_TYPE_Q4_0, QD_TYPE_Q6_K, 3700 * MB); /* 7B Q4_0 with a Q6_K head */
	expect("7B Q4_0 + Q6_K, 1 token", prod(1), KB_PL_Q);
	expect("7B Q4_0 + Q6_K, 2 tokens", prod(2), KB_PL_H); /* Q6_K int8 at 2-8 tokens, the head */
	expect("7B Q4_0 + Q6_K, 2 tokens, prepare", every(2), KB_PL_Q | KB_PL_H);
	set(QD_TYPE_Q4_0, QD_TYPE_Q6_K, 3700 * MB, 15); /* 15 of one, 1 of the other: both are layers' */
	expect("Q4_0 x 15 + Q6_K, 2 tokens", prod(2), KB_PL_Q | KB_PL_H);
	set(QD_TYPE_Q4_K, QD_TYPE_Q6_K, 4000 * MB, 192);
	c->type_live[QD_TYPE_Q6_K] += 32; /* Q4_K_M: v and down of 16 layers in Q6_K, and the head */
	expect("7B Q4_K_M, 1 token", prod(1), KB_PL_Q | KB_PL_E);
	expect("7B Q4_K_M, 2 tokens", prod(2), KB_PL_Q | KB_PL_E);
	/* the plane sets of these models, producers' and prepares', have producer instances of
	 * their own (kb_with_planes: not KB_PL_DYN, which reads the set at run time) */
	static const unsigned sets[] = { KB_PL_H, KB_PL_H | KB_PL_S, KB_PL_Q, KB_PL_Q | KB_PL_E, KB_PL_Q | KB_PL_H,
					 KB_PL_Q | KB_PL_E | KB_PL_H };
	for (unsigned p : sets)
		expect("a model's plane set: its own producer instance", instance(p), p);
	set(QD_TYPE_BF16, -1, 13000 * MB);
	expect("7B BF16", prod(1), KB_PL_B);
	set(QD_TYPE_Q8_0, -1, 6800 * MB);
	c->mmv[0].i8 = 0; /* forced off at one token, on at eight */
	c->mmv[7].i8 = 1;
	expect("Q8_0 forced off, 1 token", prod(1), KB_PL_H);
	expect("Q8_0 forced on, 8 tokens", prod(8), KB_PL_Q);
	/* every product's planes are among what a prepare writes for the live types, and
	 * the producers write the layers' (T1's) planes, the head's (T2's) only where the
	 * layers read them too */
	static const int types[] = { QD_TYPE_Q4_0, QD_TYPE_Q4_1, QD_TYPE_Q8_0, QD_TYPE_Q4_K, QD_TYPE_Q6_K,
				     QD_TYPE_F16, QD_TYPE_BF16 };
	for (int t1 : types)
		for (int t2 : types)
			for (uint64_t bytes : { 100 * MB, 2048 * MB })
				for (int n = 1; n <= KB_CUDA_MAX_TOK; n++) {
					set(t1, t2, bytes);
					c->mmv[n - 1].i8 = -1;
					const unsigned p = every(n);
					for (int t : { t1, t2 })
						if ((p & kb_act_need(c, t, n)) != kb_act_need(c, t, n)) {
							printf("planes: type %d of {%d, %d}, %d tokens: 0x%x lacks 0x%x  FAIL\n", t,
							       t1, t2, n, p, kb_act_need(c, t, n));
							bad++;
						}
					if (prod(n) != kb_act_need(c, t1, n)) {
						printf("planes: producers of {%d x 224, %d}, %d tokens: 0x%x, expected 0x%x  FAIL\n",
						       t1, t2, n, prod(n), kb_act_need(c, t1, n));
						bad++;
					}
					/* a set without an instance of its own runs KB_PL_DYN's, which writes
					 * o.planes (checked: those sets are not the models' above) */
					for (unsigned q : { p, prod(n) }) {
						bool own = false;
						for (unsigned m : sets)
							own |= m == q;
						if (own != (instance(q) == q)) {
							printf("planes: 0x%x launched as instance 0x%x  FAIL\n", q, instance(q));
							bad++;
						}
					}
				}
	free(c);
	printf("activation planes of producers and products: %d wrong%s\n", bad, bad ? "  FAIL" : "");
	bad ? failed++ : passed++;
}

int main(void)
{
	check_rounding();
	check_planes();
	static const int64_t shapes[][2] = { { 37, 0 }, { 130, 1 }, { 17, 2 }, { 1, 3 } };
	static const int ntoks[] = { 1, 3, 8 };
	for (const auto &sh : shapes)
		for (int nt : ntoks) {
			const int64_t rows = sh[0], v = sh[1];
			/* columns: block multiples that are not multiples of the packet or chunk */
			check<QD_TYPE_Q4_0>(rows, 96 + 160 * v, nt, 1 + v);
			check<QD_TYPE_Q4_1>(rows, 224 + 128 * v, nt, 2 + v);
			check<QD_TYPE_Q8_0>(rows, 160 + 96 * v, nt, 3 + v);
			check<QD_TYPE_F16>(rows, 100 + 34 * v, nt, 4 + v);
			check<QD_TYPE_BF16>(rows, 18 + 66 * v, nt, 5 + v);
			check<QD_TYPE_Q4_K>(rows, 256 + 256 * v, nt, 6 + v);
			check<QD_TYPE_Q6_K>(rows, 256 + 512 * v, nt, 7 + v);
		}
	printf("%d passed, %d failed\n", passed, failed);
	return failed != 0;
}
