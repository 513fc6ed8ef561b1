/* tests/test-fused.c: the CUDA backend's fused ops (kernels/backend.h) against the calls
 * they replace, through the ops table on fresh random inputs: the norm inside the residual
 * product, SwiGLU inside the gate/up product, RoPE and the KV stores inside the q/k/v
 * product, the RoPE and KV stores of a prefill-sized step against steps of 8; and the
 * device's sampling helpers (argmax inside the product, top-k).  The plain ops are in
 * test-backend.c.  Tests that need a GPU are skipped (CUnit "Inactive") on machines
 * without one and in builds without CUDA. */
#include "tests/backend_util.h"

/* A CUDA backend made with QD_CUDA_MMV_I8=MODE (1 or 0; -1: unset, the backend's own
 * choice), the caller's setting of it restored afterwards. */
static KbBackend *cuda_i8_mode_new(int mode)
{
	const char *old = getenv("QD_CUDA_MMV_I8");
	char *keep = old ? strdup(old) : NULL;
	if (old && !keep)
		return NULL;
	if (mode >= 0)
		setenv("QD_CUDA_MMV_I8", mode ? "1" : "0", 1);
	else
		unsetenv("QD_CUDA_MMV_I8");
	KbBackend *g = NULL;
	int r = cuda_new(0, &g);
	if (keep)
		setenv("QD_CUDA_MMV_I8", keep, 1);
	else
		unsetenv("QD_CUDA_MMV_I8");
	free(keep);
	return r == 0 ? g : NULL;
}

/* A CUDA backend whose one-token Q4_0 products take int8 activations (QD_CUDA_MMV_I8=1),
 * so that matmul_res_norm and matmul_swiglu run fused for 4096-row products. */
static KbBackend *cuda_i8_new(void)
{
	return cuda_i8_mode_new(1);
}

/* A norm's test inputs of D columns: x, the residual y0 and norm weights around 1.5 (none
 * near 0), uploaded to G too (dx, dy, dg); 0 or -1. */
static int norm_inputs(KbBackend *g, int D, uint64_t *s, float **x, float **y0, float **gw, float **dx, float **dy,
		       float **dg)
{
	*x = rand_f32((size_t)D, s, 1.0f);
	*y0 = rand_f32((size_t)D, s, 4.0f);
	*gw = rand_f32((size_t)D, s, 1.0f);
	if (!*x || !*y0 || !*gw)
		return -1;
	for (int i = 0; i < D; i++)
		(*gw)[i] += 1.5f;
	*dx = buf_in(g, *x, sizeof(float) * (size_t)D);
	*dy = buf_in(g, *y0, sizeof(float) * (size_t)D);
	*dg = buf_in(g, *gw, sizeof(float) * (size_t)D);
	return *dx && *dy && *dg ? 0 : -1;
}

/* Releases what a cuda_i8_new test made: NW weights (and their raw bytes), NB device
 * buffers, norm_inputs' host arrays, the backend. */
static void norm_done(KbBackend *g, KbWeight *w, uint8_t **raw, int nw, float **bufs, size_t nb, float *x, float *y0,
		      float *gw)
{
	for (int i = 0; i < nw; i++) {
		g->ops->weight_release(g, &w[i]);
		free(raw[i]);
	}
	for (size_t i = 0; i < nb; i++)
		g->ops->release(g, bufs[i]);
	free(x);
	free(y0);
	free(gw);
	g->ops->free(g);
}

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

/* The q/k/v launches of two weight types that ran as one (KbCudaStepStats.qkv_pairs), and
 * the q/k/v products that took RoPE and the KV stores in their epilogue (qkv_rope). */
static KbCudaStepStats step_stats(KbBackend *g)
{
	KbCudaStepStats st = { 0 };
	CU_ASSERT_EQUAL_FATAL(kb_cuda_backend_step_stats(g, &st), 0);
	return st;
}

static uint64_t qkv_pairs(KbBackend *g)
{
	return step_stats(g).qkv_pairs;
}

static uint64_t qkv_rope(KbBackend *g)
{
	return step_stats(g).qkv_rope;
}

/* Whether backend buffers A and B (BYTES each) differ in any bit; with NONZERO, how many
 * 16-bit words of A are not 0 (a KV cache's stores happened). */
