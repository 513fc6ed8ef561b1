/* tests/test-sampler.c: greedy, determinism per seed, each filter's effect, and that the
 * draws follow the softmax distribution. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../daemon/engine/sampler.h"
#include "testutil.h"

#define NV 1000

static void fill(float *l, uint64_t seed)
{
	for (int i = 0; i < NV; i++)
		l[i] = 4.0f * tu_rand_f32(&seed);
}

static int32_t draw(Sampler *s, const float *logits)
{
	float tmp[NV];
	memcpy(tmp, logits, sizeof(tmp));
	return sampler_sample(s, tmp);
}

static void test_greedy(void)
{
	float l[NV];
	fill(l, 1);
	l[777] = 10;
	SamplerParams p = sampler_defaults();
	p.temp = 0;
	Sampler *s;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &s), 0);
	for (int i = 0; i < 10; i++)
		CU_ASSERT_EQUAL(draw(s, l), 777);
	sampler_free(s);
	/* top_k = 1 at any temperature is greedy too. */
	p = sampler_defaults();
	p.top_k = 1;
	p.temp = 5;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &s), 0);
	for (int i = 0; i < 10; i++)
		CU_ASSERT_EQUAL(draw(s, l), 777);
	sampler_free(s);
}

/* sampler_sample_known takes the caller's greedy token only for a plain greedy sampler. */
static void test_known_greedy(void)
{
	float l[NV], tmp[NV];
	fill(l, 1);
	l[777] = 10;
	SamplerParams p = sampler_defaults();
	p.temp = 0;
	Sampler *s;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &s), 0);
	memcpy(tmp, l, sizeof tmp);
	CU_ASSERT_EQUAL(sampler_sample_known(s, tmp, 777), 777);
	memcpy(tmp, l, sizeof tmp);
	CU_ASSERT_EQUAL(sampler_sample_known(s, tmp, -1), 777); /* unknown: reads the logits */
	memcpy(tmp, l, sizeof tmp);
	CU_ASSERT_EQUAL(sampler_sample_known(s, tmp, NV), 777); /* out of range: ignored */
	sampler_free(s);
	/* a repetition penalty changes the logits first: the hint is not used */
	p.repeat_penalty = 100.f;
	p.repeat_last_n = 4;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &s), 0);
	sampler_accept(s, 777);
	l[5] = 9.5f;
	memcpy(tmp, l, sizeof tmp);
	CU_ASSERT_EQUAL(sampler_sample_known(s, tmp, 777), 5);
	sampler_free(s);
	/* with a temperature the hint is not used either (seeded draw equals sampler_sample) */
	p = sampler_defaults();
	p.temp = 1.0f;
	p.seed = 42;
	Sampler *a, *b;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &a), 0);
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &b), 0);
	fill(l, 3);
	int same = 0;
	for (int i = 0; i < 20; i++) {
		memcpy(tmp, l, sizeof tmp);
		int32_t x = sampler_sample_known(a, tmp, 0);
		memcpy(tmp, l, sizeof tmp);
		same += x == sampler_sample(b, tmp);
	}
	CU_ASSERT_EQUAL(same, 20);
	sampler_free(a);
	sampler_free(b);
}

static void test_seed_determinism(void)
{
	float l[NV];
	fill(l, 2);
	SamplerParams p = sampler_defaults();
	p.top_k = 0;
	p.top_p = 1;
	p.min_p = 0;
	p.temp = 1.5f;
	int32_t a[200], b[200], c[200];
	Sampler *s1, *s2, *s3;
	p.seed = 42;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &s1), 0);
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &s2), 0);
	p.seed = 43;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &s3), 0);
	for (int i = 0; i < 200; i++) {
		a[i] = draw(s1, l);
		b[i] = draw(s2, l);
		c[i] = draw(s3, l);
	}
	CU_ASSERT_EQUAL(memcmp(a, b, sizeof(a)), 0);
	CU_ASSERT_NOT_EQUAL(memcmp(a, c, sizeof(a)), 0);
	sampler_free(s1);
	sampler_free(s2);
	sampler_free(s3);
}

