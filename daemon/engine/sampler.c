/* daemon/engine/sampler.c: logits -> token.  The chain is llama.cpp's default order:
 * repetition penalty, top-k, top-p, min-p, temperature, then a draw.  Probabilities are
 * computed in double and the generator is a fixed xoshiro256** seeded through splitmix64,
 * so a seed reproduces the same tokens on any machine. */
#include "sampler.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
	if (!s->cand || !s->recent) {
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

static int32_t argmax(const float *x, int32_t n)
{
	int32_t best = 0;
	for (int32_t i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

static int cmp_cand(const void *a, const void *b)
{
	const Cand *x = a, *y = b;
	if (x->logit != y->logit)
		return x->logit < y->logit ? 1 : -1;
	return x->id < y->id ? -1 : x->id > y->id; /* stable across libcs */
}

/* Moves the k largest candidates to the front, sorted (quickselect-style partition
 * would be faster; a sort of the survivors of a cheap threshold keeps it simple). */
static int32_t keep_top(Cand *c, int32_t n, int32_t k)
{
	if (k <= 0 || k >= n) {
		qsort(c, (size_t)n, sizeof(Cand), cmp_cand);
		return n;
	}
	/* Threshold: the k-th largest logit found by repeated filtering keeps this O(n). */
	float lo = c[0].logit, hi = c[0].logit;
	for (int32_t i = 1; i < n; i++) {
		if (c[i].logit < lo)
			lo = c[i].logit;
		if (c[i].logit > hi)
			hi = c[i].logit;
	}
	for (int iter = 0; iter < 40 && hi > lo; iter++) {
		float mid = lo + (hi - lo) / 2;
		int32_t cnt = 0;
		for (int32_t i = 0; i < n; i++)
			cnt += c[i].logit >= mid;
		if (cnt >= k)
			lo = mid;
		else
			hi = mid;
		if (cnt == k)
			break;
	}
	int32_t m = 0;
	for (int32_t i = 0; i < n; i++)
		if (c[i].logit >= lo)
			c[m++] = c[i];
	qsort(c, (size_t)m, sizeof(Cand), cmp_cand);
	return m < k ? m : k;
}

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
	for (int32_t i = 0; i < s->n_vocab; i++)
		if (!isnan(logits[i]) && logits[i] != -INFINITY)
			c[n++] = (Cand){ i, logits[i], 0 };
	if (n == 0)
		return argmax(logits, s->n_vocab);
	n = keep_top(c, n, p->top_k > 0 ? p->top_k : 0);
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
		double floor_p = c[0].p * p->min_p;
		int32_t keep = 1;
		while (keep < n && c[keep].p >= floor_p)
			keep++;
		n = keep;
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
