/* tests/test-fused.c: the CUDA backend's fused ops (kernels/backend.h) against the calls
 * they replace, through the ops table on fresh random inputs: the norm inside the residual
 * product, SwiGLU inside the gate/up product, a head that converts a norm's output itself;
 * and the device's sampling helpers (argmax inside the product, top-k).  The q/k/v product
 * with RoPE and the KV stores is in test-fused-qkv.c, the plain ops in test-backend.c.
 * Tests that need a GPU are skipped (CUnit "Inactive") on machines without one and in
 * builds without CUDA. */
#include "tests/fused_util.h"

/* matmul_res_norm on a backend whose one-token products take int8 activations (where the
 * CUDA backend fuses it), with a Q4_0 and a Q6_K residual product: the residual y and the
 * products that follow equal the plain calls' (matmul acc, rmsnorm, matmul_multi) up to the
 * activations' rounding.  Where every product that follows scales by 1 / rms (Q4_0, Q6_K,
 * Q4_K, Q8_0, Q4_1, and a Q4_K + Q6_K pair as Q4_K_M's q/k/v) the norm is left out, so the
 * products read other roundings than the plain calls' (they differ, slightly); where one
 * cannot (F16, alone or beside Q4_K) the backend runs the norm after all, and they read the
 * same bits.  And y_norm read after another op is refused, not read stale. */
