/* kernels/cuda/cuda.h: the CUDA backend's own API (plain C): a context per device with
 * one stream, device memory with uploads through pinned staging, weights repacked into
 * a GPU layout at upload, and decode matrix-vector products for up to 8 tokens.
 *
 * Types: Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, F16, BF16 weights (GGUF block layout on input;
 * see layout.cuh for the layout on the device).  Activations are f32 on the device; the
 * product converts them once to f16 (bf16 hi + lo for BF16 weights) and computes with
 * tensor-core mma.sync and f32 accumulation.  Quantized weights enter the mma as exact
 * small integers and their scales are applied in f32, so the only rounding besides f32
 * summation is the activations' f16 conversion (relative 2^-11; |x| above 65504 is
 * clamped to 65504).
 *
 * Errors: every function returns 0 or a negative errno: -EINVAL for bad arguments,
 * -ENOMEM when device or pinned memory runs out, -ENODEV when there is no usable device,
 * -EIO for any other CUDA failure (after which the context should be freed).  Nothing
 * here prints, exits or aborts.
 *
 * Threads: a context and everything made from it is driven by one thread at a time.
 * Work is queued on the context's stream: the product functions return once the kernels
 * are queued; kb_cuda_sync(), kb_cuda_download() and kb_cuda_timer_stop() wait. */
#ifndef QD_KERNELS_CUDA_CUDA_H
#define QD_KERNELS_CUDA_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KB_CUDA_MAX_TOK 8

typedef struct KbCuda KbCuda;             /* a device, its stream, staging buffers */
typedef struct KbCudaWeight KbCudaWeight; /* a matrix in the GPU layout */
typedef struct KbCudaAct KbCudaAct;       /* activations converted for the products */
typedef struct KbCudaGraph KbCudaGraph;   /* a captured, instantiated CUDA graph */

typedef struct {
	char name[256];
	int device, cc_major, cc_minor, sm_count;
	size_t mem_total, mem_free, l2_bytes;
	int driver_version, runtime_version; /* e.g. 13000 */
} KbCudaInfo;

/* Number of CUDA devices into *ret_n.  Returns 0, or -ENODEV when there is no driver or
 * no device (then *ret_n is not written). */
int kb_cuda_device_count(int *ret_n);

/* Creates a context on DEVICE: a non-blocking stream, 2 x 32 MiB of pinned staging and
 * the default product configuration.  Returns 0 and *ret_ctx, -ENODEV, -ENOMEM, -EIO. */
int kb_cuda_init(int device, KbCuda **ret_ctx);

/* Waits for queued work and frees the context.  NULL-safe.  Weights, activations,
 * graphs and allocations made from it must be freed first. */
void kb_cuda_free(KbCuda *ctx);

int kb_cuda_info(KbCuda *ctx, KbCudaInfo *ret_info);

/* The context's cudaStream_t, for callers that queue their own work. */
void *kb_cuda_stream(KbCuda *ctx);

/* Waits for all queued work; returns the first asynchronous error as -EIO. */
int kb_cuda_sync(KbCuda *ctx);
/* Marks I (0 or 1) at the end of the work queued so far; kb_cuda_mark_wait waits for the
 * last mark I (that work and all before it), leaving what was queued after it running. */
int kb_cuda_mark(KbCuda *ctx, int i);
int kb_cuda_mark_wait(KbCuda *ctx, int i);

/* ---- memory ---- */

/* Device allocation (cudaMalloc, never managed memory). */
int kb_cuda_alloc(KbCuda *ctx, size_t bytes, void **ret_dev);
void kb_cuda_dev_free(KbCuda *ctx, void *dev); /* NULL-safe */
/* Pinned host memory: *RET_HOST for the host and, when RET_DEV is not NULL, mapped for
 * kernels at *RET_DEV, which then read and write it in place (the few bytes a step passes
 * back need no copy).  The host may touch it only while no queued work does. */
int kb_cuda_host_alloc(KbCuda *ctx, size_t bytes, void **ret_host, void **ret_dev);
void kb_cuda_host_free(KbCuda *ctx, void *host); /* NULL-safe */

/* Copies host -> device through the pinned staging buffers (double-buffered: the host
 * memcpy of one piece overlaps the asynchronous copy of the previous one), and waits
 * for the copy to finish.  The host memory may be a read-only file mapping. */
int kb_cuda_upload(KbCuda *ctx, void *dev, const void *host, size_t bytes);
/* Device -> host, waiting for earlier queued work first. */
int kb_cuda_download(KbCuda *ctx, void *host, const void *dev, size_t bytes);
/* Queues a device -> device copy or a byte fill on the stream. */
int kb_cuda_copy(KbCuda *ctx, void *dst, const void *src, size_t bytes);
int kb_cuda_memset(KbCuda *ctx, void *dev, int byte, size_t bytes);

