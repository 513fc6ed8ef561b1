/* daemon/engine/convert.c: llama2.c checkpoint + tokenizer.bin -> GGUF.
 *
 * The checkpoint is read in its own order (all attention norms, then all wq, ...) so the
 * input is one sequential pass; each (array, layer) slice becomes one GGUF tensor.  The
 * header is checked first and the file size must be exactly what it implies. */
#include "convert.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "kernels/types.h"

#define CHUNK_FLOATS (1u << 16)
#define MAX_TOKENIZER_BYTES (256u << 20)
#define MAX_TOKEN_LEN 65536

/* Header of a llama2.c checkpoint, checked. */
typedef struct {
	int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
	bool shared;   /* classifier tied to the embedding (vocab_size > 0) */
	uint64_t vocab, kv_dim, head_size;
} L2cConfig;

/* One GGUF tensor: a slice of the checkpoint. */
typedef struct {
	char name[48];
	uint32_t n_dims;
	int64_t ne[2];  /* GGUF order: ne[0] = input (row length) */
	uint64_t at;    /* file offset of its first float */
	bool norm;      /* stays F32 */
} L2cTensor;

typedef struct {
	char **text;
	size_t *len;
	float *score;
	int32_t *type;
	uint64_t n;
} L2cVocab;

static int __attribute__((format(printf, 5, 6)))
say(char *err, size_t errlen, int r, const char *path, const char *fmt, ...)
{
	if (errlen) {
		int n = snprintf(err, errlen, "%s: ", path);
		va_list ap;
		va_start(ap, fmt);
		if (n >= 0 && (size_t)n < errlen)
			vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return r;
}

static int read_at(int fd, void *buf, size_t n, uint64_t at)
{
	uint8_t *p = buf;
	while (n) {
		ssize_t k = pread(fd, p, n, (off_t)at);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO; /* the file shrank under us */
		p += k;
		n -= (size_t)k;
		at += (uint64_t)k;
	}
	return 0;
}

/* ---- checkpoint header ---- */

/* Floats in the checkpoint after the header, for the shared or the unshared variant. */
static int expected_floats(const L2cConfig *c, bool shared, uint64_t *ret)
{
	uint64_t d = (uint64_t)c->dim, h = (uint64_t)c->hidden_dim, L = (uint64_t)c->n_layers;
	uint64_t per_layer = 2 * d + 2 * d * d + 2 * d * c->kv_dim + 3 * d * h;
	uint64_t n = c->vocab * d + d + (uint64_t)c->seq_len * c->head_size, t;
	/* every factor is bounded (see check_config), so only the sums can approach 2^64 */
	if (__builtin_mul_overflow(per_layer, L, &t) || __builtin_add_overflow(n, t, &n) ||
	    (!shared && __builtin_add_overflow(n, c->vocab * d, &n)))
		return -EOVERFLOW;
	*ret = n;
	return 0;
}

static int check_config(const char *path, const int32_t *h, uint64_t size, L2cConfig *ret,
			char *err, size_t errlen)
{
	static const char *const names[7] = { "dim", "hidden_dim", "n_layers", "n_heads",
					       "n_kv_heads", "vocab_size", "seq_len" };
	static const int32_t max[7] = { 1 << 16, 1 << 20, 1 << 10, 1 << 10, 1 << 10, 1 << 22, 1 << 22 };
	L2cConfig c = { h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[5] > 0, 0, 0, 0 };
	for (int i = 0; i < 7; i++) {
		int64_t v = i == 5 ? llabs((long long)h[i]) : h[i];
		if (v <= 0 || v > max[i])
			return say(err, errlen, -EBADMSG, path,
				   "not a llama2.c checkpoint: %s = %" PRId32 " is not in 1..%" PRId32 "%s",
				   names[i], h[i], max[i], i == 5 ? " (or its negative)" : "");
	}
	if (c.dim % c.n_heads || (c.dim / c.n_heads) % 2)
		return say(err, errlen, -EBADMSG, path,
			   "dim %" PRId32 " is not n_heads %" PRId32 " times an even head size",
			   c.dim, c.n_heads);
	if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads)
		return say(err, errlen, -EBADMSG, path,
			   "n_heads %" PRId32 " is not a multiple of n_kv_heads %" PRId32,
			   c.n_heads, c.n_kv_heads);
	c.vocab = (uint64_t)llabs((long long)c.vocab_size);
	c.head_size = (uint64_t)(c.dim / c.n_heads);
	c.kv_dim = c.head_size * (uint64_t)c.n_kv_heads;
	uint64_t n_shared, n_unshared;
	if (expected_floats(&c, true, &n_shared) < 0 || expected_floats(&c, false, &n_unshared) < 0 ||
	    n_unshared > (UINT64_MAX - 28) / 4)
		return say(err, errlen, -EBADMSG, path, "header implies a model too large to exist");
	uint64_t want = 28 + 4 * (c.shared ? n_shared : n_unshared);
	uint64_t other = 28 + 4 * (c.shared ? n_unshared : n_shared);
	if (size != want)
		return say(err, errlen, -EBADMSG, path,
			   "file is %" PRIu64 " bytes but its header (dim %" PRId32 ", hidden_dim %" PRId32
			   ", %" PRId32 " layers, %" PRId32 "/%" PRId32 " heads, vocab %" PRIu64
			   ", seq_len %" PRId32 ", %s classifier) implies %" PRIu64 " bytes%s",
			   size, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab,
			   c.seq_len, c.shared ? "shared" : "unshared", want,
			   size == other ? (c.shared ? "; the size fits an unshared classifier: is vocab_size's sign wrong?"
					   : "; the size fits a shared classifier: is vocab_size's sign wrong?")
					 : "");
	*ret = c;
	return 0;
}

