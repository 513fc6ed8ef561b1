/* daemon/cli/cmd_convert.c: `quantd convert CHECKPOINT.bin [--tokenizer T.bin]
 * [--type f32|f16] OUT.gguf`: imports a llama2.c checkpoint, then reopens the result to
 * print a one-line summary of what was written. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "daemon/cli/commands.h"
#include "daemon/engine/convert.h"
#include "daemon/engine/gguf.h"
#include "kernels/types.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: quantd convert CHECKPOINT.bin [--tokenizer tokenizer.bin] [--type f32|f16] OUT.gguf\n"
		   "Converts a llama2.c checkpoint into a llama GGUF (2-D weights in --type, default f16;\n"
		   "norms stay f32).  With --tokenizer the vocabulary is included.\n");
}

static uint32_t key_u32(const GgufFile *g, const char *key)
{
	uint32_t v = 0;
	return gguf_get_u32(g, key, &v) == 0 ? v : 0;
}

static void summary(const char *out, int type, bool tok)
{
	char err[256];
	GgufFile *g;
	if (gguf_open(out, &g, err, sizeof(err)) < 0) {
		/* just written and validated by the writer's own rules; say so rather than hide it */
		fprintf(stderr, "quantd: %s: written, but reopening it failed: %s\n", out, err);
		return;
	}
	fprintf(stderr, "quantd: wrote %s: %zu tensors (%s), dim %" PRIu32 ", %" PRIu32
		" layers, %" PRIu32 "/%" PRIu32 " heads, ffn %" PRIu32 ", vocab %" PRIu32
		", context %" PRIu32 ", %s, %.1f MiB\n",
		out, gguf_n_tensors(g), qd_type_traits(type)->name, key_u32(g, "llama.embedding_length"),
		key_u32(g, "llama.block_count"), key_u32(g, "llama.attention.head_count"),
		key_u32(g, "llama.attention.head_count_kv"), key_u32(g, "llama.feed_forward_length"),
		key_u32(g, "llama.vocab_size"), key_u32(g, "llama.context_length"),
		tok ? "with tokenizer" : "no tokenizer", (double)gguf_file_size(g) / (1024.0 * 1024.0));
	gguf_close(g);
}

int cmd_convert(int argc, char **argv)
{
	const char *pos[2] = { NULL, NULL }, *tok = NULL;
	int n_pos = 0, type = QD_TYPE_F16;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "--tokenizer") || !strcmp(a, "--type")) {
			if (i + 1 >= argc) {
				fprintf(stderr, "quantd: convert: %s needs a value\n", a);
				return 2;
			}
			const char *v = argv[++i];
			if (a[2] == 't' && a[3] == 'o') {
				tok = v;
			} else if (!strcmp(v, "f32") || !strcmp(v, "F32")) {
				type = QD_TYPE_F32;
			} else if (!strcmp(v, "f16") || !strcmp(v, "F16")) {
				type = QD_TYPE_F16;
			} else {
				fprintf(stderr, "quantd: convert: --type must be f32 or f16, not '%s'\n", v);
				return 2;
			}
		} else if (a[0] == '-' && a[1]) {
			fprintf(stderr, "quantd: convert: unknown option '%s'\n", a);
			usage(stderr);
			return 2;
		} else if (n_pos < 2) {
			pos[n_pos++] = a;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (n_pos != 2) {
		usage(stderr);
		return 2;
	}
	char err[512];
	int r = convert_llama2c(pos[0], tok, pos[1], type, err, sizeof(err));
	if (r < 0) {
		/* err already starts with the file at fault */
		if (err[0])
			fprintf(stderr, "quantd: %s\n", err);
		else
			fprintf(stderr, "quantd: %s: %s\n", pos[0], strerror(-r));
		return 1;
	}
	summary(pos[1], type, tok != NULL);
	return 0;
}
