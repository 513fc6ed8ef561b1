/* tests/test-convert.c: llama2.c checkpoint import.  Tiny random checkpoints (shared and
 * unshared classifier) and a tokenizer.bin are converted to F32 and F16 GGUFs; every
 * tensor is compared with the checkpoint's arrays, the llama.* and tokenizer keys are
 * checked, and malformed inputs are refused without leaving output behind. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/engine/convert.h"
#include "daemon/engine/gguf.h"
#include "kernels/types.h"
#include "testutil.h"

enum { DIM = 64, HIDDEN = 128, LAYERS = 2, HEADS = 4, KV_HEADS = 2, VOCAB = 300, SEQ = 32 };
#define HEAD_SIZE (DIM / HEADS)
#define KV_DIM (HEAD_SIZE * KV_HEADS)

static char tmpdir[64];

static const char *tmp_path(const char *name, char *buf, size_t len)
{
	if (!tmpdir[0]) {
		strcpy(tmpdir, "/tmp/qd-test-convert-XXXXXX");
		CU_ASSERT_FATAL(mkdtemp(tmpdir) != NULL);
	}
	snprintf(buf, len, "%s/%s", tmpdir, name);
	return buf;
}

/* The checkpoint's float arrays, in file order, as the test lays them out. */
typedef struct {
	float *all; /* every float after the header */
	size_t n;
	size_t emb, att_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3, final_norm, cls; /* offsets */
} Ckpt;

static void make_ckpt(Ckpt *c, bool shared, uint64_t seed)
{
	size_t o = 0;
	c->emb = o; o += (size_t)VOCAB * DIM;
	c->att_norm = o; o += (size_t)LAYERS * DIM;
	c->wq = o; o += (size_t)LAYERS * DIM * DIM;
	c->wk = o; o += (size_t)LAYERS * KV_DIM * DIM;
	c->wv = o; o += (size_t)LAYERS * KV_DIM * DIM;
	c->wo = o; o += (size_t)LAYERS * DIM * DIM;
	c->ffn_norm = o; o += (size_t)LAYERS * DIM;
	c->w1 = o; o += (size_t)LAYERS * HIDDEN * DIM;
	c->w2 = o; o += (size_t)LAYERS * DIM * HIDDEN;
	c->w3 = o; o += (size_t)LAYERS * HIDDEN * DIM;
	c->final_norm = o; o += DIM;
	o += (size_t)SEQ * HEAD_SIZE; /* freq_cis real + imag, seq_len * head_size / 2 each */
	c->cls = o;
	if (!shared)
		o += (size_t)VOCAB * DIM;
	c->n = o;
	c->all = malloc(o * sizeof(float));
	CU_ASSERT_FATAL(c->all != NULL);
	for (size_t i = 0; i < o; i++) /* spread over several binades so F16 rounding shows */
		c->all[i] = tu_rand_f32(&seed) * (float)(1 << (i % 7));
}

static void write_ckpt(const char *path, const int32_t *hdr, const float *data, size_t n_floats)
{
	FILE *f = fopen(path, "wb");
	CU_ASSERT_FATAL(f != NULL);
	CU_ASSERT_FATAL(fwrite(hdr, 4, 7, f) == 7);
	CU_ASSERT_FATAL(fwrite(data, 4, n_floats, f) == n_floats);
	CU_ASSERT_FATAL(fclose(f) == 0);
}

static void ckpt_header(int32_t *h, bool shared)
{
	const int32_t v[7] = { DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, shared ? VOCAB : -VOCAB, SEQ };
	memcpy(h, v, sizeof(v));
}

/* Token text as llama2.c stores it (spaces, not U+2581; "\n<s>\n" for BOS). */
static void token_text(int i, char *buf, size_t len)
{
	static const char *const words[] = { " the", "ab c", " ", "x", "  two  ", "\xc3\xa9t\xc3\xa9" };
	if (i == 0)
		snprintf(buf, len, "<unk>");
	else if (i == 1)
		snprintf(buf, len, "\n<s>\n");
	else if (i == 2)
		snprintf(buf, len, "\n</s>\n");
	else if (i < 259)
		snprintf(buf, len, "<0x%02X>", i - 3);
	else
		snprintf(buf, len, "%s%d", words[i % 6], i);
}

