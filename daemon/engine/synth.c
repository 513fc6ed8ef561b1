/* daemon/engine/synth.c: random-weight Llama GGUFs (see synth.h).  Tensors are declared in
 * the order llama.cpp's converter writes them, then their data is generated in pieces of
 * at most 8 MiB and appended. */
#include "errmsg.h"
#include "synth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/types.h"
#include "gguf.h"
#include "quantize.h"

static const SynthShape shapes[] = {
	{ "llama2-7b", 32, 4096, 11008, 32, 32, 32000, 4096, 10000.f },
	{ "llama3-8b", 32, 4096, 14336, 32, 8, 128256, 8192, 500000.f },
	{ "llama2-13b", 40, 5120, 13824, 40, 40, 32000, 4096, 10000.f },
	{ "llama2-70b", 80, 8192, 28672, 64, 8, 32000, 4096, 10000.f },
	{ "tiny", 2, 256, 768, 4, 2, 1000, 512, 10000.f }, /* for tests */
};

const SynthShape *synth_shape(const char *name)
{
	for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
		if (!strcmp(shapes[i].name, name))
			return &shapes[i];
	return NULL;
}

const char *synth_shape_names(void)
{
	return "llama2-7b|llama3-8b|llama2-13b|llama2-70b|tiny";
}

static uint64_t next(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* uniform in [lo, hi), random sign when sign is set */
static float unif(uint64_t *s, float lo, float hi, int sign)
{
	uint64_t r = next(s);
	float v = lo + (hi - lo) * (float)((r >> 40) * (1.0 / (1 << 24)));
	return sign && (r & 1) ? -v : v;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void rand_bytes(uint8_t *p, size_t n, uint64_t *s)
{
	while (n >= 8) {
		uint64_t r = next(s);
		memcpy(p, &r, 8);
		p += 8;
		n -= 8;
	}
	for (; n; n--)
		*p++ = (uint8_t)next(s);
}

/* N_BLOCKS blocks (elements for float types) of TYPE: random quants, scales sized like a
 * trained model's (weights of a few hundredths) and never zero. */
static void fill(int type, uint8_t *p, int64_t n_blocks, uint64_t *s)
{
	for (int64_t b = 0; b < n_blocks; b++) {
		switch (type) {
		case QD_TYPE_Q4_0:
			put16(p, qd_f32_to_f16(unif(s, 0.002f, 0.02f, 1)));
			rand_bytes(p + 2, 16, s);
			p += 18;
			break;
		case QD_TYPE_Q4_1:
			put16(p, qd_f32_to_f16(unif(s, 0.001f, 0.01f, 0)));
			put16(p + 2, qd_f32_to_f16(unif(s, -0.08f, -0.01f, 0)));
			rand_bytes(p + 4, 16, s);
			p += 20;
			break;
		case QD_TYPE_Q8_0:
			put16(p, qd_f32_to_f16(unif(s, 0.0002f, 0.002f, 1)));
			for (int i = 0; i < 32; i++)
				p[2 + i] = (uint8_t)(int8_t)(int)(next(s) % 255 - 127);
			p += 34;
			break;
		case QD_TYPE_Q4_K:
			put16(p, qd_f32_to_f16(unif(s, 0.0002f, 0.002f, 0)));
			put16(p + 2, qd_f32_to_f16(unif(s, 0.0001f, 0.001f, 0)));
			rand_bytes(p + 4, 140, s);
			p += 144;
			break;
		case QD_TYPE_Q6_K:
			rand_bytes(p, 192, s);
			for (int i = 0; i < 16; i++)
				p[192 + i] = (uint8_t)(int8_t)(int)(next(s) % 127 - 63);
			put16(p + 208, qd_f32_to_f16(unif(s, 0.0002f, 0.002f, 1)));
			p += 210;
			break;
		case QD_TYPE_F16:
			put16(p, qd_f32_to_f16(unif(s, 0.001f, 0.05f, 1)));
			p += 2;
			break;
		case QD_TYPE_BF16:
			put16(p, qd_f32_to_bf16(unif(s, 0.001f, 0.05f, 1)));
			p += 2;
			break;
		default: { /* F32 */
			float v = unif(s, 0.001f, 0.05f, 1);
			memcpy(p, &v, 4);
			p += 4;
		}
		}
	}
}

typedef struct {
	char name[64];
	int type;
	int64_t cols, rows; /* rows 1: a vector */
} TensorSpec;

/* The model's tensors in file order; *ret_n of them, malloc'd.  The matrices of a
 * quantized TYPE take the types `quantd quantize` gives them (quant_pick_type: llama.cpp's
 * rules), so a synth model has the bytes of the models the llama.cpp figures were
 * measured on: a Q6_K output for the 4-bit types, and in the Q4_K_M mix (MIX) Q6_K attn_v
 * and ffn_down only in llama.cpp's use_more_bits layers (half of a 7B's), not in all. */
static int plan(const SynthShape *s, int type, int mix, TensorSpec **ret, size_t *ret_n)
{
	const int64_t kv = (int64_t)s->n_embd / s->n_head * s->n_head_kv;
	const size_t n = 3 + 9 * (size_t)s->n_layer;
	TensorSpec *t = calloc(n, sizeof(*t));
	if (!t)
		return -ENOMEM;
	const bool pick = qd_type_traits(type)->quantized;
	const int target = mix ? QUANT_MIX_Q4_K_M : type;
	size_t i = 0;
	int r = 0;
#define T(ty, c, nr, ...) (snprintf(t[i].name, sizeof(t[i].name), __VA_ARGS__), t[i].type = (ty), t[i].cols = (c), \
			   t[i].rows = (nr), i++)
	T(type, s->n_embd, s->n_vocab, "token_embd.weight");
	for (int l = 0; l < s->n_layer; l++) {
		T(QD_TYPE_F32, s->n_embd, 1, "blk.%d.attn_norm.weight", l);
		T(type, s->n_embd, s->n_embd, "blk.%d.attn_q.weight", l);
		T(type, s->n_embd, kv, "blk.%d.attn_k.weight", l);
		T(type, s->n_embd, kv, "blk.%d.attn_v.weight", l);
		T(type, s->n_embd, s->n_embd, "blk.%d.attn_output.weight", l);
		T(QD_TYPE_F32, s->n_embd, 1, "blk.%d.ffn_norm.weight", l);
		T(type, s->n_embd, s->n_ff, "blk.%d.ffn_gate.weight", l);
		T(type, s->n_embd, s->n_ff, "blk.%d.ffn_up.weight", l);
		T(type, s->n_ff, s->n_embd, "blk.%d.ffn_down.weight", l);
	}
	T(QD_TYPE_F32, s->n_embd, 1, "output_norm.weight");
	T(type, s->n_embd, s->n_vocab, "output.weight");
#undef T
	for (size_t k = 0; pick && r == 0 && k < i; k++) {
		const int64_t ne[2] = { t[k].cols, t[k].rows };
		int wanted;
		if (t[k].rows > 1)
			r = quant_pick_type(target, t[k].name, 2, ne, s->n_layer, false, &t[k].type, &wanted);
	}
	if (r < 0) {
		free(t);
		return r;
	}
	*ret = t;
	*ret_n = i;
	return 0;
}

/* GPT-2's byte-to-character map: printable bytes stand for themselves, the others for
 * code points from 256 up.  Writes the UTF-8 of byte B's character. */
static void byte_token(int b, char out[4])
{
	int cp;
	if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) {
		cp = b;
	} else {
		int k = 0;
		for (int x = 0; x < b; x++)
			if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174))
				k++;
		cp = 256 + k;
	}
	if (cp < 0x80) {
		out[0] = (char)cp;
		out[1] = 0;
	} else {
		out[0] = (char)(0xc0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3f));
		out[2] = 0;
	}
}

