/* tests/gen-gguf.c: the tests' vocabulary-only GGUFs kept as text, so that no model-like
 * file is tracked in git.  `make test` builds $(O)/tests/data/NAME.gguf from
 * tests/data/NAME.gguf.txt with this program and the project's GGUF writer; `dump` wrote
 * those texts from the GGUFs that tools/tokenizer-ref.py and tools/spm-ref.py make.
 *
 *   gen-gguf dump IN.gguf > OUT.gguf.txt     (key/values only: a file with tensors is refused)
 *   gen-gguf build IN.gguf.txt OUT.gguf
 *
 * Text: a key/value a line, "KEY TYPE VALUE" (TYPE u32, i32, f32, bool or str), or for an
 * array "KEY arr TYPE N" followed by its N elements a line each.  f32 values are C hex
 * floats (exact); strings are the rest of the line with '\\' and bytes below 0x20 or 0x7f
 * written as \xNN. */
#include <errno.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/engine/gguf.h"
#include "tests/hexdigit.h"

static const char *const type_names[GGUF_TYPE_COUNT] = {
	[GGUF_U32] = "u32", [GGUF_I32] = "i32", [GGUF_F32] = "f32", [GGUF_BOOL] = "bool", [GGUF_STRING] = "str",
};

static int type_of(const char *name)
{
	for (int t = 0; t < GGUF_TYPE_COUNT; t++)
		if (type_names[t] && !strcmp(type_names[t], name))
			return t;
	return -1;
}

static void put_str(FILE *f, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f || c == '\\')
			fprintf(f, "\\x%02x", c);
		else
			fputc(c, f);
	}
	fputc('\n', f);
}

/* One element of TYPE at P (little-endian, maybe unaligned). */
static void put_scalar(FILE *f, int type, const void *p)
{
	uint32_t u;
	float v;
	switch (type) {
	case GGUF_U32: memcpy(&u, p, 4); fprintf(f, "%" PRIu32 "\n", u); break;
	case GGUF_I32: memcpy(&u, p, 4); fprintf(f, "%" PRId32 "\n", (int32_t)u); break;
	case GGUF_F32: memcpy(&v, p, 4); fprintf(f, "%a\n", (double)v); break;
	default: fprintf(f, "%d\n", *(const uint8_t *)p != 0); break; /* bool */
	}
}

static int dump(const char *path)
{
	char err[256] = "";
	GgufFile *g = NULL;
	int r = gguf_open(path, &g, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "gen-gguf: %s: %s\n", path, err);
		return 1;
	}
	if (gguf_n_tensors(g)) {
		fprintf(stderr, "gen-gguf: %s: has tensors; only key/values are kept as text\n", path);
		gguf_close(g);
		return 1;
	}
	for (size_t i = 0; i < gguf_n_kv(g); i++) {
		const char *key = gguf_kv_key(g, i);
		const int t = gguf_kv_type(g, i), at = gguf_kv_arr_type(g, i);
		const int et = t == GGUF_ARRAY ? at : t;
		if (et < 0 || et >= GGUF_TYPE_COUNT || !type_names[et]) {
			fprintf(stderr, "gen-gguf: %s: %s: a type the text form does not hold\n", path, key);
			gguf_close(g);
			return 1;
		}
		if (t == GGUF_ARRAY) {
			int type;
			uint64_t n;
			const void *data;
			gguf_get_arr(g, key, &type, &n, &data);
			printf("%s arr %s %" PRIu64 "\n", key, type_names[et], n);
			for (uint64_t k = 0; k < n; k++) {
				if (et == GGUF_STRING) {
					const char *s;
					size_t len;
					gguf_get_arr_str(g, key, k, &s, &len);
					put_str(stdout, s, len);
				} else {
					put_scalar(stdout, et, (const uint8_t *)data + k * (et == GGUF_BOOL ? 1 : 4));
				}
			}
		} else if (t == GGUF_STRING) {
			const char *s;
			size_t len;
			gguf_get_str(g, key, &s, &len);
			printf("%s str ", key);
			put_str(stdout, s, len);
		} else { /* the typed getters: u32 and i32 both fit an i64 */
			float v = 0;
			bool b = false;
			int64_t iv = 0;
			printf("%s %s ", key, type_names[t]);
			if (t == GGUF_F32 && gguf_get_f32(g, key, &v) == 0)
				printf("%a\n", (double)v);
			else if (t == GGUF_BOOL && gguf_get_bool(g, key, &b) == 0)
				printf("%d\n", b);
			else if (gguf_get_i64(g, key, &iv) == 0)
				printf("%" PRId64 "\n", iv);
		}
	}
	gguf_close(g);
	return 0;
}

