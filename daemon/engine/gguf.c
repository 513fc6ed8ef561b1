/* daemon/engine/gguf.c: the GGUF reader.  gguf_parse() walks the header once with a
 * bounds-checked cursor, records offsets (never pointers) and checks every count, length,
 * type, shape and data range; only when all of it holds does it form pointers into the
 * buffer.  The accessors (gguf_kv.c) then cannot fail on memory-safety grounds; the
 * writer lives in gguf_write.c. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf_internal.h"
#include "kernels/types.h"

/* Values are memcpy'd straight out of the file. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF code assumes little-endian");

#define GGUF_MAX_ALIGNMENT 65536u

/* Smallest possible encodings: a KV is key length + 1 key byte + type + 1 value byte; a
 * tensor info is name length + 1 byte + n_dims + 1 dim + type + offset.  Arrays are sized
 * by what the bytes left could hold, not by the claimed count, so a tiny file claiming a
 * million entries costs nothing and still fails at the exact byte where it runs out. */
#define MIN_KV_BYTES 14u
#define MIN_TENSOR_BYTES 33u

/* ---- bounds-checked cursor ---- */

typedef struct {
	const uint8_t *p;
	uint64_t size, pos;
	char *err;
	size_t errlen;
	const char *ctx; /* "tensor 'x'" / "key 'y'" prefix for messages, or NULL */
} Cur;

static int __attribute__((format(printf, 3, 4))) fail(Cur *c, uint64_t at, const char *fmt, ...)
{
	if (!c->errlen)
		return -EBADMSG;
	size_t n = 0;
	if (c->ctx) {
		int k = snprintf(c->err, c->errlen, "%s: ", c->ctx);
		n = k < 0 ? 0 : (size_t)k < c->errlen ? (size_t)k : c->errlen - 1;
	}
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(c->err + n, c->errlen - n, fmt, ap);
	va_end(ap);
	if (k >= 0 && n + (size_t)k < c->errlen)
		snprintf(c->err + n + k, c->errlen - n - k, " (at byte %" PRIu64 ")", at);
	return -EBADMSG;
}

static uint64_t left(const Cur *c)
{
	return c->size - c->pos;
}

static int take(Cur *c, uint64_t n, const char *what, uint64_t *ret_at)
{
	if (left(c) < n)
		return fail(c, c->pos, "truncated: %s needs %" PRIu64 " bytes, %" PRIu64 " left",
			    what, n, left(c));
	*ret_at = c->pos;
	c->pos += n;
	return 0;
}

static int rd_u32(Cur *c, const char *what, uint32_t *ret)
{
	uint64_t at = 0;
	int r = take(c, 4, what, &at);
	if (r < 0)
		return r;
	memcpy(ret, c->p + at, 4);
	return 0;
}

static int rd_u64(Cur *c, const char *what, uint64_t *ret)
{
	uint64_t at = 0;
	int r = take(c, 8, what, &at);
	if (r < 0)
		return r;
	memcpy(ret, c->p + at, 8);
	return 0;
}

/* A string's u64 length and bytes: checks the length against LIMIT and the bytes left. */
static int rd_str(Cur *c, uint64_t limit, const char *what, uint64_t *ret_at, uint64_t *ret_len)
{
	uint64_t at = c->pos, len;
	if (left(c) < 8)
		return fail(c, at, "truncated: %s length needs 8 bytes, %" PRIu64 " left", what, left(c));
	memcpy(&len, c->p + at, 8);
	c->pos += 8;
	if (len > limit)
		return fail(c, at, "%s length %" PRIu64 " exceeds the limit %" PRIu64, what, len, limit);
	if (len > left(c))
		return fail(c, at, "%s length %" PRIu64 " runs past end of file (%" PRIu64 " bytes left)",
			    what, len, left(c));
	*ret_at = c->pos;
	*ret_len = len;
	c->pos += len;
	return 0;
}