/* With only temperature, draws follow softmax(l / T): compare frequencies of 4 tokens. */
static void test_distribution(void)
{
	float l[4] = { 0.0f, 1.0f, 2.0f, -1.0f };
	SamplerParams p = sampler_defaults();
	p.top_k = 0;
	p.top_p = 1;
	p.min_p = 0;
	p.temp = 1;
	p.seed = 7;
	Sampler *s;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, 4, &s), 0);
	int cnt[4] = { 0 };
	const int N = 40000;
	for (int i = 0; i < N; i++) {
		float t[4];
		memcpy(t, l, sizeof(t));
		int32_t k = sampler_sample(s, t);
		CU_ASSERT_FATAL(k >= 0 && k < 4);
		cnt[k]++;
	}
	double z = 0;
	for (int i = 0; i < 4; i++)
		z += exp(l[i]);
	for (int i = 0; i < 4; i++) {
		double want = exp(l[i]) / z, got = (double)cnt[i] / N;
		double sd = sqrt(want * (1 - want) / N);
		CU_ASSERT_TRUE(fabs(got - want) < 5 * sd);
	}
	sampler_free(s);
}

static void test_filters(void)
{
	float l[NV];
	for (int i = 0; i < NV; i++)
		l[i] = -10;
	l[10] = 5;
	l[20] = 4.9f;
	l[30] = 4.8f;
	l[40] = 0;
	SamplerParams p = sampler_defaults();
	p.temp = 1;
	p.min_p = 0;
	p.top_p = 1;
	p.top_k = 2; /* only 10 and 20 */
	Sampler *s;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &s), 0);
	for (int i = 0; i < 500; i++) {
		int32_t t = draw(s, l);
		CU_ASSERT_TRUE(t == 10 || t == 20);
	}
	sampler_free(s);
	/* min_p 0.5 keeps tokens with p >= 0.5 * p_max: 10, 20, 30 but never 40. */
	p.top_k = 0;
	p.min_p = 0.5f;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &s), 0);
	int seen30 = 0;
	for (int i = 0; i < 500; i++) {
		int32_t t = draw(s, l);
		CU_ASSERT_TRUE(t == 10 || t == 20 || t == 30);
		seen30 += t == 30;
	}
	CU_ASSERT_TRUE(seen30 > 0);
	sampler_free(s);
	/* top_p 0.3: the first token alone carries more than 30%. */
	p.min_p = 0;
	p.top_p = 0.3f;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &s), 0);
	for (int i = 0; i < 100; i++)
		CU_ASSERT_EQUAL(draw(s, l), 10);
	sampler_free(s);
}

static void test_repeat_penalty(void)
{
	float l[NV];
	for (int i = 0; i < NV; i++)
		l[i] = 0;
	l[5] = 2.0f;
	l[6] = 1.5f;
	SamplerParams p = sampler_defaults();
	p.temp = 0;
	p.repeat_penalty = 2.0f; /* 2.0 / 2 = 1.0 < 1.5 */
	Sampler *s;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &s), 0);
	CU_ASSERT_EQUAL(draw(s, l), 5);
	sampler_accept(s, 5);
	sampler_accept(s, 5);
	CU_ASSERT_EQUAL(draw(s, l), 6);
	sampler_free(s);
}

/* top_k keeps exactly the k best (ties broken by the lower id) and is fast on a real
 * vocabulary: every draw is one of them, and each of them is drawn. */
static void test_top_k_large_vocab(void)
{
	enum { V = 49152 };
	float *l = malloc(sizeof(float) * V), *t = malloc(sizeof(float) * V);
	uint64_t seed = 99;
	for (int i = 0; i < V; i++)
		l[i] = 3 * tu_rand_f32(&seed);
	/* the 5 best: ids 7, 100, 4000, 4001 (tie, lower id first), 40000 */
	l[7] = 10;
	l[100] = 9.5f;
	l[4000] = l[4001] = 9.2f;
	l[40000] = 9.1f;
	l[40001] = 9.1f; /* ties with 40000 but has the higher id: out */
	SamplerParams p = sampler_defaults();
	p.top_k = 5;
	p.top_p = 1;
	p.min_p = 0;
	p.temp = 3;
	p.seed = 5;
	Sampler *s;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&p, V, &s), 0);
	int seen[5] = { 0 }, bad = 0;
	const int ids[5] = { 7, 100, 4000, 4001, 40000 };
	for (int i = 0; i < 2000; i++) {
		memcpy(t, l, sizeof(float) * V);
		int32_t k = sampler_sample(s, t);
		int hit = 0;
		for (int j = 0; j < 5; j++)
			if (k == ids[j]) {
				seen[j]++;
				hit = 1;
			}
		bad += !hit;
	}
	CU_ASSERT_EQUAL(bad, 0);
	for (int j = 0; j < 5; j++)
		CU_ASSERT_TRUE(seen[j] > 0);
	sampler_free(s);
	free(l);
	free(t);
}

