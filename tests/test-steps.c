/* tests/test-steps.c: the CUDA backend on whole steps and models: the default model's
 * greedy tokens on the GPU equal the CPU's (or the first divergence is a near-tie); steps
 * recorded and replayed as CUDA graphs, with every fused op, give the same bits as plain op
 * calls (a one-layer block, then a tiny random model); a context that cannot fit the GPU is
 * refused before anything is uploaded.  Skipped without a GPU, like test-backend.c. */
#include "tests/backend_util.h"
#include "tests/ahead_util.h"

/* A context whose KV cache no GPU has is refused before anything is uploaded, with the
 * numbers; one that fits is not. */
static void test_mem_refusal(void)
{
	if (!ready())
		return;
	char path[] = "/tmp/qd-test-backend-XXXXXX", err[256], why[320] = "";
	int fd = mkstemp(path);
	CU_ASSERT_FATAL(fd >= 0);
	close(fd);
	Model *m = NULL;
	Context *c = NULL;
	CU_ASSERT_EQUAL_FATAL(synth_write(path, synth_shape("tiny"), QD_TYPE_Q4_0, 1, 7, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(model_load(path, &m, err, sizeof(err)), 0);
	ContextParams big = { .n_seq = 4096, .n_ctx = 1 << 20, .n_batch = 8, .backend = "cuda", .err = why,
			      .errlen = sizeof why };
	CU_ASSERT_EQUAL(ctx_new(m, &big, &c), -ENOMEM);
	CU_ASSERT_PTR_NULL(c);
	CU_ASSERT_PTR_NOT_NULL(strstr(why, "MiB of GPU memory"));
	printf("\n    refused: %s\n", why);
	why[0] = 0;
	ContextParams small = { .n_seq = 2, .n_ctx = 64, .n_batch = 8, .backend = "cuda", .err = why,
				.errlen = sizeof why };
	CU_ASSERT_EQUAL(ctx_new(m, &small, &c), 0);
	CU_ASSERT_EQUAL(why[0], 0);
	ctx_free(c);
	model_free(m);
	unlink(path);
}

static int argmax(const float *x, int n)
{
	int b = 0;
	for (int i = 1; i < n; i++)
		if (x[i] > x[b])
			b = i;
	return b;
}

/* The whole model, greedy: the GPU's tokens equal the CPU's for 40 steps, or the first
 * divergence is a near-tie (both backends' logits of the two tokens within 0.5).  Two more
 * contexts take the same tokens, one step as WANT_ARGMAX rows (the output norm, head and
 * greedy ids in the step: forward.c's run_layers HEAD; on the GPU a graph of its own,
 * replayed, its ids delivered at the step's sync), the next as logits rows, and so on: each
 * equals its backend's logits path, the ids exactly and the logits bit for bit.  (This
 * model's products are below the sizes where the CUDA backend carries a norm in a product's
 * flush, so the same kernels run either way; where it does, the head's int8 input is
 * rounded differently and a near tie may go the other way.) */
static void test_model_greedy(void)
{
	if (!ready())
		return;
	static const char *prompts[] = {
		"The capital of France is",
		"Write a short poem about the sea.\nThe sea",
		"def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
		"Once upon a time, in a small village at the edge of a forest, there lived",
	};
	char err[256];
	Model *m = NULL;
	CU_ASSERT_EQUAL_FATAL(model_load(tu_model_path(), &m, err, sizeof(err)), 0);
	const int n_vocab = model_config(m)->n_vocab;
	Context *cc = NULL, *cg = NULL, *ca = NULL, *cga = NULL;
	ContextParams p = { .n_seq = 1, .n_ctx = 192, .n_batch = 64, .n_threads = 0, .backend = "cpu" };
	CU_ASSERT_EQUAL_FATAL(ctx_new(m, &p, &cc), 0);
	CU_ASSERT_EQUAL_FATAL(ctx_new(m, &p, &ca), 0);
	p.backend = "cuda";
	CU_ASSERT_EQUAL_FATAL(ctx_new(m, &p, &cg), 0);
	CU_ASSERT_EQUAL_FATAL(ctx_new(m, &p, &cga), 0);
	int a_same = 0, a_steps = 0, l_steps = 0;
	const int steps = 40;
	float *lc = malloc(sizeof(float) * (size_t)n_vocab);
	CU_ASSERT_PTR_NOT_NULL_FATAL(lc);
	for (size_t pi = 0; pi < sizeof(prompts) / sizeof(prompts[0]); pi++) {
		int32_t ids[192], pos[192], seq[192] = { 0 };
		const Tokenizer *tok = model_tokenizer(m);
		int n = tok_encode(tok, prompts[pi], strlen(prompts[pi]), tok_add_bos(tok), false, ids, 64);
		CU_ASSERT_FATAL(n > 0 && n <= 64);
		for (int i = 0; i < n; i++)
			pos[i] = i;
		Context *all[] = { cc, cg, ca, cga };
		Batch b = { .n_tokens = n, .token = ids, .pos = pos, .seq = seq };
		for (int i = 0; i < 4; i++) {
			ctx_seq_truncate(all[i], 0, 0);
			CU_ASSERT_EQUAL_FATAL(ctx_decode(all[i], &b), 0);
		}
		const uint8_t want_id = WANT_ARGMAX;
		int a_kind = WANT_LOGITS; /* what ca and cga asked for in their last step */
		double max_diff = 0;
		int same = 0, cur = n;
		for (int step = 0; step < steps; step++) {
			memcpy(lc, ctx_logits(cc, 0), sizeof(float) * (size_t)n_vocab);
			const float *lg = ctx_logits(cg, 0);
			for (int i = 0; i < n_vocab; i++)
				if (fabs((double)lg[i] - lc[i]) > max_diff)
					max_diff = fabs((double)lg[i] - lc[i]);
			const int tc = argmax(lc, n_vocab), tg = argmax(lg, n_vocab);
			CU_ASSERT_EQUAL(ctx_argmax(cg, 0), tg); /* found on the device */
			CU_ASSERT_EQUAL(ctx_argmax(cc, 0), tc);
			if (tc != tg) {
				const double gap_c = lc[tc] - lc[tg], gap_g = lg[tg] - lg[tc];
				printf("\n    prompt %zu: first divergence at step %d: cpu %d, gpu %d; logit gaps cpu %.3f "
				       "gpu %.3f\n", pi, step, tc, tg, gap_c, gap_g);
				CU_ASSERT(gap_c <= 0.5 && gap_g <= 0.5);
				break;
			}
			if (a_kind == WANT_ARGMAX) { /* the ids of the same step as WANT_ARGMAX rows */
				const int ta = ctx_argmax(ca, 0), tga = ctx_argmax(cga, 0);
				CU_ASSERT_PTR_NULL(ctx_logits(cga, 0));
				CU_ASSERT_EQUAL(ta, tc);
				CU_ASSERT_EQUAL(tga, tg);
				a_steps++;
				a_same += tga == tg;
				if (tga != tg && tga >= 0 && tga < n_vocab)
					printf("\n    prompt %zu step %d: WANT_ARGMAX id %d, logits path %d, logit gap %.3f", pi,
					       step, tga, tg, lg[tg] - lg[tga]);
			} else if (step > 0) { /* as logits rows, after a WANT_ARGMAX step */
				const float *la = ctx_logits(ca, 0), *lga = ctx_logits(cga, 0);
				CU_ASSERT_FATAL(la && lga);
				CU_ASSERT(memcmp(la, lc, sizeof(float) * (size_t)n_vocab) == 0);
				CU_ASSERT(memcmp(lga, lg, sizeof(float) * (size_t)n_vocab) == 0);
				l_steps++;
			}
			same++;
			int32_t next = tc;
			Batch d = { .n_tokens = 1, .token = &next, .pos = &cur, .seq = seq };
			Batch da = d;
			a_kind = step % 2 ? WANT_LOGITS : WANT_ARGMAX;
			if (a_kind == WANT_ARGMAX)
				da.want_logits = &want_id;
			CU_ASSERT_EQUAL_FATAL(ctx_decode(cc, &d), 0);
			CU_ASSERT_EQUAL_FATAL(ctx_decode(cg, &d), 0);
			CU_ASSERT_EQUAL_FATAL(ctx_decode(ca, &da), 0);
			CU_ASSERT_EQUAL_FATAL(ctx_decode(cga, &da), 0);
			cur++;
		}
		printf("\n    prompt %zu (%d tokens): %d/%d greedy tokens equal, max |logit diff| %.4f", pi, n, same,
		       steps, max_diff);
		/* A sanity bound against broken kernels (which move logits by tens): the GPU rounds
		 * activations to f16, the CPU to 8-bit blocks, and 40 steps of that moved logits by
		 * 0.69 to 1.14 on the H200 (2026-11-29). */
		CU_ASSERT(max_diff < 2.0);
	}
	printf("\n    alternating steps: %d as WANT_ARGMAX rows (GPU ids equal to its logits path's: %d), %d as "
	       "logits rows\n", a_steps, a_same, l_steps);
	CU_ASSERT(a_steps > 0 && l_steps > 0);
	free(lc);
	ctx_free(cc);
	ctx_free(cg);
	ctx_free(ca);
	ctx_free(cga);
	model_free(m);
}

/* WANT_ARGMAX and WANT_TOPK rows: the GPU leaves their logits on the device (ctx_logits
 * NULL) and gives their greedy ids and top-k candidates, equal to what the same rows
 * downloaded in full give; rows asking for logits in the same batch still get them. */
static void test_want_argmax(void)
{
	if (!ready())
		return;
	char err[256];
	Model *m = NULL;
	CU_ASSERT_EQUAL_FATAL(model_load(tu_model_path(), &m, err, sizeof(err)), 0);
	const int n_vocab = model_config(m)->n_vocab;
	Context *cg = NULL;
	ContextParams p = { .n_seq = 4, .n_ctx = 64, .n_batch = 64, .n_threads = 0, .backend = "cuda" };
	CU_ASSERT_EQUAL_FATAL(ctx_new(m, &p, &cg), 0);
	const Tokenizer *tok = model_tokenizer(m);
	static const char *text = "The quick brown fox jumps over the lazy dog because";
	int32_t ids[16];
	const int n = tok_encode(tok, text, strlen(text), tok_add_bos(tok), false, ids, 16);
	CU_ASSERT_FATAL(n >= 4 && n <= 16);
	int32_t t[64], pos[64], seq[64], topk[64];
	uint8_t want[64], all[64];
	int k = 0;
	static const uint8_t last[4] = { WANT_ARGMAX, WANT_LOGITS, WANT_TOPK, WANT_TOPK };
	for (int s = 0; s < 4; s++)
		for (int i = 0; i < n - s; i++, k++) { /* sequences of different lengths */
			t[k] = ids[i];
			pos[k] = i;
			seq[k] = s;
			want[k] = i == n - s - 1 ? last[s] : i == 2 ? (s == 1 ? WANT_TOPK : WANT_ARGMAX) : WANT_NONE;
			topk[k] = s == 3 ? 1 : 40 - 10 * s;
			all[k] = want[k] ? WANT_LOGITS : WANT_NONE;
		}
	Batch b = { .n_tokens = k, .token = t, .pos = pos, .seq = seq, .want_logits = want, .top_k = topk };
	CU_ASSERT_EQUAL_FATAL(ctx_decode(cg, &b), 0);
	int32_t got[64], row_tok[64], ntop[64], top_ids[64][64];
	float top_vals[64][64];
	int rows = 0, n_topk_rows = 0;
	for (int i = 0; i < k; i++) {
		if (!want[i])
			continue;
		got[rows] = ctx_argmax(cg, rows);
		row_tok[rows] = i;
		CU_ASSERT(got[rows] >= 0 && got[rows] < n_vocab);
		const int32_t *ti;
		const float *tv;
		ntop[rows] = ctx_topk(cg, rows, &ti, &tv);
		if (want[i] == WANT_LOGITS) {
			CU_ASSERT_PTR_NOT_NULL(ctx_logits(cg, rows));
			CU_ASSERT_EQUAL(ntop[rows], -1);
		} else {
			CU_ASSERT_PTR_NULL(ctx_logits(cg, rows));
		}
		if (want[i] == WANT_TOPK) {
			/* the row's own k, or more (one op call serves the largest k asked) */
			CU_ASSERT(ntop[rows] >= topk[i] && ntop[rows] <= 64);
			if (ntop[rows] >= 0 && ntop[rows] <= 64) {
				memcpy(top_ids[rows], ti, sizeof(int32_t) * (size_t)ntop[rows]);
				memcpy(top_vals[rows], tv, sizeof(float) * (size_t)ntop[rows]);
			}
			n_topk_rows++;
		} else if (want[i] == WANT_ARGMAX) {
			CU_ASSERT_EQUAL(ntop[rows], -1);
		}
		rows++;
	}
	CU_ASSERT_EQUAL(n_topk_rows, 3);
	for (int s = 0; s < 4; s++)
		ctx_seq_truncate(cg, s, 0);
	b.want_logits = all;
	CU_ASSERT_EQUAL_FATAL(ctx_decode(cg, &b), 0);
	int bad = 0, bad_top = 0;
	for (int r = 0; r < rows; r++) {
		const float *l = ctx_logits(cg, r);
		CU_ASSERT_PTR_NOT_NULL_FATAL(l);
		bad += argmax(l, n_vocab) != got[r] || ctx_argmax(cg, r) != got[r];
		if (want[row_tok[r]] != WANT_TOPK || ntop[r] < 0 || ntop[r] > 64)
			continue;
		/* every candidate is one of the row's ntop largest (ties: lower ids), with its logit */
		for (int j = 0; j < ntop[r]; j++) {
			const int32_t id = top_ids[r][j];
			int better = 0;
			for (int v = 0; v < n_vocab; v++)
				better += l[v] > l[id] || (l[v] == l[id] && v < id);
			bad_top += id < 0 || id >= n_vocab || better >= ntop[r] || l[id] != top_vals[r][j];
			for (int j2 = 0; j2 < j; j2++)
				bad_top += top_ids[r][j2] == id;
		}
	}
	CU_ASSERT_EQUAL(bad, 0);
	CU_ASSERT_EQUAL(bad_top, 0);
	printf("\n    %d rows (%d tokens, 4 sequences), %d greedy ids differ, %d top-k candidates wrong\n", rows,
	       k, bad, bad_top);
	ctx_free(cg);
	model_free(m);
}

/* A CUDA backend with graphs and shared conversions on (the default) or off. */
static int cuda_new_mode(int on, KbBackend **ret)
{
	if (!on) {
		setenv("QD_CUDA_GRAPHS", "0", 1);
		setenv("QD_CUDA_FUSE", "0", 1);
	}
	int r = cuda_new(0, ret);
	unsetenv("QD_CUDA_GRAPHS");
	unsetenv("QD_CUDA_FUSE");
	return r;
}

/* A one-layer attention block through the ops table, for the step tests. */
enum { MD = 256, MH = 4, MKV = 2, MHD = 64, MCTX = 32, MVOCAB = 50 };
typedef struct {
	KbWeight emb, wq, wkv, wo;
	uint8_t *raw[4];
	float *norm, *x, *xn, *q, *k, *v, *att, *y;
	uint16_t *kc, *vc;
} Mini;

static int mini_new(KbBackend *b, Mini *m, uint64_t seed)
{
	static const struct { int type; int64_t rows, cols; } ws[4] = {
		{ QD_TYPE_Q8_0, MVOCAB, MD }, { QD_TYPE_Q4_0, MH * MHD, MD },
		{ QD_TYPE_Q4_K, MKV * MHD, MD }, { QD_TYPE_Q6_K, MD, MH * MHD },
	};
	KbWeight *w[4] = { &m->emb, &m->wq, &m->wkv, &m->wo };
	uint64_t s = seed;
	memset(m, 0, sizeof(*m));
	for (int i = 0; i < 4; i++) {
		size_t bytes;
		if (!(m->raw[i] = rand_weight(ws[i].type, ws[i].rows, ws[i].cols, &s, &bytes)))
			return -ENOMEM;
		*w[i] = (KbWeight){ ws[i].type, ws[i].rows, ws[i].cols, m->raw[i], NULL, 0 };
		if (b->ops->weight_prepare(b, w[i]) < 0)
			return -EIO;
	}
	float *nw = rand_f32(MD, &s, 1.0f);
	m->norm = nw ? buf_in(b, nw, sizeof(float) * MD) : NULL;
	free(nw);
	const size_t act = sizeof(float) * 8 * MD, cache = sizeof(uint16_t) * 2 * MCTX * MKV * MHD;
	float **fs[] = { &m->x, &m->xn, &m->q, &m->k, &m->v, &m->att, &m->y };
	for (size_t i = 0; i < sizeof(fs) / sizeof(fs[0]); i++)
		*fs[i] = buf_in(b, NULL, act);
	m->kc = buf_in(b, NULL, cache);
	m->vc = buf_in(b, NULL, cache);
	if (!m->norm || !m->y || !m->kc || !m->vc)
		return -ENOMEM;
	return 0;
}

static void mini_free(KbBackend *b, Mini *m)
{
	KbWeight *w[4] = { &m->emb, &m->wq, &m->wkv, &m->wo };
	void *ps[] = { m->norm, m->x, m->xn, m->q, m->k, m->v, m->att, m->y, m->kc, m->vc };
	for (int i = 0; i < 4; i++) {
		if (w[i]->priv)
			b->ops->weight_release(b, w[i]);
		free(m->raw[i]);
	}
	for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++)
		b->ops->release(b, ps[i]);
}

/* The block op by op, or (FUSED) through the fused ops forward.c uses: q alone (its type
 * differs), k and v in one product, RoPE with the cache store, the residual add riding on
 * the wo product.  Both must give the same bits. */
static int mini_ops(KbBackend *b, Mini *m, const int32_t *ids, const int32_t *pos, const int32_t *seq, int n,
		    int fused)
{
	const KbOps *o = b->ops;
	KbAttention a = { .n_tokens = n, .n_head = MH, .n_head_kv = MKV, .head_dim = MHD, .pos = pos, .seq = seq,
			  .q = m->q, .k_cache = m->kc, .v_cache = m->vc, .kv_slot_stride = MCTX * MKV * MHD,
			  .scale = 0.125f, .out = m->att };
	int r;
	if ((r = o->get_rows(b, &m->emb, ids, n, m->x)) < 0 || (r = o->rmsnorm(b, m->x, m->norm, n, MD, 1e-5f, m->xn)) < 0)
		return r;
	if (fused) {
		const KbWeight *wq[1] = { &m->wq }, *wkv[2] = { &m->wkv, &m->wkv }, *wo[1] = { &m->wo };
		float *yq[1] = { m->q }, *ykv[2] = { m->k, m->v }, *yx[1] = { m->x };
		if ((r = o->matmul_multi(b, 1, wq, m->xn, n, yq, 0)) < 0 ||
		    (r = o->matmul_multi(b, 2, wkv, m->xn, n, ykv, 0)) < 0 ||
		    (r = o->rope_kv_store(b, &a, m->q, m->k, m->v, MHD, 1e4f)) < 0 || (r = o->attention(b, &a)) < 0)
			return r;
		return o->matmul_multi(b, 1, wo, m->att, n, yx, 1);
	}
	if ((r = o->matmul(b, &m->wq, m->xn, n, m->q)) < 0 || (r = o->matmul(b, &m->wkv, m->xn, n, m->k)) < 0 ||
	    (r = o->matmul(b, &m->wkv, m->xn, n, m->v)) < 0 || (r = o->rope(b, m->q, pos, n, MH, MHD, MHD, 1e4f)) < 0 ||
	    (r = o->rope(b, m->k, pos, n, MKV, MHD, MHD, 1e4f)) < 0 || (r = o->kv_store(b, &a, m->k, m->v)) < 0 ||
	    (r = o->attention(b, &a)) < 0 || (r = o->matmul(b, &m->wo, m->att, n, m->y)) < 0)
		return r;
	return o->add(b, m->x, m->y, (int64_t)n * MD);
}

/* One step as forward.c drives it: through step_begin/step_end when the backend has them. */
static int mini_step(KbBackend *b, Mini *m, const int32_t *ids, const int32_t *pos, const int32_t *seq, int n,
		     int fused)
{
	const KbStep st = { .n_tokens = n, .token = ids, .pos = pos, .seq = seq };
	int r = 0;
	if (b->ops->step_begin && (r = b->ops->step_begin(b, &st)) != 0)
		return r < 0 ? r : 0;
	r = mini_ops(b, m, ids, pos, seq, n, fused);
	if (b->ops->step_begin) {
		int re = b->ops->step_end(b, r);
		r = re == 1 ? mini_ops(b, m, ids, pos, seq, n, fused) : re;
	}
	return r;
}

/* One step of N tokens on BG (graphs and the fused ops) and on BP (op by op): whether the
 * layer's outputs differ in any bit (OG, OP: room for N rows each). */
static int steps_differ(KbBackend *bg, Mini *mg, KbBackend *bp, Mini *mp, const int32_t *ids, const int32_t *pos,
			const int32_t *seq, int n, float *og, float *op)
{
	const size_t bytes = sizeof(float) * (size_t)n * MD;
	CU_ASSERT_EQUAL_FATAL(mini_step(bg, mg, ids, pos, seq, n, 1), 0);
	CU_ASSERT_EQUAL_FATAL(mini_step(bp, mp, ids, pos, seq, n, 0), 0);
	CU_ASSERT_EQUAL_FATAL(buf_out(bg, og, mg->x, bytes), 0);
	CU_ASSERT_EQUAL_FATAL(buf_out(bp, op, mp->x, bytes), 0);
	return memcmp(og, op, bytes) != 0;
}

/* Steps recorded and replayed as CUDA graphs (with shared activation conversions and the
 * fused ops) give the same bits as the plain op calls, step after step, while positions, slots and ids change;
 * the graphs are really used (one capture per batch size, the rest replays). */
static void test_step_graphs(void)
{
	if (!ready())
		return;
	KbBackend *bg = NULL, *bp = NULL;
	CU_ASSERT_EQUAL_FATAL(cuda_new_mode(1, &bg), 0);
	CU_ASSERT_EQUAL_FATAL(cuda_new_mode(0, &bp), 0);
	Mini mg, mp;
	CU_ASSERT_EQUAL_FATAL(mini_new(bg, &mg, 0x5e), 0);
	CU_ASSERT_EQUAL_FATAL(mini_new(bp, &mp, 0x5e), 0);
	float *og = malloc(sizeof(float) * 8 * MD), *op = malloc(sizeof(float) * 8 * MD);
	CU_ASSERT_FATAL(og && op);
	uint64_t s = 0x3c;
	int diffs = 0, steps = 0;
	/* 12 steps of two sequences, then 5 of one, then 3 of two again */
	for (int i = 0; i < 20; i++) {
		const int n = i < 12 || i >= 17 ? 2 : 1;
		int32_t ids[2], pos[2], seq[2] = { 0, 1 };
		for (int t = 0; t < n; t++)
			ids[t] = (int32_t)(tu_rand_u64(&s) % MVOCAB);
		if (n == 2) {
			/* from step 17 both rewrite positions 12.. (slot 1 had reached 16) */
			pos[0] = pos[1] = i < 12 ? i : i - 5;
		} else {
			seq[0] = 1;
			pos[0] = i;
		}
		diffs += steps_differ(bg, &mg, bp, &mp, ids, pos, seq, n, og, op);
		steps++;
	}
	CU_ASSERT_EQUAL(diffs, 0);
#ifdef QD_HAVE_CUDA
	KbCudaStepStats st, sp;
	CU_ASSERT_EQUAL(kb_cuda_backend_step_stats(bg, &st), 0);
	CU_ASSERT_EQUAL(kb_cuda_backend_step_stats(bp, &sp), 0);
	/* per size: a plain warm-up, a capture, then replays (n=2: 15 steps, n=1: 5) */
	CU_ASSERT_EQUAL(st.failed, 0);
	CU_ASSERT_EQUAL(st.captures, 2);
	CU_ASSERT_EQUAL(st.replays, 20 - 4);
	CU_ASSERT_EQUAL(sp.captures + sp.replays, 0);
	printf("\n    %d steps, %d differ; graphs: %llu captured, %llu replays, %llu plain, %llu failed\n", steps,
	       diffs, (unsigned long long)st.captures, (unsigned long long)st.replays, (unsigned long long)st.plain,
	       (unsigned long long)st.failed);
#endif
	free(og);
	free(op);
	mini_free(bg, &mg);
	mini_free(bp, &mp);
	bg->ops->free(bg);
	bp->ops->free(bp);
}

/* Attention is launched with the splits the step's longest context can use, so a step is
 * recorded again each time that count changes.  With 4 keys a split: one sequence's steps
 * at positions 0..23 take six graphs (1..6 splits) and replay them in between; then two
 * sequences at once, one long (positions 24..27: 7 splits) and one short (0..3, whose
 * tokens use 1 of them), warm up, record and replay their own graph; then a rewind to
 * position 2 replays the 1-split graph, recorded before the two-token steps (until session
 * 24 the step index buffer grew there, which dropped every graph: this step recorded
 * again).  Every step gives the plain op calls' bits. */
static void test_step_graph_splits(void)
{
	if (!ready())
		return;
	KbBackend *bg = NULL, *bp = NULL;
	setenv("QD_CUDA_ATT_SPLIT_KEYS", "4", 1);
	int rg = cuda_new_mode(1, &bg), rp = cuda_new_mode(0, &bp);
	unsetenv("QD_CUDA_ATT_SPLIT_KEYS");
	CU_ASSERT_EQUAL_FATAL(rg, 0);
	CU_ASSERT_EQUAL_FATAL(rp, 0);
	Mini mg, mp;
	CU_ASSERT_EQUAL_FATAL(mini_new(bg, &mg, 0x5f), 0);
	CU_ASSERT_EQUAL_FATAL(mini_new(bp, &mp, 0x5f), 0);
	float og[2 * MD], op[2 * MD];
	uint64_t s = 0x3d;
	int diffs = 0, steps = 0;
	enum { STEPS = 24 + 4 + 1 }; /* one token, two, the rewind */
#ifdef QD_HAVE_CUDA
	char kinds[STEPS + 1] = ""; /* each step: P plain, C captured, R replayed */
	KbCudaStepStats was = { 0 };
#endif
	for (int i = 0; i < STEPS; i++) {
		int32_t ids[2], pos[2] = { i, 0 }, seq[2] = { 0, 1 };
		int n = 1;
		if (i >= 24 && i < 28) {
			n = 2;
			pos[1] = i - 24;
		} else if (i == 28) { /* the rewind */
			pos[0] = 2;
			seq[0] = 1;
		}
		for (int t = 0; t < n; t++)
			ids[t] = (int32_t)(tu_rand_u64(&s) % MVOCAB);
		diffs += steps_differ(bg, &mg, bp, &mp, ids, pos, seq, n, og, op);
#ifdef QD_HAVE_CUDA
		KbCudaStepStats now;
		CU_ASSERT_EQUAL(kb_cuda_backend_step_stats(bg, &now), 0);
		kinds[i] = now.captures > was.captures ? 'C' : now.replays > was.replays ? 'R' : 'P';
		was = now;
#endif
		steps++;
	}
	CU_ASSERT_EQUAL(diffs, 0);
#ifdef QD_HAVE_CUDA
	KbCudaStepStats st;
	CU_ASSERT_EQUAL(kb_cuda_backend_step_stats(bg, &st), 0);
	/* the steps' kinds in order: one token (24), two (4), the rewind (7 graphs: fewer
	 * than the STEP_GRAPHS kept, so none is evicted) */
	CU_ASSERT_STRING_EQUAL(kinds, "PCRRCRRRCRRRCRRRCRRRCRRRPCRRR");
	/* one token: a warm-up, 6 captures, 17 replays; two: a warm-up, a capture, 2 replays;
	 * the rewind: a replay */
	CU_ASSERT_EQUAL(st.failed, 0);
	CU_ASSERT_EQUAL(st.plain, 2);
	CU_ASSERT_EQUAL(st.captures, 7);
	CU_ASSERT_EQUAL(st.replays, 17 + 2 + 1);
	printf("\n    %d steps, %d differ; graphs: %llu captured, %llu replays, %llu plain (%s)\n", steps, diffs,
	       (unsigned long long)st.captures, (unsigned long long)st.replays, (unsigned long long)st.plain, kinds);
#endif
	mini_free(bg, &mg);
	mini_free(bp, &mp);
	bg->ops->free(bg);
	bp->ops->free(bp);
}

/* Two layers of q/k/v (one type, so one launch with the RoPE epilogue), attention and o,
 * as forward.c calls them (matmul_rope_kv and attention with layer_id): with attention
 * taking q, k and v by their tags from the q/k/v launch (KbCudaLL, the default) the steps
 * give the same bits as with it waiting for that launch (QD_CUDA_ATT_LL=0), over one-token
 * steps recorded and replayed up to 140 keys (a warp's keys then span two tiles, the own
 * key in the second), then rewound; with int8 activations (QD_CUDA_MMV_I8=1: the walks
 * that write the hand-over words, the 7B models' plane set) at head sizes 128 and 64 (the
 * latter in 3 attention splits), where the hand-over must run, and with f16 ones (this
 * size's default), whose launches write no words, so attention must wait as before. */
enum { HD = 512, HCTX = 160, HL = 2, HVOCAB = 50 };
typedef struct {
	int hd, nh, nkv;
	KbWeight w[5]; /* emb, q, k, v, o */
	uint8_t *raw[5];
	float *norm, *x, *xn, *q, *k, *v, *att;
	uint16_t *kc[HL], *vc[HL];
} Hand;

static int hand_new(KbBackend *b, Hand *h, int hd)
{
	memset(h, 0, sizeof(*h));
	h->hd = hd;
	h->nh = HD / hd;
	h->nkv = h->nh / 2;
	const struct { int type; int64_t rows, cols; } ws[5] = {
		{ QD_TYPE_Q8_0, HVOCAB, HD }, { QD_TYPE_Q4_0, HD, HD }, { QD_TYPE_Q4_0, HD / 2, HD },
		{ QD_TYPE_Q4_0, HD / 2, HD }, { QD_TYPE_Q4_0, HD, HD },
	};
	uint64_t s = 0x71;
	for (int i = 0; i < 5; i++) {
		size_t bytes;
		if (!(h->raw[i] = rand_weight(ws[i].type, ws[i].rows, ws[i].cols, &s, &bytes)))
			return -ENOMEM;
		h->w[i] = (KbWeight){ ws[i].type, ws[i].rows, ws[i].cols, h->raw[i], NULL, 0 };
		if (b->ops->weight_prepare(b, &h->w[i]) < 0)
			return -EIO;
	}
	float *nw = rand_f32(HD, &s, 1.0f);
	h->norm = nw ? buf_in(b, nw, sizeof(float) * HD) : NULL;
	free(nw);
	float **fs[] = { &h->x, &h->xn, &h->q, &h->k, &h->v, &h->att };
	for (size_t i = 0; i < sizeof(fs) / sizeof(fs[0]); i++)
		if (!(*fs[i] = buf_in(b, NULL, sizeof(float) * HD)))
			return -ENOMEM;
	for (int l = 0; l < HL; l++)
		if (!(h->kc[l] = buf_in(b, NULL, sizeof(uint16_t) * HCTX * HD / 2)) ||
		    !(h->vc[l] = buf_in(b, NULL, sizeof(uint16_t) * HCTX * HD / 2)))
			return -ENOMEM;
	return h->norm ? 0 : -ENOMEM;
}

static void hand_free(KbBackend *b, Hand *h)
{
	for (int i = 0; i < 5; i++) {
		if (h->w[i].priv)
			b->ops->weight_release(b, &h->w[i]);
		free(h->raw[i]);
	}
	void *ps[] = { h->norm, h->x, h->xn, h->q, h->k, h->v, h->att, h->kc[0], h->vc[0], h->kc[1], h->vc[1] };
	for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++)
		b->ops->release(b, ps[i]);
}