static float token_score(int i)
{
	return i < 259 ? 0.0f : -(float)i / 7.0f;
}

static void write_tokenizer(const char *path, int n_tokens, size_t extra)
{
	FILE *f = fopen(path, "wb");
	char t[64];
	int32_t max_len = 0;
	CU_ASSERT_FATAL(f != NULL);
	for (int i = 0; i < VOCAB; i++) {
		token_text(i, t, sizeof(t));
		if ((int32_t)strlen(t) > max_len)
			max_len = (int32_t)strlen(t);
	}
	fwrite(&max_len, 4, 1, f);
	for (int i = 0; i < n_tokens; i++) {
		float s = token_score(i);
		token_text(i, t, sizeof(t));
		int32_t l = (int32_t)strlen(t);
		fwrite(&s, 4, 1, f);
		fwrite(&l, 4, 1, f);
		fwrite(t, 1, (size_t)l, f);
	}
	for (size_t i = 0; i < extra; i++)
		fputc(0, f);
	CU_ASSERT_FATAL(fclose(f) == 0);
}

static size_t n_mismatch;

/* Tensor NAME exists with shape NE and holds the N floats at SRC (F16: within rounding). */
static void check_tensor(const GgufFile *g, const char *name, int type, uint32_t n_dims,
			 int64_t ne0, int64_t ne1, const float *src)
{
	const GgufTensor *t = gguf_find_tensor(g, name);
	if (!t) {
		printf("\n    missing %s", name);
		CU_FAIL("tensor missing");
		return;
	}
	CU_ASSERT(t->type == type && t->n_dims == n_dims && t->ne[0] == ne0 && t->ne[1] == ne1 &&
		  t->ne[2] == 1 && t->ne[3] == 1);
	size_t n = (size_t)(ne0 * ne1);
	CU_ASSERT_FATAL(t->nbytes == n * (type == QD_TYPE_F32 ? 4 : 2));
	for (size_t i = 0; i < n; i++) {
		float got;
		if (type == QD_TYPE_F32) {
			memcpy(&got, (const uint8_t *)t->data + 4 * i, 4);
			if (memcmp(&got, &src[i], 4))
				n_mismatch++;
		} else {
			uint16_t h;
			memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
			got = qd_f16_to_f32(h);
			/* half an f16 ulp (2^-11 relative), plus the subnormal spacing near zero */
			if (fabsf(got - src[i]) > fabsf(src[i]) * 0x1p-11f + 0x1p-25f)
				n_mismatch++;
		}
	}
}

static void check_keys(const GgufFile *g)
{
	const char *s;
	size_t len;
	uint32_t u;
	float f;
	CU_ASSERT(gguf_get_str(g, "general.architecture", &s, &len) == 0 && len == 5 &&
		  memcmp(s, "llama", 5) == 0);
	const struct { const char *key; uint32_t v; } want[] = {
		{ "llama.context_length", SEQ }, { "llama.embedding_length", DIM },
		{ "llama.block_count", LAYERS }, { "llama.feed_forward_length", HIDDEN },
		{ "llama.attention.head_count", HEADS }, { "llama.attention.head_count_kv", KV_HEADS },
		{ "llama.rope.dimension_count", HEAD_SIZE }, { "llama.vocab_size", VOCAB },
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		u = 0;
		CU_ASSERT(gguf_get_u32(g, want[i].key, &u) == 0 && u == want[i].v);
	}
	CU_ASSERT(gguf_get_f32(g, "llama.rope.freq_base", &f) == 0 && f == 10000.0f);
	CU_ASSERT(gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f) == 0 && f == 1e-5f);
}

