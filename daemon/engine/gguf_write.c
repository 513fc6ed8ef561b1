/* daemon/engine/gguf_write.c: the streaming GGUF writer.  Key/values are encoded into
 * their file form when set, so writing the header is a straight copy and copying a value
 * out of another file (any type) is a memcpy of its bytes.  Tensor data goes through a
 * 1 MiB buffer to PATH.tmp; the file only appears under PATH once complete and fsynced. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf_internal.h"
#include "kernels/types.h"

#define WBUF_SIZE (1u << 20)
#define MAX_ALIGNMENT 65536u

typedef struct {
	char *key;
	int type;
	uint8_t *val; /* encoded value: what follows the u32 type field in the file */
	size_t len;
} WKv;

typedef struct {
	char *name;
	int type;
	uint32_t n_dims;
	uint64_t ne[GGUF_MAX_DIMS];
	uint64_t nbytes, offset;
} WTensor;

enum { W_DECLARE, W_DATA, W_DONE, W_FAILED };

struct GgufWriter {
	WKv *kv;
	size_t n_kv, cap_kv;
	WTensor *t;
	size_t n_t, cap_t;
	int state;
	int error;           /* what failed, once state is W_FAILED */
	int fd;
	char *path, *tmp;
	uint32_t alignment;
	size_t cur;          /* tensor being appended */
	uint64_t cur_done;   /* bytes of it written */
	uint64_t total, appended; /* tensor bytes declared / written, padding excluded */
	uint8_t *buf;
	size_t used;
};

int gguf_writer_new(GgufWriter **ret)
{
	GgufWriter *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->fd = -1;
	w->state = W_DECLARE;
	*ret = w;
	return 0;
}

void gguf_writer_free(GgufWriter *w)
{
	if (!w)
		return;
	if (w->fd >= 0)
		close(w->fd);
	if (w->tmp && w->state != W_DONE)
		unlink(w->tmp);
	for (size_t i = 0; i < w->n_kv; i++) {
		free(w->kv[i].key);
		free(w->kv[i].val);
	}
	for (size_t i = 0; i < w->n_t; i++)
		free(w->t[i].name);
	free(w->kv);
	free(w->t);
	free(w->path);
	free(w->tmp);
	free(w->buf);
	free(w);
}

/* ---- key/values ---- */

/* Stores VAL (malloc'd, ownership taken even on failure) under KEY. */
static int set_value(GgufWriter *w, const char *key, int type, uint8_t *val, size_t len)
{
	size_t klen = key ? strlen(key) : 0;
	if (w->state != W_DECLARE || klen == 0 || klen > GGUF_MAX_KEY) {
		free(val);
		return -EINVAL;
	}
	for (size_t i = 0; i < w->n_kv; i++)
		if (strcmp(w->kv[i].key, key) == 0) {
			free(w->kv[i].val);
			w->kv[i] = (WKv){ w->kv[i].key, type, val, len };
			return 0;
		}
	if (w->n_kv >= GGUF_MAX_KV) {
		free(val);
		return -E2BIG;
	}
	if (w->n_kv == w->cap_kv) {
		size_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
		WKv *nk = realloc(w->kv, cap * sizeof(*nk));
		if (!nk) {
			free(val);
			return -ENOMEM;
		}
		w->kv = nk;
		w->cap_kv = cap;
	}
	char *k = strdup(key);
	if (!k) {
		free(val);
		return -ENOMEM;
	}
	w->kv[w->n_kv++] = (WKv){ k, type, val, len };
	return 0;
}

static int set_scalar(GgufWriter *w, const char *key, int type, const void *v)
{
	size_t n = gguf_type_size(type);
	uint8_t *val = malloc(n);
	if (!val)
		return -ENOMEM;
	memcpy(val, v, n);
	return set_value(w, key, type, val, n);
}

int gguf_writer_set_u32(GgufWriter *w, const char *key, uint32_t v)
{
	return set_scalar(w, key, GGUF_U32, &v);
}

int gguf_writer_set_i32(GgufWriter *w, const char *key, int32_t v)
{
	return set_scalar(w, key, GGUF_I32, &v);
}

