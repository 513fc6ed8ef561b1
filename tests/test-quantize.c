/* tests/test-quantize.c: `quantd quantize` as a library: per-tensor type rules, byte
 * identity with kb_cpu_quantize_row on the dequantized source, key/values kept, the
 * output loads and generates, bad inputs refused; and (when python3 with the gguf package
 * is present) an independent decode by tools/check-quantized.py. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/engine/awq_internal.h"
#include "daemon/engine/gguf.h"
#include "daemon/engine/gptq_internal.h"
#include "daemon/engine/model.h"
#include "daemon/engine/quantize.h"
#include "daemon/engine/synth.h"
#include "kernels/backend.h"
#include "kernels/cpu/quant.h"
#include "kernels/types.h"
#include "testutil.h"


static const char *no_model(void)
{
	return access(tu_model_path(), R_OK) ? "default model missing (make model)" : NULL;
}

static void test_pick_rules(void)
{
	int t, w;
	int64_t ne576[2] = { 576, 192 }, ne1536[2] = { 1536, 576 }, ne4096[2] = { 4096, 4096 }, v[1] = { 4096 };
	/* norms stay F32 whatever the target */
	CU_ASSERT_EQUAL(quant_pick_type(QD_TYPE_Q4_0, "blk.0.attn_norm.weight", 1, v, 32, false, &t, &w), 0);
	CU_ASSERT_EQUAL(t, QD_TYPE_F32);
	/* Q4_K_M: use_more_bits layers (n=32: 0..3, 28..31, and (i-4)%3==2) get Q6_K on attn_v/ffn_down */
	for (int il = 0; il < 32; il++) {
		char name[64];
		bool more = il < 4 || il >= 28 || (il - 4) % 3 == 2;
		snprintf(name, sizeof(name), "blk.%d.attn_v.weight", il);
		CU_ASSERT_EQUAL(quant_pick_type(QUANT_MIX_Q4_K_M, name, 2, ne4096, 32, false, &t, &w), 0);
		CU_ASSERT_EQUAL(t, more ? QD_TYPE_Q6_K : QD_TYPE_Q4_K);
		snprintf(name, sizeof(name), "blk.%d.ffn_down.weight", il);
		CU_ASSERT_EQUAL(quant_pick_type(QUANT_MIX_Q4_K_M, name, 2, ne4096, 32, false, &t, &w), 0);
		CU_ASSERT_EQUAL(t, more ? QD_TYPE_Q6_K : QD_TYPE_Q4_K);
		snprintf(name, sizeof(name), "blk.%d.attn_q.weight", il);
		CU_ASSERT_EQUAL(quant_pick_type(QUANT_MIX_Q4_K_M, name, 2, ne4096, 32, false, &t, &w), 0);
		CU_ASSERT_EQUAL(t, QD_TYPE_Q4_K);
	}
	/* row-length fallbacks */
	CU_ASSERT_EQUAL(quant_pick_type(QD_TYPE_Q4_K, "blk.0.attn_q.weight", 2, ne576, 30, true, &t, &w), 0);
	CU_ASSERT_EQUAL(w, QD_TYPE_Q4_K);
	CU_ASSERT_EQUAL(t, QD_TYPE_Q4_1);
	CU_ASSERT_EQUAL(quant_pick_type(QD_TYPE_Q6_K, "blk.0.attn_q.weight", 2, ne576, 30, true, &t, &w), 0);
	CU_ASSERT_EQUAL(t, QD_TYPE_Q8_0);
	CU_ASSERT_EQUAL(quant_pick_type(QD_TYPE_Q4_K, "blk.0.ffn_down.weight", 2, ne1536, 30, true, &t, &w), 0);
	CU_ASSERT_EQUAL(t, QD_TYPE_Q4_K);
	int64_t odd[2] = { 100, 10 };
	CU_ASSERT_EQUAL(quant_pick_type(QD_TYPE_Q4_0, "blk.0.attn_q.weight", 2, odd, 30, true, &t, &w), 0);
	CU_ASSERT_EQUAL(t, QD_TYPE_F16);
	/* output head (and a tied embedding) below 8 bits: Q6_K; untied embedding: the target */
	CU_ASSERT_EQUAL(quant_pick_type(QD_TYPE_Q4_0, "output.weight", 2, ne4096, 32, false, &t, &w), 0);
	CU_ASSERT_EQUAL(t, QD_TYPE_Q6_K);
	CU_ASSERT_EQUAL(quant_pick_type(QD_TYPE_Q4_0, "token_embd.weight", 2, ne4096, 32, false, &t, &w), 0);
	CU_ASSERT_EQUAL(t, QD_TYPE_Q4_0);
	CU_ASSERT_EQUAL(quant_pick_type(QD_TYPE_Q4_0, "token_embd.weight", 2, ne4096, 32, true, &t, &w), 0);
	CU_ASSERT_EQUAL(t, QD_TYPE_Q6_K);
	CU_ASSERT_EQUAL(quant_pick_type(QD_TYPE_Q8_0, "output.weight", 2, ne4096, 32, false, &t, &w), 0);
	CU_ASSERT_EQUAL(t, QD_TYPE_Q8_0);
	/* names */
	CU_ASSERT_EQUAL(quant_parse_type("q4_k_m", &t), 0);
	CU_ASSERT_EQUAL(t, QUANT_MIX_Q4_K_M);
	CU_ASSERT_EQUAL(quant_parse_type("Q5_0", &t), -EINVAL);
	CU_ASSERT_EQUAL(quant_parse_type("", &t), -EINVAL);
	CU_ASSERT_EQUAL(quant_parse_method("gptq", &t), 0);
	CU_ASSERT_EQUAL(t, QUANT_GPTQ);
	CU_ASSERT_EQUAL(quant_parse_method("gguf", &t), -EINVAL);
}

