/* daemon/engine/tok_bpe.c: byte-level BPE ("gpt2" vocabularies).
 *
 * Every byte of the text stands for one printable codepoint (GPT-2's byte-to-unicode
 * table) and the vocabulary is written in those codepoints.  So each word from the
 * pre-tokenizer starts as one symbol per byte -- the token of that byte's codepoint --
 * and merges are looked up by (left id, right id).  The applicable merge with the lowest
 * rank (its position in tokenizer.ggml.merges) goes first, the leftmost among equal
 * ranks, as in llama.cpp; a heap of candidate pairs keeps a word O(n log n). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "tok_internal.h"

/* ---- GPT-2 byte <-> codepoint ---- */

/* Bytes that are printable stay themselves; the rest (controls, space, DEL, the C1 range,
 * NBSP and soft hyphen) are moved past U+00FF in byte order. */
static bool byte_is_printable(unsigned b)
{
	return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
}

uint32_t bpe_byte_to_cp(uint8_t b)
{
	if (byte_is_printable(b))
		return b;
	uint32_t n = 0;
	for (unsigned x = 0; x < b; x++)
		n += !byte_is_printable(x);
	return 256 + n;
}

int bpe_cp_to_byte(uint32_t cp)
{
	if (cp < 256)
		return byte_is_printable(cp) ? (int)cp : -1;
	uint32_t n = 256;
	for (unsigned x = 0; x < 256; x++)
		if (!byte_is_printable(x) && n++ == cp)
			return (int)x;
	return -1;
}

/* ---- merges ---- */

static uint32_t pair_hash(int32_t a, int32_t b)
{
	uint64_t x = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return (uint32_t)x;
}

static const TokMerge *merge_find(const Tokenizer *t, int32_t a, int32_t b)
{
	for (uint32_t h = pair_hash(a, b) & t->merge_mask;; h = (h + 1) & t->merge_mask) {
		const TokMerge *m = &t->merges[h];
		if (m->left < 0)
			return NULL;
		if (m->left == a && m->right == b)
			return m;
	}
}

/* Merges whose halves or result are not tokens can never fire on token symbols and are
 * dropped (well-formed vocabularies have none). */
int bpe_load_merges(Tokenizer *t, const GgufFile *g, char *err, size_t errlen)
{
	int type;
	uint64_t n;
	const void *data;
	if (gguf_get_arr(g, "tokenizer.ggml.merges", &type, &n, &data) < 0 || type != GGUF_STRING ||
	    n > INT32_MAX) {
		if (errlen)
			snprintf(err, errlen, "tokenizer.ggml.merges missing or not a string array");
		return -EBADMSG;
	}
	uint32_t cap = 16;
	while (cap < 2 * n + 16)
		cap <<= 1;
	t->merges = malloc((size_t)cap * sizeof(*t->merges));
	if (!t->merges)
		return -ENOMEM;
	for (uint32_t i = 0; i < cap; i++)
		t->merges[i].left = -1;
	t->merge_mask = cap - 1;

	char small[512];
	for (uint64_t i = 0; i < n; i++) {
		const char *s;
		size_t len;
		if (gguf_get_arr_str(g, "tokenizer.ggml.merges", i, &s, &len) < 0)
			return -EBADMSG;
		/* "a b": the separator is the first space after the first byte */
		const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
		if (!sp)
			continue;
		size_t la = (size_t)(sp - s), lb = len - la - 1;
		int32_t a = tok_lookup(t, s, la), b = tok_lookup(t, sp + 1, lb);
		if (a < 0 || b < 0)
			continue;
		int32_t r;
		if (la + lb <= sizeof(small)) {
			memcpy(small, s, la);
			memcpy(small + la, sp + 1, lb);
			r = tok_lookup(t, small, la + lb);
		} else {
			char *big = malloc(la + lb);
			if (!big)
				return -ENOMEM;
			memcpy(big, s, la);
			memcpy(big + la, sp + 1, lb);
			r = tok_lookup(t, big, la + lb);
			free(big);
		}
		if (r < 0)
			continue;
		uint32_t h = pair_hash(a, b) & t->merge_mask;
		while (t->merges[h].left >= 0 && !(t->merges[h].left == a && t->merges[h].right == b))
			h = (h + 1) & t->merge_mask;
		if (t->merges[h].left >= 0)
			continue; /* a repeated pair keeps its first (best) rank */
		t->merges[h] = (TokMerge){.left = a, .right = b, .rank = (int32_t)i, .result = r};
	}
	return 0;
}

/* ---- encoding ---- */

typedef struct {
	int32_t id; /* -1: merged away, or a byte without a token */
	int32_t prev, next;
} Sym;

typedef struct {
	int32_t rank, left, right, lid, rid, result;
} Cand;

struct BpeRun {
	const Tokenizer *t;
	PreTokRun *pre;
	IdVec *out;
	Sym *sym;
	size_t sym_cap;
	Cand *heap;
	size_t heap_n, heap_cap;
	char *mapped;
	size_t mapped_cap;
};


