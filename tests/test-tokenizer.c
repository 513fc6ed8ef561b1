/* tests/test-tokenizer.c: both encoders against ids from independent implementations
 * (tests/data/tokenizer-*.ids, written by tools/tokenizer-ref.py and tools/spm-ref.py),
 * round trips, special tokens, pieces and edge cases. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/engine/gguf.h"
#include "daemon/engine/tokenizer.h"
#include "testutil.h"

#define TEXT_PATH "tests/data/multilingual.txt"
#define SPM_PATH tu_build_path("tests/data/spm-tiny.gguf") /* made from its .gguf.txt */
#define SMOL_IDS "tests/data/tokenizer-smollm2.ids"
#define SPM_IDS "tests/data/tokenizer-spm.ids"
#define BPE_TINY tu_build_path("tests/data/bpe-tiny.gguf")

/* The GGUF is closed right after tok_new: the tokenizer must not point into it. */
static Tokenizer *load(const char *path)
{
	GgufFile *g = NULL;
	Tokenizer *t = NULL;
	char err[256] = "";
	int r = gguf_open(path, &g, err, sizeof(err));
	if (r == 0) {
		r = tok_new(g, &t, err, sizeof(err));
		gguf_close(g);
	}
	if (r)
		printf("\n    %s: %s (%d)\n", path, err, r);
	return t;
}

/* skip_if for the tests that need the SmolLM2 model */
static const char *no_model(void)
{
	return access(tu_model_path(), R_OK) == 0 ? NULL : "SmolLM2 model missing (make model)";
}

static Tokenizer *smol(void)
{
	Tokenizer *t = load(tu_model_path());
	CU_ASSERT_PTR_NOT_NULL(t);
	return t;
}

static Tokenizer *spm(void)
{
	Tokenizer *t = load(SPM_PATH);
	CU_ASSERT_PTR_NOT_NULL(t);
	return t;
}

/* Encodes into a malloc'd array; count in *n.  NULL on error. */
static int32_t *encode(const Tokenizer *t, const char *s, size_t len, bool bos, bool special,
		       int *n)
{
	*n = tok_encode(t, s, len, bos, special, NULL, 0);
	if (*n < 0)
		return NULL;
	int32_t *ids = malloc(((size_t)*n + 1) * sizeof(*ids));
	int m = tok_encode(t, s, len, bos, special, ids, (size_t)*n);
	CU_ASSERT_EQUAL(m, *n);
	return ids;
}

static char *decode(const Tokenizer *t, const int32_t *ids, int n, bool special, int *len)
{
	*len = tok_decode(t, ids, (size_t)n, special, NULL, 0);
	if (*len < 0)
		return NULL;
	char *s = malloc((size_t)*len + 1);
	int m = tok_decode(t, ids, (size_t)n, special, s, (size_t)*len);
	CU_ASSERT_EQUAL(m, *len);
	s[*len] = 0;
	return s;
}

/* ---- reference ids ---- */

typedef struct {
	const char *s;
	size_t len;
} Span;

/* Lines of the text, split on '\n' only (a "\r" stays); the last line ends the file. */
static size_t split_lines(const char *text, size_t len, Span **ret)
{
	size_t n = 0, cap = 64;
	Span *v = malloc(cap * sizeof(*v));
	const char *p = text, *end = text + len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *e = nl ? nl : end;
		if (n == cap)
			v = realloc(v, (cap *= 2) * sizeof(*v));
		v[n++] = (Span){p, (size_t)(e - p)};
		p = nl ? nl + 1 : end;
	}
	*ret = v;
	return n;
}