/* The tensors in checkpoint order, with their file offsets.  Returns how many. */
static size_t plan_tensors(const L2cConfig *c, L2cTensor *t)
{
	static const struct {
		const char *name;
		int rows, cols; /* 0 none, 1 dim, 2 kv_dim, 3 hidden: [rows, cols] row-major */
	} per_layer[9] = {
		{ "attn_norm", 0, 1 }, { "attn_q", 1, 1 }, { "attn_k", 2, 1 }, { "attn_v", 2, 1 },
		{ "attn_output", 1, 1 }, { "ffn_norm", 0, 1 }, { "ffn_gate", 3, 1 },
		{ "ffn_down", 1, 3 }, { "ffn_up", 3, 1 },
	};
	const uint64_t size_of[4] = { 1, (uint64_t)c->dim, c->kv_dim, (uint64_t)c->hidden_dim };
	uint64_t at = 28, d = (uint64_t)c->dim;
	size_t n = 0;
	t[n] = (L2cTensor){ "token_embd.weight", 2, { (int64_t)d, (int64_t)c->vocab }, at, false };
	at += 4 * c->vocab * d;
	n++;
	for (int k = 0; k < 9; k++)
		for (int32_t l = 0; l < c->n_layers; l++, n++) {
			uint64_t rows = size_of[per_layer[k].rows], cols = size_of[per_layer[k].cols];
			snprintf(t[n].name, sizeof(t[n].name), "blk.%" PRId32 ".%s.weight", l,
				 per_layer[k].name);
			t[n].n_dims = per_layer[k].rows ? 2 : 1;
			t[n].ne[0] = (int64_t)cols;
			t[n].ne[1] = (int64_t)rows;
			t[n].at = at;
			t[n].norm = per_layer[k].rows == 0;
			at += 4 * rows * cols;
		}
	t[n++] = (L2cTensor){ "output_norm.weight", 1, { (int64_t)d, 1 }, at, true };
	at += 4 * d;
	at += 4 * (uint64_t)c->seq_len * c->head_size; /* the two unused RoPE tables */
	if (!c->shared)
		t[n++] = (L2cTensor){ "output.weight", 2, { (int64_t)d, (int64_t)c->vocab }, at, false };
	return n;
}

/* ---- tokenizer.bin ---- */

static void vocab_free(L2cVocab *v)
{
	if (v->text)
		for (uint64_t i = 0; i < v->n; i++)
			free(v->text[i]);
	free(v->text);
	free(v->len);
	free(v->score);
	free(v->type);
	memset(v, 0, sizeof(*v));
}

