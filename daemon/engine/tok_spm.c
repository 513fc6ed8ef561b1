/* daemon/engine/tok_spm.c: SentencePiece-style BPE ("llama" vocabularies).
 *
 * The text (spaces already escaped as U+2581) starts as one symbol per UTF-8 character
 * (per byte where the UTF-8 is broken: llama.cpp lets a bad lead byte take the next bytes
 * along, which can hide an escaped space inside byte tokens and change the text);
 * then, repeatedly, the adjacent pair whose concatenation is the token with the highest
 * score is merged (the leftmost among equal scores), as sentencepiece's BPE and
 * llama.cpp's llm_tokenizer_spm do.  A symbol left that is not a token (a character the
 * vocabulary lacks) becomes one <0xXX> token per byte, or the unknown token. */
#include <errno.h>
#include <stdlib.h>

#include "tok_internal.h"

typedef struct {
	uint32_t start, n; /* bytes of the text; n == 0 once merged into its left neighbour */
	int32_t prev, next;
} SpmSym;

typedef struct {
	float score;
	int32_t left, right;
	uint32_t size; /* bytes of the pair when queued: detects stale entries */
} SpmCand;

typedef struct {
	SpmCand *v;
	size_t n, cap;
} SpmHeap;

static bool better(const SpmCand *a, const SpmCand *b)
{
	return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int push(SpmHeap *h, SpmCand x)
{
	if (h->n == h->cap) {
		size_t nc = h->cap ? 2 * h->cap : 64;
		SpmCand *nv = realloc(h->v, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		h->v = nv;
		h->cap = nc;
	}
	size_t i = h->n++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!better(&x, &h->v[p]))
			break;
		h->v[i] = h->v[p];
		i = p;
	}
	h->v[i] = x;
	return 0;
}

static SpmCand pop(SpmHeap *h)
{
	SpmCand top = h->v[0], last = h->v[--h->n];
	size_t i = 0;
	for (;;) {
		size_t l = 2 * i + 1, m = i;
		const SpmCand *best = &last;
		if (l < h->n && better(&h->v[l], best))
			m = l, best = &h->v[l];
		if (l + 1 < h->n && better(&h->v[l + 1], best))
			m = l + 1;
		if (m == i)
			break;
		h->v[i] = h->v[m];
		i = m;
	}
	if (h->n)
		h->v[i] = last;
	return top;
}

static int try_pair(const Tokenizer *t, const char *s, const SpmSym *sym, SpmHeap *h,
		    int32_t l, int32_t r)
{
	if (l < 0 || r < 0)
		return 0;
	uint32_t size = sym[l].n + sym[r].n;
	int32_t id = tok_lookup(t, s + sym[l].start, size);
	if (id < 0)
		return 0;
	return push(h, (SpmCand){.score = t->tok[id].score, .left = l, .right = r, .size = size});
}

static int emit_symbol(const Tokenizer *t, const char *s, uint32_t n, IdVec *out)
{
	int32_t id = tok_lookup(t, s, n);
	if (id >= 0)
		return idvec_push(out, id);
	for (uint32_t i = 0; i < n; i++) {
		id = t->byte_tok[(uint8_t)s[i]];
		if (id < 0)
			id = t->unk;
		if (id >= 0) {
			int r = idvec_push(out, id);
			if (r)
				return r;
		}
	}
	return 0;
}

int spm_encode(const Tokenizer *t, const char *s, size_t len, IdVec *out)
{
	if (len == 0)
		return 0;
	int r = -ENOMEM;
	SpmHeap h = {0};
	SpmSym *sym = malloc(len * sizeof(*sym));
	if (!sym)
		return -ENOMEM;
	int32_t n = 0;
	for (size_t off = 0; off < len; n++) {
		size_t cl = tok_utf8_char((const unsigned char *)s + off, len - off);
		sym[n] = (SpmSym){.start = (uint32_t)off, .n = (uint32_t)cl, .prev = n - 1,
				  .next = off + cl < len ? n + 1 : -1};
		off += cl;
	}
	for (int32_t i = 0; i + 1 < n; i++)
		if ((r = try_pair(t, s, sym, &h, i, i + 1)))
			goto out;
	while (h.n) {
		SpmCand c = pop(&h);
		SpmSym *l = &sym[c.left], *rs = &sym[c.right];
		if (l->n == 0 || rs->n == 0 || l->n + rs->n != c.size || l->next != c.right)
			continue;
		l->n += rs->n;
		rs->n = 0;
		l->next = rs->next;
		if (rs->next >= 0)
			sym[rs->next].prev = c.left;
		if ((r = try_pair(t, s, sym, &h, l->prev, c.left)) ||
		    (r = try_pair(t, s, sym, &h, c.left, l->next)))
			goto out;
	}
	r = 0;
	for (int32_t i = 0; i >= 0 && !r; i = sym[i].next)
		r = emit_symbol(t, s + sym[i].start, sym[i].n, out);
out:
	free(h.v);
	free(sym);
	return r;
}
