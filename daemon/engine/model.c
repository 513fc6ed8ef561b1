/* daemon/engine/model.c: reads a Llama-family GGUF into a Model: hyperparameters from the
 * llama.* keys, weight descriptors pointing into the mapping, the tokenizer.  Every tensor
 * is checked for presence, type and shape here so the forward pass never has to. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errmsg.h"
#include "../../kernels/cpu/quant.h"
#include "../../kernels/types.h"
#include "model_internal.h"

static int get_int(const GgufFile *g, const char *arch, const char *suffix, int *ret, bool required,
		   int def, char *err, size_t errlen)
{
	char key[128];
	snprintf(key, sizeof(key), "%s.%s", arch, suffix);
	uint32_t v;
	int r = gguf_get_u32(g, key, &v);
	if (r == -ENOENT && !required) {
		*ret = def;
		return 0;
	}
	if (r < 0)
		return qd_errf(err, errlen, -EBADMSG, "%s: %s", key, r == -ENOENT ? "missing" : "not an unsigned 32-bit integer");
	if (v == 0 || v > (1u << 24))
		return qd_errf(err, errlen, -EBADMSG, "%s: value %u out of range", key, v);
	*ret = (int)v;
	return 0;
}

static int read_config(const GgufFile *g, ModelConfig *c, char *err, size_t errlen)
{
	const char *arch;
	size_t alen;
	int r = gguf_get_str(g, "general.architecture", &arch, &alen);
	if (r < 0)
		return qd_errf(err, errlen, -EBADMSG, "general.architecture missing");
	if (alen != 5 || memcmp(arch, "llama", 5) != 0)
		return qd_errf(err, errlen, -EOPNOTSUPP, "unsupported architecture '%.*s' (supported: llama)",
			    (int)(alen > 64 ? 64 : alen), arch);
	if ((r = get_int(g, "llama", "block_count", &c->n_layer, true, 0, err, errlen)) < 0 ||
	    (r = get_int(g, "llama", "embedding_length", &c->n_embd, true, 0, err, errlen)) < 0 ||
	    (r = get_int(g, "llama", "feed_forward_length", &c->n_ff, true, 0, err, errlen)) < 0 ||
	    (r = get_int(g, "llama", "attention.head_count", &c->n_head, true, 0, err, errlen)) < 0 ||
	    (r = get_int(g, "llama", "attention.head_count_kv", &c->n_head_kv, false, c->n_head, err, errlen)) < 0 ||
	    (r = get_int(g, "llama", "context_length", &c->n_ctx_train, false, 2048, err, errlen)) < 0)
		return r;
	if (c->n_embd % c->n_head)
		return qd_errf(err, errlen, -EBADMSG, "embedding_length %d is not a multiple of head_count %d", c->n_embd, c->n_head);
	if ((r = get_int(g, "llama", "attention.key_length", &c->head_dim, false, c->n_embd / c->n_head, err, errlen)) < 0 ||
	    (r = get_int(g, "llama", "rope.dimension_count", &c->rope_dim, false, c->head_dim, err, errlen)) < 0)
		return r;
	if (c->n_head % c->n_head_kv)
		return qd_errf(err, errlen, -EBADMSG, "head_count %d is not a multiple of head_count_kv %d", c->n_head, c->n_head_kv);
	if (c->rope_dim > c->head_dim || c->rope_dim % 2 || c->head_dim > 512)
		return qd_errf(err, errlen, -EBADMSG, "rope.dimension_count %d does not fit head size %d", c->rope_dim, c->head_dim);
	c->rope_base = 10000.0f;
	c->norm_eps = 1e-5f;
	float f;
	if (gguf_get_f32(g, "llama.rope.freq_base", &f) == 0) {
		if (!(f > 1.0f))
			return qd_errf(err, errlen, -EBADMSG, "llama.rope.freq_base %g out of range", f);
		c->rope_base = f;
	}
	if (gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f) == 0) {
		if (!(f > 0 && f < 1))
			return qd_errf(err, errlen, -EBADMSG, "layer_norm_rms_epsilon %g out of range", f);
		c->norm_eps = f;
	}
	return 0;
}

/* Looks up NAME and checks it is a ROWS x COLS matrix of a computable type (rows == 0:
 * any number of rows, returned through w). */
