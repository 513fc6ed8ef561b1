/* daemon/engine/pretok.c: the regex pre-tokenizers of byte-level BPE vocabularies.
 *
 * tokenizer.ggml.pre names a list of regexes (the same lists llama.cpp applies).  Each
 * regex splits every piece the previous one produced: matches and the unmatched text
 * between them both become pieces, and a regex only ever sees one piece (so a lookahead
 * stops at the piece's end).  The pieces of the last regex are the words BPE merges
 * within.
 *
 * PCRE2 runs with UTF + UCP so \p{L}/\p{N} are Unicode categories.  \s is spelled out as
 * the Unicode White_Space set, which is what llama.cpp and Hugging Face use (PCRE2's own
 * \s differs at U+180E).  PCRE2_MATCH_INVALID_UTF lets invalid UTF-8 through: such bytes
 * never match and so end up in pieces of their own, which keeps every byte of the input. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

#define PRETOK_MAX_RE 4

/* Members of a character class for Unicode White_Space. */
#define WS "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

/* GPT-2's pattern; its final "\s+(?!\S)" leaves a lone space before a word unmatched,
 * which then becomes a piece by itself (HF appends "|\s+" for the same effect). */
#define RE_GPT2 \
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])"

/* Llama 3 and Qwen 2 write the contractions case-insensitively; llama.cpp spells the case
 * out instead, which also keeps (?i) from folding e.g. U+017F into 's'. */
#define RE_CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3_TAIL \
	"| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+"
#define RE_LLAMA3 \
	RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}" RE_LLAMA3_TAIL
#define RE_QWEN2 \
	RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}" RE_LLAMA3_TAIL

typedef struct {
	const char *names; /* NUL-separated aliases, ended by an empty name */
	const char *re[PRETOK_MAX_RE];
	bool ignore_merges, add_bos;
} PreDef;

static const PreDef PRE_DEFS[] = {
	{"smollm\0starcoder\0refact\0codeshell\0command-r\0exaone\0",
	 {"\\p{N}", RE_GPT2}, false, false},
	{"gpt-2\0gpt2\0phi-2\0mpt\0olmo\0", {RE_GPT2}, false, false},
	{"llama3\0llama-v3\0llama-bpe\0falcon3\0pixtral\0", {RE_LLAMA3}, true, true},
	{"dbrx\0smaug-bpe\0", {RE_LLAMA3}, false, false},
	{"qwen2\0deepseek-r1-qwen\0stablelm2\0megrez\0", {RE_QWEN2}, false, false},
	{"default\0",
	 {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}, false, false},
};

struct PreTok {
	int n;
	pcre2_code *re[PRETOK_MAX_RE];
};

static const PreDef *find_def(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof(PRE_DEFS) / sizeof(PRE_DEFS[0]); i++)
		for (const char *a = PRE_DEFS[i].names; *a; a += strlen(a) + 1)
			if (strlen(a) == len && memcmp(a, name, len) == 0)
				return &PRE_DEFS[i];
	return NULL;
}

void pretok_free(PreTok *p)
{
	if (!p)
		return;
	for (int i = 0; i < p->n; i++)
		pcre2_code_free(p->re[i]);
	free(p);
}

int pretok_new(const char *name, size_t name_len, PreTok **ret, bool *ret_ignore_merges,
	       bool *ret_add_bos)
{
	/* llama.cpp treats a missing pre-tokenizer as "default" */
	const PreDef *d = name ? find_def(name, name_len) : find_def("default", 7);
	if (!d)
		return -EOPNOTSUPP;
	PreTok *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	for (int i = 0; i < PRETOK_MAX_RE && d->re[i]; i++) {
		int ecode;
		PCRE2_SIZE eoff;
		p->re[i] = pcre2_compile((PCRE2_SPTR)d->re[i], PCRE2_ZERO_TERMINATED,
					 PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ecode,
					 &eoff, NULL);
		if (!p->re[i]) {
			pretok_free(p);
			return -EINVAL; /* our own pattern is wrong: a programming error */
		}
		p->n = i + 1;
		/* without JIT the interpreter still works, only slower */
		(void)pcre2_jit_compile(p->re[i], PCRE2_JIT_COMPLETE);
	}
	*ret = p;
	*ret_ignore_merges = d->ignore_merges;
	*ret_add_bos = d->add_bos;
	return 0;
}

struct PreTokRun {
	const PreTok *p;
	pcre2_match_data *md[PRETOK_MAX_RE];
	pcre2_match_context *mctx;
	pcre2_jit_stack *stack;
	/* the current split */
	const char *base;
	pretok_fn fn;
	void *ctx;
};

void pretok_run_free(PreTokRun *r)
{
	if (!r)
		return;
	pcre2_jit_stack_free(r->stack);
	pcre2_match_context_free(r->mctx);
	for (int i = 0; i < PRETOK_MAX_RE; i++)
		pcre2_match_data_free(r->md[i]);
	free(r);
}

int pretok_run_new(const PreTok *p, PreTokRun **ret)
{
	PreTokRun *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->p = p;
	for (int i = 0; i < p->n; i++)
		if (!(r->md[i] = pcre2_match_data_create(1, NULL)))
			goto nomem;
	/* A long run of one class (e.g. a megabyte of spaces) backtracks deeply in
	 * "\s+(?!\S)"; give JIT room instead of falling back to the slow interpreter.  The
	 * stack is reserved address space, touched only as far as it is used. */
	r->mctx = pcre2_match_context_create(NULL);
	r->stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
	if (!r->mctx || !r->stack)
		goto nomem;
	pcre2_jit_stack_assign(r->mctx, NULL, r->stack);
	*ret = r;
	return 0;
nomem:
	pretok_run_free(r);
	return -ENOMEM;
}

/* Next match of regex LEVEL in BASE[off, off+len) at or after POS; false when none.
 * A match error (a resource limit on pathological input) ends matching for this piece:
 * the rest stays one piece, which loses no byte. */
static bool next_match(PreTokRun *sp, int level, size_t off, size_t len, size_t pos,
		       size_t *mb, size_t *me)
{
	const PCRE2_SPTR subj = (PCRE2_SPTR)(sp->base + off);
	int rc = pcre2_match(sp->p->re[level], subj, len, pos, PCRE2_NOTEMPTY, sp->md[level],
			     sp->mctx);
	if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
		rc = pcre2_match(sp->p->re[level], subj, len, pos, PCRE2_NOTEMPTY | PCRE2_NO_JIT,
				 sp->md[level], sp->mctx);
	if (rc < 0)
		return false;
	const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sp->md[level]);
	if (ov[0] > ov[1] || ov[1] > len || ov[0] < pos)
		return false;
	*mb = ov[0];
	*me = ov[1];
	return true;
}

static int split_level(PreTokRun *sp, int level, size_t off, size_t len)
{
	if (level == sp->p->n)
		return sp->fn(sp->ctx, sp->base + off, len);
	size_t pos = 0;
	size_t mb, me;
	while (pos < len && next_match(sp, level, off, len, pos, &mb, &me)) {
		int r;
		if (mb > pos && (r = split_level(sp, level + 1, off + pos, mb - pos)))
			return r;
		if ((r = split_level(sp, level + 1, off + mb, me - mb)))
			return r;
		pos = me;
	}
	if (pos < len)
		return split_level(sp, level + 1, off + pos, len - pos);
	return 0;
}

int pretok_split(PreTokRun *r, const char *s, size_t len, pretok_fn fn, void *ctx)
{
	if (len == 0)
		return 0;
	r->base = s;
	r->fn = fn;
	r->ctx = ctx;
	return split_level(r, 0, 0, len);
}
