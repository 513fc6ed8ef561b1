/* kernels/cuda/backend_internal.h: private to the CUDA ops table, shared by backend_cuda.c
 * (the ops) and backend_steps.c (step recording with CUDA graphs): the backend's structs
 * and the few functions one of the two files calls in the other.  Include it nowhere else. */
#ifndef QD_KERNELS_CUDA_BACKEND_INTERNAL_H
#define QD_KERNELS_CUDA_BACKEND_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "../backend.h"
#include "cuda.h"

/* A device copy of the last host index array of one kind. */
typedef struct {
	int32_t *dev;
	int32_t *shadow; /* host copy of what dev holds */
	int cap, n;
} IdxBuf;

/* What weight_prepare leaves in KbWeight.priv. */
typedef struct {
	KbCudaWeight *mm; /* repacked for the products; NULL if the type has no product kernel */
	uint8_t *raw;     /* GGUF rows for get_rows, uploaded on first use */
	int64_t row_bytes;
} CudaWeight;

#define STEP_GRAPH_MAX_TOK 64 /* larger steps (prefill) run op by op */
#define STEP_GRAPHS 8          /* graphs kept; the least recently used goes first */

typedef struct {
	int n;          /* n_tokens of the step it replays; 0: free */
	int variant;    /* and its KbStep.variant (0 or 1) */
	int splits;     /* and the splits its attention launches have (kb_cuda_att_splits) */
	KbCudaGraph *g;
	uint64_t used;  /* clock of the last replay */
	int32_t *ids;   /* matmul_argmax in the step: where its ids go at the sync after a replay */
	int ids_n;
} StepGraph;

/* A queued step that ends with the greedy ids, whose ids the caller has not had yet
 * (KbOps.sync_lag): they go to TO (n of them) from half HALF of c->amax once its mark
 * (kb_cuda_mark HALF) is passed. */
typedef struct {
	int32_t *to;
	int n, half;
} StepLag;

/* The step in progress and the graph cache. */
typedef struct {
	int32_t *dev;           /* device: ids [n], positions [n], slots [n] of the step, then its serial */
	int32_t *host;          /* pinned staging for the one copy: two halves of [3][cap] + 1, a step
				 * taking half serial & 1, so that one may be written while the other's
				 * copy is still queued */
	uint32_t serial;        /* the step's number, never 0 in its low 24 bits (KbCudaLL's tags);
				 * one step's and the next's differ in the lowest bit (step_serial_next) */
	int cap;
	int active, capturing, n, variant, splits, feed;
	int copy_queued[2];     /* a copy out of that half may still be queued (until cuda_sync) */
	int fed_n;              /* n of the last step queued, when it ended with the greedy ids, which
				 * are then its successor's tokens in dev (KbStep.feed); else 0 */
	StepLag lag[2];         /* queued steps whose ids are not delivered yet, oldest first */
	int n_lag;
	const int32_t *tok, *pos, *seq; /* the step's host arrays, as the ops will pass them */
	StepGraph graphs[STEP_GRAPHS];
	uint8_t state[2][STEP_GRAPH_MAX_TOK + 1]; /* per variant and n: 0 new, 1 ran once (warm), 2 not capturable */
	uint64_t clock;
	KbCudaStepStats stats;
	int enabled;
} StepState;

typedef struct {
	KbBackend base;
	KbCuda *ctx;
	IdxBuf ids, pos, seq;
	IdxBuf att_tiles;       /* tensor-core attention's tiles of the last many-token step */
	int32_t *tiles_host;    /* and their host staging, [2 * n] */
	int tiles_cap;
	StepState step;
	KbCudaAct *act;         /* converted activations for the products */
	KbCudaAct *act_alt;     /* the other one of matmul_res_norm (it reads act, writes this; then they swap) */
	double *norm_part;      /* its sums of squares, [KB_CUDA_MAX_TOK][rows / 32] */
	size_t norm_part_bytes;
	struct {                /* matmul_res_norm's fused norm: y_norm (NULL: none) is not written,
				 * only act holds it (as y * g); the rest is the norm, run after all
				 * (norm_settle) when a product cannot scale by 1 / rms */
		const float *y_norm, *y_res, *norm_w;
		int n, dim;
		float eps;
	} pend;
	const float *act_x;     /* the f32 buffer act holds (act_n tokens x act_cols), or NULL */
	int act_n;
	int64_t act_cols;
	int fuse;
	/* attention takes the q/k/v launch's rows by their tags (KbCudaLL) at one token in a
	 * step: QD_CUDA_ATT_LL (default on) */
	int ll_on;
	uint64_t *ll;           /* the hand-over words, [nq + 2 nkv] */
	size_t ll_bytes;
	int ll_pend;            /* layer_id whose matmul_rope_kv wrote them this step, for its attention; 0: none */
	int att_tc;             /* many-token attention on the tensor cores (attention_tc.cu) */
	int att_heads;          /* n_head of the last attention call (0: none yet), for step_begin's
				 * prediction of its launch (kb_cuda_att_splits) */
	int gemm;               /* products of > KB_CUDA_MAX_TOK tokens through kb_cuda_mmq */
	void *xq;               /* its f16 activation scratch */
	size_t xq_bytes;
	int32_t *amax;          /* matmul_argmax: the rows' greedy ids, in mapped host memory; a
				 * step's in half (serial & 1) of it (amax_half ids each) */
	int64_t amax_half;
	int32_t *amax_dev;      /* its device address: the kernel writes the ids there directly */
	size_t amax_bytes;
	int32_t *amax_to;       /* matmul_argmax in a step: the caller's ids array, filled by the */
	int amax_to_n;          /* next sync (cuda_sync), and its length; NULL: none pending */
	void *topk_dev;         /* topk: ids [n][k], values [n][k], counts [n] on the device */
	void *topk_host;        /* and their copy on the host */
	size_t topk_bytes;
	char desc[352];
} CudaBackend;

