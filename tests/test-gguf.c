/* tests/test-gguf.c: the GGUF reader and writer: the real model's header, round trips of
 * every key/value and several tensor types, refusal of every truncation of a real header
 * and of crafted corrupt headers (each with its own message), and a mutation loop that
 * must never crash. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/engine/gguf.h"
#include "kernels/types.h"
#include "testutil.h"

/* ---- a little-endian byte builder for hand-made files ---- */

typedef struct {
	uint8_t *p;
	size_t len, cap;
} Bld;

static void b_bytes(Bld *b, const void *d, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		CU_ASSERT_FATAL(b->p != NULL);
	}
	if (n)
		memcpy(b->p + b->len, d, n);
	b->len += n;
}

static void b_u8(Bld *b, uint8_t v) { b_bytes(b, &v, 1); }
static void b_u32(Bld *b, uint32_t v) { b_bytes(b, &v, 4); }
static void b_u64(Bld *b, uint64_t v) { b_bytes(b, &v, 8); }

static void b_str(Bld *b, const char *s)
{
	b_u64(b, strlen(s));
	b_bytes(b, s, strlen(s));
}

static void b_head(Bld *b, uint64_t n_tensors, uint64_t n_kv)
{
	b_u32(b, GGUF_MAGIC);
	b_u32(b, 3);
	b_u64(b, n_tensors);
	b_u64(b, n_kv);
}

static void b_kv_u32(Bld *b, const char *key, uint32_t v)
{
	b_str(b, key);
	b_u32(b, GGUF_U32);
	b_u32(b, v);
}

static void b_tensor(Bld *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
		     uint64_t offset)
{
	b_str(b, name);
	b_u32(b, n_dims);
	for (uint32_t d = 0; d < n_dims; d++)
		b_u64(b, ne[d]);
	b_u32(b, type);
	b_u64(b, offset);
}

static void b_pad(Bld *b, size_t align)
{
	while (b->len % align)
		b_u8(b, 0);
}

static void b_zeros(Bld *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		b_u8(b, 0);
}

/* Opens a copy of BUF in an exactly-sized heap block so ASan sees any over-read. */
static int open_copy(const void *buf, size_t len, GgufFile **ret, uint8_t **ret_copy, char *err,
		     size_t errlen)
{
	uint8_t *copy = malloc(len ? len : 1);
	CU_ASSERT_FATAL(copy != NULL);
	if (len)
		memcpy(copy, buf, len);
	int r = gguf_open_buffer(copy, len, ret, err, errlen);
	*ret_copy = copy;
	return r;
}

/* BUF must be refused with -EBADMSG and a message containing WHAT and the byte offset. */
static void expect_refused_at(const char *test, const Bld *b, const char *what, int line)
{
	char err[512] = "";
	GgufFile *g = NULL;
	uint8_t *copy;
	int r = open_copy(b->p, b->len, &g, &copy, err, sizeof(err));
	if (r != -EBADMSG || !strstr(err, what) || !strstr(err, "(at byte ")) {
		printf("\n    %s (line %d): r=%d err='%s', expected '%s'", test, line, r, err, what);
		CU_FAIL("corrupt header not refused with the expected message");
	} else {
		CU_PASS("refused");
	}
	if (r == 0)
		gguf_close(g);
	free(copy);
}
#define expect_refused(b, what) expect_refused_at(__func__, (b), (what), __LINE__)

static const char *skip_no_model(void)
{
	return access(tu_model_path(), R_OK) == 0 ? NULL : "model file not found (make model)";
}

static char tmpdir[64];

static const char *tmp_path(const char *name, char *buf, size_t len)
{
	if (!tmpdir[0]) {
		strcpy(tmpdir, "/tmp/qd-test-gguf-XXXXXX");
		CU_ASSERT_FATAL(mkdtemp(tmpdir) != NULL);
	}
	snprintf(buf, len, "%s/%s", tmpdir, name);
	return buf;
}

static size_t kv_elem_size(int t)
{
	static const size_t sz[GGUF_TYPE_COUNT] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
	return t >= 0 && t < GGUF_TYPE_COUNT ? sz[t] : 0;
}

/* Key/value I of A equals key/value J of B: key, type, and the value through the public API. */
static bool kv_equal(const GgufFile *a, size_t i, const GgufFile *b, size_t j)
{
	const char *key = gguf_kv_key(a, i);
	char fa[4096], fb[4096];
	if (strcmp(key, gguf_kv_key(b, j)) || gguf_kv_type(a, i) != gguf_kv_type(b, j) ||
	    gguf_kv_arr_type(a, i) != gguf_kv_arr_type(b, j) ||
	    gguf_kv_arr_len(a, i) != gguf_kv_arr_len(b, j) ||
	    strcmp(gguf_kv_format(a, i, fa, sizeof(fa)), gguf_kv_format(b, j, fb, sizeof(fb))))
		return false;
	if (gguf_kv_type(a, i) == GGUF_STRING) {
		const char *sa, *sb;
		size_t la, lb;
		return gguf_get_str(a, key, &sa, &la) == 0 && gguf_get_str(b, key, &sb, &lb) == 0 &&
		       la == lb && memcmp(sa, sb, la) == 0;
	}
	if (gguf_kv_type(a, i) == GGUF_ARRAY) {
		int ta, tb;
		uint64_t na, nb;
		const void *da, *db;
		if (gguf_get_arr(a, key, &ta, &na, &da) || gguf_get_arr(b, key, &tb, &nb, &db) ||
		    ta != tb || na != nb)
			return false;
		if (ta != GGUF_STRING)
			return na == 0 || memcmp(da, db, na * kv_elem_size(ta)) == 0;
		for (uint64_t k = 0; k < na; k++) {
			const char *sa, *sb;
			size_t la, lb;
			if (gguf_get_arr_str(a, key, k, &sa, &la) || gguf_get_arr_str(b, key, k, &sb, &lb) ||
			    la != lb || memcmp(sa, sb, la))
				return false;
		}
		return true;
	}
	if (gguf_kv_type(a, i) == GGUF_F32) {
		float x, y;
		return gguf_get_f32(a, key, &x) == 0 && gguf_get_f32(b, key, &y) == 0 &&
		       memcmp(&x, &y, 4) == 0;
	}
	return true; /* other scalars: the formatted values compared above are exact */
}

/* ---- the real model ---- */

