/* tests/test-eval.c: perplexity / KLD / top-1 evaluation and the SVG plot. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/engine/eval.h"
#include "daemon/engine/quantize.h"
#include "kernels/types.h"
#include "testutil.h"

static char *text;
static size_t text_len;

static const char *no_model(void)
{
	if (access(tu_model_path(), R_OK))
		return "default model missing (make model)";
	return text ? NULL : "no evaluation text (README.md or models/text/prideprejudice.txt)";
}

static EvalParams small(void)
{
	EvalParams p = eval_default_params();
	p.n_ctx = 64;
	p.max_windows = 3;
	p.n_threads = 2;
	p.decode_tokens = 4;
	return p;
}

/* The same model as its own base: KLD 0, same top token everywhere, and a sane perplexity. */
static void test_self(void)
{
	const char *paths[2] = { tu_model_path(), tu_model_path() };
	EvalResult r[2];
	EvalParams p = small();
	char err[256] = "";
	int rc = eval_run(paths, 2, 0, text, text_len, &p, r, err, sizeof(err));
	if (rc)
		printf("\n    %s\n", err);
	CU_ASSERT_EQUAL_FATAL(rc, 0);
	for (int i = 0; i < 2; i++) {
		CU_ASSERT_EQUAL(r[i].n_scored, 3 * (64 - 32 - 1));
		CU_ASSERT(isfinite(r[i].ppl) && r[i].ppl > 1 && r[i].ppl < 49152);
		CU_ASSERT(r[i].ppl_err > 0 && r[i].ppl_err < r[i].ppl);
		CU_ASSERT_DOUBLE_EQUAL(r[i].kld, 0.0, 1e-9);
		CU_ASSERT_DOUBLE_EQUAL(r[i].top1, 1.0, 1e-12);
		CU_ASSERT(r[i].tok_s > 0);
		CU_ASSERT_STRING_EQUAL(r[i].type, "Q4_1");
		CU_ASSERT(r[i].bpw > 4.5 && r[i].bpw < 8);
	}
	CU_ASSERT_DOUBLE_EQUAL(r[0].ppl, r[1].ppl, 1e-9);
	/* without a base: perplexity only */
	EvalResult one;
	CU_ASSERT_EQUAL_FATAL(eval_run(paths, 1, -1, text, text_len, &p, &one, err, sizeof(err)), 0);
	CU_ASSERT(isnan(one.kld) && isnan(one.top1));
	CU_ASSERT_DOUBLE_EQUAL(one.ppl, r[0].ppl, 1e-9);
}

/* Fewer bits cost more: against an F32 base, Q4_0 has a larger KLD than Q8_0, and Q8_0's
 * is small. */
static void test_ordering(void)
{
	QuantParams q = quant_default_params();
	q.n_threads = 2;
	char err[256] = "";
	const char *names[3] = { "f32.gguf", "q8_0.gguf", "q4_0.gguf" };
	int types[3] = { QD_TYPE_F32, QD_TYPE_Q8_0, QD_TYPE_Q4_0 };
	const char *paths[3];
	for (int i = 0; i < 3; i++) {
		q.type = types[i];
		paths[i] = strdup(tu_tmp_path(names[i]));
		CU_ASSERT_EQUAL_FATAL(quantize_file(tu_model_path(), paths[i], &q, NULL, err, sizeof(err)), 0);
	}
	EvalResult r[3];
	EvalParams p = small();
	CU_ASSERT_EQUAL_FATAL(eval_run(paths, 3, 0, text, text_len, &p, r, err, sizeof(err)), 0);
	CU_ASSERT(r[1].kld > 0 && r[1].kld < 0.02);
	CU_ASSERT(r[2].kld > r[1].kld);
	CU_ASSERT(r[1].top1 >= r[2].top1);
	CU_ASSERT(r[0].bpw > r[1].bpw && r[1].bpw > r[2].bpw);
	CU_ASSERT_STRING_EQUAL(r[1].method, "rtn");
	CU_ASSERT_STRING_EQUAL(r[2].type, "Q4_0");
	/* the plot has one point per model with a positive KLD */
	const char *svg = tu_tmp_path("plot.svg");
	CU_ASSERT_EQUAL_FATAL(eval_plot_svg(r + 1, 2, "t<&>", svg), 0);
	size_t len;
	char *s = tu_read_file(svg, &len);
	CU_ASSERT_FATAL(s != NULL);
	CU_ASSERT(strstr(s, "<svg") == s);
	CU_ASSERT(strstr(s, "t&lt;&amp;&gt;") != NULL);
	int circles = 0;
	for (const char *c = s; (c = strstr(c, "<circle cx")); c++)
		circles++;
	CU_ASSERT_EQUAL(circles, 2 + 3); /* two points + the legend */
	free(s);
	CU_ASSERT_EQUAL(eval_plot_svg(r, 1, NULL, svg), -EINVAL); /* the base has KLD 0 */
	for (int i = 0; i < 3; i++)
		free((void *)paths[i]);
}

static void test_bad(void)
{
	const char *paths[2] = { tu_model_path(), tu_tmp_path("missing.gguf") };
	EvalResult r[2];
	EvalParams p = small();
	char err[256] = "";
	CU_ASSERT_EQUAL(eval_run(paths, 0, -1, text, text_len, &p, r, err, sizeof(err)), -EINVAL);
	CU_ASSERT_EQUAL(eval_run(paths, 1, 1, text, text_len, &p, r, err, sizeof(err)), -EINVAL);
	CU_ASSERT_EQUAL(eval_run(paths, 2, 0, text, text_len, &p, r, err, sizeof(err)), -ENOENT);
	CU_ASSERT(strstr(err, "missing.gguf") != NULL);
	CU_ASSERT_EQUAL(eval_run(paths, 1, -1, "too short", 9, &p, r, err, sizeof(err)), -EINVAL);
	CU_ASSERT(strstr(err, "tokens") != NULL);
	p.n_ctx = 2;
	CU_ASSERT_EQUAL(eval_run(paths, 1, -1, text, text_len, &p, r, err, sizeof(err)), -EINVAL);
}

int main(void)
{
	if (!tu_tmp_path(""))
		return 2;
	text = tu_read_file("models/text/prideprejudice.txt", &text_len);
	if (!text)
		text = tu_read_file("README.md", &text_len);
	static const TuTest tests[] = {
		{ "self", test_self, no_model },
		{ "ordering", test_ordering, no_model },
		{ "bad", test_bad, no_model },
		{ NULL, NULL, NULL },
	};
	int r = tu_main("eval", tests);
	free(text);
	tu_tmp_cleanup();
	return r;
}
