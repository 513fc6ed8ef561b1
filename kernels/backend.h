/* kernels/backend.h: the ops table every compute backend implements (kernels/cpu and
 * kernels/cuda).  The forward pass (daemon/engine/forward.c) calls only these.
 *
 * Memory: activation buffers come from the backend's alloc (host memory on the CPU,
 * device memory on CUDA); small per-batch index arrays (token ids, positions, sequence
 * slots) are passed as host arrays and copied by the backend when it needs to.
 * Weights are described by KbWeight; weight_prepare lets a backend upload or repack them
 * once at load.  Every op returns 0 or -errno (CUDA failures become -EIO or -ENOMEM).
 * A backend instance is driven by one thread at a time. */
#ifndef QD_KERNELS_BACKEND_H
#define QD_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
	int type;          /* enum qd_type */
	int64_t rows;      /* output features */
	int64_t cols;      /* input features (row length, a block multiple) */
	const void *data;  /* host bytes in GGUF layout (the mapping) */
	void *priv;        /* backend's prepared copy, or NULL */
	int rows_only;     /* only get_rows will read it: no need to prepare it for products */
} KbWeight;

/* Attention over a KV cache for a batch of query tokens.  The cache holds f16 keys and
 * values: cache[slot][pos][n_head_kv * head_dim], slot stride kv_slot_stride elements. */
typedef struct {
	int n_tokens, n_head, n_head_kv, head_dim;
	const int32_t *pos;  /* [n_tokens] host */
	const int32_t *seq;  /* [n_tokens] host */
	const float *q;      /* [n_tokens][n_head*head_dim] */
	uint16_t *k_cache, *v_cache;
	int64_t kv_slot_stride;
	float scale;
	float *out;          /* [n_tokens][n_head*head_dim] */
	const KbWeight *next; /* the product that reads out next, or NULL: a backend may start
			       * loading its weights while attention runs */
	int layer_id;        /* 1 + the layer's index in the step (forward.c), 0 when not given: a
			      * backend may hand q, k and v from matmul_rope_kv to the attention call
			      * of the same layer_id without waiting for the whole product */
} KbAttention;

/* A forward step's per-token inputs (host arrays of n_tokens), for step_begin.  variant
 * tells apart steps of one n_tokens whose calls differ (forward.c: 1 when the step ends
 * with the output norm, head and greedy ids, 0 when with the last layer).  feed (only to
 * a backend with sync_lag): row t's token is the greedy id that the step before found
 * for its row t (that step of the same n_tokens, ending with matmul_argmax), which the
 * backend keeps where it runs: token[] is then only the array the calls pass, and its
 * values are not the tokens. */
typedef struct {
	int n_tokens;
	const int32_t *token, *pos, *seq;
	int variant;
	int feed;
} KbStep;

typedef struct KbBackend KbBackend;

#define KB_TOPK_MAX 256 /* the largest k of KbOps.topk */