/* Printable form of untrusted name bytes for messages (at most 64 of them). */
static const char *show(const uint8_t *s, uint64_t len, char *buf, size_t cap)
{
	size_t o = 0;
	for (uint64_t i = 0; i < len && i < 64 && o + 5 < cap; i++) {
		if (s[i] >= 0x20 && s[i] < 0x7f)
			buf[o++] = (char)s[i];
		else
			o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", s[i]);
	}
	if (len > 64 && o + 4 < cap)
		o += (size_t)snprintf(buf + o, cap - o, "...");
	buf[o] = 0;
	return buf;
}

/* ---- parsing ---- */

static int parse_value(Cur *c, GgufKv *kv)
{
	uint64_t at = c->pos;
	int r;
	kv->raw = c->pos;
	if (kv->type == GGUF_STRING) {
		r = rd_str(c, GGUF_MAX_STRING, "string", &kv->val, &kv->len);
	} else if (kv->type != GGUF_ARRAY) {
		r = take(c, gguf_type_size(kv->type), "value", &kv->val);
		if (r == 0 && kv->type == GGUF_BOOL && c->p[kv->val] > 1)
			r = fail(c, at, "bool value %u is not 0 or 1", c->p[kv->val]);
	} else {
		uint32_t et;
		if ((r = rd_u32(c, "array element type", &et)) < 0 ||
		    (r = rd_u64(c, "array length", &kv->n)) < 0)
			return r;
		if (et >= GGUF_TYPE_COUNT)
			return fail(c, at, "unknown array element type %" PRIu32, et);
		if (et == GGUF_ARRAY)
			return fail(c, at, "nested arrays are not supported");
		kv->arr_type = (int)et;
		if (kv->n > GGUF_MAX_ARRAY)
			return fail(c, at, "array of %" PRIu64 " elements exceeds the limit %llu", kv->n,
				    GGUF_MAX_ARRAY);
		kv->val = c->pos;
		if (et != GGUF_STRING) {
			/* n <= 2^32 and size <= 8: no overflow */
			uint64_t bytes = kv->n * gguf_type_size(et);
			if (bytes > left(c))
				return fail(c, at, "array of %" PRIu64 " %s (%" PRIu64
					    " bytes) runs past end of file (%" PRIu64 " bytes left)",
					    kv->n, gguf_type_name(et), bytes, left(c));
			if (et == GGUF_BOOL)
				for (uint64_t i = 0; i < kv->n; i++)
					if (c->p[c->pos + i] > 1)
						return fail(c, c->pos + i, "bool array element %" PRIu64
							    " is %u, not 0 or 1", i, c->p[c->pos + i]);
			c->pos += bytes;
		} else if (kv->n) {
			/* each element is at least its 8-byte length: bounds the index below */
			if (kv->n > left(c) / 8)
				return fail(c, at, "array of %" PRIu64 " strings runs past end of file (%"
					    PRIu64 " bytes left)", kv->n, left(c));
			kv->str_at = malloc(kv->n * sizeof(*kv->str_at));
			if (!kv->str_at)
				return -ENOMEM;
			for (uint64_t i = 0; i < kv->n; i++) {
				uint64_t len;
				if ((r = rd_str(c, GGUF_MAX_STRING, "array string", &kv->str_at[i], &len)) < 0)
					return r;
			}
		}
		r = 0;
	}
	kv->raw_end = c->pos;
	return r;
}

static int cmp_key(const void *a, const void *b, void *arg)
{
	const GgufFile *g = arg;
	return strcmp(g->kv[*(const uint32_t *)a].key, g->kv[*(const uint32_t *)b].key);
}

static int cmp_name(const void *a, const void *b, void *arg)
{
	const GgufFile *g = arg;
	return strcmp(g->t[*(const uint32_t *)a].name, g->t[*(const uint32_t *)b].name);
}