static inline CudaBackend *cb(KbBackend *b)
{
	return (CudaBackend *)b;
}

/* The step's serial on the device (KbCudaLL.serial), inside a step. */
static inline const uint32_t *step_serial(const CudaBackend *c)
{
	return (const uint32_t *)(c->step.dev + 3 * (int64_t)c->step.n);
}

/* The longest context among a step's tokens (host positions): what its attention
 * launches are sized for (kb_cuda_attention's max_len). */
static inline int step_max_len(const int32_t *pos, int n)
{
	int m = 0;
	for (int t = 0; t < n; t++)
		if (pos[t] + 1 > m)
			m = pos[t] + 1;
	return m;
}

/* ---- backend_cuda.c ---- */

/* The table of every backend kb_cuda_backend_new makes; its address tells them apart. */
extern const KbOps cuda_ops;

/* Forgets which f32 buffer c->act holds: every op but a product calls it before running. */
void act_forget(CudaBackend *c);

/* Buffers (backend_cuda.c): regrow_begin before replacing one that queued kernels or
 * recorded graphs may use (refused while capturing); c->act with room for COLS columns;
 * a device buffer of at least BYTES (1: replaced, 0: large enough); c->xq likewise; the
 * device copy of one of the step's index arrays (WHICH: 0 ids, 1 positions, 2 slots). */
int regrow_begin(CudaBackend *c);
int act_ensure(CudaBackend *c, int64_t cols);
int dev_grow(CudaBackend *c, void **buf, size_t *have, size_t bytes);
int host_grow(CudaBackend *c, void **host, void **dev, size_t *have, size_t bytes);
int xq_ensure(CudaBackend *c, size_t bytes);
int step_idx(CudaBackend *c, IdxBuf *ib, int which, const int32_t *host, int n, const int32_t **ret_dev);

/* Ops of the table (kernels/backend.h's contracts): backend_cuda.c's that the products
 * fall back on, and backend_products.c's. */
int cuda_rmsnorm(KbBackend *b, const float *x, const float *weight, int n, int dim, float eps, float *y);
int cuda_swiglu(KbBackend *b, const float *g, const float *u, int n, int64_t dim, float *y);
int cuda_rope_kv_store(KbBackend *b, const KbAttention *a, float *q, float *k, const float *v, int rot_dim,
		       float base);
int cuda_matmul(KbBackend *b, const KbWeight *w, const float *x, int n, float *y);
int cuda_matmul_multi(KbBackend *b, int nw, const KbWeight *const *w, const float *x, int n, float *const *y,
		      int acc);
int cuda_matmul_argmax(KbBackend *b, const KbWeight *w, const float *x, int n, float *y, int32_t *ret_idx);
int cuda_matmul_rope_kv(KbBackend *b, const KbWeight *const *w, const float *x, int n, float *const *y,
			const KbAttention *a, int rot_dim, float base);
int cuda_matmul_res_norm(KbBackend *b, const KbWeight *w, const float *x, int n, float *y_res,
			 const float *norm_w, int dim, float eps, float *y_norm);
int cuda_matmul_swiglu(KbBackend *b, const KbWeight *const *w, const float *x, int n, float *const *y, float *h);

/* ---- backend_steps.c ---- */

/* Frees every recorded step graph; called before a buffer they may point at is freed. */
void graphs_drop(CudaBackend *c);

/* The table's step_begin and step_end, with the contract of kernels/backend.h. */
int cuda_step_begin(KbBackend *b, const KbStep *s);
int cuda_step_end(KbBackend *b, int status);
/* The ids of the oldest N queued steps (StepLag), whose work has finished, to their
 * callers' arrays; the rest move up. */
void lag_deliver(CudaBackend *c, int n);

#endif