/* The text being built from: its current line and that line's number (for errors). */
typedef struct {
	FILE *f;
	char *line;
	size_t cap;
	long lineno;
} Reader;

/* Reads the next line (without its '\n') into rd->line; its length, or -1 at the end. */
static ssize_t next_line(Reader *rd)
{
	ssize_t n = getline(&rd->line, &rd->cap, rd->f);
	if (n >= 0)
		rd->lineno++;
	if (n > 0 && rd->line[n - 1] == '\n')
		rd->line[--n] = 0;
	return n;
}

/* S unescaped in place; its new length, or -1 for a malformed escape. */
static ssize_t unescape(char *s, size_t n)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '\\') {
			s[o++] = s[i];
			continue;
		}
		if (i + 3 >= n || s[i + 1] != 'x' || hex_digit(s[i + 2]) < 0 || hex_digit(s[i + 3]) < 0)
			return -1;
		s[o++] = (char)(hex_digit(s[i + 2]) << 4 | hex_digit(s[i + 3]));
		i += 3;
	}
	return (ssize_t)o;
}

/* An element of TYPE parsed from S into OUT (4 bytes; bool 1). */
static int parse_scalar(int type, const char *s, void *out)
{
	char *end;
	errno = 0;
	if (type == GGUF_F32) {
		const float v = strtof(s, &end);
		memcpy(out, &v, 4);
	} else if (type == GGUF_BOOL) {
		const unsigned long v = strtoul(s, &end, 10);
		if (v > 1)
			return -EINVAL;
		*(uint8_t *)out = (uint8_t)v;
	} else if (type == GGUF_I32) {
		const long long v = strtoll(s, &end, 10);
		if (v < INT32_MIN || v > INT32_MAX)
			return -EINVAL;
		const int32_t w = (int32_t)v;
		memcpy(out, &w, 4);
	} else {
		const unsigned long long v = strtoull(s, &end, 10);
		if (v > UINT32_MAX)
			return -EINVAL;
		const uint32_t w = (uint32_t)v;
		memcpy(out, &w, 4);
	}
	return errno || end == s || *end ? -EINVAL : 0;
}

static int set_scalar(GgufWriter *w, const char *key, int type, const void *v)
{
	uint32_t u;
	float f;
	switch (type) {
	case GGUF_U32: memcpy(&u, v, 4); return gguf_writer_set_u32(w, key, u);
	case GGUF_I32: memcpy(&u, v, 4); return gguf_writer_set_i32(w, key, (int32_t)u);
	case GGUF_F32: memcpy(&f, v, 4); return gguf_writer_set_f32(w, key, f);
	default: return gguf_writer_set_bool(w, key, *(const uint8_t *)v != 0);
	}
}