static void test_matmul_res_norm(void)
{
	if (!ready())
		return;
	KbBackend *g = cuda_i8_new();
	CU_ASSERT_PTR_NOT_NULL_FATAL(g);
	enum { D = 4096, R = 320 };
	enum { NW = 8 }; /* two residual weights (D x D), six products (R x D) */
	static const int types[NW] = { QD_TYPE_Q4_0, QD_TYPE_Q6_K, QD_TYPE_Q4_0, QD_TYPE_Q6_K,
					QD_TYPE_F16,  QD_TYPE_Q4_K, QD_TYPE_Q8_0, QD_TYPE_Q4_1 };
	static const int64_t rows[NW] = { D, D, R, R, R, R, R, R };
	/* the products after the norm: indices into w, -1 ends (Q8_0 and Q4_1: the
	 * register-capped kernel, with their 1 / rms from kb_rms_early; the bulk-copy one,
	 * which one token no longer takes by default, with QD_CUDA_MMV_STAGES=2) */
	static const int sets[][3] = { { 2, -1 }, { 3, -1 }, { 4, -1 }, { 5, -1 }, { 5, 3, -1 }, { 5, 4, -1 },
				       { 6, -1 }, { 7, -1 } };
	const int nsets = (int)(sizeof(sets) / sizeof(sets[0]));
	uint64_t s = 0x5e;
	uint8_t *raw[NW];
	KbWeight w[NW];
	for (int i = 0; i < NW; i++) {
		size_t bytes;
		raw[i] = rand_weight(types[i], rows[i], D, &s, &bytes);
		CU_ASSERT_FATAL(raw[i] != NULL);
		w[i] = (KbWeight){ types[i], rows[i], D, raw[i], NULL, 0 };
		CU_ASSERT_EQUAL_FATAL(g->ops->weight_prepare(g, &w[i]), 0);
	}
	float *x, *y0, *gw, *dx, *dy, *dg;
	CU_ASSERT_EQUAL_FATAL(norm_inputs(g, D, &s, &x, &y0, &gw, &dx, &dy, &dg), 0);
	float *dn = buf_in(g, NULL, sizeof(float) * D);
	float *dout[2] = { buf_in(g, NULL, sizeof(float) * R), buf_in(g, NULL, sizeof(float) * R) };
	CU_ASSERT_FATAL(dn && dout[0] && dout[1]);
	const float eps = 1e-5f;
	static float yf[D], yp[D], of[2][R], op[2][R];
	for (int ri = 0; ri < 2; ri++)
		for (int k = 0; k < nsets; k++) {
			const KbWeight *wr = &w[ri], *wk[2];
			int nk = 0, scales = 1;
			for (; nk < 2 && sets[k][nk] >= 0; nk++) {
				wk[nk] = &w[sets[k][nk]];
				scales &= wk[nk]->type != QD_TYPE_F16;
			}
			for (int fused = 1; fused >= 0; fused--) {
				CU_ASSERT_EQUAL(g->ops->upload(g, dy, y0, sizeof(float) * D), 0);
				if (fused) { /* the residual product and the norm in one call */
					CU_ASSERT_EQUAL(g->ops->matmul_res_norm(g, wr, dx, 1, dy, dg, D, eps, dn), 0);
				} else {
					CU_ASSERT_EQUAL(g->ops->matmul_multi(g, 1, &wr, dx, 1, &dy, 1), 0);
					CU_ASSERT_EQUAL(g->ops->rmsnorm(g, dy, dg, 1, D, eps, dn), 0);
				}
				CU_ASSERT_EQUAL(g->ops->matmul_multi(g, nk, wk, dn, 1, dout, 0), 0);
				for (int i = 0; i < nk; i++)
					CU_ASSERT_EQUAL(buf_out(g, fused ? of[i] : op[i], dout[i], sizeof(float) * R), 0);
				CU_ASSERT_EQUAL(buf_out(g, fused ? yf : yp, dy, sizeof(float) * D), 0);
			}
			int64_t at = 0;
			const double wy = worst(yf, yp, yp, D, 1e-6, 1e-6, &at);
			CU_ASSERT(wy <= 1);
			printf("\n    %s residual, then", qd_type_traits(types[ri])->name);
			for (int i = 0; i < nk; i++) {
				/* the products' own int8 rounding of their input (1/254 of a block's
				 * largest value) is what differs: bounded like test_matmul's int8
				 * products; nothing differs where the norm ran */
				double num = 0, den = 0;
				for (int j = 0; j < R; j++) {
					num += ((double)of[i][j] - op[i][j]) * ((double)of[i][j] - op[i][j]);
					den += (double)op[i][j] * op[i][j];
				}
				const double rel = sqrt(num / (den > 0 ? den : 1));
				CU_ASSERT(den > 0 && rel < 1e-2);
				CU_ASSERT(scales ? rel > 0 : rel == 0);
				printf(" %s %.2e", qd_type_traits(wk[i]->type)->name, rel);
			}
			printf(" relative to the plain calls' (norm %s), residual %.2g of its bound",
			       scales ? "left to the products" : "run", wy);
		}
	/* y_norm after another op than a product: refused */
	CU_ASSERT_EQUAL(g->ops->upload(g, dy, y0, sizeof(float) * D), 0);
	CU_ASSERT_EQUAL(g->ops->matmul_res_norm(g, &w[0], dx, 1, dy, dg, D, eps, dn), 0);
	CU_ASSERT_EQUAL(g->ops->upload(g, dx, x, sizeof(float) * D), 0);
	CU_ASSERT_EQUAL(g->ops->matmul(g, &w[2], dn, 1, dout[0]), -EINVAL);
	printf("\n");
	float *bufs[] = { dx, dg, dy, dn, dout[0], dout[1] };
	norm_done(g, w, raw, NW, bufs, sizeof(bufs) / sizeof(bufs[0]), x, y0, gw);
}

/* matmul_swiglu on the same kind of backend, weights of TYPE: h and the down product after
 * it equal the plain calls' (matmul_multi, swiglu, matmul) to the products' summation order
 * and the activations' rounding, from a norm kernel's activations and from
 * matmul_res_norm's. */
