/* bench/bench-cuda-mmv.c: GB/s of the CUDA decode matrix-vector products against the
 * memory-bandwidth wall.
 *
 * For each weight type it uploads the 224 matrices of a Llama-2-7B layer stack (32 x
 * q, k, v, o 4096x4096; gate, up 11008x4096; down 4096x11008; random blocks) and
 * measures:
 *   mmv    one product per kernel, rotating over the stack's matrices of that shape so
 *          the weights come from memory, not L2 (mode "stream": plain launches back to
 *          back; mode "graph": the same launches captured in a CUDA graph with
 *          programmatic dependent launch, as decode runs them)
 *   chain  the whole stack as decode runs it: per layer prepare(x), q, k, v, prepare,
 *          o, prepare, gate, up, prepare, down, captured as one graph
 * GB/s counts the weights' GGUF bytes; % is of 4220 GB/s (the H200's measured copy
 * bandwidth) and of the copy bandwidth this run measures.
 *
 *   bench-cuda-mmv [-o OUT.jsonl] [-t q4_0,q8_0,...] [-n 1,2,4,8] [-l LAYERS] [-d DEV]
 *                  [--i8 -1|0|1] [--sweep] [--gemm N,... [--shares W,M:W,M...]] [--commit SHA]
 * --sweep times the product kernels over their configurations instead (mode "graph");
 * --i8 1 / 0 gives Q4_0, Q4_1, Q4_K, Q6_K and Q8_0 int8 / f16 activations (-1, the default: the
 * backend's choice, kb_i8_use).  --gemm times the many-token products (kb_cuda_mmq) of a
 * layer at each N tokens instead, per group (q/k/v, o, gate/up, down) and in TFLOP/s, for
 * each kb_cuda_set_mmq_shares setting W,M of --shares (default: the context's). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/cuda.h"
#include "tests/gpu/qgen.h"

#define REF_GBPS 4220.0
#define MAX_LAYERS 80

typedef struct {
	const char *name;
	int64_t rows, cols;
	int per_layer; /* matrices of this shape per layer */
} Shape;

static const Shape shapes[3] = {
	{ "4096x4096", 4096, 4096, 4 },   /* q, k, v, o */
	{ "11008x4096", 11008, 4096, 2 }, /* gate, up */
	{ "4096x11008", 4096, 11008, 1 }, /* down */
};

static KbCuda *ctx;
static FILE *jout;
static char gpu_name[256], driver[64], date_str[32], commit[64], command[1024];
static double copy_gbps;

#define CHECK(call) \
	do { \
		int r_ = (call); \
		if (r_ < 0) { \
			fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, strerror(-r_)); \
			exit(1); \
		} \
	} while (0)