/* Totals over all uploads so far (kb_cuda_upload and kb_cuda_weight_upload): bytes
 * read from the host and wall-clock seconds spent, including repacking. */
void kb_cuda_upload_stats(const KbCuda *ctx, uint64_t *ret_bytes, double *ret_seconds);

/* ---- weights ---- */

/* Uploads a rows x cols matrix given in GGUF layout (rows of cols elements, cols a
 * multiple of the type's block size) and repacks it on the device.  DATA is only read
 * during the call.  Returns 0 and *ret_w; -EINVAL for an unsupported type or bad shape
 * (rows or cols < 1, cols not a block multiple, rows > 2^31), -ENOMEM, -EIO. */
int kb_cuda_weight_upload(KbCuda *ctx, int type, int64_t rows, int64_t cols, const void *data,
			  KbCudaWeight **ret_w);
void kb_cuda_weight_free(KbCudaWeight *w); /* NULL-safe */

typedef struct {
	int type;
	int64_t rows, cols;
	uint64_t gguf_bytes; /* bytes of the matrix in GGUF layout (what one product reads) */
	uint64_t dev_bytes;  /* bytes on the device, padding included */
} KbCudaWeightInfo;
void kb_cuda_weight_info(const KbCudaWeight *w, KbCudaWeightInfo *ret);

/* Whether kb_cuda_weight_upload accepts TYPE. */
int kb_cuda_type_supported(int type);

/* ---- products ---- */

/* Activation buffer for up to KB_CUDA_MAX_TOK tokens of up to max_cols columns. */
int kb_cuda_act_new(KbCuda *ctx, int64_t max_cols, KbCudaAct **ret_act);
void kb_cuda_act_free(KbCudaAct *act); /* NULL-safe */

/* Columns the act can take (its max_cols rounded up); 0 for NULL. */
int64_t kb_cuda_act_cap(const KbCudaAct *act);

/* Converts x (device f32, token t at x_dev + t*ldx, cols columns) for the products.
 * 1 <= n_tok <= KB_CUDA_MAX_TOK, cols <= max_cols, ldx >= cols.  Queued. */
int kb_cuda_act_prepare(KbCuda *ctx, KbCudaAct *act, const float *x_dev, int64_t ldx,
			int64_t cols, int n_tok);

/* Whether ACT, as last written, holds the planes products of TYPE over its tokens read.
 * kb_cuda_act_prepare writes every live type's; the producers that write ACT in a step
 * (norms, attention, SwiGLU) only those of the types with at least 1/16 of the product
 * weights, so a product of another type (a head) may have to prepare its input. */
int kb_cuda_act_holds(const KbCudaAct *act, int type);

/* y[t*ldy + r] = sum_c W[r][c] * x[t][c] for t < the act's n_tok, r < rows (device f32
 * y, ldy >= rows).  The act must have been prepared with cols == the weight's cols.
 * Queued.  With programmatic dependent launch the kernel starts reading the weights
 * before the previous kernel on the stream has finished (activations and y only
 * after), so weights must not be written by queued work; kb_cuda_weight_upload returns
 * only once its repack has completed, which guarantees that. */
int kb_cuda_mmv_act(KbCuda *ctx, const KbCudaWeight *w, const KbCudaAct *act, float *y_dev,
		    int64_t ldy);

/* Several products on one act in one launch: y_dev[i] ([n_tok][w[i]'s rows]) = W[i] x,
 * or += W[i] x when acc (the same bits as the product followed by an add).  1 <= nw <=
 * KB_CUDA_MMV_MAX_W weights of one type and of the act's cols.  Queued. */
#define KB_CUDA_MMV_MAX_W 3
int kb_cuda_mmv_multi(KbCuda *ctx, int nw, const KbCudaWeight *const *w, const KbCudaAct *act,
		      float *const *y_dev, int acc);

/* kb_cuda_mmv_multi of W = q, k, v (acc 0), with kb_cuda_rope_kv_store's work done as the
 * products write their rows: RoPE on the q and k rows, then k and v into the caches at
 * seq[t] * slot_stride + pos[t] * rows(k).  The same bits as the two calls.  pos/seq:
 * device arrays of act's n_tok; theta_scale = base^(-2/rot_dim).  q (and k) may be of
 * another type than the rest where one launch holds that pair (Q4_K + Q6_K, one token,
 * int8 activations); else that is -EOPNOTSUPP, as is rot_dim above 128 (the epilogue's
 * table of sines and cosines). */
