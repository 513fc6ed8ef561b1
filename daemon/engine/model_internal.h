/* daemon/engine/model_internal.h: the Model struct, shared by model.c (loading) and
 * forward.c (running).  Not for use outside daemon/engine/. */
#ifndef QD_ENGINE_MODEL_INTERNAL_H
#define QD_ENGINE_MODEL_INTERNAL_H

#include "../../kernels/backend.h"
#include "model.h"

typedef struct {
	const float *attn_norm; /* [n_embd] */
	KbWeight wq;            /* [n_head*head_dim][n_embd] */
	KbWeight wk, wv;        /* [n_head_kv*head_dim][n_embd] */
	KbWeight wo;            /* [n_embd][n_head*head_dim] */
	const float *ffn_norm;  /* [n_embd] */
	KbWeight w_gate, w_up;  /* [n_ff][n_embd] */
	KbWeight w_down;        /* [n_embd][n_ff] */
} Layer;

struct Model {
	GgufFile *gguf;
	Tokenizer *tok;
	ModelConfig cfg;
	char name[128];
	KbWeight tok_embd;        /* [n_vocab][n_embd] */
	const float *output_norm; /* [n_embd] */
	KbWeight output;          /* [n_vocab][n_embd]; a copy of tok_embd when tied */
	Layer *layers;            /* [n_layer] */
};

#endif