/* Checks every record of the ids file against our encoding; returns records checked. */
static int check_reference(const Tokenizer *t, const char *ids_path)
{
	size_t tlen, ilen;
	char *text = tu_read_file(TEXT_PATH, &tlen);
	char *ids = tu_read_file(ids_path, &ilen);
	CU_ASSERT_PTR_NOT_NULL_FATAL(text);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ids);
	Span *lines;
	size_t nlines = split_lines(text, tlen, &lines);
	int checked = 0;
	for (char *line = strtok(ids, "\n"); line; line = strtok(NULL, "\n")) {
		if (line[0] == '#')
			continue;
		char *p = line;
		bool special = false;
		Span in;
		if (*p == 'F') {
			in = (Span){text, tlen};
			p++;
			special = *p == 'P';
			p += special;
		} else if (*p == 'L' || *p == 'P') {
			special = *p == 'P';
			long k = strtol(p + 1, &p, 10);
			CU_ASSERT_FATAL(k >= 1 && (size_t)k <= nlines);
			in = lines[k - 1];
		} else {
			CU_FAIL("bad record in ids file");
			continue;
		}
		int32_t want[8192];
		int nwant = 0;
		for (;;) {
			char *q;
			long v = strtol(p, &q, 10);
			if (q == p)
				break;
			CU_ASSERT_FATAL(nwant < 8192);
			want[nwant++] = (int32_t)v;
			p = q;
		}
		int n;
		int32_t *got = encode(t, in.s, in.len, false, special, &n);
		CU_ASSERT_PTR_NOT_NULL_FATAL(got);
		bool same = n == nwant && memcmp(got, want, (size_t)n * sizeof(*got)) == 0;
		if (!same) {
			printf("\n    mismatch for record '%.12s' (%d ids, want %d):", line, n, nwant);
			for (int i = 0; i < n && i < nwant; i++)
				if (got[i] != want[i]) {
					printf(" first at %d: %d vs %d", i, got[i], want[i]);
					break;
				}
		}
		CU_ASSERT(same);
		free(got);
		checked++;
	}
	free(lines);
	free(text);
	free(ids);
	return checked;
}

static void test_smollm2_reference(void)
{
	Tokenizer *t = smol();
	if (!t)
		return;
	CU_ASSERT_EQUAL(tok_kind(t), TOK_BPE);
	CU_ASSERT_EQUAL(tok_n_vocab(t), 49152);
	/* 40 lines twice (plain, special) and the whole file twice */
	CU_ASSERT_EQUAL(check_reference(t, SMOL_IDS), 82);
	tok_free(t);
}

static void test_spm_reference(void)
{
	Tokenizer *t = spm();
	if (!t)
		return;
	CU_ASSERT_EQUAL(tok_kind(t), TOK_SPM);
	CU_ASSERT_EQUAL(tok_bos(t), 1);
	CU_ASSERT_EQUAL(tok_eos(t), 2);
	CU_ASSERT(tok_add_bos(t));
	CU_ASSERT_EQUAL(check_reference(t, SPM_IDS), 41);
	tok_free(t);
}

/* Writes BPE_TINY relabelled with another tokenizer.ggml.pre to PATH.  Its merges were
 * trained across every kind of boundary, so each pre-tokenizer gives different ids (see
 * tools/tokenizer-ref.py --make-vocab). */
static void relabel_tiny(const char *pre, char *path, size_t pathlen)
{
	GgufFile *src;
	char err[128];
	CU_ASSERT_FATAL(gguf_open(BPE_TINY, &src, err, sizeof(err)) == 0);
	GgufWriter *w;
	CU_ASSERT_FATAL(gguf_writer_new(&w) == 0);
	for (size_t i = 0; i < gguf_n_kv(src); i++)
		if (strcmp(gguf_kv_key(src, i), "tokenizer.ggml.pre") != 0)
			CU_ASSERT(gguf_writer_copy_kv(w, src, i) == 0);
	CU_ASSERT(gguf_writer_set_str(w, "tokenizer.ggml.pre", pre, strlen(pre)) == 0);
	snprintf(path, pathlen, "/tmp/qd-test-tokenizer-%d-%s.gguf", (int)getpid(), pre);
	CU_ASSERT_FATAL(gguf_writer_begin(w, path) == 0);
	CU_ASSERT_FATAL(gguf_writer_finish(w) == 0);
	gguf_writer_free(w);
	gguf_close(src);
}