static void check_tokenizer(const GgufFile *g)
{
	const char *s;
	size_t len;
	uint32_t u;
	bool b;
	int type;
	uint64_t n;
	const void *data;
	CU_ASSERT(gguf_get_str(g, "tokenizer.ggml.model", &s, &len) == 0 && len == 5 &&
		  memcmp(s, "llama", 5) == 0);
	CU_ASSERT(gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u) == 0 && u == 1);
	CU_ASSERT(gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u) == 0 && u == 2);
	CU_ASSERT(gguf_get_u32(g, "tokenizer.ggml.unknown_token_id", &u) == 0 && u == 0);
	CU_ASSERT(gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b) == 0 && b);
	CU_ASSERT_FATAL(gguf_get_arr(g, "tokenizer.ggml.tokens", &type, &n, &data) == 0);
	CU_ASSERT(type == GGUF_STRING && n == VOCAB);
	const void *scores, *types;
	CU_ASSERT_FATAL(gguf_get_arr(g, "tokenizer.ggml.scores", &type, &n, &scores) == 0);
	CU_ASSERT(type == GGUF_F32 && n == VOCAB);
	CU_ASSERT_FATAL(gguf_get_arr(g, "tokenizer.ggml.token_type", &type, &n, &types) == 0);
	CU_ASSERT(type == GGUF_I32 && n == VOCAB);
	size_t bad_text = 0, bad_type = 0, bad_score = 0;
	for (int i = 0; i < VOCAB; i++) {
		char raw[64], want[192];
		size_t o = 0;
		token_text(i, raw, sizeof(raw));
		if (i == 1)
			strcpy(raw, "<s>");
		if (i == 2)
			strcpy(raw, "</s>");
		for (const char *p = raw; *p; p++) {
			if (*p == ' ') {
				memcpy(want + o, "\xe2\x96\x81", 3);
				o += 3;
			} else {
				want[o++] = *p;
			}
		}
		if (gguf_get_arr_str(g, "tokenizer.ggml.tokens", (uint64_t)i, &s, &len) != 0 ||
		    len != o || memcmp(s, want, o))
			bad_text++;
		int32_t tt;
		float sc;
		memcpy(&tt, (const uint8_t *)types + 4 * i, 4);
		memcpy(&sc, (const uint8_t *)scores + 4 * i, 4);
		int32_t want_type = i == 0 ? 2 : i <= 2 ? 3 : i < 259 ? 6 : 1;
		bad_type += tt != want_type;
		bad_score += sc != token_score(i);
	}
	CU_ASSERT(bad_text == 0 && bad_type == 0 && bad_score == 0);
	/* one concrete case, spelled out: llama2.c's " the264" */
	CU_ASSERT(gguf_get_arr_str(g, "tokenizer.ggml.tokens", 264, &s, &len) == 0 && len == 9 &&
		  memcmp(s, "\xe2\x96\x81the264", 9) == 0);
}

