/* daemon/engine/gguf_internal.h: the parsed-file layout shared by the GGUF reader
 * (gguf.c: parsing and validation), its accessors (gguf_kv.c) and the writer
 * (gguf_write.c).  Nothing else includes this. */
#ifndef QD_ENGINE_GGUF_INTERNAL_H
#define QD_ENGINE_GGUF_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

/* Offsets below are from the start of the file; the parser checked every one of them
 * (and every length) against the file size before storing it. */
typedef struct {
	char *key;          /* NUL-terminated copy */
	uint64_t key_at;    /* file offset of the key's length field, for messages */
	int type;
	int arr_type;       /* element type for arrays, else -1 */
	uint64_t n;         /* arrays: element count */
	uint64_t raw, raw_end; /* the encoded value: from after the type field to its end */
	uint64_t val;       /* scalars: the value; strings: the bytes; arrays: first element */
	uint64_t len;       /* strings: byte length */
	uint64_t *str_at;   /* string arrays: offset of each element's bytes (length precedes) */
} GgufKv;

struct GgufFile {
	const uint8_t *base;
	uint64_t size;
	void *map;          /* our mmap, NULL for gguf_open_buffer */
	uint32_t version, alignment;
	uint64_t data_off;
	size_t n_kv, n_tensors;
	GgufKv *kv;
	GgufTensor *t;
	uint32_t *kv_by_key; /* KV indices sorted by key */
	uint32_t *t_by_name; /* tensor indices sorted by name */
};

/* Encoded bytes of key/value I's value as stored in the file (everything after its u32
 * type field), so a value of any type can be copied verbatim.  Returns 0, or -EINVAL when
 * I is out of range. */
int gguf_kv_raw(const GgufFile *g, size_t i, const void **ret, size_t *ret_len);

/* Bytes of one element of a fixed-size key/value type, 0 for strings, arrays and unknown
 * types. */
size_t gguf_type_size(int type);

/* Short lower-case name of a key/value type ("u32", "string", ...), "?" if unknown. */
const char *gguf_type_name(int type);

#endif