/* The row's m largest logits (NaN and -inf left out; of equal logits the lower ids), in a
 * shuffled order, as a backend's top-k op gives them. */
static int32_t ref_topk(const float *l, int m, uint64_t *seed, int32_t *ids, float *vals)
{
	int32_t n = 0;
	for (int i = 0; i < NV; i++) {
		if (isnan(l[i]) || l[i] == -INFINITY)
			continue;
		/* insert into the sorted list of the best n so far */
		int j = n < m ? n++ : m;
		if (j == m && !(l[i] > vals[m - 1]))
			continue; /* equal to the last: the lower id (already there) stays */
		if (j == m)
			j = m - 1;
		while (j > 0 && l[i] > vals[j - 1]) {
			ids[j] = ids[j - 1];
			vals[j] = vals[j - 1];
			j--;
		}
		ids[j] = i;
		vals[j] = l[i];
	}
	for (int32_t i = n - 1; i > 0; i--) { /* shuffle: the op's order is unspecified */
		int32_t r = (int32_t)((tu_rand_f32(seed) + 1.0f) * 0.5f * (float)(i + 1)); /* 0..i */
		r = r > i ? i : r < 0 ? 0 : r;
		int32_t ti = ids[i];
		float tv = vals[i];
		ids[i] = ids[r];
		vals[i] = vals[r];
		ids[r] = ti;
		vals[r] = tv;
	}
	return n;
}

/* sampler_sample_top on a row's top-k candidates draws the same tokens as sampler_sample
 * on the whole row: rows with ties at the k-th place, -0 and +0, NaN and -inf, fewer valid
 * logits than k, and none; several parameter sets, 200 draws each. */
static void test_sample_top(void)
{
	static const struct { float temp, top_p, min_p; int top_k, extra; } ps[] = {
		{ 0.8f, 0.95f, 0.05f, 40, 0 }, { 1.5f, 1.0f, 0.0f, 5, 3 }, { 0.3f, 0.5f, 0.0f, 100, 0 },
		{ 1.0f, 1.0f, 0.2f, 1, 7 },
	};
	float l[NV], full[NV], vals[NV];
	int32_t ids[NV];
	int bad = 0, draws = 0;
	for (size_t pi = 0; pi < sizeof(ps) / sizeof(ps[0]); pi++)
		for (int kind = 0; kind < 5; kind++) {
			SamplerParams p = sampler_defaults();
			p.temp = ps[pi].temp;
			p.top_p = ps[pi].top_p;
			p.min_p = ps[pi].min_p;
			p.top_k = ps[pi].top_k;
			p.seed = 1000 * pi + (uint64_t)kind;
			Sampler *a = NULL, *b = NULL;
			CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &a), 0);
			CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &b), 0);
			CU_ASSERT_EQUAL(sampler_topk(a), p.top_k);
			uint64_t seed = 77 + pi * 10 + (uint64_t)kind;
			for (int d = 0; d < 200; d++) {
				fill(l, seed + (uint64_t)d);
				if (kind == 1) /* coarse values: many ties, also at the k-th place */
					for (int i = 0; i < NV; i++)
						l[i] = floorf(l[i] * 2.0f) * 0.5f;
				if (kind == 2) /* -0 and +0 at the top, NaN and -inf around */
					for (int i = 0; i < NV; i += 3) {
						l[i] = i % 2 ? NAN : -INFINITY;
						if (i + 1 < NV)
							l[i + 1] = (i / 3) % 2 ? -0.0f : 0.0f;
					}
				if (kind == 3) /* fewer valid logits than top_k */
					for (int i = 3; i < NV; i++)
						l[i] = i % 2 ? NAN : -INFINITY;
				if (kind == 4) /* none */
					for (int i = 0; i < NV; i++)
						l[i] = i % 2 ? NAN : -INFINITY;
				memcpy(full, l, sizeof(l));
				int32_t greedy = 0;
				for (int i = 1; i < NV; i++)
					if (l[i] > l[greedy] || (isnan(l[greedy]) && !isnan(l[i])))
						greedy = i;
				const int32_t n = ref_topk(l, p.top_k + ps[pi].extra, &seed, ids, vals);
				const int32_t ta = sampler_sample(a, full), tb = sampler_sample_top(b, ids, vals, n, greedy);
				if (ta != tb && bad < 5)
					printf("\n    pi %zu kind %d d %d: full %d top %d (n %d)", pi, kind, d, ta, tb, n);
				bad += ta != tb;
				draws++;
			}
			sampler_free(a);
			sampler_free(b);
		}
	CU_ASSERT_EQUAL(bad, 0);
	if (bad)
		printf("\n    %d of %d draws differ\n", bad, draws);
	/* samplers that need the whole row refuse */
	SamplerParams g = sampler_defaults();
	g.temp = 0;
	Sampler *s = NULL;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&g, NV, &s), 0);
	CU_ASSERT_EQUAL(sampler_topk(s), 0);
	CU_ASSERT_EQUAL(sampler_sample_top(s, ids, vals, 1, 0), -EINVAL);
	sampler_free(s);
	g = sampler_defaults();
	g.repeat_penalty = 1.1f;
	CU_ASSERT_EQUAL_FATAL(sampler_new(&g, NV, &s), 0);
	CU_ASSERT_EQUAL(sampler_topk(s), 0);
	sampler_free(s);
}

