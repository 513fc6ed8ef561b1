/* daemon/engine/gguf_kv.c: accessors of a parsed GGUF file: counts, key/value lookup
 * and typed getters, tensor lookup, and the display form of values.  Everything here
 * reads offsets gguf.c has already validated, so none of it can go out of bounds. */
#include "gguf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "gguf_internal.h"

static const uint8_t type_size[GGUF_TYPE_COUNT] = {
	[GGUF_U8] = 1, [GGUF_I8] = 1, [GGUF_U16] = 2, [GGUF_I16] = 2, [GGUF_U32] = 4,
	[GGUF_I32] = 4, [GGUF_F32] = 4, [GGUF_BOOL] = 1, [GGUF_U64] = 8, [GGUF_I64] = 8,
	[GGUF_F64] = 8,
};

static const char *const type_names[GGUF_TYPE_COUNT] = {
	"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
	"f64",
};

size_t gguf_type_size(int type)
{
	return type >= 0 && type < GGUF_TYPE_COUNT ? type_size[type] : 0;
}

const char *gguf_type_name(int type)
{
	return type >= 0 && type < GGUF_TYPE_COUNT ? type_names[type] : "?";
}

/* ---- accessors ---- */

uint32_t gguf_version(const GgufFile *g) { return g->version; }
uint32_t gguf_alignment(const GgufFile *g) { return g->alignment; }
uint64_t gguf_file_size(const GgufFile *g) { return g->size; }
uint64_t gguf_data_offset(const GgufFile *g) { return g->data_off; }
size_t gguf_n_kv(const GgufFile *g) { return g->n_kv; }
size_t gguf_n_tensors(const GgufFile *g) { return g->n_tensors; }

const char *gguf_kv_key(const GgufFile *g, size_t i)
{
	return i < g->n_kv ? g->kv[i].key : NULL;
}

int gguf_kv_type(const GgufFile *g, size_t i)
{
	return i < g->n_kv ? g->kv[i].type : -1;
}

int gguf_kv_arr_type(const GgufFile *g, size_t i)
{
	return i < g->n_kv ? g->kv[i].arr_type : -1;
}

uint64_t gguf_kv_arr_len(const GgufFile *g, size_t i)
{
	return i < g->n_kv && g->kv[i].type == GGUF_ARRAY ? g->kv[i].n : 0;
}

int gguf_kv_raw(const GgufFile *g, size_t i, const void **ret, size_t *ret_len)
{
	if (i >= g->n_kv)
		return -EINVAL;
	*ret = g->base + g->kv[i].raw;
	*ret_len = (size_t)(g->kv[i].raw_end - g->kv[i].raw);
	return 0;
}

