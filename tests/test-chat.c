/* tests/test-chat.c: chat templates rendered in C against jinja2's renderings of the real
 * templates (tests/data/chat-expected.txt, written by tools/chat-ref.py). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/engine/chat.h"
#include "daemon/engine/gguf.h"
#include "testutil.h"

#define EXPECTED "tests/data/chat-expected.txt"
#define MAX_MSGS 16

typedef struct {
	char family[32], name[64];
	int add;
	size_t n;
	ChatMsg msg[MAX_MSGS];
	const char *expect; /* NULL: the template raises */
} Case;

typedef struct {
	char family[32];
	const char *text;
} Template;

typedef struct {
	char *data; /* the file, cut into NUL-terminated pieces in place */
	Template tmpl[8];
	size_t n_tmpl;
	Case *cases;
	size_t n_cases;
} Expected;

/* Reads "<head> <nbytes>\n<bytes>\n" at *p: returns the bytes (NUL-terminated in place). */
static char *blob(char **p, char *end, size_t *ret_len)
{
	char *nl = memchr(*p, '\n', (size_t)(end - *p));
	CU_ASSERT_PTR_NOT_NULL_FATAL(nl);
	char *sp = nl;
	while (sp > *p && sp[-1] != ' ')
		sp--;
	size_t len = strtoul(sp, NULL, 10);
	CU_ASSERT_FATAL(len <= (size_t)(end - nl - 1) && nl[1 + len] == '\n');
	char *s = nl + 1;
	s[len] = 0;
	*p = s + len + 1;
	if (ret_len)
		*ret_len = len;
	return s;
}

static void load_expected(Expected *x)
{
	size_t len;
	memset(x, 0, sizeof(*x));
	x->data = tu_read_file(EXPECTED, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(x->data);
	x->cases = calloc(256, sizeof(*x->cases));
	char *p = x->data, *end = x->data + len;
	while (p < end) {
		if (strncmp(p, "template ", 9) == 0) {
			CU_ASSERT_FATAL(x->n_tmpl < 8);
			Template *t = &x->tmpl[x->n_tmpl++];
			CU_ASSERT_FATAL(sscanf(p, "template %31s", t->family) == 1);
			t->text = blob(&p, end, NULL);
		} else if (strncmp(p, "case ", 5) == 0) {
			CU_ASSERT_FATAL(x->n_cases < 256);
			Case *c = &x->cases[x->n_cases++];
			CU_ASSERT_FATAL(sscanf(p, "case %31s %63s %d %zu", c->family, c->name, &c->add,
					       &c->n) == 4);
			CU_ASSERT_FATAL(c->n <= MAX_MSGS);
			p = strchr(p, '\n') + 1;
			for (size_t i = 0; i < c->n; i++) {
				CU_ASSERT_FATAL(strncmp(p, "msg ", 4) == 0);
				char *role = p + 4;
				*strchr(role, ' ') = 0; /* cut before the count; blob finds it after */
				char *after = role + strlen(role) + 1;
				c->msg[i].role = role;
				c->msg[i].content = blob(&after, end, NULL);
				p = after;
			}
			if (strncmp(p, "error\n", 6) == 0) {
				c->expect = NULL;
				p += 6;
			} else {
				CU_ASSERT_FATAL(strncmp(p, "expect ", 7) == 0);
				c->expect = blob(&p, end, NULL);
			}
		} else {
			CU_FAIL_FATAL("bad record in " EXPECTED);
		}
	}
}

static void free_expected(Expected *x)
{
	free(x->cases);
	free(x->data);
}

static int family_of(const char *name)
{
	if (strncmp(name, "chatml", 6) == 0)
		return CHAT_CHATML;
	if (strcmp(name, "llama2") == 0)
		return CHAT_LLAMA2;
	if (strcmp(name, "llama3") == 0)
		return CHAT_LLAMA3;
	return -1;
}

/* A tensor-less GGUF holding TEMPLATE and a three-token vocabulary. */
static GgufFile *template_gguf(const char *template_text, const char *tag)
{
	char path[128];
	snprintf(path, sizeof(path), "/tmp/qd-test-chat-%d-%s.gguf", (int)getpid(), tag);
	GgufWriter *w;
	CU_ASSERT_FATAL(gguf_writer_new(&w) == 0);
	const char *toks[] = {"<unk>", "<s>", "</s>"};
	size_t lens[] = {5, 3, 4};
	CU_ASSERT(gguf_writer_set_str(w, "tokenizer.chat_template", template_text,
				      strlen(template_text)) == 0);
	CU_ASSERT(gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, lens, 3) == 0);
	CU_ASSERT(gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1) == 0);
	CU_ASSERT(gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2) == 0);
	CU_ASSERT_FATAL(gguf_writer_begin(w, path) == 0);
	CU_ASSERT_FATAL(gguf_writer_finish(w) == 0);
	gguf_writer_free(w);
	GgufFile *g = NULL;
	char err[128];
	CU_ASSERT_FATAL(gguf_open(path, &g, err, sizeof(err)) == 0);
	unlink(path);
	return g;
}

