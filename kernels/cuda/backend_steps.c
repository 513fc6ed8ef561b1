/* kernels/cuda/backend_steps.c: step recording (CUDA graphs) for the ops table of
 * backend_cuda.c.  At step_begin the step's index arrays go to the device in one copy from
 * pinned memory, and the ops up to step_end read them from there.  A step of n_tokens <=
 * STEP_GRAPH_MAX_TOK runs op by op the first time (which also grows buffers and uploads
 * tables), is captured into a CUDA graph the second time and replayed from then on: one
 * launch instead of ~600 (7B).  The recorded kernels read everything that changes between
 * steps (ids, positions, slots, hence attention lengths) from device memory, so a replay is
 * the same computation as the op calls; only attention's launch is sized by the step's
 * longest context (its splits), so graphs are kept per (n_tokens, variant, splits), and a
 * step whose splits differ from every graph of its size is captured at once (its size has
 * run op by op before).  STEP_GRAPHS graphs are kept, the least recently
 * replayed going first; QD_CUDA_GRAPHS=0 (read by kb_cuda_backend_new) turns recording off. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../backend.h"
#include "backend_internal.h"
#include "cuda.h"
#include "ops.h"

void graphs_drop(CudaBackend *c)
{
	for (int i = 0; i < STEP_GRAPHS; i++) {
		kb_cuda_graph_free(c->step.graphs[i].g);
		memset(&c->step.graphs[i], 0, sizeof(c->step.graphs[i]));
	}
}

static StepGraph *graph_find(StepState *st, int n, int variant, int splits)
{
	for (int i = 0; i < STEP_GRAPHS; i++)
		if (st->graphs[i].n == n && st->graphs[i].variant == variant && st->graphs[i].splits == splits)
			return &st->graphs[i];
	return NULL;
}

/* A free slot, or the least recently replayed one, emptied.  A graph still running
 * is freed by the driver once it completes. */
static StepGraph *graph_slot(StepState *st)
{
	StepGraph *v = &st->graphs[0];
	for (int i = 0; i < STEP_GRAPHS; i++) {
		if (!st->graphs[i].n)
			return &st->graphs[i];
		if (st->graphs[i].used < v->used)
			v = &st->graphs[i];
	}
	kb_cuda_graph_free(v->g);
	memset(v, 0, sizeof(*v));
	return v;
}

/* The serial after S: +1, or +3 where that would be 0 in the low 24 bits (no tag is 0:
 * KbCudaLL), so that consecutive steps always differ in the lowest bit, which picks their
 * staging half and greedy ids' half. */
static uint32_t step_serial_next(uint32_t s)
{
	s++;
	return s & 0xffffffu ? s : s + 2;
}

void lag_deliver(CudaBackend *c, int n)
{
	StepState *st = &c->step;
	for (int i = 0; i < n && i < st->n_lag; i++) {
		const StepLag *l = &st->lag[i];
		memcpy(l->to, c->amax + (int64_t)l->half * c->amax_half, sizeof(int32_t) * (size_t)l->n);
		st->copy_queued[l->half] = 0;
	}
	if (n >= st->n_lag) {
		st->n_lag = 0;
		return;
	}
	memmove(&st->lag[0], &st->lag[n], sizeof(st->lag[0]) * (size_t)(st->n_lag - n));
	st->n_lag -= n;
}

/* The step's work is all queued: when it ends with the greedy ids (matmul_argmax left
 * c->amax_to), they wait for the caller's sync or sync_lag behind a mark of their own,
 * and they are the next step's tokens if it asks (KbStep.feed). */
static int step_queued(CudaBackend *c)
{
	StepState *st = &c->step;
	st->fed_n = 0;
	if (!c->amax_to)
		return 0;
	const int half = (int)(st->serial & 1u);
	int r = kb_cuda_mark(c->ctx, half);
	if (r < 0)
		return r;
	st->lag[st->n_lag++] = (StepLag){ .to = c->amax_to, .n = c->amax_to_n, .half = half };
	if (c->amax_to_n == st->n)
		st->fed_n = st->n;
	c->amax_to = NULL;
	return 0;
}