static bool is_byte_token(const char *s, size_t len)
{
	return len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' &&
	       strchr("0123456789ABCDEF", s[3]) && s[3] && strchr("0123456789ABCDEF", s[4]) && s[4];
}

/* Token text as GGUF wants it: ' ' -> U+2581, and the BOS/EOS display forms unwrapped. */
static char *gguf_token_text(uint64_t id, const uint8_t *s, size_t len, size_t *ret_len)
{
	if (id == 1 && len == 5 && memcmp(s, "\n<s>\n", 5) == 0) {
		s = (const uint8_t *)"<s>";
		len = 3;
	} else if (id == 2 && len == 6 && memcmp(s, "\n</s>\n", 6) == 0) {
		s = (const uint8_t *)"</s>";
		len = 4;
	}
	char *out = malloc(3 * len + 1);
	size_t o = 0;
	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == ' ') {
			memcpy(out + o, "\xe2\x96\x81", 3);
			o += 3;
		} else {
			out[o++] = (char)s[i];
		}
	}
	out[o] = 0;
	*ret_len = o;
	return out;
}

static int read_whole(const char *path, uint64_t max, uint8_t **ret, size_t *ret_len, char *err,
		      size_t errlen)
{
	struct stat st;
	int r, fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return say(err, errlen, -errno, path, "%s", strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = S_ISREG(st.st_mode) ? -errno : -EINVAL;
		close(fd);
		return say(err, errlen, r, path, "%s", r == -EINVAL ? "not a regular file" : strerror(-r));
	}
	if ((uint64_t)st.st_size > max) {
		close(fd);
		return say(err, errlen, -EFBIG, path, "%" PRIu64 " bytes is larger than the %" PRIu64
			   " a tokenizer may have", (uint64_t)st.st_size, max);
	}
	size_t len = (size_t)st.st_size;
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf) {
		close(fd);
		return say(err, errlen, -ENOMEM, path, "out of memory");
	}
	r = read_at(fd, buf, len, 0);
	close(fd);
	if (r < 0) {
		free(buf);
		return say(err, errlen, r, path, "read: %s", strerror(-r));
	}
	*ret = buf;
	*ret_len = len;
	return 0;
}

/* Parses tokenizer.bin for N tokens: i32 max_token_length, then per token f32 score,
 * i32 len, len bytes; nothing may follow. */
static int load_vocab(const char *path, uint64_t n, L2cVocab *v, char *err, size_t errlen)
{
	uint8_t *buf = NULL;
	size_t len = 0, pos = 4;
	int32_t max_len;
	int r = read_whole(path, MAX_TOKENIZER_BYTES, &buf, &len, err, errlen);
	if (r < 0)
		return r;
	r = -EBADMSG;
	if (n < 3) {
		say(err, errlen, r, path, "vocab_size %" PRIu64 " leaves no room for <unk>, <s>, </s>", n);
		goto out;
	}
	if (len < 4) {
		say(err, errlen, r, path, "truncated: no max_token_length");
		goto out;
	}
	memcpy(&max_len, buf, 4);
	if (max_len < 1 || max_len > MAX_TOKEN_LEN) {
		say(err, errlen, r, path, "max_token_length %" PRId32 " is not in 1..%d", max_len,
		    MAX_TOKEN_LEN);
		goto out;
	}
	v->text = calloc(n, sizeof(*v->text));
	v->len = calloc(n, sizeof(*v->len));
	v->score = calloc(n, sizeof(*v->score));
	v->type = calloc(n, sizeof(*v->type));
	v->n = n;
	if (!v->text || !v->len || !v->score || !v->type) {
		r = say(err, errlen, -ENOMEM, path, "out of memory");
		goto out;
	}
	for (uint64_t i = 0; i < n; i++) {
		int32_t tl;
		if (len - pos < 8) {
			say(err, errlen, r, path, "truncated at token %" PRIu64 " of %" PRIu64
			    " (at byte %zu)", i, n, pos);
			goto out;
		}
		memcpy(&v->score[i], buf + pos, 4);
		memcpy(&tl, buf + pos + 4, 4);
		if (!isfinite(v->score[i]) || tl < 0 || tl > max_len) {
			say(err, errlen, r, path, "token %" PRIu64 ": %s (at byte %zu)", i,
			    isfinite(v->score[i]) ? "length is not in 0..max_token_length" : "score is not finite",
			    pos);
			goto out;
		}
		pos += 8;
		if (len - pos < (size_t)tl) {
			say(err, errlen, r, path, "truncated in token %" PRIu64 " of %" PRIu64
			    " (at byte %zu)", i, n, pos);
			goto out;
		}
		if (!(v->text[i] = gguf_token_text(i, buf + pos, (size_t)tl, &v->len[i]))) {
			r = say(err, errlen, -ENOMEM, path, "out of memory");
			goto out;
		}
		pos += (size_t)tl;
		v->type[i] = i == 0 ? 2 : i <= 2 ? 3 : is_byte_token(v->text[i], v->len[i]) ? 6 : 1;
	}
	if (pos != len) {
		say(err, errlen, r, path, "%zu bytes follow the %" PRIu64
		    " tokens the checkpoint's vocab_size calls for", len - pos, n);
		goto out;
	}
	r = 0;
out:
	free(buf);
	if (r < 0)
		vocab_free(v);
	return r;
}

