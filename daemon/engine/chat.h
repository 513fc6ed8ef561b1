/* daemon/engine/chat.h: chat templates.  The GGUF's tokenizer.chat_template (Jinja text)
 * is not executed; it is recognized as one of the families we implement natively
 * (ChatML as used by SmolLM2 and Qwen, Llama 2 [INST], Llama 3 header ids), and the
 * conversation is rendered in C.  Unknown templates fall back to ChatML with a warning
 * left to the caller (chat_detect returns CHAT_CHATML_FALLBACK). */
#ifndef QD_ENGINE_CHAT_H
#define QD_ENGINE_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "gguf.h"

enum chat_family {
	CHAT_CHATML = 1,
	CHAT_LLAMA2,
	CHAT_LLAMA3,
	CHAT_CHATML_FALLBACK, /* no or unknown template: ChatML assumed */
};

typedef struct {
	const char *role;    /* "system", "user", "assistant" */
	const char *content;
} ChatMsg;

/* Family for the template stored in G (or the one named by TEMPLATE text when G is NULL). */
int chat_detect(const GgufFile *g, const char *template_text);

/* The default system prompt that the template of G (or TEMPLATE text when G is NULL)
 * injects when a conversation has none (SmolLM2's does).  Returns 0 with *ret a malloc'd
 * string, or *ret = NULL when the template has none; -ENOMEM. */
int chat_default_system(const GgufFile *g, const char *template_text, char **ret);

/* Renders MSGS with FAMILY; add_assistant appends the header that starts the reply.
 * BOS is not included (the tokenizer adds it per add_bos).  G supplies template-specific
 * text such as SmolLM2's default system prompt; with G NULL no default system message is
 * injected, which is what llama.cpp's built-in templates do.  Returns 0 and a malloc'd
 * string in *ret, or -errno. */
int chat_render(int family, const GgufFile *g, const ChatMsg *msgs, size_t n,
		bool add_assistant, char **ret);

const char *chat_family_name(int family);

#endif