int cuda_step_begin(KbBackend *b, const KbStep *s)
{
	CudaBackend *c = cb(b);
	StepState *st = &c->step;
	if (!s || s->n_tokens < 1 || !s->token || !s->pos || !s->seq)
		return -EINVAL;
	if (st->active || st->n_lag >= 2)
		return -EBUSY;
	const int n = s->n_tokens, variant = s->variant != 0;
	/* a fed step follows a step of its size whose greedy ids are in dev's token slots */
	if (s->feed && st->fed_n != n)
		return -EINVAL;
	/* attention is launched with the splits the step's longest context can use, so a
	 * graph is recorded per split count too (at a decode step of few sequences, a new one
	 * every split_keys keys of context, up to KB_ATT_MAX_SPLITS); the head count is the
	 * last attention call's (none yet: the step runs op by op anyway) */
	const int splits = kb_cuda_att_splits(c->ctx, (int64_t)n * (c->att_heads > 0 ? c->att_heads : 1),
					      step_max_len(s->pos, n));
	/* the daemon may create a model's context on its loader thread and step it on the
	 * engine thread: kernel launches go to the calling thread's current device */
	int r = kb_cuda_bind(c->ctx);
	if (r < 0)
		return r;
	act_forget(c);
	if (n > st->cap) {
		/* recorded steps and queued kernels may use the old buffer, so growing drops
		 * every graph: room for a recorded step's tokens from the start, as for the
		 * greedy ids (a decode going from 1 sequence to 2 dropped every graph it had
		 * recorded; a prefill longer than any before still does) */
		int cap = n > 2 * st->cap ? n : 2 * st->cap;
		if (cap < STEP_GRAPH_MAX_TOK)
			cap = STEP_GRAPH_MAX_TOK;
		void *host = NULL, *dev = NULL;
		const size_t half = 3 * (size_t)cap + 1;
		if ((r = b->ops->sync(b)) < 0 ||
		    (r = kb_cuda_host_alloc(c->ctx, sizeof(int32_t) * 2 * half, &host, NULL)) < 0)
			return r;
		if ((r = kb_cuda_alloc(c->ctx, sizeof(int32_t) * half, &dev)) < 0) {
			kb_cuda_host_free(c->ctx, host);
			return r;
		}
		graphs_drop(c);
		kb_cuda_dev_free(c->ctx, st->dev);
		kb_cuda_host_free(c->ctx, st->host);
		st->dev = dev;
		st->host = host;
		st->cap = cap;
		st->fed_n = 0; /* (a fed step is no larger than the step before) */
	}
	/* The step's serial, the tag of its hand-over words (KbCudaLL): a replay's kernels
	 * read it from the device, so each step's tags differ from the last one's.  Its
	 * lowest bit picks the staging half: the other half's copy, the step before's, may
	 * still be queued (a step whose ids are read a step late, sync_lag).  This half's
	 * was two steps ago: that step has ended with a sync or its ids were delivered
	 * (sync_lag), unless it failed; then this step waits for it. */
	const uint32_t serial = step_serial_next(st->serial);
	const int h = (int)(serial & 1u);
	if (st->copy_queued[h] && (r = b->ops->sync(b)) < 0)
		return r;
	st->serial = serial;
	int32_t *stage = st->host + (int64_t)h * (3 * (int64_t)st->cap + 1);
	/* One copy for the three arrays and the serial, from pinned staging (an asynchronous
	 * DMA: no staging by the driver).  It completes before any kernel of the step starts,
	 * so kernels may read the indices before their PDL wait (attention does).  A fed step
	 * copies all but the ids: the last step's matmul_argmax wrote them in their place. */
	memcpy(stage, s->token, sizeof(int32_t) * (size_t)n);
	memcpy(stage + n, s->pos, sizeof(int32_t) * (size_t)n);
	memcpy(stage + 2 * n, s->seq, sizeof(int32_t) * (size_t)n);
	memcpy(stage + 3 * n, &st->serial, sizeof(st->serial));
	c->ll_pend = 0;
	const int skip = s->feed ? n : 0;
	st->fed_n = 0;
	if ((r = kb_cuda_upload_async(c->ctx, st->dev + skip, stage + skip,
				      sizeof(int32_t) * (3 * (size_t)n + 1 - (size_t)skip))) < 0)
		return r;
	st->copy_queued[h] = 1;
	if (st->enabled && n <= STEP_GRAPH_MAX_TOK) {
		StepGraph *g = graph_find(st, n, variant, splits);
		if (g) {
			g->used = ++st->clock;
			if ((r = kb_cuda_graph_launch(c->ctx, g->g)) < 0)
				return r;
			c->amax_to = g->ids; /* the recorded greedy ids, copied out at the sync */
			c->amax_to_n = g->ids_n;
			st->n = n;
			st->stats.replays++;
			return (r = step_queued(c)) < 0 ? r : 1;
		}
	}
	st->active = 1;
	st->n = n;
	st->variant = variant;
	st->splits = splits;
	st->feed = s->feed != 0;
	st->tok = s->token;
	st->pos = s->pos;
	st->seq = s->seq;
	uint8_t *state = st->enabled && n <= STEP_GRAPH_MAX_TOK ? &st->state[variant][n] : NULL;
	if (!state || *state == 2) {
		st->stats.plain++;
		return 0;
	}
	if (*state == 0) {
		/* warm-up: buffers grow and tables upload outside any capture */
		*state = 1;
		st->stats.plain++;
		return 0;
	}
	if (kb_cuda_capture_begin(c->ctx) < 0) {
		*state = 2;
		st->stats.plain++;
		return 0;
	}
	st->capturing = 1;
	return 0;
}

