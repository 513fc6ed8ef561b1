/* daemon/engine/tokenizer.c: the vocabulary (texts, scores, types, lookup by text), the
 * special tokens matched literally in text, end-of-generation ids, pieces for display,
 * and the encode/decode entry points.  The two encoders live in tok_bpe.c (with the
 * pre-tokenizers in pretok.c) and tok_spm.c.
 *
 * Behaviour follows llama.cpp's llama-vocab.cpp for the same GGUF (ids, defaults, which
 * tokens stop generation); where it departs this says so. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

#define TT_UNDEFINED 7 /* a token_type value we do not know */

/* Texts that end generation whatever their id (the list llama.cpp keeps); tokens with
 * them are also treated as control tokens. */
static const char *const EOG_TEXTS[] = {
	"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
	"<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
	/* fill-in-the-middle pad / repository / file separators */
	"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
	"<reponame>", "<|file_sep|>",
};

static void set_err(char *err, size_t errlen, const char *msg)
{
	if (errlen)
		snprintf(err, errlen, "%s", msg);
}

int idvec_push(IdVec *v, int32_t id)
{
	if (v->n == v->cap) {
		size_t nc = v->cap ? 2 * v->cap : 256;
		int32_t *nv = realloc(v->v, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		v->v = nv;
		v->cap = nc;
	}
	v->v[v->n++] = id;
	return 0;
}

size_t tok_utf8_char(const unsigned char *s, size_t len)
{
	unsigned c = s[0];
	size_t n;
	unsigned lo = 0x80, hi = 0xbf; /* allowed range of the first continuation byte */
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		lo = c == 0xe0 ? 0xa0 : 0x80; /* no overlong forms */
		hi = c == 0xed ? 0x9f : 0xbf; /* no surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		lo = c == 0xf0 ? 0x90 : 0x80;
		hi = c == 0xf4 ? 0x8f : 0xbf; /* nothing past U+10FFFF */
	} else {
		return 1;
	}
	if (len < n || s[1] < lo || s[1] > hi)
		return 1;
	for (size_t i = 2; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 1;
	return n;
}

/* FNV-1a */
uint32_t tok_hash(const char *s, size_t len)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < len; i++)
		h = (h ^ (uint8_t)s[i]) * 16777619u;
	return h;
}

int32_t tok_lookup(const Tokenizer *t, const char *s, size_t len)
{
	for (uint32_t h = tok_hash(s, len) & t->map_mask;; h = (h + 1) & t->map_mask) {
		int32_t id = t->map[h];
		if (id < 0)
			return -1;
		const TokEntry *e = &t->tok[id];
		if (e->len == len && memcmp(t->text + e->off, s, len) == 0)
			return id;
	}
}

/* ---- construction ---- */

void tok_free(Tokenizer *t)
{
	if (!t)
		return;
	pretok_free(t->pre);
	free(t->tok);
	free(t->text);
	free(t->piece);
	free(t->map);
	free(t->merges);
	free(t->special);
	free(t->eog);
	free(t);
}

static int32_t get_id(const GgufFile *g, const char *key, int32_t def, int32_t n_vocab)
{
	uint32_t v;
	if (gguf_get_u32(g, key, &v) == 0 && v < (uint32_t)n_vocab)
		return (int32_t)v;
	return def < n_vocab ? def : -1;
}

static bool get_bool(const GgufFile *g, const char *key, bool def)
{
	bool v;
	return gguf_get_bool(g, key, &v) == 0 ? v : def;
}

