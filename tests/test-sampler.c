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
		{ "bad_params", test_bad_params, NULL },
		{ NULL, NULL, NULL },
	};
	return tu_main("sampler", tests);
}