static bool cand_less(const Cand *a, const Cand *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int heap_push(BpeRun *c, Cand x)
{
	if (c->heap_n == c->heap_cap) {
		size_t nc = c->heap_cap ? 2 * c->heap_cap : 64;
		Cand *nh = realloc(c->heap, nc * sizeof(*nh));
		if (!nh)
			return -ENOMEM;
		c->heap = nh;
		c->heap_cap = nc;
	}
	size_t i = c->heap_n++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!cand_less(&x, &c->heap[p]))
			break;
		c->heap[i] = c->heap[p];
		i = p;
	}
	c->heap[i] = x;
	return 0;
}

static Cand heap_pop(BpeRun *c)
{
	Cand top = c->heap[0], last = c->heap[--c->heap_n];
	size_t i = 0, n = c->heap_n;
	for (;;) {
		size_t l = 2 * i + 1, m = i;
		const Cand *best = &last;
		if (l < n && cand_less(&c->heap[l], best))
			m = l, best = &c->heap[l];
		if (l + 1 < n && cand_less(&c->heap[l + 1], best))
			m = l + 1;
		if (m == i)
			break;
		c->heap[i] = c->heap[m];
		i = m;
	}
	if (n)
		c->heap[i] = last;
	return top;
}

static int try_pair(BpeRun *c, int32_t l, int32_t r)
{
	if (l < 0 || r < 0 || c->sym[l].id < 0 || c->sym[r].id < 0)
		return 0;
	const TokMerge *m = merge_find(c->t, c->sym[l].id, c->sym[r].id);
	if (!m)
		return 0;
	return heap_push(c, (Cand){.rank = m->rank, .left = l, .right = r, .lid = c->sym[l].id,
				   .rid = c->sym[r].id, .result = m->result});
}

/* The word's text in byte-level codepoints, for vocabularies that take a whole word
 * when it is a token (ignore_merges). */
static int32_t whole_word(BpeRun *c, const char *w, size_t n)
{
	if (n * 2 > c->mapped_cap) {
		char *nb = realloc(c->mapped, n * 2);
		if (!nb)
			return -ENOMEM;
		c->mapped = nb;
		c->mapped_cap = n * 2;
	}
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		uint32_t cp = bpe_byte_to_cp((uint8_t)w[i]);
		if (cp < 0x80) {
			c->mapped[k++] = (char)cp;
		} else {
			c->mapped[k++] = (char)(0xc0 | (cp >> 6));
			c->mapped[k++] = (char)(0x80 | (cp & 0x3f));
		}
	}
	return tok_lookup(c->t, c->mapped, k);
}

static int encode_word(void *ctx, const char *w, size_t n)
{
	BpeRun *c = ctx;
	int r;
	if (c->t->ignore_merges) {
		int32_t id = whole_word(c, w, n);
		if (id == -ENOMEM)
			return -ENOMEM;
		if (id >= 0)
			return idvec_push(c->out, id);
	}
	if (n > c->sym_cap) {
		Sym *ns = realloc(c->sym, n * sizeof(*ns));
		if (!ns)
			return -ENOMEM;
		c->sym = ns;
		c->sym_cap = n;
	}
	for (size_t i = 0; i < n; i++)
		c->sym[i] = (Sym){.id = c->t->byte_tok[(uint8_t)w[i]], .prev = (int32_t)i - 1,
				  .next = i + 1 < n ? (int32_t)i + 1 : -1};
	c->heap_n = 0;
	for (size_t i = 0; i + 1 < n; i++)
		if ((r = try_pair(c, (int32_t)i, (int32_t)i + 1)))
			return r;
	while (c->heap_n) {
		Cand x = heap_pop(c);
		Sym *l = &c->sym[x.left], *rs = &c->sym[x.right];
		/* stale: one side was merged since this pair was queued */
		if (l->id != x.lid || l->next != x.right || rs->id != x.rid)
			continue;
		l->id = x.result;
		l->next = rs->next;
		if (rs->next >= 0)
			c->sym[rs->next].prev = x.left;
		rs->id = -1;
		if ((r = try_pair(c, l->prev, x.left)) || (r = try_pair(c, x.left, l->next)))
			return r;
	}
	for (int32_t i = 0; i >= 0; i = c->sym[i].next)
		if (c->sym[i].id >= 0 && (r = idvec_push(c->out, c->sym[i].id)))
			return r;
	return 0;
}

int bpe_run_new(const Tokenizer *t, BpeRun **ret)
{
	BpeRun *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->t = t;
	int e = pretok_run_new(t->pre, &r->pre);
	if (e) {
		free(r);
		return e;
	}
	*ret = r;
	return 0;
}

void bpe_run_free(BpeRun *r)
{
	if (!r)
		return;
	pretok_run_free(r->pre);
	free(r->sym);
	free(r->heap);
	free(r->mapped);
	free(r);
}

int bpe_encode(BpeRun *r, const char *s, size_t len, IdVec *out)
{
	r->out = out;
	return pretok_split(r->pre, s, len, encode_word, r);
}
