/* tests/gpu/test-cuda-ll.c: attention's hand-over of a one-token step's q, k and v by tags
 * (KbCudaLL: kb_cuda_attention with LL) against the same attention reading q and the
 * caches.  The words start out stale (another step's tag, or this step's with another
 * layer's, and other values), the right ones are written from a second stream while the
 * blocks already poll, and the output must be the reference's bits: a tag test that took
 * stale words, or words that never reached the blocks, would fail here (test-steps' case
 * runs where the q/k/v launch has finished before attention polls).  Head size 128 at 140
 * keys (a warp's keys span two tiles, the step's own key in the second), then the same in
 * five splits.  Without a usable GPU every test prints SKIP and the suite passes. */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cuda/cuda.h"
#include "kernels/cuda/ops.h"
#include "kernels/types.h"
#include "tests/testutil.h"

static const char *gpu_skip(void)
{
	int n = 0;
	return kb_cuda_device_count(&n) < 0 ? "no CUDA device or driver" : NULL;
}

enum { NH = 4, NKV = 2, HD = 128, LEN = 140, SLOTK = 160, KVD = NKV * HD, NQ = NH * HD,
       WORDS = NQ + 2 * KVD, LAYER = 7 };

/* A float an f16 holds exactly, so that the cache's f16 and the words' f32 agree. */
static float rand_h(uint64_t *s)
{
	return qd_f16_to_f32(qd_f32_to_f16(tu_rand_f32(s)));
}

static uint64_t word(uint32_t tag, float v)
{
	uint32_t b;
	memcpy(&b, &v, 4);
	return (uint64_t)tag << 32 | b;
}