static void test_real_model(void)
{
	char err[512];
	GgufFile *g;
	int r = gguf_open(tu_model_path(), &g, err, sizeof(err));
	if (r < 0)
		printf("\n    %s\n", err);
	CU_ASSERT_FATAL(r == 0);
	CU_ASSERT(gguf_version(g) == 3);
	CU_ASSERT(gguf_n_tensors(g) == 272);
	CU_ASSERT(gguf_n_kv(g) == 33);
	const char *s;
	size_t len;
	CU_ASSERT(gguf_get_str(g, "general.architecture", &s, &len) == 0 && len == 5 &&
		  memcmp(s, "llama", 5) == 0);
	uint32_t u;
	int64_t i64;
	CU_ASSERT(gguf_get_u32(g, "llama.block_count", &u) == 0 && u == 30);
	CU_ASSERT(gguf_get_i64(g, "llama.block_count", &i64) == 0 && i64 == 30);
	CU_ASSERT(gguf_get_u32(g, "no.such.key", &u) == -ENOENT);
	CU_ASSERT(gguf_get_u32(g, "general.architecture", &u) == -EINVAL);
	CU_ASSERT(gguf_find_kv(g, "no.such.key") == -ENOENT);
	int64_t ki = gguf_find_kv(g, "llama.block_count");
	CU_ASSERT(ki >= 0 && strcmp(gguf_kv_key(g, (size_t)ki), "llama.block_count") == 0);
	float f;
	CU_ASSERT(gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f) == 0 && f > 0 && f < 1e-3f);

	const GgufTensor *t = gguf_find_tensor(g, "token_embd.weight");
	CU_ASSERT_FATAL(t != NULL);
	CU_ASSERT(t->type == QD_TYPE_Q8_0);
	CU_ASSERT(t->n_dims == 2 && t->ne[0] == 576 && t->ne[1] == 49152 && t->ne[2] == 1 && t->ne[3] == 1);
	CU_ASSERT(t->nbytes == 49152ull * 576 / 32 * 34);
	CU_ASSERT(gguf_find_tensor(g, "no.such.tensor") == NULL);
	CU_ASSERT(gguf_tensor(g, gguf_n_tensors(g)) == NULL);

	int type;
	uint64_t n;
	const void *data;
	CU_ASSERT(gguf_get_arr(g, "tokenizer.ggml.tokens", &type, &n, &data) == 0);
	CU_ASSERT(type == GGUF_STRING && n == 49152 && data == NULL);
	CU_ASSERT(gguf_get_arr_str(g, "tokenizer.ggml.tokens", 1, &s, &len) == 0 && len == 12 &&
		  memcmp(s, "<|im_start|>", 12) == 0);
	CU_ASSERT(gguf_get_arr_str(g, "tokenizer.ggml.tokens", n, &s, &len) == -ERANGE);
	CU_ASSERT(gguf_get_arr_str(g, "tokenizer.ggml.token_type", 0, &s, &len) == -EINVAL);

	/* every tensor lies inside the file, aligned, and is found by name */
	uint64_t end = 0;
	for (size_t i = 0; i < gguf_n_tensors(g); i++) {
		const GgufTensor *ti = gguf_tensor(g, i);
		CU_ASSERT(ti->offset % gguf_alignment(g) == 0);
		CU_ASSERT(gguf_data_offset(g) + ti->offset + ti->nbytes <= gguf_file_size(g));
		CU_ASSERT(gguf_find_tensor(g, ti->name) == ti);
		if (ti->offset + ti->nbytes > end)
			end = ti->offset + ti->nbytes;
	}
	CU_ASSERT(end > 0);

	/* display: long values are cut with "..." and always NUL-terminated */
	char small[24], one[1];
	int64_t ct = gguf_find_kv(g, "tokenizer.chat_template");
	CU_ASSERT_FATAL(ct >= 0);
	gguf_kv_format(g, (size_t)ct, small, sizeof(small));
	CU_ASSERT(strlen(small) == sizeof(small) - 1 && strcmp(small + strlen(small) - 3, "...") == 0);
	CU_ASSERT(gguf_kv_format(g, (size_t)ct, one, 1)[0] == 0);
	gguf_close(g);
	gguf_close(NULL);
}

static void test_open_errors(void)
{
	char err[256] = "";
	GgufFile *g;
	CU_ASSERT(gguf_open("/nonexistent/qd.gguf", &g, err, sizeof(err)) == -ENOENT);
	CU_ASSERT(err[0] != 0);
	CU_ASSERT(gguf_open("/tmp", &g, err, sizeof(err)) == -EISDIR);
	char path[128];
	FILE *f = fopen(tmp_path("empty.gguf", path, sizeof(path)), "wb");
	CU_ASSERT_FATAL(f != NULL);
	fclose(f);
	CU_ASSERT(gguf_open(path, &g, err, sizeof(err)) == -EBADMSG);
	CU_ASSERT(strstr(err, "empty file") != NULL);
	CU_ASSERT(gguf_open(path, &g, NULL, 0) == -EBADMSG); /* errlen 0: no message */
	unlink(path);
}

/* ---- round trips ---- */

static const int tt_types[] = { QD_TYPE_F32, QD_TYPE_F16, QD_TYPE_Q4_0, QD_TYPE_Q8_0,
				QD_TYPE_Q4_K, QD_TYPE_Q6_K, QD_TYPE_BF16, QD_TYPE_Q4_1 };
static const int64_t tt_ne[][4] = { { 7, 3, 1, 1 }, { 64, 2, 1, 1 }, { 64, 3, 1, 1 },
				    { 32, 1, 2, 1 }, { 256, 2, 1, 1 }, { 256, 1, 1, 1 },
				    { 5, 2, 3, 2 }, { 96, 5, 1, 1 } };
static const uint32_t tt_dims[] = { 2, 2, 2, 3, 2, 1, 4, 2 };
#define N_TT (sizeof(tt_types) / sizeof(tt_types[0]))