static void swiglu_case(int type)
{
	KbBackend *g = cuda_i8_new();
	CU_ASSERT_PTR_NOT_NULL_FATAL(g);
	enum { D = 4096, F = 4352, R = 256 };
	static const int64_t rows[4] = { D, F, F, R }, cols[4] = { D, D, D, F };
	uint64_t s = 0x77;
	uint8_t *raw[4];
	KbWeight w[4]; /* o, gate, up, down */
	for (int i = 0; i < 4; i++) {
		size_t bytes;
		raw[i] = rand_weight(type, rows[i], cols[i], &s, &bytes);
		CU_ASSERT_FATAL(raw[i] != NULL);
		w[i] = (KbWeight){ type, rows[i], cols[i], raw[i], NULL, 0 };
		CU_ASSERT_EQUAL_FATAL(g->ops->weight_prepare(g, &w[i]), 0);
	}
	float *x, *y0, *gw, *dx, *dy, *dg;
	CU_ASSERT_EQUAL_FATAL(norm_inputs(g, D, &s, &x, &y0, &gw, &dx, &dy, &dg), 0);
	float *dn = buf_in(g, NULL, sizeof(float) * D);
	float *dgate = buf_in(g, NULL, sizeof(float) * F), *dup = buf_in(g, NULL, sizeof(float) * F);
	float *dh = buf_in(g, NULL, sizeof(float) * F), *dout = buf_in(g, NULL, sizeof(float) * R);
	CU_ASSERT_FATAL(dn && dgate && dup && dh && dout);
	const KbWeight *gu[2] = { &w[1], &w[2] }, *wo = &w[0];
	float *const ygu[2] = { dgate, dup };
	const float eps = 1e-5f;
	static float hf[F], hp[F], of[R], op[R];
	/* once first, so that the activation buffers have grown to F columns (the down
	 * product grows them): the calls compared below then take the fused path (a growth
	 * falls back to the plain one) */
	CU_ASSERT_EQUAL(g->ops->rmsnorm(g, dx, dg, 1, D, eps, dn), 0);
	CU_ASSERT_EQUAL(g->ops->matmul_swiglu(g, gu, dn, 1, ygu, dh), 0);
	CU_ASSERT_EQUAL(g->ops->matmul(g, &w[3], dh, 1, dout), 0);
	for (int k = 0; k < 2; k++) {
		for (int fused = 1; fused >= 0; fused--) {
			/* dn: a norm kernel's output (k 0), or matmul_res_norm's (k 1) */
			CU_ASSERT_EQUAL(g->ops->upload(g, dy, y0, sizeof(float) * D), 0);
			if (k == 0) {
				CU_ASSERT_EQUAL(g->ops->rmsnorm(g, dx, dg, 1, D, eps, dn), 0);
			} else if (fused) {
				CU_ASSERT_EQUAL(g->ops->matmul_res_norm(g, wo, dx, 1, dy, dg, D, eps, dn), 0);
			} else {
				CU_ASSERT_EQUAL(g->ops->matmul_multi(g, 1, &wo, dx, 1, &dy, 1), 0);
				CU_ASSERT_EQUAL(g->ops->rmsnorm(g, dy, dg, 1, D, eps, dn), 0);
			}
			if (fused) {
				CU_ASSERT_EQUAL(g->ops->matmul_swiglu(g, gu, dn, 1, ygu, dh), 0);
			} else {
				CU_ASSERT_EQUAL(g->ops->matmul_multi(g, 2, gu, dn, 1, ygu, 0), 0);
				CU_ASSERT_EQUAL(g->ops->swiglu(g, dgate, dup, 1, F, dh), 0);
			}
			CU_ASSERT_EQUAL(g->ops->matmul(g, &w[3], dh, 1, dout), 0);
			CU_ASSERT_EQUAL(buf_out(g, fused ? hf : hp, dh, sizeof(float) * F), 0);
			CU_ASSERT_EQUAL(buf_out(g, fused ? of : op, dout, sizeof(float) * R), 0);
		}
		double nh = 0, dh2 = 0, no = 0, do2 = 0;
		for (int i = 0; i < F; i++) {
			nh += ((double)hf[i] - hp[i]) * ((double)hf[i] - hp[i]);
			dh2 += (double)hp[i] * hp[i];
		}
		for (int i = 0; i < R; i++) {
			no += ((double)of[i] - op[i]) * ((double)of[i] - op[i]);
			do2 += (double)op[i] * op[i];
		}
		const double rh = sqrt(nh / (dh2 > 0 ? dh2 : 1)), ro = sqrt(no / (do2 > 0 ? do2 : 1));
		CU_ASSERT(dh2 > 0 && rh < 1e-2);
		CU_ASSERT(rh > 0); /* the fused path ran: its sums are added in another order */
		CU_ASSERT(do2 > 0 && ro < 1e-2);
		printf("\n    %s matmul_swiglu after %s: h %.2e, down product %.2e relative to the plain calls'",
		       qd_type_traits(type)->name, k == 0 ? "rmsnorm" : "matmul_res_norm", rh, ro);
	}
	float *bufs[] = { dx, dg, dy, dn, dgate, dup, dh, dout };
	norm_done(g, w, raw, 4, bufs, sizeof(bufs) / sizeof(bufs[0]), x, y0, gw);
}