static int get_matrix(const GgufFile *g, const char *name, int64_t rows, int64_t cols, KbWeight *w,
		      char *err, size_t errlen)
{
	const GgufTensor *t = gguf_find_tensor(g, name);
	if (!t)
		return qd_errf(err, errlen, -EBADMSG, "missing tensor %s", name);
	if (t->n_dims != 2 || t->ne[0] != cols || (rows && t->ne[1] != rows))
		return qd_errf(err, errlen, -EBADMSG, "tensor %s: shape %lld x %lld, expected %lld x %lld", name,
			    (long long)t->ne[0], (long long)t->ne[1], (long long)cols, (long long)rows);
	if (kb_cpu_vec_dot_type(t->type) < 0) {
		const QdTypeTraits *tr = qd_type_traits(t->type);
		return qd_errf(err, errlen, -EOPNOTSUPP, "tensor %s: type %s is not supported for compute", name,
			    tr ? tr->name : "?");
	}
	*w = (KbWeight){ .type = t->type, .rows = t->ne[1], .cols = t->ne[0], .data = t->data };
	return 0;
}

static int get_vector(const GgufFile *g, const char *name, int64_t n, const float **ret, char *err, size_t errlen)
{
	const GgufTensor *t = gguf_find_tensor(g, name);
	if (!t)
		return qd_errf(err, errlen, -EBADMSG, "missing tensor %s", name);
	if (t->type != QD_TYPE_F32 || t->n_dims != 1 || t->ne[0] != n)
		return qd_errf(err, errlen, -EBADMSG, "tensor %s: expected F32 vector of %lld", name, (long long)n);
	if ((uintptr_t)t->data % 4)
		return qd_errf(err, errlen, -EBADMSG, "tensor %s: data not 4-byte aligned", name);
	*ret = t->data;
	return 0;
}

static int load_layer(const GgufFile *g, const ModelConfig *c, int il, Layer *l, char *err, size_t errlen)
{
	char n[GGUF_MAX_NAME + 1];
	const int64_t q_dim = (int64_t)c->n_head * c->head_dim, kv_dim = (int64_t)c->n_head_kv * c->head_dim;
	int r;
#define NAME(s) (snprintf(n, sizeof(n), "blk.%d.%s.weight", il, s), n)
	if ((r = get_vector(g, NAME("attn_norm"), c->n_embd, &l->attn_norm, err, errlen)) < 0 ||
	    (r = get_matrix(g, NAME("attn_q"), q_dim, c->n_embd, &l->wq, err, errlen)) < 0 ||
	    (r = get_matrix(g, NAME("attn_k"), kv_dim, c->n_embd, &l->wk, err, errlen)) < 0 ||
	    (r = get_matrix(g, NAME("attn_v"), kv_dim, c->n_embd, &l->wv, err, errlen)) < 0 ||
	    (r = get_matrix(g, NAME("attn_output"), c->n_embd, q_dim, &l->wo, err, errlen)) < 0 ||
	    (r = get_vector(g, NAME("ffn_norm"), c->n_embd, &l->ffn_norm, err, errlen)) < 0 ||
	    (r = get_matrix(g, NAME("ffn_gate"), c->n_ff, c->n_embd, &l->w_gate, err, errlen)) < 0 ||
	    (r = get_matrix(g, NAME("ffn_up"), c->n_ff, c->n_embd, &l->w_up, err, errlen)) < 0 ||
	    (r = get_matrix(g, NAME("ffn_down"), c->n_embd, c->n_ff, &l->w_down, err, errlen)) < 0)
		return r;
#undef NAME
	return 0;
}