/* Every key of SRC is in OUT with the same value, except the two quantd sets. */
static void check_kvs(const GgufFile *src, const GgufFile *out, int target)
{
	char a[512], b[512];
	for (size_t i = 0; i < gguf_n_kv(src); i++) {
		const char *k = gguf_kv_key(src, i);
		if (!strcmp(k, "general.file_type"))
			continue;
		int64_t j = gguf_find_kv(out, k);
		CU_ASSERT_FATAL(j >= 0);
		CU_ASSERT_EQUAL(gguf_kv_type(src, i), gguf_kv_type(out, (size_t)j));
		CU_ASSERT_EQUAL(gguf_kv_arr_len(src, i), gguf_kv_arr_len(out, (size_t)j));
		CU_ASSERT_STRING_EQUAL(gguf_kv_format(src, i, a, sizeof(a)), gguf_kv_format(out, (size_t)j, b, sizeof(b)));
	}
	/* the chat template in full, not only its formatted prefix */
	const char *s1, *s2;
	size_t l1, l2;
	if (gguf_get_str(src, "tokenizer.chat_template", &s1, &l1) == 0) {
		CU_ASSERT_EQUAL_FATAL(gguf_get_str(out, "tokenizer.chat_template", &s2, &l2), 0);
		CU_ASSERT(l1 == l2 && !memcmp(s1, s2, l1));
	}
	uint32_t ft = 99, qv = 0;
	CU_ASSERT_EQUAL(gguf_get_u32(out, "general.file_type", &ft), 0);
	CU_ASSERT_EQUAL(ft, quant_file_type(target));
	CU_ASSERT_EQUAL(gguf_get_u32(out, "general.quantization_version", &qv), 0);
	CU_ASSERT_EQUAL(qv, 2);
	const char *m;
	size_t ml;
	CU_ASSERT_EQUAL(gguf_get_str(out, "quantize.method", &m, &ml), 0);
	CU_ASSERT(ml == 3 && !memcmp(m, "rtn", 3));
}

/* Each tensor has the type the rules give and, on every 3rd row, the bytes
 * kb_cpu_quantize_row gives for the dequantized source row (all rows of small tensors). */
static void check_tensors(const GgufFile *src, const GgufFile *out, int target)
{
	CU_ASSERT_EQUAL_FATAL(gguf_n_tensors(src), gguf_n_tensors(out));
	uint32_t n_layer = 0;
	gguf_get_u32(src, "llama.block_count", &n_layer);
	bool tied = !gguf_find_tensor(src, "output.weight");
	float *f = malloc(sizeof(float) * 65536);
	uint8_t *q = malloc(65536 * 4);
	CU_ASSERT_FATAL(f && q);
	int n_checked = 0, n_bad = 0;
	for (size_t i = 0; i < gguf_n_tensors(src); i++) {
		const GgufTensor *s = gguf_tensor(src, i), *o = gguf_find_tensor(out, s->name);
		CU_ASSERT_FATAL(o != NULL);
		CU_ASSERT_EQUAL(o->n_dims, s->n_dims);
		CU_ASSERT(!memcmp(o->ne, s->ne, sizeof(s->ne)));
		int want, wanted;
		CU_ASSERT_EQUAL(quant_pick_type(target, s->name, s->n_dims, s->ne, (int)n_layer, tied, &want, &wanted), 0);
		CU_ASSERT_EQUAL(o->type, want);
		if (o->type != want || s->ne[0] > 65536)
			continue;
		uint64_t srs, ors;
		CU_ASSERT_FATAL(qd_row_size(s->type, (uint64_t)s->ne[0], &srs) == 0 &&
				qd_row_size(o->type, (uint64_t)o->ne[0], &ors) == 0);
		int64_t rows = s->ne[1] * s->ne[2] * s->ne[3], step = rows > 64 ? 3 : 1;
		for (int64_t r = i % 3; r < rows; r += step) {
			CU_ASSERT_EQUAL_FATAL(kb_cpu_dequantize_row(s->type, (const uint8_t *)s->data + r * srs, f, s->ne[0]), 0);
			CU_ASSERT_EQUAL_FATAL(kb_cpu_quantize_row(o->type, f, q, s->ne[0]), 0);
			n_bad += memcmp(q, (const uint8_t *)o->data + r * ors, ors) != 0;
			n_checked++;
		}
	}
	CU_ASSERT_EQUAL(n_bad, 0);
	CU_ASSERT(n_checked > 1000);
	free(f);
	free(q);
}