static void json_head(const char *kind)
{
	if (!jout)
		return;
	fprintf(jout, "{\"kind\":\"%s\",\"date\":\"%s\",\"commit\":\"%s\",\"gpu\":\"%s\",\"driver\":\"%s\","
		"\"command\":\"%s\"", kind, date_str, commit, gpu_name, driver, command);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void read_driver(void)
{
	/* "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release ..."
	 * (wording varies): take the first token shaped like N.N */
	FILE *f = fopen("/proc/driver/nvidia/version", "r");
	char line[512];
	snprintf(driver, sizeof(driver), "unknown");
	if (!f)
		return;
	if (fgets(line, sizeof(line), f)) {
		for (char *save = NULL, *tok = strtok_r(line, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
			char *dot = strchr(tok, '.');
			if (tok[0] >= '0' && tok[0] <= '9' && dot && dot[1] >= '0' && dot[1] <= '9') {
				snprintf(driver, sizeof(driver), "%s", tok);
				break;
			}
		}
	}
	fclose(f);
}

/* Device-to-device copy bandwidth (bytes read + written), median of 5. */
static void bench_copy(void)
{
	const size_t n = (size_t)2 << 30;
	void *a, *b;
	double t[5];
	CHECK(kb_cuda_alloc(ctx, n, &a));
	CHECK(kb_cuda_alloc(ctx, n, &b));
	CHECK(kb_cuda_memset(ctx, a, 1, n));
	CHECK(kb_cuda_copy(ctx, b, a, n));
	for (int i = 0; i < 5; i++) {
		CHECK(kb_cuda_timer_start(ctx));
		CHECK(kb_cuda_copy(ctx, b, a, n));
		CHECK(kb_cuda_timer_stop(ctx, &t[i]));
	}
	copy_gbps = 2.0 * n / (median(t, 5) * 1e-3) / 1e9;
	printf("copy bandwidth: %.0f GB/s (read + write, 2 GiB, median of 5)\n", copy_gbps);
	json_head("copy");
	if (jout)
		fprintf(jout, ",\"gbps\":%.1f}\n", copy_gbps);
	kb_cuda_dev_free(ctx, a);
	kb_cuda_dev_free(ctx, b);
}

typedef struct {
	int type, layers;
	KbCudaWeight **w[3]; /* per shape: layers * per_layer matrices */
	int count[3];
	uint64_t bytes[3];   /* GGUF bytes of one matrix */
	KbCudaAct *act4k, *act11k;
	float *x, *y;        /* [8][11008] */
} Stack;

static void stack_load(Stack *s, int type, int layers)
{
	int bsz, blck = qg_block(type, &bsz);
	uint64_t seed = 1234 + (uint64_t)type, b0;
	double t0;
	memset(s->w, 0, sizeof(s->w));
	s->type = type;
	s->layers = layers;
	kb_cuda_upload_stats(ctx, &b0, &t0);
	for (int k = 0; k < 3; k++) {
		const Shape *sh = &shapes[k];
		const size_t bytes = (size_t)(sh->rows * (sh->cols / blck) * bsz);
		uint8_t *raw = malloc(bytes);
		if (!raw) {
			fprintf(stderr, "out of memory\n");
			exit(1);
		}
		qg_fill(type, raw, sh->rows * (sh->cols / blck), &seed);
		s->count[k] = layers * sh->per_layer;
		s->bytes[k] = bytes;
		s->w[k] = calloc((size_t)s->count[k], sizeof(KbCudaWeight *));
		for (int i = 0; i < s->count[k]; i++)
			CHECK(kb_cuda_weight_upload(ctx, type, sh->rows, sh->cols, raw, &s->w[k][i]));
		free(raw);
	}
	uint64_t b1;
	double t1;
	kb_cuda_upload_stats(ctx, &b1, &t1);
	const double gbps = (double)(b1 - b0) / (t1 - t0) / 1e9;
	printf("%s: uploaded %d matrices, %.2f GB, at %.1f GB/s (pinned staging + repack)\n",
	       qd_type_traits(type)->name, s->count[0] + s->count[1] + s->count[2], (b1 - b0) / 1e9, gbps);
	json_head("upload");
	if (jout)
		fprintf(jout, ",\"type\":\"%s\",\"bytes\":%llu,\"gbps\":%.2f}\n", qd_type_traits(type)->name,
			(unsigned long long)(b1 - b0), gbps);

	CHECK(kb_cuda_act_new(ctx, 4096, &s->act4k));
	CHECK(kb_cuda_act_new(ctx, 11008, &s->act11k));
	CHECK(kb_cuda_alloc(ctx, sizeof(float) * 8 * 11008, (void **)&s->x));
	CHECK(kb_cuda_alloc(ctx, sizeof(float) * 8 * 11008, (void **)&s->y));
	float *hx = malloc(sizeof(float) * 8 * 11008);
	for (int i = 0; i < 8 * 11008; i++)
		hx[i] = qg_signed(&seed, 0.f, 1.f);
	CHECK(kb_cuda_upload(ctx, s->x, hx, sizeof(float) * 8 * 11008));
	free(hx);
}

static void stack_free(Stack *s)
{
	for (int k = 0; k < 3; k++) {
		for (int i = 0; i < s->count[k]; i++)
			kb_cuda_weight_free(s->w[k][i]);
		free(s->w[k]);
	}
	kb_cuda_act_free(s->act4k);
	kb_cuda_act_free(s->act11k);
	kb_cuda_dev_free(ctx, s->x);
	kb_cuda_dev_free(ctx, s->y);
}

/* Microseconds per product of shape k with n_tok tokens; graph: captured with PDL. */
static double time_mmv(Stack *s, int k, int n_tok, int graph)
{
	const Shape *sh = &shapes[k];
	KbCudaAct *act = sh->cols == 4096 ? s->act4k : s->act11k;
	const int n = s->count[k] * 2 > 64 ? s->count[k] * 2 : 64;
	double t[5];
	kb_cuda_set_pdl(ctx, graph);
	CHECK(kb_cuda_act_prepare(ctx, act, s->x, sh->cols, sh->cols, n_tok));
	KbCudaGraph *g = NULL;
	if (graph) {
		CHECK(kb_cuda_capture_begin(ctx));
		for (int i = 0; i < n; i++)
			CHECK(kb_cuda_mmv_act(ctx, s->w[k][i % s->count[k]], act, s->y, sh->rows));
		CHECK(kb_cuda_capture_end(ctx, &g));
		CHECK(kb_cuda_graph_launch(ctx, g)); /* warm-up */
	} else {
		for (int i = 0; i < s->count[k]; i++)
			CHECK(kb_cuda_mmv_act(ctx, s->w[k][i], act, s->y, sh->rows));
	}
	for (int rep = 0; rep < 5; rep++) {
		CHECK(kb_cuda_timer_start(ctx));
		if (graph)
			CHECK(kb_cuda_graph_launch(ctx, g));
		else
			for (int i = 0; i < n; i++)
				CHECK(kb_cuda_mmv_act(ctx, s->w[k][i % s->count[k]], act, s->y, sh->rows));
		CHECK(kb_cuda_timer_stop(ctx, &t[rep]));
		t[rep] = t[rep] * 1e3 / n;
	}
	kb_cuda_graph_free(g);
	kb_cuda_set_pdl(ctx, 1);
	return median(t, 5);
}

/* The layer stack as decode runs it; returns microseconds per pass.  prep: convert
 * the activations before each group of products (4 small kernels per layer) as a
 * forward pass must unless the conversion is fused into the op before; without it the
 * activations are converted once, outside the graph. */
static double time_chain(Stack *s, int n_tok, int pdl, int prep)
{
	KbCudaGraph *g = NULL;
	double t[7];
	kb_cuda_set_pdl(ctx, pdl);
	if (!prep) {
		CHECK(kb_cuda_act_prepare(ctx, s->act4k, s->x, 4096, 4096, n_tok));
		CHECK(kb_cuda_act_prepare(ctx, s->act11k, s->x, 11008, 11008, n_tok));
	}
	CHECK(kb_cuda_capture_begin(ctx));
	for (int l = 0; l < s->layers; l++) {
		if (prep)
			CHECK(kb_cuda_act_prepare(ctx, s->act4k, s->x, 4096, 4096, n_tok));
		for (int i = 0; i < 3; i++) /* q, k, v */
			CHECK(kb_cuda_mmv_act(ctx, s->w[0][4 * l + i], s->act4k, s->y, 4096));
		if (prep)
			CHECK(kb_cuda_act_prepare(ctx, s->act4k, s->x, 4096, 4096, n_tok));
		CHECK(kb_cuda_mmv_act(ctx, s->w[0][4 * l + 3], s->act4k, s->y, 4096)); /* o */
		if (prep)
			CHECK(kb_cuda_act_prepare(ctx, s->act4k, s->x, 4096, 4096, n_tok));
		for (int i = 0; i < 2; i++) /* gate, up */
			CHECK(kb_cuda_mmv_act(ctx, s->w[1][2 * l + i], s->act4k, s->y, 11008));
		if (prep)
			CHECK(kb_cuda_act_prepare(ctx, s->act11k, s->x, 11008, 11008, n_tok));
		CHECK(kb_cuda_mmv_act(ctx, s->w[2][l], s->act11k, s->y, 4096)); /* down */
	}
	CHECK(kb_cuda_capture_end(ctx, &g));
	CHECK(kb_cuda_graph_launch(ctx, g));
	CHECK(kb_cuda_sync(ctx));
	for (int rep = 0; rep < 7; rep++) {
		CHECK(kb_cuda_timer_start(ctx));
		CHECK(kb_cuda_graph_launch(ctx, g));
		CHECK(kb_cuda_timer_stop(ctx, &t[rep]));
	}
	kb_cuda_graph_free(g);
	kb_cuda_set_pdl(ctx, 1);
	return median(t, 7) * 1e3;
}

static void row_mmv(Stack *s, int k, int n_tok, const char *mode, double us)
{
	const double gbps = s->bytes[k] / (us * 1e-6) / 1e9;
	const char *tn = qd_type_traits(s->type)->name;
	printf("%-5s %-11s %5d  %-6s %9.2f %8.0f %6.1f%% %6.1f%%\n", tn, shapes[k].name, n_tok, mode, us, gbps,
	       100 * gbps / REF_GBPS, 100 * gbps / copy_gbps);
	json_head("mmv");
	if (jout)
		fprintf(jout, ",\"type\":\"%s\",\"shape\":\"%s\",\"n_tok\":%d,\"mode\":\"%s\",\"bytes\":%llu,"
			"\"us\":%.3f,\"gbps\":%.1f,\"pct\":%.1f,\"pct_copy\":%.1f}\n", tn, shapes[k].name, n_tok,
			mode, (unsigned long long)s->bytes[k], us, gbps, 100 * gbps / REF_GBPS,
			100 * gbps / copy_gbps);
}

static void row_chain(Stack *s, int n_tok, int pdl, int prep, double us)
{
	uint64_t bytes = 0;
	for (int k = 0; k < 3; k++)
		bytes += s->bytes[k] * (uint64_t)s->count[k];
	const double gbps = bytes / (us * 1e-6) / 1e9;
	const char *tn = qd_type_traits(s->type)->name;
	const char *mode = pdl ? (prep ? "pdl" : "pdl-np") : (prep ? "plain" : "pl-np");
	printf("%-5s chain x%-3d  %5d  %-6s %9.1f %8.0f %6.1f%% %6.1f%%   %.0f passes/s (%.2f GB)\n", tn,
	       s->layers * 7, n_tok, mode, us, gbps, 100 * gbps / REF_GBPS, 100 * gbps / copy_gbps, 1e6 / us,
	       bytes / 1e9);
	json_head("chain");
	if (jout)
		fprintf(jout, ",\"type\":\"%s\",\"matrices\":%d,\"n_tok\":%d,\"pdl\":%s,\"prep\":%s,\"bytes\":%llu,"
			"\"us\":%.1f,\"gbps\":%.1f,\"pct\":%.1f,\"pct_copy\":%.1f,\"passes_s\":%.1f}\n", tn,
			s->layers * 7, n_tok, pdl ? "true" : "false", prep ? "true" : "false", (unsigned long long)bytes, us, gbps,
			100 * gbps / REF_GBPS, 100 * gbps / copy_gbps, 1e6 / us);
}

/* The many-token products (kb_cuda_mmq) of one layer as a forward pass groups them (q/k/v
 * as one launch, o with the residual added, gate/up as one, down with the residual),
 * each group over the layer stack captured as one graph; us[g] per layer, median of 5. */
static void time_gemm(Stack *s, int n, double us[4])
{
	float *x, *y;
	void *scratch;
	const size_t xs = sizeof(float) * (size_t)n * 11008;
	CHECK(kb_cuda_alloc(ctx, xs, (void **)&x));
	CHECK(kb_cuda_alloc(ctx, 3 * xs, (void **)&y));
	CHECK(kb_cuda_alloc(ctx, kb_cuda_mmq_scratch(11008, n), &scratch));
	CHECK(kb_cuda_memset(ctx, y, 0, 3 * xs));
	for (int i = 0; i < n; i++) /* the stack's 8 random rows, repeated */
		CHECK(kb_cuda_copy(ctx, x + (size_t)i * 11008, s->x + (size_t)(i % 8) * 11008, sizeof(float) * 11008));
	for (int grp = 0; grp < 4; grp++) {
		static const int nws[4] = { 3, 1, 2, 1 };
		const int nw = nws[grp];
		const int64_t rows = grp == 2 ? 11008 : 4096;
		float *ys[3] = { y, y + (size_t)n * rows, y + 2 * (size_t)n * rows };
		KbCudaGraph *g = NULL;
		double t[5];
		/* layer l's group; l = -1: layer 0 once before the capture (a kernel's first
		 * launch sets its shared memory and the split scratch, which a capture may not) */
		for (int l = -1; l < s->layers; l++) {
			const KbCudaWeight *w[3];
			const int li = l < 0 ? 0 : l;
			for (int i = 0; i < nw; i++)
				w[i] = grp == 0 ? s->w[0][4 * li + i] : grp == 1 ? s->w[0][4 * li + 3]
					: grp == 2 ? s->w[1][2 * li + i] : s->w[2][li];
			CHECK(kb_cuda_mmq(ctx, nw, w, x, n, scratch, ys, grp == 1 || grp == 3));
			if (l < 0)
				CHECK(kb_cuda_capture_begin(ctx));
		}
		CHECK(kb_cuda_capture_end(ctx, &g));
		CHECK(kb_cuda_graph_launch(ctx, g));
		for (int rep = 0; rep < 5; rep++) {
			CHECK(kb_cuda_timer_start(ctx));
			CHECK(kb_cuda_graph_launch(ctx, g));
			CHECK(kb_cuda_timer_stop(ctx, &t[rep]));
			t[rep] = t[rep] * 1e3 / s->layers;
		}
		kb_cuda_graph_free(g);
		us[grp] = median(t, 5);
	}
	kb_cuda_dev_free(ctx, x);
	kb_cuda_dev_free(ctx, y);
	kb_cuda_dev_free(ctx, scratch);
}

static void row_gemm(Stack *s, int n, int waves, int units, const double us[4])
{
	const char *tn = qd_type_traits(s->type)->name;
	const double sum = us[0] + us[1] + us[2] + us[3];
	/* a layer: 4 + 3 x 11008 / 4096 matrices of 4096 x 4096 */
	const double flop = 2.0 * n * 4096 * 4096 * (4 + 3 * 11008.0 / 4096);
	printf("%-5s %5d %4d,%-3d %8.1f %8.1f %8.1f %8.1f %9.1f %7.0f\n", tn, n, waves, units, us[0], us[1], us[2],
	       us[3], sum, flop / (sum * 1e-6) / 1e12);
	json_head("gemm");
	if (jout)
		fprintf(jout, ",\"type\":\"%s\",\"n_tok\":%d,\"max_waves\":%d,\"min_units\":%d,\"us_qkv\":%.2f,"
			"\"us_o\":%.2f,\"us_gate_up\":%.2f,\"us_down\":%.2f,\"us_layer\":%.2f,\"tflops\":%.1f}\n", tn, n,
			waves, units, us[0], us[1], us[2], us[3], sum, flop / (sum * 1e-6) / 1e12);
}

/* Comma-separated weight types (types) or integers in 1..hi. */
static int parse_list(const char *arg, int *out, int max, int types, int hi)
{
	char buf[256];
	int n = 0;
	snprintf(buf, sizeof(buf), "%s", arg);
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && n < max; tok = strtok_r(NULL, ",", &save)) {
		int v = types ? qd_type_from_name(tok) : atoi(tok);
		if (types ? v < 0 || !kb_cuda_type_supported(v) : v < 1 || v > hi) {
			fprintf(stderr, "bad list element '%s'\n", tok);
			exit(2);
		}
		out[n++] = v;
	}
	return n;
}

int main(int argc, char **argv)
{
	int types[16] = { QD_TYPE_Q4_0, QD_TYPE_Q4_1, QD_TYPE_Q8_0, QD_TYPE_Q4_K, QD_TYPE_Q6_K, QD_TYPE_F16, QD_TYPE_BF16 };
	int ntypes = 7, ntoks[8] = { 1, 2, 4, 8 }, nntok = 4, layers = 32, device = 0, sweep = 0, i8 = -1;
	int gemm_n[16], ngemm = 0, shares[8][2] = { { KB_MMQ_MAX_WAVES, KB_MMQ_MIN_UNITS } }, nshares = 1;
	const char *out = NULL;
	size_t cl = 0;
	for (int i = 0; i < argc && cl < sizeof(command) - 1; i++)
		cl += (size_t)snprintf(command + cl, sizeof(command) - cl, "%s%s", i ? " " : "", argv[i]);
	for (char *p = command; *p; p++)
		if (*p == '"' || *p == '\\')
			*p = '\'';
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--sweep")) {
			sweep = 1;
			continue;
		}
		if (!v) {
			fprintf(stderr, "usage: %s [-o OUT.jsonl] [-t TYPES] [-n NTOKS] [-l LAYERS] [-d DEV] [--i8 -1|0|1] [--sweep] "
				"[--gemm N,... [--shares W,M:...]] [--commit SHA]\n", argv[0]);
			return 2;
		}
		i++;
		if (!strcmp(a, "-o"))
			out = v;
		else if (!strcmp(a, "-t"))
			ntypes = parse_list(v, types, 16, 1, 0);
		else if (!strcmp(a, "-n"))
			nntok = parse_list(v, ntoks, 8, 0, KB_CUDA_MAX_TOK);
		else if (!strcmp(a, "-l"))
			layers = atoi(v);
		else if (!strcmp(a, "-d"))
			device = atoi(v);
		else if (!strcmp(a, "--i8"))
			i8 = atoi(v);
		else if (!strcmp(a, "--gemm"))
			ngemm = parse_list(v, gemm_n, 16, 0, 4096);
		else if (!strcmp(a, "--shares")) {
			nshares = 0;
			char buf[256];
			snprintf(buf, sizeof(buf), "%s", v);
			for (char *save = NULL, *tok = strtok_r(buf, ":", &save); tok && nshares < 8;
			     tok = strtok_r(NULL, ":", &save)) {
				const char *comma = strchr(tok, ',');
				shares[nshares][0] = atoi(tok);
				shares[nshares][1] = comma ? atoi(comma + 1) : KB_MMQ_MIN_UNITS;
				nshares++;
			}
		} else if (!strcmp(a, "--commit"))
			snprintf(commit, sizeof(commit), "%s", v);
		else {
			fprintf(stderr, "unknown option %s\n", a);
			return 2;
		}
	}
	if (layers < 1 || layers > MAX_LAYERS) {
		fprintf(stderr, "layers must be 1..%d\n", MAX_LAYERS);
		return 2;
	}
	time_t now = time(NULL);
	strftime(date_str, sizeof(date_str), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
	int r = kb_cuda_init(device, &ctx);
	if (r < 0) {
		fprintf(stderr, "no usable CUDA device: %s\n", strerror(-r));
		return 1;
	}
	KbCudaInfo info;
	CHECK(kb_cuda_info(ctx, &info));
	snprintf(gpu_name, sizeof(gpu_name), "%s", info.name);
	read_driver();
	CHECK(kb_cuda_set_mmv_i8(ctx, 0, i8));
	printf("%s, %d SMs, %.0f GiB, L2 %.0f MiB, driver %s (CUDA %d), runtime %d\n", info.name, info.sm_count,
	       info.mem_total / 1073741824.0, info.l2_bytes / 1048576.0, driver, info.driver_version,
	       info.runtime_version);
	if (out && !(jout = fopen(out, "w"))) {
		perror(out);
		return 1;
	}
	bench_copy();

	if (sweep) {
		/* warps, row tiles, prefetch, persist, bulk-copy stages */
		static const int cfg[][5] = { { 8, 1, 0, 64, 0 }, { 8, 1, 0, 0, 0 }, { 8, 2, 0, 64, 0 },
					      { 4, 1, 0, 64, 0 }, { 4, 2, 0, 64, 0 }, { 8, 1, 0, 64, 2 },
					      { 8, 1, 0, 64, 4 }, { 8, 1, 0, 0, 2 },  { 8, 1, 0, 0, 4 },
					      { 4, 1, 0, 64, 4 }, { 4, 1, 0, 64, 8 }, { 4, 1, 0, 0, 4 },
					      { 8, 2, 0, 64, 2 }, { 8, 2, 0, 0, 2 },  { 4, 2, 0, 64, 4 },
					      { 8, 1, 0, 2, 3 },  { 8, 1, 0, 1, 6 } };
		printf("\nsweep: us per product (graph + PDL, rotating over the stack) and per chain pass "
		       "(PDL, no prep)\n");
		for (int ti = 0; ti < ntypes; ti++) {
			Stack s;
			stack_load(&s, types[ti], layers);
			for (int ni = 0; ni < nntok; ni++)
				for (size_t ci = 0; ci < sizeof(cfg) / sizeof(cfg[0]); ci++) {
					const int *c = cfg[ci];
					const char *tn = qd_type_traits(types[ti])->name;
					double us[4];
					CHECK(kb_cuda_set_mmv_config(ctx, 0, c[0], c[1], c[2], c[3]));
					CHECK(kb_cuda_set_mmv_stages(ctx, 0, c[4]));
					for (int k = 0; k < 3; k++)
						us[k] = time_mmv(&s, k, ntoks[ni], 1);
					us[3] = time_chain(&s, ntoks[ni], 1, 0);
					printf("%-5s n=%d w%d/r%d/pf%d/ps%d/st%d: %7.2f %7.2f %7.2f us  chain %7.1f us %5.1f%%\n",
					       tn, ntoks[ni], c[0], c[1], c[2], c[3], c[4], us[0], us[1], us[2], us[3],
					       100.0 * (s.bytes[0] * s.count[0] + s.bytes[1] * s.count[1] + s.bytes[2] * s.count[2]) /
						       (us[3] * 1e3) / REF_GBPS);
					json_head("sweep");
					if (jout)
						fprintf(jout, ",\"type\":\"%s\",\"n_tok\":%d,\"warps\":%d,\"row_tiles\":%d,"
							"\"prefetch\":%d,\"persist\":%d,\"stages\":%d,\"us_4096x4096\":%.3f,"
							"\"us_11008x4096\":%.3f,\"us_4096x11008\":%.3f,\"us_chain\":%.1f}\n", tn,
							ntoks[ni], c[0], c[1], c[2], c[3], c[4], us[0], us[1], us[2], us[3]);
				}
			stack_free(&s);
		}
		kb_cuda_free(ctx);
		if (jout)
			fclose(jout);
		return 0;
	}

	if (ngemm) {
		printf("\nmany-token products: us per layer (median of 5 graph replays over the stack)\n");
		printf("%-5s %5s %8s %8s %8s %8s %8s %9s %7s\n", "type", "n_tok", "shares", "qkv", "o", "gate/up", "down",
		       "layer", "TFLOP/s");
		for (int ti = 0; ti < ntypes; ti++) {
			Stack s;
			stack_load(&s, types[ti], layers);
			for (int ni = 0; ni < ngemm; ni++)
				for (int si = 0; si < nshares; si++) {
					double us[4];
					if (kb_cuda_set_mmq_shares(ctx, shares[si][0], shares[si][1]) < 0) {
						fprintf(stderr, "bad --shares %d,%d\n", shares[si][0], shares[si][1]);
						return 2;
					}
					time_gemm(&s, gemm_n[ni], us);
					row_gemm(&s, gemm_n[ni], shares[si][0], shares[si][1], us);
				}
			stack_free(&s);
			fflush(stdout);
		}
		kb_cuda_free(ctx);
		if (jout)
			fclose(jout);
		return 0;
	}

	printf("\n%-5s %-11s %5s  %-6s %9s %8s %7s %7s\n", "type", "shape", "n_tok", "mode", "us/call", "GB/s",
	       "%4.22T", "%copy");
	for (int ti = 0; ti < ntypes; ti++) {
		Stack s;
		stack_load(&s, types[ti], layers);
		for (int k = 0; k < 3; k++)
			for (int ni = 0; ni < nntok; ni++) {
				row_mmv(&s, k, ntoks[ni], "stream", time_mmv(&s, k, ntoks[ni], 0));
				row_mmv(&s, k, ntoks[ni], "graph", time_mmv(&s, k, ntoks[ni], 1));
			}
		for (int ni = 0; ni < nntok; ni++) {
			row_chain(&s, ntoks[ni], 1, 1, time_chain(&s, ntoks[ni], 1, 1));
			row_chain(&s, ntoks[ni], 1, 0, time_chain(&s, ntoks[ni], 1, 0));
			if (ntoks[ni] == 1) {
				row_chain(&s, ntoks[ni], 0, 1, time_chain(&s, ntoks[ni], 0, 1));
				row_chain(&s, ntoks[ni], 0, 0, time_chain(&s, ntoks[ni], 0, 0));
			}
		}
		stack_free(&s);
		fflush(stdout);
		if (jout)
			fflush(jout);
	}
	kb_cuda_free(ctx);
	if (jout)
		fclose(jout);
	return 0;
}