int64_t gguf_find_kv(const GgufFile *g, const char *key)
{
	size_t lo = 0, hi = g->n_kv;
	if (!key)
		return -ENOENT;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(g->kv[g->kv_by_key[mid]].key, key);
		if (c == 0)
			return g->kv_by_key[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -ENOENT;
}

const GgufTensor *gguf_tensor(const GgufFile *g, size_t i)
{
	return i < g->n_tensors ? &g->t[i] : NULL;
}

const GgufTensor *gguf_find_tensor(const GgufFile *g, const char *name)
{
	size_t lo = 0, hi = g->n_tensors;
	if (!name)
		return NULL;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(g->t[g->t_by_name[mid]].name, name);
		if (c == 0)
			return &g->t[g->t_by_name[mid]];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Integer value at P of integer type TYPE; false for non-integer types. */
static bool int_value(int type, const uint8_t *p, bool *ret_neg, uint64_t *ret_mag)
{
	int64_t s;
	uint64_t u;
	switch (type) {
	case GGUF_U8: u = p[0]; goto uns;
	case GGUF_U16: { uint16_t v; memcpy(&v, p, 2); u = v; goto uns; }
	case GGUF_U32: { uint32_t v; memcpy(&v, p, 4); u = v; goto uns; }
	case GGUF_U64: memcpy(&u, p, 8); goto uns;
	case GGUF_I8: s = (int8_t)p[0]; break;
	case GGUF_I16: { int16_t v; memcpy(&v, p, 2); s = v; break; }
	case GGUF_I32: { int32_t v; memcpy(&v, p, 4); s = v; break; }
	case GGUF_I64: memcpy(&s, p, 8); break;
	default: return false;
	}
	*ret_neg = s < 0;
	*ret_mag = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
	return true;
uns:
	*ret_neg = false;
	*ret_mag = u;
	return true;
}

static const GgufKv *lookup(const GgufFile *g, const char *key)
{
	int64_t i = gguf_find_kv(g, key);
	return i < 0 ? NULL : &g->kv[i];
}

int gguf_get_u32(const GgufFile *g, const char *key, uint32_t *ret)
{
	const GgufKv *kv = lookup(g, key);
	bool neg;
	uint64_t m;
	if (!kv)
		return -ENOENT;
	if (!int_value(kv->type, g->base + kv->val, &neg, &m) || neg || m > UINT32_MAX)
		return -EINVAL;
	*ret = (uint32_t)m;
	return 0;
}

int gguf_get_i64(const GgufFile *g, const char *key, int64_t *ret)
{
	const GgufKv *kv = lookup(g, key);
	bool neg;
	uint64_t m;
	if (!kv)
		return -ENOENT;
	if (!int_value(kv->type, g->base + kv->val, &neg, &m) ||
	    (neg ? m > (uint64_t)INT64_MAX + 1 : m > INT64_MAX))
		return -EINVAL;
	*ret = neg ? (int64_t)(0 - m) : (int64_t)m;
	return 0;
}

int gguf_get_f32(const GgufFile *g, const char *key, float *ret)
{
	const GgufKv *kv = lookup(g, key);
	if (!kv)
		return -ENOENT;
	if (kv->type == GGUF_F32) {
		memcpy(ret, g->base + kv->val, 4);
	} else if (kv->type == GGUF_F64) {
		double d;
		memcpy(&d, g->base + kv->val, 8);
		*ret = (float)d;
	} else {
		return -EINVAL;
	}
	return 0;
}

int gguf_get_bool(const GgufFile *g, const char *key, bool *ret)
{
	const GgufKv *kv = lookup(g, key);
	bool neg;
	uint64_t m;
	if (!kv)
		return -ENOENT;
	if (kv->type == GGUF_BOOL)
		*ret = g->base[kv->val] != 0;
	else if (int_value(kv->type, g->base + kv->val, &neg, &m))
		*ret = m != 0;
	else
		return -EINVAL;
	return 0;
}

int gguf_get_str(const GgufFile *g, const char *key, const char **ret, size_t *ret_len)
{
	const GgufKv *kv = lookup(g, key);
	if (!kv)
		return -ENOENT;
	if (kv->type != GGUF_STRING)
		return -EINVAL;
	*ret = (const char *)g->base + kv->val;
	*ret_len = (size_t)kv->len;
	return 0;
}

int gguf_get_arr(const GgufFile *g, const char *key, int *ret_type, uint64_t *ret_n,
		 const void **ret_data)
{
	const GgufKv *kv = lookup(g, key);
	if (!kv)
		return -ENOENT;
	if (kv->type != GGUF_ARRAY)
		return -EINVAL;
	if (ret_type)
		*ret_type = kv->arr_type;
	if (ret_n)
		*ret_n = kv->n;
	if (ret_data)
		*ret_data = kv->arr_type == GGUF_STRING ? NULL : g->base + kv->val;
	return 0;
}

/* Out-of-range IDX gives -ERANGE. */
int gguf_get_arr_str(const GgufFile *g, const char *key, uint64_t idx, const char **ret,
		     size_t *ret_len)
{
	const GgufKv *kv = lookup(g, key);
	if (!kv)
		return -ENOENT;
	if (kv->type != GGUF_ARRAY || kv->arr_type != GGUF_STRING)
		return -EINVAL;
	if (idx >= kv->n)
		return -ERANGE;
	uint64_t at = kv->str_at[idx], len;
	memcpy(&len, g->base + at - 8, 8);
	*ret = (const char *)g->base + at;
	*ret_len = (size_t)len;
	return 0;
}

/* ---- display ---- */

/* Appends into a fixed buffer, keeping 3 bytes for a trailing "..." when it overflows. */
typedef struct {
	char *buf;
	size_t cap, pos;
	bool full;
} App;

static void app_putc(App *a, char ch)
{
	if (a->cap >= 4 && a->pos + 4 < a->cap)
		a->buf[a->pos++] = ch;
	else
		a->full = true;
}

static void app_printf(App *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void app_printf(App *a, const char *fmt, ...)
{
	char tmp[64];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	for (const char *s = tmp; *s; s++)
		app_putc(a, *s);
}

/* Quoted, escaped string of at most MAX bytes shown. */
static void app_str(App *a, const uint8_t *s, uint64_t len, uint64_t max)
{
	app_putc(a, '"');
	for (uint64_t i = 0; i < len && i < max && !a->full; i++) {
		uint8_t ch = s[i];
		if (ch == '"' || ch == '\\') {
			app_putc(a, '\\');
			app_putc(a, (char)ch);
		} else if (ch == '\n') {
			app_printf(a, "\\n");
		} else if (ch < 0x20 || ch == 0x7f) {
			app_printf(a, "\\x%02x", ch);
		} else {
			app_putc(a, (char)ch); /* UTF-8 passes through */
		}
	}
	if (len > max)
		app_printf(a, "...");
	app_putc(a, '"');
}

static void app_scalar(App *a, int type, const uint8_t *p)
{
	bool neg;
	uint64_t m;
	if (type == GGUF_BOOL) {
		app_printf(a, "%s", p[0] ? "true" : "false");
	} else if (type == GGUF_F32) {
		float f;
		memcpy(&f, p, 4);
		app_printf(a, "%.7g", f);
	} else if (type == GGUF_F64) {
		double d;
		memcpy(&d, p, 8);
		app_printf(a, "%.15g", d);
	} else if (int_value(type, p, &neg, &m)) {
		app_printf(a, "%s%" PRIu64, neg ? "-" : "", m);
	}
}

const char *gguf_kv_format(const GgufFile *g, size_t i, char *buf, size_t len)
{
	App a = { .buf = buf, .cap = len };
	if (!buf || len == 0)
		return buf;
	if (i >= g->n_kv) {
		buf[0] = 0;
		return buf;
	}
	const GgufKv *kv = &g->kv[i];
	const uint8_t *p = g->base + kv->val;
	if (kv->type == GGUF_STRING) {
		app_str(&a, p, kv->len, UINT64_MAX);
	} else if (kv->type != GGUF_ARRAY) {
		app_scalar(&a, kv->type, p);
	} else {
		app_printf(&a, "[%s x %" PRIu64 "]", type_names[kv->arr_type], kv->n);
		uint64_t show_n = kv->n < 8 ? kv->n : 8;
		for (uint64_t k = 0; k < show_n && !a.full; k++) {
			app_printf(&a, k ? ", " : " ");
			if (kv->arr_type == GGUF_STRING) {
				uint64_t at = kv->str_at[k], sl;
				memcpy(&sl, g->base + at - 8, 8);
				app_str(&a, g->base + at, sl, 40);
			} else {
				app_scalar(&a, kv->arr_type, p + k * type_size[kv->arr_type]);
			}
		}
		if (show_n < kv->n)
			app_printf(&a, ", ...");
	}
	if (a.full) {
		size_t room = len - 1 - a.pos; /* len >= 4 whenever full came from a real overflow */
		const char *dots = "...";
		for (size_t k = 0; k < 3 && k < room; k++)
			buf[a.pos++] = dots[k];
	}
	buf[a.pos] = 0;
	return buf;
}
