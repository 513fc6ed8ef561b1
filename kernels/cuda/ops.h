/* kernels/cuda/ops.h: the forward pass's small ops on the device (plain C API), used by
 * the ops table in backend_cuda.c: embedding rows, RMSNorm, RoPE, SwiGLU, add, KV-cache
 * stores and attention, and the argmax and top-k of logits rows (their rules: those of
 * kernels/cpu/matmul.c and kernels/cpu/topk.c).  Every pointer is device memory, index arrays included; every
 * function queues its kernel on the context's stream and returns 0, -EINVAL for bad
 * arguments or -EIO when the launch fails.  Semantics follow kernels/cpu/backend_cpu.c
 * (the reference) operation by operation; where the order of float operations differs
 * the comment says so. */
#ifndef QD_KERNELS_CUDA_OPS_H
#define QD_KERNELS_CUDA_OPS_H

#include <stdint.h>

#include "cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether kb_cuda_get_rows takes TYPE (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K). */
int kb_cuda_get_rows_supported(int type);

/* out[i][0..cols) = dequantized row ids[i] of RAW (GGUF rows of row_bytes bytes).
 * The ids must already be valid row numbers (the caller checks them on the host). */
int kb_cuda_get_rows(KbCuda *ctx, int type, const void *raw, int64_t row_bytes, int64_t cols,
		     const int32_t *ids, int n, float *out);

/* idx[t] = the first index of the largest of y[t][0..cols) (row t at y + t * ldy), NaNs
 * skipped, -0 equal to +0, 0 for a row of NaNs: the CPU's kb_matmul_argmax rule.  In a
 * step whose ids a caller may read a step late (KbOps.sync_lag), at idx + half * (*sel & 1)
 * (SEL: a device word the step's copy sets; NULL: at idx) and, when FEED is not NULL, also
 * at feed[t] (device), where the next step may take them as its tokens (KbStep.feed). */
int kb_cuda_argmax(KbCuda *ctx, const float *y, int n, int64_t cols, int64_t ldy, int32_t *idx,
		   const uint32_t *sel, int64_t half, int32_t *feed);

/* For each of n rows of y: the k (1..KB_CUDA_TOPK_MAX) largest values, NaN and -inf never
 * counted, of equal values the lowest indices: ids[t][0..counts[t]) and vals[t][...] (row
 * strides k), in no particular order; counts[t] < k only when the row has fewer such
 * values.  Device arrays. */
#define KB_CUDA_TOPK_MAX 256
int kb_cuda_topk(KbCuda *ctx, const float *y, int n, int64_t cols, int64_t ldy, int k, int32_t *ids, float *vals,
		 int32_t *counts);

/* y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w for n rows of dim; sum of squares in double
 * like the CPU.  x and y may not overlap partially (equal is fine). */
int kb_cuda_rmsnorm(KbCuda *ctx, const float *x, const float *w, int n, int dim, float eps, float *y);

/* kb_cuda_rmsnorm, and y also converted into ACT for the products in the same launch:
 * afterwards ACT holds exactly what kb_cuda_act_prepare(ctx, act, y, dim, dim, n) would
 * have made (same bits), so the next products on y need no conversion.
 * 1 <= n <= KB_CUDA_MAX_TOK, dim <= the act's capacity. */
int kb_cuda_rmsnorm_act(KbCuda *ctx, const float *x, const float *w, int n, int dim, float eps, float *y,
			KbCudaAct *act);

/* Rotates adjacent pairs (2i, 2i+1), i < rot_dim/2, of each of n_head heads of x[t] by
 * pos[t] * theta_scale^i, the angles built by repeated float multiplication as on the
 * CPU.  rot_dim even, <= 512 and <= head_dim. */
int kb_cuda_rope(KbCuda *ctx, float *x, const int32_t *pos, int n, int n_head, int head_dim, int rot_dim,
		 float theta_scale);

/* y = g * sigmoid(g) * u; x += y; over n elements. */
int kb_cuda_swiglu(KbCuda *ctx, const float *g, const float *u, int64_t n, float *y);
/* kb_cuda_swiglu over n rows of dim, y also converted into ACT in the same launch (as
 * kb_cuda_rmsnorm_act does).  1 <= n <= KB_CUDA_MAX_TOK, dim <= the act's capacity. */
int kb_cuda_swiglu_act(KbCuda *ctx, const float *g, const float *u, int n, int64_t dim, float *y,
		       KbCudaAct *act);
int kb_cuda_add(KbCuda *ctx, float *x, const float *y, int64_t n);

/* Rows k[t], v[t] (kvd floats) -> f16 (round to nearest even) at cache offset
 * seq[t] * slot_stride + pos[t] * kvd. */
