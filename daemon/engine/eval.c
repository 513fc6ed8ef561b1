/* daemon/engine/eval.c: perplexity, KL-divergence against a base model, size and decode
 * speed for a set of models over one text (see eval.h for the method). */
#include "errmsg.h"
#include "eval.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../kernels/types.h"
#include "model.h"

typedef struct {
	Model *m;
	Context *c;
	double nll_sum, nll_sq, kld_sum;
	int64_t n, same_top;
} Slot;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

EvalParams eval_default_params(void)
{
	return (EvalParams){ .n_ctx = 512, .decode_tokens = 32 };
}

/* llama.cpp's llama_ftype numbers for the types quantd writes and common others. */
static const char *ftype_name(uint32_t ft)
{
	static const char *const names[] = { [0] = "F32", [1] = "F16", [2] = "Q4_0", [3] = "Q4_1", [7] = "Q8_0",
					     [8] = "Q5_0", [9] = "Q5_1", [10] = "Q2_K", [12] = "Q3_K_M",
					     [14] = "Q4_K_S", [15] = "Q4_K_M", [16] = "Q5_K_S", [17] = "Q5_K_M",
					     [18] = "Q6_K", [32] = "BF16" };
	return ft < sizeof(names) / sizeof(names[0]) ? names[ft] : NULL;
}

static void copy_str(char *dst, size_t cap, const char *s, size_t len)
{
	if (len >= cap)
		len = cap - 1;
	memcpy(dst, s, len);
	dst[len] = 0;
}

static void describe(const Model *m, EvalResult *r)
{
	const GgufFile *g = model_gguf(m);
	const char *s;
	size_t len;
	uint32_t ft;
	snprintf(r->name, sizeof(r->name), "%s", model_name(m));
	if (gguf_get_str(g, "quantize.type", &s, &len) == 0)
		copy_str(r->type, sizeof(r->type), s, len);
	else if (gguf_get_u32(g, "general.file_type", &ft) == 0 && ftype_name(ft))
		snprintf(r->type, sizeof(r->type), "%s", ftype_name(ft));
	else {
		const GgufTensor *t = gguf_find_tensor(g, "blk.0.attn_q.weight");
		const QdTypeTraits *tr = t ? qd_type_traits(t->type) : NULL;
		snprintf(r->type, sizeof(r->type), "%s", tr ? tr->name : "?");
	}
	if (gguf_get_str(g, "quantize.method", &s, &len) == 0)
		copy_str(r->method, sizeof(r->method), s, len);
	else
		snprintf(r->method, sizeof(r->method), "-");
	uint64_t bytes = 0, elems = 0;
	for (size_t i = 0; i < gguf_n_tensors(g); i++) {
		const GgufTensor *t = gguf_tensor(g, i);
		bytes += t->nbytes;
		elems += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
	}
	r->size_bytes = gguf_file_size(g);
	r->bpw = elems ? 8.0 * (double)bytes / (double)elems : 0;
	r->kld = r->top1 = NAN;
}

/* Log-softmax of l[n] into out[n]; returns the argmax. */
static int log_softmax(const float *l, int n, float *out)
{
	int best = 0;
	for (int i = 1; i < n; i++)
		if (l[i] > l[best])
			best = i;
	double sum = 0;
	for (int i = 0; i < n; i++)
		sum += exp((double)(l[i] - l[best]));
	float lz = l[best] + (float)log(sum);
	for (int i = 0; i < n; i++)
		out[i] = l[i] - lz;
	return best;
}

/* Decodes one window on slot S from an empty cache, asking logits for positions >= first. */
static int run_window(Slot *s, const int32_t *tok, int n_ctx, int first, int32_t *pos, int32_t *seq,
		      uint8_t *want)
{
	int r = ctx_seq_truncate(s->c, 0, 0);
	if (r < 0)
		return r;
	for (int i = 0; i < n_ctx; i++) {
		pos[i] = i;
		seq[i] = 0;
		want[i] = i >= first && i < n_ctx - 1;
	}
	Batch b = { .n_tokens = n_ctx, .token = tok, .pos = pos, .seq = seq, .want_logits = want };
	return ctx_decode(s->c, &b);
}

