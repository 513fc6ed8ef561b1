#!/usr/bin/env python3
"""Expected chat renderings for tests/test-chat.c, produced by jinja2 from the real templates.

Templates: SmolLM2's (read from the model's tokenizer.chat_template), a plain ChatML template
without a default system prompt, Meta's Llama 2 chat template and Meta's Llama 3 instruct
template.  Each conversation below is rendered with and without the generation prompt in the
same sandboxed Jinja environment transformers uses for apply_chat_template (trim_blocks,
lstrip_blocks, raise_exception).

quantd renders without BOS (the tokenizer adds it), so the templates get bos_token = "" for
the first BOS only: Llama 2 repeats "<s>" before every later [INST], and that text is kept.

Output format, byte-counted so that any content survives:
    template <family> <nbytes>\\n<bytes>\\n
    case <family> <name> <add_assistant 0|1> <n_messages>\\n
    msg <role> <nbytes>\\n<bytes>\\n              (n_messages times)
    expect <nbytes>\\n<bytes>\\n                  or: error\\n  (the template raised)

Usage (needs: pip install jinja2 gguf):
    python3 tools/chat-ref.py models/SmolLM2-135M-Instruct.Q4_1.gguf tests/data/chat-expected.txt
"""
import sys

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

PLAIN_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|im_start|>assistant\\n' }}{% endif %}")

# meta-llama/Llama-2-7b-chat-hf tokenizer_config.json (JSON-decoded)
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}"
          "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
          "{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
          "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
          "{% endif %}{% endfor %}")

# meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json (JSON-decoded)
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
          "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
          "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")

SYS = "You are a terse assistant. Answer in one line."
CONVS = [
    ("empty", []),
    ("user", [("user", "Hello!")]),
    ("system-user", [("system", SYS), ("user", "What is 2+2?")]),
    ("multi", [("system", SYS), ("user", "Name a prime."), ("assistant", "7"),
               ("user", "Another one, please.")]),
    ("multi-nosys", [("user", "Hi"), ("assistant", "Hello! How can I help?"),
                     ("user", "Tell me a joke about tokenizers.")]),
    ("whitespace", [("system", "  spaced system \n"), ("user", "\n\t  Hi there  \n\n"),
                    ("assistant", " Sure.\n\n"), ("user", "\u3000wide\u00a0spaces\u2003")]),
    ("unicode", [("user", "Ünïcödé ✓ 日本語 👨‍👩‍👧 <b>tags</b> {{ not jinja }} {% raw %}")]),
    ("system-only", [("system", SYS)]),
    ("not-alternating", [("user", "one"), ("user", "two")]),
]


def render(env, template, bos, eos, msgs, add_assistant):
    t = env.from_string(template)
    return t.render(messages=[{"role": r, "content": c} for r, c in msgs],
                    add_generation_prompt=add_assistant, bos_token=bos, eos_token=eos)


class RaisedByTemplate(TemplateError):
    pass


def raise_exception(msg):
    raise RaisedByTemplate(msg)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    from gguf import GGUFReader
    r = GGUFReader(sys.argv[1])
    f = r.fields["tokenizer.chat_template"]
    smollm2 = bytes(f.parts[f.data[0]]).decode("utf-8")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    families = [("chatml", smollm2, "<|im_start|>", "<|im_end|>"),
                ("chatml-plain", PLAIN_CHATML, "<s>", "</s>"),
                ("llama2", LLAMA2, "<s>", "</s>"),
                ("llama3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>")]
    out = bytearray()

    def blob(head, s):
        b = s.encode("utf-8")
        out.extend(f"{head} {len(b)}\n".encode() + b + b"\n")

    ncase = 0
    for fam, tmpl, bos, eos in families:
        blob(f"template {fam}", tmpl)
        for name, msgs in CONVS:
            for add in (0, 1):
                try:
                    text = render(env, tmpl, bos, eos, msgs, bool(add))
                    # the first BOS is the tokenizer's job, not the renderer's
                    if fam in ("llama2", "llama3") and text.startswith(bos):
                        text = text[len(bos):]
                except RaisedByTemplate:
                    text = None
                except TemplateError:
                    # e.g. Llama 2 reading messages[0] of an empty list: a template
                    # accident, not a rule worth copying
                    continue
                out.extend(f"case {fam} {name} {add} {len(msgs)}\n".encode())
                for role, content in msgs:
                    blob(f"msg {role}", content)
                if text is None:
                    out.extend(b"error\n")
                else:
                    blob("expect", text)
                ncase += 1
    with open(sys.argv[2], "wb") as fo:
        fo.write(out)
    print(f"{ncase} cases, {len(out)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
