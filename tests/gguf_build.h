/* tests/gguf_build.h: what the GGUF suites (test-gguf.c: well-formed files, the writer;
 * test-gguf-bad.c: malformed input is refused) share: a little-endian byte builder for
 * hand-made files, opening a copy of a buffer, the expected-refusal check, the model skip
 * and a private temporary directory.  Header-only, static: each suite is its own program. */
#ifndef QD_TESTS_GGUF_BUILD_H
#define QD_TESTS_GGUF_BUILD_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/engine/gguf.h"
#include "tests/testutil.h"

#define GB_UNUSED __attribute__((unused))

/* ---- a little-endian byte builder for hand-made files ---- */

typedef struct {
	uint8_t *p;
	size_t len, cap;
} Bld;

static GB_UNUSED void b_bytes(Bld *b, const void *d, size_t n)
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

static GB_UNUSED void b_u8(Bld *b, uint8_t v) { b_bytes(b, &v, 1); }
static GB_UNUSED void b_u32(Bld *b, uint32_t v) { b_bytes(b, &v, 4); }
static GB_UNUSED void b_u64(Bld *b, uint64_t v) { b_bytes(b, &v, 8); }

static GB_UNUSED void b_str(Bld *b, const char *s)
{
	b_u64(b, strlen(s));
	b_bytes(b, s, strlen(s));
}

static GB_UNUSED void b_head(Bld *b, uint64_t n_tensors, uint64_t n_kv)
{
	b_u32(b, GGUF_MAGIC);
	b_u32(b, 3);
	b_u64(b, n_tensors);
	b_u64(b, n_kv);
}

static GB_UNUSED void b_kv_u32(Bld *b, const char *key, uint32_t v)
{
	b_str(b, key);
	b_u32(b, GGUF_U32);
	b_u32(b, v);
}

static GB_UNUSED void b_tensor(Bld *b, const char *name, uint32_t n_dims, const uint64_t *ne,
			       uint32_t type, uint64_t offset)
{
	b_str(b, name);
	b_u32(b, n_dims);
	for (uint32_t d = 0; d < n_dims; d++)
		b_u64(b, ne[d]);
	b_u32(b, type);
	b_u64(b, offset);
}

static GB_UNUSED void b_pad(Bld *b, size_t align)
{
	while (b->len % align)
		b_u8(b, 0);
}

static GB_UNUSED void b_zeros(Bld *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		b_u8(b, 0);
}

/* Opens a copy of BUF in an exactly-sized heap block so ASan sees any over-read. */
static GB_UNUSED int open_copy(const void *buf, size_t len, GgufFile **ret, uint8_t **ret_copy,
				char *err, size_t errlen)
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
static GB_UNUSED void expect_refused_at(const char *test, const Bld *b, const char *what, int line)
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

static GB_UNUSED const char *skip_no_model(void)
{
	return access(tu_model_path(), R_OK) == 0 ? NULL : "model file not found (make model)";
}

/* Test files live in testutil's private directory (tu_tmp_path, removed by tu_tmp_cleanup
 * at the end of main); copied into BUF, which the callers keep.  Its creation is asserted
 * once a program, as before testutil took it over. */
static GB_UNUSED const char *tmp_path(const char *name, char *buf, size_t len)
{
	static bool checked;
	const char *p = tu_tmp_path(name);
	if (!checked) {
		CU_ASSERT_FATAL(p != NULL);
		checked = true;
	}
	snprintf(buf, len, "%s", p);
	return buf;
}

#endif