static int hand_ops(KbBackend *b, Hand *h, const int32_t *id, const int32_t *pos, const int32_t *seq)
{
	const KbOps *o = b->ops;
	int r = o->get_rows(b, &h->w[0], id, 1, h->x);
	for (int l = 0; l < HL && r == 0; l++) {
		KbAttention a = { .n_tokens = 1, .n_head = h->nh, .n_head_kv = h->nkv, .head_dim = h->hd, .pos = pos,
				  .seq = seq, .q = h->q, .k_cache = h->kc[l], .v_cache = h->vc[l],
				  .kv_slot_stride = HCTX * HD / 2, .scale = 1.0f / sqrtf((float)h->hd), .out = h->att,
				  .next = &h->w[4], .layer_id = l + 1 };
		const KbWeight *wqkv[3] = { &h->w[1], &h->w[2], &h->w[3] }, *wo[1] = { &h->w[4] };
		float *const y[3] = { h->q, h->k, h->v }, *const yx[1] = { h->x };
		if ((r = o->rmsnorm(b, h->x, h->norm, 1, HD, 1e-5f, h->xn)) < 0 ||
		    (r = o->matmul_rope_kv(b, wqkv, h->xn, 1, y, &a, h->hd, 1e4f)) < 0 || (r = o->attention(b, &a)) < 0)
			break;
		r = o->matmul_multi(b, 1, wo, h->att, 1, yx, 1);
	}
	return r;
}