int model_load(const char *path, Model **ret, char *err, size_t errlen)
{
	Model *m = calloc(1, sizeof(*m));
	if (!m)
		return qd_errf(err, errlen, -ENOMEM, "out of memory");
	int r = gguf_open(path, &m->gguf, err, errlen);
	if (r < 0)
		goto out;
	const GgufFile *g = m->gguf;
	ModelConfig *c = &m->cfg;
	if ((r = read_config(g, c, err, errlen)) < 0)
		goto out;
	if ((r = get_matrix(g, "token_embd.weight", 0, c->n_embd, &m->tok_embd, err, errlen)) < 0)
		goto out;
	c->n_vocab = (int)m->tok_embd.rows;
	if ((r = get_vector(g, "output_norm.weight", c->n_embd, &m->output_norm, err, errlen)) < 0)
		goto out;
	if (gguf_find_tensor(g, "output.weight")) {
		if ((r = get_matrix(g, "output.weight", c->n_vocab, c->n_embd, &m->output, err, errlen)) < 0)
			goto out;
	} else {
		m->output = m->tok_embd;
		c->tied_output = true;
	}
	m->layers = calloc((size_t)c->n_layer, sizeof(Layer));
	if (!m->layers) {
		r = qd_errf(err, errlen, -ENOMEM, "out of memory");
		goto out;
	}
	for (int il = 0; il < c->n_layer; il++)
		if ((r = load_layer(g, c, il, &m->layers[il], err, errlen)) < 0)
			goto out;
	if ((r = tok_new(g, &m->tok, err, errlen)) < 0)
		goto out;
	if (tok_n_vocab(m->tok) > c->n_vocab) {
		r = qd_errf(err, errlen, -EBADMSG, "tokenizer has %d tokens but the embedding only %d rows",
			 tok_n_vocab(m->tok), c->n_vocab);
		goto out;
	}
	const char *nm;
	size_t nlen;
	if (gguf_get_str(g, "general.name", &nm, &nlen) < 0) {
		nm = "llama";
		nlen = 5;
	}
	const QdTypeTraits *tr = qd_type_traits(m->layers[0].wq.type);
	snprintf(m->name, sizeof(m->name), "%.*s %s", (int)(nlen > 80 ? 80 : nlen), nm, tr ? tr->name : "");
	*ret = m;
	return 0;
out:
	model_free(m);
	return r;
}

void model_free(Model *m)
{
	if (!m)
		return;
	tok_free(m->tok);
	free(m->layers);
	gguf_close(m->gguf);
	free(m);
}

const ModelConfig *model_config(const Model *m)
{
	return &m->cfg;
}

const Tokenizer *model_tokenizer(const Model *m)
{
	return m->tok;
}

const GgufFile *model_gguf(const Model *m)
{
	return m->gguf;
}

const char *model_name(const Model *m)
{
	return m->name;
}

const char *model_type_label(const Model *m, char *buf, size_t n)
{
	const int t = m->layers[0].wq.type;
	bool mixed = false, q6 = false; /* q6: some layer's ffn_down is Q6_K (the _M mix's use_more_bits layers) */
	for (int il = 0; il < m->cfg.n_layer; il++) {
		const Layer *l = &m->layers[il];
		const KbWeight *ws[] = { &l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down };
		for (size_t i = 0; i < sizeof(ws) / sizeof(ws[0]); i++)
			mixed |= ws[i]->type != t;
		q6 |= l->w_down.type == QD_TYPE_Q6_K;
	}
	const QdTypeTraits *tr = qd_type_traits(t);
	const char *name = tr ? tr->name : "?";
	if (!mixed)
		snprintf(buf, n, "%s", name);
	else if (t == QD_TYPE_Q4_K && q6)
		snprintf(buf, n, "Q4_K_M");
	else
		snprintf(buf, n, "%s mix", name);
	return buf;
}

const char *model_shape_label(const Model *m, char *buf, size_t n)
{
	const char *nm;
	size_t len;
	/* synth.c names its models "synth SHAPE ..." */
	if (gguf_get_str(m->gguf, "general.name", &nm, &len) == 0 && len > 6 && !memcmp(nm, "synth ", 6)) {
		size_t e = 6;
		while (e < len && nm[e] != ' ')
			e++;
		snprintf(buf, n, "%.*s", (int)(e - 6), nm + 6);
		return buf;
	}
	const ModelConfig *c = &m->cfg;
	snprintf(buf, n, "L%d d%d ff%d h%d/%d v%d", c->n_layer, c->n_embd, c->n_ff, c->n_head, c->n_head_kv,
		 c->n_vocab);
	return buf;
}

static uint64_t weight_bytes(const KbWeight *w)
{
	uint64_t b = 0;
	qd_row_size(w->type, (uint64_t)w->cols, &b);
	return b * (uint64_t)w->rows;
}

uint64_t model_weight_bytes(const Model *m)
{
	/* Per token: every layer matrix, the norms, one embedding row and the output head. */
	uint64_t sum = weight_bytes(&m->output) + weight_bytes(&m->tok_embd) / (uint64_t)m->cfg.n_vocab;
	for (int il = 0; il < m->cfg.n_layer; il++) {
		const Layer *l = &m->layers[il];
		const KbWeight *ws[] = { &l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down };
		for (size_t i = 0; i < sizeof(ws) / sizeof(ws[0]); i++)
			sum += weight_bytes(ws[i]);
		sum += 2 * 4 * (uint64_t)m->cfg.n_embd;
	}
	return sum;
}
