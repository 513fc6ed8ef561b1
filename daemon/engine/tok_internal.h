/* daemon/engine/tok_internal.h: what tokenizer.c (vocabulary, special tokens, pieces),
 * tok_bpe.c (byte-level BPE), tok_spm.c (SentencePiece-style BPE) and pretok.c (regex
 * pre-tokenizers) share.  Not for use outside these four files. */
#ifndef QD_ENGINE_TOK_INTERNAL_H
#define QD_ENGINE_TOK_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* GGUF tokenizer.ggml.token_type values. */
enum {
	TT_NONE = 0, /* no token_type array: treated as normal */
	TT_NORMAL = 1,
	TT_UNKNOWN = 2,
	TT_CONTROL = 3,
	TT_USER = 4,
	TT_UNUSED = 5,
	TT_BYTE = 6,
};

/* Longest input tok_encode accepts (offsets inside a text are uint32_t). */
#define TOK_MAX_INPUT ((size_t)64 << 20) /* SPM needs ~60 bytes of scratch per byte */

typedef struct {
	uint32_t off, len;   /* raw text in Tokenizer.text */
	uint32_t poff, plen; /* piece (bytes shown for it) in Tokenizer.piece */
	float score;
	uint8_t type;        /* TT_* after normalization (eog texts forced to control) */
} TokEntry;

/* (left id, right id) -> merge rank and merged id, open addressing. */
typedef struct {
	int32_t left, right; /* left < 0: empty slot */
	int32_t rank, result;
} TokMerge;

typedef struct PreTok PreTok;
typedef struct PreTokRun PreTokRun;
typedef struct BpeRun BpeRun;

struct Tokenizer {
	int kind; /* TOK_SPM / TOK_BPE */
	int32_t n_vocab;
	TokEntry *tok;
	char *text;  /* every token's raw text, each followed by a NUL */
	char *piece; /* every token's piece */

	int32_t *map; /* text -> id, open addressing on tok_hash(); -1 empty */
	uint32_t map_mask;

	TokMerge *merges; /* BPE only */
	uint32_t merge_mask;

	/* BPE: token of the one-char string a byte maps to; SPM: <0xXX> (else the one-byte
	 * token).  -1 when the vocabulary lacks it. */
	int32_t byte_tok[256];

	/* Tokens matched literally in text before the encoder runs, longest text first. */
	int32_t *special;
	size_t n_special;

	uint8_t *eog; /* n_vocab flags */
	int32_t bos, eos, unk;
	bool add_bos, add_space_prefix;
	bool ignore_merges; /* BPE: a pre-token that is itself a token is taken whole */

	PreTok *pre; /* BPE only */
};

/* Growable id list used while encoding. */
typedef struct {
	int32_t *v;
	size_t n, cap;
} IdVec;

int idvec_push(IdVec *v, int32_t id);

uint32_t tok_hash(const char *s, size_t len);
/* Id of the token whose raw text is S[0..len), or -1. */
int32_t tok_lookup(const Tokenizer *t, const char *s, size_t len);

/* Byte-level BPE (tok_bpe.c). */
/* Codepoint the GPT-2 byte-to-unicode table maps byte B to. */
uint32_t bpe_byte_to_cp(uint8_t b);
/* Byte for codepoint CP, or -1 when CP is not in the table. */
int bpe_cp_to_byte(uint32_t cp);
/* Loads tokenizer.ggml.merges; 0 or -errno. */
int bpe_load_merges(Tokenizer *t, const GgufFile *g, char *err, size_t errlen);
/* Scratch for one tok_encode call (one thread): regex state and merge buffers. */
int bpe_run_new(const Tokenizer *t, BpeRun **ret);
void bpe_run_free(BpeRun *r);
/* Encodes LEN bytes of plain text (no special tokens) and appends the ids. */
int bpe_encode(BpeRun *r, const char *s, size_t len, IdVec *out);

/* SentencePiece-style BPE (tok_spm.c): appends the ids for S, which must already have
 * spaces escaped as U+2581 and any prefix added. */
int spm_encode(const Tokenizer *t, const char *s, size_t len, IdVec *out);

/* Pre-tokenizers (pretok.c).  pretok_new: -EOPNOTSUPP for an unknown NAME. */
int pretok_new(const char *name, size_t name_len, PreTok **ret, bool *ret_ignore_merges,
	       bool *ret_add_bos);
void pretok_free(PreTok *p);
/* Per-call match state; a PreTok itself is shared read-only between threads. */
int pretok_run_new(const PreTok *p, PreTokRun **ret);
void pretok_run_free(PreTokRun *r);
/* Splits S into pre-tokens: calls FN for each (in order) until it returns non-zero,
 * which is then returned.  0 or -errno. */
typedef int (*pretok_fn)(void *ctx, const char *s, size_t len);
int pretok_split(PreTokRun *r, const char *s, size_t len, pretok_fn fn, void *ctx);

/* UTF-8 length announced by lead byte C (1 for continuation or invalid bytes). */
static inline size_t tok_utf8_len(unsigned char c)
{
	return c < 0x80 ? 1 : c < 0xc0 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}

/* Length of the well-formed UTF-8 character at S (LEN > 0 bytes left), or 1 when S does
 * not start one: a stray byte then stands alone instead of swallowing its neighbours. */
size_t tok_utf8_char(const unsigned char *s, size_t len);

#endif