int gguf_writer_set_u64(GgufWriter *w, const char *key, uint64_t v)
{
	return set_scalar(w, key, GGUF_U64, &v);
}

int gguf_writer_set_f32(GgufWriter *w, const char *key, float v)
{
	return set_scalar(w, key, GGUF_F32, &v);
}

int gguf_writer_set_bool(GgufWriter *w, const char *key, bool v)
{
	uint8_t b = v;
	return set_scalar(w, key, GGUF_BOOL, &b);
}

int gguf_writer_set_str(GgufWriter *w, const char *key, const char *s, size_t len)
{
	if ((!s && len) || len > GGUF_MAX_STRING)
		return -EINVAL;
	uint8_t *val = malloc(8 + len);
	uint64_t l = len;
	if (!val)
		return -ENOMEM;
	memcpy(val, &l, 8);
	if (len)
		memcpy(val + 8, s, len);
	return set_value(w, key, GGUF_STRING, val, 8 + len);
}

int gguf_writer_set_arr(GgufWriter *w, const char *key, int elem_type, const void *data, uint64_t n)
{
	size_t es = gguf_type_size(elem_type);
	if (es == 0 || n > GGUF_MAX_ARRAY || (!data && n) || n > (SIZE_MAX - 12) / es)
		return -EINVAL;
	if (elem_type == GGUF_BOOL)
		for (uint64_t i = 0; i < n; i++)
			if (((const uint8_t *)data)[i] > 1)
				return -EINVAL; /* readers refuse bools other than 0 and 1 */
	size_t bytes = (size_t)n * es;
	uint8_t *val = malloc(12 + bytes);
	uint32_t et = (uint32_t)elem_type;
	if (!val)
		return -ENOMEM;
	memcpy(val, &et, 4);
	memcpy(val + 4, &n, 8);
	if (bytes)
		memcpy(val + 12, data, bytes);
	return set_value(w, key, GGUF_ARRAY, val, 12 + bytes);
}

int gguf_writer_set_arr_str(GgufWriter *w, const char *key, const char *const *strs,
			    const size_t *lens, uint64_t n)
{
	size_t total = 12;
	if (n > GGUF_MAX_ARRAY || (n && (!strs || !lens)))
		return -EINVAL;
	for (uint64_t i = 0; i < n; i++)
		if (lens[i] > GGUF_MAX_STRING || (!strs[i] && lens[i]) ||
		    __builtin_add_overflow(total, 8 + lens[i], &total))
			return -EINVAL;
	uint8_t *val = malloc(total), *p = val + 12;
	uint32_t et = GGUF_STRING;
	if (!val)
		return -ENOMEM;
	memcpy(val, &et, 4);
	memcpy(val + 4, &n, 8);
	for (uint64_t i = 0; i < n; i++) {
		uint64_t l = lens[i];
		memcpy(p, &l, 8);
		if (l)
			memcpy(p + 8, strs[i], l);
		p += 8 + l;
	}
	return set_value(w, key, GGUF_ARRAY, val, total);
}

int gguf_writer_copy_kv(GgufWriter *w, const GgufFile *src, size_t i)
{
	const void *raw;
	size_t len;
	int r = gguf_kv_raw(src, i, &raw, &len);
	if (r < 0)
		return r;
	uint8_t *val = malloc(len ? len : 1);
	if (!val)
		return -ENOMEM;
	memcpy(val, raw, len);
	return set_value(w, gguf_kv_key(src, i), gguf_kv_type(src, i), val, len);
}

/* ---- tensors ---- */