/* A head of another type than most products reads a norm's output: the producers write
 * only the planes of the types that make up at least 1/16 of the product weights (here 17
 * Q4_0), so such a head converts its input itself (and a pending matmul_res_norm runs its
 * norm first).  Its output equals the plain calls' (matmul_multi acc, rmsnorm, a copy, the
 * head) bit for bit where nothing is fused; after the fused matmul_res_norm (one token,
 * int8) to the residual sums' order, or where the head scales by 1 / rms itself (Q6_K) to
 * the activations' rounding.  Three settings: int8 activations at every token count (an F16
 * head lacks the f16 plane), f16 at every one (a Q4_1 head lacks its sums), and the default
 * choice with over 1 GiB of weights uploaded (a 1.2 GB Q4_0 matrix that is never
 * multiplied), where at 2-8 tokens Q4_0 takes f16 and the Q4_1 and Q6_K heads int8: a Q4_0
 * model with llama.cpp's Q6_K output.  The norm's output buffer holds NaNs before each
 * step-like sequence, so a head that read it unwritten would fail. */
static void test_head_planes(void)
{
	if (!ready())
		return;
	enum { D = 4096, R = 320, NL = 16 };
	static const int heads[] = { QD_TYPE_F16, QD_TYPE_Q4_1, QD_TYPE_Q6_K };
	enum { NH = sizeof(heads) / sizeof(heads[0]), NW = 1 + NL + NH + 1 };
	int bad = 0, cases = 0;
	for (int mode = 1; mode >= -1; mode--) { /* QD_CUDA_MMV_I8=1, =0, unset */
		KbBackend *g = cuda_i8_mode_new(mode);
		CU_ASSERT_PTR_NOT_NULL_FATAL(g);
		uint64_t s = 0x4ead + (uint64_t)(mode + 1);
		uint8_t *raw[NW] = { 0 };
		KbWeight w[NW]; /* the residual weight (D x D), NL layers' (32 x D), the heads, the big one */
		const int nw = mode < 0 ? NW : NW - 1;
		for (int i = 0; i < nw; i++) {
			const int type = i <= NL || i == NW - 1 ? QD_TYPE_Q4_0 : heads[i - NL - 1];
			const int64_t rows = i == 0 ? D : i <= NL ? 32 : i < NW - 1 ? R : 524288;
			size_t bytes;
			raw[i] = rand_weight(type, rows, D, &s, &bytes);
			CU_ASSERT_FATAL(raw[i] != NULL);
			w[i] = (KbWeight){ type, rows, D, raw[i], NULL, 0 };
			CU_ASSERT_EQUAL_FATAL(g->ops->weight_prepare(g, &w[i]), 0);
		}
		enum { NT = 8 };
		float *x = rand_f32((size_t)NT * D, &s, 1.0f), *y0 = rand_f32((size_t)NT * D, &s, 4.0f);
		float *gw = rand_f32(D, &s, 1.0f), *nan = malloc(sizeof(float) * NT * D);
		CU_ASSERT_FATAL(x && y0 && gw && nan);
		for (int i = 0; i < D; i++)
			gw[i] += 1.5f;
		for (int i = 0; i < NT * D; i++)
			nan[i] = NAN;
		float *dx = buf_in(g, x, sizeof(float) * NT * D), *dy = buf_in(g, NULL, sizeof(float) * NT * D);
		float *dg = buf_in(g, gw, sizeof(float) * D), *dn = buf_in(g, NULL, sizeof(float) * NT * D);
		float *dn2 = buf_in(g, NULL, sizeof(float) * NT * D), *dout = buf_in(g, NULL, sizeof(float) * NT * R);
		CU_ASSERT_FATAL(dx && dy && dg && dn && dn2 && dout);
		static float oa[NT * R], ob[NT * R];
		static const int ns[] = { 1, 3, 8 };
		for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++)
			for (int h = 0; h < NH; h++) {
				const int n = ns[ni];
				const KbWeight *wr = &w[0], *wh = &w[1 + NL + h];
				const size_t ob_bytes = sizeof(float) * (size_t)(n * R);
				/* the step's way: the residual product and the norm (fused at one token
				 * with int8 activations), the head on the norm's output */
				CU_ASSERT_EQUAL(g->ops->upload(g, dn, nan, sizeof(float) * (size_t)(n * D)), 0);
				CU_ASSERT_EQUAL(g->ops->upload(g, dy, y0, sizeof(float) * (size_t)(n * D)), 0);
				CU_ASSERT_EQUAL(g->ops->matmul_res_norm(g, wr, dx, n, dy, dg, D, 1e-5f, dn), 0);
				CU_ASSERT_EQUAL(g->ops->matmul(g, wh, dn, n, dout), 0);
				CU_ASSERT_EQUAL(buf_out(g, oa, dout, ob_bytes), 0);
				/* the plain calls, the head's input converted from a copy */
				CU_ASSERT_EQUAL(g->ops->upload(g, dy, y0, sizeof(float) * (size_t)(n * D)), 0);
				CU_ASSERT_EQUAL(g->ops->matmul_multi(g, 1, &wr, dx, n, &dy, 1), 0);
				CU_ASSERT_EQUAL(g->ops->rmsnorm(g, dy, dg, n, D, 1e-5f, dn), 0);
				CU_ASSERT_EQUAL(g->ops->copy(g, dn2, dn, sizeof(float) * (size_t)(n * D)), 0);
				CU_ASSERT_EQUAL(g->ops->matmul(g, wh, dn2, n, dout), 0);
				CU_ASSERT_EQUAL(buf_out(g, ob, dout, ob_bytes), 0);
				/* fused: the residual product's own sums (another order: y to ~1e-6),
				 * and the Q6_K head left to scale by 1 / rms (int8 rounding of y * g) */
				const int fused = mode != 0 && n == 1, scales = fused && wh->type == QD_TYPE_Q6_K;
				double num = 0, den = 0;
				for (int j = 0; j < n * R; j++) {
					num += ((double)oa[j] - ob[j]) * ((double)oa[j] - ob[j]);
					den += (double)ob[j] * ob[j];
				}
				const double rel = sqrt(num / (den > 0 ? den : 1));
				const int ok = den > 0 && (scales ? rel < 1e-2 && rel > 0
							  : fused ? rel < 1e-4 : memcmp(oa, ob, ob_bytes) == 0);
				if (fused)
					printf("\n    %s, one token, %s head after matmul_res_norm: %.2e relative to the plain calls'",
					       mode > 0 ? "int8" : "default", qd_type_traits(wh->type)->name, rel);
				if (!ok)
					printf("\n    %s activations, %s head, n=%d: %.2e relative to the plain calls'  FAIL",
					       mode > 0 ? "int8" : mode == 0 ? "f16" : "default", qd_type_traits(wh->type)->name, n,
					       rel);
				bad += !ok;
				cases++;
			}
		float *bufs[] = { dx, dg, dy, dn, dn2, dout };
		norm_done(g, w, raw, nw, bufs, sizeof(bufs) / sizeof(bufs[0]), x, y0, gw);
		free(nan);
	}
	CU_ASSERT_EQUAL(bad, 0);
	printf("\n    %d cases (heads F16, Q4_1, Q6_K after 17 Q4_0 products' norm), %d differ\n", cases, bad);
}

