/* daemon/cli/cmd_info.c: `quantd info MODEL`: what a GGUF file holds: its header facts,
 * every key/value, and a table of tensors with their types, shapes and sizes. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "daemon/cli/commands.h"
#include "daemon/engine/gguf.h"
#include "kernels/types.h"

static const char *const kv_type_names[GGUF_TYPE_COUNT] = {
	"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
	"f64",
};

static void usage(FILE *f)
{
	fprintf(f, "usage: quantd info MODEL.gguf\n"
		   "Prints the header, every key/value and the tensor table of a GGUF file.\n");
}

static const char *mib(uint64_t bytes, char *buf, size_t len)
{
	snprintf(buf, len, "%.1f MiB", (double)bytes / (1024.0 * 1024.0));
	return buf;
}

static void print_kvs(const GgufFile *g)
{
	char val[200];
	size_t w = 0;
	for (size_t i = 0; i < gguf_n_kv(g); i++) {
		size_t l = strlen(gguf_kv_key(g, i));
		if (l > w)
			w = l;
	}
	if (w > 48)
		w = 48;
	printf("\n%zu key/values:\n", gguf_n_kv(g));
	for (size_t i = 0; i < gguf_n_kv(g); i++) {
		int t = gguf_kv_type(g, i);
		printf("  %-*s %-6s = %s\n", (int)w, gguf_kv_key(g, i),
		       t >= 0 && t < GGUF_TYPE_COUNT ? kv_type_names[t] : "?",
		       gguf_kv_format(g, i, val, sizeof(val)));
	}
}

static void print_tensors(const GgufFile *g)
{
	uint64_t total_bytes = 0, total_elems = 0;
	char shape[96], sz[32];
	size_t w = 4;
	for (size_t i = 0; i < gguf_n_tensors(g); i++) {
		size_t l = strlen(gguf_tensor(g, i)->name);
		if (l > w)
			w = l;
	}
	printf("\n%zu tensors:\n  %-*s %-5s %-22s %12s\n", gguf_n_tensors(g), (int)w, "name",
	       "type", "shape", "bytes");
	for (size_t i = 0; i < gguf_n_tensors(g); i++) {
		const GgufTensor *t = gguf_tensor(g, i);
		const QdTypeTraits *tr = qd_type_traits(t->type);
		size_t o = 0;
		uint64_t elems = 1;
		for (uint32_t d = 0; d < t->n_dims; d++) {
			o += (size_t)snprintf(shape + o, sizeof(shape) - o, "%s%" PRId64, d ? " x " : "",
					      t->ne[d]);
			elems *= (uint64_t)t->ne[d];
		}
		printf("  %-*s %-5s %-22s %12" PRIu64 "\n", (int)w, t->name, tr ? tr->name : "?", shape,
		       t->nbytes);
		total_bytes += t->nbytes;
		total_elems += elems;
	}
	printf("\ntotal: %zu tensors, %" PRIu64 " weights, %" PRIu64 " bytes (%s), %.3f bits per weight\n",
	       gguf_n_tensors(g), total_elems, total_bytes, mib(total_bytes, sz, sizeof(sz)),
	       total_elems ? 8.0 * (double)total_bytes / (double)total_elems : 0.0);
}

int cmd_info(int argc, char **argv)
{
	char err[512] = "", sz[32];
	GgufFile *g;
	if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		usage(stdout);
		return 0;
	}
	if (argc != 2 || argv[1][0] == '-') {
		usage(stderr);
		return 2;
	}
	const char *path = argv[1];
	int r = gguf_open(path, &g, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "quantd: %s: %s\n", path, err[0] ? err : strerror(-r));
		return 1;
	}
	printf("file:       %s\n", path);
	printf("size:       %" PRIu64 " bytes (%s)\n", gguf_file_size(g),
	       mib(gguf_file_size(g), sz, sizeof(sz)));
	printf("version:    %" PRIu32 "\n", gguf_version(g));
	printf("alignment:  %" PRIu32 "\n", gguf_alignment(g));
	printf("data at:    byte %" PRIu64 "\n", gguf_data_offset(g));
	print_kvs(g);
	print_tensors(g);
	gguf_close(g);
	if (fflush(stdout) != 0) {
		fprintf(stderr, "quantd: stdout: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}