static int hand_step(KbBackend *b, Hand *h, const int32_t *id, const int32_t *pos, const int32_t *seq)
{
	const KbStep st = { .n_tokens = 1, .token = id, .pos = pos, .seq = seq };
	int r = b->ops->step_begin(b, &st);
	if (r != 0)
		return r < 0 ? r : 0;
	r = hand_ops(b, h, id, pos, seq);
	int re = b->ops->step_end(b, r);
	return re == 1 ? hand_ops(b, h, id, pos, seq) : re;
}

static void test_step_handover(void)
{
	if (!ready())
		return;
	static const struct { int i8, hd; const char *split_keys; } runs[] = {
		{ 1, 128, NULL }, { 1, 64, "48" }, { 0, 128, NULL },
	};
	for (size_t ri = 0; ri < sizeof(runs) / sizeof(runs[0]); ri++) {
		KbBackend *b[2] = { NULL, NULL };
		if (runs[ri].i8)
			setenv("QD_CUDA_MMV_I8", "1", 1);
		if (runs[ri].split_keys)
			setenv("QD_CUDA_ATT_SPLIT_KEYS", runs[ri].split_keys, 1);
		int r0 = cuda_new(0, &b[0]);
		setenv("QD_CUDA_ATT_LL", "0", 1);
		int r1 = cuda_new(0, &b[1]);
		unsetenv("QD_CUDA_ATT_LL");
		unsetenv("QD_CUDA_MMV_I8");
		unsetenv("QD_CUDA_ATT_SPLIT_KEYS");
		CU_ASSERT_EQUAL_FATAL(r0, 0);
		CU_ASSERT_EQUAL_FATAL(r1, 0);
		Hand h[2];
		CU_ASSERT_EQUAL_FATAL(hand_new(b[0], &h[0], runs[ri].hd), 0);
		CU_ASSERT_EQUAL_FATAL(hand_new(b[1], &h[1], runs[ri].hd), 0);
		float x[2][HD];
		uint64_t s = 0x4d;
		int diffs = 0, steps = 0;
		for (int i = 0; i < 150; i++, steps++) {
			/* positions 0..139 of slot 0, then a rewind to 100 and on */
			const int32_t id = (int32_t)(tu_rand_u64(&s) % HVOCAB), pos = i < 140 ? i : i - 40, seq = 0;
			for (int k = 0; k < 2; k++) {
				CU_ASSERT_EQUAL_FATAL(hand_step(b[k], &h[k], &id, &pos, &seq), 0);
				CU_ASSERT_EQUAL_FATAL(buf_out(b[k], x[k], h[k].x, sizeof(x[k])), 0);
			}
			diffs += memcmp(x[0], x[1], sizeof(x[0])) != 0;
		}
		KbCudaStepStats st[2];
		CU_ASSERT_EQUAL(kb_cuda_backend_step_stats(b[0], &st[0]), 0);
		CU_ASSERT_EQUAL(kb_cuda_backend_step_stats(b[1], &st[1]), 0);
		CU_ASSERT_EQUAL(diffs, 0);
		if (runs[ri].i8) { /* every layer of the steps not replayed but the first (no act yet) */
			CU_ASSERT(st[0].att_ll >= 2 && st[0].att_ll + 1 >= st[0].qkv_rope);
		} else {
			CU_ASSERT_EQUAL(st[0].att_ll, 0);
		}
		CU_ASSERT_EQUAL(st[1].att_ll, 0);
		CU_ASSERT(st[0].replays >= 100);
		printf("\n    %s activations, head size %d%s: %d steps, %d differ; hand-overs %llu of %llu q/k/v "
		       "launches run, %llu replays\n",
		       runs[ri].i8 ? "int8" : "f16", runs[ri].hd, runs[ri].split_keys ? ", splits" : "", steps, diffs,
		       (unsigned long long)st[0].att_ll, (unsigned long long)st[0].qkv_rope,
		       (unsigned long long)st[0].replays);
		for (int k = 0; k < 2; k++) {
			hand_free(b[k], &h[k]);
			b[k]->ops->free(b[k]);
		}
	}
}