/* Batch-1 decode speed: a short prompt, then `steps` single-token passes. */
static double decode_speed(Slot *s, const int32_t *tok, int steps)
{
	int32_t pos = 0, seq = 0;
	if (ctx_seq_truncate(s->c, 0, 0) < 0)
		return 0;
	double t0 = 0;
	for (int i = 0; i <= steps; i++) {
		if (i == 1)
			t0 = now(); /* the first pass warms caches and threads */
		pos = i;
		Batch b = { .n_tokens = 1, .token = &tok[i], .pos = &pos, .seq = &seq };
		if (ctx_decode(s->c, &b) < 0)
			return 0;
	}
	double dt = now() - t0;
	return dt > 0 ? steps / dt : 0;
}

static int tokenize(const Model *m, const char *text, size_t len, int32_t **ret, int *ret_n)
{
	const Tokenizer *t = model_tokenizer(m);
	int n = tok_encode(t, text, len, false, false, NULL, 0);
	if (n < 0)
		return n;
	int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
	if (!ids)
		return -ENOMEM;
	if (tok_encode(t, text, len, false, false, ids, (size_t)n) != n) {
		free(ids);
		return -EIO;
	}
	*ret = ids;
	*ret_n = n;
	return 0;
}

static void finish(const Slot *s, EvalResult *r, bool has_base)
{
	if (s->n == 0)
		return;
	double mean = s->nll_sum / (double)s->n;
	double var = s->nll_sq / (double)s->n - mean * mean;
	r->n_scored = (int)s->n;
	r->ppl = exp(mean);
	r->ppl_err = r->ppl * sqrt((var > 0 ? var : 0) / (double)s->n);
	if (has_base) {
		r->kld = s->kld_sum / (double)s->n;
		r->top1 = (double)s->same_top / (double)s->n;
	}
}