/* A one-token step's q, k and v rows handed from the q/k/v product to attention without
 * the grid-wide wait (kb_cuda_mmv_qkv_rope with ROPE.ll, kb_cuda_attention with LL): the
 * product's epilogue also writes each row to LL, [nq + 2 nkv] words of tag << 32 | the
 * f32's bits (q, then k, then v), and attention's blocks read their head's rows there
 * until every word carries this (step, layer)'s tag, (*serial << 8) | layer: the data is
 * its own flag, so neither side needs a fence (one 64-bit word is written and read whole).
 * SERIAL (device) is the step's number, copied with its indices; layer 0..255.  Words of
 * another step or layer never match, so nothing is reset between uses. */
typedef struct {
	uint64_t *ll; /* NULL: no hand-over */
	const uint32_t *serial;
	int layer, nq, nkv;
} KbCudaLL;
typedef struct {
	const int32_t *pos, *seq;
	uint16_t *k_cache, *v_cache;
	int64_t slot_stride;
	int head_dim, rot_dim;
	float theta_scale;
	KbCudaLL ll; /* one token only */
} KbCudaRope;
int kb_cuda_mmv_qkv_rope(KbCuda *ctx, const KbCudaWeight *const *w, const KbCudaAct *act, float *const *y_dev,
			 const KbCudaRope *rope);
/* (With ROPE->ll it returns 1 when the launch also writes the hand-over words, which only
 * the one-token int8 register walks do; 0 when it runs without them.) */

/* The residual product y_dev[t] += W x_t (W's rows a multiple of 32, y_dev [n_tok][rows]),
 * which also starts the RMSNorm of the new y with weights norm_w (device, rows): OUT (not
 * ACT) then holds y * norm_w in the planes the products read, and each token's sum of
 * squares of y goes to PART (device, KB_CUDA_MAX_TOK x rows / 32 doubles), from which the
 * products that read OUT scale their sums by 1 / sqrt(mean + eps): those products compute
 * W' rmsnorm(y), without a norm kernel between.  Only products for which
 * kb_cuda_mmv_rms_ok holds can read OUT (the others refuse it: -EINVAL).  Queued. */
int kb_cuda_mmv_res_norm(KbCuda *ctx, const KbCudaWeight *w, const KbCudaAct *act, float *y_dev,
			 const float *norm_w, float eps, double *part, KbCudaAct *out);

/* The gate and up products of ACT with SwiGLU in their epilogue: h_dev[t] = silu(Wg x_t) *
 * (Wu x_t) (rows a multiple of 32, the weights of one type and shape), and OUT (not ACT)
 * the down product's activations of h.  Where kb_cuda_mmv_rms_ok holds for their type
 * (int8 one-token products; -EINVAL elsewhere); ACT may be kb_cuda_mmv_res_norm's.
 * Queued. */
int kb_cuda_mmv_swiglu(KbCuda *ctx, const KbCudaWeight *wg, const KbCudaWeight *wu, const KbCudaAct *act,
		       float *h_dev, KbCudaAct *out);

/* Whether products of TYPE over n_tok tokens can read the activations kb_cuda_mmv_res_norm
 * leaves (only their int8 one-token kernels scale by 1 / rms). */
int kb_cuda_mmv_rms_ok(const KbCuda *ctx, int type, int n_tok);

/* Products of any number of tokens (gemm.cu; meant for n > KB_CUDA_MAX_TOK): y[i]
 * ([n][w[i]'s rows]) = W[i] x, or += when acc, for 1 <= nw <= KB_CUDA_MMV_MAX_W weights of
 * equal cols; x device f32 [n][cols].  The weights are dequantized to f16 with their
 * scales, so results differ from kb_cuda_mmv_act's in the last bits, and with what
 * shares the launch and how many tokens (never between launches alike: the same weights,
 * tokens, sharing and device).  SCRATCH: device memory of kb_cuda_mmq_scratch(cols, n) bytes, for x in
 * f16.  Queued. */
size_t kb_cuda_mmq_scratch(int64_t cols, int n);
/* Whether kb_cuda_mmq takes X with COLS columns (a multiple of 4, 16-byte aligned rows). */
int kb_cuda_mmq_fits(const float *x, int64_t cols);
int kb_cuda_mmq(KbCuda *ctx, int nw, const KbCudaWeight *const *w, const float *x, int n, void *scratch,
		float *const *y, int acc);
/* How kb_cuda_mmq's blocks share a launch's work: where its row blocks would fill at most
 * MAX_WAVES waves of the multiprocessors and less than 90% of them, the blocks fill whole
 * waves with equal shares of at least MIN_UNITS (row block, column chunk) units, crossing
 * row blocks (defaults KB_MMQ_MAX_WAVES, KB_MMQ_MIN_UNITS); MAX_WAVES 0: never (one row
 * block a block).  Returns 0 or -EINVAL (MAX_WAVES outside 0..64, MIN_UNITS outside
 * 1..64).  Graphs keep what they were recorded with. */