int gguf_writer_add_tensor(GgufWriter *w, const char *name, int type, uint32_t n_dims,
			   const int64_t *ne)
{
	const QdTypeTraits *tr = qd_type_traits(type);
	size_t nlen = name ? strlen(name) : 0;
	uint64_t count = 1, row, nbytes;
	if (w->state != W_DECLARE || nlen == 0 || nlen > GGUF_MAX_NAME || !tr || n_dims < 1 ||
	    n_dims > GGUF_MAX_DIMS || !ne)
		return -EINVAL;
	for (uint32_t d = 0; d < n_dims; d++)
		if (ne[d] < 1 || __builtin_mul_overflow(count, (uint64_t)ne[d], &count) ||
		    count > INT64_MAX)
			return -EINVAL;
	if (qd_row_size(type, (uint64_t)ne[0], &row) < 0 ||
	    __builtin_mul_overflow(row, count / (uint64_t)ne[0], &nbytes) ||
	    nbytes > INT64_MAX - w->total)
		return -EINVAL;
	for (size_t i = 0; i < w->n_t; i++)
		if (strcmp(w->t[i].name, name) == 0)
			return -EEXIST;
	if (w->n_t >= GGUF_MAX_TENSORS)
		return -E2BIG;
	if (w->n_t == w->cap_t) {
		size_t cap = w->cap_t ? w->cap_t * 2 : 64;
		WTensor *nt = realloc(w->t, cap * sizeof(*nt));
		if (!nt)
			return -ENOMEM;
		w->t = nt;
		w->cap_t = cap;
	}
	WTensor *t = &w->t[w->n_t];
	*t = (WTensor){ .type = type, .n_dims = n_dims, .nbytes = nbytes };
	for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
		t->ne[d] = d < n_dims ? (uint64_t)ne[d] : 1;
	if (!(t->name = strdup(name)))
		return -ENOMEM;
	w->n_t++;
	w->total += nbytes;
	return 0;
}

/* ---- output ---- */

static int write_all(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n) {
		ssize_t k = write(fd, b, n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		b += k;
		n -= (size_t)k;
	}
	return 0;
}

static int flush(GgufWriter *w)
{
	int r = write_all(w->fd, w->buf, w->used);
	w->used = 0;
	return r;
}

static int out(GgufWriter *w, const void *p, size_t n)
{
	int r;
	if (w->used + n > WBUF_SIZE) {
		if ((r = flush(w)) < 0)
			return r;
		if (n >= WBUF_SIZE)
			return write_all(w->fd, p, n);
	}
	memcpy(w->buf + w->used, p, n);
	w->used += n;
	return 0;
}

static int out_u32(GgufWriter *w, uint32_t v) { return out(w, &v, 4); }
static int out_u64(GgufWriter *w, uint64_t v) { return out(w, &v, 8); }

static int out_zeros(GgufWriter *w, uint64_t n)
{
	static const uint8_t zeros[4096];
	int r = 0;
	while (n && r == 0) {
		size_t k = n < sizeof(zeros) ? (size_t)n : sizeof(zeros);
		r = out(w, zeros, k);
		n -= k;
	}
	return r;
}

static uint64_t align_up(uint64_t x, uint32_t a)
{
	return (x + a - 1) / a * a;
}

/* general.alignment if set (it must be a u32 power of two), else the default. */
static int pick_alignment(const GgufWriter *w, uint32_t *ret)
{
	*ret = GGUF_DEFAULT_ALIGNMENT;
	for (size_t i = 0; i < w->n_kv; i++) {
		if (strcmp(w->kv[i].key, "general.alignment"))
			continue;
		uint32_t a;
		if (w->kv[i].type != GGUF_U32)
			return -EINVAL;
		memcpy(&a, w->kv[i].val, 4);
		if (a == 0 || a > MAX_ALIGNMENT || (a & (a - 1)))
			return -EINVAL;
		*ret = a;
	}
	return 0;
}

static int fail(GgufWriter *w, int r)
{
	w->state = W_FAILED;
	w->error = r;
	return r;
}