/* Greedy generation of a few tokens: finite logits, valid ids, and top tokens that mostly
 * agree with the source model's (the quantization error is small at 8 bits). */
static void check_generates(const char *path, const char *prompt)
{
	char err[256] = "";
	Model *m = NULL;
	Context *c = NULL;
	CU_ASSERT_EQUAL_FATAL(model_load(path, &m, err, sizeof(err)), 0);
	ContextParams cp = { .n_seq = 1, .n_ctx = 64, .n_batch = 16, .n_threads = 2 };
	CU_ASSERT_EQUAL_FATAL(ctx_new(m, &cp, &c), 0);
	int32_t ids[32];
	int n = tok_encode(model_tokenizer(m), prompt, strlen(prompt), false, false, ids, 32);
	CU_ASSERT_FATAL(n > 0 && n < 24);
	int32_t pos[32], seq[32] = { 0 };
	for (int i = 0; i < 32; i++)
		pos[i] = i;
	Batch b = { .n_tokens = n, .token = ids, .pos = pos, .seq = seq };
	CU_ASSERT_EQUAL_FATAL(ctx_decode(c, &b), 0);
	const int nv = model_config(m)->n_vocab;
	for (int step = 0; step < 6; step++) {
		const float *l = ctx_logits(c, 0);
		CU_ASSERT_FATAL(l != NULL);
		int best = 0, n_bad = 0;
		for (int v = 0; v < nv; v++) {
			n_bad += !isfinite(l[v]);
			if (l[v] > l[best])
				best = v;
		}
		CU_ASSERT_EQUAL_FATAL(n_bad, 0);
		ids[n] = best;
		Batch nb = { .n_tokens = 1, .token = &ids[n], .pos = &pos[n], .seq = seq };
		n++;
		CU_ASSERT_EQUAL_FATAL(ctx_decode(c, &nb), 0);
	}
	ctx_free(c);
	model_free(m);
}