/* ---- output ---- */

static int set_keys(GgufWriter *w, const char *ckpt_path, const L2cConfig *c, int out_type,
		    const L2cVocab *v)
{
	const char *base = strrchr(ckpt_path, '/');
	base = base ? base + 1 : ckpt_path;
	size_t blen = strlen(base);
	if (blen > 4 && strcmp(base + blen - 4, ".bin") == 0)
		blen -= 4;
	int r = 0;
	r = r ? r : gguf_writer_set_str(w, "general.architecture", "llama", 5);
	r = r ? r : gguf_writer_set_str(w, "general.name", base, blen);
	r = r ? r : gguf_writer_set_u32(w, "general.file_type", out_type == QD_TYPE_F16 ? 1 : 0);
	r = r ? r : gguf_writer_set_u32(w, "llama.context_length", (uint32_t)c->seq_len);
	r = r ? r : gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)c->dim);
	r = r ? r : gguf_writer_set_u32(w, "llama.block_count", (uint32_t)c->n_layers);
	r = r ? r : gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)c->hidden_dim);
	r = r ? r : gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads);
	r = r ? r : gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads);
	r = r ? r : gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)c->head_size);
	r = r ? r : gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f);
	r = r ? r : gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
	r = r ? r : gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)c->vocab);
	if (r || !v->n)
		return r;
	r = r ? r : gguf_writer_set_str(w, "tokenizer.ggml.model", "llama", 5);
	r = r ? r : gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->text,
					    v->len, v->n);
	r = r ? r : gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_F32, v->score, v->n);
	r = r ? r : gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_I32, v->type, v->n);
	r = r ? r : gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
	r = r ? r : gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
	r = r ? r : gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
	r = r ? r : gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true);
	r = r ? r : gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", false);
	return r;
}

/* Streams tensor T from the checkpoint into the writer, converting as it goes. */
static int copy_tensor(int fd, const char *ckpt_path, const L2cTensor *t, int type, GgufWriter *w,
		       float *fbuf, uint16_t *hbuf, char *err, size_t errlen)
{
	uint64_t n = (uint64_t)t->ne[0] * (uint64_t)(t->n_dims == 2 ? t->ne[1] : 1);
	for (uint64_t done = 0; done < n;) {
		size_t k = n - done < CHUNK_FLOATS ? (size_t)(n - done) : CHUNK_FLOATS;
		int r = read_at(fd, fbuf, k * 4, t->at + 4 * done);
		if (r < 0)
			return say(err, errlen, r, ckpt_path, "read: %s", strerror(-r));
		if (type == QD_TYPE_F16) {
			for (size_t i = 0; i < k; i++) {
				if (isfinite(fbuf[i]) && fabsf(fbuf[i]) >= 65520.0f) /* rounds to inf */
					return say(err, errlen, -ERANGE, ckpt_path,
						   "%s element %" PRIu64 " = %g does not fit in F16 (use F32)",
						   t->name, done + i, fbuf[i]);
				hbuf[i] = qd_f32_to_f16(fbuf[i]);
			}
			r = gguf_writer_append(w, hbuf, k * 2);
		} else {
			r = gguf_writer_append(w, fbuf, k * 4);
		}
		if (r < 0)
			return r;
		done += k;
	}
	return 0;
}

