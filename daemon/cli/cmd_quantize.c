/* daemon/cli/cmd_quantize.c: `quantd quantize IN.gguf OUT.gguf --type T [--method M]`:
 * re-quantizes a GGUF model, with a progress bar on stderr when it is a terminal. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/quantize.h"
#include "cli_util.h"
#include "commands.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: quantd quantize IN.gguf OUT.gguf --type TYPE [options]\n"
		"  -T, --type TYPE         Q8_0, Q6_K, Q4_K_M, Q4_K, Q4_1, Q4_0, F16 or F32\n"
		"  -M, --method M          rtn (default), gptq (Q8_0, Q4_0, Q4_1) or awq (any quantized type)\n"
		"  -t, --threads N         worker threads (default: all CPUs)\n"
		"      --calib FILE        calibration text for gptq/awq (UTF-8)\n"
		"      --calib-tokens N    calibration tokens (default 16384)\n"
		"      --calib-ctx N       tokens per calibration sequence (default 512)\n"
		"      --damp F            gptq: dampening, fraction of mean diag(H) (default 0.01)\n"
		"      --act-order         gptq: quantize columns by descending Hessian diagonal\n"
		"  -q, --quiet             no progress bar or notes\n"
		"Inputs may be F32, F16, BF16 or quantized (dequantized first).  1-D tensors stay F32;\n"
		"see `quantd quantize --help-types` for the per-tensor type rules.\n");
}

static void usage_types(void)
{
	printf("Per-tensor types (llama.cpp's rules where this build has the types):\n"
	       "  norms and other 1-D tensors      F32\n"
	       "  output head (and a tied token\n"
	       "  embedding) below 8-bit targets   Q6_K\n"
	       "  Q4_K_M                           Q4_K; attn_v and ffn_down in Q6_K for the first and\n"
	       "                                   last eighth of the layers and every third between\n"
	       "  row length not a block multiple  Q6_K -> Q8_0, Q4_K -> Q4_1 (llama.cpp: Q5_0),\n"
	       "                                   Q8_0/Q4_0/Q4_1 -> F16\n");
}

typedef struct {
	bool tty, quiet;
	double t0, last;
	int width;
} Progress;

static void on_progress(void *arg, uint64_t done, uint64_t total)
{
	Progress *pg = arg;
	if (!pg->tty || pg->quiet || total == 0)
		return;
	double t = cli_now();
	if (t - pg->last < 0.1 && done < total)
		return;
	pg->last = t;
	double frac = (double)done / (double)total, el = t - pg->t0;
	int fill = (int)(frac * pg->width);
	char bar[128];
	for (int i = 0; i < pg->width; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[pg->width] = 0;
	double eta = frac > 0 ? el * (1 - frac) / frac : 0;
	fprintf(stderr, "\r[%s] %5.1f%%  %6.1f MB/s  ETA %3d:%02d ", bar, frac * 100,
		el > 0 ? (double)done / el / 1e6 : 0.0, (int)eta / 60, (int)eta % 60);
	if (done >= total)
		fputc('\n', stderr);
}

static void on_note(void *arg, const char *msg)
{
	Progress *pg = arg;
	if (!pg->quiet)
		fprintf(stderr, "%squantd: note: %s\n", pg->tty && pg->last > 0 ? "\n" : "", msg);
}

enum { OPT_CALIB = 256, OPT_CTOK, OPT_CCTX, OPT_DAMP, OPT_ACT, OPT_HTYPES };

int cmd_quantize(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "type", required_argument, 0, 'T' },	      { "method", required_argument, 0, 'M' },
		{ "threads", required_argument, 0, 't' },     { "calib", required_argument, 0, OPT_CALIB },
		{ "calib-tokens", required_argument, 0, OPT_CTOK }, { "calib-ctx", required_argument, 0, OPT_CCTX },
		{ "damp", required_argument, 0, OPT_DAMP },
		{ "act-order", no_argument, 0, OPT_ACT },     { "quiet", no_argument, 0, 'q' },
		{ "help", no_argument, 0, 'h' },	      { "help-types", no_argument, 0, OPT_HTYPES },
		{ 0, 0, 0, 0 },
	};
	QuantParams p = quant_default_params();
	const char *type = NULL, *calib = NULL;
	long threads = 0, ctok = 16384, cctx = 512;
	Progress pg = { .tty = isatty(2), .width = 40 };
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "T:M:t:qh", opts, NULL)) != -1) {
		int r = 0;
		switch (c) {
		case 'T': type = optarg; break;
		case 'M':
			if (quant_parse_method(optarg, &p.method) < 0) {
				fprintf(stderr, "quantd quantize: unknown method '%s' (rtn, gptq, awq)\n", optarg);
				return 2;
			}
			break;
		case 't': r = cli_parse_long(optarg, 0, 1024, &threads); break;
		case OPT_CALIB: calib = optarg; break;
		case OPT_CTOK: r = cli_parse_long(optarg, 16, 1 << 24, &ctok); break;
		case OPT_CCTX: r = cli_parse_long(optarg, 16, 1 << 16, &cctx); break;
		case OPT_DAMP: r = cli_parse_float(optarg, 1e-6f, 0.99f, &p.damp); break;
		case OPT_ACT: p.act_order = true; break;
		case 'q': pg.quiet = true; break;
		case OPT_HTYPES: usage_types(); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
		if (r < 0) {
			fprintf(stderr, "quantd quantize: bad value for %s: '%s'\n", argv[optind - 1], optarg);
			return 2;
		}
	}
	if (optind + 2 != argc || !type) {
		usage(stderr);
		return 2;
	}
	if (quant_parse_type(type, &p.type) < 0) {
		fprintf(stderr, "quantd quantize: unknown type '%s' (Q8_0, Q6_K, Q4_K_M, Q4_K, Q4_1, Q4_0, F16, F32)\n",
			type);
		return 2;
	}
	if (p.method != QUANT_RTN && !calib) {
		fprintf(stderr, "quantd quantize: --method %s needs --calib FILE\n", quant_method_name(p.method));
		return 2;
	}
	if (p.method == QUANT_RTN && calib)
		fprintf(stderr, "quantd quantize: note: --calib is ignored by rtn\n");
	const char *in = argv[optind], *out = argv[optind + 1];
	char *text = NULL;
	size_t text_len = 0;
	if (calib && p.method != QUANT_RTN) {
		int r = cli_read_file(calib, 256 << 20, &text, &text_len);
		if (r < 0) {
			fprintf(stderr, "quantd: %s: %s\n", calib, strerror(-r));
			return 1;
		}
		const char *base = strrchr(calib, '/');
		p.calib_name = base ? base + 1 : calib;
		p.calib_text = text;
		p.calib_len = text_len;
	}
	p.calib_ctx = (int)cctx;
	p.calib_seqs = (int)((ctok + cctx - 1) / cctx);
	p.n_threads = (int)threads;
	p.progress = on_progress;
	p.note = on_note;
	p.cb_arg = &pg;
	pg.t0 = cli_now();
	QuantStats st;
	char err[512] = "";
	int r = quantize_file(in, out, &p, &st, err, sizeof(err));
	free(text);
	if (r < 0) {
		fprintf(stderr, "%squantd: quantize: %s\n", pg.tty && pg.last > 0 ? "\n" : "", err);
		return 1;
	}
	if (!pg.quiet)
		fprintf(stderr,
			"quantd: wrote %s: %s %s, %d tensors (%d fell back), %.1f MiB -> %.1f MiB, %.2f bits/weight, "
			"%.1f s (%.0f MB/s of input)\n",
			out, quant_type_name(p.type), quant_method_name(p.method), st.n_tensors, st.n_fallback,
			(double)st.in_bytes / 1048576.0, (double)st.out_bytes / 1048576.0,
			st.n_weights ? 8.0 * (double)st.out_bytes / (double)st.n_weights : 0.0, st.seconds,
			st.seconds > 0 ? (double)st.in_bytes / st.seconds / 1e6 : 0.0);
	return 0;
}
