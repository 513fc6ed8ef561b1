/* daemon/engine/gguf.h: GGUF v2/v3 reader (memory-mapped, fully validated) and writer.
 *
 * Reader: gguf_open() maps the file read-only and validates the whole header before any
 * pointer into it is formed: magic, version, every count, string length, array size,
 * key/value type, tensor dims, tensor type, offsets, alignment and that each tensor's
 * bytes lie inside the file; all with overflow-safe arithmetic and sane limits.  On
 * failure it returns -errno and writes "reason (at byte N)" into err.  Afterwards every
 * accessor is O(1) or O(log n) and cannot fail on memory safety grounds.
 *
 * Writer: declare key/values and tensors, then gguf_writer_begin() writes the header to
 * PATH.tmp, gguf_writer_append() streams tensor data in declaration order (padding is
 * inserted for you), gguf_writer_finish() checks every byte was written, fsyncs and
 * renames onto PATH.  Nothing needs a whole tensor in memory at once.
 *
 * Threads: a GgufFile is immutable after open and may be read from any thread. */
#ifndef QD_ENGINE_GGUF_H
#define QD_ENGINE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_NAME 64           /* tensor name bytes */
#define GGUF_MAX_KEY 65535         /* key bytes */
#define GGUF_MAX_STRING (1u << 30) /* any string value */
#define GGUF_MAX_TENSORS (1u << 20)
#define GGUF_MAX_KV (1u << 20)
#define GGUF_MAX_ARRAY (1ull << 32) /* elements in one array */

enum gguf_kv_type {
	GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4, GGUF_I32 = 5,
	GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_U64 = 10,
	GGUF_I64 = 11, GGUF_F64 = 12, GGUF_TYPE_COUNT
};

typedef struct GgufFile GgufFile;

typedef struct {
	const char *name;          /* NUL-terminated copy owned by the GgufFile */
	uint32_t n_dims;
	int64_t ne[GGUF_MAX_DIMS]; /* innermost first; unused dims are 1 */
	int type;                  /* enum qd_type */
	uint64_t offset;           /* from the start of the data section */
	uint64_t nbytes;
	const void *data;          /* inside the mapping */
} GgufTensor;

/* Opens and validates PATH.  Returns 0 and *ret, or -errno with err filled (errlen may be
 * 0).  -EBADMSG for malformed content, -ENOENT/-EACCES etc. from the system. */
int gguf_open(const char *path, GgufFile **ret, char *err, size_t errlen);

/* Same on a caller-owned buffer that must outlive the GgufFile (tests, fuzzing). */
int gguf_open_buffer(const void *buf, size_t len, GgufFile **ret, char *err, size_t errlen);

/* NULL-safe. */
void gguf_close(GgufFile *g);

uint32_t gguf_version(const GgufFile *g);
uint32_t gguf_alignment(const GgufFile *g);
uint64_t gguf_file_size(const GgufFile *g);
uint64_t gguf_data_offset(const GgufFile *g); /* file offset of the data section */

/* Key/values, in file order. */
size_t gguf_n_kv(const GgufFile *g);
const char *gguf_kv_key(const GgufFile *g, size_t i);   /* NUL-terminated */
int gguf_kv_type(const GgufFile *g, size_t i);          /* enum gguf_kv_type */
int gguf_kv_arr_type(const GgufFile *g, size_t i);      /* element type, arrays only, else -1 */
uint64_t gguf_kv_arr_len(const GgufFile *g, size_t i);  /* arrays only, else 0 */
/* Index of KEY, or -ENOENT. */
int64_t gguf_find_kv(const GgufFile *g, const char *key);
/* Formats value i for display (arrays: type, length and first elements) into buf; returns buf. */
const char *gguf_kv_format(const GgufFile *g, size_t i, char *buf, size_t len);

/* Typed getters: 0 on success; -ENOENT when absent; -EINVAL when the stored type cannot
 * be represented in the requested one (integer getters accept any integer type whose
 * value fits; gguf_get_f32 also accepts F64; gguf_get_bool also accepts integers). */
int gguf_get_u32(const GgufFile *g, const char *key, uint32_t *ret);
int gguf_get_i64(const GgufFile *g, const char *key, int64_t *ret);
int gguf_get_f32(const GgufFile *g, const char *key, float *ret);
int gguf_get_bool(const GgufFile *g, const char *key, bool *ret);
/* String value: pointer into the mapping (NOT NUL-terminated) and its length. */
int gguf_get_str(const GgufFile *g, const char *key, const char **ret, size_t *ret_len);

/* Arrays.  gguf_get_arr: element type, count and (for non-string arrays) a pointer to
 * the packed little-endian elements inside the mapping (may be unaligned: memcpy). */
int gguf_get_arr(const GgufFile *g, const char *key, int *ret_type, uint64_t *ret_n,
		 const void **ret_data);
/* Element IDX of a string array stored under KEY (pointer into mapping, length). */
int gguf_get_arr_str(const GgufFile *g, const char *key, uint64_t idx, const char **ret,
		     size_t *ret_len);

/* Tensors, in file order. */
size_t gguf_n_tensors(const GgufFile *g);
const GgufTensor *gguf_tensor(const GgufFile *g, size_t i);
/* NULL when absent. */
const GgufTensor *gguf_find_tensor(const GgufFile *g, const char *name);

/* ---- writer ---- */
typedef struct GgufWriter GgufWriter;

int gguf_writer_new(GgufWriter **ret);
void gguf_writer_free(GgufWriter *w); /* NULL-safe; removes PATH.tmp if unfinished */

/* Setting a key that exists replaces it, keeping its position.  Return 0 or -errno. */
int gguf_writer_set_u32(GgufWriter *w, const char *key, uint32_t v);
int gguf_writer_set_i32(GgufWriter *w, const char *key, int32_t v);
int gguf_writer_set_u64(GgufWriter *w, const char *key, uint64_t v);
int gguf_writer_set_f32(GgufWriter *w, const char *key, float v);
int gguf_writer_set_bool(GgufWriter *w, const char *key, bool v);
int gguf_writer_set_str(GgufWriter *w, const char *key, const char *s, size_t len);
/* Array of fixed-size elements (not strings): copies n elements of elem_type. */
int gguf_writer_set_arr(GgufWriter *w, const char *key, int elem_type, const void *data, uint64_t n);
/* String array: strs[i] with lens[i] bytes. */
int gguf_writer_set_arr_str(GgufWriter *w, const char *key, const char *const *strs,
			    const size_t *lens, uint64_t n);
/* Copies key/value I of SRC (any type) under the same key. */
int gguf_writer_copy_kv(GgufWriter *w, const GgufFile *src, size_t i);

/* Declares a tensor; data follows later through gguf_writer_append in the same order.
 * Returns 0, -EINVAL for a bad name/type/shape (row not a block multiple), -EEXIST. */
int gguf_writer_add_tensor(GgufWriter *w, const char *name, int type, uint32_t n_dims,
			   const int64_t *ne);

/* Writes magic, key/values, tensor infos and padding to PATH.tmp. */
int gguf_writer_begin(GgufWriter *w, const char *path);
/* Appends N bytes of tensor data; may span tensors; -EINVAL past the declared total. */
int gguf_writer_append(GgufWriter *w, const void *data, size_t n);
/* Requires every declared byte written; fsync, rename to PATH.  -EINVAL if short. */
int gguf_writer_finish(GgufWriter *w);

#endif