static void run_one(int target, const char *name)
{
	QuantParams p = quant_default_params();
	p.type = target;
	p.n_threads = 2;
	QuantStats st;
	char err[512] = "";
	const char *out = tu_tmp_path(name);
	int r = quantize_file(tu_model_path(), out, &p, &st, err, sizeof(err));
	if (r < 0)
		printf("\n    quantize_file: %s\n", err);
	CU_ASSERT_EQUAL_FATAL(r, 0);
	CU_ASSERT(st.out_bytes > 0 && st.n_tensors > 0);
	GgufFile *src = NULL, *o = NULL;
	CU_ASSERT_EQUAL_FATAL(gguf_open(tu_model_path(), &src, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(gguf_open(out, &o, err, sizeof(err)), 0);
	check_kvs(src, o, target);
	check_tensors(src, o, target);
	gguf_close(o);
	gguf_close(src);
	check_generates(out, "It is a truth universally acknowledged, that");
}

static void test_q8_0(void) { run_one(QD_TYPE_Q8_0, "q8_0.gguf"); }
static void test_q4_0(void) { run_one(QD_TYPE_Q4_0, "q4_0.gguf"); }
static void test_q4_k(void) { run_one(QD_TYPE_Q4_K, "q4_k.gguf"); }
static void test_q6_k(void) { run_one(QD_TYPE_Q6_K, "q6_k.gguf"); }

typedef struct {
	int n;
	char last[512];
} Notes;

static void on_note(void *arg, const char *msg)
{
	Notes *nt = arg;
	nt->n++;
	snprintf(nt->last, sizeof(nt->last), "%s", msg);
}

/* A quantized source and a row-length fallback are both reported through the note hook. */
static void test_notes(void)
{
	Notes nt = { 0 };
	QuantParams p = quant_default_params();
	p.type = QD_TYPE_Q6_K;
	p.note = on_note;
	p.cb_arg = &nt;
	char err[256];
	CU_ASSERT_EQUAL_FATAL(quantize_file(tu_model_path(), tu_tmp_path("notes.gguf"), &p, NULL, err, sizeof(err)), 0);
	CU_ASSERT(nt.n >= 2);
	CU_ASSERT(strstr(nt.last, "Q8_0") != NULL);
}

static void test_bad_inputs(void)
{
	QuantParams p = quant_default_params();
	char err[256];
	/* same file in and out */
	CU_ASSERT_EQUAL(quantize_file(tu_model_path(), tu_model_path(), &p, NULL, err, sizeof(err)), -EEXIST);
	/* missing input */
	CU_ASSERT_EQUAL(quantize_file(tu_tmp_path("nope.gguf"), tu_tmp_path("x.gguf"), &p, NULL, err, sizeof(err)), -ENOENT);
	CU_ASSERT(strstr(err, "nope.gguf") != NULL);
	/* not a GGUF, and a truncated one */
	const char *junk = tu_tmp_path("junk.gguf");
	FILE *f = fopen(junk, "wb");
	CU_ASSERT_FATAL(f != NULL);
	fputs("this is not a gguf file at all, it is text", f);
	fclose(f);
	CU_ASSERT_EQUAL(quantize_file(junk, tu_tmp_path("x.gguf"), &p, NULL, err, sizeof(err)), -EBADMSG);
	size_t len;
	char *model = tu_read_file(tu_model_path(), &len);
	CU_ASSERT_FATAL(model != NULL);
	f = fopen(junk, "wb");
	fwrite(model, 1, len / 2, f);
	fclose(f);
	free(model);
	CU_ASSERT_EQUAL(quantize_file(junk, tu_tmp_path("x.gguf"), &p, NULL, err, sizeof(err)), -EBADMSG);
	CU_ASSERT(access(tu_tmp_path("x.gguf"), F_OK) != 0); /* nothing left behind */
	/* unknown type, method, and a calibrated method without text or for a K type */
	p.type = 12345;
	CU_ASSERT_EQUAL(quantize_file(tu_model_path(), tu_tmp_path("x.gguf"), &p, NULL, err, sizeof(err)), -EINVAL);
	p = quant_default_params();
	p.method = 7;
	CU_ASSERT_EQUAL(quantize_file(tu_model_path(), tu_tmp_path("x.gguf"), &p, NULL, err, sizeof(err)), -EINVAL);
	p.method = QUANT_GPTQ;
	CU_ASSERT_EQUAL(quantize_file(tu_model_path(), tu_tmp_path("x.gguf"), &p, NULL, err, sizeof(err)), -EINVAL);
	p.type = QD_TYPE_Q6_K;
	p.calib_text = "some text";
	p.calib_len = 9;
	CU_ASSERT_EQUAL(quantize_file(tu_model_path(), tu_tmp_path("x.gguf"), &p, NULL, err, sizeof(err)), -EOPNOTSUPP);
	/* an output directory that does not exist */
	p = quant_default_params();
	CU_ASSERT_EQUAL(quantize_file(tu_model_path(), "/nonexistent-dir/x.gguf", &p, NULL, err, sizeof(err)), -ENOENT);
}

/* Output error tr((W - Q) H (W - Q)^T) of dequantized Q against W. */
static double proxy_loss(int type, const float *W, const void *q, const float *H, int64_t rows, int64_t cols)
{
	uint64_t rs;
	qd_row_size(type, (uint64_t)cols, &rs);
	float *e = malloc(sizeof(float) * (size_t)cols);
	double loss = 0;
	for (int64_t r = 0; r < rows; r++) {
		kb_cpu_dequantize_row(type, (const uint8_t *)q + r * rs, e, cols);
		for (int64_t i = 0; i < cols; i++)
			e[i] -= W[r * cols + i];
		for (int64_t i = 0; i < cols; i++)
			for (int64_t k = 0; k < cols; k++)
				loss += (double)e[i] * H[i * cols + k] * e[k];
	}
	free(e);
	return loss;
}

/* GPTQ on synthetic layers: with correlated inputs it beats round-to-nearest on the
 * output error it minimizes, with and without act-order; with uncorrelated inputs there
 * is nothing to compensate and it matches round-to-nearest's error. */
static void test_gptq_core(void)
{
	const int64_t rows = 24, cols = 128, T = 512;
	uint64_t seed = 42;
	float *W = malloc(sizeof(float) * rows * cols), *Wc = malloc(sizeof(float) * rows * cols);
	float *X = malloc(sizeof(float) * T * cols), *H = calloc(cols * cols, sizeof(float));
	float *Hc = malloc(sizeof(float) * cols * cols);
	uint8_t *qg = malloc(rows * cols * 2), *qr = malloc(rows * cols * 2);
	CU_ASSERT_FATAL(W && Wc && X && H && Hc && qg && qr);
	for (int64_t i = 0; i < rows * cols; i++)
		W[i] = tu_rand_f32(&seed);
	/* inputs with a shared component (correlated channels) and uneven scales */
	for (int64_t t = 0; t < T; t++) {
		float common = tu_rand_f32(&seed);
		for (int64_t i = 0; i < cols; i++)
			X[t * cols + i] = (0.8f * common + 0.4f * tu_rand_f32(&seed)) * (1.0f + (float)(i % 7));
	}
	gptq_hessian_add(NULL, H, cols, X, T);
	gptq_hessian_finish(H, cols);
	/* the Hessian kernel against a plain sum */
	double h01 = 0;
	for (int64_t t = 0; t < T; t++)
		h01 += (double)X[t * cols + 3] * X[t * cols + 100];
	CU_ASSERT_DOUBLE_EQUAL(H[3 * cols + 100], h01, fabs(h01) * 1e-4);
	CU_ASSERT_DOUBLE_EQUAL(H[100 * cols + 3], h01, fabs(h01) * 1e-4);
	const int types[3] = { QD_TYPE_Q4_0, QD_TYPE_Q4_1, QD_TYPE_Q8_0 };
	for (int k = 0; k < 3; k++) {
		for (int ao = 0; ao < 2; ao++) {
			memcpy(Wc, W, sizeof(float) * rows * cols);
			memcpy(Hc, H, sizeof(float) * cols * cols);
			CU_ASSERT_EQUAL_FATAL(gptq_quantize(NULL, types[k], Wc, rows, cols, Hc, 0.01f, ao, qg), 0);
			for (int64_t r = 0; r < rows; r++)
				kb_cpu_quantize_row(types[k], W + r * cols,
						    qr + r * (int64_t)(qd_type_traits(types[k])->size * cols / 32), cols);
			double lg = proxy_loss(types[k], W, qg, H, rows, cols), lr = proxy_loss(types[k], W, qr, H, rows, cols);
			CU_ASSERT(lg < 0.8 * lr);
		}
	}
	/* identity Hessian: no compensation possible, same error as round-to-nearest */
	memset(H, 0, sizeof(float) * cols * cols);
	for (int64_t i = 0; i < cols; i++)
		H[i * cols + i] = 1;
	memcpy(Wc, W, sizeof(float) * rows * cols);
	memcpy(Hc, H, sizeof(float) * cols * cols);
	CU_ASSERT_EQUAL_FATAL(gptq_quantize(NULL, QD_TYPE_Q8_0, Wc, rows, cols, Hc, 0.01f, false, qg), 0);
	for (int64_t r = 0; r < rows; r++)
		kb_cpu_quantize_row(QD_TYPE_Q8_0, W + r * cols, qr + r * 34 * (cols / 32), cols);
	double lg = proxy_loss(QD_TYPE_Q8_0, W, qg, H, rows, cols), lr = proxy_loss(QD_TYPE_Q8_0, W, qr, H, rows, cols);
	CU_ASSERT_DOUBLE_EQUAL(lg, lr, lr * 0.02);
	/* refused: a K type, a row length that is not a block multiple */
	CU_ASSERT_EQUAL(gptq_quantize(NULL, QD_TYPE_Q4_K, Wc, rows, cols, Hc, 0.01f, false, qg), -EINVAL);
	CU_ASSERT_EQUAL(gptq_quantize(NULL, QD_TYPE_Q4_0, Wc, rows, 100, Hc, 0.01f, false, qg), -EINVAL);
	free(W);
	free(Wc);
	free(X);
	free(H);
	free(Hc);
	free(qg);
	free(qr);
}

/* AWQ on a synthetic layer whose inputs have a few outlier channels (as LLM activations do):
 * the scale search and clipping give a smaller output error tr(E H E^T) than
 * round-to-nearest, for every 4- and 8-bit type; the search's own error for alpha = 0 is
 * round-to-nearest's, computed independently here. */
static void test_awq_core(void)
{
	const int64_t rows = 32, cols = 256, T = 512;
	uint64_t seed = 7;
	float *W = malloc(sizeof(float) * rows * cols), *Ws = malloc(sizeof(float) * rows * cols);
	float *X = malloc(sizeof(float) * T * cols), *H = calloc(cols * cols, sizeof(float));
	float *xm = malloc(sizeof(float) * cols), *s = malloc(sizeof(float) * cols);
	float *Hb = malloc(sizeof(float) * cols * 32), *row = malloc(sizeof(float) * cols);
	uint8_t *qa = malloc(rows * cols * 2), *qr = malloc(rows * cols * 2);
	CU_ASSERT_FATAL(W && Ws && X && H && xm && s && Hb && row && qa && qr);
	for (int64_t i = 0; i < rows * cols; i++)
		W[i] = tu_rand_f32(&seed);
	for (int64_t t = 0; t < T; t++)
		for (int64_t i = 0; i < cols; i++)
			X[t * cols + i] = tu_rand_f32(&seed) * (i % 37 == 5 ? 40.0f : 1.0f);
	gptq_hessian_add(NULL, H, cols, X, T);
	gptq_hessian_finish(H, cols);
	awq_absmean(X, T, cols, xm);
	CU_ASSERT(xm[5] > 10 * xm[6]);
	const int types[5] = { QD_TYPE_Q4_0, QD_TYPE_Q4_1, QD_TYPE_Q8_0, QD_TYPE_Q4_K, QD_TYPE_Q6_K };
	for (int k = 0; k < 5; k++) {
		const int type = types[k];
		uint64_t rs;
		CU_ASSERT_FATAL(qd_row_size(type, cols, &rs) == 0);
		AwqWeight aw = { .W = W, .rows = rows, .type = type };
		float alpha = -1;
		double loss[AWQ_GRID];
		CU_ASSERT_EQUAL_FATAL(awq_search_scale(NULL, &aw, 1, cols, H, xm, s, &alpha, loss), 0);
		CU_ASSERT(alpha > 0 && alpha < 1);
		for (int64_t r = 0; r < rows; r++)
			CU_ASSERT_EQUAL_FATAL(kb_cpu_quantize_row(type, W + r * cols, qr + r * rs, cols), 0);
		double lr = proxy_loss(type, W, qr, H, rows, cols);
		CU_ASSERT_DOUBLE_EQUAL(loss[0], lr, lr * 1e-3);
		/* scaled weights, clipped and quantized; the error is measured in the unscaled space */
		memcpy(Ws, W, sizeof(float) * rows * cols);
		awq_scale_cols(Ws, rows, cols, s);
		awq_block_diag(H, s, cols, Hb);
		double shrink = -1;
		CU_ASSERT_EQUAL_FATAL(awq_clip_quantize(NULL, type, Ws, rows, cols, Hb, true, qa, &shrink), 0);
		CU_ASSERT(shrink >= 0 && shrink <= 0.5);
		double la = 0;
		for (int64_t r = 0; r < rows; r++) {
			kb_cpu_dequantize_row(type, qa + r * rs, row, cols);
			for (int64_t i = 0; i < cols; i++)
				row[i] = W[r * cols + i] - row[i] / s[i];
			for (int64_t i = 0; i < cols; i++)
				for (int64_t j = 0; j < cols; j++)
					la += (double)row[i] * H[i * cols + j] * row[j];
		}
		CU_ASSERT(la < 0.8 * lr);
		/* without clipping the bytes are round-to-nearest's of the scaled weights */
		awq_clip_quantize(NULL, type, Ws, rows, cols, Hb, false, qa, NULL);
		kb_cpu_quantize_row(type, Ws + 3 * cols, qr, cols);
		CU_ASSERT(!memcmp(qa + 3 * rs, qr, rs));
	}
	/* bad arguments */
	AwqWeight bad = { .W = W, .rows = rows, .type = QD_TYPE_Q4_0 };
	float alpha;
	CU_ASSERT_EQUAL(awq_search_scale(NULL, &bad, 1, 100, H, xm, s, &alpha, NULL), -EINVAL);
	CU_ASSERT_EQUAL(awq_search_scale(NULL, &bad, 0, cols, H, xm, s, &alpha, NULL), -EINVAL);
	CU_ASSERT_EQUAL(awq_clip_quantize(NULL, QD_TYPE_Q4_K, Ws, rows, 100, Hb, true, qa, NULL), -EINVAL);
	free(W);
	free(Ws);
	free(X);
	free(H);
	free(xm);
	free(s);
	free(Hb);
	free(row);
	free(qa);
	free(qr);
}

/* One transformer block through the CPU backend's ops (what calib.c and forward.c do):
 * X [n][d] is advanced in place. */
static void block_forward(KbBackend *be, const AwqBlock *b, float *X, int n)
{
	const KbOps *o = be->ops;
	const int d = (int)b->n_embd, hd = b->head_dim, qd = b->n_head * hd, kvd = b->n_head_kv * hd;
	const int ff = (int)b->n_ff;
	float *xn = malloc(sizeof(float) * n * d), *q = malloc(sizeof(float) * n * qd), *k = malloc(sizeof(float) * n * kvd);
	float *v = malloc(sizeof(float) * n * kvd), *att = malloc(sizeof(float) * n * qd), *t = malloc(sizeof(float) * n * d);
	float *g = malloc(sizeof(float) * n * ff), *u = malloc(sizeof(float) * n * ff), *h = malloc(sizeof(float) * n * ff);
	uint16_t *kc = malloc(2 * n * kvd), *vc = malloc(2 * n * kvd);
	int32_t pos[64], seq[64] = { 0 };
	CU_ASSERT_FATAL(n <= 64 && xn && q && k && v && att && t && g && u && h && kc && vc);
	for (int i = 0; i < n; i++)
		pos[i] = i;
	KbWeight w[7];
	const int64_t wr[7] = { qd, kvd, kvd, d, ff, ff, d }, wc[7] = { d, d, d, qd, d, d, ff };
	for (int i = 0; i < 7; i++)
		w[i] = (KbWeight){ .type = QD_TYPE_F32, .rows = wr[i], .cols = wc[i], .data = b->w[i] };
	KbAttention a = { .n_tokens = n, .n_head = b->n_head, .n_head_kv = b->n_head_kv, .head_dim = hd, .pos = pos,
			  .seq = seq, .q = q, .k_cache = kc, .v_cache = vc, .kv_slot_stride = (int64_t)n * kvd,
			  .scale = 1.0f / sqrtf((float)hd), .out = att };
	CU_ASSERT_EQUAL_FATAL(o->rmsnorm(be, X, b->attn_norm, n, d, 1e-5f, xn), 0);
	CU_ASSERT_EQUAL_FATAL(o->matmul(be, &w[0], xn, n, q), 0);
	CU_ASSERT_EQUAL_FATAL(o->matmul(be, &w[1], xn, n, k), 0);
	CU_ASSERT_EQUAL_FATAL(o->matmul(be, &w[2], xn, n, v), 0);
	CU_ASSERT_EQUAL_FATAL(o->rope(be, q, pos, n, b->n_head, hd, hd, 10000.0f), 0);
	CU_ASSERT_EQUAL_FATAL(o->rope(be, k, pos, n, b->n_head_kv, hd, hd, 10000.0f), 0);
	CU_ASSERT_EQUAL_FATAL(o->kv_store(be, &a, k, v), 0);
	CU_ASSERT_EQUAL_FATAL(o->attention(be, &a), 0);
	CU_ASSERT_EQUAL_FATAL(o->matmul(be, &w[3], att, n, t), 0);
	CU_ASSERT_EQUAL_FATAL(o->add(be, X, t, (int64_t)n * d), 0);
	CU_ASSERT_EQUAL_FATAL(o->rmsnorm(be, X, b->ffn_norm, n, d, 1e-5f, xn), 0);
	CU_ASSERT_EQUAL_FATAL(o->matmul(be, &w[4], xn, n, g), 0);
	CU_ASSERT_EQUAL_FATAL(o->matmul(be, &w[5], xn, n, u), 0);
	CU_ASSERT_EQUAL_FATAL(o->swiglu(be, g, u, n, ff, h), 0);
	CU_ASSERT_EQUAL_FATAL(o->matmul(be, &w[6], h, n, t), 0);
	CU_ASSERT_EQUAL_FATAL(o->add(be, X, t, (int64_t)n * d), 0);
	free(xn);
	free(q);
	free(k);
	free(v);
	free(att);
	free(t);
	free(g);
	free(u);
	free(h);
	free(kc);
	free(vc);
}

/* Folding AWQ scales (spread over two decades, tied across the query heads of each key/value
 * group for o) into a block with grouped-query attention leaves its function unchanged up to
 * float rounding (and the f16 KV cache). */
static void test_awq_fold(void)
{
	const int64_t d = 64, ff = 96;
	const int nh = 4, nkv = 2, hd = 16, n = 12, qd = nh * hd, kvd = nkv * hd;
	uint64_t seed = 11;
	AwqBlock b = { .n_embd = d, .n_ff = ff, .n_head = nh, .n_head_kv = nkv, .head_dim = hd };
	const int64_t sz[7] = { qd * d, kvd * d, kvd * d, d * qd, ff * d, ff * d, d * ff };
	for (int i = 0; i < 7; i++) {
		b.w[i] = malloc(sizeof(float) * sz[i]);
		CU_ASSERT_FATAL(b.w[i] != NULL);
		for (int64_t j = 0; j < sz[i]; j++)
			b.w[i][j] = 0.3f * tu_rand_f32(&seed);
	}
	b.attn_norm = malloc(sizeof(float) * d);
	b.ffn_norm = malloc(sizeof(float) * d);
	float *s[4], *X0 = malloc(sizeof(float) * n * d), *X1 = malloc(sizeof(float) * n * d);
	const int64_t sl[4] = { d, qd, d, ff };
	for (int i = 0; i < 4; i++) {
		s[i] = malloc(sizeof(float) * sl[i]);
		CU_ASSERT_FATAL(s[i] != NULL);
		for (int64_t j = 0; j < sl[i]; j++)
			s[i][j] = powf(10.0f, tu_rand_f32(&seed)); /* 0.1 .. 10 */
	}
	CU_ASSERT_FATAL(b.attn_norm && b.ffn_norm && X0 && X1);
	awq_tie_heads(s[1], nh, nkv, hd);
	CU_ASSERT_EQUAL(s[1][0 * hd + 3], s[1][1 * hd + 3]); /* heads 0 and 1 share kv head 0 */
	CU_ASSERT_EQUAL(s[1][2 * hd + 5], s[1][3 * hd + 5]);
	for (int64_t i = 0; i < d; i++) {
		b.attn_norm[i] = 1 + 0.5f * tu_rand_f32(&seed);
		b.ffn_norm[i] = 1 + 0.5f * tu_rand_f32(&seed);
	}
	for (int64_t i = 0; i < n * d; i++)
		X0[i] = X1[i] = tu_rand_f32(&seed);
	KbBackend *be = NULL;
	CU_ASSERT_EQUAL_FATAL(kb_cpu_backend_new(1, &be), 0);
	block_forward(be, &b, X0, n);
	const float *const sc[4] = { s[0], s[1], s[2], s[3] };
	CU_ASSERT_EQUAL_FATAL(awq_fold_block(&b, sc), 0);
	block_forward(be, &b, X1, n);
	double maxd = 0, maxv = 0, maxdelta = 0;
	for (int64_t i = 0; i < n * d; i++) {
		maxd = fmax(maxd, fabs((double)X0[i] - X1[i]));
		maxv = fmax(maxv, fabs((double)X0[i]));
	}
	/* the fold changed the weights a lot, and the outputs by float rounding only */
	for (int64_t j = 0; j < kvd * d; j++)
		maxdelta = fmax(maxdelta, fabs((double)b.w[2][j]));
	CU_ASSERT(maxdelta > 0.5);
	CU_ASSERT(maxd < 2e-3 * maxv);
	if (maxd >= 2e-3 * maxv)
		printf("\n    fold: max |diff| %g of max |x| %g\n", maxd, maxv);
	be->ops->free(be);
	for (int i = 0; i < 7; i++)
		free(b.w[i]);
	for (int i = 0; i < 4; i++)
		free(s[i]);
	free(b.attn_norm);
	free(b.ffn_norm);
	free(X0);
	free(X1);
}

/* AWQ end to end on a small random model with grouped-query attention (synth "tiny", F32):
 * the file is written, records the method and its settings, carries norms with the scales
 * folded in (different from the source's, finite), and loads and generates. */
static void test_awq_file(void)
{
	char err[512] = "";
	const char *src = tu_tmp_path("tiny-f32.gguf"), *out = tu_tmp_path("tiny-awq.gguf");
	CU_ASSERT_EQUAL_FATAL(synth_write(src, synth_shape("tiny"), QD_TYPE_F32, 0, 5, err, sizeof(err)), 0);
	static char text[16384];
	size_t len = 0;
	static const char *const words[] = { "the ", "quantized ", "model ", "reads ", "a ", "book; ", "Emma ",
					      "was ", "handsome, ", "clever, ", "and ", "rich. " };
	for (uint64_t seed = 3; len + 16 < sizeof(text);) {
		const char *w = words[tu_rand_u64(&seed) % 12];
		memcpy(text + len, w, strlen(w));
		len += strlen(w);
	}
	QuantParams p = quant_default_params();
	p.type = QD_TYPE_Q4_0;
	p.method = QUANT_AWQ;
	p.n_threads = 2;
	p.calib_text = text;
	p.calib_len = len;
	p.calib_name = "words";
	p.calib_seqs = 4;
	p.calib_ctx = 128;
	Notes nt = { 0 };
	p.note = on_note;
	p.cb_arg = &nt;
	int r = quantize_file(src, out, &p, NULL, err, sizeof(err));
	if (r < 0)
		printf("\n    quantize_file: %s\n", err);
	CU_ASSERT_EQUAL_FATAL(r, 0);
	CU_ASSERT(strstr(nt.last, "awq: mean alpha") != NULL);
	GgufFile *gs = NULL, *go = NULL;
	CU_ASSERT_EQUAL_FATAL(gguf_open(src, &gs, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(gguf_open(out, &go, err, sizeof(err)), 0);
	const char *m;
	size_t ml;
	uint32_t grid = 0;
	CU_ASSERT(gguf_get_str(go, "quantize.method", &m, &ml) == 0 && ml == 3 && !memcmp(m, "awq", 3));
	CU_ASSERT(gguf_get_u32(go, "quantize.awq.scale_grid", &grid) == 0 && grid == AWQ_GRID);
	int n_changed = 0, n_bad = 0;
	for (int il = 0; il < 2; il++)
		for (int k = 0; k < 2; k++) {
			char name[64];
			snprintf(name, sizeof(name), "blk.%d.%s.weight", il, k ? "ffn_norm" : "attn_norm");
			const GgufTensor *a = gguf_find_tensor(gs, name), *b = gguf_find_tensor(go, name);
			CU_ASSERT_FATAL(a && b && b->type == QD_TYPE_F32 && a->ne[0] == b->ne[0]);
			const float *fa = a->data, *fb = b->data;
			for (int64_t i = 0; i < a->ne[0]; i++) {
				n_changed += fa[i] != fb[i];
				n_bad += !isfinite(fb[i]);
			}
		}
	CU_ASSERT(n_changed > 100);
	CU_ASSERT_EQUAL(n_bad, 0);
	const GgufTensor *q = gguf_find_tensor(go, "blk.1.attn_v.weight");
	CU_ASSERT(q && q->type == QD_TYPE_Q4_0);
	gguf_close(gs);
	gguf_close(go);
	check_generates(out, "Emma was"); /* byte-level vocabulary: one token a byte */
	/* and refused where it means nothing */
	p.type = QD_TYPE_F16;
	CU_ASSERT_EQUAL(quantize_file(src, tu_tmp_path("x.gguf"), &p, NULL, err, sizeof(err)), -EOPNOTSUPP);
}

static const char *no_python(void)
{
	if (no_model())
		return no_model();
	if (system("python3 -c 'import gguf, numpy' >/dev/null 2>&1") != 0)
		return "python3 with the gguf package not found (pip install gguf)";
	return NULL;
}

/* An independent decoder: gguf-py's dequantizers (and, for Q8_0/Q4_0/Q4_1, its own
 * quantizer, byte for byte). */
static void test_gguf_py(void)
{
	QuantParams p = quant_default_params();
	p.type = QD_TYPE_Q4_0;
	char err[256], cmd[1024];
	const char *out = tu_tmp_path("py.gguf");
	CU_ASSERT_EQUAL_FATAL(quantize_file(tu_model_path(), out, &p, NULL, err, sizeof(err)), 0);
	snprintf(cmd, sizeof(cmd), "python3 tools/check-quantized.py --max-rows 64 '%s' '%s'", tu_model_path(), out);
	int r = system(cmd);
	CU_ASSERT(WIFEXITED(r) && WEXITSTATUS(r) == 0);
}

int main(void)
{
	if (!tu_tmp_path(""))
		return 2;
	static const TuTest tests[] = {
		{ "pick_rules", test_pick_rules, NULL },
		{ "q8_0", test_q8_0, no_model },
		{ "q4_0", test_q4_0, no_model },
		{ "q4_k", test_q4_k, no_model },
		{ "q6_k", test_q6_k, no_model },
		{ "notes", test_notes, no_model },
		{ "bad_inputs", test_bad_inputs, no_model },
		{ "gptq_core", test_gptq_core, NULL },
		{ "awq_core", test_awq_core, NULL },
		{ "awq_fold", test_awq_fold, NULL },
		{ "awq_file", test_awq_file, NULL },
		{ "gguf_py", test_gguf_py, no_python },
		{ NULL, NULL, NULL },
	};
	int r = tu_main("quantize", tests);
	tu_tmp_cleanup();
	return r;
}
