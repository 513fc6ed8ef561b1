/* tests/gpu/check-cuda-layout.cu: verifies the CUDA weight layout without a GPU.
 *
 * Runs, on the host, the very functions the kernels use (layout.cuh: repacking, the
 * activation permutation, fragment decoding and the per-block scaling) and replaces the
 * tensor-core mma with a warp-wide emulation that follows the PTX fragment layout of
 * mma.m16n8k16 (A row-major 16x16, B 16x8, C 16x8).  The result is compared with a
 * double-precision product on the dequantized weights (tests/gpu/qgen.h), for every
 * type, several token counts and shapes that are not multiples of the tile sizes.
 * Prints one line per case and "N passed, N failed"; exits non-zero on a failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <vector>

#include "kernels/cuda/layout.cuh"
#include "tests/gpu/qgen.h"

static double half_bits(uint16_t h, bool bf)
{
	return bf ? qd_bf16_to_f32(h) : qd_f16_to_f32(h);
}

/* Error of the emulated product: ||y - ref|| / ||sum_c |w x|||, the scale the f16
 * rounding of the activations follows (||ref|| itself can be small by cancellation; a
 * layout error still shows as about 1/sqrt(cols)). */
template <int T> static double run_case(int64_t rows, int64_t cols, int n_tok, uint64_t seed)
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
	for (int t = 0; t < n_tok; t++)
		for (int64_t c = 0; c < cap; c++) {
			const float v = c < cols ? x[(size_t)(t * cols + c)] : 0.f;
			const int64_t dst = t * cap + kb_act_pos(c);
			xh[(size_t)dst] = qd_f32_to_f16(v);
			const uint16_t hi = qd_f32_to_bf16(v);
			xhi[(size_t)dst] = hi;
			xlo[(size_t)dst] = qd_f32_to_bf16(v - qd_bf16_to_f32(hi));
			xs[(size_t)(((c / 64) * 8 + t) * 2 + (c % 64) / 32)] += v;
		}
	const KbActView av = { xh.data(), xhi.data(), xlo.data(), xs.data(), cap, n_tok };

	/* one warp per tile walking all chunks; mma emulated across the 32 lanes */
	std::vector<double> y((size_t)(n_tok * rows), 0.0);
	const bool bf = T == QD_TYPE_BF16;
	std::vector<KbWRegs<T>> w(32);
	std::vector<KbXRegs<T>> xr(32);
	for (int64_t t = 0; t < n_tiles; t++) {
		const KbTilePtr tp = { q.data() + t * geo.q_tile, s.data() + t * geo.s_tile, d.data() + t * geo.d_tile };
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
	double num = 0, den = 0;
	for (int64_t rr = 0; rr < rows; rr++) {
		qg_dequant_row(T, raw.data() + rr * row_bytes, cols, wrow.data());
		for (int t = 0; t < n_tok; t++) {
			double ref = 0, mag = 0;
			for (int64_t c = 0; c < cols; c++) {
				ref += wrow[(size_t)c] * x[(size_t)(t * cols + c)];
				mag += fabs(wrow[(size_t)c] * x[(size_t)(t * cols + c)]);
			}
			const double e = y[(size_t)(t * rows + rr)] - ref;
			num += e * e;
			den += mag * mag;
		}
	}
	return den > 0 ? sqrt(num / den) : INFINITY;
}

static int passed, failed;

template <int T> static void check(int64_t rows, int64_t cols, int n_tok, uint64_t seed)
{
	const double bound = T == QD_TYPE_BF16 ? 1e-4 : 1e-3;
	const double rel = run_case<T>(rows, cols, n_tok, seed);
	const bool ok = rel <= bound;
	printf("%-4s %5lldx%-5lld n_tok=%d: rel %.2e%s\n", qd_type_traits(T)->name, (long long)rows,
	       (long long)cols, n_tok, rel, ok ? "" : "  FAIL");
	ok ? passed++ : failed++;
}

int main(void)
{
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