static void test_pretokenizers(void)
{
	static const char *const pres[] = {"smollm", "llama-bpe", "qwen2", "gpt-2", "default"};
	char path[128];
	for (size_t i = 0; i < sizeof(pres) / sizeof(pres[0]); i++) {
		relabel_tiny(pres[i], path, sizeof(path));
		Tokenizer *t = load(path);
		unlink(path);
		CU_ASSERT_PTR_NOT_NULL(t);
		if (!t)
			continue;
		char ids[128];
		snprintf(ids, sizeof(ids), "tests/data/tokenizer-bpe-%s.ids", pres[i]);
		int n = check_reference(t, ids);
		if (n != 41)
			printf("\n    pre-tokenizer %s: %d records\n", pres[i], n);
		CU_ASSERT_EQUAL(n, 41); /* 40 lines and the whole file */
		CU_ASSERT_FALSE(tok_add_bos(t)); /* the file says so, even for llama-bpe */
		tok_free(t);
	}
	/* an unknown pre-tokenizer is refused rather than guessed */
	relabel_tiny("no-such-pre", path, sizeof(path));
	GgufFile *g;
	Tokenizer *t = NULL;
	char err[128] = "";
	CU_ASSERT_FATAL(gguf_open(path, &g, err, sizeof(err)) == 0);
	unlink(path);
	CU_ASSERT_EQUAL(tok_new(g, &t, err, sizeof(err)), -EOPNOTSUPP);
	CU_ASSERT_PTR_NULL(t);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "no-such-pre"));
	gguf_close(g);
}

/* ---- round trips ---- */

static void roundtrip_one(const Tokenizer *t, const char *s, size_t len, bool bos)
{
	int n, m;
	int32_t *ids = encode(t, s, len, bos, false, &n);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ids);
	char *back = decode(t, ids, n, false, &m);
	CU_ASSERT_PTR_NOT_NULL_FATAL(back);
	bool same = (size_t)m == len && memcmp(back, s, len) == 0;
	if (!same)
		printf("\n    round trip failed: '%.*s' -> '%s'\n", (int)(len > 60 ? 60 : len), s, back);
	CU_ASSERT(same);
	free(ids);
	free(back);
}

static size_t put_utf8(char *o, uint32_t cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | cp >> 6);
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | cp >> 12);
		o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | cp >> 18);
	o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
	o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* Random valid UTF-8 mixing ASCII, whitespace, Latin/Greek/Cyrillic, CJK and emoji.
 * U+2581 is left out: SPM vocabularies cannot tell it from an escaped space. */
static size_t random_utf8(uint64_t *rs, char *buf, size_t max_chars)
{
	static const uint32_t ranges[][2] = {
		{0x20, 0x7e}, {0x09, 0x0d}, {0x20, 0x20}, {0xa0, 0x17f}, {0x370, 0x3ff},
		{0x400, 0x4ff}, {0x3040, 0x30ff}, {0x4e00, 0x4fff}, {0xac00, 0xacff},
		{0x1f300, 0x1f64f}, {0x200b, 0x200d}, {0x30, 0x39}, {0x2000, 0x2070},
	};
	size_t k = 0, n = 1 + tu_rand_u64(rs) % max_chars;
	for (size_t i = 0; i < n; i++) {
		const uint32_t *r = ranges[tu_rand_u64(rs) % (sizeof(ranges) / sizeof(ranges[0]))];
		uint32_t cp = r[0] + (uint32_t)(tu_rand_u64(rs) % (r[1] - r[0] + 1));
		if (cp == 0x2581)
			cp = 'x';
		k += put_utf8(buf + k, cp);
	}
	return k;
}

static void roundtrips(const Tokenizer *t)
{
	size_t tlen;
	char *text = tu_read_file(TEXT_PATH, &tlen);
	CU_ASSERT_PTR_NOT_NULL_FATAL(text);
	Span *lines;
	size_t n = split_lines(text, tlen, &lines);
	for (size_t i = 0; i < n; i++)
		roundtrip_one(t, lines[i].s, lines[i].len, i & 1);
	roundtrip_one(t, text, tlen, true);
	uint64_t rs = 12345;
	char buf[64 * 4];
	for (int i = 0; i < 300; i++)
		roundtrip_one(t, buf, random_utf8(&rs, buf, 64), i & 1);
	free(lines);
	free(text);
}

