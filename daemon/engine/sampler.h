/* daemon/engine/sampler.h: turns logits into a token id.  Greedy when temp <= 0;
 * otherwise repetition penalty, top-k, top-p, min-p, temperature, then a draw from a
 * seeded generator: the same seed and logits give the same tokens on every machine.
 * One Sampler per generation request; not thread-safe. */
#ifndef QD_ENGINE_SAMPLER_H
#define QD_ENGINE_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
	float temp;          /* <= 0: greedy */
	int top_k;           /* <= 0: off */
	float top_p;         /* >= 1: off */
	float min_p;         /* <= 0: off */
	float repeat_penalty;/* 1: off */
	int repeat_last_n;   /* tokens considered for the penalty */
	uint64_t seed;
} SamplerParams;

/* Defaults: temp 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.0, last_n 64, seed 0. */
SamplerParams sampler_defaults(void);

typedef struct Sampler Sampler;

/* Returns 0, -EINVAL (n_vocab < 1, bad parameters such as NaN or negative top_p), -ENOMEM. */
int sampler_new(const SamplerParams *p, int32_t n_vocab, Sampler **ret);
void sampler_free(Sampler *s); /* NULL-safe */

/* Picks a token from LOGITS [n_vocab] (scratch: may be modified). */
int32_t sampler_sample(Sampler *s, float *logits);
/* sampler_sample with GREEDY, the first index of the largest logit when the caller already
 * knows it (ctx_argmax; -1 when it does not): a plain greedy sampler (sampler_is_greedy)
 * returns it without reading the logits, which may then be NULL. */
int32_t sampler_sample_known(Sampler *s, float *logits, int32_t greedy);
/* Whether S is a plain greedy sampler (temperature 0, no repetition penalty): one that
 * sampler_sample_known answers from GREEDY alone, without reading the logits. */
bool sampler_is_greedy(const Sampler *s);
/* The top_k of a sampler that draws from the top_k largest logits alone (temperature > 0,
 * no repetition penalty, 0 < top_k < n_vocab), else 0. */
int sampler_topk(const Sampler *s);
/* sampler_sample from candidates: IDS/VALS, the row's n largest logits in any order (at
 * least sampler_topk(S) of them, or every one that is not NaN or -inf; of equal logits the
 * lower ids), give the token sampler_sample would give from the whole row.  GREEDY: the
 * row's argmax, the answer when n is 0.  -EINVAL when S is not such a sampler. */
int32_t sampler_sample_top(Sampler *s, const int32_t *ids, const float *vals, int32_t n, int32_t greedy);
/* Records a token (prompt or generated) for the repetition penalty. */
void sampler_accept(Sampler *s, int32_t token);

#endif
