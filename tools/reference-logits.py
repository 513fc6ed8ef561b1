#!/usr/bin/env python3
"""Greedy reference tokens and logits for the default model from an independent engine.

Runs llama.cpp (through the llama-cpp-python package, built from source outside this
repository and outside CI) on SmolLM2-135M-Instruct Q4_1 for a few prompts, decodes
greedily N_GEN tokens each and writes tests/data/reference-smollm2.txt:

    # comments
    prompt <index> <n_prompt_tokens> <id> <id> ...
    step <index> <step> <chosen_id> <max_logit> <top-K pairs id:logit ...>

The prompt token ids come from llama.cpp's own tokenizer; the C test feeds the same ids
to our engine, compares the chosen tokens and the logits of the top-K ids.

usage: python3 tools/reference-logits.py [MODEL] [OUT]
"""
import sys

import numpy as np
from llama_cpp import Llama, __version__ as LLAMA_CPP_PY_VERSION

MODEL = sys.argv[1] if len(sys.argv) > 1 else "models/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = sys.argv[2] if len(sys.argv) > 2 else "tests/data/reference-smollm2.txt"
N_GEN = 40
TOP_K = 16


def chatml(user, system=None):
    s = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return s + "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n"


SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


PROMPTS = [
    chatml("What is the capital of France?"),
    chatml("What is the capital of France?", SMOL_SYSTEM),
    chatml("Write a haiku about the sea."),
    chatml("Explain in two sentences why the sky is blue."),
    "The history of the Roman Empire begins",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the mountains, there lived",
    chatml("List three primary colors."),
    chatml("How many legs does a spider have?"),
    chatml("Translate 'good morning' into Spanish."),
    chatml("What is 12 times 12?"),
    "The mitochondria is the powerhouse of the cell. It produces",
    "Water boils at 100 degrees Celsius at sea level because",
    "import numpy as np\n\n# Create a 3x3 identity matrix\n",
    "The three laws of motion formulated by Isaac Newton are",
    "In 1969, Neil Armstrong became the first person to",
    chatml("Give me a short tip for staying focused while studying."),
    chatml("What does a compiler do?"),
    chatml("Name a planet in our solar system."),
    "Photosynthesis is the process by which green plants",
    "The quick brown fox jumps over the lazy dog. This sentence is famous because",
    "A healthy breakfast usually includes",
    "Dear hiring manager,\n\nI am writing to apply for",
    "The French Revolution began in 1789 when",
]


def main():
    llm = Llama(model_path=MODEL, n_ctx=512, n_batch=512, n_threads=2, logits_all=True,
                flash_attn=False, verbose=False, seed=0)
    lines = [
        "# reference greedy decode of SmolLM2-135M-Instruct Q4_1",
        f"# engine: llama.cpp via llama-cpp-python {LLAMA_CPP_PY_VERSION}, CPU, n_threads=2, flash_attn off,",
        "# f16 KV cache; produced by tools/reference-logits.py",
    ]
    for pi, prompt in enumerate(PROMPTS):
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        lines.append(f"prompt {pi} {len(ids)} " + " ".join(map(str, ids)))
        llm.eval(ids)
        for step in range(N_GEN):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            tok = int(np.argmax(logits))
            top = np.argsort(-logits)[:TOP_K]
            pairs = " ".join(f"{int(i)}:{logits[i]:.6f}" for i in top)
            lines.append(f"step {pi} {step} {tok} {logits[tok]:.6f} {pairs}")
            llm.eval([tok])
        text = llm.detokenize([int(l.split()[3]) for l in lines if l.startswith(f"step {pi} ")])
        print(f"prompt {pi}: {text.decode('utf-8', 'replace')!r}", file=sys.stderr)
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
