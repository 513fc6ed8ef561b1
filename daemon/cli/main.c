/* daemon/cli/main.c: `quantd COMMAND ...` dispatch.  Only this file and the cmd_*.c
 * files print to the terminal or choose an exit status. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
} commands[] = {
	{ "serve", cmd_serve, "serve -m MODEL [-m MODEL2 ...] [--socket PATH]      run the daemon" },
	{ "run", cmd_run, "run -m MODEL -p PROMPT [--chat] [-n N] [--temp T] ...  answer one prompt" },
	{ "info", cmd_info, "info MODEL                                         metadata and tensor table" },
	{ "bench", cmd_bench, "bench -m MODEL [--batch 1,8] [--prompt 512] [--json]   tokens/s and roofline" },
	{ "convert", cmd_convert, "convert CHECKPOINT.bin [--tokenizer T.bin] OUT.gguf  import llama2.c" },
	{ "synth", cmd_synth, "synth --shape llama2-7b|llama3-8b|llama2-13b|llama2-70b --type T OUT.gguf  random weights" },
	{ "quantize", cmd_quantize, "quantize IN.gguf OUT.gguf --type T [--method rtn|gptq|awq]  re-quantize" },
	{ "eval", cmd_eval, "eval MODEL... --text FILE [--base MODEL] [--json]     perplexity, KLD, size, speed" },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: quantd COMMAND [ARGS]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %s\n", commands[i].help);
	fprintf(f, "\n`quantd COMMAND --help` describes each command's options.\n");
}

int main(int argc, char **argv)
{
	/* Started by systemd with no arguments: be the daemon. */
	if (argc < 2 && (getenv("NOTIFY_SOCKET") || getenv("LISTEN_FDS")))
		return cmd_serve(argc, argv);
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "quantd: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