#define KB_MMQ_MAX_WAVES 2
#define KB_MMQ_MIN_UNITS 2
int kb_cuda_set_mmq_shares(KbCuda *ctx, int max_waves, int min_units);

/* Both of the above, with an activation buffer kept by the context. */
int kb_cuda_mmv(KbCuda *ctx, const KbCudaWeight *w, const float *x_dev, int64_t ldx,
		float *y_dev, int64_t ldy, int n_tok);

/* Tuning of the product kernels: warps per block (1..8), row tiles of 16 per block
 * group (1 or 2), L2 prefetch distance in work items beyond the next (0..4; the early
 * reload's one-token int8 walks ask for it with their first two items only), persist
 * (N >= 1: at most N blocks per multiprocessor and no more than fit at once, each
 * block walking several row groups; 0: one block per group).  A value < 0 keeps the current setting; n_tok
 * selects the configuration used for products of that many tokens (0: all).
 * kb_cuda_set_pdl: programmatic dependent launch (each kernel starts loading weights
 * while the previous one finishes; sm_90 and newer; on by default there). */
int kb_cuda_set_mmv_config(KbCuda *ctx, int n_tok, int warps, int row_tiles, int prefetch,
			   int persist);
/* stages > 0 (at most 8): weights reach shared memory by bulk copies, STAGES work items a
 * warp in flight (sm_90 and newer; elsewhere ignored); 0: loads into registers; -1 (the
 * default): by weight type and shape, whichever measured faster on the H200. */
int kb_cuda_set_mmv_stages(KbCuda *ctx, int n_tok, int stages);
/* on 1: Q4_0, Q4_1, Q4_K, Q6_K and Q8_0 products take the activations as int8 levels with
 * a scale per 32 columns, as the CPU backend does for all but Q4_K and Q6_K (whose CPU
 * activations have one scale per 256 columns) (int8 tensor-core mma); 0: as f16 like every other type;
 * -1 (the default): where that measured faster on the H200 (one token, and 2-8 tokens of
 * Q4_1, Q4_K and Q6_K, with at least 1 GiB of weights uploaded). */
int kb_cuda_set_mmv_i8(KbCuda *ctx, int n_tok, int on);
/* Whether TYPE's products can take int8 activations at all (what kb_cuda_set_mmv_i8 turns on). */
int kb_cuda_i8_type(int type);
void kb_cuda_set_pdl(KbCuda *ctx, int on);

/* Makes CTX's device current on the calling thread (the runtime's current device is per
 * thread: a context made on one thread and driven from another needs this there).
 * Returns 0 or -errno. */
int kb_cuda_bind(KbCuda *ctx);

/* ---- graphs and timing ---- */

/* Everything queued between begin and end is captured into a graph instead of run. */
int kb_cuda_capture_begin(KbCuda *ctx);
int kb_cuda_capture_end(KbCuda *ctx, KbCudaGraph **ret_graph);
int kb_cuda_graph_launch(KbCuda *ctx, KbCudaGraph *graph); /* queued */
void kb_cuda_graph_free(KbCudaGraph *graph);               /* NULL-safe */

/* Records a start event; kb_cuda_timer_stop records the end, waits for it and returns
 * the elapsed milliseconds between the two on the stream. */
int kb_cuda_timer_start(KbCuda *ctx);
int kb_cuda_timer_stop(KbCuda *ctx, double *ret_ms);

/* ---- the ops-table backend (backend_cuda.c; step recording in backend_steps.c) ---- */

/* How the steps of a backend made by kb_cuda_backend_new ran so far: captured into a
 * graph (and run), replayed, run op by op, and captures that failed (that size then
 * runs op by op for good); q/k/v products with RoPE and the KV stores in their epilogue
 * (kb_cuda_mmv_qkv_rope), and of those the ones of two weight types that ran as one launch
 * (its pair); both counted where the op runs, not in graph replays. */
typedef struct {
	uint64_t captures, replays, plain, failed;
	uint64_t qkv_pairs, qkv_rope;
	uint64_t att_ll; /* attention launches that took q, k and v by their tags (KbCudaLL) */
} KbCudaStepStats;

struct KbBackend;
/* Returns 0 and *ret, or -EINVAL when B is not a CUDA backend. */
int kb_cuda_backend_step_stats(struct KbBackend *b, KbCudaStepStats *ret);

#ifdef __cplusplus
}
#endif

#endif
