/* kernels/cuda/device.cu: the CUDA context: device selection, stream, pinned staging,
 * memory, uploads, graphs and event timing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.cuh"
#include "ops.h"

static double now_sec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

extern "C" int kb_cuda_device_count(int *ret_n)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess) {
		(void)cudaGetLastError(); /* clear: the error is not sticky */
		return -ENODEV;
	}
	if (n < 1)
		return -ENODEV;
	*ret_n = n;
	return 0;
}

/* Defaults chosen by bench-cuda-mmv --sweep on the H200 (bench/results/gpu-mmv-sweep-*):
 * 8 warps, one row tile per group, no extra L2 prefetch, as many blocks as fit, the
 * bulk-copy ring by weight type (stages -1); attention splits of at least
 * KB_ATT_SPLIT_KEYS keys; many-token products shared as kb_cuda_set_mmq_shares says. */
static void default_config(KbCuda *ctx)
{
	ctx->att_split_keys = KB_ATT_SPLIT_KEYS;
	ctx->mmq_max_waves = KB_MMQ_MAX_WAVES;
	ctx->mmq_min_units = KB_MMQ_MIN_UNITS;
	ctx->mmq_bulk = -1;
	for (int t = 0; t < KB_CUDA_MAX_TOK; t++) {
		ctx->mmv[t].warps = KB_MMV_WARPS;
		ctx->mmv[t].row_tiles = 1;
		ctx->mmv[t].prefetch = 0;
		ctx->mmv[t].persist = 64; /* i.e. as many as fit */
		ctx->mmv[t].stages = -1; /* by type and row length (kb_auto_stages, matmul_bulk.cuh) */
		ctx->mmv[t].i8 = -1; /* where it measured faster (kb_i8_use) */
	}
}

int kb_cuda_split_scratch(KbCuda *ctx, size_t part_bytes, size_t n_cnt, float **part, unsigned **cnt)
{
	if (*part)
		return 0;
	int r = kb_cuda_alloc(ctx, part_bytes, (void **)part);
	if (r == 0)
		r = kb_cuda_alloc(ctx, n_cnt * sizeof(unsigned), (void **)cnt);
	if (r == 0)
		r = kb_cuda_memset(ctx, *cnt, 0, n_cnt * sizeof(unsigned));
	if (r < 0) {
		kb_cuda_dev_free(ctx, *part);
		kb_cuda_dev_free(ctx, *cnt);
		*part = NULL;
		*cnt = NULL;
	}
	return r;
}

#ifdef QD_TRACE
/* The dev-only block trace (internal.cuh): one ring for the process, bound into every
 * translation unit's copy of its pointers when the first context starts, written to
 * $QD_TRACE_OUT (records in ring order, oldest first) when a context is freed. */
static int (*trace_binders[32])(void *, void *, unsigned);
static int trace_nbinders;
static KbTraceRec *trace_buf;
static unsigned long long *trace_cnt;
static int trace_users; /* contexts alive: the ring is written out and freed with the last */
static const unsigned trace_cap = 1u << 21;

extern "C" int kb_trace_register(int (*bind)(void *, void *, unsigned))
{
	if (trace_nbinders < 32)
		trace_binders[trace_nbinders++] = bind;
	return 0;
}

static void trace_start(KbCuda *ctx)
{
	if (!getenv("QD_TRACE_OUT"))
		return;
	ctx->traced = 1;
	trace_users++;
	if (trace_buf)
		return;
	if (cudaMalloc(&trace_buf, sizeof(KbTraceRec) * trace_cap) != cudaSuccess ||
	    cudaMalloc(&trace_cnt, sizeof(*trace_cnt)) != cudaSuccess ||
	    cudaMemset(trace_cnt, 0, sizeof(*trace_cnt)) != cudaSuccess) {
		fprintf(stderr, "trace: no device memory for the ring, not tracing\n");
		cudaFree(trace_buf);
		cudaFree(trace_cnt);
		trace_buf = NULL;
		trace_cnt = NULL;
		return;
	}
	for (int i = 0; i < trace_nbinders; i++)
		trace_binders[i](trace_buf, trace_cnt, trace_cap);
	fprintf(stderr, "trace: %d translation units, %u records\n", trace_nbinders, trace_cap);
}

static void trace_dump(KbCuda *ctx)
{
	const char *path = getenv("QD_TRACE_OUT");
	if (!ctx->traced || --trace_users > 0 || !trace_buf || !path)
		return;
	unsigned long long n = 0;
	cudaDeviceSynchronize();
	cudaMemcpy(&n, trace_cnt, sizeof(n), cudaMemcpyDeviceToHost);
	const unsigned long long keep = n < trace_cap ? n : trace_cap;
	KbTraceRec *h = (KbTraceRec *)malloc(sizeof(KbTraceRec) * trace_cap);
	FILE *f = fopen(path, "wb");
	if (h && f && cudaMemcpy(h, trace_buf, sizeof(KbTraceRec) * trace_cap, cudaMemcpyDeviceToHost) == cudaSuccess) {
		for (unsigned long long i = n - keep; i < n; i++)
			fwrite(&h[i % trace_cap], sizeof(KbTraceRec), 1, f);
		fprintf(stderr, "trace: %llu of %llu records to %s\n", keep, n, path);
	}
	if (f)
		fclose(f);
	free(h);
	cudaFree(trace_buf);
	cudaFree(trace_cnt);
	trace_buf = NULL;
	trace_cnt = NULL;
}
#endif

extern "C" int kb_cuda_bind(KbCuda *ctx)
{
	return ctx ? kb_err(cudaSetDevice(ctx->device)) : -EINVAL;
}

extern "C" void kb_cuda_free(KbCuda *ctx)
{
	if (!ctx)
		return;
	cudaSetDevice(ctx->device);
	if (ctx->stream)
		cudaStreamSynchronize(ctx->stream);
#ifdef QD_TRACE
	trace_dump(ctx);
#endif
	kb_cuda_act_free(ctx->act);
	if (ctx->att_part)
		cudaFree(ctx->att_part);
	if (ctx->att_cnt)
		cudaFree(ctx->att_cnt);
	if (ctx->mmq_part)
		cudaFree(ctx->mmq_part);
	if (ctx->mmq_cnt)
		cudaFree(ctx->mmq_cnt);
	for (int i = 0; i < 2; i++) {
		if (ctx->stage[i])
			cudaFreeHost(ctx->stage[i]);
		if (ctx->stage_ev[i])
			cudaEventDestroy(ctx->stage_ev[i]);
	}
	if (ctx->scratch)
		cudaFree(ctx->scratch);
	if (ctx->t0)
		cudaEventDestroy(ctx->t0);
	if (ctx->t1)
		cudaEventDestroy(ctx->t1);
	for (int i = 0; i < 2; i++)
		if (ctx->mark[i])
			cudaEventDestroy(ctx->mark[i]);
	if (ctx->stream)
		cudaStreamDestroy(ctx->stream);
	(void)cudaGetLastError();
	free(ctx);
}

extern "C" int kb_cuda_init(int device, KbCuda **ret_ctx)
{
	int n, r = kb_cuda_device_count(&n);
	if (r < 0)
		return r;
	if (device < 0 || device >= n)
		return -ENODEV;
	KbCuda *ctx = (KbCuda *)calloc(1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
	ctx->device = device;
	cudaDeviceProp prop;
	if ((r = kb_err(cudaSetDevice(device))) < 0 ||
	    (r = kb_err(cudaGetDeviceProperties(&prop, device))) < 0)
		goto fail;
	ctx->cc_major = prop.major;
	ctx->sm_count = prop.multiProcessorCount;
	ctx->smem_optin = prop.sharedMemPerBlockOptin;
	ctx->pdl = prop.major >= 9;
	default_config(ctx);
	if ((r = kb_err(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking))) < 0 ||
	    (r = kb_cuda_mmq_probe(ctx)) < 0)
		goto fail;
	ctx->stage_bytes = KB_STAGE_BYTES;
	for (int i = 0; i < 2; i++) {
		if ((r = kb_err(cudaHostAlloc(&ctx->stage[i], ctx->stage_bytes, cudaHostAllocDefault))) < 0 ||
		    (r = kb_err(cudaEventCreateWithFlags(&ctx->stage_ev[i], cudaEventDisableTiming))) < 0)
			goto fail;
	}
	if ((r = kb_err(cudaEventCreate(&ctx->t0))) < 0 || (r = kb_err(cudaEventCreate(&ctx->t1))) < 0)
		goto fail;
	for (int i = 0; i < 2; i++)
		if ((r = kb_err(cudaEventCreateWithFlags(&ctx->mark[i], cudaEventDisableTiming))) < 0)
			goto fail;
#ifdef QD_TRACE
	trace_start(ctx);
	ctx->smem_optin -= 256; /* the trace's static shared memory, beside opted-in rings */
#endif
	*ret_ctx = ctx;
	return 0;
fail:
	kb_cuda_free(ctx);
	return r;
}

extern "C" int kb_cuda_info(KbCuda *ctx, KbCudaInfo *ret_info)
{
	if (!ctx || !ret_info)
		return -EINVAL;
	cudaDeviceProp prop;
	KbCudaInfo info;
	int r;
	memset(&info, 0, sizeof(info));
	if ((r = kb_err(cudaSetDevice(ctx->device))) < 0 ||
	    (r = kb_err(cudaGetDeviceProperties(&prop, ctx->device))) < 0 ||
	    (r = kb_err(cudaMemGetInfo(&info.mem_free, &info.mem_total))) < 0 ||
	    (r = kb_err(cudaDriverGetVersion(&info.driver_version))) < 0 ||
	    (r = kb_err(cudaRuntimeGetVersion(&info.runtime_version))) < 0)
		return r;
	snprintf(info.name, sizeof(info.name), "%s", prop.name);
	info.device = ctx->device;
	info.cc_major = prop.major;
	info.cc_minor = prop.minor;
	info.sm_count = prop.multiProcessorCount;
	info.l2_bytes = (size_t)prop.l2CacheSize;
	*ret_info = info;
	return 0;
}

extern "C" void *kb_cuda_stream(KbCuda *ctx)
{
	return ctx ? (void *)ctx->stream : NULL;
}

extern "C" int kb_cuda_sync(KbCuda *ctx)
{
	if (!ctx)
		return -EINVAL;
	cudaSetDevice(ctx->device);
	return kb_err(cudaStreamSynchronize(ctx->stream));
}

extern "C" int kb_cuda_mark(KbCuda *ctx, int i)
{
	if (!ctx || i < 0 || i > 1)
		return -EINVAL;
	return kb_err(cudaEventRecord(ctx->mark[i], ctx->stream));
}

extern "C" int kb_cuda_mark_wait(KbCuda *ctx, int i)
{
	if (!ctx || i < 0 || i > 1)
		return -EINVAL;
	cudaSetDevice(ctx->device);
	return kb_err(cudaEventSynchronize(ctx->mark[i]));
}

extern "C" int kb_cuda_alloc(KbCuda *ctx, size_t bytes, void **ret_dev)
{
	if (!ctx || !ret_dev || bytes == 0)
		return -EINVAL;
	void *p = NULL;
	int r = kb_err(cudaSetDevice(ctx->device));
	if (r == 0)
		r = kb_err(cudaMalloc(&p, bytes));
	if (r < 0) {
		(void)cudaGetLastError(); /* an allocation failure is not sticky: clear it */
		return r;
	}
	*ret_dev = p;
	return 0;
}

extern "C" void kb_cuda_dev_free(KbCuda *ctx, void *dev)
{
	if (!ctx || !dev)
		return;
	cudaSetDevice(ctx->device);
	cudaFree(dev);
}

extern "C" int kb_cuda_host_alloc(KbCuda *ctx, size_t bytes, void **ret_host, void **ret_dev)
{
	if (!ctx || !bytes || !ret_host)
		return -EINVAL;
	void *h = NULL, *d = NULL;
	int r = kb_err(cudaSetDevice(ctx->device));
	if (r == 0)
		r = kb_err(cudaHostAlloc(&h, bytes, ret_dev ? cudaHostAllocMapped : cudaHostAllocDefault));
	if (r == 0 && ret_dev && (r = kb_err(cudaHostGetDevicePointer(&d, h, 0))) < 0) {
		cudaFreeHost(h);
		h = NULL;
	}
	if (r < 0)
		return r;
	*ret_host = h;
	if (ret_dev)
		*ret_dev = d;
	return 0;
}

extern "C" void kb_cuda_host_free(KbCuda *ctx, void *host)
{
	if (!ctx || !host)
		return;
	cudaSetDevice(ctx->device);
	cudaFreeHost(host);
}

/* Copies BYTES from host to device through the staging buffers; the host memcpy into
 * one buffer overlaps the DMA out of the other.  If PIECE is given it is called after
 * each piece is queued (offset, length) so callers can queue work on it (repacking);
 * it runs on the stream after the copy of that piece. */
typedef int (*kb_piece_fn)(void *arg, const void *dev_piece, size_t off, size_t len);

static int staged_copy(KbCuda *ctx, void *dev, const void *host, size_t bytes, size_t piece,
		       kb_piece_fn fn, void *arg)
{
	const uint8_t *src = (const uint8_t *)host;
	int r = 0;
	for (size_t off = 0, i = 0; off < bytes; off += piece, i++) {
		size_t n = bytes - off < piece ? bytes - off : piece;
		int b = (int)(i & 1);
		if (!ctx->stage[b])
			return -ENOMEM; /* lost in a failed regrow */
		if ((r = kb_err(cudaEventSynchronize(ctx->stage_ev[b]))) < 0)
			return r;
		memcpy(ctx->stage[b], src + off, n);
		void *dst = fn ? (void *)ctx->scratch : (void *)((uint8_t *)dev + off);
		if ((r = kb_err(cudaMemcpyAsync(dst, ctx->stage[b], n, cudaMemcpyHostToDevice, ctx->stream))) < 0)
			return r;
		if (fn && (r = fn(arg, dst, off, n)) < 0)
			return r;
		if ((r = kb_err(cudaEventRecord(ctx->stage_ev[b], ctx->stream))) < 0)
			return r;
	}
	return kb_err(cudaStreamSynchronize(ctx->stream));
}

extern "C" int kb_cuda_upload(KbCuda *ctx, void *dev, const void *host, size_t bytes)
{
	if (!ctx || (!dev && bytes) || (!host && bytes))
		return -EINVAL;
	int r = kb_err(cudaSetDevice(ctx->device));
	if (r < 0)
		return r;
	double t = now_sec();
	r = staged_copy(ctx, dev, host, bytes, ctx->stage_bytes, NULL, NULL);
	if (r == 0) {
		ctx->up_bytes += bytes;
		ctx->up_sec += now_sec() - t;
	}
	return r;
}

extern "C" int kb_cuda_download(KbCuda *ctx, void *host, const void *dev, size_t bytes)
{
	if (!ctx || (!dev && bytes) || (!host && bytes))
		return -EINVAL;
	int r = kb_err(cudaSetDevice(ctx->device));
	if (r == 0)
		r = kb_err(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, ctx->stream));
	if (r == 0)
		r = kb_err(cudaStreamSynchronize(ctx->stream));
	return r;
}

extern "C" int kb_cuda_copy(KbCuda *ctx, void *dst, const void *src, size_t bytes)
{
	if (!ctx || ((!dst || !src) && bytes))
		return -EINVAL;
	cudaSetDevice(ctx->device);
	return kb_err(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx->stream));
}

extern "C" int kb_cuda_memset(KbCuda *ctx, void *dev, int byte, size_t bytes)
{
	if (!ctx || (!dev && bytes))
		return -EINVAL;
	cudaSetDevice(ctx->device);
	return kb_err(cudaMemsetAsync(dev, byte, bytes, ctx->stream));
}

extern "C" void kb_cuda_upload_stats(const KbCuda *ctx, uint64_t *ret_bytes, double *ret_seconds)
{
	if (ret_bytes)
		*ret_bytes = ctx ? ctx->up_bytes : 0;
	if (ret_seconds)
		*ret_seconds = ctx ? ctx->up_sec : 0;
}

/* ---- weights: upload in bands of whole row tiles, repack each band on the device ---- */

extern "C" int kb_cuda_type_supported(int type)
{
	KbLay l;
	return kb_lay(type, &l) == 0;
}

static int block_info(int type, int *blck, int *bsize)
{
	switch (type) {
	case QD_TYPE_Q4_0: *blck = 32; *bsize = 18; return 0;
	case QD_TYPE_Q4_1: *blck = 32; *bsize = 20; return 0;
	case QD_TYPE_Q8_0: *blck = 32; *bsize = 34; return 0;
	case QD_TYPE_Q4_K: *blck = 256; *bsize = 144; return 0;
	case QD_TYPE_Q6_K: *blck = 256; *bsize = 210; return 0;
	case QD_TYPE_F16:
	case QD_TYPE_BF16: *blck = 1; *bsize = 2; return 0;
	default: return -EINVAL;
	}
}

extern "C" void kb_cuda_weight_free(KbCudaWeight *w)
{
	if (!w)
		return;
	if (w->live) {
		w->ctx->type_live[w->type]--;
		w->ctx->live_bytes -= w->gguf_bytes;
	}
	kb_cuda_dev_free(w->ctx, w->base);
	free(w);
}

extern "C" void kb_cuda_weight_info(const KbCudaWeight *w, KbCudaWeightInfo *ret)
{
	memset(ret, 0, sizeof(*ret));
	if (!w)
		return;
	ret->type = w->type;
	ret->rows = w->rows;
	ret->cols = w->cols;
	ret->gguf_bytes = w->gguf_bytes;
	ret->dev_bytes = w->dev_bytes;
}

typedef struct {
	KbCuda *ctx;
	KbCudaWeight *w;
	int64_t row_bytes, band_rows;
} UploadArg;

static int repack_piece(void *arg, const void *dev_piece, size_t off, size_t len)
{
	UploadArg *u = (UploadArg *)arg;
	int64_t row0 = (int64_t)(off / (size_t)u->row_bytes);
	int64_t nrows = (int64_t)(len / (size_t)u->row_bytes);
	/* the last band also covers the padding rows, which the repack fills with zeros */
	int64_t tiles = (row0 + nrows >= u->w->rows) ? u->w->n_tiles - row0 / 16 : nrows / 16;
	return kb_cuda_repack_band(u->ctx, u->w, row0 / 16, tiles, (const uint8_t *)dev_piece,
				   nrows, u->row_bytes);
}

static size_t align256(size_t x)
{
	return (x + 255) & ~(size_t)255;
}

extern "C" int kb_cuda_weight_upload(KbCuda *ctx, int type, int64_t rows, int64_t cols,
				     const void *data, KbCudaWeight **ret_w)
{
	KbLay l;
	int blck, bsize, r;
	if (!ctx || !data || !ret_w || kb_lay(type, &l) < 0 || block_info(type, &blck, &bsize) < 0)
		return -EINVAL;
	if (rows < 1 || cols < 1 || cols % blck || rows > ((int64_t)1 << 31) || cols > ((int64_t)1 << 31))
		return -EINVAL;
	if ((r = kb_err(cudaSetDevice(ctx->device))) < 0)
		return r;
	const int64_t row_bytes = cols / blck * bsize;
	const int64_t chunk_cols = (int64_t)l.P * l.CPK;
	KbCudaWeight *w = (KbCudaWeight *)calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->ctx = ctx;
	w->type = type;
	w->rows = rows;
	w->cols = cols;
	w->rows_pad = (rows + KB_ROW_PAD - 1) / KB_ROW_PAD * KB_ROW_PAD;
	w->cols_pad = (cols + chunk_cols - 1) / chunk_cols * chunk_cols;
	w->n_tiles = w->rows_pad / 16;
	w->gguf_bytes = (uint64_t)rows * (uint64_t)row_bytes;
	kb_tile_geom(&l, w->cols_pad, &w->geo);
	size_t qb = align256((size_t)(w->geo.q_tile * w->n_tiles));
	size_t sb = align256((size_t)(w->geo.s_tile * w->n_tiles));
	size_t db = align256((size_t)(w->geo.d_tile * w->n_tiles));
	w->dev_bytes = qb + sb + db;
	double t = now_sec();
	if ((r = kb_cuda_alloc(ctx, w->dev_bytes, (void **)&w->base)) < 0)
		goto fail;
	w->q = w->base;
	w->s = w->base + qb;
	w->d = w->base + qb + sb;

	{
		/* bands of whole tiles (64 rows) that fit the staging buffers */
		int64_t band_rows = (int64_t)(ctx->stage_bytes / (size_t)row_bytes) / KB_ROW_PAD * KB_ROW_PAD;
		if (band_rows < KB_ROW_PAD) {
			/* rows longer than 512 KiB: grow the staging buffers to one band */
			size_t need = (size_t)row_bytes * KB_ROW_PAD;
			for (int i = 0; i < 2; i++) {
				if ((r = kb_err(cudaEventSynchronize(ctx->stage_ev[i]))) < 0)
					goto fail;
				cudaFreeHost(ctx->stage[i]);
				ctx->stage[i] = NULL;
			}
			for (int i = 0; i < 2; i++)
				if ((r = kb_err(cudaHostAlloc(&ctx->stage[i], need, cudaHostAllocDefault))) < 0)
					goto fail_stage;
			ctx->stage_bytes = need;
			band_rows = KB_ROW_PAD;
		}
		size_t piece = (size_t)(band_rows * row_bytes);
		if (ctx->scratch_bytes < piece) {
			if (ctx->scratch)
				cudaFree(ctx->scratch);
			ctx->scratch = NULL;
			ctx->scratch_bytes = 0;
			if ((r = kb_cuda_alloc(ctx, piece, (void **)&ctx->scratch)) < 0)
				goto fail;
			ctx->scratch_bytes = piece;
		}
		UploadArg u = { ctx, w, row_bytes, band_rows };
		if ((r = staged_copy(ctx, NULL, data, (size_t)w->gguf_bytes, piece, repack_piece, &u)) < 0)
			goto fail;
	}
	ctx->up_bytes += w->gguf_bytes;
	ctx->up_sec += now_sec() - t;
	*ret_w = w;
	ctx->type_live[type]++; /* kb_act_planes, kb_i8_use */
	ctx->live_bytes += w->gguf_bytes;
	w->live = 1;
	return 0;
fail_stage:
	/* leave the context usable with the default staging size */
	for (int i = 0; i < 2; i++) {
		if (ctx->stage[i])
			cudaFreeHost(ctx->stage[i]);
		ctx->stage[i] = NULL;
	}
	ctx->stage_bytes = KB_STAGE_BYTES;
	for (int i = 0; i < 2; i++)
		if (kb_err(cudaHostAlloc(&ctx->stage[i], ctx->stage_bytes, cudaHostAllocDefault)) < 0)
			ctx->stage[i] = NULL;
fail:
	(void)cudaStreamSynchronize(ctx->stream);
	kb_cuda_weight_free(w);
	return r;
}

/* ---- graphs and timing ---- */

extern "C" int kb_cuda_capture_begin(KbCuda *ctx)
{
	if (!ctx)
		return -EINVAL;
	cudaSetDevice(ctx->device);
	return kb_err(cudaStreamBeginCapture(ctx->stream, cudaStreamCaptureModeThreadLocal));
}

extern "C" int kb_cuda_capture_end(KbCuda *ctx, KbCudaGraph **ret_graph)
{
	if (!ctx || !ret_graph)
		return -EINVAL;
	KbCudaGraph *g = (KbCudaGraph *)calloc(1, sizeof(*g));
	cudaGraph_t graph = NULL;
	int r = kb_err(cudaStreamEndCapture(ctx->stream, &graph));
	if (r == 0 && !g)
		r = -ENOMEM;
	if (r == 0)
		r = kb_err(cudaGraphInstantiate(&g->exec, graph, 0));
	if (r < 0) {
		if (graph)
			cudaGraphDestroy(graph);
		free(g);
		return r;
	}
	g->graph = graph;
	*ret_graph = g;
	return 0;
}

extern "C" int kb_cuda_graph_launch(KbCuda *ctx, KbCudaGraph *graph)
{
	if (!ctx || !graph)
		return -EINVAL;
	return kb_err(cudaGraphLaunch(graph->exec, ctx->stream));
}

extern "C" void kb_cuda_graph_free(KbCudaGraph *graph)
{
	if (!graph)
		return;
	if (graph->exec)
		cudaGraphExecDestroy(graph->exec);
	if (graph->graph)
		cudaGraphDestroy(graph->graph);
	free(graph);
}

extern "C" int kb_cuda_timer_start(KbCuda *ctx)
{
	if (!ctx)
		return -EINVAL;
	return kb_err(cudaEventRecord(ctx->t0, ctx->stream));
}

extern "C" int kb_cuda_timer_stop(KbCuda *ctx, double *ret_ms)
{
	if (!ctx || !ret_ms)
		return -EINVAL;
	float ms = 0;
	int r = kb_err(cudaEventRecord(ctx->t1, ctx->stream));
	if (r == 0)
		r = kb_err(cudaEventSynchronize(ctx->t1));
	if (r == 0)
		r = kb_err(cudaEventElapsedTime(&ms, ctx->t0, ctx->t1));
	if (r == 0)
		*ret_ms = ms;
	return r;
}

/* Sets field F of the product configuration for n_tok tokens (0: all) to V in [lo, hi]. */
static int set_mmv_field(KbCuda *ctx, int n_tok, int KbMmvConfig::*f, int v, int lo, int hi)
{
	if (!ctx || n_tok < 0 || n_tok > KB_CUDA_MAX_TOK || v < lo || v > hi)
		return -EINVAL;
	for (int t = 0; t < KB_CUDA_MAX_TOK; t++)
		if (!n_tok || t == n_tok - 1)
			ctx->mmv[t].*f = v;
	return 0;
}

extern "C" int kb_cuda_set_mmv_stages(KbCuda *ctx, int n_tok, int stages)
{
	return set_mmv_field(ctx, n_tok, &KbMmvConfig::stages, stages, -1, 8);
}

extern "C" int kb_cuda_set_mmv_i8(KbCuda *ctx, int n_tok, int on)
{
	return set_mmv_field(ctx, n_tok, &KbMmvConfig::i8, on, -1, 1);
}

extern "C" void kb_cuda_set_pdl(KbCuda *ctx, int on)
{
	if (ctx)
		ctx->pdl = on && ctx->cc_major >= 9;
}

extern "C" int kb_cuda_set_mmv_config(KbCuda *ctx, int n_tok, int warps, int row_tiles, int prefetch,
				      int persist)
{
	if (!ctx || n_tok < 0 || n_tok > KB_CUDA_MAX_TOK || warps > 8 || warps == 0 ||
	    row_tiles == 0 || row_tiles > 2 || prefetch > 4)
		return -EINVAL;
	for (int t = 0; t < KB_CUDA_MAX_TOK; t++) {
		if (n_tok && t != n_tok - 1)
			continue;
		if (warps > 0)
			ctx->mmv[t].warps = warps;
		if (row_tiles > 0)
			ctx->mmv[t].row_tiles = row_tiles;
		if (prefetch >= 0)
			ctx->mmv[t].prefetch = prefetch;
		if (persist >= 0)
			ctx->mmv[t].persist = persist;
	}
	return 0;
}
