/* daemon/engine/quantize.h: GGUF -> GGUF re-quantization (`quantd quantize`).
 *
 * The input is memory-mapped; every tensor is dequantized row by row to f32 and written
 * in the target block type through the streaming GGUF writer, so only one chunk of rows
 * (rtn) or one layer (gptq, awq) is in memory at a time.  Every key/value of the input is
 * kept (tokenizer, chat template, ...); general.file_type and
 * general.quantization_version are set, and the method and its settings are recorded
 * under quantize.* keys.
 *
 * Tensor types (quant_pick_type) follow llama.cpp's llama-quant.cpp rules where they
 * apply to the types this build computes:
 *   - 1-D tensors (norms) stay F32;
 *   - the output head, and the token embedding when the output is tied to it, get Q6_K
 *     for every target below 8 bits (llama.cpp's output rule); the target itself for F32,
 *     F16 and Q8_0; an untied token embedding gets the target type;
 *   - Q4_K_M: Q4_K, except attn_v and ffn_down of the layers where llama.cpp's
 *     use_more_bits(i, n) holds (the first and last eighth of the layers and every third
 *     one in between), which get Q6_K;
 *   - a row length that is not a multiple of the type's block falls back: Q6_K -> Q8_0
 *     (as llama.cpp), Q4_K -> Q4_1 (llama.cpp uses Q5_0, which this build cannot compute;
 *     Q4_1 is the nearest affine 4-bit type, 5.0 bits per weight), 32-element types -> F16.
 *
 * Threads: quantize_file() runs on the caller's thread and uses a pool of n_threads
 * workers internally; callbacks are called on the caller's thread. */
#ifndef QD_ENGINE_QUANTIZE_H
#define QD_ENGINE_QUANTIZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum quant_method { QUANT_RTN = 0, QUANT_GPTQ = 1, QUANT_AWQ = 2 };

/* Pseudo type id for the Q4_K_M mix (not a GGUF type). */
#define QUANT_MIX_Q4_K_M 1000

typedef struct {
	int type;       /* QD_TYPE_F32/F16/Q8_0/Q4_0/Q4_1/Q4_K/Q6_K or QUANT_MIX_Q4_K_M */
	int method;     /* enum quant_method */
	int n_threads;  /* <= 0: online CPUs */
	/* gptq / awq: calibration text (UTF-8) and how much of it to use. */
	const char *calib_text;
	size_t calib_len;
	const char *calib_name; /* recorded in the metadata (e.g. the file's base name) */
	int calib_seqs;         /* sequences of calib_ctx tokens (default 32) */
	int calib_ctx;          /* tokens per sequence (default 512) */
	float damp;             /* gptq: fraction of mean diag(H) added (default 0.01) */
	bool act_order;         /* gptq: columns by descending diag(H) */
	/* Optional: progress in input bytes, and human-readable notes (fallbacks, warnings).
	 * Called on the caller's thread. */
	void (*progress)(void *arg, uint64_t done, uint64_t total);
	void (*note)(void *arg, const char *msg);
	void *cb_arg;
} QuantParams;

typedef struct {
	uint64_t in_bytes, out_bytes; /* tensor data */
	uint64_t n_weights;           /* elements of all tensors */
	int n_tensors, n_fallback;
	double seconds;
} QuantStats;

/* Defaults: rtn, Q8_0, all CPUs, 32 x 512 calibration tokens, damp 0.01. */
QuantParams quant_default_params(void);

/* Target name ("Q8_0", "q4_k_m", "F16", ...; case-insensitive) to a QuantParams.type.
 * Returns 0 or -EINVAL. */
int quant_parse_type(const char *name, int *ret);
/* Display name of a QuantParams.type ("Q4_K_M", "Q8_0", ...). */
const char *quant_type_name(int type);
/* "rtn", "gptq", "awq" <-> enum quant_method.  -EINVAL for other names. */
int quant_parse_method(const char *name, int *ret);
const char *quant_method_name(int method);
/* llama.cpp's general.file_type (llama_ftype) for a target. */
uint32_t quant_file_type(int type);

/* The type tensor NAME of shape ne[0..n_dims) gets for TARGET in a model of n_layer
 * layers (tied: there is no output.weight).  *ret_wanted is the type before any row-length
 * fallback (equal to *ret_type when none was needed).  Returns 0 or -EINVAL. */
int quant_pick_type(int target, const char *name, uint32_t n_dims, const int64_t *ne, int n_layer,
		    bool tied, int *ret_type, int *ret_wanted);

/* Quantizes IN into OUT (written as OUT.tmp, renamed when complete).  Returns 0 and
 * fills *ret_stats (may be NULL), or -errno with err filled: -EINVAL bad parameters,
 * -EBADMSG malformed input, -EOPNOTSUPP a tensor type that cannot be dequantized or a
 * method/type pair not implemented, -EEXIST when IN and OUT are the same file. */
int quantize_file(const char *in, const char *out, const QuantParams *p, QuantStats *ret_stats,
		  char *err, size_t errlen);

#endif
