/* daemon/engine/awq_internal.h: the AWQ building blocks (awq.c) that calib.c drives block by
 * block and the tests call directly.  Not for use outside daemon/engine/ and tests/. */
#ifndef QD_ENGINE_AWQ_INTERNAL_H
#define QD_ENGINE_AWQ_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "../../kernels/cpu/threadpool.h"

/* Scale search grid: alpha = k / AWQ_GRID for k = 0 .. AWQ_GRID-1 (0, 0.05, ..., 0.95). */
#define AWQ_GRID 20
/* Clipping search: the range of each block is shrunk by k / AWQ_CLIP_GRID for
 * k = 0 .. AWQ_CLIP_STEPS (down to 50 %). */
#define AWQ_CLIP_GRID 20
#define AWQ_CLIP_STEPS 10

/* One linear layer of a group that shares an input (and so one input scale). */
typedef struct {
	const float *W; /* [rows][cols] f32, unscaled */
	int64_t rows;
	int type;       /* output type the error is measured in (any kb_cpu_quantize_row type) */
} AwqWeight;

/* out[c] = mean over the T rows of A = [T][d] of |A[t][c]|. */
void awq_absmean(const float *A, int64_t T, int64_t d, float *out);

/* The scale search of one group: for each alpha of the grid, s = xmean^alpha divided by
 * sqrt(max(s) min(s)), and the output error sum over the weights of
 * tr(E H E^T), E = W - Q(W diag(s)) diag(s)^-1, Q the round trip through the weight's type;
 * H = [cols][cols] is the (symmetric) Gram matrix of the group's inputs.  Writes the best
 * scale to ret_s[cols] and its alpha to *ret_alpha; ret_loss (may be NULL) gets the
 * AWQ_GRID errors (ret_loss[0] is round-to-nearest's).  Returns 0, -EINVAL, -ENOMEM. */
int awq_search_scale(KbThreadPool *tp, const AwqWeight *w, int nw, int64_t cols, const float *H,
		     const float *xmean, float *ret_s, float *ret_alpha, double *ret_loss);

/* The 32 x 32 diagonal blocks of diag(s)^-1 H diag(s)^-1 (s NULL: of H), what the clipping
 * search needs of the Gram matrix of the scaled inputs: ret[cols / 32][32][32].  cols must
 * be a multiple of 32. */
void awq_block_diag(const float *H, const float *s, int64_t cols, float *ret);

/* Clipping search and quantization of W = [rows][cols] (f32, already scaled; clamped in
 * place to the chosen ranges) to TYPE into out (rows x row size bytes).  For every block of
 * the type (32 or 256 values) the range is shrunk by 0 .. 50 % (symmetric types: the
 * largest magnitude; Q4_1/Q4_K: around the middle of [min, max]) and the shrink with the
 * smallest output error e^T Hb e (Hb from awq_block_diag, summed over the 32-value pieces of
 * the block) is kept.  clip false, or a type without blocks (F16): plain round-to-nearest.
 * *ret_shrink (may be NULL) gets the mean shrink chosen.  Returns 0, -EINVAL, -ENOMEM. */
int awq_clip_quantize(KbThreadPool *tp, int type, float *W, int64_t rows, int64_t cols, const float *Hb,
		      bool clip, void *out, double *ret_shrink);

/* xm = [n_head * head_dim] (per channel of the query heads' outputs): channel j of every query
 * head of a key/value group gets the group's mean, so a scale made from it can be folded
 * into the one v row that feeds all of them. */
void awq_tie_heads(float *xm, int n_head, int n_head_kv, int head_dim);

/* One transformer block in f32, as the scales are folded into it. */
typedef struct {
	int64_t n_embd, n_ff;
	int n_head, n_head_kv, head_dim;
	float *attn_norm, *ffn_norm; /* [n_embd] */
	float *w[7];                 /* q, k, v, o, gate, up, down (quant_linear_names order), [rows][cols] */
} AwqBlock;

/* Folds the four group scales into B so that it computes the same function:
 *   s[0] [n_embd]            q, k, v columns x s, attn_norm / s
 *   s[1] [n_head * head_dim] o columns x s, v rows / s (s tied: awq_tie_heads)
 *   s[2] [n_embd]            gate, up columns x s, ffn_norm / s
 *   s[3] [n_ff]              down columns x s, up rows / s
 * Returns 0 or -ENOMEM. */
int awq_fold_block(AwqBlock *b, const float *const s[4]);

/* W = [rows][cols]: column c multiplied by s[c] (cols) or row r divided by s[r] (rows). */
void awq_scale_cols(float *W, int64_t rows, int64_t cols, const float *s);
void awq_div_rows(float *W, int64_t rows, int64_t cols, const float *s);

#endif
