/* daemon/cli/cmd_synth.c: `quantd synth`: a random-weight model of a real Llama shape, for
 * benchmarks (daemon/engine/synth.c). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "../../kernels/types.h"
#include "../engine/synth.h"
#include "cli_util.h"
#include "commands.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: quantd synth --shape %s --type T [--seed S] OUT.gguf\n"
		   "  T: q4_0, q4_1, q8_0, q4_k, q6_k, q4_k_m, f16, bf16, f32; the matrices take the types\n"
		   "     `quantd quantize` gives them (llama.cpp's rules): the 4-bit types' output in Q6_K,\n"
		   "     q4_k_m Q4_K with attn_v and ffn_down in Q6_K in the first and last eighth of the\n"
		   "     layers and every third between\n",
		synth_shape_names());
}

int cmd_synth(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "shape", required_argument, 0, 's' }, { "type", required_argument, 0, 't' },
		{ "seed", required_argument, 0, 'S' },	{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *shape = NULL, *type = NULL;
	unsigned long long seed = 1;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "s:t:S:h", opts, NULL)) != -1) {
		switch (c) {
		case 's': shape = optarg; break;
		case 't': type = optarg; break;
		case 'S':
			if (cli_parse_u64(optarg, &seed) < 0) {
				fprintf(stderr, "quantd synth: bad seed '%s'\n", optarg);
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!shape || !type || optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	const SynthShape *s = synth_shape(shape);
	const int mix = !strcasecmp(type, "q4_k_m");
	const int t = mix ? QD_TYPE_Q4_K : qd_type_from_name(type);
	if (!s || t < 0) {
		fprintf(stderr, "quantd synth: unknown %s '%s'\n", s ? "type" : "shape", s ? type : shape);
		usage(stderr);
		return 2;
	}
	char err[256] = "";
	double t0 = cli_now();
	int r = synth_write(argv[optind], s, t, mix, seed, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "quantd synth: %s: %s\n", err[0] ? err : argv[optind], strerror(-r));
		return 1;
	}
	struct stat st;
	double gb = stat(argv[optind], &st) == 0 ? (double)st.st_size / 1e9 : 0;
	fprintf(stderr, "quantd synth: %s %s -> %s, %.2f GB in %.1f s\n", s->name, type, argv[optind], gb,
		cli_now() - t0);
	return 0;
}
