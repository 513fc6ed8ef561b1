/* daemon/engine/chat.c: chat templates recognized by a marker and rendered in C.
 *
 * Each renderer produces exactly what its reference Jinja template renders (checked by
 * tests/test-chat.c against jinja2 output from tools/chat-ref.py), minus the leading BOS:
 *   ChatML  <|im_start|>ROLE\nCONTENT<|im_end|>\n ... [<|im_start|>assistant\n]; a default
 *           system turn first when the template has one and the chat does not start with
 *           a system message (SmolLM2, Qwen).
 *   Llama 3 <|start_header_id|>ROLE<|end_header_id|>\n\nTRIM(CONTENT)<|eot_id|> ...
 *   Llama 2 [INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST] ANSWER </s><s>[INST] ...
 *           (contents stripped, roles must alternate user/assistant, no generation prompt).
 * TRIM/strip remove what Python's str.strip() removes. */
#include "chat.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHAT_TEMPLATE_KEY "tokenizer.chat_template"

typedef struct {
	const char *p;
	size_t n;
} Str;

/* The template text from G, else TEXT; n == 0 when there is none. */
static Str template_of(const GgufFile *g, const char *text)
{
	Str s = {NULL, 0};
	if (g) {
		if (gguf_get_str(g, CHAT_TEMPLATE_KEY, &s.p, &s.n) < 0)
			s = (Str){NULL, 0};
	} else if (text) {
		s = (Str){text, strlen(text)};
	}
	return s;
}

static bool contains(Str s, const char *needle)
{
	return s.n && memmem(s.p, s.n, needle, strlen(needle)) != NULL;
}

int chat_detect(const GgufFile *g, const char *template_text)
{
	Str t = template_of(g, template_text);
	if (contains(t, "<|im_start|>"))
		return CHAT_CHATML;
	if (contains(t, "<|start_header_id|>"))
		return CHAT_LLAMA3;
	if (contains(t, "[INST]"))
		return CHAT_LLAMA2;
	return CHAT_CHATML_FALLBACK;
}

const char *chat_family_name(int family)
{
	switch (family) {
	case CHAT_CHATML: return "chatml";
	case CHAT_LLAMA2: return "llama2";
	case CHAT_LLAMA3: return "llama3";
	case CHAT_CHATML_FALLBACK: return "chatml (fallback)";
	default: return "unknown";
	}
}

/* ---- default system prompt ---- */

/* Undoes the escapes of a Jinja (Python-style) string literal; unknown escapes stay. */
static char *unescape(const char *s, size_t n)
{
	char *o = malloc(n + 1);
	if (!o)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '\\' || i + 1 == n) {
			o[k++] = s[i];
			continue;
		}
		char c = s[++i];
		switch (c) {
		case 'n': o[k++] = '\n'; break;
		case 't': o[k++] = '\t'; break;
		case 'r': o[k++] = '\r'; break;
		case '\\': case '\'': case '"': o[k++] = c; break;
		default: o[k++] = '\\'; o[k++] = c; break;
		}
	}
	o[k] = 0;
	return o;
}

/* Looks for a string literal of the form '<|im_start|>system\nTEXT<|im_end|>' (the newline
 * written as is or as \n).  An occurrence whose TEXT leaves the literal -- e.g.
 * "' + messages[0]['content'] + '" -- is the template inserting the user's own system
 * message and is skipped. */
int chat_default_system(const GgufFile *g, const char *template_text, char **ret)
{
	static const char head[] = "<|im_start|>system", tail[] = "<|im_end|>";
	Str t = template_of(g, template_text);
	const char *p = t.p, *end = t.p + t.n;
	while (t.n && (p = memmem(p, (size_t)(end - p), head, sizeof(head) - 1))) {
		const char *q = p + sizeof(head) - 1;
		p = q;
		/* the quote that opened the literal: nearest quote before the marker */
		const char *open = q - (sizeof(head) - 1);
		while (open > t.p && open[-1] != '\'' && open[-1] != '"')
			open--;
		if (open == t.p)
			continue;
		char quote = open[-1];
		if (q < end && *q == '\n')
			q++;
		else if (end - q >= 2 && q[0] == '\\' && q[1] == 'n')
			q += 2;
		else
			continue;
		const char *e = memmem(q, (size_t)(end - q), tail, sizeof(tail) - 1);
		if (!e || e == q)
			continue;
		bool inside = true;
		for (const char *c = q; c < e && inside; c++) {
			if (*c == '\\')
				c++; /* an escaped character, quote or not */
			else if (*c == quote)
				inside = false;
		}
		if (!inside)
			continue;
		char *s = unescape(q, (size_t)(e - q));
		if (!s)
			return -ENOMEM;
		*ret = s;
		return 0;
	}
	*ret = NULL;
	return 0;
}

/* ---- rendering ---- */

typedef struct {
	char *p;
	size_t n, cap;
	int err;
} Buf;

static void put(Buf *b, const char *s, size_t n)
{
	if (b->err)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t nc = b->cap ? b->cap : 256;
		while (nc < b->n + n + 1)
			nc *= 2;
		char *np = realloc(b->p, nc);
		if (!np) {
			b->err = -ENOMEM;
			return;
		}
		b->p = np;
		b->cap = nc;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}

static void puts_(Buf *b, const char *s)
{
	put(b, s, strlen(s));
}