/* A hand-built file holding one key of every scalar type and arrays of every element type. */
static void build_all_kv(Bld *b)
{
	uint8_t u8 = 200;
	int8_t i8 = -100;
	uint16_t u16 = 60000;
	int16_t i16 = -30000;
	uint32_t u32 = 4000000000u;
	int32_t i32 = -2000000000;
	float f32 = 3.25f;
	uint64_t u64 = (1ull << 63) + 5;
	int64_t i64 = -(1ll << 62);
	double f64 = 3.14159265358979;
	const void *vals[GGUF_TYPE_COUNT] = { &u8, &i8, &u16, &i16, &u32, &i32, &f32, NULL, NULL,
					      NULL, &u64, &i64, &f64 };
	b_head(b, 0, 2 * 11 + 6);
	char key[32];
	for (int t = 0; t < GGUF_TYPE_COUNT; t++) {
		if (t == GGUF_STRING || t == GGUF_ARRAY)
			continue;
		snprintf(key, sizeof(key), "s.%d", t);
		b_str(b, key);
		b_u32(b, (uint32_t)t);
		if (t == GGUF_BOOL)
			b_u8(b, 1);
		else
			b_bytes(b, vals[t], kv_elem_size(t));
		/* array of 5 elements of the same type */
		snprintf(key, sizeof(key), "a.%d", t);
		b_str(b, key);
		b_u32(b, GGUF_ARRAY);
		b_u32(b, (uint32_t)t);
		b_u64(b, 5);
		for (int k = 0; k < 5; k++) {
			uint8_t x[8];
			for (size_t j = 0; j < 8; j++)
				x[j] = (uint8_t)(k * 37 + j * 11 + t);
			if (t == GGUF_BOOL)
				x[0] = k & 1;
			b_bytes(b, x, kv_elem_size(t));
		}
	}
	b_str(b, "str");
	b_u32(b, GGUF_STRING);
	b_str(b, "h\xc3\xa9llo \"world\"\n\t");
	b_str(b, "str.empty");
	b_u32(b, GGUF_STRING);
	b_str(b, "");
	b_str(b, "a.str");
	b_u32(b, GGUF_ARRAY);
	b_u32(b, GGUF_STRING);
	b_u64(b, 4);
	b_str(b, "<s>");
	b_str(b, "");
	b_str(b, "\xe2\x96\x81the");
	b_str(b, "a much longer string element that goes on for a while to test display cuts");
	b_str(b, "a.empty");
	b_u32(b, GGUF_ARRAY);
	b_u32(b, GGUF_U32);
	b_u64(b, 0);
	b_str(b, "a.str.empty");
	b_u32(b, GGUF_ARRAY);
	b_u32(b, GGUF_STRING);
	b_u64(b, 0);
	b_kv_u32(b, "general.alignment", 64);
}

static void test_getters(void)
{
	Bld b = { 0 };
	build_all_kv(&b);
	char err[256], buf[256];
	GgufFile *g;
	uint8_t *copy;
	int r = open_copy(b.p, b.len, &g, &copy, err, sizeof(err));
	if (r)
		printf("\n    %s\n", err);
	CU_ASSERT_FATAL(r == 0);
	uint32_t u;
	int64_t i;
	float f;
	bool bo;
	CU_ASSERT(gguf_alignment(g) == 64);
	CU_ASSERT(gguf_get_u32(g, "s.0", &u) == 0 && u == 200);
	CU_ASSERT(gguf_get_i64(g, "s.1", &i) == 0 && i == -100);
	CU_ASSERT(gguf_get_u32(g, "s.1", &u) == -EINVAL); /* negative */
	CU_ASSERT(gguf_get_u32(g, "s.2", &u) == 0 && u == 60000);
	CU_ASSERT(gguf_get_i64(g, "s.3", &i) == 0 && i == -30000);
	CU_ASSERT(gguf_get_u32(g, "s.4", &u) == 0 && u == 4000000000u);
	CU_ASSERT(gguf_get_i64(g, "s.5", &i) == 0 && i == -2000000000);
	CU_ASSERT(gguf_get_f32(g, "s.6", &f) == 0 && f == 3.25f);
	CU_ASSERT(gguf_get_bool(g, "s.7", &bo) == 0 && bo);
	CU_ASSERT(gguf_get_u32(g, "s.7", &u) == -EINVAL);
	CU_ASSERT(gguf_get_i64(g, "s.10", &i) == -EINVAL); /* 2^63 + 5 does not fit */
	CU_ASSERT(gguf_get_u32(g, "s.10", &u) == -EINVAL);
	CU_ASSERT(strcmp(gguf_kv_format(g, (size_t)gguf_find_kv(g, "s.10"), buf, sizeof(buf)),
			 "9223372036854775813") == 0);
	CU_ASSERT(gguf_get_i64(g, "s.11", &i) == 0 && i == -(1ll << 62));
	CU_ASSERT(gguf_get_u32(g, "s.11", &u) == -EINVAL);
	CU_ASSERT(gguf_get_f32(g, "s.12", &f) == 0 && f == (float)3.14159265358979);
	CU_ASSERT(gguf_get_f32(g, "s.4", &f) == -EINVAL);
	CU_ASSERT(gguf_get_bool(g, "s.0", &bo) == 0 && bo);
	CU_ASSERT(gguf_get_bool(g, "str", &bo) == -EINVAL);
	const char *s;
	size_t len;
	CU_ASSERT(gguf_get_str(g, "str", &s, &len) == 0 && len == 16 && memcmp(s, "h\xc3\xa9llo", 6) == 0);
	CU_ASSERT(gguf_get_str(g, "str.empty", &s, &len) == 0 && len == 0);
	CU_ASSERT(gguf_get_str(g, "s.4", &s, &len) == -EINVAL);
	CU_ASSERT(strcmp(gguf_kv_format(g, (size_t)gguf_find_kv(g, "str"), buf, sizeof(buf)),
			 "\"h\xc3\xa9llo \\\"world\\\"\\n\\x09\"") == 0);
	int type;
	uint64_t n;
	const void *data;
	CU_ASSERT(gguf_get_arr(g, "a.4", &type, &n, &data) == 0 && type == GGUF_U32 && n == 5 && data);
	CU_ASSERT(gguf_get_arr(g, "s.4", &type, &n, &data) == -EINVAL);
	CU_ASSERT(gguf_get_arr(g, "a.empty", &type, &n, &data) == 0 && n == 0);
	CU_ASSERT(gguf_get_arr_str(g, "a.str", 2, &s, &len) == 0 && len == 6 &&
		  memcmp(s, "\xe2\x96\x81the", 6) == 0);
	CU_ASSERT(gguf_get_arr_str(g, "a.str", 1, &s, &len) == 0 && len == 0);
	CU_ASSERT(gguf_get_arr_str(g, "a.str.empty", 0, &s, &len) == -ERANGE);
	int64_t ai = gguf_find_kv(g, "a.str");
	CU_ASSERT(gguf_kv_arr_type(g, (size_t)ai) == GGUF_STRING && gguf_kv_arr_len(g, (size_t)ai) == 4);
	CU_ASSERT(gguf_kv_arr_type(g, (size_t)gguf_find_kv(g, "s.0")) == -1);
	CU_ASSERT(strncmp(gguf_kv_format(g, (size_t)ai, buf, sizeof(buf)), "[string x 4] \"<s>\", \"\"", 22) == 0);
	gguf_close(g);
	free(copy);
	free(b.p);
}