static int cmp_offset(const void *a, const void *b, void *arg)
{
	const GgufFile *g = arg;
	uint64_t x = g->t[*(const uint32_t *)a].offset, y = g->t[*(const uint32_t *)b].offset;
	if (x != y)
		return x < y ? -1 : 1;
	/* equal offsets: keep file order so the later tensor is reported */
	uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
	return i < j ? -1 : i > j;
}

/* Reads an untrusted name into a fresh NUL-terminated copy; rejects empty names and NULs. */
static int rd_name(Cur *c, uint64_t limit, const char *what, uint64_t *ret_at, char **ret)
{
	uint64_t at = c->pos, off, len;
	int r = rd_str(c, limit, what, &off, &len);
	if (r < 0)
		return r;
	if (len == 0)
		return fail(c, at, "empty %s", what);
	if (memchr(c->p + off, 0, len))
		return fail(c, at, "%s contains a NUL byte", what);
	char *s = malloc(len + 1);
	if (!s)
		return -ENOMEM;
	memcpy(s, c->p + off, len);
	s[len] = 0;
	*ret_at = at;
	*ret = s;
	return 0;
}

/* Room for N entries of at least MIN bytes each, or as many as the bytes left can hold. */
static size_t capacity(const Cur *c, size_t n, uint64_t min)
{
	uint64_t fit = left(c) / min + 1;
	return n < fit ? n : (size_t)fit;
}

static int parse_kvs(Cur *c, GgufFile *g, size_t n)
{
	char ctx[300], nb[300];
	size_t cap = capacity(c, n, MIN_KV_BYTES);
	int r;
	g->kv = calloc(cap ? cap : 1, sizeof(*g->kv));
	if (!g->kv)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		if (i == cap) /* cannot happen: cap entries need more bytes than were left */
			return fail(c, c->pos, "kv_count %zu cannot fit in the file", n);
		g->n_kv = i + 1;
		GgufKv *kv = &g->kv[i];
		kv->arr_type = -1;
		uint32_t type;
		if ((r = rd_name(c, GGUF_MAX_KEY, "key", &kv->key_at, &kv->key)) < 0)
			return r;
		snprintf(ctx, sizeof(ctx), "key '%s'",
			 show((const uint8_t *)kv->key, strlen(kv->key), nb, sizeof(nb)));
		c->ctx = ctx;
		uint64_t at = c->pos;
		if ((r = rd_u32(c, "value type", &type)) < 0)
			return r;
		if (type >= GGUF_TYPE_COUNT)
			return fail(c, at, "unknown value type %" PRIu32, type);
		kv->type = (int)type;
		if ((r = parse_value(c, kv)) < 0)
			return r;
		c->ctx = NULL;
	}
	if (!(g->kv_by_key = calloc(n ? n : 1, sizeof(uint32_t))))
		return -ENOMEM;
	for (size_t i = 0; i < g->n_kv; i++)
		g->kv_by_key[i] = (uint32_t)i;
	qsort_r(g->kv_by_key, g->n_kv, sizeof(uint32_t), cmp_key, g);
	for (size_t i = 1; i < g->n_kv; i++) {
		const GgufKv *a = &g->kv[g->kv_by_key[i - 1]], *b = &g->kv[g->kv_by_key[i]];
		if (strcmp(a->key, b->key) == 0) {
			const GgufKv *later = a->key_at > b->key_at ? a : b;
			return fail(c, later->key_at, "duplicate key '%s'",
				    show((const uint8_t *)later->key, strlen(later->key), nb, sizeof(nb)));
		}
	}
	g->alignment = GGUF_DEFAULT_ALIGNMENT;
	int64_t ai = gguf_find_kv(g, "general.alignment");
	if (ai >= 0) {
		const GgufKv *kv = &g->kv[ai];
		uint32_t a;
		if (kv->type != GGUF_U32)
			return fail(c, kv->key_at, "general.alignment has type %s, expected u32",
				    gguf_type_name(kv->type));
		memcpy(&a, c->p + kv->val, 4);
		if (a == 0 || a > GGUF_MAX_ALIGNMENT || (a & (a - 1)))
			return fail(c, kv->key_at, "general.alignment %" PRIu32
				    " is not a power of two in 1..%u", a, GGUF_MAX_ALIGNMENT);
		g->alignment = a;
	}
	return 0;
}

