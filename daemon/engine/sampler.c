/* daemon/engine/sampler.c: logits -> token.  The chain is llama.cpp's default order:
 * repetition penalty, top-k, top-p, min-p, temperature, then a draw.  Probabilities are
 * computed in double and the generator is a fixed xoshiro256** seeded through splitmix64,
 * so a seed reproduces the same tokens on any machine. */
#include "sampler.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/topk.h"

typedef struct {
	int32_t id;
	float logit;
	double p;
} Cand;

struct Sampler {
	SamplerParams p;
	int32_t n_vocab;
	uint64_t rng[4];
	int32_t *recent; /* ring of the last repeat_last_n accepted tokens */
	int n_recent, recent_pos;
	Cand *cand;      /* [n_vocab] */
	int32_t *top_ids; /* [top_k] keep_top_logits' scratch, when 0 < top_k < n_vocab */
	float *top_vals;
};

SamplerParams sampler_defaults(void)
{
	return (SamplerParams){ .temp = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f,
				.repeat_penalty = 1.0f, .repeat_last_n = 64, .seed = 0 };
}

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(uint64_t *s)
{
	uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

int sampler_new(const SamplerParams *p, int32_t n_vocab, Sampler **ret)
{
	if (n_vocab < 1 || !p || isnan(p->temp) || isnan(p->top_p) || p->top_p < 0 || isnan(p->min_p) ||
	    p->min_p > 1 || !(p->repeat_penalty > 0) || p->repeat_last_n < 0 || p->repeat_last_n > (1 << 20))
		return -EINVAL;
	Sampler *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->p = *p;
	s->n_vocab = n_vocab;
	uint64_t seed = p->seed;
	for (int i = 0; i < 4; i++)
		s->rng[i] = splitmix64(&seed);
	s->cand = malloc(sizeof(Cand) * (size_t)n_vocab);
	s->recent = malloc(sizeof(int32_t) * (size_t)(p->repeat_last_n ? p->repeat_last_n : 1));
	if (p->top_k > 0 && p->top_k < n_vocab) {
		s->top_ids = malloc(sizeof(int32_t) * (size_t)p->top_k);
		s->top_vals = malloc(sizeof(float) * (size_t)p->top_k);
	}
	if (!s->cand || !s->recent || (p->top_k > 0 && p->top_k < n_vocab && (!s->top_ids || !s->top_vals))) {
		sampler_free(s);
		return -ENOMEM;
	}
	*ret = s;
	return 0;
}

void sampler_free(Sampler *s)
{
	if (!s)
		return;
	free(s->cand);
	free(s->top_ids);
	free(s->top_vals);
	free(s->recent);
	free(s);
}

void sampler_accept(Sampler *s, int32_t token)
{
	if (s->p.repeat_last_n == 0)
		return;
	s->recent[s->recent_pos] = token;
	s->recent_pos = (s->recent_pos + 1) % s->p.repeat_last_n;
	if (s->n_recent < s->p.repeat_last_n)
		s->n_recent++;
}

/* First index of the largest value.  Eight running maxima break the dependency chain (a
 * greedy step scans the whole vocabulary); the second pass finds the first index. */
static int32_t argmax(const float *x, int32_t n)
{
	float m[8];
	int32_t i = 0;
	for (int j = 0; j < 8; j++)
		m[j] = -INFINITY;
	for (; i + 8 <= n; i += 8)
		for (int j = 0; j < 8; j++)
			m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
	float mx = -INFINITY;
	for (int j = 0; j < 8; j++)
		mx = m[j] > mx ? m[j] : mx;
	for (; i < n; i++)
		mx = x[i] > mx ? x[i] : mx;
	for (i = 0; i < n; i++)
		if (x[i] == mx)
			return i;
	return 0; /* all NaN */
}

static int cmp_cand(const void *a, const void *b)
{
	const Cand *x = a, *y = b;
	if (x->logit != y->logit)
		return x->logit < y->logit ? 1 : -1;
	return x->id < y->id ? -1 : x->id > y->id; /* stable across libcs */
}

/* The k best logits (NaN and -inf excluded; of equal logits the lower ids) into
 * out[0..m), sorted best first (kernels/cpu/topk.c: one pass, blocks that cannot enter
 * skipped; ids/vals: [k] scratch). */
static int32_t keep_top_logits(const float *logits, int32_t n, int32_t k, int32_t *ids, float *vals, Cand *out)
{
	const int32_t m = kb_topk_row(logits, n, k, 0, ids, vals);
	for (int32_t i = 0; i < m; i++)
		out[i] = (Cand){ ids[i], vals[i], 0 };
	qsort(out, (size_t)m, sizeof(Cand), cmp_cand);
	return m;
}

/* The lowest id of the candidates at +inf, or -1.  A +inf logit takes all the probability
 * (and would turn the softmax into NaNs): every path picks it before any softmax, without
 * a draw. */
static int32_t inf_pick(const Cand *c, int32_t n)
{
	int32_t best = -1;
	for (int32_t i = 0; i < n; i++)
		if (c[i].logit == INFINITY && (best < 0 || c[i].id < best))
			best = c[i].id;
	return best;
}

static int32_t draw(Sampler *s, Cand *c, int32_t n);

static void softmax(Cand *c, int32_t n, double temp)
{
	double mx = c[0].logit, sum = 0;
	for (int32_t i = 1; i < n; i++)
		if (c[i].logit > mx)
			mx = c[i].logit;
	for (int32_t i = 0; i < n; i++)
		sum += c[i].p = exp(((double)c[i].logit - mx) / temp);
	for (int32_t i = 0; i < n; i++)
		c[i].p /= sum;
}

bool sampler_is_greedy(const Sampler *s)
{
	return s->p.temp <= 0 && s->p.repeat_penalty == 1.0f;
}

int32_t sampler_sample_known(Sampler *s, float *logits, int32_t greedy)
{
	if (greedy >= 0 && greedy < s->n_vocab && sampler_is_greedy(s))
		return greedy;
	if (!logits)
		return -EINVAL;
	return sampler_sample(s, logits);
}

int32_t sampler_sample(Sampler *s, float *logits)
{
	const SamplerParams *p = &s->p;
	if (p->repeat_penalty != 1.0f) {
		/* Penalize each distinct recent token once (the ring may hold it several times). */
		for (int i = 0; i < s->n_recent; i++) {
			int32_t t = s->recent[i];
			if (t < 0 || t >= s->n_vocab)
				continue;
			bool seen = false;
			for (int j = 0; j < i && !seen; j++)
				seen = s->recent[j] == t;
			if (!seen)
				logits[t] = logits[t] > 0 ? logits[t] / p->repeat_penalty : logits[t] * p->repeat_penalty;
		}
	}
	if (p->temp <= 0)
		return argmax(logits, s->n_vocab);

	Cand *c = s->cand;
	int32_t n = 0;
	/* Only top-p needs the candidates in order; top-k finds its k in one pass over the
	 * logits, and min-p and plain temperature work on any order. */
	if (p->top_k > 0 && p->top_k < s->n_vocab) {
		n = keep_top_logits(logits, s->n_vocab, p->top_k, s->top_ids, s->top_vals, c);
	} else {
		for (int32_t i = 0; i < s->n_vocab; i++)
			if (!isnan(logits[i]) && logits[i] != -INFINITY)
				c[n++] = (Cand){ i, logits[i], 0 };
		if (n == 0)
			return argmax(logits, s->n_vocab);
		const int32_t inf = inf_pick(c, n);
		if (inf >= 0)
			return inf;
		if (p->top_p < 1.0f) {
			/* A token with p <= (1 - top_p) / n is never in the top-p set: had it been
			 * needed, the mass left before it (> 1 - top_p) would be spread over at
			 * most n tokens no likelier than it.  So only the rest is sorted. */
			softmax(c, n, 1.0);
			double floor_p = (1.0 - p->top_p) / n;
			int32_t m = 0;
			for (int32_t i = 0; i < n; i++)
				if (c[i].p > floor_p)
					c[m++] = c[i];
			n = m;
			qsort(c, (size_t)n, sizeof(Cand), cmp_cand);
		}
	}
	if (n == 0)
		return argmax(logits, s->n_vocab);
	return draw(s, c, n);
}

int sampler_topk(const Sampler *s)
{
	const SamplerParams *p = &s->p;
	return p->temp > 0 && p->repeat_penalty == 1.0f && p->top_k > 0 && p->top_k < s->n_vocab ? p->top_k : 0;
}

int32_t sampler_sample_top(Sampler *s, const int32_t *ids, const float *vals, int32_t n, int32_t greedy)
{
	const int k = sampler_topk(s);
	if (!k || n < 0 || n > s->n_vocab || (n && (!ids || !vals)))
		return -EINVAL;
	Cand *c = s->cand;
	int32_t m = 0;
	for (int32_t i = 0; i < n; i++)
		if (!isnan(vals[i]) && vals[i] != -INFINITY && ids[i] >= 0 && ids[i] < s->n_vocab)
			c[m++] = (Cand){ ids[i], vals[i], 0 };
	if (m == 0) /* a row of NaN and -inf: what argmax gives */
		return greedy >= 0 && greedy < s->n_vocab ? greedy : -EINVAL;
	qsort(c, (size_t)m, sizeof(Cand), cmp_cand);
	return draw(s, c, m < k ? m : k);
}

/* The chain after top-k: top-p, min-p, temperature and the draw, over the n candidates c
 * (n >= 1; sorted best first where top-p is on). */
static int32_t draw(Sampler *s, Cand *c, int32_t n)
{
	const SamplerParams *p = &s->p;
	const int32_t inf = inf_pick(c, n);
	if (inf >= 0)
		return inf;
	if (p->top_p < 1.0f) {
		softmax(c, n, 1.0);
		double cum = 0;
		int32_t keep = n;
		for (int32_t i = 0; i < n; i++) {
			cum += c[i].p;
			if (cum >= p->top_p) {
				keep = i + 1;
				break;
			}
		}
		n = keep;
	}
	if (p->min_p > 0 && n > 1) {
		softmax(c, n, 1.0);
		double pmax = 0;
		for (int32_t i = 0; i < n; i++)
			pmax = c[i].p > pmax ? c[i].p : pmax;
		int32_t keep = 0;
		for (int32_t i = 0; i < n; i++)
			if (c[i].p >= pmax * p->min_p)
				c[keep++] = c[i];
		n = keep > 0 ? keep : 1; /* the most likely always stays (finite p: it passes) */
	}
	softmax(c, n, p->temp);
	double u = (double)(next_u64(s->rng) >> 11) * (1.0 / 9007199254740992.0), cum = 0;
	for (int32_t i = 0; i < n; i++) {
		cum += c[i].p;
		if (u < cum)
			return c[i].id;
	}
	return c[n - 1].id;
}