static void test_roundtrip_smollm2(void)
{
	Tokenizer *t = smol();
	if (!t)
		return;
	roundtrips(t);
	tok_free(t);
}

static void test_roundtrip_spm(void)
{
	Tokenizer *t = spm();
	if (!t)
		return;
	roundtrips(t);
	tok_free(t);
}

/* ---- special tokens ---- */

static int count_id(const int32_t *ids, int n, int32_t id)
{
	int c = 0;
	for (int i = 0; i < n; i++)
		c += ids[i] == id;
	return c;
}

static void test_special_tokens(void)
{
	Tokenizer *t = smol();
	if (!t)
		return;
	int32_t im_start = tok_find(t, "<|im_start|>"), im_end = tok_find(t, "<|im_end|>");
	CU_ASSERT(im_start >= 0 && im_end >= 0 && im_start != im_end);
	const char *s = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>";
	int n;
	int32_t *ids = encode(t, s, strlen(s), false, true, &n);
	CU_ASSERT_EQUAL(ids[0], im_start);
	CU_ASSERT_EQUAL(count_id(ids, n, im_start), 2);
	CU_ASSERT_EQUAL(count_id(ids, n, im_end), 1);
	CU_ASSERT_EQUAL(ids[n - 1], im_start);
	/* shown only on request */
	int len;
	char *plain = decode(t, ids, n, false, &len);
	CU_ASSERT_STRING_EQUAL(plain, "user\nHi\n");
	free(plain);
	char *shown = decode(t, ids, n, true, &len);
	CU_ASSERT_STRING_EQUAL(shown, s);
	free(shown);
	free(ids);

	ids = encode(t, s, strlen(s), false, false, &n);
	CU_ASSERT_EQUAL(count_id(ids, n, im_start), 0);
	CU_ASSERT_EQUAL(count_id(ids, n, im_end), 0);
	char *back = decode(t, ids, n, false, &len);
	CU_ASSERT_STRING_EQUAL(back, s); /* the text survives as ordinary tokens */
	free(back);
	free(ids);

	/* BOS prepended only when asked */
	ids = encode(t, "hi", 2, true, false, &n);
	CU_ASSERT(n >= 2 && ids[0] == tok_bos(t));
	free(ids);
	CU_ASSERT_FALSE(tok_add_bos(t)); /* SmolLM2 says add_bos_token = false */
	tok_free(t);
}

static void test_spm_special_and_prefix(void)
{
	Tokenizer *t = spm();
	if (!t)
		return;
	int n, len;
	/* "<s>" and "</s>" parsed only when asked; a space prefix follows each */
	const char *s = "a</s>b";
	int32_t *ids = encode(t, s, strlen(s), true, true, &n);
	CU_ASSERT(n >= 4);
	CU_ASSERT_EQUAL(ids[0], 1);
	CU_ASSERT_EQUAL(count_id(ids, n, 2), 1);
	int32_t *b = encode(t, " b", 2, false, false, &len);
	CU_ASSERT(len >= 1 && ids[n - 1] == b[len - 1]); /* "b" after </s> encodes as " b" */
	free(b);
	char *back = decode(t, ids, n, true, &len);
	CU_ASSERT_STRING_EQUAL(back, "<s>a</s> b");
	free(back);
	free(ids);
	ids = encode(t, s, strlen(s), false, false, &n);
	CU_ASSERT_EQUAL(count_id(ids, n, 2), 0);
	free(ids);
	tok_free(t);
}

static void test_eog(void)
{
	Tokenizer *t = smol();
	if (!t)
		return;
	CU_ASSERT(tok_is_eog(t, tok_find(t, "<|im_end|>")));
	CU_ASSERT(tok_is_eog(t, tok_find(t, "<|endoftext|>")));
	CU_ASSERT(tok_is_eog(t, tok_eos(t)));
	CU_ASSERT_FALSE(tok_is_eog(t, tok_find(t, "<|im_start|>")));
	CU_ASSERT_FALSE(tok_is_eog(t, tok_find(t, "Hello")));
	CU_ASSERT_FALSE(tok_is_eog(t, -1));
	CU_ASSERT_FALSE(tok_is_eog(t, tok_n_vocab(t)));
	tok_free(t);
}