/* A whole random-weight model (tiny shape, Q4_K_M mix): logits and greedy ids with graphs
 * and shared conversions equal those without, bit for bit, over a multi-sequence prompt,
 * decode steps of three sequences and of one, some of them greedy-id steps (their output
 * part recorded too), and a greedy-id chunk larger than any recorded step between them. */
static void test_step_model(void)
{
	if (!ready())
		return;
	char path[] = "/tmp/qd-test-backend-XXXXXX", err[256];
	int fd = mkstemp(path);
	CU_ASSERT_FATAL(fd >= 0);
	close(fd);
	Model *m = NULL;
	Context *c[2] = { NULL, NULL };
	int r = synth_write(path, synth_shape("tiny"), QD_TYPE_Q4_K, 1, 7, err, sizeof(err));
	CU_ASSERT_EQUAL_FATAL(r, 0);
	CU_ASSERT_EQUAL_FATAL(model_load(path, &m, err, sizeof(err)), 0);
	ContextParams p = { .n_seq = 3, .n_ctx = 160, .n_batch = 80, .backend = "cuda" };
	CU_ASSERT_EQUAL_FATAL(ctx_new(m, &p, &c[0]), 0);
	setenv("QD_CUDA_GRAPHS", "0", 1);
	setenv("QD_CUDA_FUSE", "0", 1);
	r = ctx_new(m, &p, &c[1]);
	unsetenv("QD_CUDA_GRAPHS");
	unsetenv("QD_CUDA_FUSE");
	CU_ASSERT_EQUAL_FATAL(r, 0);
	const int n_vocab = model_config(m)->n_vocab;
	float *l0 = malloc(sizeof(float) * (size_t)n_vocab * 3);
	CU_ASSERT_PTR_NOT_NULL_FATAL(l0);
	uint64_t s = 0x11;
	int32_t ids[80], pos[80], seq[80], len[3] = { 9, 4, 13 };
	uint8_t want[80];
	int n = 0, diffs = 0, outs = 0, id_outs = 0;
	for (int q = 0; q < 3; q++)
		for (int i = 0; i < len[q]; i++, n++) {
			ids[n] = (int32_t)(tu_rand_u64(&s) % (uint64_t)n_vocab);
			pos[n] = i;
			seq[n] = q;
			want[n] = i == len[q] - 1;
		}
	for (int step = 0; step < 25; step++) {
		/* steps 1-14: all three sequences; 15-24: sequence 2 alone; every third step
		 * greedy-id rows only (the output part recorded in the step: KbStep.variant 1),
		 * and step 12 a 70-token chunk of sequence 0 as greedy-id rows (more rows than a
		 * recorded step: the ids' buffer grows, and the recorded steps writing to the old
		 * one must go) */
		const uint8_t kind = step % 3 == 1 || step == 12 ? WANT_ARGMAX : WANT_LOGITS;
		if (step == 12) {
			for (n = 0; n < 70; n++) {
				ids[n] = (int32_t)(tu_rand_u64(&s) % (uint64_t)n_vocab);
				pos[n] = len[0]++;
				seq[n] = 0;
				want[n] = kind;
			}
		} else if (step > 0) {
			const int first = step < 15 ? 0 : 2;
			n = 0;
			for (int q = first; q < 3; q++, n++) {
				ids[n] = (int32_t)(tu_rand_u64(&s) % (uint64_t)n_vocab);
				pos[n] = len[q]++;
				seq[n] = q;
				want[n] = kind;
			}
		}
		Batch b = { .n_tokens = n, .token = ids, .pos = pos, .seq = seq, .want_logits = want };
		CU_ASSERT_EQUAL_FATAL(ctx_decode(c[0], &b), 0);
		int k = 0, id0[80];
		if (kind == WANT_ARGMAX) {
			for (; k < n; k++) {
				id0[k] = ctx_argmax(c[0], k);
				CU_ASSERT_PTR_NULL(ctx_logits(c[0], k));
			}
		} else {
			for (float *l; (l = ctx_logits(c[0], k)); k++)
				memcpy(l0 + (size_t)k * n_vocab, l, sizeof(float) * (size_t)n_vocab);
		}
		CU_ASSERT_EQUAL_FATAL(ctx_decode(c[1], &b), 0);
		for (int i = 0; i < k; i++)
			if (kind == WANT_ARGMAX) {
				id_outs++;
				diffs += id0[i] != ctx_argmax(c[1], i) || id0[i] < 0 || id0[i] >= n_vocab;
			} else {
				outs++;
				diffs += memcmp(l0 + (size_t)i * n_vocab, ctx_logits(c[1], i), sizeof(float) * (size_t)n_vocab) != 0;
			}
		CU_ASSERT(k >= 1);
	}
	CU_ASSERT_EQUAL(diffs, 0);
	printf("\n    %d logits rows and %d greedy ids compared, %d differ\n", outs, id_outs, diffs);
	free(l0);
	ctx_free(c[0]);
	ctx_free(c[1]);
	model_free(m);
	unlink(path);
}