static void test_matmul_swiglu(void)
{
	if (!ready())
		return;
	swiglu_case(QD_TYPE_Q4_0);
	swiglu_case(QD_TYPE_Q6_K);
	printf("\n");
}

/* matmul_argmax on the GPU: the product's bits, and per token the first index of the
 * largest output, on crafted rows: a tie between two equal rows (the earlier wins), -0
 * against +0 (equal: the earlier wins), and all-NaN outputs (0).  The F16 weight rows are
 * built so that each token's outputs are known exactly. */
static void test_matmul_argmax(void)
{
	if (!ready())
		return;
	const int64_t rows = 3001, cols = 64;
	const int n = 4;
	uint16_t *raw = calloc((size_t)(rows * cols), sizeof(uint16_t));
	float *x = calloc((size_t)(n * cols), sizeof(float)), *y = malloc(sizeof(float) * n * rows);
	float *y2 = malloc(sizeof(float) * n * rows);
	CU_ASSERT_FATAL(raw && x && y && y2);
	uint64_t s = 0x77;
	/* row r: column 0 = a value in (-1, 1) (+0 for every 7th row), column 1 = row-dependent
	 * extra for the ties; columns >= 2 zero */
	for (int64_t r = 0; r < rows; r++)
		raw[r * cols] = qd_f32_to_f16(r % 7 ? qg_signed(&s, 0.01f, 1.f) : 0.f);
	raw[2999 * cols] = raw[1200 * cols] = raw[17 * cols] = qd_f32_to_f16(3.0f); /* tie: 17 wins */
	raw[5 * cols + 1] = qd_f32_to_f16(-1.0f);
	x[0 * cols + 0] = 1.0f;                         /* token 0: column 0 as is */
	x[1 * cols + 0] = -1.0f;                        /* token 1: negated; the largest is the most negative */
	x[2 * cols + 1] = -0.0f;                        /* token 2: outputs +0 and -0 (equal): index 0 */
	x[3 * cols + 0] = NAN;                          /* token 3: NaN everywhere: index 0 */
	int32_t want[4] = { 17, 0, 0, 0 };
	{
		float best = INFINITY;
		for (int64_t r = 0; r < rows; r++) {
			const float v = qd_f16_to_f32(raw[r * cols]);
			if (v < best) {
				best = v;
				want[1] = (int32_t)r;
			}
		}
	}
	KbWeight w = { QD_TYPE_F16, rows, cols, raw, NULL, 0 };
	CU_ASSERT_EQUAL_FATAL(gpu->ops->weight_prepare(gpu, &w), 0);
	float *dx = buf_in(gpu, x, sizeof(float) * n * cols), *dy = buf_in(gpu, NULL, sizeof(float) * n * rows);
	float *dy2 = buf_in(gpu, NULL, sizeof(float) * n * rows);
	CU_ASSERT_FATAL(dx && dy && dy2);
	int32_t idx[4] = { -1, -1, -1, -1 };
	CU_ASSERT_EQUAL(gpu->ops->matmul_argmax(gpu, &w, dx, n, dy, idx), 0);
	CU_ASSERT_EQUAL(gpu->ops->matmul(gpu, &w, dx, n, dy2), 0);
	CU_ASSERT_EQUAL(buf_out(gpu, y, dy, sizeof(float) * n * rows), 0);
	CU_ASSERT_EQUAL(buf_out(gpu, y2, dy2, sizeof(float) * n * rows), 0);
	CU_ASSERT(memcmp(y, y2, sizeof(float) * n * rows) == 0);
	for (int t = 0; t < n; t++) {
		CU_ASSERT_EQUAL(idx[t], want[t]);
		if (idx[t] != want[t])
			printf("\n    token %d: argmax %d, expected %d\n", t, idx[t], want[t]);
	}
	CU_ASSERT_EQUAL(gpu->ops->matmul_argmax(gpu, &w, dx, 0, dy, idx), -EINVAL);
	gpu->ops->release(gpu, dx);
	gpu->ops->release(gpu, dy);
	gpu->ops->release(gpu, dy2);
	gpu->ops->weight_release(gpu, &w);
	free(raw);
	free(x);
	free(y);
	free(y2);
}

