/* daemon/cli/cmd_eval.c: `quantd eval MODEL... --text FILE [--base MODEL]`: size, bits
 * per weight, perplexity, KLD and same-top-token share against the base, decode speed;
 * as one aligned table or JSON lines, optionally a plot and a budget pick. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/eval.h"
#include "cli_util.h"
#include "commands.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: quantd eval MODEL... --text FILE [options]\n"
		"  -f, --text FILE         evaluation text (UTF-8)\n"
		"      --base MODEL        reference model for KLD and same-top-token share (also evaluated)\n"
		"  -c, --ctx N             window length in tokens (default 512; the second half is scored)\n"
		"      --windows N         evaluate at most N windows (default: the whole text)\n"
		"      --decode N          batch-1 decode steps timed per model (default 32; 0: skip)\n"
		"  -t, --threads N         threads per model (default: all CPUs)\n"
		"      --backend B         cpu (default), cuda or auto\n"
		"      --json              one JSON object per model\n"
		"      --budget PCT        name the smallest model whose perplexity is within PCT%% of the base's\n"
		"      --plot FILE.svg     plot KLD against bits per weight\n");
}

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');
	return s ? s + 1 : path;
}

static void json_num(const char *key, double v, const char *fmt)
{
	printf(", \"%s\": ", key);
	if (isfinite(v))
		printf(fmt, v);
	else
		printf("null");
}

static void on_progress(void *arg, int done, int total)
{
	if (*(bool *)arg)
		fprintf(stderr, "\rquantd eval: window %d/%d", done, total);
	if (*(bool *)arg && done == total)
		fputc('\n', stderr);
}

enum { OPT_BASE = 256, OPT_WIN, OPT_DEC, OPT_BACKEND, OPT_JSON, OPT_BUDGET, OPT_PLOT };

int cmd_eval(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "text", required_argument, 0, 'f' },	     { "base", required_argument, 0, OPT_BASE },
		{ "ctx", required_argument, 0, 'c' },	     { "windows", required_argument, 0, OPT_WIN },
		{ "decode", required_argument, 0, OPT_DEC }, { "threads", required_argument, 0, 't' },
		{ "backend", required_argument, 0, OPT_BACKEND }, { "json", no_argument, 0, OPT_JSON },
		{ "budget", required_argument, 0, OPT_BUDGET }, { "plot", required_argument, 0, OPT_PLOT },
		{ "help", no_argument, 0, 'h' },	     { 0, 0, 0, 0 },
	};
	EvalParams p = eval_default_params();
	const char *text_path = NULL, *base = NULL, *plot = NULL;
	bool json = false, tty = isatty(2);
	float budget = -1;
	long n_ctx = p.n_ctx, win = 0, dec = p.decode_tokens, threads = 0;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "f:c:t:h", opts, NULL)) != -1) {
		int r = 0;
		switch (c) {
		case 'f': text_path = optarg; break;
		case OPT_BASE: base = optarg; break;
		case 'c': r = cli_parse_long(optarg, 8, 1 << 16, &n_ctx); break;
		case OPT_WIN: r = cli_parse_long(optarg, 0, 1 << 24, &win); break;
		case OPT_DEC: r = cli_parse_long(optarg, 0, 4096, &dec); break;
		case 't': r = cli_parse_long(optarg, 0, 1024, &threads); break;
		case OPT_BACKEND: p.backend = optarg; break;
		case OPT_JSON: json = true; break;
		case OPT_BUDGET: r = cli_parse_float(optarg, 0, 1000, &budget); break;
		case OPT_PLOT: plot = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
		if (r < 0) {
			fprintf(stderr, "quantd eval: bad value for %s: '%s'\n", argv[optind - 1], optarg);
			return 2;
		}
	}
	int n_models = argc - optind + (base ? 1 : 0);
	if (!text_path || n_models < 1) {
		usage(stderr);
		return 2;
	}
	if (budget >= 0 && !base) {
		fprintf(stderr, "quantd eval: --budget needs --base\n");
		return 2;
	}
	if (plot && !base) {
		fprintf(stderr, "quantd eval: --plot shows KLD against the base: it needs --base\n");
		return 2;
	}
	const char **paths = calloc((size_t)n_models, sizeof(char *));
	EvalResult *res = calloc((size_t)n_models, sizeof(EvalResult));
	char *text = NULL;
	size_t text_len = 0;
	int status = 1, r;
	if (!paths || !res) {
		fprintf(stderr, "quantd: out of memory\n");
		goto out;
	}
	int k = 0;
	if (base)
		paths[k++] = base;
	for (int i = optind; i < argc; i++)
		paths[k++] = argv[i];
	if ((r = cli_read_file(text_path, 256 << 20, &text, &text_len)) < 0) {
		fprintf(stderr, "quantd: %s: %s\n", text_path, strerror(-r));
		goto out;
	}
	p.n_ctx = (int)n_ctx;
	p.max_windows = (int)win;
	p.decode_tokens = (int)dec;
	p.n_threads = (int)threads;
	p.progress = on_progress;
	p.cb_arg = &tty;
	char err[512] = "";
	if ((r = eval_run(paths, n_models, base ? 0 : -1, text, text_len, &p, res, err, sizeof(err))) < 0) {
		fprintf(stderr, "quantd: eval: %s\n", err);
		goto out;
	}
	double base_ppl = base ? res[0].ppl : NAN;
	if (json) {
		for (int i = 0; i < n_models; i++) {
			printf("{\"model\": ");
			cli_json_str(paths[i]);
			printf(", \"type\": ");
			cli_json_str(res[i].type);
			printf(", \"method\": ");
			cli_json_str(res[i].method);
			printf(", \"size_bytes\": %llu", (unsigned long long)res[i].size_bytes);
			json_num("bpw", res[i].bpw, "%.4f");
			json_num("ppl", res[i].ppl, "%.5f");
			json_num("kld", res[i].kld, "%.6f");
			json_num("top1", res[i].top1, "%.5f");
			json_num("tok_s", res[i].tok_s, "%.2f");
			printf(", \"base\": %s, \"tokens\": %d}\n", base && i == 0 ? "true" : "false", res[i].n_scored);
		}
	} else {
		int w = 5;
		for (int i = 0; i < n_models; i++)
			if ((int)strlen(base_name(paths[i])) > w)
				w = (int)strlen(base_name(paths[i]));
		printf("%-*s  %-7s %-6s %9s %6s %16s %8s %9s %7s %8s\n", w, "model", "type", "method", "size MiB", "bpw",
		       "ppl", "dppl %", "kld", "top1 %", "tok/s");
		for (int i = 0; i < n_models; i++) {
			const EvalResult *e = &res[i];
			char ppl[32], dppl[16] = "-", kld[16] = "-", top1[16] = "-";
			snprintf(ppl, sizeof(ppl), "%.4f ± %.4f", e->ppl, e->ppl_err);
			if (base && i > 0) {
				snprintf(dppl, sizeof(dppl), "%+.3f", 100.0 * (e->ppl / base_ppl - 1));
				snprintf(kld, sizeof(kld), "%.6f", e->kld);
				snprintf(top1, sizeof(top1), "%.2f", 100.0 * e->top1);
			} else if (base) {
				snprintf(dppl, sizeof(dppl), "(base)");
			}
			printf("%-*s  %-7s %-6s %9.1f %6.3f %16s %8s %9s %7s %8.1f\n", w, base_name(paths[i]), e->type,
			       e->method, (double)e->size_bytes / 1048576.0, e->bpw, ppl, dppl, kld, top1, e->tok_s);
		}
		printf("%d tokens scored per model (windows of %d, second half scored), text %s\n", res[0].n_scored,
		       p.n_ctx, base_name(text_path));
	}
	if (budget >= 0) {
		int best = -1;
		for (int i = 1; i < n_models; i++)
			if (res[i].ppl <= base_ppl * (1 + budget / 100.0) &&
			    (best < 0 || res[i].size_bytes < res[best].size_bytes))
				best = i;
		FILE *o = json ? stderr : stdout;
		if (best < 0)
			fprintf(o, "budget %g%%: no model is within %g%% of the base perplexity %.4f\n", budget, budget,
				base_ppl);
		else
			fprintf(o, "budget %g%%: %s (%s %s, %.1f MiB, ppl %+.3f%%, kld %.6f) is the smallest within it\n",
				budget, paths[best], res[best].type, res[best].method,
				(double)res[best].size_bytes / 1048576.0, 100.0 * (res[best].ppl / base_ppl - 1),
				res[best].kld);
	}
	if (plot) {
		if ((r = eval_plot_svg(res + 1, n_models - 1, "KL-divergence vs bits per weight", plot)) < 0) {
			fprintf(stderr, "quantd: %s: %s\n", plot,
				r == -EINVAL ? "nothing to plot (no model has a positive KLD)" : strerror(-r));
			goto out;
		}
		fprintf(stderr, "quantd: wrote %s\n", plot);
	}
	status = 0;
out:
	free(paths);
	free(res);
	free(text);
	return status;
}