static int bufs_differ(KbBackend *g, const void *a, const void *b, size_t bytes, int *nonzero)
{
	uint8_t *ha = malloc(bytes), *hb = malloc(bytes);
	CU_ASSERT_FATAL(ha && hb);
	CU_ASSERT_EQUAL(buf_out(g, ha, a, bytes), 0);
	CU_ASSERT_EQUAL(buf_out(g, hb, b, bytes), 0);
	const int diff = memcmp(ha, hb, bytes) != 0;
	if (nonzero) {
		*nonzero = 0;
		for (size_t e = 0; e + 1 < bytes; e += 2)
			*nonzero += ha[e] || ha[e + 1];
	}
	free(ha);
	free(hb);
	return diff;
}

/* matmul_rope_kv (q/k/v products with RoPE and the KV stores in their epilogue) against
 * matmul_multi then rope_kv_store: the same bits in q, k, v and both caches.  GQA, partial
 * rotary dims, positions up to 1,131 (large angles), 1..8 tokens in one pass and 12 (two
 * passes: the separate launches), Q4_1 rows wide enough for the bulk-copy kernel (2-8
 * tokens; every count with QD_CUDA_MMV_STAGES=2, where the pair is refused), and q/k/v
 * of two types: Q4_K_M's Q6_K v, or k and v, with f16 activations (QD_CUDA_MMV_I8=0, as the
 * backend's own choice for weights this small: a launch per type, then the RoPE kernel) and
 * with int8 ones (=1: one token is one k_mmv_pair launch, counted), each once with more row
 * groups than a launch has blocks (its blocks then walk several, across q/k and k/v), a
 * pair without a pair kernel (Q4_0 + Q8_0), a rotation of 64 pairs (the epilogue's whole
 * table) and two above it (rot_dim 192, 256: separate launches). */