/* Copies texts, types and scores and builds the text -> id table. */
static int load_vocab(Tokenizer *t, const GgufFile *g, char *err, size_t errlen)
{
	int type;
	uint64_t n;
	const void *data;
	if (gguf_get_arr(g, "tokenizer.ggml.tokens", &type, &n, &data) < 0 || type != GGUF_STRING ||
	    n == 0 || n > (1u << 24)) {
		set_err(err, errlen, "tokenizer.ggml.tokens missing, empty or too large");
		return -EBADMSG;
	}
	t->n_vocab = (int32_t)n;
	const void *types = NULL, *scores = NULL;
	int scores_type = -1;
	uint64_t m;
	if (gguf_get_arr(g, "tokenizer.ggml.token_type", &type, &m, &types) == 0 &&
	    (type != GGUF_I32 || m < n)) {
		set_err(err, errlen, "tokenizer.ggml.token_type is not an i32 array per token");
		return -EBADMSG;
	}
	if (gguf_get_arr(g, "tokenizer.ggml.scores", &scores_type, &m, &scores) == 0 &&
	    ((scores_type != GGUF_F32 && scores_type != GGUF_I32) || m < n)) {
		set_err(err, errlen, "tokenizer.ggml.scores is not an f32/i32 array per token");
		return -EBADMSG;
	}

	size_t total = 0;
	for (uint64_t i = 0; i < n; i++) {
		const char *s;
		size_t len;
		if (gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len) < 0)
			return -EBADMSG;
		total += len + 1;
		if (total > UINT32_MAX / 2) {
			set_err(err, errlen, "tokenizer.ggml.tokens: texts too large");
			return -EBADMSG;
		}
	}
	t->tok = calloc(n, sizeof(*t->tok));
	t->text = malloc(total);
	uint32_t cap = 16;
	while (cap < 2 * n)
		cap <<= 1;
	t->map = malloc((size_t)cap * sizeof(*t->map));
	if (!t->tok || !t->text || !t->map)
		return -ENOMEM;
	memset(t->map, 0xff, (size_t)cap * sizeof(*t->map));
	t->map_mask = cap - 1;

	uint32_t off = 0;
	for (int32_t i = 0; i < t->n_vocab; i++) {
		const char *s;
		size_t len;
		gguf_get_arr_str(g, "tokenizer.ggml.tokens", (uint64_t)i, &s, &len);
		TokEntry *e = &t->tok[i];
		memcpy(t->text + off, s, len);
		t->text[off + len] = 0;
		e->off = off;
		e->len = (uint32_t)len;
		off += (uint32_t)len + 1;
		if (types) {
			int32_t ty;
			memcpy(&ty, (const char *)types + 4 * (size_t)i, 4);
			e->type = ty >= TT_NORMAL && ty <= TT_BYTE ? (uint8_t)ty : TT_UNDEFINED;
		} else {
			e->type = TT_NONE;
		}
		if (scores_type == GGUF_F32) {
			memcpy(&e->score, (const char *)scores + 4 * (size_t)i, 4);
		} else if (scores_type == GGUF_I32) {
			int32_t v;
			memcpy(&v, (const char *)scores + 4 * (size_t)i, 4);
			e->score = (float)v;
		}
		if (len == 0)
			continue; /* an empty token can never be matched */
		uint32_t h = tok_hash(s, len) & t->map_mask;
		for (; t->map[h] >= 0; h = (h + 1) & t->map_mask) {
			const TokEntry *o = &t->tok[t->map[h]];
			if (o->len == len && memcmp(t->text + o->off, s, len) == 0) {
				if (errlen)
					snprintf(err, errlen, "duplicate token text at ids %d and %d",
						 t->map[h], i);
				return -EBADMSG;
			}
		}
		t->map[h] = i;
	}
	return 0;
}

static void set_eog(Tokenizer *t, const GgufFile *g)
{
	static const char *const ids[] = {"tokenizer.ggml.eot_token_id",
					  "tokenizer.ggml.eom_token_id"};
	if (t->eos >= 0)
		t->eog[t->eos] = 1;
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		int32_t id = get_id(g, ids[i], -1, t->n_vocab);
		if (id >= 0)
			t->eog[id] = 1;
	}
	for (size_t i = 0; i < sizeof(EOG_TEXTS) / sizeof(EOG_TEXTS[0]); i++) {
		int32_t id = tok_find(t, EOG_TEXTS[i]);
		if (id < 0)
			continue;
		t->eog[id] = 1;
		if (t->tok[id].type != TT_CONTROL)
			t->tok[id].type = TT_CONTROL;
	}
}

