/* daemon/engine/quantize.c: the quantization driver: type choice per tensor, metadata,
 * and streaming every tensor through the GGUF writer.  Round-to-nearest is done here a
 * chunk of rows at a time; gptq and awq (calib.c, gptq.c, awq.c) hand back one block of
 * the model at a time, so the output is written in layer order for them. */
#include "errmsg.h"
#include "quantize.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../../kernels/cpu/quant.h"
#include "../../kernels/types.h"
#include "awq_internal.h"
#include "quantize_internal.h"

/* Rows per parallel chunk are chosen so a chunk's output stays near this many bytes. */
#define CHUNK_BYTES (4u << 20)
#define MAX_NOTE 512

const char *const quant_linear_names[QL_COUNT] = { "attn_q", "attn_k", "attn_v", "attn_output",
						   "ffn_gate", "ffn_up", "ffn_down" };

static void __attribute__((format(printf, 2, 3))) note(const QuantParams *p, const char *fmt, ...)
{
	if (!p->note)
		return;
	char buf[MAX_NOTE];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	p->note(p->cb_arg, buf);
}

QuantParams quant_default_params(void)
{
	return (QuantParams){ .type = QD_TYPE_Q8_0, .method = QUANT_RTN, .calib_seqs = 32, .calib_ctx = 512,
			      .damp = 0.01f };
}

static const struct {
	const char *name;
	int type;
	uint32_t ftype; /* llama.cpp llama_ftype */
} targets[] = {
	{ "F32", QD_TYPE_F32, 0 },   { "F16", QD_TYPE_F16, 1 },   { "Q4_0", QD_TYPE_Q4_0, 2 },
	{ "Q4_1", QD_TYPE_Q4_1, 3 }, { "Q8_0", QD_TYPE_Q8_0, 7 },
	/* A uniform Q4_K file is closest to llama.cpp's Q4_K_S (14). */
	{ "Q4_K", QD_TYPE_Q4_K, 14 }, { "Q4_K_M", QUANT_MIX_Q4_K_M, 15 }, { "Q6_K", QD_TYPE_Q6_K, 18 },
};

int quant_parse_type(const char *name, int *ret)
{
	for (size_t i = 0; name && i < sizeof(targets) / sizeof(targets[0]); i++)
		if (!strcasecmp(name, targets[i].name)) {
			*ret = targets[i].type;
			return 0;
		}
	return -EINVAL;
}

const char *quant_type_name(int type)
{
	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++)
		if (targets[i].type == type)
			return targets[i].name;
	return "?";
}

uint32_t quant_file_type(int type)
{
	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++)
		if (targets[i].type == type)
			return targets[i].ftype;
	return 0;
}

static const char *const method_names[] = { "rtn", "gptq", "awq" };

int quant_parse_method(const char *name, int *ret)
{
	for (int i = 0; name && i < 3; i++)
		if (!strcasecmp(name, method_names[i])) {
			*ret = i;
			return 0;
		}
	return -EINVAL;
}

const char *quant_method_name(int method)
{
	return method >= 0 && method < 3 ? method_names[method] : "?";
}

/* llama.cpp's use_more_bits: the first and last eighth of the layers, and every third
 * layer in between, get more bits in the _M mixes. */
