/* daemon/engine/tokenizer.h: the vocabulary stored in a GGUF file and its two encoders:
 *   - "llama": SentencePiece-style (scores, space as U+2581, optional leading space,
 *     byte fallback <0xXX> tokens);
 *   - "gpt2": byte-level BPE with merges and the pre-tokenizer named by
 *     tokenizer.ggml.pre (PCRE2 regexes: smollm/starcoder, llama3/llama-bpe, qwen2, gpt2
 *     and the default).
 * Control and user-defined tokens written literally in the text (e.g. "<|im_start|>") are
 * recognized when parse_special is set.  Output ids equal llama.cpp's for the same file.
 *
 * A Tokenizer is immutable after tok_new() and safe to use from several threads. */
#ifndef QD_ENGINE_TOKENIZER_H
#define QD_ENGINE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct Tokenizer Tokenizer;

enum tok_kind { TOK_SPM = 1, TOK_BPE = 2 };

/* Builds the tokenizer from G's tokenizer.ggml.* keys (copies what it needs: G may be
 * closed afterwards).  Returns 0, or -errno with err filled (-EBADMSG: inconsistent
 * vocabulary; -EOPNOTSUPP: unknown model or pre-tokenizer). */
int tok_new(const GgufFile *g, Tokenizer **ret, char *err, size_t errlen);
void tok_free(Tokenizer *t); /* NULL-safe */

int tok_kind(const Tokenizer *t);
int32_t tok_n_vocab(const Tokenizer *t);
int32_t tok_bos(const Tokenizer *t);   /* -1 if none */
int32_t tok_eos(const Tokenizer *t);   /* -1 if none */
bool tok_add_bos(const Tokenizer *t);  /* tokenizer.ggml.add_bos_token (default per kind) */
/* True for end-of-generation tokens: eos, eot, <|im_end|>, <|eot_id|>, <|end_of_text|>… */
bool tok_is_eog(const Tokenizer *t, int32_t id);
/* Asks the CPU to bring in what tok_is_eog() and tok_piece() read for ID (a hint, no
 * effect on results): a caller with several tokens to emit lets their cache misses overlap. */
void tok_prefetch(const Tokenizer *t, int32_t id);
/* Id of a token given its exact text, or -1. */
int32_t tok_find(const Tokenizer *t, const char *text);

/* Encodes LEN bytes of TEXT.  add_bos prepends BOS when the model has one.  Writes at most
 * cap ids to out and returns the total count needed (call again with a bigger buffer when
 * it exceeds cap), or -errno. */
int tok_encode(const Tokenizer *t, const char *text, size_t len, bool add_bos,
	       bool parse_special, int32_t *out, size_t cap);

/* The bytes token ID stands for when generated text is shown: byte-level BPE maps bytes
 * back, SPM turns U+2581 into spaces and <0xXX> into the byte.  Control tokens give "" unless
 * show_special.  Writes at most cap bytes, returns the full length, or -EINVAL for a bad id.
 * A piece may end inside a UTF-8 character: callers concatenate. */
int tok_piece(const Tokenizer *t, int32_t id, bool show_special, char *out, size_t cap);

/* Decodes N ids into text (concatenated pieces; SPM drops the leading space that encoding
 * added).  Same return convention as tok_piece. */
int tok_decode(const Tokenizer *t, const int32_t *ids, size_t n, bool show_special,
	       char *out, size_t cap);

/* Raw token text as stored in the vocabulary (not NUL-terminated). */
const char *tok_text(const Tokenizer *t, int32_t id, size_t *ret_len);

#endif