/* One case at SPLIT_KEYS keys a split (0: the context's default). */
static void run_case(KbCuda *ctx, int split_keys)
{
	uint64_t s = 0x1a2b + (uint64_t)split_keys;
	const size_t cache_n = (size_t)SLOTK * KVD;
	float *q = malloc(sizeof(float) * NQ), *junk = malloc(sizeof(float) * NQ);
	float *kv[2] = { malloc(sizeof(float) * KVD), malloc(sizeof(float) * KVD) }; /* the step's own K, V */
	uint16_t *hc[2] = { malloc(2 * cache_n), malloc(2 * cache_n) };
	uint64_t *good = malloc(sizeof(uint64_t) * WORDS), *stale = malloc(sizeof(uint64_t) * WORDS);
	float out[2][NQ];
	CU_ASSERT_FATAL(q && junk && kv[0] && kv[1] && hc[0] && hc[1] && good && stale);
	for (int i = 0; i < NQ; i++) {
		q[i] = tu_rand_f32(&s);
		junk[i] = tu_rand_f32(&s);
	}
	for (int c = 0; c < 2; c++) {
		for (size_t i = 0; i < cache_n; i++)
			hc[c][i] = qd_f32_to_f16(tu_rand_f32(&s));
		for (int i = 0; i < KVD; i++)
			kv[c][i] = rand_h(&s);
	}
	const uint32_t serial = 0x123456, tag = serial << 8 | LAYER;
	for (int i = 0; i < WORDS; i++) {
		const float v = i < NQ ? q[i] : kv[(i - NQ) / KVD][(i - NQ) % KVD];
		good[i] = word(tag, v);
		/* the last step's words of this layer, or this step's of the next layer */
		stale[i] = word(i % 3 ? (serial - 1) << 8 | LAYER : serial << 8 | (LAYER + 1), tu_rand_f32(&s));
	}
	float *dq = NULL, *dout = NULL;
	uint16_t *dc[2] = { NULL, NULL };
	int32_t *dix = NULL;
	uint64_t *dll = NULL;
	uint32_t *dser = NULL;
	CU_ASSERT_EQUAL_FATAL(kb_cuda_alloc(ctx, sizeof(float) * NQ, (void **)&dq), 0);
	CU_ASSERT_EQUAL_FATAL(kb_cuda_alloc(ctx, sizeof(float) * NQ, (void **)&dout), 0);
	CU_ASSERT_EQUAL_FATAL(kb_cuda_alloc(ctx, 2 * cache_n, (void **)&dc[0]), 0);
	CU_ASSERT_EQUAL_FATAL(kb_cuda_alloc(ctx, 2 * cache_n, (void **)&dc[1]), 0);
	CU_ASSERT_EQUAL_FATAL(kb_cuda_alloc(ctx, sizeof(int32_t) * 2, (void **)&dix), 0);
	CU_ASSERT_EQUAL_FATAL(kb_cuda_alloc(ctx, sizeof(uint64_t) * WORDS, (void **)&dll), 0);
	CU_ASSERT_EQUAL_FATAL(kb_cuda_alloc(ctx, sizeof(uint32_t), (void **)&dser), 0);
	const int32_t ix[2] = { LEN - 1, 0 }; /* the token's position, its slot */
	CU_ASSERT_EQUAL(kb_cuda_upload(ctx, dix, ix, sizeof(ix)), 0);
	CU_ASSERT_EQUAL(kb_cuda_upload(ctx, dser, &serial, sizeof(serial)), 0);
	if (split_keys)
		CU_ASSERT_EQUAL(kb_cuda_set_att_split_keys(ctx, split_keys), 0);
	const float scale = 1.0f / sqrtf((float)HD);

	/* the reference: q, and the own rows in the caches */
	for (int c = 0; c < 2; c++)
		for (int i = 0; i < KVD; i++)
			hc[c][(size_t)(LEN - 1) * KVD + i] = qd_f32_to_f16(kv[c][i]);
	CU_ASSERT_EQUAL(kb_cuda_upload(ctx, dq, q, sizeof(float) * NQ), 0);
	for (int c = 0; c < 2; c++)
		CU_ASSERT_EQUAL(kb_cuda_upload(ctx, dc[c], hc[c], 2 * cache_n), 0);
	CU_ASSERT_EQUAL(kb_cuda_attention(ctx, dq, dc[0], dc[1], dix, dix + 1, 1, NH, NKV, HD, (int64_t)SLOTK * KVD, scale, LEN,
					  0, dout, NULL, NULL),
			0);
	CU_ASSERT_EQUAL(kb_cuda_download(ctx, out[0], dout, sizeof(out[0])), 0);

	/* the hand-over: q and the own rows elsewhere hold other values, the words are stale
	 * when attention starts, and the right ones come from another stream a few
	 * milliseconds later */
	for (int c = 0; c < 2; c++)
		for (int i = 0; i < KVD; i++)
			hc[c][(size_t)(LEN - 1) * KVD + i] = qd_f32_to_f16(tu_rand_f32(&s));
	CU_ASSERT_EQUAL(kb_cuda_upload(ctx, dq, junk, sizeof(float) * NQ), 0);
	for (int c = 0; c < 2; c++)
		CU_ASSERT_EQUAL(kb_cuda_upload(ctx, dc[c], hc[c], 2 * cache_n), 0);
	CU_ASSERT_EQUAL(kb_cuda_upload(ctx, dll, stale, sizeof(uint64_t) * WORDS), 0);
	CU_ASSERT_EQUAL(kb_cuda_memset(ctx, dout, 0xff, sizeof(float) * NQ), 0);
	CU_ASSERT_EQUAL(kb_cuda_sync(ctx), 0);
	const KbCudaLL ll = { .ll = dll, .serial = dser, .layer = LAYER, .nq = NQ, .nkv = KVD };
	CU_ASSERT_EQUAL(kb_cuda_attention(ctx, dq, dc[0], dc[1], dix, dix + 1, 1, NH, NKV, HD, (int64_t)SLOTK * KVD,
					  scale, LEN, 0, dout, NULL, &ll),
			1);
	cudaStream_t st;
	CU_ASSERT_EQUAL_FATAL(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), cudaSuccess);
	usleep(3000);
	CU_ASSERT_EQUAL(cudaMemcpyAsync(dll, good, sizeof(uint64_t) * WORDS, cudaMemcpyHostToDevice, st), cudaSuccess);
	CU_ASSERT_EQUAL(cudaStreamSynchronize(st), cudaSuccess);
	CU_ASSERT_EQUAL(cudaStreamDestroy(st), cudaSuccess);
	CU_ASSERT_EQUAL(kb_cuda_sync(ctx), 0);
	CU_ASSERT_EQUAL(kb_cuda_download(ctx, out[1], dout, sizeof(out[1])), 0);
	int differ = 0;
	for (int i = 0; i < NQ; i++)
		differ += memcmp(&out[0][i], &out[1][i], 4) != 0;
	CU_ASSERT_EQUAL(differ, 0);
	printf("\n    %d keys, %s: %d of %d outputs differ from the reference\n", LEN,
	       split_keys ? "splits of 32 keys" : "one split", differ, NQ);

	/* arguments the hand-over refuses: two tokens, a head size without the decode instances,
	 * words of other heads */
	CU_ASSERT_EQUAL(kb_cuda_attention(ctx, dq, dc[0], dc[1], dix, dix + 1, 2, NH, NKV, HD, (int64_t)SLOTK * KVD,
					  scale, LEN, 0, dout, NULL, &ll),
			-EINVAL);
	const KbCudaLL bad = { .ll = dll, .serial = dser, .layer = LAYER, .nq = NQ / 2, .nkv = KVD };
	CU_ASSERT_EQUAL(kb_cuda_attention(ctx, dq, dc[0], dc[1], dix, dix + 1, 1, NH, NKV, HD, (int64_t)SLOTK * KVD,
					  scale, LEN, 0, dout, NULL, &bad),
			-EINVAL);
	CU_ASSERT_EQUAL(kb_cuda_sync(ctx), 0);
	if (split_keys)
		CU_ASSERT_EQUAL(kb_cuda_set_att_split_keys(ctx, KB_ATT_SPLIT_KEYS), 0);
	void *ds[] = { dq, dout, dc[0], dc[1], dix, dll, dser };
	for (size_t i = 0; i < sizeof(ds) / sizeof(ds[0]); i++)
		kb_cuda_dev_free(ctx, ds[i]);
	free(q);
	free(junk);
	for (int c = 0; c < 2; c++) {
		free(kv[c]);
		free(hc[c]);
	}
	free(good);
	free(stale);
}

static void test_handover(void)
{
	KbCuda *ctx = NULL;
	CU_ASSERT_EQUAL_FATAL(kb_cuda_init(0, &ctx), 0);
	run_case(ctx, 0);
	run_case(ctx, 32);
	kb_cuda_free(ctx);
}

int main(void)
{
	static const TuTest tests[] = {
		{ "attention takes q, k and v by their tags", test_handover, gpu_skip },
		{ NULL, NULL, NULL },
	};
	return tu_main("cuda-ll", tests);
}