static void fill_random(uint8_t *p, size_t n, int type, uint64_t *rng)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)tu_rand_u64(rng);
	if (type == QD_TYPE_F32) /* keep floats finite so the formatted and memcmp views agree */
		for (size_t i = 0; i + 4 <= n; i += 4) {
			float f = tu_rand_f32(rng);
			memcpy(p + i, &f, 4);
		}
}

static void test_roundtrip(void)
{
	char path[128], tmp[160], err[256];
	uint64_t rng = 1234;
	Bld b = { 0 };
	build_all_kv(&b);
	GgufFile *src, *g;
	uint8_t *copy;
	CU_ASSERT_FATAL(open_copy(b.p, b.len, &src, &copy, err, sizeof(err)) == 0);

	GgufWriter *w;
	CU_ASSERT_FATAL(gguf_writer_new(&w) == 0);
	CU_ASSERT(gguf_writer_set_u32(w, "w.u32", 1) == 0);
	for (size_t i = 0; i < gguf_n_kv(src); i++)
		CU_ASSERT(gguf_writer_copy_kv(w, src, i) == 0);
	CU_ASSERT(gguf_writer_set_i32(w, "w.i32", -7) == 0);
	CU_ASSERT(gguf_writer_set_u64(w, "w.u64", UINT64_MAX) == 0);
	CU_ASSERT(gguf_writer_set_f32(w, "w.f32", -0.5f) == 0);
	CU_ASSERT(gguf_writer_set_bool(w, "w.bool", false) == 0);
	CU_ASSERT(gguf_writer_set_str(w, "w.str", "abc\0def", 7) == 0);
	uint16_t arr16[3] = { 1, 65535, 3 };
	CU_ASSERT(gguf_writer_set_arr(w, "w.arr", GGUF_U16, arr16, 3) == 0);
	const char *strs[3] = { "x", "", "yz" };
	size_t lens[3] = { 1, 0, 2 };
	CU_ASSERT(gguf_writer_set_arr_str(w, "w.arrstr", strs, lens, 3) == 0);
	CU_ASSERT(gguf_writer_set_u32(w, "w.u32", 42) == 0); /* replaces, keeps first position */
	CU_ASSERT(gguf_writer_set_arr(w, "w.bad", GGUF_STRING, arr16, 1) == -EINVAL);
	CU_ASSERT(gguf_writer_set_u32(w, "", 1) == -EINVAL);
	uint8_t badbool[2] = { 0, 2 };
	CU_ASSERT(gguf_writer_set_arr(w, "w.bad", GGUF_BOOL, badbool, 2) == -EINVAL);

	uint8_t *tdata[N_TT];
	size_t tbytes[N_TT], total = 0;
	for (size_t i = 0; i < N_TT; i++) {
		char name[32];
		uint64_t row;
		snprintf(name, sizeof(name), "t.%zu.weight", i);
		CU_ASSERT_FATAL(gguf_writer_add_tensor(w, name, tt_types[i], tt_dims[i], tt_ne[i]) == 0);
		CU_ASSERT_FATAL(qd_row_size(tt_types[i], (uint64_t)tt_ne[i][0], &row) == 0);
		tbytes[i] = row * tt_ne[i][1] * tt_ne[i][2] * tt_ne[i][3];
		tdata[i] = malloc(tbytes[i]);
		fill_random(tdata[i], tbytes[i], tt_types[i], &rng);
		total += tbytes[i];
	}
	int64_t bad[2] = { 33, 2 }, big[4] = { 1ll << 62, 4, 1, 1 };
	CU_ASSERT(gguf_writer_add_tensor(w, "t.0.weight", QD_TYPE_F32, 1, bad) == -EEXIST);
	CU_ASSERT(gguf_writer_add_tensor(w, "bad", QD_TYPE_Q4_0, 2, bad) == -EINVAL);
	CU_ASSERT(gguf_writer_add_tensor(w, "bad", 4, 2, bad) == -EINVAL);
	CU_ASSERT(gguf_writer_add_tensor(w, "bad", QD_TYPE_F32, 0, bad) == -EINVAL);
	CU_ASSERT(gguf_writer_add_tensor(w, "bad", QD_TYPE_F32, 2, big) == -EINVAL);
	CU_ASSERT(gguf_writer_add_tensor(w, "x123456789x123456789x123456789x123456789x123456789x123456789xxxxx",
					 QD_TYPE_F32, 1, bad) == -EINVAL);

	tmp_path("rt.gguf", path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	CU_ASSERT_FATAL(gguf_writer_begin(w, path) == 0);
	CU_ASSERT(access(tmp, F_OK) == 0 && access(path, F_OK) != 0);
	CU_ASSERT(gguf_writer_set_u32(w, "late", 1) == -EINVAL);
	CU_ASSERT(gguf_writer_finish(w) == -EINVAL); /* nothing written yet */
	/* stream everything as one byte sequence in random-sized chunks spanning tensors */
	uint8_t *all = malloc(total);
	size_t o = 0;
	for (size_t i = 0; i < N_TT; i++) {
		memcpy(all + o, tdata[i], tbytes[i]);
		o += tbytes[i];
	}
	for (o = 0; o < total;) {
		size_t k = 1 + tu_rand_u64(&rng) % 300;
		if (k > total - o)
			k = total - o;
		CU_ASSERT_FATAL(gguf_writer_append(w, all + o, k) == 0);
		o += k;
	}
	CU_ASSERT(gguf_writer_append(w, all, 1) == -EINVAL);
	CU_ASSERT_FATAL(gguf_writer_finish(w) == 0);
	gguf_writer_free(w);
	CU_ASSERT(access(tmp, F_OK) != 0);

	int r = gguf_open(path, &g, err, sizeof(err));
	if (r)
		printf("\n    %s\n", err);
	CU_ASSERT_FATAL(r == 0);
	CU_ASSERT(gguf_alignment(g) == 64); /* general.alignment was copied */
	CU_ASSERT_FATAL(gguf_n_kv(g) == gguf_n_kv(src) + 8);
	CU_ASSERT(strcmp(gguf_kv_key(g, 0), "w.u32") == 0);
	uint32_t u;
	CU_ASSERT(gguf_get_u32(g, "w.u32", &u) == 0 && u == 42);
	for (size_t i = 0; i < gguf_n_kv(src); i++)
		CU_ASSERT(kv_equal(src, i, g, i + 1));
	char buf[128];
	CU_ASSERT(strcmp(gguf_kv_format(g, (size_t)gguf_find_kv(g, "w.u64"), buf, sizeof(buf)),
			 "18446744073709551615") == 0);
	int64_t i64;
	CU_ASSERT(gguf_get_i64(g, "w.i32", &i64) == 0 && i64 == -7);
	float f;
	CU_ASSERT(gguf_get_f32(g, "w.f32", &f) == 0 && f == -0.5f);
	bool bo;
	CU_ASSERT(gguf_get_bool(g, "w.bool", &bo) == 0 && !bo);
	const char *s;
	size_t len;
	CU_ASSERT(gguf_get_str(g, "w.str", &s, &len) == 0 && len == 7 && memcmp(s, "abc\0def", 7) == 0);
	int type;
	uint64_t n;
	const void *data;
	CU_ASSERT(gguf_get_arr(g, "w.arr", &type, &n, &data) == 0 && type == GGUF_U16 && n == 3 &&
		  memcmp(data, arr16, 6) == 0);
	CU_ASSERT(gguf_get_arr_str(g, "w.arrstr", 2, &s, &len) == 0 && len == 2 && memcmp(s, "yz", 2) == 0);

	CU_ASSERT_FATAL(gguf_n_tensors(g) == N_TT);
	for (size_t i = 0; i < N_TT; i++) {
		const GgufTensor *t = gguf_tensor(g, i);
		CU_ASSERT(t->type == tt_types[i] && t->n_dims == tt_dims[i]);
		CU_ASSERT(memcmp(t->ne, tt_ne[i], sizeof(t->ne)) == 0);
		CU_ASSERT(t->nbytes == tbytes[i] && t->offset % 64 == 0);
		CU_ASSERT(memcmp(t->data, tdata[i], tbytes[i]) == 0);
	}
	/* padding is zero: between the header and the data, and after every tensor */
	size_t flen;
	char *raw = tu_read_file(path, &flen);
	CU_ASSERT_FATAL(raw != NULL && flen == gguf_file_size(g));
	uint64_t pos = gguf_data_offset(g);
	bool zero = true;
	for (size_t i = 0; i < N_TT; i++) {
		const GgufTensor *t = gguf_tensor(g, i);
		uint64_t start = gguf_data_offset(g) + t->offset;
		for (uint64_t k = pos; k < start; k++)
			zero &= raw[k] == 0;
		pos = start + t->nbytes;
	}
	for (uint64_t k = pos; k < flen; k++)
		zero &= raw[k] == 0;
	CU_ASSERT(zero);
	CU_ASSERT(flen % 64 == 0);
	free(raw);
	gguf_close(g);
	gguf_close(src);
	for (size_t i = 0; i < N_TT; i++)
		free(tdata[i]);
	free(all);
	free(copy);
	free(b.p);
	unlink(path);
}

static void test_writer_abandon(void)
{
	char path[128], tmp[160];
	GgufWriter *w;
	int64_t ne[1] = { 8 };
	float x[8] = { 0 };
	tmp_path("abandon.gguf", path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	CU_ASSERT_FATAL(gguf_writer_new(&w) == 0);
	CU_ASSERT(gguf_writer_set_u32(w, "general.alignment", 48) == 0);
	CU_ASSERT(gguf_writer_add_tensor(w, "a", QD_TYPE_F32, 1, ne) == 0);
	CU_ASSERT(gguf_writer_begin(w, path) == -EINVAL); /* 48 is not a power of two */
	CU_ASSERT(gguf_writer_set_u32(w, "general.alignment", 16) == 0);
	CU_ASSERT_FATAL(gguf_writer_begin(w, path) == 0);
	CU_ASSERT(gguf_writer_append(w, x, 16) == 0);
	CU_ASSERT(gguf_writer_finish(w) == -EINVAL); /* half the tensor is missing */
	gguf_writer_free(w);
	CU_ASSERT(access(tmp, F_OK) != 0 && access(path, F_OK) != 0);
	gguf_writer_free(NULL);
	CU_ASSERT_FATAL(gguf_writer_new(&w) == 0);
	CU_ASSERT(gguf_writer_begin(w, "/nonexistent/dir/x.gguf") == -ENOENT);
	gguf_writer_free(w);
}

/* Re-writes the real model through the writer: same key/values, byte-identical tensors. */
static void test_rewrite_model(void)
{
	char err[256], path[128];
	GgufFile *src, *g;
	GgufWriter *w;
	CU_ASSERT_FATAL(gguf_open(tu_model_path(), &src, err, sizeof(err)) == 0);
	CU_ASSERT_FATAL(gguf_writer_new(&w) == 0);
	for (size_t i = 0; i < gguf_n_kv(src); i++)
		CU_ASSERT_FATAL(gguf_writer_copy_kv(w, src, i) == 0);
	for (size_t i = 0; i < gguf_n_tensors(src); i++) {
		const GgufTensor *t = gguf_tensor(src, i);
		CU_ASSERT_FATAL(gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne) == 0);
	}
	tmp_path("rewrite.gguf", path, sizeof(path));
	CU_ASSERT_FATAL(gguf_writer_begin(w, path) == 0);
	for (size_t i = 0; i < gguf_n_tensors(src); i++) {
		const GgufTensor *t = gguf_tensor(src, i);
		/* uneven pieces, so the writer's buffering is exercised */
		for (uint64_t o = 0; o < t->nbytes;) {
			uint64_t k = t->nbytes - o < 100003 ? t->nbytes - o : 100003;
			CU_ASSERT_FATAL(gguf_writer_append(w, (const uint8_t *)t->data + o, (size_t)k) == 0);
			o += k;
		}
	}
	CU_ASSERT_FATAL(gguf_writer_finish(w) == 0);
	gguf_writer_free(w);
	CU_ASSERT_FATAL(gguf_open(path, &g, err, sizeof(err)) == 0);
	CU_ASSERT_FATAL(gguf_n_kv(g) == gguf_n_kv(src));
	for (size_t i = 0; i < gguf_n_kv(src); i++)
		CU_ASSERT(kv_equal(src, i, g, i));
	CU_ASSERT_FATAL(gguf_n_tensors(g) == gguf_n_tensors(src));
	for (size_t i = 0; i < gguf_n_tensors(src); i++) {
		const GgufTensor *a = gguf_tensor(src, i), *b = gguf_tensor(g, i);
		CU_ASSERT(strcmp(a->name, b->name) == 0 && a->type == b->type && a->n_dims == b->n_dims &&
			  memcmp(a->ne, b->ne, sizeof(a->ne)) == 0 && a->nbytes == b->nbytes);
		CU_ASSERT(memcmp(a->data, b->data, a->nbytes) == 0);
	}
	gguf_close(g);
	gguf_close(src);
	unlink(path);
}

/* ---- refusals ---- */

/* Every prefix of the real file shorter than its last tensor's end is refused; the prefix
 * that ends there is accepted. */
static void test_truncations(void)
{
	size_t len;
	char err[512];
	uint8_t *file = (uint8_t *)tu_read_file(tu_model_path(), &len);
	CU_ASSERT_FATAL(file != NULL);
	GgufFile *g;
	CU_ASSERT_FATAL(gguf_open_buffer(file, len, &g, err, sizeof(err)) == 0);
	uint64_t hdr = gguf_data_offset(g), need = hdr;
	for (size_t i = 0; i < gguf_n_tensors(g); i++) {
		const GgufTensor *t = gguf_tensor(g, i);
		if (hdr + t->offset + t->nbytes > need)
			need = hdr + t->offset + t->nbytes;
	}
	gguf_close(g);
	CU_ASSERT_FATAL(need <= len && hdr > 8192);

	/* every byte of the first 4 KiB, strides through the KV arrays, finer ones through
	 * the tensor infos at the end of the header, then points inside the data */
	size_t n_points = 0, refused = 0, cap = 4096 + hdr / 1009 + 20000 / 13 + 16;
	uint64_t *points = malloc(cap * sizeof(*points));
	CU_ASSERT_FATAL(points != NULL);
	for (uint64_t p = 0; p < 4096; p++)
		points[n_points++] = p;
	for (uint64_t p = 4096; p + 20000 < hdr; p += 1009)
		points[n_points++] = p;
	for (uint64_t p = hdr - 20000; p < hdr; p += 13)
		points[n_points++] = p;
	const uint64_t data_points[] = { hdr, hdr + 1, hdr + 4096, need / 2, need - 4096,
					 need - 33, need - 1 };
	for (size_t k = 0; k < sizeof(data_points) / sizeof(data_points[0]); k++)
		points[n_points++] = data_points[k];
	for (size_t k = 0; k < n_points; k++) {
		uint8_t *copy;
		GgufFile *h = NULL;
		err[0] = 0;
		int r = open_copy(file, (size_t)points[k], &h, &copy, err, sizeof(err));
		if (r == -EBADMSG && err[0])
			refused++;
		else
			printf("\n    prefix %" PRIu64 ": r=%d err='%s'", points[k], r, err);
		if (r == 0)
			gguf_close(h);
		free(copy);
	}
	free(points);
	CU_ASSERT(refused == n_points);
	CU_ASSERT(n_points > 4096 + 1000);
	uint8_t *copy;
	GgufFile *h;
	CU_ASSERT(open_copy(file, (size_t)need, &h, &copy, err, sizeof(err)) == 0);
	gguf_close(h);
	free(copy);
	free(file);
}

/* A file of one F32/other tensor with the given info and DATA bytes after the header. */
static void one_tensor(Bld *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
		       uint64_t offset, size_t data)
{
	b->len = 0;
	b_head(b, 1, 0);
	b_tensor(b, name, n_dims, ne, type, offset);
	b_pad(b, 32);
	b_zeros(b, data);
}

static void test_corrupt_headers(void)
{
	Bld b = { 0 };
	uint64_t ne16[1] = { 16 }, ne4[4] = { 4, 4, 4, 4 }, ne5[5] = { 4, 4, 4, 4, 4 };

	b_bytes(&b, "", 0);
	expect_refused(&b, "empty file");
	b_bytes(&b, "GGU", 3);
	expect_refused(&b, "truncated: magic");
	b.len = 0;
	b_u32(&b, 0x58554747); /* "GGUX" */
	b_u32(&b, 3);
	expect_refused(&b, "bad magic");
	for (int v = 0; v < 4; v++) {
		static const uint32_t vers[4] = { 1, 99, 0x03000000, 0 };
		static const char *const msg[4] = { "version 1 is not supported", "version 99",
						    "big-endian", "version 0" };
		b.len = 0;
		b_u32(&b, GGUF_MAGIC);
		b_u32(&b, vers[v]);
		b_u64(&b, 0);
		b_u64(&b, 0);
		expect_refused(&b, msg[v]);
	}
	b.len = 0;
	b_head(&b, 1ull << 40, 0);
	expect_refused(&b, "tensor_count 1099511627776 exceeds the limit");
	b.len = 0;
	b_head(&b, 0, UINT64_MAX);
	expect_refused(&b, "kv_count 18446744073709551615 exceeds the limit");
	b.len = 0;
	b_head(&b, 1000, 1000000);
	b_kv_u32(&b, "k", 1);
	expect_refused(&b, "truncated: key length needs 8 bytes, 0 left (at byte 41)");

	/* strings */
	b.len = 0;
	b_head(&b, 0, 1);
	b_u64(&b, 1ull << 40);
	b_zeros(&b, 64);
	expect_refused(&b, "key length 1099511627776 exceeds the limit 65535");
	b.len = 0;
	b_head(&b, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_STRING);
	b_u64(&b, 1ull << 31);
	b_zeros(&b, 64);
	expect_refused(&b, "key 'k': string length 2147483648 exceeds the limit");
	b.len = 0;
	b_head(&b, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_STRING);
	b_u64(&b, UINT64_MAX - 3); /* pos + len would wrap */
	b_zeros(&b, 64);
	expect_refused(&b, "string length 18446744073709551612 exceeds");
	b.len = 0;
	b_head(&b, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_STRING);
	b_u64(&b, 100);
	b_zeros(&b, 20);
	expect_refused(&b, "string length 100 runs past end of file (20 bytes left)");
	b.len = 0;
	b_head(&b, 0, 1);
	b_str(&b, "");
	b_u32(&b, GGUF_U32);
	b_u32(&b, 1);
	expect_refused(&b, "empty key");
	b.len = 0;
	b_head(&b, 0, 1);
	b_u64(&b, 3);
	b_bytes(&b, "a\0b", 3);
	b_u32(&b, GGUF_U32);
	b_u32(&b, 1);
	expect_refused(&b, "key contains a NUL byte");

	/* value types */
	b.len = 0;
	b_head(&b, 0, 1);
	b_str(&b, "k");
	b_u32(&b, 13);
	b_zeros(&b, 16);
	expect_refused(&b, "key 'k': unknown value type 13");
	b.len = 0;
	b_head(&b, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_BOOL);
	b_u8(&b, 2);
	b_zeros(&b, 16);
	expect_refused(&b, "bool value 2 is not 0 or 1");
	b.len = 0;
	b_head(&b, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_ARRAY);
	b_u32(&b, GGUF_U8);
	b_u64(&b, 1ull << 62);
	b_zeros(&b, 16);
	expect_refused(&b, "array of 4611686018427387904 elements exceeds the limit");
	b.len = 0;
	b_head(&b, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_ARRAY);
	b_u32(&b, GGUF_U64);
	b_u64(&b, 1ull << 32);
	b_zeros(&b, 16);
	expect_refused(&b, "array of 4294967296 u64 (34359738368 bytes) runs past end of file");
	b.len = 0;
	b_head(&b, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_ARRAY);
	b_u32(&b, GGUF_STRING);
	b_u64(&b, 1ull << 32);
	b_zeros(&b, 16);
	expect_refused(&b, "array of 4294967296 strings runs past end of file");
	b.len = 0;
	b_head(&b, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_ARRAY);
	b_u32(&b, GGUF_ARRAY);
	b_u64(&b, 1);
	b_zeros(&b, 16);
	expect_refused(&b, "nested arrays are not supported");
	b.len = 0;
	b_head(&b, 0, 1);
	b_str(&b, "k");
	b_u32(&b, GGUF_ARRAY);
	b_u32(&b, 77);
	b_u64(&b, 1);
	b_zeros(&b, 16);
	expect_refused(&b, "unknown array element type 77");
	b.len = 0;
	b_head(&b, 0, 2);
	b_kv_u32(&b, "k", 1);
	b_kv_u32(&b, "k", 2);
	expect_refused(&b, "duplicate key 'k'");
	b.len = 0;
	b_head(&b, 0, 1);
	b_kv_u32(&b, "general.alignment", 48);
	expect_refused(&b, "general.alignment 48 is not a power of two");
	b.len = 0;
	b_head(&b, 0, 1);
	b_kv_u32(&b, "general.alignment", 0);
	expect_refused(&b, "general.alignment 0 is not a power of two");
	b.len = 0;
	b_head(&b, 0, 1);
	b_str(&b, "general.alignment");
	b_u32(&b, GGUF_U64);
	b_u64(&b, 32);
	expect_refused(&b, "general.alignment has type u64, expected u32");

	/* tensor infos */
	one_tensor(&b, "w", 1, ne16, 4, 0, 64);
	expect_refused(&b, "tensor 'w': unknown tensor type 4");
	one_tensor(&b, "w", 1, ne16, 0xffffffffu, 0, 64);
	expect_refused(&b, "unknown tensor type 4294967295");
	one_tensor(&b, "w", 0, ne16, QD_TYPE_F32, 0, 64);
	expect_refused(&b, "n_dims 0 is not in 1..4");
	one_tensor(&b, "w", 5, ne5, QD_TYPE_F32, 0, 4096);
	expect_refused(&b, "n_dims 5 is not in 1..4");
	uint64_t zero_dim[2] = { 16, 0 };
	one_tensor(&b, "w", 2, zero_dim, QD_TYPE_F32, 0, 64);
	expect_refused(&b, "dimension 1 is 0");
	uint64_t huge_dims[3] = { 1ull << 32, 1ull << 32, 1 };
	one_tensor(&b, "w", 3, huge_dims, QD_TYPE_F32, 0, 64);
	expect_refused(&b, "element count overflows at dimension 1");
	uint64_t neg_dim[1] = { 1ull << 63 };
	one_tensor(&b, "w", 1, neg_dim, QD_TYPE_F32, 0, 64);
	expect_refused(&b, "element count overflows at dimension 0");
	uint64_t bytes_overflow[2] = { 1ull << 40, 1ull << 22 }; /* 2^62 elements, 2^64 bytes */
	one_tensor(&b, "w", 2, bytes_overflow, QD_TYPE_F32, 0, 64);
	expect_refused(&b, "data size overflows");
	uint64_t ne48[1] = { 48 };
	one_tensor(&b, "w", 1, ne48, QD_TYPE_Q4_0, 0, 64);
	expect_refused(&b, "first dimension 48 is not a multiple of the block size 32 of Q4_0");
	one_tensor(&b, "w", 4, ne4, QD_TYPE_Q4_K, 0, 64);
	expect_refused(&b, "first dimension 4 is not a multiple of the block size 256 of Q4_K");
	one_tensor(&b, "w", 1, ne16, QD_TYPE_F32, 8, 128);
	expect_refused(&b, "tensor 'w': offset 8 is not a multiple of the alignment 32");
	one_tensor(&b, "w", 1, ne16, QD_TYPE_F32, UINT64_MAX & ~31ull, 64);
	expect_refused(&b, "overflows");
	one_tensor(&b, "w", 1, ne16, QD_TYPE_F32, 0, 32);
	{
		/* the whole message, offsets taken from the builder */
		char want[200];
		size_t info_at = 24, data_off = (24 + 8 + 1 + 4 + 8 + 4 + 8 + 31) / 32 * 32;
		snprintf(want, sizeof(want), "tensor 'w': data [%zu, %zu) past end of file (size %zu) (at byte %zu)",
			 data_off, data_off + 64, b.len, info_at);
		char err[256];
		GgufFile *g;
		uint8_t *copy;
		CU_ASSERT(open_copy(b.p, b.len, &g, &copy, err, sizeof(err)) == -EBADMSG);
		CU_ASSERT(strcmp(err, want) == 0);
		if (strcmp(err, want))
			printf("\n    got '%s'\n    want '%s'", err, want);
		free(copy);
	}
	one_tensor(&b, "x123456789x123456789x123456789x123456789x123456789x123456789xxxxx", 1, ne16,
		   QD_TYPE_F32, 0, 64);
	expect_refused(&b, "tensor name length 65 exceeds the limit 64");
	one_tensor(&b, "", 1, ne16, QD_TYPE_F32, 0, 64);
	expect_refused(&b, "empty tensor name");
	one_tensor(&b, "w", 2, ne4, QD_TYPE_F32, 0, 64);
	b.len = 24 + 36; /* cut inside the offset field of the 41-byte tensor info */
	expect_refused(&b, "tensor 'w': truncated");

	/* two tensors */
	b.len = 0;
	b_head(&b, 2, 0);
	b_tensor(&b, "a", 1, ne16, QD_TYPE_F32, 0);
	b_tensor(&b, "b", 1, ne16, QD_TYPE_F32, 32);
	b_pad(&b, 32);
	b_zeros(&b, 128);
	expect_refused(&b, "tensor 'b' data [");
	expect_refused(&b, "overlaps tensor 'a'");
	b.len = 0;
	b_head(&b, 2, 0);
	b_tensor(&b, "a", 1, ne16, QD_TYPE_F32, 64);
	b_tensor(&b, "b", 1, ne16, QD_TYPE_F32, 64);
	b_pad(&b, 32);
	b_zeros(&b, 128);
	expect_refused(&b, "overlaps");
	b.len = 0;
	b_head(&b, 2, 0);
	b_tensor(&b, "a", 1, ne16, QD_TYPE_F32, 0);
	b_tensor(&b, "a", 1, ne16, QD_TYPE_F32, 64);
	b_pad(&b, 32);
	b_zeros(&b, 128);
	expect_refused(&b, "duplicate tensor name 'a'");
	/* the same two tensors with distinct names are fine */
	b.len = 0;
	b_head(&b, 2, 1);
	b_kv_u32(&b, "general.alignment", 64);
	b_tensor(&b, "a", 1, ne16, QD_TYPE_F32, 0);
	b_tensor(&b, "b", 1, ne16, QD_TYPE_F32, 64);
	b_pad(&b, 64);
	b_zeros(&b, 128);
	{
		char err[256];
		GgufFile *g;
		uint8_t *copy;
		CU_ASSERT(open_copy(b.p, b.len, &g, &copy, err, sizeof(err)) == 0);
		CU_ASSERT(gguf_n_tensors(g) == 2 && gguf_data_offset(g) % 64 == 0);
		gguf_close(g);
		free(copy);
	}
	free(b.p);
}

/* ---- mutation loop ---- */

static void build_small(Bld *b)
{
	uint64_t ne_a[2] = { 4, 2 }, ne_b[1] = { 32 }, ne_c[1] = { 8 };
	b_head(b, 3, 4);
	b_kv_u32(b, "general.alignment", 32);
	b_str(b, "general.architecture");
	b_u32(b, GGUF_STRING);
	b_str(b, "llama");
	b_str(b, "tokenizer.ggml.tokens");
	b_u32(b, GGUF_ARRAY);
	b_u32(b, GGUF_STRING);
	b_u64(b, 3);
	b_str(b, "<s>");
	b_str(b, "a");
	b_str(b, "bc");
	b_str(b, "scores");
	b_u32(b, GGUF_ARRAY);
	b_u32(b, GGUF_F32);
	b_u64(b, 3);
	b_zeros(b, 12);
	b_tensor(b, "a", 2, ne_a, QD_TYPE_F32, 0);
	b_tensor(b, "b", 1, ne_b, QD_TYPE_Q8_0, 32);
	b_tensor(b, "c", 1, ne_c, QD_TYPE_F16, 96);
	b_pad(b, 32);
	for (int i = 0; i < 112; i++)
		b_u8(b, (uint8_t)i);
}

static void test_mutations(void)
{
	Bld b = { 0 };
	build_small(&b);
	char err[256], fmt[128];
	GgufFile *g;
	uint8_t *copy;
	CU_ASSERT_FATAL(open_copy(b.p, b.len, &g, &copy, err, sizeof(err)) == 0);
	gguf_close(g);
	free(copy);
	uint64_t rng = 42;
	size_t accepted = 0, refused = 0;
	bool inside = true;
	for (int it = 0; it < 20000; it++) {
		size_t len = b.len;
		uint8_t *m = malloc(len);
		memcpy(m, b.p, len);
		int n_mut = 1 + (int)(tu_rand_u64(&rng) % 4);
		for (int k = 0; k < n_mut; k++) {
			size_t at = tu_rand_u64(&rng) % len;
			switch (tu_rand_u64(&rng) % 4) {
			case 0: m[at] ^= (uint8_t)(1u << (tu_rand_u64(&rng) % 8)); break;
			case 1: m[at] = (uint8_t)tu_rand_u64(&rng); break;
			case 2: m[at] = (tu_rand_u64(&rng) & 1) ? 0xff : 0; break;
			default: len = at + 1; break; /* truncate */
			}
		}
		int r = gguf_open_buffer(m, len, &g, err, sizeof(err));
		if (r == 0) {
			accepted++;
			for (size_t i = 0; i < gguf_n_tensors(g); i++) {
				const GgufTensor *t = gguf_tensor(g, i);
				const uint8_t *d = t->data;
				inside &= d >= m && t->nbytes <= len && d - m <= (ptrdiff_t)(len - t->nbytes);
				inside &= gguf_find_tensor(g, t->name) == t;
			}
			for (size_t i = 0; i < gguf_n_kv(g); i++) {
				gguf_kv_format(g, i, fmt, sizeof(fmt));
				const char *key = gguf_kv_key(g, i), *s;
				size_t sl;
				inside &= gguf_find_kv(g, key) == (int64_t)i;
				for (uint64_t e = 0; e < gguf_kv_arr_len(g, i); e++)
					if (gguf_get_arr_str(g, key, e, &s, &sl) == 0)
						inside &= (const uint8_t *)s >= m && (const uint8_t *)s + sl <= m + len;
			}
			gguf_close(g);
		} else {
			refused++;
			inside &= r == -EBADMSG && err[0] != 0;
		}
		free(m);
	}
	CU_ASSERT(inside);
	CU_ASSERT(accepted > 0 && refused > 0);
	free(b.p);
}

static void cleanup_tmpdir(void)
{
	if (tmpdir[0])
		rmdir(tmpdir);
}

int main(void)
{
	static const TuTest tests[] = {
		{ "real model header", test_real_model, skip_no_model },
		{ "open errors", test_open_errors, NULL },
		{ "typed getters", test_getters, NULL },
		{ "round trip: every KV type, 8 tensor types", test_roundtrip, NULL },
		{ "writer: bad alignment, abandon", test_writer_abandon, NULL },
		{ "rewrite the real model", test_rewrite_model, skip_no_model },
		{ "truncated real headers refused", test_truncations, skip_no_model },
		{ "corrupt headers refused", test_corrupt_headers, NULL },
		{ "20000 random mutations", test_mutations, NULL },
		{ NULL, NULL, NULL },
	};
	int r = tu_main("gguf", tests);
	cleanup_tmpdir();
	return r;
}