static void convert_and_check(bool shared, int type, bool with_tok)
{
	char ck[128], tk[128], out[128], tmp[160], err[512];
	int32_t hdr[7];
	Ckpt c;
	make_ckpt(&c, shared, shared ? 11 : 22);
	ckpt_header(hdr, shared);
	tmp_path("model.bin", ck, sizeof(ck));
	tmp_path("tokenizer.bin", tk, sizeof(tk));
	tmp_path("out.gguf", out, sizeof(out));
	snprintf(tmp, sizeof(tmp), "%s.tmp", out);
	write_ckpt(ck, hdr, c.all, c.n);
	write_tokenizer(tk, VOCAB, 0);
	int r = convert_llama2c(ck, with_tok ? tk : NULL, out, type, err, sizeof(err));
	if (r)
		printf("\n    convert: %s", err);
	CU_ASSERT_FATAL(r == 0);
	CU_ASSERT(access(tmp, F_OK) != 0);
	GgufFile *g;
	r = gguf_open(out, &g, err, sizeof(err));
	if (r)
		printf("\n    open: %s", err);
	CU_ASSERT_FATAL(r == 0);
	CU_ASSERT(gguf_n_tensors(g) == 1 + 9 * LAYERS + 1 + (shared ? 0 : 1));
	check_keys(g);
	if (with_tok) {
		check_tokenizer(g);
	} else {
		CU_ASSERT(gguf_find_kv(g, "tokenizer.ggml.tokens") == -ENOENT);
	}
	uint32_t ft;
	CU_ASSERT(gguf_get_u32(g, "general.file_type", &ft) == 0 && ft == (type == QD_TYPE_F16 ? 1u : 0u));

	n_mismatch = 0;
	check_tensor(g, "token_embd.weight", type, 2, DIM, VOCAB, c.all + c.emb);
	check_tensor(g, "output_norm.weight", QD_TYPE_F32, 1, DIM, 1, c.all + c.final_norm);
	if (shared) {
		CU_ASSERT(gguf_find_tensor(g, "output.weight") == NULL);
	} else {
		check_tensor(g, "output.weight", type, 2, DIM, VOCAB, c.all + c.cls);
	}
	for (int l = 0; l < LAYERS; l++) {
		char name[64];
#define CHECK(suffix, ty, nd, ne0, ne1, base)                                               \
	do {                                                                                \
		snprintf(name, sizeof(name), "blk.%d.%s.weight", l, suffix);                \
		check_tensor(g, name, ty, nd, ne0, ne1, c.all + (base) + (size_t)l * (ne0) * (ne1)); \
	} while (0)
		CHECK("attn_norm", QD_TYPE_F32, 1, DIM, 1, c.att_norm);
		CHECK("attn_q", type, 2, DIM, DIM, c.wq);
		CHECK("attn_k", type, 2, DIM, KV_DIM, c.wk);
		CHECK("attn_v", type, 2, DIM, KV_DIM, c.wv);
		CHECK("attn_output", type, 2, DIM, DIM, c.wo);
		CHECK("ffn_norm", QD_TYPE_F32, 1, DIM, 1, c.ffn_norm);
		CHECK("ffn_gate", type, 2, DIM, HIDDEN, c.w1);
		CHECK("ffn_down", type, 2, HIDDEN, DIM, c.w2);
		CHECK("ffn_up", type, 2, DIM, HIDDEN, c.w3);
#undef CHECK
	}
	CU_ASSERT(n_mismatch == 0);
	if (n_mismatch)
		printf("\n    %zu values differ", n_mismatch);
	gguf_close(g);
	free(c.all);
	unlink(ck);
	unlink(tk);
	unlink(out);
}

static void test_shared_f32(void) { convert_and_check(true, QD_TYPE_F32, true); }
static void test_shared_f16(void) { convert_and_check(true, QD_TYPE_F16, true); }
static void test_unshared_f32(void) { convert_and_check(false, QD_TYPE_F32, true); }
static void test_unshared_f16_no_tokenizer(void) { convert_and_check(false, QD_TYPE_F16, false); }

/* Converting must fail with -EBADMSG (or WANT_R), mention WHAT, and leave no output. */
static void expect_fail_at(const char *ck, const char *tk, int type, int want_r, const char *what,
			   int line)
{
	char out[128], tmp[160], err[512] = "";
	tmp_path("bad.gguf", out, sizeof(out));
	snprintf(tmp, sizeof(tmp), "%s.tmp", out);
	int r = convert_llama2c(ck, tk, out, type, err, sizeof(err));
	if (r != want_r || !strstr(err, what)) {
		printf("\n    line %d: r=%d err='%s', expected '%s'", line, r, err, what);
		CU_FAIL("bad input not refused as expected");
	} else {
		CU_PASS("refused");
	}
	CU_ASSERT(access(out, F_OK) != 0 && access(tmp, F_OK) != 0);
}
#define expect_fail(ck, tk, type, r, what) expect_fail_at(ck, tk, type, r, what, __LINE__)

