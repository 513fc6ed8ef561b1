/* daemon/engine/quantize_internal.h: what quantize.c shares with the calibrated methods
 * (gptq.c, awq.c, calib.c).  Not for use outside daemon/engine/. */
#ifndef QD_ENGINE_QUANTIZE_INTERNAL_H
#define QD_ENGINE_QUANTIZE_INTERNAL_H

#include "../../kernels/cpu/threadpool.h"
#include "gguf.h"
#include "quantize.h"

/* One tensor of the output, in writing order. */
typedef struct {
	const GgufTensor *src;
	int type;       /* output type */
	int wanted;     /* type before a row-length fallback */
	int layer;      /* blk.N index, -1 for others */
	uint64_t out_bytes;
	int order;      /* sort key for the calibrated methods' writing order */
	size_t idx;     /* index in the input */
} QPlanTensor;

/* Linear layers of one transformer block, in the order the forward pass uses them. */
enum { QL_Q, QL_K, QL_V, QL_O, QL_GATE, QL_UP, QL_DOWN, QL_COUNT };
extern const char *const quant_linear_names[QL_COUNT]; /* "attn_q", ... */

/* rows x cols of src (any type kb_cpu_dequantize_row reads) round-to-nearest into dst
 * (type dst_type, rows * row size bytes), split over tp.  Returns 0 or -EINVAL. */
int quant_rows_rtn(KbThreadPool *tp, int src_type, const void *src, int64_t rows, int64_t cols,
		   int dst_type, void *dst);

/* Row i of tensor t dequantized into dst[t->ne[0]].  Returns 0 or -EOPNOTSUPP. */
int quant_src_row(const GgufTensor *t, int64_t i, float *dst);

/* The calibrated methods quantize one block at a time.  QuantLayerOut holds the output of
 * one block: the bytes of each linear layer in its output type, and the two norm vectors
 * (AWQ folds its scales into them).  The callee fills every field. */
typedef struct {
	void *w[QL_COUNT];       /* malloc'd, plan types */
	float *attn_norm, *ffn_norm; /* malloc'd [n_embd] */
} QuantLayerOut;

typedef struct QuantCalib QuantCalib;

/* Builds the calibration state for the model at PATH (loaded again as a Model): tokenizes
 * p->calib_text and embeds the first calib_seqs x calib_ctx tokens (fewer sequences when
 * the text is shorter).  The plan gives each linear layer's output type.  Returns 0, or
 * -errno with err filled: -EINVAL (less than one sequence of text), -ENOMEM, model_load's. */
int calib_new(const char *path, const QuantParams *p, const QPlanTensor *plan, size_t n_plan,
	      KbThreadPool *tp, QuantCalib **ret, char *err, size_t errlen);
void calib_free(QuantCalib *c);
/* Quantizes block il (blocks must come in order 0, 1, ...) with p->method, then advances
 * the calibration activations through the quantized block.  Returns 0 or -errno. */
int calib_layer(QuantCalib *c, int il, QuantLayerOut *out, char *err, size_t errlen);
void quant_layer_out_done(QuantLayerOut *o);

#endif