static void test_eog_spm(void)
{
	Tokenizer *t = spm();
	if (!t)
		return;
	CU_ASSERT(tok_is_eog(t, tok_eos(t)));
	CU_ASSERT_FALSE(tok_is_eog(t, tok_bos(t)));
	CU_ASSERT_FALSE(tok_is_eog(t, tok_n_vocab(t)));
	tok_free(t);
}

/* ---- pieces, bad ids, edge cases ---- */

static void test_pieces_spm(void)
{
	Tokenizer *t = spm();
	if (!t)
		return;
	char buf[16];
	int32_t a = tok_find(t, "<0x41>"), nl = tok_find(t, "<0x0A>"), ff = tok_find(t, "<0xFF>");
	CU_ASSERT(a >= 0 && nl >= 0 && ff >= 0);
	CU_ASSERT_EQUAL(tok_piece(t, a, false, buf, sizeof(buf)), 1);
	CU_ASSERT_EQUAL(buf[0], 'A');
	CU_ASSERT_EQUAL(tok_piece(t, nl, false, buf, sizeof(buf)), 1);
	CU_ASSERT_EQUAL(buf[0], '\n');
	CU_ASSERT_EQUAL(tok_piece(t, ff, false, buf, sizeof(buf)), 1);
	CU_ASSERT_EQUAL((unsigned char)buf[0], 0xff);
	/* control: empty unless shown */
	CU_ASSERT_EQUAL(tok_piece(t, tok_bos(t), false, buf, sizeof(buf)), 0);
	CU_ASSERT_EQUAL(tok_piece(t, tok_bos(t), true, buf, sizeof(buf)), 3);
	CU_ASSERT_NSTRING_EQUAL(buf, "<s>", 3);
	/* U+2581 shows as a space */
	int32_t w = tok_find(t, "\xe2\x96\x81");
	CU_ASSERT(w >= 0);
	CU_ASSERT_EQUAL(tok_piece(t, w, false, buf, sizeof(buf)), 1);
	CU_ASSERT_EQUAL(buf[0], ' ');
	tok_free(t);
}

static void test_pieces_smollm2(void)
{
	char buf[16];
	Tokenizer *t = smol();
	if (!t)
		return;
	/* byte-level: "Ġ" is the space byte, "Ċ" the newline */
	CU_ASSERT_EQUAL(tok_piece(t, tok_find(t, "\xc4\xa0"), false, buf, sizeof(buf)), 1);
	CU_ASSERT_EQUAL(buf[0], ' ');
	CU_ASSERT_EQUAL(tok_piece(t, tok_find(t, "\xc4\x8a"), false, buf, sizeof(buf)), 1);
	CU_ASSERT_EQUAL(buf[0], '\n');
	int32_t hello = tok_find(t, "\xc4\xa0Hello");
	CU_ASSERT(hello >= 0);
	CU_ASSERT_EQUAL(tok_piece(t, hello, false, buf, sizeof(buf)), 6);
	CU_ASSERT_NSTRING_EQUAL(buf, " Hello", 6);
	/* a short buffer gets a prefix and the full length back */
	memset(buf, '#', sizeof(buf));
	CU_ASSERT_EQUAL(tok_piece(t, hello, false, buf, 2), 6);
	CU_ASSERT_NSTRING_EQUAL(buf, " H##", 4);
	size_t len;
	const char *txt = tok_text(t, hello, &len);
	CU_ASSERT(txt && len == 7 && memcmp(txt, "\xc4\xa0Hello", 7) == 0);
	tok_free(t);
}