static int parse_tensor(Cur *c, GgufFile *g, GgufTensor *t, uint64_t *ret_at, char *ctx, size_t ctxlen)
{
	char nb[300];
	char *name;
	uint32_t n_dims, type;
	int r;
	if ((r = rd_name(c, GGUF_MAX_NAME, "tensor name", ret_at, &name)) < 0)
		return r;
	t->name = name;
	snprintf(ctx, ctxlen, "tensor '%s'", show((const uint8_t *)name, strlen(name), nb, sizeof(nb)));
	c->ctx = ctx;
	uint64_t at = c->pos;
	if ((r = rd_u32(c, "n_dims", &n_dims)) < 0)
		return r;
	if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
		return fail(c, at, "n_dims %" PRIu32 " is not in 1..%d", n_dims, GGUF_MAX_DIMS);
	t->n_dims = n_dims;
	uint64_t count = 1;
	for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
		uint64_t ne = 1;
		at = c->pos;
		if (d < n_dims && (r = rd_u64(c, "dimension", &ne)) < 0)
			return r;
		if (ne == 0)
			return fail(c, at, "dimension %" PRIu32 " is 0", d);
		if (ne > INT64_MAX || __builtin_mul_overflow(count, ne, &count) || count > INT64_MAX)
			return fail(c, at, "element count overflows at dimension %" PRIu32
				    " (%" PRIu64 ")", d, ne);
		t->ne[d] = (int64_t)ne;
	}
	at = c->pos;
	if ((r = rd_u32(c, "tensor type", &type)) < 0)
		return r;
	const QdTypeTraits *tr = type < QD_TYPE_COUNT ? qd_type_traits((int)type) : NULL;
	if (!tr)
		return fail(c, at, "unknown tensor type %" PRIu32, type);
	t->type = (int)type;
	uint64_t row;
	if ((uint64_t)t->ne[0] % (uint64_t)tr->blck)
		return fail(c, at, "first dimension %" PRId64 " is not a multiple of the block size %d of %s",
			    t->ne[0], tr->blck, tr->name);
	if (qd_row_size(t->type, (uint64_t)t->ne[0], &row) < 0 ||
	    __builtin_mul_overflow(row, count / (uint64_t)t->ne[0], &t->nbytes))
		return fail(c, at, "data size overflows");
	at = c->pos;
	if ((r = rd_u64(c, "tensor offset", &t->offset)) < 0)
		return r;
	if (t->offset % g->alignment)
		return fail(c, at, "offset %" PRIu64 " is not a multiple of the alignment %" PRIu32,
			    t->offset, g->alignment);
	c->ctx = NULL;
	return 0;
}