static void test_matmul_rope_kv(void)
{
	if (!ready())
		return;
	KbBackend *const backends[2] = { cuda_i8_mode_new(0), cuda_i8_new() };
	CU_ASSERT_FATAL(backends[0] && backends[1]);
	/* type, ktype, vtype: q's, k's, v's */
	static const struct { int type, ktype, vtype; int64_t cols; int rot, nh, nkv, hd; } cfgs[] = {
		{ QD_TYPE_Q4_0, QD_TYPE_Q4_0, QD_TYPE_Q4_0, 512, 64, 8, 2, 64 },
		{ QD_TYPE_Q8_0, QD_TYPE_Q8_0, QD_TYPE_Q8_0, 256, 32, 8, 2, 64 },
		{ QD_TYPE_F16, QD_TYPE_F16, QD_TYPE_F16, 320, 64, 8, 2, 64 },
		{ QD_TYPE_Q4_1, QD_TYPE_Q4_1, QD_TYPE_Q4_1, 2048, 64, 8, 2, 64 },
		{ QD_TYPE_Q4_K, QD_TYPE_Q4_K, QD_TYPE_Q6_K, 512, 64, 8, 2, 64 },
		{ QD_TYPE_Q4_K, QD_TYPE_Q6_K, QD_TYPE_Q6_K, 512, 64, 8, 2, 64 },
		{ QD_TYPE_Q4_K, QD_TYPE_Q4_K, QD_TYPE_Q6_K, 512, 64, 80, 20, 64 },
		{ QD_TYPE_Q4_K, QD_TYPE_Q6_K, QD_TYPE_Q6_K, 512, 64, 80, 20, 64 },
		{ QD_TYPE_Q4_0, QD_TYPE_Q4_0, QD_TYPE_Q8_0, 256, 32, 8, 2, 64 },
		/* the epilogue's whole table of sines and cosines (64 pairs), and rotations above
		 * it (the products, then the RoPE kernel), one of them a pair of types */
		{ QD_TYPE_Q4_0, QD_TYPE_Q4_0, QD_TYPE_Q4_0, 512, 128, 4, 2, 128 },
		{ QD_TYPE_Q8_0, QD_TYPE_Q8_0, QD_TYPE_Q8_0, 512, 256, 2, 1, 256 },
		{ QD_TYPE_Q4_K, QD_TYPE_Q4_K, QD_TYPE_Q6_K, 512, 192, 2, 1, 256 },
	};
	const int n_seq = 2, n_ctx = 1200;
	uint64_t s = 0x517;
	int bad = 0, cases = 0, pairs = 0, fused = 0;
	for (int bi = 0; bi < 2; bi++) {
		for (size_t ci = 0; ci < sizeof(cfgs) / sizeof(cfgs[0]); ci++) {
			KbBackend *const g = backends[bi];
			const int pair = bi == 1 && cfgs[ci].type == QD_TYPE_Q4_K && cfgs[ci].vtype == QD_TYPE_Q6_K &&
					 cfgs[ci].rot <= 128;
			const int nh = cfgs[ci].nh, nkv = cfgs[ci].nkv, hd = cfgs[ci].hd;
			const int64_t qd = (int64_t)nh * hd, kvd = (int64_t)nkv * hd, stride = (int64_t)n_ctx * kvd;
			const int64_t cols = cfgs[ci].cols;
			const int64_t rows[3] = { qd, kvd, kvd };
			KbWeight w[3];
			uint8_t *raw[3];
			for (int i = 0; i < 3; i++) {
				size_t bytes;
				const int type = i == 0 ? cfgs[ci].type : i == 1 ? cfgs[ci].ktype : cfgs[ci].vtype;
				raw[i] = rand_weight(type, rows[i], cols, &s, &bytes);
				CU_ASSERT_PTR_NOT_NULL_FATAL(raw[i]);
				w[i] = (KbWeight){ type, rows[i], cols, raw[i], NULL, 0 };
				CU_ASSERT_EQUAL_FATAL(g->ops->weight_prepare(g, &w[i]), 0);
			}
			const KbWeight *const wp[3] = { &w[0], &w[1], &w[2] };
			static const int ns[] = { 1, 3, 8, 12 };
			for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
				const int n = ns[ni];
				float *x = rand_f32((size_t)(n * cols), &s, 1.0f);
				int32_t pos[12], seq[12];
				for (int t = 0; t < n; t++) {
					seq[t] = t % 2;
					pos[t] = (int32_t)((t * 97 + (int)ci * 13) % 1000) + (t == 0 ? 999 - (int)ci : 0);
				}
				const size_t cache = (size_t)(stride * n_seq) * 2;
				float *dx = buf_in(g, x, sizeof(float) * (size_t)(n * cols));
				float *ya[3], *yb[3];
				for (int i = 0; i < 3; i++) {
					ya[i] = buf_in(g, NULL, sizeof(float) * (size_t)(n * rows[i]));
					yb[i] = buf_in(g, NULL, sizeof(float) * (size_t)(n * rows[i]));
				}
				uint16_t *zero = calloc(cache, 1);
				uint16_t *kca = buf_in(g, zero, cache), *vca = buf_in(g, zero, cache);
				uint16_t *kcb = buf_in(g, zero, cache), *vcb = buf_in(g, zero, cache);
				CU_ASSERT_FATAL(x && dx && zero && kca && vca && kcb && vcb && ya[2] && yb[2]);
				KbAttention a = { .n_tokens = n, .n_head = nh, .n_head_kv = nkv, .head_dim = hd, .pos = pos,
						  .seq = seq, .k_cache = kca, .v_cache = vca, .kv_slot_stride = stride };
				KbAttention b2 = a;
				b2.k_cache = kcb;
				b2.v_cache = vcb;
				float *const yap[3] = { ya[0], ya[1], ya[2] }, *const ybp[3] = { yb[0], yb[1], yb[2] };
				const uint64_t p0 = qkv_pairs(g), f0 = qkv_rope(g);
				CU_ASSERT_EQUAL(g->ops->matmul_rope_kv(g, wp, dx, n, yap, &a, cfgs[ci].rot, 10000.0f), 0);
				CU_ASSERT_EQUAL(qkv_pairs(g) - p0, (uint64_t)(pair && n == 1));
				/* the epilogue took it: one pass (n <= 8), one launch (one type or the
				 * pair) and a rotation its table holds (rot_dim <= 128) */
				const int one_type = cfgs[ci].ktype == cfgs[ci].type && cfgs[ci].vtype == cfgs[ci].type;
				CU_ASSERT_EQUAL(qkv_rope(g) - f0, (uint64_t)(n <= 8 && (one_type || (pair && n == 1)) &&
									      cfgs[ci].rot <= 128));
				fused += (int)(qkv_rope(g) - f0);
				pairs += (int)(qkv_pairs(g) - p0);
				CU_ASSERT_EQUAL(g->ops->matmul_multi(g, 3, wp, dx, n, ybp, 0), 0);
				CU_ASSERT_EQUAL(g->ops->rope_kv_store(g, &b2, yb[0], yb[1], yb[2], cfgs[ci].rot, 10000.0f), 0);
				int diff = 0, nonzero;
				for (int i = 0; i < 3; i++)
					diff += bufs_differ(g, ya[i], yb[i], sizeof(float) * (size_t)(n * rows[i]), NULL);
				diff += bufs_differ(g, kca, kcb, cache, &nonzero);
				CU_ASSERT(nonzero > 0); /* the stores happened */
				diff += bufs_differ(g, vca, vcb, cache, NULL);
				if (diff)
					printf("\n    matmul_rope_kv %s (k %s, v %s) n=%d %s: %d of 5 outputs differ\n",
					       qd_type_traits(cfgs[ci].type)->name, qd_type_traits(cfgs[ci].ktype)->name,
					       qd_type_traits(cfgs[ci].vtype)->name, n, bi ? "int8" : "f16", diff);
				bad += diff != 0;
				cases++;
				void *bufs[] = { dx, ya[0], ya[1], ya[2], yb[0], yb[1], yb[2], kca, vca, kcb, vcb };
				for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
					g->ops->release(g, bufs[i]);
				free(zero);
				free(x);
			}
			for (int i = 0; i < 3; i++) {
				g->ops->weight_release(g, &w[i]);
				free(raw[i]);
			}
		}
	}
	CU_ASSERT_EQUAL(bad, 0);
	CU_ASSERT_EQUAL(pairs, 4);
	printf("\n    %d cases, %d differ; %d pair launches, %d with the epilogue\n", cases, bad, pairs, fused);
	backends[0]->ops->free(backends[0]);
	backends[1]->ops->free(backends[1]);
}