static void set_byte_tokens(Tokenizer *t)
{
	for (int b = 0; b < 256; b++) {
		char buf[8];
		size_t n;
		if (t->kind == TOK_BPE) {
			uint32_t cp = bpe_byte_to_cp((uint8_t)b);
			if (cp < 0x80) {
				buf[0] = (char)cp;
				n = 1;
			} else {
				buf[0] = (char)(0xc0 | (cp >> 6));
				buf[1] = (char)(0x80 | (cp & 0x3f));
				n = 2;
			}
			t->byte_tok[b] = tok_lookup(t, buf, n);
		} else {
			n = (size_t)snprintf(buf, sizeof(buf), "<0x%02X>", b);
			t->byte_tok[b] = tok_lookup(t, buf, n);
			if (t->byte_tok[b] < 0) {
				buf[0] = (char)b;
				t->byte_tok[b] = tok_lookup(t, buf, 1);
			}
		}
	}
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
		: c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Writes the piece of token E to OUT (never longer than its text) and returns its length. */
static uint32_t make_piece(const Tokenizer *t, const TokEntry *e, char *out)
{
	const unsigned char *s = (const unsigned char *)t->text + e->off;
	uint32_t len = e->len, k = 0;
	switch (e->type) {
	case TT_NONE:
	case TT_NORMAL:
		for (uint32_t i = 0; i < len;) {
			if (t->kind == TOK_SPM) {
				if (i + 3 <= len && s[i] == 0xe2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
					out[k++] = ' ';
					i += 3;
				} else {
					out[k++] = (char)s[i++];
				}
				continue;
			}
			/* byte-level: a two-byte character below U+0144 may stand for a byte */
			int b = -1;
			if (s[i] < 0x80)
				b = bpe_cp_to_byte(s[i]);
			else if (i + 1 < len && (s[i] & 0xe0) == 0xc0 && (s[i + 1] & 0xc0) == 0x80)
				b = bpe_cp_to_byte(((uint32_t)(s[i] & 0x1f) << 6) | (s[i + 1] & 0x3f));
			if (b >= 0) {
				out[k++] = (char)b;
				i += s[i] < 0x80 ? 1 : 2;
			} else {
				/* not a byte-level character: shown as it is */
				size_t cl = tok_utf8_len(s[i]);
				if (cl > len - i)
					cl = len - i;
				memcpy(out + k, s + i, cl);
				k += (uint32_t)cl;
				i += (uint32_t)cl;
			}
		}
		return k;
	case TT_BYTE:
		if (len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hexval((char)s[3]) >= 0 &&
		    hexval((char)s[4]) >= 0) {
			out[0] = (char)(hexval((char)s[3]) * 16 + hexval((char)s[4]));
			return 1;
		}
		/* a byte token that does not say which byte is shown verbatim */
		__attribute__((fallthrough));
	case TT_CONTROL:
	case TT_UNKNOWN:
	case TT_USER:
		memcpy(out, s, len);
		return len;
	default: /* unused and undefined tokens show nothing */
		return 0;
	}
}

static int build_pieces(Tokenizer *t)
{
	size_t total = 0;
	for (int32_t i = 0; i < t->n_vocab; i++)
		total += t->tok[i].len + 1;
	t->piece = malloc(total);
	if (!t->piece)
		return -ENOMEM;
	uint32_t off = 0;
	for (int32_t i = 0; i < t->n_vocab; i++) {
		TokEntry *e = &t->tok[i];
		e->poff = off;
		e->plen = make_piece(t, e, t->piece + off);
		off += e->plen;
	}
	return 0;
}

/* qsort_r order: longer text first, then lower id (so the order is fully defined). */
static int cmp_special(const void *a, const void *b, void *ctx)
{
	const Tokenizer *t = ctx;
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	uint32_t lx = t->tok[x].len, ly = t->tok[y].len;
	if (lx != ly)
		return lx > ly ? -1 : 1;
	return x < y ? -1 : x > y;
}

static int build_special(Tokenizer *t)
{
	size_t n = 0;
	for (int32_t i = 0; i < t->n_vocab; i++) {
		uint8_t ty = t->tok[i].type;
		n += (ty == TT_CONTROL || ty == TT_USER || ty == TT_UNKNOWN) && t->tok[i].len;
	}
	if (!n)
		return 0;
	t->special = malloc(n * sizeof(*t->special));
	if (!t->special)
		return -ENOMEM;
	for (int32_t i = 0; i < t->n_vocab; i++) {
		uint8_t ty = t->tok[i].type;
		if ((ty == TT_CONTROL || ty == TT_USER || ty == TT_UNKNOWN) && t->tok[i].len)
			t->special[t->n_special++] = i;
	}
	qsort_r(t->special, t->n_special, sizeof(*t->special), cmp_special, t);
	return 0;
}

int tok_new(const GgufFile *g, Tokenizer **ret, char *err, size_t errlen)
{
	const char *model, *pre = NULL;
	size_t model_len, pre_len = 0;
	if (gguf_get_str(g, "tokenizer.ggml.model", &model, &model_len) < 0) {
		set_err(err, errlen, "tokenizer.ggml.model missing");
		return -EBADMSG;
	}
	int kind;
	if (model_len == 5 && memcmp(model, "llama", 5) == 0) {
		kind = TOK_SPM;
	} else if (model_len == 4 && memcmp(model, "gpt2", 4) == 0) {
		kind = TOK_BPE;
	} else {
		if (errlen)
			snprintf(err, errlen, "tokenizer model '%.*s' not supported",
				 (int)(model_len > 64 ? 64 : model_len), model);
		return -EOPNOTSUPP;
	}
	Tokenizer *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->kind = kind;
	bool pre_add_bos = false;
	int r;
	if (kind == TOK_BPE) {
		if (gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pre_len) < 0)
			pre = NULL;
		r = pretok_new(pre, pre_len, &t->pre, &t->ignore_merges, &pre_add_bos);
		if (r == -EOPNOTSUPP && errlen)
			snprintf(err, errlen, "pre-tokenizer '%.*s' not supported",
				 (int)(pre_len > 64 ? 64 : pre_len), pre);
		else if (r == -EINVAL)
			set_err(err, errlen, "PCRE2 refused a pre-tokenizer regex (no Unicode support?)");
		if (r)
			goto fail;
	}
	if ((r = load_vocab(t, g, err, errlen)))
		goto fail;
	if (kind == TOK_BPE && (r = bpe_load_merges(t, g, err, errlen)))
		goto fail;

	/* defaults as llama.cpp's for SPM; none for BPE (llama.cpp's 11 is a placeholder) */
	t->bos = get_id(g, "tokenizer.ggml.bos_token_id", kind == TOK_SPM ? 1 : -1, t->n_vocab);
	t->eos = get_id(g, "tokenizer.ggml.eos_token_id", kind == TOK_SPM ? 2 : -1, t->n_vocab);
	t->unk = get_id(g, "tokenizer.ggml.unknown_token_id", kind == TOK_SPM ? 0 : -1,
			t->n_vocab);
	t->add_bos = get_bool(g, "tokenizer.ggml.add_bos_token", kind == TOK_SPM || pre_add_bos) &&
		     t->bos >= 0;
	t->add_space_prefix = get_bool(g, "tokenizer.ggml.add_space_prefix", kind == TOK_SPM);
	t->eog = calloc((size_t)t->n_vocab, 1);
	if (!t->eog) {
		r = -ENOMEM;
		goto fail;
	}
	set_eog(t, g);
	set_byte_tokens(t);
	if ((r = build_pieces(t)) || (r = build_special(t)))
		goto fail;
	*ret = t;
	return 0;
fail:
	if (r == -ENOMEM)
		set_err(err, errlen, "out of memory");
	tok_free(t);
	return r;
}