/* Data ranges: inside the file, and no two tensors sharing a byte. */
static int check_data(Cur *c, GgufFile *g, const uint64_t *info_at, uint32_t *order)
{
	char ctx[300], nb[300];
	for (size_t i = 0; i < g->n_tensors; i++) {
		GgufTensor *t = &g->t[i];
		uint64_t start, end;
		snprintf(ctx, sizeof(ctx), "tensor '%s'",
			 show((const uint8_t *)t->name, strlen(t->name), nb, sizeof(nb)));
		c->ctx = ctx;
		if (__builtin_add_overflow(g->data_off, t->offset, &start) ||
		    __builtin_add_overflow(start, t->nbytes, &end))
			return fail(c, info_at[i], "data offset %" PRIu64 " + size %" PRIu64 " overflows",
				    t->offset, t->nbytes);
		if (end > g->size)
			return fail(c, info_at[i], "data [%" PRIu64 ", %" PRIu64
				    ") past end of file (size %" PRIu64 ")", start, end, g->size);
		order[i] = (uint32_t)i;
	}
	c->ctx = NULL;
	qsort_r(order, g->n_tensors, sizeof(uint32_t), cmp_offset, g);
	for (size_t i = 1; i < g->n_tensors; i++) {
		const GgufTensor *a = &g->t[order[i - 1]], *b = &g->t[order[i]];
		if (a->offset + a->nbytes > b->offset) {
			char nb2[300];
			return fail(c, info_at[order[i]], "tensor '%s' data [%" PRIu64 ", %" PRIu64
				    ") overlaps tensor '%s' [%" PRIu64 ", %" PRIu64 ")",
				    show((const uint8_t *)b->name, strlen(b->name), nb, sizeof(nb)),
				    g->data_off + b->offset, g->data_off + b->offset + b->nbytes,
				    show((const uint8_t *)a->name, strlen(a->name), nb2, sizeof(nb2)),
				    g->data_off + a->offset, g->data_off + a->offset + a->nbytes);
		}
	}
	return 0;
}

static int parse_tensors(Cur *c, GgufFile *g, size_t n)
{
	char ctx[300], nb[300];
	size_t cap = capacity(c, n, MIN_TENSOR_BYTES);
	uint64_t *info_at = calloc(cap ? cap : 1, sizeof(*info_at));
	uint32_t *order = NULL;
	int r = -ENOMEM;
	g->t = calloc(cap ? cap : 1, sizeof(*g->t));
	if (!info_at || !g->t)
		goto out;
	for (size_t i = 0; i < n; i++) {
		if (i == cap) { /* cannot happen, as in parse_kvs */
			r = fail(c, c->pos, "tensor_count %zu cannot fit in the file", n);
			goto out;
		}
		g->n_tensors = i + 1;
		if ((r = parse_tensor(c, g, &g->t[i], &info_at[i], ctx, sizeof(ctx))) < 0)
			goto out;
	}
	c->ctx = NULL;
	r = -ENOMEM;
	g->t_by_name = calloc(n ? n : 1, sizeof(uint32_t));
	order = calloc(n ? n : 1, sizeof(*order));
	if (!g->t_by_name || !order)
		goto out;
	for (size_t i = 0; i < g->n_tensors; i++)
		g->t_by_name[i] = (uint32_t)i;
	qsort_r(g->t_by_name, g->n_tensors, sizeof(uint32_t), cmp_name, g);
	for (size_t i = 1; i < g->n_tensors; i++) {
		uint32_t a = g->t_by_name[i - 1], b = g->t_by_name[i];
		if (strcmp(g->t[a].name, g->t[b].name) == 0) {
			uint32_t later = a > b ? a : b;
			r = fail(c, info_at[later], "duplicate tensor name '%s'",
				 show((const uint8_t *)g->t[later].name, strlen(g->t[later].name), nb,
				      sizeof(nb)));
			goto out;
		}
	}
	/* the header ends where the infos end; data starts at the next aligned offset */
	g->data_off = (c->pos + g->alignment - 1) / g->alignment * g->alignment;
	if ((r = check_data(c, g, info_at, order)) < 0)
		goto out;
	for (size_t i = 0; i < g->n_tensors; i++)
		g->t[i].data = g->base + g->data_off + g->t[i].offset;
	r = 0;
out:
	free(info_at);
	free(order);
	return r;
}