/* Q4_K_M's q/k/v pair after matmul_res_norm, where its products scale by 1 / rms (the
 * k_mmv_pair instance a 7B decode step runs), against the same products launched a type
 * at a time (matmul_multi, which reads the same y * g activations) and rope_kv_store: the
 * same bits in q, k, v and the caches, for q and k of one type and q alone. */
static void test_pair_after_norm(void)
{
	if (!ready())
		return;
	KbBackend *g = cuda_i8_new();
	CU_ASSERT_PTR_NOT_NULL_FATAL(g);
	enum { D = 4096, NH = 8, NKV = 2, HD = 64, CTX = 64 };
	const int64_t rows[4] = { D, NH * HD, NKV * HD, NKV * HD };
	static const int sets[2][4] = { { QD_TYPE_Q4_0, QD_TYPE_Q4_K, QD_TYPE_Q4_K, QD_TYPE_Q6_K },
					{ QD_TYPE_Q4_0, QD_TYPE_Q4_K, QD_TYPE_Q6_K, QD_TYPE_Q6_K } };
	uint64_t s = 0x9a1;
	float *x, *y0, *gw, *dx, *dy, *dg;
	CU_ASSERT_EQUAL_FATAL(norm_inputs(g, D, &s, &x, &y0, &gw, &dx, &dy, &dg), 0);
	float *dn = buf_in(g, NULL, sizeof(float) * D), *out[2][3];
	const size_t cache = sizeof(uint16_t) * CTX * NKV * HD;
	uint16_t *zero = calloc(cache, 1), *kc[2], *vc[2];
	CU_ASSERT_FATAL(dn && zero);
	for (int k = 0; k < 2; k++) {
		kc[k] = buf_in(g, zero, cache);
		vc[k] = buf_in(g, zero, cache);
		for (int i = 0; i < 3; i++)
			out[k][i] = buf_in(g, NULL, sizeof(float) * (size_t)rows[1 + i]);
		CU_ASSERT_FATAL(kc[k] && vc[k] && out[k][0] && out[k][1] && out[k][2]);
	}
	int bad = 0;
	for (int si = 0; si < 2; si++) {
		KbWeight w[4];
		uint8_t *raw[4];
		for (int i = 0; i < 4; i++) {
			size_t bytes;
			raw[i] = rand_weight(sets[si][i], rows[i], D, &s, &bytes);
			CU_ASSERT_FATAL(raw[i] != NULL);
			w[i] = (KbWeight){ sets[si][i], rows[i], D, raw[i], NULL, 0 };
			CU_ASSERT_EQUAL_FATAL(g->ops->weight_prepare(g, &w[i]), 0);
		}
		const KbWeight *const qkv[3] = { &w[1], &w[2], &w[3] };
		int32_t pos = 37 + si, seq = 0;
		for (int k = 0; k < 2; k++) {
			KbAttention a = { .n_tokens = 1, .n_head = NH, .n_head_kv = NKV, .head_dim = HD, .pos = &pos,
					  .seq = &seq, .k_cache = kc[k], .v_cache = vc[k], .kv_slot_stride = CTX * NKV * HD };
			float *const y[3] = { out[k][0], out[k][1], out[k][2] };
			CU_ASSERT_EQUAL(g->ops->upload(g, dy, y0, sizeof(float) * D), 0);
			CU_ASSERT_EQUAL(g->ops->matmul_res_norm(g, &w[0], dx, 1, dy, dg, D, 1e-5f, dn), 0);
			const uint64_t p0 = qkv_pairs(g);
			if (k == 0) {
				CU_ASSERT_EQUAL(g->ops->matmul_rope_kv(g, qkv, dn, 1, y, &a, HD, 10000.0f), 0);
			} else {
				CU_ASSERT_EQUAL(g->ops->matmul_multi(g, 3, qkv, dn, 1, y, 0), 0);
				CU_ASSERT_EQUAL(g->ops->rope_kv_store(g, &a, y[0], y[1], y[2], HD, 10000.0f), 0);
			}
			CU_ASSERT_EQUAL(qkv_pairs(g) - p0, (uint64_t)(k == 0));
		}
		int diff = 0;
		for (int i = 0; i < 3; i++)
			diff += bufs_differ(g, out[0][i], out[1][i], sizeof(float) * (size_t)rows[1 + i], NULL);
		for (int c = 0; c < 2; c++) {
			int nonzero;
			diff += bufs_differ(g, c ? vc[0] : kc[0], c ? vc[1] : kc[1], cache, &nonzero);
			CU_ASSERT(nonzero > 0); /* the stores happened */
		}
		printf("\n    q %s, k %s, v %s after the fused norm: %d of 5 outputs differ", qd_type_traits(sets[si][1])->name,
		       qd_type_traits(sets[si][2])->name, qd_type_traits(sets[si][3])->name, diff);
		bad += diff != 0;
		for (int i = 0; i < 4; i++) {
			g->ops->weight_release(g, &w[i]);
			free(raw[i]);
		}
	}
	CU_ASSERT_EQUAL(bad, 0);
	printf("\n");
	float *bufs[] = { dx, dg, dy, dn, out[0][0], out[0][1], out[0][2], out[1][0], out[1][1], out[1][2],
			  (float *)kc[0], (float *)vc[0], (float *)kc[1], (float *)vc[1] };
	free(zero);
	norm_done(g, NULL, NULL, 0, bufs, sizeof(bufs) / sizeof(bufs[0]), x, y0, gw);
}

