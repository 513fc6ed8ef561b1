/* tests/test-gguf-bad.c: the GGUF reader refuses malformed input: open errors, every
 * truncation of a real header and crafted corrupt headers (each with its own message), and
 * a mutation loop that must never crash.  Well-formed files are test-gguf.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/engine/gguf.h"
#include "kernels/types.h"
#include "testutil.h"
#include "tests/gguf_build.h"

/* ---- refusals ---- */

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

/* A file of two 16-value F32 tensors NA and NB at data offsets OA and OB, 128 data bytes. */
static void two_tensors(Bld *b, const char *na, uint64_t oa, const char *nb, uint64_t ob)
{
	static const uint64_t ne16[1] = { 16 };
	b->len = 0;
	b_head(b, 2, 0);
	b_tensor(b, na, 1, ne16, QD_TYPE_F32, oa);
	b_tensor(b, nb, 1, ne16, QD_TYPE_F32, ob);
	b_pad(b, 32);
	b_zeros(b, 128);
}

/* The start of a file of one key-value pair: KEY and its value TYPE; the value follows. */
static void one_kv(Bld *b, const char *key, uint32_t type)
{
	b->len = 0;
	b_head(b, 0, 1);
	b_str(b, key);
	b_u32(b, type);
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
	one_kv(&b, "k", GGUF_STRING);
	b_u64(&b, 1ull << 31);
	b_zeros(&b, 64);
	expect_refused(&b, "key 'k': string length 2147483648 exceeds the limit");
	one_kv(&b, "k", GGUF_STRING);
	b_u64(&b, UINT64_MAX - 3); /* pos + len would wrap */
	b_zeros(&b, 64);
	expect_refused(&b, "string length 18446744073709551612 exceeds");
	one_kv(&b, "k", GGUF_STRING);
	b_u64(&b, 100);
	b_zeros(&b, 20);
	expect_refused(&b, "string length 100 runs past end of file (20 bytes left)");
	one_kv(&b, "", GGUF_U32);
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
	one_kv(&b, "k", 13);
	b_zeros(&b, 16);
	expect_refused(&b, "key 'k': unknown value type 13");
	one_kv(&b, "k", GGUF_BOOL);
	b_u8(&b, 2);
	b_zeros(&b, 16);
	expect_refused(&b, "bool value 2 is not 0 or 1");
	one_kv(&b, "k", GGUF_ARRAY);
	b_u32(&b, GGUF_U8);
	b_u64(&b, 1ull << 62);
	b_zeros(&b, 16);
	expect_refused(&b, "array of 4611686018427387904 elements exceeds the limit");
	one_kv(&b, "k", GGUF_ARRAY);
	b_u32(&b, GGUF_U64);
	b_u64(&b, 1ull << 32);
	b_zeros(&b, 16);
	expect_refused(&b, "array of 4294967296 u64 (34359738368 bytes) runs past end of file");
	one_kv(&b, "k", GGUF_ARRAY);
	b_u32(&b, GGUF_STRING);
	b_u64(&b, 1ull << 32);
	b_zeros(&b, 16);
	expect_refused(&b, "array of 4294967296 strings runs past end of file");
	one_kv(&b, "k", GGUF_ARRAY);
	b_u32(&b, GGUF_ARRAY);
	b_u64(&b, 1);
	b_zeros(&b, 16);
	expect_refused(&b, "nested arrays are not supported");
	one_kv(&b, "k", GGUF_ARRAY);
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
	one_kv(&b, "general.alignment", GGUF_U64);
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
	two_tensors(&b, "a", 0, "b", 32);
	expect_refused(&b, "tensor 'b' data [");
	expect_refused(&b, "overlaps tensor 'a'");
	two_tensors(&b, "a", 64, "b", 64);
	expect_refused(&b, "overlaps");
	two_tensors(&b, "a", 0, "a", 64);
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

int main(void)
{
	static const TuTest tests[] = {
		{ "open errors", test_open_errors, NULL },
		{ "truncated real headers refused", test_truncations, skip_no_model },
		{ "corrupt headers refused", test_corrupt_headers, NULL },
		{ "20000 random mutations", test_mutations, NULL },
		{ NULL, NULL, NULL },
	};
	int r = tu_main("gguf-bad", tests);
	tu_tmp_cleanup();
	return r;
}
