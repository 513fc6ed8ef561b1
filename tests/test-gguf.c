/* tests/test-gguf.c: the GGUF reader and writer on well-formed files: the real model's
 * header, typed getters, round trips of every key/value and several tensor types, the
 * writer's refusals and abandon, and a rewrite of the real model.  Malformed input is
 * test-gguf-bad.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/engine/gguf.h"
#include "kernels/types.h"
#include "testutil.h"
#include "tests/gguf_build.h"

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

int main(void)
{
	static const TuTest tests[] = {
		{ "real model header", test_real_model, skip_no_model },
		{ "typed getters", test_getters, NULL },
		{ "round trip: every KV type, 8 tensor types", test_roundtrip, NULL },
		{ "writer: bad alignment, abandon", test_writer_abandon, NULL },
		{ "rewrite the real model", test_rewrite_model, skip_no_model },
		{ NULL, NULL, NULL },
	};
	int r = tu_main("gguf", tests);
	tu_tmp_cleanup();
	return r;
}