static int gguf_parse(GgufFile *g, char *err, size_t errlen)
{
	Cur c = { .p = g->base, .size = g->size, .err = err, .errlen = errlen };
	uint32_t magic, version;
	uint64_t n_tensors, n_kv;
	int r;
	if (g->size == 0)
		return fail(&c, 0, "empty file");
	if ((r = rd_u32(&c, "magic", &magic)) < 0)
		return r;
	if (magic != GGUF_MAGIC)
		return fail(&c, 0, "bad magic 0x%08" PRIx32 ", not a GGUF file", magic);
	if ((r = rd_u32(&c, "version", &version)) < 0)
		return r;
	if (version == 1)
		return fail(&c, 4, "GGUF version 1 is not supported (only versions 2 and 3)");
	if (version == 0x02000000u || version == 0x03000000u)
		return fail(&c, 4, "big-endian GGUF files are not supported");
	if (version != 2 && version != 3)
		return fail(&c, 4, "unsupported GGUF version %" PRIu32 " (only versions 2 and 3)", version);
	g->version = version;
	if ((r = rd_u64(&c, "tensor_count", &n_tensors)) < 0)
		return r;
	if (n_tensors > GGUF_MAX_TENSORS)
		return fail(&c, 8, "tensor_count %" PRIu64 " exceeds the limit %u", n_tensors,
			    GGUF_MAX_TENSORS);
	if ((r = rd_u64(&c, "kv_count", &n_kv)) < 0)
		return r;
	if (n_kv > GGUF_MAX_KV)
		return fail(&c, 16, "kv_count %" PRIu64 " exceeds the limit %u", n_kv, GGUF_MAX_KV);
	if ((r = parse_kvs(&c, g, (size_t)n_kv)) < 0)
		return r;
	return parse_tensors(&c, g, (size_t)n_tensors);
}

static int open_common(GgufFile *g, GgufFile **ret, char *err, size_t errlen)
{
	if (errlen)
		err[0] = 0;
	int r = gguf_parse(g, err, errlen);
	if (r < 0) {
		if (r == -ENOMEM && errlen)
			snprintf(err, errlen, "out of memory");
		gguf_close(g);
		return r;
	}
	*ret = g;
	return 0;
}

int gguf_open_buffer(const void *buf, size_t len, GgufFile **ret, char *err, size_t errlen)
{
	GgufFile *g = calloc(1, sizeof(*g));
	if (!g) {
		if (errlen)
			snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	g->base = buf;
	g->size = len;
	return open_common(g, ret, err, errlen);
}

int gguf_open(const char *path, GgufFile **ret, char *err, size_t errlen)
{
	struct stat st;
	int r, fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		r = -errno;
		if (fd >= 0)
			close(fd);
		if (errlen)
			snprintf(err, errlen, "%s", strerror(-r));
		return r;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		r = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
		if (errlen)
			snprintf(err, errlen, "%s", S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
		return r;
	}
	if (st.st_size == 0) {
		close(fd);
		return gguf_open_buffer("", 0, ret, err, errlen);
	}
	GgufFile *g = calloc(1, sizeof(*g));
	void *map = MAP_FAILED;
	if (!g)
		r = -ENOMEM;
	else if ((uint64_t)st.st_size > SIZE_MAX)
		r = -EFBIG;
	else if ((map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0)) == MAP_FAILED)
		r = -errno;
	else
		r = 0;
	close(fd);
	if (r < 0) {
		free(g);
		if (errlen)
			snprintf(err, errlen, "mmap: %s", strerror(-r));
		return r;
	}
	g->map = map;
	g->base = map;
	g->size = (uint64_t)st.st_size;
	return open_common(g, ret, err, errlen);
}

void gguf_close(GgufFile *g)
{
	if (!g)
		return;
	if (g->kv)
		for (size_t i = 0; i < g->n_kv; i++) {
			free(g->kv[i].key);
			free(g->kv[i].str_at);
		}
	if (g->t)
		for (size_t i = 0; i < g->n_tensors; i++)
			free((char *)g->t[i].name);
	free(g->kv);
	free(g->t);
	free(g->kv_by_key);
	free(g->t_by_name);
	if (g->map)
		munmap(g->map, (size_t)g->size);
	free(g);
}