static void test_bad_ids(void)
{
	Tokenizer *t = spm();
	if (!t)
		return;
	char buf[8];
	int32_t n = tok_n_vocab(t);
	CU_ASSERT_EQUAL(tok_piece(t, -1, false, buf, sizeof(buf)), -EINVAL);
	CU_ASSERT_EQUAL(tok_piece(t, n, false, buf, sizeof(buf)), -EINVAL);
	CU_ASSERT_EQUAL(tok_piece(t, INT32_MIN, true, buf, sizeof(buf)), -EINVAL);
	int32_t ids[3] = {5, n + 7, 6};
	CU_ASSERT_EQUAL(tok_decode(t, ids, 3, false, buf, sizeof(buf)), -EINVAL);
	CU_ASSERT_PTR_NULL(tok_text(t, n, NULL));
	CU_ASSERT_PTR_NULL(tok_text(t, -3, NULL));
	CU_ASSERT_EQUAL(tok_find(t, "no such token anywhere"), -1);
	CU_ASSERT_EQUAL(tok_find(t, ""), -1);
	CU_ASSERT_EQUAL(tok_encode(t, NULL, 4, false, false, NULL, 0), -EINVAL);
	tok_free(t);
}

static void test_empty_spm(void)
{
	Tokenizer *s = spm();
	if (!s)
		return;
	int32_t ids[4] = {-5, -5, -5, -5};
	CU_ASSERT_EQUAL(tok_encode(s, "", 0, false, true, ids, 4), 0);
	CU_ASSERT_EQUAL(ids[0], -5);
	CU_ASSERT_EQUAL(tok_encode(s, NULL, 0, true, false, ids, 4), 1);
	CU_ASSERT_EQUAL(ids[0], tok_bos(s));
	char c = 'z';
	CU_ASSERT_EQUAL(tok_decode(s, NULL, 0, false, &c, 1), 0);
	CU_ASSERT_EQUAL(tok_decode(s, ids, 1, false, &c, 1), 0); /* BOS alone shows nothing */
	CU_ASSERT_EQUAL(c, 'z');
	/* count-only call, then a short buffer: nothing written past cap */
	CU_ASSERT_EQUAL(tok_encode(s, "hello world", 11, false, false, NULL, 0),
			tok_encode(s, "hello world", 11, false, false, ids, 1));
	CU_ASSERT_EQUAL(ids[1], -5);
	tok_free(s);
}

static void test_empty_smollm2(void)
{
	int32_t ids[4];
	Tokenizer *t = smol();
	if (!t)
		return;
	CU_ASSERT_EQUAL(tok_encode(t, "", 0, false, false, ids, 4), 0);
	CU_ASSERT_EQUAL(tok_encode(t, "", 0, true, false, ids, 4), 1);
	CU_ASSERT_EQUAL(ids[0], tok_bos(t));
	tok_free(t);
}

/* Bytes the byte-level vocabulary has a token for (SmolLM2 lacks a few that never occur
 * in UTF-8 text, e.g. 0xC0 and 0xF5-0xFF; llama.cpp drops those too). */
static int representable(const Tokenizer *t, unsigned char *ret)
{
	int n = 0;
	for (int b = 0; b < 256; b++) {
		char c = (char)b, out[4];
		int32_t ids[4];
		int k = tok_encode(t, &c, 1, false, false, ids, 4);
		int m = k >= 0 ? tok_decode(t, ids, (size_t)k, false, out, sizeof(out)) : -1;
		CU_ASSERT(k >= 0 && k <= 1);
		if (m == 1 && out[0] == c)
			ret[n++] = (unsigned char)b;
		else
			CU_ASSERT(k == 0 && m == 0); /* dropped, not garbled */
	}
	return n;
}

/* Mostly bytes that break UTF-8, some spaces and letters between. */
static size_t random_bytes(uint64_t *rs, char *buf, size_t cap)
{
	size_t len = 1 + tu_rand_u64(rs) % cap;
	for (size_t i = 0; i < len; i++) {
		uint64_t x = tu_rand_u64(rs);
		buf[i] = x % 4 == 0 ? " a1\n"[x >> 8 & 3] : (char)(0x80 + (x >> 16) % 128);
	}
	return len;
}