static int write_header(GgufWriter *w)
{
	uint64_t pos = 24;
	int r;
	if ((r = out_u32(w, GGUF_MAGIC)) < 0 || (r = out_u32(w, 3)) < 0 ||
	    (r = out_u64(w, w->n_t)) < 0 || (r = out_u64(w, w->n_kv)) < 0)
		return r;
	for (size_t i = 0; i < w->n_kv; i++) {
		const WKv *kv = &w->kv[i];
		size_t kl = strlen(kv->key);
		if ((r = out_u64(w, kl)) < 0 || (r = out(w, kv->key, kl)) < 0 ||
		    (r = out_u32(w, (uint32_t)kv->type)) < 0 || (r = out(w, kv->val, kv->len)) < 0)
			return r;
		pos += 12 + kl + kv->len;
	}
	uint64_t off = 0;
	for (size_t i = 0; i < w->n_t; i++) {
		WTensor *t = &w->t[i];
		size_t nl = strlen(t->name);
		t->offset = off;
		off = align_up(off + t->nbytes, w->alignment);
		if ((r = out_u64(w, nl)) < 0 || (r = out(w, t->name, nl)) < 0 ||
		    (r = out_u32(w, t->n_dims)) < 0 || (r = out(w, t->ne, 8 * t->n_dims)) < 0 ||
		    (r = out_u32(w, (uint32_t)t->type)) < 0 || (r = out_u64(w, t->offset)) < 0)
			return r;
		pos += 8 + nl + 4 + 8 * t->n_dims + 4 + 8;
	}
	return out_zeros(w, align_up(pos, w->alignment) - pos);
}

int gguf_writer_begin(GgufWriter *w, const char *path)
{
	int r;
	if (w->state != W_DECLARE || !path || !*path)
		return -EINVAL;
	if ((r = pick_alignment(w, &w->alignment)) < 0)
		return r;
	w->path = strdup(path);
	w->buf = malloc(WBUF_SIZE);
	if (!w->path || !w->buf || asprintf(&w->tmp, "%s.tmp", path) < 0) {
		w->tmp = NULL;
		return fail(w, -ENOMEM);
	}
	/* O_NOFOLLOW: a symlink planted at PATH.tmp must not redirect the write */
	w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (w->fd < 0) {
		r = -errno;
		free(w->tmp); /* not ours: nothing to remove */
		w->tmp = NULL;
		return fail(w, r);
	}
	w->state = W_DATA;
	if ((r = write_header(w)) < 0)
		return fail(w, r);
	return 0;
}

int gguf_writer_append(GgufWriter *w, const void *data, size_t n)
{
	const uint8_t *p = data;
	int r;
	if (w->state == W_FAILED)
		return w->error;
	if (w->state != W_DATA || (!data && n) || n > w->total - w->appended)
		return -EINVAL;
	while (n) {
		WTensor *t = &w->t[w->cur];
		uint64_t k = t->nbytes - w->cur_done;
		if (k > n)
			k = n;
		if ((r = out(w, p, (size_t)k)) < 0)
			return fail(w, r);
		p += k;
		n -= (size_t)k;
		w->appended += k;
		w->cur_done += k;
		if (w->cur_done == t->nbytes) {
			uint64_t end = t->offset + t->nbytes;
			if ((r = out_zeros(w, align_up(end, w->alignment) - end)) < 0)
				return fail(w, r);
			w->cur++;
			w->cur_done = 0;
		}
	}
	return 0;
}

/* Makes the rename itself durable.  Best effort: some filesystems refuse fsync on a
 * directory, and the file's own data is already on disk by then. */
static void sync_dir(const char *path)
{
	char *dir = strdup(path);
	if (!dir)
		return;
	char *slash = strrchr(dir, '/');
	const char *d = ".";
	if (slash) {
		slash[slash == dir ? 1 : 0] = 0;
		d = dir;
	}
	int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		(void)fsync(fd);
		close(fd);
	}
	free(dir);
}

int gguf_writer_finish(GgufWriter *w)
{
	int r;
	if (w->state == W_FAILED)
		return w->error;
	if (w->state != W_DATA || w->appended != w->total)
		return -EINVAL;
	if ((r = flush(w)) < 0)
		return fail(w, r);
	if (fsync(w->fd) < 0)
		return fail(w, -errno);
	r = close(w->fd);
	w->fd = -1;
	if (r < 0)
		return fail(w, -errno);
	if (rename(w->tmp, w->path) < 0)
		return fail(w, -errno);
	w->state = W_DONE;
	sync_dir(w->path);
	return 0;
}
