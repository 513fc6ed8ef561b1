/* daemon/engine/model.h: a Llama-family model loaded from GGUF, and the runtime state
 * (KV cache, activations) that runs it.
 *
 * Lifetimes: a Model holds the configuration, the tokenizer and pointers to the weights
 * (in place in the read-only mapping on the CPU backend); it is immutable after
 * model_load() and may be shared by several Contexts.  A Context holds the KV cache for
 * up to n_seq sequences of up to n_ctx positions, activation buffers for batches of up
 * to n_batch tokens and the worker threads; one thread drives it at a time.
 *
 * The forward pass takes a batch: any number of tokens from any sequences, each with its
 * position, so prefill chunks of several prompts and decode steps of many sequences run
 * in one call (continuous batching builds on this, not on a rewrite). */
#ifndef QD_ENGINE_MODEL_H
#define QD_ENGINE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "tokenizer.h"

typedef struct {
	int n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, rope_dim;
	int n_vocab, n_ctx_train;
	float rope_base, norm_eps;
	bool tied_output; /* no output.weight: the embedding is reused */
} ModelConfig;

typedef struct Model Model;

/* Loads PATH: validates the GGUF, the architecture ("llama"), every tensor's presence,
 * type and shape.  Returns 0, or -errno with err filled ("missing tensor blk.3.ffn_up.weight",
 * "unsupported architecture 'gpt2'", ...). */
int model_load(const char *path, Model **ret, char *err, size_t errlen);
void model_free(Model *m); /* NULL-safe; after every Context using it is freed */

const ModelConfig *model_config(const Model *m);
const Tokenizer *model_tokenizer(const Model *m);
const GgufFile *model_gguf(const Model *m);
/* Bytes of weights read per token by a decode step (every matrix once). */
uint64_t model_weight_bytes(const Model *m);
/* Short name such as "SmolLM2 135M Q4_1". */
const char *model_name(const Model *m);
/* For benchmark records: the layers' weight type ("Q4_0"; Q4_K layers whose ffn_down is
 * Q6_K: "Q4_K_M"; other mixes: the q weight's type + " mix"), and the shape (a synth
 * model's shape name, e.g. "llama2-7b", else "L<layers> d<embd> ff<ffn> h<heads>/<kv heads>
 * v<vocab>").  Both into BUF (N bytes), which they return. */
const char *model_type_label(const Model *m, char *buf, size_t n);
const char *model_shape_label(const Model *m, char *buf, size_t n);

typedef struct {
	int n_seq;      /* sequence slots (>= 1) */
	int n_ctx;      /* positions per sequence; 0: min(n_ctx_train, 4096) */
	int n_batch;    /* most tokens per ctx_decode call (>= 1) */
	int n_threads;  /* 0: online CPUs */
	const char *backend; /* "cpu", "cuda" or "auto" (NULL: "cpu") */
	int device;     /* GPU index for cuda */
	char *err;      /* where ctx_new explains a refusal (NULL: nowhere) */
	size_t errlen;
} ContextParams;

typedef struct Context Context;

/* Returns 0, -ENOMEM, -EINVAL for bad parameters, -ENODEV when backend "cuda" was asked
 * for and no GPU is usable ("auto" falls back to the CPU).  On a GPU the weights, KV cache
 * and activations are checked against the device's free memory before anything is
 * uploaded: -ENOMEM at once, with the numbers in p->err, when they do not fit. */
int ctx_new(const Model *m, const ContextParams *p, Context **ret);
/* "cpu avx2+fma+f16c, 2 threads", "cuda NVIDIA H200 ...". */
const char *ctx_backend_name(const Context *c);
void ctx_free(Context *c); /* NULL-safe */
int ctx_n_ctx(const Context *c);
/* Bytes of KV cache allocated (all slots). */
uint64_t ctx_kv_bytes(const Context *c);