/* ---- accessors ---- */

int tok_kind(const Tokenizer *t) { return t->kind; }
int32_t tok_n_vocab(const Tokenizer *t) { return t->n_vocab; }
int32_t tok_bos(const Tokenizer *t) { return t->bos; }
int32_t tok_eos(const Tokenizer *t) { return t->eos; }
bool tok_add_bos(const Tokenizer *t) { return t->add_bos; }

bool tok_is_eog(const Tokenizer *t, int32_t id)
{
	return id >= 0 && id < t->n_vocab && t->eog[id];
}

void tok_prefetch(const Tokenizer *t, int32_t id)
{
	if (id < 0 || id >= t->n_vocab)
		return;
	__builtin_prefetch(&t->eog[id]);
	__builtin_prefetch(&t->tok[id]);
	__builtin_prefetch(t->piece + t->tok[id].poff);
}

int32_t tok_find(const Tokenizer *t, const char *text)
{
	size_t len = strlen(text);
	return len ? tok_lookup(t, text, len) : -1;
}

const char *tok_text(const Tokenizer *t, int32_t id, size_t *ret_len)
{
	if (id < 0 || id >= t->n_vocab)
		return NULL;
	if (ret_len)
		*ret_len = t->tok[id].len;
	return t->text + t->tok[id].off;
}