/* Renders every case of FAMILY with G; returns the number checked. */
static int run_cases(const Expected *x, const char *family, const GgufFile *g)
{
	int checked = 0;
	int fam = chat_detect(g, NULL);
	CU_ASSERT_EQUAL(fam, family_of(family));
	for (size_t i = 0; i < x->n_cases; i++) {
		const Case *c = &x->cases[i];
		if (strcmp(c->family, family) != 0)
			continue;
		char *out = NULL;
		int r = chat_render(fam, g, c->msg, c->n, c->add, &out);
		if (!c->expect) {
			CU_ASSERT_EQUAL(r, -EINVAL);
			CU_ASSERT_PTR_NULL(out);
		} else {
			CU_ASSERT_EQUAL_FATAL(r, 0);
			bool same = strcmp(out, c->expect) == 0;
			if (!same)
				printf("\n    %s/%s add=%d:\n--- got\n%s\n--- want\n%s\n---\n", family,
				       c->name, c->add, out, c->expect);
			CU_ASSERT(same);
		}
		free(out);
		checked++;
	}
	return checked;
}

static void test_templates(void)
{
	Expected x;
	load_expected(&x);
	CU_ASSERT_EQUAL(x.n_tmpl, 4);
	int total = 0;
	for (size_t i = 0; i < x.n_tmpl; i++) {
		const Template *t = &x.tmpl[i];
		CU_ASSERT_EQUAL(chat_detect(NULL, t->text), family_of(t->family));
		GgufFile *g = template_gguf(t->text, t->family);
		int n = run_cases(&x, t->family, g);
		CU_ASSERT(n >= 16);
		total += n;
		gguf_close(g);
	}
	CU_ASSERT_EQUAL(total, (int)x.n_cases);
	free_expected(&x);
}

static const char *no_model(void)
{
	return access(tu_model_path(), R_OK) == 0 ? NULL : "SmolLM2 model missing (make model)";
}

static void test_smollm2_model(void)
{
	GgufFile *g = NULL;
	char err[128];
	CU_ASSERT_FATAL(gguf_open(tu_model_path(), &g, err, sizeof(err)) == 0);
	Expected x;
	load_expected(&x);
	/* the expectations were made from this model's own template */
	const char *tmpl;
	size_t len;
	CU_ASSERT_FATAL(gguf_get_str(g, "tokenizer.chat_template", &tmpl, &len) == 0);
	CU_ASSERT(strcmp(x.tmpl[0].family, "chatml") == 0 && strlen(x.tmpl[0].text) == len &&
		  memcmp(x.tmpl[0].text, tmpl, len) == 0);
	CU_ASSERT(run_cases(&x, "chatml", g) >= 16);
	free_expected(&x);
	gguf_close(g);
}