/* rope_kv_store for a prefill-sized step (one block per token) against the same tokens in
 * steps of 8 (a block per token and head): the same bits in q, k and both caches. */
static void test_rope_kv_many(void)
{
	if (!ready())
		return;
	const int n = 300, nh = 6, nkv = 2, hd = 64, rot = 48, n_ctx = 400;
	const int64_t qd = (int64_t)nh * hd, kvd = (int64_t)nkv * hd, stride = (int64_t)n_ctx * kvd;
	const size_t cache = (size_t)(2 * stride) * 2;
	uint64_t s = 0x2a7;
	int32_t pos[300], seq[300];
	for (int t = 0; t < n; t++) {
		seq[t] = t < 200 ? 0 : 1;
		pos[t] = t < 200 ? t : 399 - (t - 200);
	}
	float *q = rand_f32((size_t)(n * qd), &s, 2.0f), *k = rand_f32((size_t)(n * kvd), &s, 2.0f);
	float *v = rand_f32((size_t)(n * kvd), &s, 2.0f);
	uint16_t *zero = calloc(cache, 1);
	CU_ASSERT_FATAL(q && k && v && zero);
	float *dq[2], *dk[2], *dv = buf_in(gpu, v, sizeof(float) * (size_t)(n * kvd));
	uint16_t *kc[2], *vc[2];
	for (int i = 0; i < 2; i++) {
		dq[i] = buf_in(gpu, q, sizeof(float) * (size_t)(n * qd));
		dk[i] = buf_in(gpu, k, sizeof(float) * (size_t)(n * kvd));
		kc[i] = buf_in(gpu, zero, cache);
		vc[i] = buf_in(gpu, zero, cache);
		CU_ASSERT_FATAL(dq[i] && dk[i] && kc[i] && vc[i]);
	}
	CU_ASSERT_FATAL(dv != NULL);
	KbAttention a = { .n_tokens = n, .n_head = nh, .n_head_kv = nkv, .head_dim = hd, .pos = pos, .seq = seq,
			  .k_cache = kc[0], .v_cache = vc[0], .kv_slot_stride = stride };
	CU_ASSERT_EQUAL(gpu->ops->rope_kv_store(gpu, &a, dq[0], dk[0], dv, rot, 10000.0f), 0);
	for (int t0 = 0; t0 < n; t0 += 8) {
		KbAttention b = a;
		b.n_tokens = n - t0 < 8 ? n - t0 : 8;
		b.pos = pos + t0;
		b.seq = seq + t0;
		b.k_cache = kc[1];
		b.v_cache = vc[1];
		CU_ASSERT_EQUAL(gpu->ops->rope_kv_store(gpu, &b, dq[1] + t0 * qd, dk[1] + t0 * kvd, dv + t0 * kvd, rot,
						       10000.0f), 0);
	}
	int diff = 0;
	const size_t qb = sizeof(float) * (size_t)(n * qd), kb = sizeof(float) * (size_t)(n * kvd);
	float *h0 = malloc(qb), *h1 = malloc(qb);
	uint16_t *c0 = malloc(cache), *c1 = malloc(cache);
	CU_ASSERT_FATAL(h0 && h1 && c0 && c1);
	CU_ASSERT_EQUAL(buf_out(gpu, h0, dq[0], qb), 0);
	CU_ASSERT_EQUAL(buf_out(gpu, h1, dq[1], qb), 0);
	diff += memcmp(h0, h1, qb) != 0;
	diff += memcmp(h0, q, qb) == 0; /* rotated at all */
	CU_ASSERT_EQUAL(buf_out(gpu, h0, dk[0], kb), 0);
	CU_ASSERT_EQUAL(buf_out(gpu, h1, dk[1], kb), 0);
	diff += memcmp(h0, h1, kb) != 0;
	for (int i = 0; i < 2; i++) {
		CU_ASSERT_EQUAL(buf_out(gpu, c0, i ? vc[0] : kc[0], cache), 0);
		CU_ASSERT_EQUAL(buf_out(gpu, c1, i ? vc[1] : kc[1], cache), 0);
		diff += memcmp(c0, c1, cache) != 0;
		diff += memcmp(c0, zero, cache) == 0; /* stored at all */
	}
	CU_ASSERT_EQUAL(diff, 0);
	printf("\n    %d tokens in one step vs steps of 8: %d checks fail", n, diff);
	for (int i = 0; i < 2; i++) {
		gpu->ops->release(gpu, dq[i]);
		gpu->ops->release(gpu, dk[i]);
		gpu->ops->release(gpu, kc[i]);
		gpu->ops->release(gpu, vc[i]);
	}
	gpu->ops->release(gpu, dv);
	free(q);
	free(k);
	free(v);
	free(zero);
	free(h0);
	free(h1);
	free(c0);
	free(c1);
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
		{ "matmul_rope_kv = matmul_multi + rope_kv_store, bit for bit", test_matmul_rope_kv, gpu_skip },
		{ "Q4_K_M's q/k/v pair after the fused norm, bit for bit", test_pair_after_norm, gpu_skip },
		{ "matmul_res_norm = matmul + rmsnorm, to the activations' rounding", test_matmul_res_norm, gpu_skip },
		{ "matmul_swiglu = matmul_multi + swiglu, to the sums' order", test_matmul_swiglu, gpu_skip },
		{ "a head of another type converts a norm's output itself", test_head_planes, gpu_skip },
		{ "rope_kv_store: a 300-token step = steps of 8, bit for bit", test_rope_kv_many, gpu_skip },
		{ "topk: ties, -0, NaN/-inf, short rows vs a host sort", test_topk, gpu_skip },
		{ "cleanup", test_cleanup, NULL },
		{ NULL, NULL, NULL },
	};
	return tu_main("fused", tests);
}