static int set_vocab(GgufWriter *w, int n_vocab)
{
	char **strs = calloc((size_t)n_vocab, sizeof(char *));
	size_t *lens = calloc((size_t)n_vocab, sizeof(size_t));
	char *pool = malloc((size_t)n_vocab * 16);
	int r = -ENOMEM;
	if (!strs || !lens || !pool)
		goto out;
	for (int i = 0; i < n_vocab; i++) {
		char *p = pool + (size_t)i * 16;
		if (i < 256)
			byte_token(i, p);
		else if (i == n_vocab - 1)
			snprintf(p, 16, "<|eos|>");
		else
			snprintf(p, 16, "tok%d", i);
		strs[i] = p;
		lens[i] = strlen(p);
	}
	if ((r = gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2", 4)) < 0 ||
	    (r = gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)strs, lens,
					 (uint64_t)n_vocab)) < 0 ||
	    (r = gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", NULL, NULL, 0)) < 0 ||
	    (r = gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)(n_vocab - 1))) < 0)
		goto out;
	r = 0;
out:
	free(strs);
	free(lens);
	free(pool);
	return r;
}

int synth_write(const char *path, const SynthShape *s, int type, int mix_q4_k_m, uint64_t seed, char *err,
		size_t errlen)
{
	const QdTypeTraits *tr = qd_type_traits(mix_q4_k_m ? QD_TYPE_Q4_K : type);
	if (!tr || !s)
		return qd_errf(err, errlen, -EINVAL, "unknown type");
	if (mix_q4_k_m)
		type = QD_TYPE_Q4_K;
	switch (type) {
	case QD_TYPE_F32: case QD_TYPE_F16: case QD_TYPE_BF16: case QD_TYPE_Q4_0: case QD_TYPE_Q4_1:
	case QD_TYPE_Q8_0: case QD_TYPE_Q4_K: case QD_TYPE_Q6_K:
		break;
	default:
		return qd_errf(err, errlen, -EOPNOTSUPP, "type %s has no random block generator", tr->name);
	}
	TensorSpec *t = NULL;
	size_t n_t = 0;
	GgufWriter *w = NULL;
	uint8_t *buf = NULL;
	const size_t buf_bytes = 8u << 20;
	char name[128];
	int r = plan(s, type, mix_q4_k_m, &t, &n_t);
	if (r < 0 || (r = gguf_writer_new(&w)) < 0 || !(buf = malloc(buf_bytes))) {
		r = qd_errf(err, errlen, r < 0 ? r : -ENOMEM, "planning the tensors and the writer");
		goto out;
	}
	/* model_name() appends the matrices' type */
	snprintf(name, sizeof(name), "synth %s%s", s->name, mix_q4_k_m ? " (Q4_K_M mix)" : "");
	if ((r = gguf_writer_set_str(w, "general.architecture", "llama", 5)) < 0 ||
	    (r = gguf_writer_set_str(w, "general.name", name, strlen(name))) < 0 ||
	    (r = gguf_writer_set_u32(w, "general.quantization_version", 2)) < 0 ||
	    (r = gguf_writer_set_u32(w, "llama.context_length", (uint32_t)s->n_ctx)) < 0 ||
	    (r = gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)s->n_embd)) < 0 ||
	    (r = gguf_writer_set_u32(w, "llama.block_count", (uint32_t)s->n_layer)) < 0 ||
	    (r = gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)s->n_ff)) < 0 ||
	    (r = gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)(s->n_embd / s->n_head))) < 0 ||
	    (r = gguf_writer_set_f32(w, "llama.rope.freq_base", s->rope_base)) < 0 ||
	    (r = gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)s->n_head)) < 0 ||
	    (r = gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)s->n_head_kv)) < 0 ||
	    (r = gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f)) < 0 ||
	    (r = set_vocab(w, s->n_vocab)) < 0) {
		qd_errf(err, errlen, r, "writing the header keys");
		goto out;
	}
	for (size_t i = 0; i < n_t; i++) {
		int64_t ne[2] = { t[i].cols, t[i].rows };
		if ((r = gguf_writer_add_tensor(w, t[i].name, t[i].type, t[i].rows > 1 ? 2 : 1, ne)) < 0) {
			qd_errf(err, errlen, r, "declaring %s", t[i].name);
			goto out;
		}
	}
	if ((r = gguf_writer_begin(w, path)) < 0) {
		qd_errf(err, errlen, r, "%s.tmp: cannot write", path);
		goto out;
	}
	uint64_t rng = seed ? seed : 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < n_t; i++) {
		if (t[i].rows == 1) { /* norm weights: near 1, as trained models have */
			float *v = (float *)buf;
			for (int64_t c = 0; c < t[i].cols; c++)
				v[c] = unif(&rng, 0.9f, 1.1f, 0);
			if ((r = gguf_writer_append(w, buf, sizeof(float) * (size_t)t[i].cols)) < 0)
				goto io;
			continue;
		}
		const QdTypeTraits *tt = qd_type_traits(t[i].type);
		const int64_t row_blocks = t[i].cols / tt->blck;
		const size_t row_bytes = (size_t)row_blocks * tt->size;
		const int64_t rows_per = (int64_t)(buf_bytes / row_bytes);
		for (int64_t r0 = 0; r0 < t[i].rows; r0 += rows_per) {
			int64_t nr = t[i].rows - r0 < rows_per ? t[i].rows - r0 : rows_per;
			fill(t[i].type, buf, nr * row_blocks, &rng);
			if ((r = gguf_writer_append(w, buf, (size_t)nr * row_bytes)) < 0)
				goto io;
		}
	}
	if ((r = gguf_writer_finish(w)) < 0)
		goto io;
	r = 0;
	goto out;
io:
	qd_errf(err, errlen, r, "%s: write failed", path);
out:
	gguf_writer_free(w);
	free(buf);
	free(t);
	return r;
}