/* Array KEY of N elements of TYPE from the next N lines. */
static int build_array(GgufWriter *w, Reader *rd, const char *key, int type, uint64_t n)
{
	char **strs = NULL;
	size_t *lens = NULL;
	uint8_t *vals = NULL;
	int r = 0;
	if (type == GGUF_STRING) {
		strs = calloc(n ? n : 1, sizeof(*strs));
		lens = calloc(n ? n : 1, sizeof(*lens));
	} else {
		vals = calloc(n ? n : 1, 4);
	}
	if ((type == GGUF_STRING && (!strs || !lens)) || (type != GGUF_STRING && !vals))
		r = -ENOMEM;
	for (uint64_t k = 0; k < n && r == 0; k++) {
		ssize_t len = next_line(rd);
		if (len < 0) {
			r = -EINVAL;
		} else if (type == GGUF_STRING) {
			if ((len = unescape(rd->line, (size_t)len)) < 0 || !(strs[k] = malloc((size_t)len + 1)))
				r = len < 0 ? -EINVAL : -ENOMEM;
			else {
				memcpy(strs[k], rd->line, (size_t)len);
				lens[k] = (size_t)len;
			}
		} else {
			r = parse_scalar(type, rd->line, vals + 4 * k);
		}
	}
	if (r == 0) {
		if (type == GGUF_STRING)
			r = gguf_writer_set_arr_str(w, key, (const char *const *)strs, lens, n);
		else if (type == GGUF_BOOL) { /* one byte an element */
			for (uint64_t k = 0; k < n; k++)
				vals[k] = vals[4 * k];
			r = gguf_writer_set_arr(w, key, type, vals, n);
		} else {
			r = gguf_writer_set_arr(w, key, type, vals, n);
		}
	}
	for (uint64_t k = 0; strs && k < n; k++)
		free(strs[k]);
	free(strs);
	free(lens);
	free(vals);
	return r;
}

static int build(const char *in, const char *out)
{
	Reader rd = { .f = fopen(in, "r") };
	if (!rd.f) {
		fprintf(stderr, "gen-gguf: %s: %s\n", in, strerror(errno));
		return 1;
	}
	GgufWriter *w = NULL;
	int r = gguf_writer_new(&w);
	while (r == 0 && next_line(&rd) >= 0) {
		char *sp1 = strchr(rd.line, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
		char key[256]; /* the key outlives the line: an array's elements are read into it */
		if (!sp1 || !sp2 || sp1 - rd.line >= (ptrdiff_t)sizeof(key)) {
			r = -EINVAL;
			break;
		}
		*sp1 = *sp2 = 0;
		memcpy(key, rd.line, (size_t)(sp1 - rd.line) + 1);
		const char *tname = sp1 + 1, *val = sp2 + 1;
		if (!strcmp(tname, "arr")) {
			char et[16];
			uint64_t cnt;
			int t;
			if (sscanf(val, "%15s %" SCNu64, et, &cnt) != 2 || (t = type_of(et)) < 0) {
				r = -EINVAL;
				break;
			}
			r = build_array(w, &rd, key, t, cnt);
			continue;
		}
		const int t = type_of(tname);
		if (t == GGUF_STRING) {
			const ssize_t len = unescape(sp2 + 1, strlen(sp2 + 1));
			r = len < 0 ? -EINVAL : gguf_writer_set_str(w, key, sp2 + 1, (size_t)len);
		} else if (t >= 0) {
			uint8_t v[4];
			r = parse_scalar(t, val, v);
			if (r == 0)
				r = set_scalar(w, key, t, v);
		} else {
			r = -EINVAL;
		}
	}
	if (r == 0)
		r = gguf_writer_begin(w, out);
	if (r == 0)
		r = gguf_writer_finish(w);
	if (r < 0)
		fprintf(stderr, "gen-gguf: %s:%ld: %s\n", in, rd.lineno, r == -EINVAL ? "malformed line" : strerror(-r));
	gguf_writer_free(w);
	free(rd.line);
	fclose(rd.f);
	return r < 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "dump"))
		return dump(argv[2]);
	if (argc == 4 && !strcmp(argv[1], "build"))
		return build(argv[2], argv[3]);
	fprintf(stderr, "usage: gen-gguf dump IN.gguf | gen-gguf build IN.gguf.txt OUT.gguf\n");
	return 2;
}