/* matmul_argmax over rows wider than one round of the device's scan (40,003 outputs: two
 * rounds of 16-byte loads and a tail of three), against the first largest of the
 * downloaded logits: a three-way tie planted in the second round and the tail, token 0's
 * row aligned (16-byte loads) and token 1's not (4-byte loads). */
static void test_matmul_argmax_wide(void)
{
	if (!ready())
		return;
	const int64_t rows = 40003, cols = 64;
	const int n = 2;
	uint16_t *raw = calloc((size_t)(rows * cols), sizeof(uint16_t));
	float *x = calloc((size_t)(n * cols), sizeof(float)), *y = malloc(sizeof(float) * n * rows);
	CU_ASSERT_FATAL(raw && x && y);
	uint64_t s = 0x3a;
	for (int64_t r = 0; r < rows; r++)
		raw[r * cols] = qd_f32_to_f16(qg_signed(&s, 0.01f, 1.f));
	raw[40002 * cols] = raw[40001 * cols] = raw[33000 * cols] = qd_f32_to_f16(3.0f); /* 33000 wins */
	x[0] = 1.0f;
	x[cols] = -0.5f; /* token 1: the most negative weight's row */
	KbWeight w = { QD_TYPE_F16, rows, cols, raw, NULL, 0 };
	CU_ASSERT_EQUAL_FATAL(gpu->ops->weight_prepare(gpu, &w), 0);
	float *dx = buf_in(gpu, x, sizeof(float) * n * cols), *dy = buf_in(gpu, NULL, sizeof(float) * n * rows);
	CU_ASSERT_FATAL(dx && dy);
	int32_t idx[2] = { -1, -1 };
	CU_ASSERT_EQUAL(gpu->ops->matmul_argmax(gpu, &w, dx, n, dy, idx), 0);
	CU_ASSERT_EQUAL(buf_out(gpu, y, dy, sizeof(float) * n * rows), 0);
	for (int t = 0; t < n; t++) {
		int32_t want = 0;
		for (int64_t r = 1; r < rows; r++)
			if (y[t * rows + r] > y[t * rows + want])
				want = (int32_t)r;
		CU_ASSERT_EQUAL(idx[t], want);
		if (idx[t] != want)
			printf("\n    token %d: argmax %d, expected %d\n", t, idx[t], want);
	}
	CU_ASSERT_EQUAL(idx[0], 33000);
	gpu->ops->release(gpu, dx);
	gpu->ops->release(gpu, dy);
	gpu->ops->weight_release(gpu, &w);
	free(raw);
	free(x);
	free(y);
}

