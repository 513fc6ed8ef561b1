/* tests/test-fused-qkv.c: the CUDA backend's q/k/v product with RoPE and the KV-cache
 * stores in its epilogue (matmul_rope_kv), against matmul_multi + rope_kv_store through the
 * ops table on fresh random inputs, bit for bit: one type and two (Q4_K_M's Q4_K + Q6_K
 * pair, also after the fused norm), RoPE sizes up to the epilogue's table and beyond it; and
 * rope_kv_store of a prefill-sized step against steps of 8.  Split out of test-fused.c.
 * Tests that need a GPU are skipped (CUnit "Inactive") on machines without one and in
 * builds without CUDA. */
#include "tests/fused_util.h"

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

/* QD_CUDA_MMV_STAGES=N > 0 forces the products' bulk-copy ring, and then a q/k/v of two
 * types is not run as one launch (k_mmv_pair is the register kernel's): the pair counts
 * expected are 0, so that the suite also runs green in that mode. */
static int ring_forced(void)
{
	const char *e = getenv("QD_CUDA_MMV_STAGES");
	return e && atoi(e) > 0;
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
					 cfgs[ci].rot <= 128 && !ring_forced();
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
	CU_ASSERT_EQUAL(pairs, ring_forced() ? 0 : 4);
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
	float *x = NULL, *y0 = NULL, *gw = NULL, *dx = NULL, *dy = NULL, *dg = NULL;
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
			CU_ASSERT_EQUAL(qkv_pairs(g) - p0, (uint64_t)(k == 0 && !ring_forced()));
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

int main(void)
{
	static const TuTest tests[] = {
		{ "matmul_rope_kv = matmul_multi + rope_kv_store, bit for bit", test_matmul_rope_kv, gpu_skip },
		{ "Q4_K_M's q/k/v pair after the fused norm, bit for bit", test_pair_after_norm, gpu_skip },
		{ "rope_kv_store: a 300-token step = steps of 8, bit for bit", test_rope_kv_many, gpu_skip },
		{ "cleanup", test_cleanup, NULL },
		{ NULL, NULL, NULL },
	};
	return tu_main("fused-qkv", tests);
}