static void test_invalid_utf8_spm(void)
{
	Tokenizer *s = spm();
	if (!s)
		return;
	uint64_t rs = 777;
	char buf[200];
	/* SPM keeps every byte through <0xXX> fallback */
	for (int it = 0; it < 400; it++)
		roundtrip_one(s, buf, random_bytes(&rs, buf, sizeof(buf)), it & 1);
	tok_free(s);
}

static void test_invalid_utf8_smollm2(void)
{
	Tokenizer *t = smol();
	if (!t)
		return;
	unsigned char ok[256];
	int nok = representable(t, ok);
	CU_ASSERT_FATAL(nok >= 230);
	uint64_t rs = 778;
	char buf[200];
	for (int it = 0; it < 400; it++) {
		size_t len = random_bytes(&rs, buf, sizeof(buf));
		int n, m;
		int32_t *ids = encode(t, buf, len, false, true, &n);
		CU_ASSERT_PTR_NOT_NULL_FATAL(ids);
		free(decode(t, ids, n, false, &m));
		CU_ASSERT(m >= 0 && (size_t)m <= len);
		free(ids);
		/* the same mixture from bytes the vocabulary can express comes back exactly */
		for (size_t i = 0; i < len; i++)
			if (!memchr(ok, (unsigned char)buf[i], (size_t)nok))
				buf[i] = (char)ok[tu_rand_u64(&rs) % (uint64_t)nok];
		roundtrip_one(t, buf, len, false);
	}
	tok_free(t);
}

/* ---- speed and threads ---- */