/* Python's str.isspace() for one codepoint. */
static bool py_space(uint32_t c)
{
	return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
	       c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
	       c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Decodes the character at S[0..n) (n > 0); returns its length, *cp = -1 when invalid. */
static size_t decode_at(const unsigned char *s, size_t n, int32_t *cp)
{
	size_t len = s[0] < 0x80 ? 1 : (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3
		   : (s[0] & 0xf8) == 0xf0 ? 4 : 0;
	if (len == 0 || len > n) {
		*cp = -1;
		return 1;
	}
	uint32_t c = len == 1 ? s[0] : s[0] & (0x7f >> len);
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80) {
			*cp = -1;
			return 1;
		}
		c = c << 6 | (s[i] & 0x3f);
	}
	*cp = (int32_t)c;
	return len;
}

/* S without leading and trailing whitespace (Python str.strip()). */
static Str strip(const char *s)
{
	const unsigned char *b = (const unsigned char *)s, *e = b + strlen(s);
	int32_t cp;
	while (b < e) {
		size_t l = decode_at(b, (size_t)(e - b), &cp);
		if (cp < 0 || !py_space((uint32_t)cp))
			break;
		b += l;
	}
	while (e > b) {
		const unsigned char *c = e - 1;
		while (c > b && (*c & 0xc0) == 0x80 && e - c < 4)
			c--;
		size_t l = decode_at(c, (size_t)(e - c), &cp);
		if (cp < 0 || c + l != e || !py_space((uint32_t)cp))
			break;
		e = c;
	}
	return (Str){(const char *)b, (size_t)(e - b)};
}

/* Text of the token whose id is stored under KEY, else DEF. */
static Str token_text(const GgufFile *g, const char *key, const char *def)
{
	uint32_t id;
	Str s;
	if (g && gguf_get_u32(g, key, &id) == 0 &&
	    gguf_get_arr_str(g, "tokenizer.ggml.tokens", id, &s.p, &s.n) == 0)
		return s;
	return (Str){def, strlen(def)};
}

static void render_chatml(Buf *b, const GgufFile *g, const ChatMsg *m, size_t n, bool add)
{
	char *def = NULL;
	if (n && strcmp(m[0].role, "system") != 0 && g) {
		int r = chat_default_system(g, NULL, &def);
		if (r) {
			b->err = r;
			return;
		}
	}
	if (def) {
		puts_(b, "<|im_start|>system\n");
		puts_(b, def);
		puts_(b, "<|im_end|>\n");
		free(def);
	}
	for (size_t i = 0; i < n; i++) {
		puts_(b, "<|im_start|>");
		puts_(b, m[i].role);
		puts_(b, "\n");
		puts_(b, m[i].content);
		puts_(b, "<|im_end|>\n");
	}
	if (add)
		puts_(b, "<|im_start|>assistant\n");
}

static void render_llama3(Buf *b, const ChatMsg *m, size_t n, bool add)
{
	for (size_t i = 0; i < n; i++) {
		Str c = strip(m[i].content);
		puts_(b, "<|start_header_id|>");
		puts_(b, m[i].role);
		puts_(b, "<|end_header_id|>\n\n");
		put(b, c.p, c.n);
		puts_(b, "<|eot_id|>");
	}
	if (add)
		puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void render_llama2(Buf *b, const GgufFile *g, const ChatMsg *m, size_t n)
{
	Str bos = token_text(g, "tokenizer.ggml.bos_token_id", "<s>");
	Str eos = token_text(g, "tokenizer.ggml.eos_token_id", "</s>");
	const char *sys = NULL;
	if (n && strcmp(m[0].role, "system") == 0) {
		sys = m[0].content;
		m++;
		n--;
	}
	for (size_t i = 0; i < n; i++) {
		bool user = strcmp(m[i].role, "user") == 0;
		if (user != (i % 2 == 0)) {
			b->err = -EINVAL; /* the template raises: roles must alternate */
			return;
		}
		/* the system block joins the first message before stripping */
		Buf c = {0};
		if (i == 0 && sys) {
			puts_(&c, "<<SYS>>\n");
			puts_(&c, sys);
			puts_(&c, "\n<</SYS>>\n\n");
		}
		puts_(&c, m[i].content);
		if (c.err) {
			b->err = c.err;
			return;
		}
		Str s = strip(c.p ? c.p : "");
		if (user) {
			if (i > 0) /* the first BOS is the tokenizer's */
				put(b, bos.p, bos.n);
			puts_(b, "[INST] ");
			put(b, s.p, s.n);
			puts_(b, " [/INST]");
		} else if (strcmp(m[i].role, "assistant") == 0) {
			puts_(b, " ");
			put(b, s.p, s.n);
			puts_(b, " ");
			put(b, eos.p, eos.n);
		}
		free(c.p);
	}
}

int chat_render(int family, const GgufFile *g, const ChatMsg *msgs, size_t n,
		bool add_assistant, char **ret)
{
	if (!ret || (n && !msgs))
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!msgs[i].role || !msgs[i].content)
			return -EINVAL;
	Buf b = {0};
	switch (family) {
	case CHAT_CHATML:
	case CHAT_CHATML_FALLBACK:
		render_chatml(&b, g, msgs, n, add_assistant);
		break;
	case CHAT_LLAMA3:
		render_llama3(&b, msgs, n, add_assistant);
		break;
	case CHAT_LLAMA2:
		render_llama2(&b, g, msgs, n);
		break;
	default:
		return -EINVAL;
	}
	put(&b, "", 0); /* an empty conversation still gets a string */
	if (b.err) {
		free(b.p);
		return b.err;
	}
	*ret = b.p;
	return 0;
}