/* ---- encoding ---- */

typedef struct {
	int32_t id; /* -1: text */
	uint32_t off, len;
} Frag;

typedef struct {
	Frag *v;
	size_t n, cap;
} FragVec;

static int frag_push(FragVec *f, Frag x)
{
	if (f->n == f->cap) {
		size_t nc = f->cap ? 2 * f->cap : 16;
		Frag *nv = realloc(f->v, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		f->v = nv;
		f->cap = nc;
	}
	f->v[f->n++] = x;
	return 0;
}

/* Cuts every occurrence of the special tokens out of the text fragments, longest token
 * first over the whole text (llama.cpp's tokenizer_st_partition).  User-defined tokens
 * are cut even without parse_special, as llama.cpp and Hugging Face do. */
static int partition(const Tokenizer *t, const char *text, size_t len, bool parse_special,
		     FragVec *cur)
{
	FragVec next = {0};
	int r = frag_push(cur, (Frag){.id = -1, .off = 0, .len = (uint32_t)len});
	for (size_t k = 0; k < t->n_special && !r; k++) {
		int32_t id = t->special[k];
		const TokEntry *e = &t->tok[id];
		if (!parse_special && e->type != TT_USER)
			continue;
		const char *tt = t->text + e->off;
		if (!memmem(text, len, tt, e->len))
			continue; /* cheap test: most tokens never occur */
		next.n = 0;
		for (size_t i = 0; i < cur->n && !r; i++) {
			Frag f = cur->v[i];
			if (f.id >= 0) {
				r = frag_push(&next, f);
				continue;
			}
			const char *p = text + f.off, *end = p + f.len, *m;
			while (!r && (m = memmem(p, (size_t)(end - p), tt, e->len))) {
				if (m > p)
					r = frag_push(&next, (Frag){-1, (uint32_t)(p - text),
								    (uint32_t)(m - p)});
				if (!r)
					r = frag_push(&next, (Frag){id, 0, 0});
				p = m + e->len;
			}
			if (!r && p < end)
				r = frag_push(&next, (Frag){-1, (uint32_t)(p - text), (uint32_t)(end - p)});
		}
		FragVec tmp = *cur;
		*cur = next;
		next = tmp;
	}
	free(next.v);
	return r;
}

/* SPM: spaces become U+2581, with one more in front when asked. */
static int spm_fragment(const Tokenizer *t, const char *s, size_t len, bool prefix, IdVec *out)
{
	size_t n = prefix;
	for (size_t i = 0; i < len; i++)
		n += s[i] == ' ';
	char *buf = malloc(len + 2 * n + 3);
	if (!buf)
		return -ENOMEM;
	size_t k = 0;
	if (prefix) {
		memcpy(buf, "\xe2\x96\x81", 3);
		k = 3;
	}
	for (size_t i = 0; i < len; i++) {
		if (s[i] == ' ') {
			memcpy(buf + k, "\xe2\x96\x81", 3);
			k += 3;
		} else {
			buf[k++] = s[i];
		}
	}
	int r = spm_encode(t, buf, k, out);
	free(buf);
	return r;
}

int tok_encode(const Tokenizer *t, const char *text, size_t len, bool add_bos,
	       bool parse_special, int32_t *out, size_t cap)
{
	if ((!text && len) || (!out && cap))
		return -EINVAL;
	if (len > TOK_MAX_INPUT)
		return -E2BIG;
	IdVec ids = {0};
	FragVec frags = {0};
	BpeRun *bpe = NULL;
	int r = 0;
	if (add_bos && t->bos >= 0)
		r = idvec_push(&ids, t->bos);
	if (!r && len)
		r = partition(t, text, len, parse_special, &frags);
	if (!r && len && t->kind == TOK_BPE)
		r = bpe_run_new(t, &bpe);
	/* SPM puts a space before the text at the start and after every special token */
	bool prev_special = true;
	for (size_t i = 0; i < frags.n && !r; i++) {
		const Frag *f = &frags.v[i];
		if (f->id >= 0) {
			r = idvec_push(&ids, f->id);
			prev_special = true;
		} else if (t->kind == TOK_BPE) {
			r = bpe_encode(bpe, text + f->off, f->len, &ids);
		} else {
			r = spm_fragment(t, text + f->off, f->len, t->add_space_prefix && prev_special,
					 &ids);
			prev_special = false;
		}
	}
	if (!r && ids.n > INT_MAX)
		r = -E2BIG;
	if (!r) {
		if (cap && ids.n)
			memcpy(out, ids.v, (ids.n < cap ? ids.n : cap) * sizeof(*out));
		r = (int)ids.n;
	}
	bpe_run_free(bpe);
	free(frags.v);
	free(ids.v);
	return r;
}

/* ---- decoding ---- */

int tok_piece(const Tokenizer *t, int32_t id, bool show_special, char *out, size_t cap)
{
	if (id < 0 || id >= t->n_vocab || (!out && cap))
		return -EINVAL;
	const TokEntry *e = &t->tok[id];
	if (!show_special && (e->type == TT_CONTROL || e->type == TT_UNKNOWN))
		return 0;
	if (cap && e->plen)
		memcpy(out, t->piece + e->poff, e->plen < cap ? e->plen : cap);
	return (int)e->plen;
}

int tok_decode(const Tokenizer *t, const int32_t *ids, size_t n, bool show_special,
	       char *out, size_t cap)
{
	if ((!ids && n) || (!out && cap))
		return -EINVAL;
	/* SPM: the space encoding put in front of the text goes; it sits on the first token
	 * that is not a control token (BOS comes before it) */
	bool strip = t->kind == TOK_SPM && t->add_space_prefix;
	size_t total = 0;
	for (size_t i = 0; i < n; i++) {
		if (ids[i] < 0 || ids[i] >= t->n_vocab)
			return -EINVAL;
		const TokEntry *e = &t->tok[ids[i]];
		bool ctl = e->type == TT_CONTROL || e->type == TT_UNKNOWN;
		if (ctl && !show_special)
			continue;
		const char *p = t->piece + e->poff;
		size_t len = e->plen;
		if (strip && !ctl) {
			strip = false;
			if (len && p[0] == ' ')
				p++, len--;
		}
		if (total < cap)
			memcpy(out + total, p, len < cap - total ? len : cap - total);
		total += len;
		if (total > INT_MAX)
			return -E2BIG;
	}
	return (int)total;
}