static void test_default_system(void)
{
	Expected x;
	load_expected(&x);
	for (size_t i = 0; i < x.n_tmpl; i++) {
		char *def = (char *)"unset";
		CU_ASSERT_EQUAL(chat_default_system(NULL, x.tmpl[i].text, &def), 0);
		if (strcmp(x.tmpl[i].family, "chatml") == 0) {
			/* SmolLM2's: present, and it is what jinja put in the single-user case */
			CU_ASSERT_PTR_NOT_NULL_FATAL(def);
			CU_ASSERT(strlen(def) > 10 && !strchr(def, '\'') && !strchr(def, '<'));
			bool seen = false;
			for (size_t k = 0; k < x.n_cases; k++)
				if (strcmp(x.cases[k].family, "chatml") == 0 &&
				    strcmp(x.cases[k].name, "user") == 0)
					seen = strstr(x.cases[k].expect, def) != NULL;
			CU_ASSERT(seen);
		} else {
			CU_ASSERT_PTR_NULL(def);
		}
		free(def);
	}
	free_expected(&x);

	/* Qwen-style: escaped newline, and a first occurrence that inserts the user's own
	 * system message (which is not a default) */
	const char *qwen =
		"{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
		"messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}"
		"{{- '<|im_start|>system\\nYou are Qwen, it\\'s \"fine\".<|im_end|>\\n' }}{%- endif %}";
	char *def = NULL;
	CU_ASSERT_EQUAL(chat_default_system(NULL, qwen, &def), 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(def);
	CU_ASSERT_STRING_EQUAL(def, "You are Qwen, it's \"fine\".");
	free(def);
	def = (char *)"unset";
	CU_ASSERT_EQUAL(chat_default_system(NULL, NULL, &def), 0);
	CU_ASSERT_PTR_NULL(def);

	/* the default goes in front only when the chat has no system message of its own */
	GgufFile *g = template_gguf(qwen, "qwen");
	ChatMsg m[2] = {{"user", "hi"}, {"system", "custom"}};
	char *out;
	CU_ASSERT_EQUAL_FATAL(chat_render(chat_detect(g, NULL), g, m, 1, false, &out), 0);
	CU_ASSERT_STRING_EQUAL(out, "<|im_start|>system\nYou are Qwen, it's \"fine\".<|im_end|>\n"
				    "<|im_start|>user\nhi<|im_end|>\n");
	free(out);
	CU_ASSERT_EQUAL_FATAL(chat_render(CHAT_CHATML, g, m + 1, 1, true, &out), 0);
	CU_ASSERT_STRING_EQUAL(out, "<|im_start|>system\ncustom<|im_end|>\n<|im_start|>assistant\n");
	free(out);
	gguf_close(g);
}

static void test_detect_and_args(void)
{
	CU_ASSERT_EQUAL(chat_detect(NULL, NULL), CHAT_CHATML_FALLBACK);
	CU_ASSERT_EQUAL(chat_detect(NULL, "{{ messages }}"), CHAT_CHATML_FALLBACK);
	CU_ASSERT_EQUAL(chat_detect(NULL, "x<|im_start|>y"), CHAT_CHATML);
	CU_ASSERT_EQUAL(chat_detect(NULL, "[INST]"), CHAT_LLAMA2);
	CU_ASSERT_EQUAL(chat_detect(NULL, "<|start_header_id|>"), CHAT_LLAMA3);
	for (int f = CHAT_CHATML; f <= CHAT_CHATML_FALLBACK; f++)
		CU_ASSERT(strlen(chat_family_name(f)) > 0);

	ChatMsg ok = {"user", "hi"}, bad = {NULL, "x"};
	char *out = NULL;
	CU_ASSERT_EQUAL(chat_render(CHAT_LLAMA3, NULL, &bad, 1, false, &out), -EINVAL);
	CU_ASSERT_EQUAL(chat_render(99, NULL, &ok, 1, false, &out), -EINVAL);
	CU_ASSERT_EQUAL(chat_render(CHAT_CHATML, NULL, NULL, 1, false, &out), -EINVAL);
	CU_ASSERT_PTR_NULL(out);
	/* fallback renders ChatML; no G means no default system prompt */
	CU_ASSERT_EQUAL_FATAL(chat_render(CHAT_CHATML_FALLBACK, NULL, &ok, 1, true, &out), 0);
	CU_ASSERT_STRING_EQUAL(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
	free(out);
	/* without G, Llama 2 falls back to <s> and </s> */
	ChatMsg turns[3] = {{"user", "a"}, {"assistant", "b"}, {"user", "c"}};
	CU_ASSERT_EQUAL_FATAL(chat_render(CHAT_LLAMA2, NULL, turns, 3, true, &out), 0);
	CU_ASSERT_STRING_EQUAL(out, "[INST] a [/INST] b </s><s>[INST] c [/INST]");
	free(out);
}

int main(void)
{
	static const TuTest tests[] = {
		{"templates", test_templates, NULL},
		{"smollm2_model", test_smollm2_model, no_model},
		{"default_system", test_default_system, NULL},
		{"detect_and_args", test_detect_and_args, NULL},
		{NULL, NULL, NULL},
	};
	return tu_main("chat", tests);
}