int convert_llama2c(const char *ckpt_path, const char *tokenizer_path, const char *out_path,
		    int out_type, char *err, size_t errlen)
{
	L2cVocab vocab = { 0 };
	L2cConfig c = { 0 };
	L2cTensor *t = NULL;
	GgufWriter *w = NULL;
	float *fbuf = NULL;
	uint16_t *hbuf = NULL;
	struct stat st;
	int32_t h[7];
	int r, fd;
	if (errlen)
		err[0] = 0;
	if (out_type != QD_TYPE_F32 && out_type != QD_TYPE_F16)
		return say(err, errlen, -EINVAL, out_path, "output type must be F32 or F16");
	if ((fd = open(ckpt_path, O_RDONLY | O_CLOEXEC)) < 0)
		return say(err, errlen, -errno, ckpt_path, "%s", strerror(errno));
	if (fstat(fd, &st) < 0) {
		r = say(err, errlen, -errno, ckpt_path, "%s", strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		r = say(err, errlen, -EINVAL, ckpt_path, "not a regular file");
		goto out;
	}
	if (st.st_size < 28) {
		r = say(err, errlen, -EBADMSG, ckpt_path, "%lld bytes is too short for a llama2.c header",
			(long long)st.st_size);
		goto out;
	}
	if ((r = read_at(fd, h, sizeof(h), 0)) < 0) {
		say(err, errlen, r, ckpt_path, "read: %s", strerror(-r));
		goto out;
	}
	if ((r = check_config(ckpt_path, h, (uint64_t)st.st_size, &c, err, errlen)) < 0)
		goto out;
	if (tokenizer_path && (r = load_vocab(tokenizer_path, c.vocab, &vocab, err, errlen)) < 0)
		goto out;

	size_t n_t = 0;
	t = calloc(3 + 9 * (size_t)c.n_layers, sizeof(*t));
	fbuf = malloc(CHUNK_FLOATS * sizeof(float));
	hbuf = malloc(CHUNK_FLOATS * sizeof(uint16_t));
	if (!t || !fbuf || !hbuf || gguf_writer_new(&w) < 0) {
		r = say(err, errlen, -ENOMEM, out_path, "out of memory");
		goto out;
	}
	n_t = plan_tensors(&c, t);
	if ((r = set_keys(w, ckpt_path, &c, out_type, &vocab)) < 0) {
		say(err, errlen, r, out_path, "setting keys: %s", strerror(-r));
		goto out;
	}
	for (size_t i = 0; i < n_t; i++)
		if ((r = gguf_writer_add_tensor(w, t[i].name, t[i].norm ? QD_TYPE_F32 : out_type,
						t[i].n_dims, t[i].ne)) < 0) {
			say(err, errlen, r, out_path, "tensor %s: %s", t[i].name, strerror(-r));
			goto out;
		}
	if ((r = gguf_writer_begin(w, out_path)) < 0) {
		say(err, errlen, r, out_path, "%s", strerror(-r));
		goto out;
	}
	for (size_t i = 0; i < n_t; i++) {
		r = copy_tensor(fd, ckpt_path, &t[i], t[i].norm ? QD_TYPE_F32 : out_type, w, fbuf, hbuf,
				err, errlen);
		if (r < 0) {
			if (!errlen || !err[0])
				say(err, errlen, r, out_path, "write: %s", strerror(-r));
			goto out;
		}
	}
	if ((r = gguf_writer_finish(w)) < 0)
		say(err, errlen, r, out_path, "%s", strerror(-r));
out:
	gguf_writer_free(w); /* removes OUT.tmp unless finished */
	vocab_free(&vocab);
	free(t);
	free(fbuf);
	free(hbuf);
	close(fd);
	return r;
}