/* topk on the GPU against a sort on the host: random rows, rows of few distinct values
 * (ties at the k-th place), -0 and +0, NaN and -inf, rows with fewer valid values than k
 * and with none; k from 1 to KB_TOPK_MAX, rows shorter and longer than a block. */
static void test_topk(void)
{
	if (!ready())
		return;
	static const struct { int64_t cols; int k; } shapes[] = {
		{ 1, 1 }, { 100, 7 }, { 1000, 40 }, { 49152, 40 }, { 32000, 256 }, { 128256, 64 }, { 5000, 1 },
		{ 32001, 40 }, /* rows 1-3, 5 and 6 not 16-byte aligned: the device's 4-byte loads */
	};
	const int n = 7;
	uint64_t s = 0x99;
	int bad_rows = 0, rows_checked = 0;
	for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
		const int64_t cols = shapes[si].cols;
		const int k = shapes[si].k;
		float *y = malloc(sizeof(float) * (size_t)(n * cols));
		int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n * k)), cnt[7];
		float *vals = malloc(sizeof(float) * (size_t)(n * k));
		CU_ASSERT_FATAL(y && ids && vals);
		for (int t = 0; t < n; t++)
			for (int64_t c = 0; c < cols; c++) {
				float v = qg_signed(&s, 0.f, 8.f);
				if (t == 1)
					v = floorf(v); /* few distinct values: ties everywhere */
				if (t == 2 && c % 5 == 0)
					v = c % 2 ? NAN : -INFINITY;
				if (t == 2 && c % 7 == 0)
					v = c % 3 ? -0.0f : 0.0f;
				if (t == 3 && c % 2)
					v = INFINITY * (c % 4 == 1 ? 1.f : -1.f); /* +inf counts, -inf not */
				if (t == 4 && c >= k / 2)
					v = c % 2 ? NAN : -INFINITY; /* fewer valid than k */
				if (t == 5)
					v = c % 2 ? NAN : -INFINITY; /* none */
				if (t == 6)
					v = 1.5f; /* all equal: the k lowest indices */
				y[t * cols + c] = v;
			}
		float *dy = buf_in(gpu, y, sizeof(float) * (size_t)(n * cols));
		CU_ASSERT_FATAL(dy != NULL);
		for (int t = 0; t < n; t++)
			cnt[t] = -1;
		CU_ASSERT_EQUAL(gpu->ops->topk(gpu, dy, n, cols, k, NULL, ids, vals, cnt), 0);
		for (int t = 0; t < n; t++) {
			const bool ok = tu_topk_matches(y + t * cols, cols, k, ids + t * k, vals + t * k, cnt[t]);
			if (!ok)
				printf("\n    topk cols %lld k %d row %d: %d candidates, not the top k\n", (long long)cols, k, t,
				       cnt[t]);
			bad_rows += !ok;
			rows_checked++;
		}
		gpu->ops->release(gpu, dy);
		free(y);
		free(ids);
		free(vals);
	}
	CU_ASSERT_EQUAL(bad_rows, 0);
	printf("\n    %d rows, %d differ\n", rows_checked, bad_rows);
	int32_t i1, n1;
	float v1;
	CU_ASSERT_EQUAL(gpu->ops->topk(gpu, (const float *)&v1, 1, 1, KB_TOPK_MAX + 1, NULL, &i1, &v1, &n1), -EINVAL);
	CU_ASSERT_EQUAL(gpu->ops->topk(gpu, (const float *)&v1, 1, 1, 0, NULL, &i1, &v1, &n1), -EINVAL);
}

int main(void)
{
	static const TuTest tests[] = {
		{ "matmul_argmax: ties, -0, NaN rows", test_matmul_argmax, gpu_skip },
		{ "matmul_argmax: rows of two scan rounds and a tail", test_matmul_argmax_wide, gpu_skip },
		{ "matmul_res_norm = matmul + rmsnorm, to the activations' rounding", test_matmul_res_norm, gpu_skip },
		{ "matmul_swiglu = matmul_multi + swiglu, to the sums' order", test_matmul_swiglu, gpu_skip },
		{ "a head of another type converts a norm's output itself", test_head_planes, gpu_skip },
		{ "topk: ties, -0, NaN/-inf, short rows vs a host sort", test_topk, gpu_skip },
		{ "cleanup", test_cleanup, NULL },
		{ NULL, NULL, NULL },
	};
	return tu_main("fused", tests);
}