typedef struct {
	int32_t n_tokens;
	const int32_t *token; /* [n_tokens] */
	const int32_t *pos;   /* [n_tokens] position of each token in its sequence */
	const int32_t *seq;   /* [n_tokens] sequence slot */
	const uint8_t *want_logits; /* [n_tokens] WANT_*; NULL: WANT_LOGITS for the last token only */
	const int32_t *top_k;       /* [n_tokens] k of each WANT_TOPK row (else unread); may be NULL
				     * when there is none */
} Batch;

/* Batch.want_logits values: what the caller will read of a token's output row. */
enum {
	WANT_NONE = 0,
	WANT_LOGITS = 1, /* the row (ctx_logits), and ctx_argmax where the backend finds it */
	WANT_ARGMAX = 2, /* only ctx_argmax: a backend that finds it on a device of its own
			  * leaves the row there, and ctx_logits may then return NULL */
	WANT_TOPK = 3,   /* ctx_argmax and the row's top_k largest logits (ctx_topk), found by
			  * the backend (the CPU's thread pool; a device leaves the row there);
			  * where it cannot (k > KB_TOPK_MAX, or no such op), the row comes as
			  * WANT_LOGITS */
};

/* Runs the forward pass for B.  A token at position p attends to positions 0..p of its
 * sequence: positions before the batch must have been decoded earlier (they are in the
 * cache), those inside the batch are written first.  Returns 0, or -EINVAL (bad token id,
 * slot, position >= n_ctx, n_tokens > n_batch, a want_logits value above WANT_TOPK), or
 * -errno from the backend. */
int ctx_decode(Context *c, const Batch *b);

/* Greedy decoding with the steps back to back: B (every row's greedy id wanted, so
 * want_logits NULL) is queued, and the step queued before it, if any, is waited for: its
 * ids become readable (ctx_argmax, one per row) and 1 is returned, else 0.  So the
 * device runs B while the caller reads the last step's ids, and no host round trip sits
 * between the steps (the CUDA backend; elsewhere each step runs at its call).
 * B->token NULL: fed, each row's token the greedy id of the same row of the last ahead
 * step (of the same n_tokens, with nothing else decoded since), which need not have been
 * read: a greedy generator queues step i + 1 fed before it reads step i's ids, and, once
 * it stops, drops or reads the last one (ctx_decode_flush).  ctx_decode in between drops
 * an unread step's ids (a refused batch, here or there, does not).  The rows read so have
 * ids only: ctx_logits gives NULL for them.  Returns 0 or 1, -EINVAL (ctx_decode's
 * reasons, want_logits given, or a feed that does not follow such a step), or -errno from
 * the backend. */
int ctx_decode_ahead(Context *c, const Batch *b);
/* Waits for the queued ahead step and makes its ids readable: 1, or 0 when none is
 * queued, or -errno. */
int ctx_decode_flush(Context *c);
/* Whether ahead steps run back to back here (else each runs at its call). */
int ctx_decode_queues(const Context *c);

/* Logits [n_vocab] of the I-th token of the last batch that asked for them (in batch
 * order among those with want_logits set), or NULL (also for a WANT_ARGMAX or WANT_TOPK
 * row that was left on the device). */
float *ctx_logits(Context *c, int32_t i);
/* The first index of the largest of those logits (NaNs skipped), when the backend found it
 * during or right after the product (the CPU and CUDA backends do), else -1: what a greedy sampler would pick, without
 * reading the logits again.  Valid until the next ctx_decode. */
int32_t ctx_argmax(const Context *c, int32_t i);
/* For a WANT_TOPK row whose candidates the backend found: sets *ids and *vals to its k (or
 * more) largest logits and their token ids, NaN and -inf left out, of equal logits the
 * lower ids, in no particular order, and returns how many (fewer than k only when the row
 * has fewer); -1 when there are none (then ctx_logits has the row). */
int ctx_topk(const Context *c, int32_t i, const int32_t **ids, const float **vals);

/* Forgets positions >= from of sequence slot SEQ (0 forgets it all). */
int ctx_seq_truncate(Context *c, int seq, int32_t from);

#endif