int cuda_step_end(KbBackend *b, int status)
{
	CudaBackend *c = cb(b);
	StepState *st = &c->step;
	if (!st->active)
		return -EINVAL;
	st->active = 0;
	act_forget(c);
	if (status < 0)
		c->amax_to = NULL;
	if (!st->capturing) {
		if (status < 0)
			return status;
		const int r = step_queued(c);
		return r < 0 ? r : 0;
	}
	st->capturing = 0;
	KbCudaGraph *g = NULL;
	int r = kb_cuda_capture_end(c->ctx, &g);
	if (status >= 0 && r == 0) {
		StepGraph *slot = graph_slot(st);
		slot->n = st->n;
		slot->variant = st->variant;
		slot->splits = st->splits;
		slot->ids = c->amax_to;
		slot->ids_n = c->amax_to_n;
		slot->g = g;
		slot->used = ++st->clock;
		st->stats.captures++;
		if ((r = kb_cuda_graph_launch(c->ctx, g)) < 0) {
			c->amax_to = NULL;
			return r;
		}
		return (r = step_queued(c)) < 0 ? r : 0;
	}
	/* Nothing recorded ran.  Whatever broke the capture (an op that cannot be
	 * recorded, or a failing one), this size now runs op by op: the caller runs
	 * the ops again, which reports a real failure as such.  A fed step's tokens are
	 * still where the step before left them: it may begin again (forward.c does). */
	kb_cuda_graph_free(g);
	c->amax_to = NULL;
	st->state[st->variant][st->n] = 2;
	st->stats.failed++;
	if (st->feed)
		st->fed_n = st->n;
	return 1;
}

int kb_cuda_backend_step_stats(KbBackend *b, KbCudaStepStats *ret)
{
	if (!b || b->ops != &cuda_ops || !ret)
		return -EINVAL;
	*ret = cb(b)->step.stats;
	return 0;
}
