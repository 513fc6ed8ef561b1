/* tests/testutil.c */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tu_main(const char *name, const TuTest *tests)
{
	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	CU_pSuite s = CU_add_suite(name, NULL, NULL);
	if (!s)
		return 2;
	int skipped = 0;
	for (const TuTest *t = tests; t->name; t++) {
		CU_pTest ct = CU_add_test(s, t->name, t->fn);
		if (!ct)
			return 2;
		const char *why = t->skip_if ? t->skip_if() : NULL;
		if (why) {
			printf("SKIP: %s.%s: %s\n", name, t->name, why);
			CU_set_test_active(ct, CU_FALSE);
			skipped++;
		}
	}
	CU_set_fail_on_inactive(CU_FALSE);
	CU_basic_set_mode(CU_BRM_VERBOSE);
	CU_basic_run_tests();
	unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
	CU_cleanup_registry();
	if (skipped)
		printf("%s: %d test(s) skipped (listed as SKIP above, counted as Inactive)\n", name, skipped);
	return failed ? 1 : 0;
}

const char *tu_model_path(void)
{
	const char *p = getenv("QD_MODEL");
	return p && *p ? p : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

const char *tu_build_dir(void)
{
	const char *p = getenv("QD_BUILD");
	return p && *p ? p : "build";
}

const char *tu_build_path(const char *rel)
{
	static char buf[4][256];
	static int k;
	k = (k + 1) % 4;
	snprintf(buf[k], sizeof(buf[k]), "%s/%s", tu_build_dir(), rel);
	return buf[k];
}

void tu_skip(const char *test, const char *why)
{
	printf("\n    SKIP: %s: %s\n", test, why);
	fflush(stdout);
}

uint64_t tu_rand_u64(uint64_t *s)
{
	uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

float tu_rand_f32(uint64_t *s)
{
	return (float)((tu_rand_u64(s) >> 40) * (1.0 / (1 << 24)) * 2.0 - 1.0);
}

char *tu_read_file(const char *path, size_t *ret_len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	for (;;) {
		if (len + 4096 + 1 > cap) {
			cap = (cap + 4096 + 1) * 2;
			char *nb = realloc(buf, cap);
			if (!nb) {
				free(buf);
				fclose(f);
				return NULL;
			}
			buf = nb;
		}
		size_t n = fread(buf + len, 1, 4096, f);
		len += n;
		if (n == 0)
			break;
	}
	fclose(f);
	buf[len] = 0;
	if (ret_len)
		*ret_len = len;
	return buf;
}

static char tmpdir[64];

const char *tu_tmp_path(const char *name)
{
	static char buf[4][192];
	static int k;
	if (!tmpdir[0]) {
		strcpy(tmpdir, "/tmp/qd-test.XXXXXX");
		if (!mkdtemp(tmpdir)) {
			tmpdir[0] = 0;
			return NULL;
		}
	}
	k = (k + 1) % 4;
	snprintf(buf[k], sizeof(buf[k]), "%s/%s", tmpdir, name);
	return buf[k];
}

void tu_tmp_cleanup(void)
{
	if (!tmpdir[0])
		return;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	tmpdir[0] = 0;
}

typedef struct {
	int32_t id;
	float v;
} TuCand;

static int tu_cand_rank(const void *a, const void *b) /* larger value, then lower id */
{
	const TuCand *x = a, *y = b;
	if (x->v != y->v)
		return x->v < y->v ? 1 : -1;
	return (x->id > y->id) - (x->id < y->id);
}

static int tu_cand_id(const void *a, const void *b)
{
	const TuCand *x = a, *y = b;
	return (x->id > y->id) - (x->id < y->id);
}

bool tu_topk_matches(const float *row, int64_t cols, int k, const int32_t *ids, const float *vals, int32_t count)
{
	TuCand *ref = malloc(sizeof(TuCand) * (size_t)(cols > 0 ? cols : 1));
	TuCand *got = malloc(sizeof(TuCand) * (size_t)(count > 0 ? count : 1));
	bool ok = ref && got && count >= 0;
	int64_t m = 0;
	for (int64_t c = 0; ok && c < cols; c++)
		if (!isnan(row[c]) && row[c] != -INFINITY)
			ref[m++] = (TuCand){ (int32_t)c, row[c] };
	if (ok) {
		qsort(ref, (size_t)m, sizeof(TuCand), tu_cand_rank);
		m = m > k ? k : m;
		qsort(ref, (size_t)m, sizeof(TuCand), tu_cand_id);
		ok = count == m;
	}
	for (int32_t i = 0; ok && i < count; i++)
		got[i] = (TuCand){ ids[i], vals[i] };
	if (ok)
		qsort(got, (size_t)count, sizeof(TuCand), tu_cand_id);
	for (int32_t i = 0; ok && i < count; i++)
		ok = got[i].id == ref[i].id && memcmp(&got[i].v, &ref[i].v, sizeof(float)) == 0;
	free(ref);
	free(got);
	return ok;
}