typedef struct {
	const char *name;
	int host_memory; /* buffers are plain host memory (no upload/download needed) */
	void (*free)(KbBackend *b);
	const char *(*describe)(KbBackend *b); /* e.g. "cpu avx2+fma+f16c, 2 threads" */

	int (*alloc)(KbBackend *b, size_t bytes, void **ret);
	void (*release)(KbBackend *b, void *p);
	int (*upload)(KbBackend *b, void *dst, const void *src, size_t bytes);
	int (*download)(KbBackend *b, void *dst, const void *src, size_t bytes);
	/* Backend buffer to backend buffer. */
	int (*copy)(KbBackend *b, void *dst, const void *src, size_t bytes);

	int (*weight_prepare)(KbBackend *b, KbWeight *w);
	void (*weight_release)(KbBackend *b, KbWeight *w);

	/* out[i] = row ids[i] of the embedding table W, as f32 [n][W->cols]. */
	int (*get_rows)(KbBackend *b, const KbWeight *w, const int32_t *ids, int n, float *out);
	/* y[t][r] = W[r] . x[t]  for t < n. */
	int (*matmul)(KbBackend *b, const KbWeight *w, const float *x, int n, float *y);
	/* y[t] = x[t] / rms(x[t]) * weight, for n rows of dim. */
	int (*rmsnorm)(KbBackend *b, const float *x, const float *weight, int n, int dim, float eps, float *y);
	/* Rotates adjacent pairs (2i, 2i+1), i < rot_dim/2, of each head of x[t], in place. */
	int (*rope)(KbBackend *b, float *x, const int32_t *pos, int n, int n_head, int head_dim,
		    int rot_dim, float base);
	/* Writes k/v rows [n][n_head_kv*head_dim] into the caches at (seq[t], pos[t]). */
	int (*kv_store)(KbBackend *b, const KbAttention *a, const float *k, const float *v);
	int (*attention)(KbBackend *b, const KbAttention *a);
	/* y = silu(g) * u over n rows of dim elements. */
	int (*swiglu)(KbBackend *b, const float *g, const float *u, int n, int64_t dim, float *y);
	/* x += y over n elements. */
	int (*add)(KbBackend *b, float *x, const float *y, int64_t n);
	int (*sync)(KbBackend *b);

	/* Optional (NULL where not offered): a step's op calls as one unit that the backend
	 * may record once and replay (CUDA graphs).  The calls between step_begin and
	 * step_end must be the same for every step of the same n_tokens and variant, take
	 * their index arrays as exactly S's token/pos/seq pointers, touch only memory that
	 * stays allocated, and neither download nor sync.  step_begin returns 1 when it has
	 * already queued the whole unit again (skip the calls and step_end), 0 when the
	 * caller must make the calls and then call step_end with their status (the first
	 * negative one, or 0), or -errno.  step_end returns 0 when the unit ran or is
	 * queued, 1 when nothing of it ran (a recording failed) and the caller must make
	 * the calls again without a step, or the failed status. */
	int (*step_begin)(KbBackend *b, const KbStep *s);
	int (*step_end)(KbBackend *b, int status);
	/* Optional, with steps: sync, except that the last KEEP (0 or 1) steps queued that end
	 * with matmul_argmax may still be running; the ids of those waited for are filled in
	 * the order the steps were queued.  sync_lag(b, 0) is sync.  So greedy steps can run
	 * back to back (the next one queued with KbStep.feed before the last one's ids are
	 * read), with no wait between them for the caller's thread.  At most two such steps
	 * may be queued: step_begin refuses a third with -EBUSY. */
	int (*sync_lag)(KbBackend *b, int keep);

	/* Optional fused forms of the calls above; forward.c falls back to those calls where
	 * a backend leaves one NULL, and the results must be the same bits either way.
	 * matmul_multi: y[i] = W[i] . x (acc: y[i] += W[i] . x) for nw <= 3 weights of equal
	 * cols, so that q/k/v or gate/up read x once and run as one kernel.  Except: the CUDA
	 * backend's products of more than 8 tokens (kernels/cuda/gemm.cu) group a weight's
	 * column sums by what shares its launch, so there multi and single products differ in
	 * the last bits (a launch alike always gives the same bits).
	 * rope_kv_store: rope on q (n_head heads) and k (n_head_kv heads) in place, then
	 * kv_store of k and v (A's q and out are not used). */
	int (*matmul_multi)(KbBackend *b, int nw, const KbWeight *const *w, const float *x, int n,
			    float *const *y, int acc);
	int (*rope_kv_store)(KbBackend *b, const KbAttention *a, float *q, float *k, const float *v,
			     int rot_dim, float base);
	/* matmul_multi of W = q, k, v into y[0..2] (acc 0), then rope_kv_store on them, in
	 * one launch where the backend can (the same bits as the two calls). */
	int (*matmul_rope_kv)(KbBackend *b, const KbWeight *const *w, const float *x, int n, float *const *y,
			      const KbAttention *a, int rot_dim, float base);
	/* The residual product y_res[t] += W . x[t], then rmsnorm(y_res, norm_w, eps) into
	 * y_norm for the products that follow, which must come next and take y_norm as their
	 * x: a backend may leave y_norm's memory unwritten and give those products the norm
	 * by other means (the CUDA backend: each product scales its sums by 1 / rms, so no
	 * norm kernel runs between).  The one fused form that is not the same bits as the
	 * plain calls: the products round y * norm_w rather than the norm's output, so their
	 * results may differ in the last bits (tests/test-backend.c bounds it). */
	int (*matmul_res_norm)(KbBackend *b, const KbWeight *w, const float *x, int n, float *y_res,
			       const float *norm_w, int dim, float eps, float *y_norm);
	/* matmul_multi of W = gate, up into y[0], y[1] (acc 0), then swiglu(y[0], y[1]) into
	 * h; a backend may compute h without writing y (the CUDA backend: SwiGLU in the
	 * products' epilogue at one-token int8 steps), and the products' sums may then be
	 * added in another order: the last bits of h may differ from the plain calls'. */
	int (*matmul_swiglu)(KbBackend *b, const KbWeight *const *w, const float *x, int n, float *const *y,
			     float *h);

	/* Optional: matmul, and ret_idx[t] (host array of n) = the first index of the largest
	 * y[t][r] (NaNs skipped; 0 when all are NaN), found during or right after the product,
	 * so a greedy sampler need not read the logits again.  Called between step_begin and
	 * step_end, it may fill ret_idx only at the next sync (after the unit's replays too). */
	int (*matmul_argmax)(KbBackend *b, const KbWeight *w, const float *x, int n, float *y,
			     int32_t *ret_idx);

	/* Optional, so that a sampler with top_k need not scan (or, from a device, copy) whole
	 * logits rows on the caller's thread: for each of the n rows of y
	 * (cols values each, rows back to back), its k (1..KB_TOPK_MAX) largest values, NaN
	 * and -inf never counted, of equal values those with the lower indices, as
	 * ret_ids[t * k + 0 .. ret_n[t]) and ret_vals (host arrays) in no particular order;
	 * ret_n[t] < k only when the row has fewer such values.  NEED (host, [n]; NULL: all):
	 * the rows the caller reads; a backend may skip the others (then ret_n[t] = 0). */
	int (*topk)(KbBackend *b, const float *y, int n, int64_t cols, int k, const uint8_t *need, int32_t *ret_ids,
		    float *ret_vals, int32_t *ret_n);

	/* Optional, for backends with memory of their own (NULL on the CPU): bytes free and in
	 * all on the device, so that a context can refuse up front what would not fit. */
	int (*mem_info)(KbBackend *b, uint64_t *ret_free, uint64_t *ret_total);
} KbOps;

struct KbBackend {
	const KbOps *ops;
};

/* CPU backend: n_threads <= 0 means all online CPUs.  Returns 0 or -errno. */
int kb_cpu_backend_new(int n_threads, KbBackend **ret);

/* CUDA backend on device DEVICE (kernels/cuda/backend_cuda.c; built when nvcc is found).
 * Returns 0, -ENODEV when there is no usable GPU (or the build has no CUDA), or -errno. */
int kb_cuda_backend_new(int device, KbBackend **ret);

#endif