static bool use_more_bits(int i, int n)
{
	return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* blk.N.<what>.weight -> N and a pointer to <what>; -1 when NAME is not a block tensor. */
static int layer_of(const char *name, const char **ret_what)
{
	if (strncmp(name, "blk.", 4) != 0)
		return -1;
	char *end;
	long il = strtol(name + 4, &end, 10);
	if (end == name + 4 || *end != '.' || il < 0 || il > 1 << 20)
		return -1;
	*ret_what = end + 1;
	return (int)il;
}

static bool has_prefix(const char *s, const char *prefix)
{
	return !strncmp(s, prefix, strlen(prefix));
}

static int fallback_type(int t)
{
	switch (t) {
	case QD_TYPE_Q6_K: return QD_TYPE_Q8_0;
	case QD_TYPE_Q4_K: return QD_TYPE_Q4_1;
	case QD_TYPE_Q8_0: case QD_TYPE_Q4_0: case QD_TYPE_Q4_1: return QD_TYPE_F16;
	default: return QD_TYPE_F32;
	}
}

int quant_pick_type(int target, const char *name, uint32_t n_dims, const int64_t *ne, int n_layer,
		    bool tied, int *ret_type, int *ret_wanted)
{
	int base = target == QUANT_MIX_Q4_K_M ? QD_TYPE_Q4_K : target;
	const QdTypeTraits *tr = qd_type_traits(base);
	if (!tr || (!tr->quantized && base != QD_TYPE_F16 && base != QD_TYPE_F32) || !name || n_dims < 1 ||
	    n_dims > 4)
		return -EINVAL;
	size_t len = strlen(name);
	bool is_weight = len > 7 && !strcmp(name + len - 7, ".weight");
	if (n_dims != 2 || !is_weight) {
		*ret_type = *ret_wanted = QD_TYPE_F32;
		return 0;
	}
	int t = base;
	const char *what = NULL;
	int il = layer_of(name, &what);
	bool is_output = !strcmp(name, "output.weight") || (tied && !strcmp(name, "token_embd.weight"));
	if (is_output && base != QD_TYPE_F32 && base != QD_TYPE_F16 && base != QD_TYPE_Q8_0)
		t = QD_TYPE_Q6_K;
	if (target == QUANT_MIX_Q4_K_M && il >= 0 &&
	    (has_prefix(what, "attn_v.") || has_prefix(what, "ffn_down.")) && use_more_bits(il, n_layer))
		t = QD_TYPE_Q6_K;
	*ret_wanted = t;
	while (ne[0] % qd_type_traits(t)->blck)
		t = fallback_type(t);
	*ret_type = t;
	return 0;
}

/* ---------------------------------------------------------------- round to nearest */

int quant_src_row(const GgufTensor *t, int64_t i, float *dst)
{
	uint64_t rs;
	if (qd_row_size(t->type, (uint64_t)t->ne[0], &rs) < 0)
		return -EOPNOTSUPP;
	const uint8_t *row = (const uint8_t *)t->data + (uint64_t)i * rs;
	if (t->type == QD_TYPE_F32) {
		memcpy(dst, row, sizeof(float) * (size_t)t->ne[0]);
		return 0;
	}
	return kb_cpu_dequantize_row(t->type, row, dst, t->ne[0]) < 0 ? -EOPNOTSUPP : 0;
}

typedef struct {
	int src_type, dst_type;
	const uint8_t *src;
	uint8_t *dst;
	int64_t rows, cols;
	uint64_t src_rs, dst_rs;
	float *scratch; /* [nth][cols] */
	int err;        /* first failure, written by any worker (benign race: all write -EINVAL) */
} RtnJob;

static void rtn_worker(void *arg, int ith, int nth)
{
	RtnJob *j = arg;
	int64_t lo, hi;
	kb_split(j->rows, 1, ith, nth, &lo, &hi);
	float *f = j->scratch + (int64_t)ith * j->cols;
	for (int64_t r = lo; r < hi; r++) {
		const uint8_t *s = j->src + (uint64_t)r * j->src_rs;
		const float *x = f;
		if (j->src_type == QD_TYPE_F32)
			x = (const float *)(const void *)s; /* rows of f32 from the mapping: 4-aligned by GGUF */
		else if (kb_cpu_dequantize_row(j->src_type, s, f, j->cols) < 0)
			j->err = -EINVAL;
		if (j->dst_type == QD_TYPE_F32)
			memcpy(j->dst + (uint64_t)r * j->dst_rs, x, sizeof(float) * (size_t)j->cols);
		else if (kb_cpu_quantize_row(j->dst_type, x, j->dst + (uint64_t)r * j->dst_rs, j->cols) < 0)
			j->err = -EINVAL;
	}
}

int quant_rows_rtn(KbThreadPool *tp, int src_type, const void *src, int64_t rows, int64_t cols,
		   int dst_type, void *dst)
{
	RtnJob j = { .src_type = src_type, .dst_type = dst_type, .src = src, .dst = dst, .rows = rows, .cols = cols };
	if (qd_row_size(src_type, (uint64_t)cols, &j.src_rs) < 0 || qd_row_size(dst_type, (uint64_t)cols, &j.dst_rs) < 0)
		return -EINVAL;
	int nth = tp ? kb_threadpool_size(tp) : 1;
	j.scratch = malloc(sizeof(float) * (size_t)cols * (size_t)nth);
	if (!j.scratch)
		return -ENOMEM;
	kb_threadpool_run(tp, rtn_worker, &j);
	free(j.scratch);
	return j.err;
}

/* ---------------------------------------------------------------- the driver */

typedef struct {
	const QuantParams *p;
	const char *in;
	GgufFile *g;
	KbThreadPool *tp;
	GgufWriter *w;
	QPlanTensor *plan;
	size_t n_plan;
	int n_layer;
	uint64_t done, total;
	void *buf;
	size_t buf_cap;
} Job;

static int grow(Job *j, size_t n)
{
	if (n <= j->buf_cap)
		return 0;
	void *b = realloc(j->buf, n);
	if (!b)
		return -ENOMEM;
	j->buf = b;
	j->buf_cap = n;
	return 0;
}

static void progress(Job *j, uint64_t add)
{
	j->done += add;
	if (j->p->progress)
		j->p->progress(j->p->cb_arg, j->done, j->total);
}

/* Streams one tensor through rtn, a chunk of rows at a time. */
static int write_rtn(Job *j, const QPlanTensor *pt, char *err, size_t errlen)
{
	const GgufTensor *t = pt->src;
	const int64_t cols = t->ne[0], rows = (int64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
	uint64_t src_rs, dst_rs;
	if (qd_row_size(t->type, (uint64_t)cols, &src_rs) < 0 || qd_row_size(pt->type, (uint64_t)cols, &dst_rs) < 0)
		return qd_errf(err, errlen, -EBADMSG, "%s: bad row length %lld", t->name, (long long)cols);
	int64_t chunk = (int64_t)(CHUNK_BYTES / (dst_rs ? dst_rs : 1));
	if (chunk < 1)
		chunk = 1;
	int r;
	if ((r = grow(j, (size_t)(dst_rs * (uint64_t)(chunk < rows ? chunk : rows)))) < 0)
		return qd_errf(err, errlen, r, "out of memory");
	for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
		int64_t n = rows - r0 < chunk ? rows - r0 : chunk;
		if ((r = quant_rows_rtn(j->tp, t->type, (const uint8_t *)t->data + (uint64_t)r0 * src_rs, n, cols,
					pt->type, j->buf)) < 0)
			return qd_errf(err, errlen, r, "%s: cannot convert %s to %s", t->name,
				    qd_type_traits(t->type)->name, qd_type_traits(pt->type)->name);
		if ((r = gguf_writer_append(j->w, j->buf, (size_t)(dst_rs * (uint64_t)n))) < 0)
			return qd_errf(err, errlen, r, "writing %s: %s", t->name, strerror(-r));
		progress(j, src_rs * (uint64_t)n);
	}
	return 0;
}

/* Writes one calibrated block: the layer's tensors in plan order, from OUT. */
static int write_layer(Job *j, int il, size_t *pi, const QuantLayerOut *out, char *err, size_t errlen)
{
	for (; *pi < j->n_plan && j->plan[*pi].layer == il; (*pi)++) {
		const QPlanTensor *pt = &j->plan[*pi];
		const char *what = NULL;
		layer_of(pt->src->name, &what);
		const void *data = NULL;
		for (int k = 0; k < QL_COUNT; k++) {
			size_t n = strlen(quant_linear_names[k]);
			if (!strncmp(what, quant_linear_names[k], n) && !strcmp(what + n, ".weight"))
				data = out->w[k];
		}
		if (!strcmp(what, "attn_norm.weight"))
			data = out->attn_norm;
		else if (!strcmp(what, "ffn_norm.weight"))
			data = out->ffn_norm;
		int r;
		if (!data) {
			if ((r = write_rtn(j, pt, err, errlen)) < 0)
				return r;
			continue;
		}
		if ((r = gguf_writer_append(j->w, data, (size_t)pt->out_bytes)) < 0)
			return qd_errf(err, errlen, r, "writing %s: %s", pt->src->name, strerror(-r));
		progress(j, pt->src->nbytes);
	}
	return 0;
}

/* Plan order: the input's for rtn; for the calibrated methods the token embedding, then
 * block by block, then everything else, each group in input order. */
static int plan_cmp(const void *a, const void *b)
{
	const QPlanTensor *x = a, *y = b;
	if (x->order != y->order)
		return x->order < y->order ? -1 : 1;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static bool can_dequantize(int type)
{
	static const uint8_t zero[1024];
	float out[QD_QK_K];
	const QdTypeTraits *tr = qd_type_traits(type);
	return tr && tr->blck <= QD_QK_K && tr->size * (size_t)(QD_QK_K / tr->blck) <= sizeof(zero) &&
	       (type == QD_TYPE_F32 || kb_cpu_dequantize_row(type, zero, out, tr->blck) == 0);
}

typedef struct {
	int wanted, got;
	int64_t cols;
	int count;
	const char *example;
} Fallback;

static int make_plan(Job *j, char *err, size_t errlen)
{
	const GgufFile *g = j->g;
	const QuantParams *p = j->p;
	j->n_plan = gguf_n_tensors(g);
	j->plan = calloc(j->n_plan ? j->n_plan : 1, sizeof(QPlanTensor));
	Fallback fb[16];
	int n_fb = 0, src_quant = -1;
	if (!j->plan)
		return qd_errf(err, errlen, -ENOMEM, "out of memory");
	bool tied = !gguf_find_tensor(g, "output.weight");
	for (size_t i = 0; i < j->n_plan; i++) {
		const GgufTensor *t = gguf_tensor(g, i);
		QPlanTensor *pt = &j->plan[i];
		const char *what;
		pt->src = t;
		pt->layer = layer_of(t->name, &what);
		const QdTypeTraits *tr = qd_type_traits(t->type);
		pt->idx = i;
		pt->order = pt->layer >= 0 ? pt->layer : !strcmp(t->name, "token_embd.weight") ? -1 : INT32_MAX;
		if (!can_dequantize(t->type))
			return qd_errf(err, errlen, -EOPNOTSUPP, "%s: type %s cannot be dequantized by this build", t->name,
				    tr ? tr->name : "?");
		if (quant_pick_type(p->type, t->name, t->n_dims, t->ne, j->n_layer, tied, &pt->type, &pt->wanted) < 0)
			return qd_errf(err, errlen, -EINVAL, "%s: no type for this tensor", t->name);
		uint64_t rs;
		if (qd_row_size(pt->type, (uint64_t)t->ne[0], &rs) < 0)
			return qd_errf(err, errlen, -EBADMSG, "%s: bad shape", t->name);
		pt->out_bytes = rs * (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
		j->total += t->nbytes;
		if (tr->quantized && t->n_dims == 2 && (src_quant < 0 || t->type != QD_TYPE_Q8_0))
			src_quant = t->type;
		if (pt->type != pt->wanted) {
			int k = 0;
			while (k < n_fb && !(fb[k].wanted == pt->wanted && fb[k].got == pt->type && fb[k].cols == t->ne[0]))
				k++;
			if (k == n_fb && n_fb < 16)
				fb[n_fb++] = (Fallback){ pt->wanted, pt->type, t->ne[0], 0, t->name };
			if (k < n_fb)
				fb[k].count++;
		}
	}
	if (src_quant >= 0)
		note(p, "the input is quantized (%s): it is dequantized first, and the output's quality is bounded by it",
		     qd_type_traits(src_quant)->name);
	for (int k = 0; k < n_fb; k++)
		note(p, "%d tensor(s) with rows of %lld (e.g. %s): %s does not fit, using %s%s", fb[k].count,
		     (long long)fb[k].cols, fb[k].example, qd_type_traits(fb[k].wanted)->name,
		     qd_type_traits(fb[k].got)->name,
		     fb[k].wanted == QD_TYPE_Q4_K ? " (llama.cpp would use Q5_0, which this build lacks)" : "");
	if (p->method != QUANT_RTN)
		qsort(j->plan, j->n_plan, sizeof(QPlanTensor), plan_cmp);
	return 0;
}

static int block_count(const GgufFile *g)
{
	const char *arch;
	size_t alen;
	char key[96];
	uint32_t n;
	if (gguf_get_str(g, "general.architecture", &arch, &alen) == 0 && alen < 64) {
		snprintf(key, sizeof(key), "%.*s.block_count", (int)alen, arch);
		if (gguf_get_u32(g, key, &n) == 0 && n <= 1u << 20)
			return (int)n;
	}
	int max = -1;
	for (size_t i = 0; i < gguf_n_tensors(g); i++) {
		const char *what;
		int il = layer_of(gguf_tensor(g, i)->name, &what);
		if (il > max)
			max = il;
	}
	return max + 1;
}

static int set_metadata(Job *j)
{
	const QuantParams *p = j->p;
	GgufWriter *w = j->w;
	int r = 0;
	for (size_t i = 0; i < gguf_n_kv(j->g) && r == 0; i++) {
		const char *k = gguf_kv_key(j->g, i);
		if (!has_prefix(k, "quantize."))
			r = gguf_writer_copy_kv(w, j->g, i);
	}
	bool any_quant = false;
	for (size_t i = 0; i < j->n_plan; i++)
		any_quant |= qd_type_traits(j->plan[i].type)->quantized;
	const char *tn = quant_type_name(p->type), *mn = quant_method_name(p->method);
	if (r == 0)
		r = gguf_writer_set_u32(w, "general.file_type", quant_file_type(p->type));
	if (r == 0 && any_quant)
		r = gguf_writer_set_u32(w, "general.quantization_version", 2);
	if (r == 0)
		r = gguf_writer_set_str(w, "quantize.tool", "quantd", 6);
	if (r == 0)
		r = gguf_writer_set_str(w, "quantize.type", tn, strlen(tn));
	if (r == 0)
		r = gguf_writer_set_str(w, "quantize.method", mn, strlen(mn));
	if (r == 0 && p->method != QUANT_RTN) {
		const char *cn = p->calib_name ? p->calib_name : "";
		if ((r = gguf_writer_set_str(w, "quantize.calib.source", cn, strlen(cn))) == 0 &&
		    (r = gguf_writer_set_u32(w, "quantize.calib.sequences", (uint32_t)p->calib_seqs)) == 0)
			r = gguf_writer_set_u32(w, "quantize.calib.context", (uint32_t)p->calib_ctx);
	}
	if (r == 0 && p->method == QUANT_GPTQ) {
		if ((r = gguf_writer_set_f32(w, "quantize.gptq.damp", p->damp)) == 0)
			r = gguf_writer_set_bool(w, "quantize.gptq.act_order", p->act_order);
	}
	if (r == 0 && p->method == QUANT_AWQ) {
		/* the settings of awq.c / calib.c's AWQ pass, as constants there */
		static const char groups[] = "attn_norm>q,k,v; v>o (tied per kv head); ffn_norm>gate,up; up>down";
		static const char noclip[] = "attn_q,attn_k";
		if ((r = gguf_writer_set_u32(w, "quantize.awq.scale_grid", AWQ_GRID)) == 0 &&
		    (r = gguf_writer_set_str(w, "quantize.awq.scale_groups", groups, strlen(groups))) == 0 &&
		    (r = gguf_writer_set_f32(w, "quantize.awq.clip_max_shrink",
					     (float)AWQ_CLIP_STEPS / AWQ_CLIP_GRID)) == 0 &&
		    (r = gguf_writer_set_u32(w, "quantize.awq.clip_grid", AWQ_CLIP_STEPS + 1)) == 0)
			r = gguf_writer_set_str(w, "quantize.awq.clip_skip", noclip, strlen(noclip));
	}
	return r;
}

static bool method_supports(int method, int type)
{
	if (method == QUANT_RTN)
		return true;
	if (method == QUANT_AWQ) /* AWQ measures error through kb_cpu_quantize_row: any block type */
		return type != QD_TYPE_F32 && type != QD_TYPE_F16;
	return type == QD_TYPE_Q8_0 || type == QD_TYPE_Q4_0 || type == QD_TYPE_Q4_1;
}

static int check_params(const QuantParams *p, char *err, size_t errlen)
{
	if (!p || !strcmp(quant_type_name(p->type), "?"))
		return qd_errf(err, errlen, -EINVAL, "unknown target type");
	if (p->method < QUANT_RTN || p->method > QUANT_AWQ)
		return qd_errf(err, errlen, -EINVAL, "unknown method");
	if (!method_supports(p->method, p->type))
		return qd_errf(err, errlen, -EOPNOTSUPP, "method %s is implemented for %s, not %s",
			    quant_method_name(p->method),
			    p->method == QUANT_AWQ ? "the quantized types" : "Q8_0, Q4_0 and Q4_1",
			    quant_type_name(p->type));
	if (p->method != QUANT_RTN &&
	    (!p->calib_text || p->calib_seqs < 1 || p->calib_seqs > 4096 || p->calib_ctx < 16 ||
	     p->calib_ctx > 1 << 16 || !(p->damp > 0 && p->damp < 1)))
		return qd_errf(err, errlen, -EINVAL, "%s needs calibration text and sane calibration settings",
			    quant_method_name(p->method));
	return 0;
}

static int same_file(const char *a, const char *b)
{
	struct stat sa, sb;
	return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int write_all_tensors(Job *j, char *err, size_t errlen)
{
	int r = 0;
	if (j->p->method == QUANT_RTN) {
		for (size_t i = 0; i < j->n_plan && r == 0; i++)
			r = write_rtn(j, &j->plan[i], err, errlen);
		return r;
	}
	QuantCalib *c = NULL;
	if ((r = calib_new(j->in, j->p, j->plan, j->n_plan, j->tp, &c, err, errlen)) < 0)
		return r;
	size_t i = 0;
	int next_layer = 0;
	while (i < j->n_plan && r == 0) {
		int il = j->plan[i].layer;
		if (il < 0) {
			r = write_rtn(j, &j->plan[i++], err, errlen);
			continue;
		}
		if (il != next_layer) {
			r = qd_errf(err, errlen, -EBADMSG, "block %d is missing or out of order", next_layer);
			break;
		}
		QuantLayerOut out = { 0 };
		if ((r = calib_layer(c, il, &out, err, errlen)) == 0)
			r = write_layer(j, il, &i, &out, err, errlen);
		quant_layer_out_done(&out);
		next_layer++;
	}
	calib_free(c);
	return r;
}

int quantize_file(const char *in, const char *out, const QuantParams *p, QuantStats *ret_stats,
		  char *err, size_t errlen)
{
	int r = check_params(p, err, errlen);
	if (r < 0)
		return r;
	if (!in || !out)
		return qd_errf(err, errlen, -EINVAL, "missing file name");
	if (same_file(in, out))
		return qd_errf(err, errlen, -EEXIST, "%s: input and output are the same file", out);
	double t0 = now();
	Job j = { .p = p, .in = in };
	char gerr[256] = "";
	if ((r = gguf_open(in, &j.g, gerr, sizeof(gerr))) < 0) {
		qd_errf(err, errlen, r, "%s: %s", in, gerr[0] ? gerr : strerror(-r));
		goto out;
	}
	j.n_layer = block_count(j.g);
	if ((r = kb_threadpool_new(p->n_threads, &j.tp)) < 0) {
		qd_errf(err, errlen, r, "cannot start threads: %s", strerror(-r));
		goto out;
	}
	if ((r = make_plan(&j, err, errlen)) < 0)
		goto out;
	if ((r = gguf_writer_new(&j.w)) < 0 || (r = set_metadata(&j)) < 0) {
		qd_errf(err, errlen, r, "metadata: %s", strerror(-r));
		goto out;
	}
	for (size_t i = 0; i < j.n_plan; i++) {
		const GgufTensor *t = j.plan[i].src;
		if ((r = gguf_writer_add_tensor(j.w, t->name, j.plan[i].type, t->n_dims, t->ne)) < 0) {
			qd_errf(err, errlen, r, "%s: cannot declare the output tensor: %s", t->name, strerror(-r));
			goto out;
		}
	}
	if ((r = gguf_writer_begin(j.w, out)) < 0) {
		qd_errf(err, errlen, r, "%s: %s", out, strerror(-r));
		goto out;
	}
	if ((r = write_all_tensors(&j, err, errlen)) < 0)
		goto out;
	if ((r = gguf_writer_finish(j.w)) < 0) {
		qd_errf(err, errlen, r, "%s: %s", out, strerror(-r));
		goto out;
	}
	if (ret_stats) {
		QuantStats s = { .n_tensors = (int)j.n_plan, .seconds = now() - t0 };
		for (size_t i = 0; i < j.n_plan; i++) {
			const GgufTensor *t = j.plan[i].src;
			s.in_bytes += t->nbytes;
			s.out_bytes += j.plan[i].out_bytes;
			s.n_weights += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
			s.n_fallback += j.plan[i].type != j.plan[i].wanted;
		}
		*ret_stats = s;
	}
out:
	gguf_writer_free(j.w);
	free(j.plan);
	free(j.buf);
	kb_threadpool_free(j.tp);
	gguf_close(j.g);
	return r;
}
