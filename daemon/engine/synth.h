/* daemon/engine/synth.h: random-weight GGUF models of real Llama shapes, for benchmarks
 * (`quantd synth`).  Weights are random blocks that are never zero (scales drawn away from
 * 0), written block by block through the GGUF writer, so even a 70B file needs no
 * intermediate copy; the vocabulary is a minimal byte-level BPE (gpt2) one that
 * model_load accepts. */
#ifndef QD_ENGINE_SYNTH_H
#define QD_ENGINE_SYNTH_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
	const char *name; /* "llama2-7b", ... */
	int n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, n_ctx;
	float rope_base;
} SynthShape;

/* The shape called NAME, or NULL.  synth_shape_names() lists them, "|"-separated. */
const SynthShape *synth_shape(const char *name);
const char *synth_shape_names(void);

/* Writes a model of shape S to PATH with matrices of TYPE (a qd_type with block kernels:
 * Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, F16, BF16, F32), or, with mix_q4_k_m, Q4_K matrices with
 * attn_v, ffn_down and the output head in Q6_K.  SEED picks the random stream.
 * Returns 0 or -errno with err filled. */
int synth_write(const char *path, const SynthShape *s, int type, int mix_q4_k_m, uint64_t seed, char *err,
		size_t errlen);

#endif