static void test_refusals(void)
{
	char ck[128], tk[128];
	int32_t hdr[7];
	Ckpt c;
	make_ckpt(&c, false, 33); /* room for the unshared variant, plus spare floats */
	tmp_path("bad.bin", ck, sizeof(ck));
	tmp_path("bad-tok.bin", tk, sizeof(tk));
	size_t n_shared = c.cls;

	ckpt_header(hdr, true);
	write_ckpt(ck, hdr, c.all, n_shared - 1);
	expect_fail(ck, NULL, QD_TYPE_F32, -EBADMSG, "implies");
	write_ckpt(ck, hdr, c.all, n_shared + 1);
	expect_fail(ck, NULL, QD_TYPE_F32, -EBADMSG, "implies");
	write_ckpt(ck, hdr, c.all, c.n); /* unshared data under a shared header */
	expect_fail(ck, NULL, QD_TYPE_F32, -EBADMSG, "fits an unshared classifier");
	ckpt_header(hdr, false);
	write_ckpt(ck, hdr, c.all, n_shared); /* and the reverse */
	expect_fail(ck, NULL, QD_TYPE_F32, -EBADMSG, "fits a shared classifier");
	write_ckpt(ck, hdr, c.all, c.n - 1);
	expect_fail(ck, NULL, QD_TYPE_F32, -EBADMSG, "file is");

	static const struct { int field; int32_t v; const char *what; } bad[] = {
		{ 0, 0, "dim = 0 is not in" },
		{ 1, -5, "hidden_dim = -5" },
		{ 2, 1 << 20, "n_layers = 1048576" },
		{ 3, 5, "is not n_heads 5 times an even head size" },
		{ 3, 64, "even head size" },
		{ 4, 3, "not a multiple of n_kv_heads 3" },
		{ 4, 8, "not a multiple of n_kv_heads 8" },
		{ 5, 0, "vocab_size = 0" },
		{ 5, INT32_MIN, "vocab_size = -2147483648" },
		{ 6, 0, "seq_len = 0" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ckpt_header(hdr, true);
		hdr[bad[i].field] = bad[i].v;
		write_ckpt(ck, hdr, c.all, n_shared);
		expect_fail(ck, NULL, QD_TYPE_F32, -EBADMSG, bad[i].what);
	}
	ckpt_header(hdr, true);
	FILE *f = fopen(ck, "wb");
	fwrite(hdr, 4, 6, f);
	fclose(f);
	expect_fail(ck, NULL, QD_TYPE_F32, -EBADMSG, "too short");
	expect_fail("/nonexistent/model.bin", NULL, QD_TYPE_F32, -ENOENT, "/nonexistent/model.bin: ");

	/* a good checkpoint, bad tokenizers */
	write_ckpt(ck, hdr, c.all, n_shared);
	expect_fail(ck, NULL, QD_TYPE_Q4_0, -EINVAL, "F32 or F16");
	write_tokenizer(tk, VOCAB - 1, 0);
	expect_fail(ck, tk, QD_TYPE_F32, -EBADMSG, "truncated at token 299 of 300");
	write_tokenizer(tk, VOCAB, 3);
	expect_fail(ck, tk, QD_TYPE_F32, -EBADMSG, "3 bytes follow the 300 tokens");
	expect_fail(ck, "/nonexistent/tok.bin", QD_TYPE_F32, -ENOENT, "/nonexistent/tok.bin: ");

	/* a weight too large for F16 is refused there, fine in F32 */
	c.all[c.wq + 5] = 1e6f;
	write_ckpt(ck, hdr, c.all, n_shared);
	expect_fail(ck, NULL, QD_TYPE_F16, -ERANGE, "does not fit in F16");
	char out[128], err[256];
	tmp_path("big.gguf", out, sizeof(out));
	CU_ASSERT(convert_llama2c(ck, NULL, out, QD_TYPE_F32, err, sizeof(err)) == 0);
	unlink(out);
	unlink(ck);
	unlink(tk);
	free(c.all);
}

int main(void)
{
	static const TuTest tests[] = {
		{ "shared classifier, F32, tokenizer", test_shared_f32, NULL },
		{ "shared classifier, F16, tokenizer", test_shared_f16, NULL },
		{ "unshared classifier, F32, tokenizer", test_unshared_f32, NULL },
		{ "unshared classifier, F16, no tokenizer", test_unshared_f16_no_tokenizer, NULL },
		{ "malformed checkpoints and tokenizers refused", test_refusals, NULL },
		{ NULL, NULL, NULL },
	};
	int r = tu_main("convert", tests);
	if (tmpdir[0])
		rmdir(tmpdir);
	return r;
}