int kb_cuda_kv_store(KbCuda *ctx, const float *k, const float *v, uint16_t *k_cache, uint16_t *v_cache,
		     const int32_t *pos, const int32_t *seq, int n, int kvd, int64_t slot_stride);

/* kb_cuda_rope on q (n_head heads) and on k (n_head_kv heads), then kb_cuda_kv_store of
 * k and v (kvd = n_head_kv * head_dim): the same bits, one launch. */
int kb_cuda_rope_kv_store(KbCuda *ctx, float *q, float *k, const float *v, uint16_t *k_cache,
			  uint16_t *v_cache, const int32_t *pos, const int32_t *seq, int n, int n_head,
			  int n_head_kv, int head_dim, int rot_dim, float theta_scale, int64_t slot_stride);

/* Attention over a context of L keys runs in min(ceil(L / keys), the launch's splits)
 * blocks per (token, head), merged at the end; fewer keys a split than this cost more in
 * the merge than they save (H200, 7B decode).  The default is KB_ATT_SPLIT_KEYS; the
 * setter returns 0 or -EINVAL (keys outside 1..2^24).  Set it before any step is
 * recorded: a recorded graph keeps the launch it was recorded with. */
#define KB_ATT_SPLIT_KEYS 256
#define KB_ATT_MAX_SPLITS 16
int kb_cuda_set_att_split_keys(KbCuda *ctx, int keys);

/* The splits per (token, head) kb_cuda_attention launches for PAIRS (token, head) pairs
 * whose longest context is MAX_LEN keys (< 1: not known): enough blocks to fill the GPU,
 * at most ceil(MAX_LEN / split keys) and KB_ATT_MAX_SPLITS.  backend_steps.c keys its
 * graphs by it, so a step is recorded again when its launch would change. */
int kb_cuda_att_splits(const KbCuda *ctx, int64_t pairs, int max_len);

/* For each (token t, head h): q rounded to f16, scores against keys 0..pos[t] of slot
 * seq[t] (kv head h / (n_head / n_head_kv)), times scale, softmax, weighted sum of the
 * values into out[t][h*head_dim..].  Online softmax over 4 warps, so sums are ordered
 * differently from the CPU's.  head_dim a multiple of 32 and <= 256 (else -EINVAL).
 * With ACT (non-NULL; n <= KB_CUDA_MAX_TOK, n_head*head_dim <= its capacity) out is
 * also converted into it in the same launch, as by kb_cuda_rmsnorm_act.  MAX_LEN: the
 * longest context (pos[t] + 1) of the step when the caller knows it, else 0; the launch
 * then has no split blocks that every token's context would leave idle (at a 7B decode
 * step of a short context, 480 of 512 blocks).  Each token's splits, and so its bits, are
 * the same either way.  EARLY (at most KB_CUDA_MAX_TOK tokens, where the next kernel is
 * launched early): that kernel may launch at once rather than once every block has asked
 * for its K/V rows.  LL (non-NULL; one token, head_dim 64 or 128, the words of these
 * heads, else -EINVAL): q and the step's own K and V rows come from LL->ll as the q/k/v
 * launch before wrote them there (KbCudaRope.ll), each block starting once its head's rows
 * carry the tag, instead of waiting for that whole launch; the same bits as reading q and
 * the caches.  Returns 1 when it took them so (0: it waited, where the decode instances do
 * not take the launch).  The caller must give an ACT that the q/k/v launch does not read
 * (it may still run). */
int kb_cuda_attention(KbCuda *ctx, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
		      const int32_t *pos, const int32_t *seq, int n, int n_head, int n_head_kv, int head_dim,
		      int64_t slot_stride, float scale, int max_len, int early, float *out, KbCudaAct *act,
		      const KbCudaLL *ll);

/* The same for steps of many tokens (attention_tc.cu), on the tensor cores: TILES (device,
 * [n_tiles][2]: first batch token, count 1..16) are runs of batch tokens of one sequence
 * each, at consecutive positions (a tile reads every row's keys up to its last position,
 * masked but multiplied, so they must be finite).  q, out and the caches 16-byte aligned,
 * slot_stride a multiple of 8.  head_dim 64 or 128 (else -EINVAL); no ACT.  Products of P and V are summed in
 * another order than kb_cuda_attention's, with P split into f16 hi + lo parts. */
int kb_cuda_attention_tc(KbCuda *ctx, const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
			 const int32_t *pos, const int32_t *seq, const int32_t *tiles, int n_tiles, int n_head,
			 int n_head_kv, int head_dim, int64_t slot_stride, float scale, float *out);

/* Queues a host -> device copy of a small pageable buffer: the host memory may be reused
 * as soon as this returns (the driver stages it), and the copy runs in stream order. */
int kb_cuda_upload_async(KbCuda *ctx, void *dev, const void *host, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif
