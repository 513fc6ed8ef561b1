/* kernels/cuda/repack.cu: GGUF rows (already copied to the device) -> the GPU layout of
 * layout.cuh, one thread per (tile, packet, lane). */
#include "internal.cuh"

template <int T>
__global__ void __launch_bounds__(256) k_repack(const KbRepack r, int64_t n_tiles)
{
	const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
	const int64_t n_pk = r.geo.n_pk;
	if (idx >= n_tiles * n_pk * 32)
		return;
	const int lane = (int)(idx & 31);
	const int64_t pk = (idx >> 5) % n_pk, tl = (idx >> 5) / n_pk;
	kb_repack_lane<T>(&r, tl, pk, lane);
}

template <int T>
static int launch_repack(KbCuda *ctx, const KbRepack *r, int64_t n_tiles)
{
	const int64_t threads = n_tiles * r->geo.n_pk * 32;
	const int64_t blocks = (threads + 255) / 256;
	if (blocks > 0x7fffffff)
		return -EINVAL;
	/* a plain launch: the copy it follows is no kernel, and nothing here races */
	k_repack<T><<<(unsigned)blocks, 256, 0, ctx->stream>>>(*r, n_tiles);
	return kb_err(cudaGetLastError());
}

int kb_cuda_repack_band(KbCuda *ctx, KbCudaWeight *w, int64_t tile0, int64_t n_tiles,
			const uint8_t *raw_dev, int64_t rows_valid, int64_t row_bytes)
{
	KbRepack r;
	r.raw = raw_dev;
	r.row_bytes = row_bytes;
	r.rows_valid = rows_valid;
	r.cols = w->cols;
	r.geo = w->geo;
	r.q = w->q + tile0 * w->geo.q_tile;
	r.s = w->s + tile0 * w->geo.s_tile;
	r.d = w->d + tile0 * w->geo.d_tile;
	return kb_with_product_type(w->type,
				    [&](auto t) { return launch_repack<decltype(t)::value>(ctx, &r, n_tiles); });
}