/* A +inf logit takes the token (the lowest id of several), on the whole-row path with and
 * without top-k and on the candidates path alike, without reading outside the candidates
 * (an all-NaN softmax used to leave min-p with nothing). */
static void test_inf_logit(void)
{
	float l[NV], full[NV];
	fill(l, 5);
	l[321] = INFINITY;
	l[777] = INFINITY;
	static const int ks[] = { 40, 0 };
	for (int ki = 0; ki < 2; ki++) {
		SamplerParams p = sampler_defaults();
		p.top_k = ks[ki];
		Sampler *a = NULL;
		CU_ASSERT_EQUAL_FATAL(sampler_new(&p, NV, &a), 0);
		for (int d = 0; d < 5; d++) {
			memcpy(full, l, sizeof(l));
			CU_ASSERT_EQUAL(sampler_sample(a, full), 321);
		}
		if (ks[ki]) {
			const int32_t ids[3] = { 777, 5, 321 };
			const float vals[3] = { INFINITY, 1.0f, INFINITY };
			CU_ASSERT_EQUAL(sampler_sample_top(a, ids, vals, 3, 321), 321);
		}
		sampler_free(a);
	}
}

static void test_bad_params(void)
{
	SamplerParams p = sampler_defaults();
	Sampler *s = NULL;
	CU_ASSERT_EQUAL(sampler_new(&p, 0, &s), -EINVAL);
	p.temp = NAN;
	CU_ASSERT_EQUAL(sampler_new(&p, NV, &s), -EINVAL);
	p = sampler_defaults();
	p.repeat_penalty = 0;
	CU_ASSERT_EQUAL(sampler_new(&p, NV, &s), -EINVAL);
	p = sampler_defaults();
	p.min_p = 2;
	CU_ASSERT_EQUAL(sampler_new(&p, NV, &s), -EINVAL);
	CU_ASSERT_PTR_NULL(s);
	sampler_free(NULL);
}

int main(void)
{
	static const TuTest tests[] = {
		{ "greedy", test_greedy, NULL },
		{ "known_greedy", test_known_greedy, NULL },
		{ "seed_determinism", test_seed_determinism, NULL },
		{ "distribution", test_distribution, NULL },
		{ "filters", test_filters, NULL },
		{ "repeat_penalty", test_repeat_penalty, NULL },
		{ "top_k_large_vocab", test_top_k_large_vocab, NULL },
		{ "sample_top: top-k candidates = the whole row", test_sample_top, NULL },
		{ "inf_logit: +inf takes the token", test_inf_logit, NULL },
		{ "bad_params", test_bad_params, NULL },
		{ NULL, NULL, NULL },
	};
	return tu_main("sampler", tests);
}