/* Greedy steps a step ahead on the GPU (ctx_decode_ahead): each step queued behind the
 * last, its tokens that step's ids, which never leave the device, its own ids read a step
 * late: the same ids as the same steps one at a time, for one and three sequences (so
 * through recorded graphs: the first steps of a size run op by op, the next are captured
 * and replayed), and with recording off (QD_CUDA_GRAPHS=0: every step op by op). */
static void test_decode_ahead(void)
{
	if (!ready())
		return;
	char err[256];
	Model *m = NULL;
	CU_ASSERT_EQUAL_FATAL(model_load(tu_model_path(), &m, err, sizeof(err)), 0);
	const int n_vocab = model_config(m)->n_vocab;
	ContextParams p = { .n_seq = 3, .n_ctx = 96, .n_batch = 32, .backend = "cuda" };
	for (int graphs = 1; graphs >= 0; graphs--) {
		if (!graphs)
			setenv("QD_CUDA_GRAPHS", "0", 1);
		Context *cs = NULL, *ca = NULL;
		CU_ASSERT_EQUAL_FATAL(ctx_new(m, &p, &cs), 0);
		CU_ASSERT_EQUAL_FATAL(ctx_new(m, &p, &ca), 0);
		for (int n_seq = 1; n_seq <= 3; n_seq += 2) {
			const int steps = graphs ? 40 : 12;
			const int same = ahead_check(cs, ca, n_seq, steps, n_vocab);
			printf("\n    graphs %s, %d sequence%s: %d/%d ids a step ahead = stepwise", graphs ? "on" : "off",
			       n_seq, n_seq > 1 ? "s" : "", same, steps * n_seq);
		}
		ctx_free(cs);
		ctx_free(ca);
		unsetenv("QD_CUDA_GRAPHS");
	}
	printf("\n");
	model_free(m);
}

int main(void)
{
	static const TuTest tests[] = {
		{ "SmolLM2 greedy tokens cuda = cpu", test_model_greedy, gpu_model_skip },
		{ "WANT_ARGMAX/WANT_TOPK rows: ids and candidates without the logits", test_want_argmax,
		  gpu_model_skip },
		{ "step graphs: replay = op by op, bit for bit", test_step_graphs, gpu_skip },
		{ "step graphs: one per attention split count", test_step_graph_splits, gpu_skip },
		{ "step graphs: tiny synth model, logits bit for bit", test_step_model, gpu_skip },
		{ "q/k/v handed to attention by tags = waiting for them, bit for bit", test_step_handover, gpu_skip },
		{ "greedy steps a step ahead (fed on the device) = stepwise", test_decode_ahead, gpu_model_skip },
		{ "GPU memory: a context that cannot fit is refused up front", test_mem_refusal, gpu_skip },
		{ "cleanup", test_cleanup, NULL },
		{ NULL, NULL, NULL },
	};
	return tu_main("steps", tests);
}