static char *big_text(size_t target, size_t *ret_len)
{
	size_t tlen;
	char *text = tu_read_file(TEXT_PATH, &tlen);
	CU_ASSERT_PTR_NOT_NULL_FATAL(text);
	char *big = malloc(target + tlen);
	size_t n = 0;
	while (n < target) {
		memcpy(big + n, text, tlen);
		n += tlen;
	}
	free(text);
	*ret_len = n;
	return big;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void time_encode(const Tokenizer *t, const char *name)
{
	size_t len;
	char *big = big_text(1 << 20, &len);
	double t0 = now();
	int n;
	int32_t *ids = encode(t, big, len, false, false, &n);
	double t1 = now();
	CU_ASSERT_PTR_NOT_NULL_FATAL(ids);
	int m;
	char *back = decode(t, ids, n, false, &m);
	double t2 = now();
	CU_ASSERT((size_t)m == len && memcmp(back, big, len) == 0);
	printf("\n    %s: encoded %zu bytes into %d ids in %.3f s (%.1f MB/s), decoded in %.3f s\n",
	       name, len, n, t1 - t0, len / (t1 - t0) / 1e6, t2 - t1);
	free(back);
	free(ids);
	free(big);
}

static void test_speed_spm(void)
{
	Tokenizer *s = spm();
	if (s)
		time_encode(s, "spm-tiny");
	tok_free(s);
}

static void test_speed_smollm2(void)
{
	Tokenizer *t = smol();
	if (!t)
		return;
	time_encode(t, "SmolLM2");
	/* pathological runs: one huge "word", whitespace and digits */
	size_t len = 1 << 20;
	char *run = malloc(len);
	static const char fill[] = {' ', '7', 'a', '\n'};
	static const char *const names[] = {"' '", "'7'", "'a'", "'\\n'"};
	for (size_t k = 0; k < sizeof(fill); k++) {
		memset(run, fill[k], len);
		double t0 = now();
		roundtrip_one(t, run, len, false);
		printf("    SmolLM2: 1 MiB of %s round trip in %.3f s\n", names[k], now() - t0);
	}
	free(run);
	tok_free(t);
}

typedef struct {
	const Tokenizer *t;
	const char *s;
	size_t len;
	int32_t *ids;
	int n;
} Job;

static void *job_run(void *arg)
{
	Job *j = arg;
	j->n = tok_encode(j->t, j->s, j->len, true, true, NULL, 0);
	j->ids = malloc((size_t)(j->n > 0 ? j->n : 1) * sizeof(int32_t));
	tok_encode(j->t, j->s, j->len, true, true, j->ids, (size_t)j->n);
	return NULL;
}

static void test_threads(void)
{
	Tokenizer *t = smol();
	if (!t)
		return;
	size_t len;
	char *big = big_text(200000, &len);
	Job j[4];
	pthread_t th[4];
	for (int i = 0; i < 4; i++) {
		j[i] = (Job){.t = t, .s = big, .len = len};
		pthread_create(&th[i], NULL, job_run, &j[i]);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	for (int i = 1; i < 4; i++)
		CU_ASSERT(j[i].n == j[0].n && memcmp(j[i].ids, j[0].ids, (size_t)j[0].n * 4) == 0);
	for (int i = 0; i < 4; i++)
		free(j[i].ids);
	free(big);
	tok_free(t);
}

static void test_bad_vocab(void)
{
	/* a vocabulary the encoder cannot use is refused, not half-loaded */
	GgufWriter *w;
	const char *path = "/tmp/qd-test-tokenizer-bad.gguf";
	CU_ASSERT_FATAL(gguf_writer_new(&w) == 0);
	const char *toks[] = {"a", "b", "a"};
	size_t lens[] = {1, 1, 1};
	CU_ASSERT(gguf_writer_set_str(w, "tokenizer.ggml.model", "llama", 5) == 0);
	CU_ASSERT(gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, lens, 3) == 0);
	CU_ASSERT(gguf_writer_begin(w, path) == 0);
	CU_ASSERT(gguf_writer_finish(w) == 0);
	gguf_writer_free(w);
	GgufFile *g;
	char err[128];
	CU_ASSERT_FATAL(gguf_open(path, &g, err, sizeof(err)) == 0);
	Tokenizer *t = NULL;
	CU_ASSERT_EQUAL(tok_new(g, &t, err, sizeof(err)), -EBADMSG); /* duplicate "a" */
	CU_ASSERT_PTR_NULL(t);
	gguf_close(g);

	CU_ASSERT_FATAL(gguf_writer_new(&w) == 0);
	CU_ASSERT(gguf_writer_set_str(w, "tokenizer.ggml.model", "bert", 4) == 0);
	CU_ASSERT(gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, lens, 2) == 0);
	CU_ASSERT(gguf_writer_begin(w, path) == 0);
	CU_ASSERT(gguf_writer_finish(w) == 0);
	gguf_writer_free(w);
	CU_ASSERT_FATAL(gguf_open(path, &g, err, sizeof(err)) == 0);
	CU_ASSERT_EQUAL(tok_new(g, &t, err, sizeof(err)), -EOPNOTSUPP);
	gguf_close(g);
	unlink(path);
	tok_free(NULL);
}

int main(void)
{
	static const TuTest tests[] = {
		{"spm_reference", test_spm_reference, NULL},
		{"pretokenizers", test_pretokenizers, NULL},
		{"roundtrip_spm", test_roundtrip_spm, NULL},
		{"spm_special_and_prefix", test_spm_special_and_prefix, NULL},
		{"eog_spm", test_eog_spm, NULL},
		{"pieces_spm", test_pieces_spm, NULL},
		{"bad_ids", test_bad_ids, NULL},
		{"empty_spm", test_empty_spm, NULL},
		{"invalid_utf8_spm", test_invalid_utf8_spm, NULL},
		{"bad_vocab", test_bad_vocab, NULL},
		{"speed_spm", test_speed_spm, NULL},
		{"smollm2_reference", test_smollm2_reference, no_model},
		{"roundtrip_smollm2", test_roundtrip_smollm2, no_model},
		{"special_tokens", test_special_tokens, no_model},
		{"eog", test_eog, no_model},
		{"pieces_smollm2", test_pieces_smollm2, no_model},
		{"empty_smollm2", test_empty_smollm2, no_model},
		{"invalid_utf8_smollm2", test_invalid_utf8_smollm2, no_model},
		{"threads", test_threads, no_model},
		{"speed_smollm2", test_speed_smollm2, no_model},
		{NULL, NULL, NULL},
	};
	return tu_main("tokenizer", tests);
}