int eval_run(const char *const *paths, int n, int base_idx, const char *text, size_t len,
	     const EvalParams *p, EvalResult *ret, char *err, size_t errlen)
{
	EvalParams pp = p ? *p : eval_default_params();
	if (n < 1 || n > 256 || base_idx >= n || base_idx < -1 || !text || pp.n_ctx < 8 || pp.n_ctx > 1 << 16 ||
	    pp.max_windows < 0 || pp.decode_tokens < 0 || pp.decode_tokens > 4096)
		return qd_errf(err, errlen, -EINVAL, "bad evaluation parameters");
	Slot *s = calloc((size_t)n, sizeof(Slot));
	EvalResult *res = calloc((size_t)n, sizeof(EvalResult));
	int32_t *ids = NULL, *ids2 = NULL, *pos = NULL, *seq = NULL;
	uint8_t *want = NULL;
	float *base_lp = NULL, *lp = NULL;
	int *base_top = NULL;
	int r = -ENOMEM, n_ids = 0, n_vocab = 0;
	if (!s || !res) {
		qd_errf(err, errlen, r, "out of memory");
		goto out;
	}
	for (int i = 0; i < n; i++) {
		char lerr[256] = "";
		if ((r = model_load(paths[i], &s[i].m, lerr, sizeof(lerr))) < 0) {
			qd_errf(err, errlen, r, "%s: %s", paths[i], lerr);
			goto out;
		}
		describe(s[i].m, &res[i]);
		int nv = model_config(s[i].m)->n_vocab;
		if (i > 0 && nv != n_vocab) {
			r = qd_errf(err, errlen, -EINVAL, "%s: vocabulary of %d tokens, %s has %d", paths[i], nv, paths[0], n_vocab);
			goto out;
		}
		n_vocab = nv;
		int n2 = 0;
		if ((r = tokenize(s[i].m, text, len, i ? &ids2 : &ids, &n2)) < 0) {
			qd_errf(err, errlen, r, "%s: cannot tokenize the text: %s", paths[i], strerror(-r));
			goto out;
		}
		if (i == 0) {
			n_ids = n2;
		} else {
			bool same = n2 == n_ids && !memcmp(ids, ids2, sizeof(int32_t) * (size_t)n_ids);
			free(ids2);
			ids2 = NULL;
			if (!same) {
				r = qd_errf(err, errlen, -EINVAL, "%s tokenizes the text differently from %s", paths[i], paths[0]);
				goto out;
			}
		}
	}
	const int n_ctx = pp.n_ctx, first = n_ctx / 2, n_score = n_ctx - first - 1;
	int n_win = n_ids / n_ctx;
	if (pp.max_windows && n_win > pp.max_windows)
		n_win = pp.max_windows;
	if (n_win < 1 || n_ids <= pp.decode_tokens) {
		r = qd_errf(err, errlen, -EINVAL, "the text has %d tokens, fewer than one window of %d", n_ids, n_ctx);
		goto out;
	}
	for (int i = 0; i < n; i++) {
		char why[320] = "";
		ContextParams cp = { .n_seq = 1, .n_ctx = n_ctx, .n_batch = n_ctx, .n_threads = pp.n_threads,
				     .backend = pp.backend, .err = why, .errlen = sizeof why };
		if ((r = ctx_new(s[i].m, &cp, &s[i].c)) < 0) {
			qd_errf(err, errlen, r, "%s: cannot create a context: %s", paths[i],
				why[0] ? why : strerror(-r));
			goto out;
		}
	}
	r = -ENOMEM;
	pos = malloc(sizeof(int32_t) * (size_t)n_ctx);
	seq = malloc(sizeof(int32_t) * (size_t)n_ctx);
	want = malloc((size_t)n_ctx);
	lp = malloc(sizeof(float) * (size_t)n_vocab);
	if (base_idx >= 0) {
		base_lp = malloc(sizeof(float) * (size_t)n_vocab * (size_t)n_score);
		base_top = malloc(sizeof(int) * (size_t)n_score);
	}
	if (!pos || !seq || !want || !lp || (base_idx >= 0 && (!base_lp || !base_top))) {
		qd_errf(err, errlen, r, "out of memory");
		goto out;
	}
	for (int w = 0; w < n_win; w++) {
		const int32_t *tok = ids + (int64_t)w * n_ctx;
		/* The base goes first so the others can be compared with it. */
		for (int k = -1; k < n; k++) {
			int i = k < 0 ? base_idx : k;
			if (i < 0 || (k >= 0 && i == base_idx))
				continue;
			if ((r = run_window(&s[i], tok, n_ctx, first, pos, seq, want)) < 0) {
				qd_errf(err, errlen, r, "%s: forward pass: %s", paths[i], strerror(-r));
				goto out;
			}
			for (int j = 0; j < n_score; j++) {
				const float *l = ctx_logits(s[i].c, j);
				float *o = i == base_idx ? base_lp + (int64_t)j * n_vocab : lp;
				int top = log_softmax(l, n_vocab, o);
				double nll = -(double)o[tok[first + j + 1]];
				s[i].nll_sum += nll;
				s[i].nll_sq += nll * nll;
				s[i].n++;
				if (i == base_idx) {
					base_top[j] = top;
					s[i].same_top++;
					continue;
				}
				if (base_idx < 0)
					continue;
				const float *b = base_lp + (int64_t)j * n_vocab;
				double kl = 0;
				for (int v = 0; v < n_vocab; v++)
					kl += exp((double)b[v]) * (double)(b[v] - o[v]);
				s[i].kld_sum += kl > 0 ? kl : 0; /* rounding can make a tiny KL negative */
				s[i].same_top += top == base_top[j];
			}
		}
		if (pp.progress)
			pp.progress(pp.cb_arg, w + 1, n_win);
	}
	for (int i = 0; i < n; i++) {
		finish(&s[i], &res[i], base_idx >= 0);
		if (pp.decode_tokens)
			res[i].tok_s = decode_speed(&s[i], ids, pp.decode_tokens < n_ctx ? pp.decode_tokens : n_ctx - 1);
	}
	memcpy(ret, res, sizeof(EvalResult) * (size_t)n);
	r = 0;
out:
	for (int i = 0; s && i < n; i++) {
		ctx_free(s[i].c);
		model_free(s[i].m);
	}
	free(s);
	free(res);
	free(ids);
	free(ids2);
	free(pos);
	free(seq);
	free(want);
	free(lp);
	free(base_lp);
	free(base_top);
	return r;
}
