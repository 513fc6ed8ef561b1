#!/usr/bin/env python3
"""Reference token ids for tests/test-tokenizer.c, from two independent tokenizers.

For each line of the text file (split on "\\n" only, so a "\\r" stays in its line) and for
the whole file as one text, the ids are computed by

  * llama.cpp through llama-cpp-python (the ids quantd must equal), run in the Python
    given by --llama-python (it needs `llama_cpp`; skipped when absent), and
  * Hugging Face `tokenizers`, with a BPE model built from the GGUF's tokens and merges and
    the pre-tokenizer that tokenizer.ggml.pre stands for (the same pipeline as the model's
    tokenizer.json; transformers' own GGUF loader needs torch, which we do not install).

Disagreements between the two are printed.  The llama.cpp ids are written when available,
else the Hugging Face ones.  Both with parse_special off (plain text) and on.

--pre NAME re-labels the vocabulary with another tokenizer.ggml.pre (llama-bpe, qwen2,
gpt-2, default, ...) to exercise that pre-tokenizer on the same tokens and merges; llama.cpp
then reads a temporary vocabulary-only copy of the GGUF.  --plain-only leaves out the
parse_special records (P, FP).

A real vocabulary is a weak test of the pre-tokenizers: its merges were learned within the
pieces of one pre-tokenizer, so others that cut elsewhere mostly end up with the same ids.
--make-vocab OUT.gguf therefore trains a small byte-level BPE (HF tokenizers) on the text
with no pre-tokenizer at all -- its merges cross spaces, digits, punctuation and newlines --
and writes it as a tensor-less GGUF with three control tokens and one user-defined token
("<im_start>", which the text contains); the ids files for each pre-tokenizer are then made from it with --pre.

Output format (one record a line, '#' starts a comment):
    L<n> <ids...>   line n (1-based), special tokens not parsed
    P<n> <ids...>   line n, special tokens parsed
    F <ids...>      the whole file, not parsed
    FP <ids...>     the whole file, parsed

Usage (needs: pip install gguf tokenizers):
    python3 tools/tokenizer-ref.py models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        tests/data/multilingual.txt tests/data/tokenizer-smollm2.ids \\
        --llama-python /path/to/python-with-llama_cpp
    python3 tools/tokenizer-ref.py --make-vocab build/tests/data/bpe-tiny.gguf tests/data/multilingual.txt
    build/tests/gen-gguf dump build/tests/data/bpe-tiny.gguf > tests/data/bpe-tiny.gguf.txt
    for p in smollm llama-bpe qwen2 gpt-2 default; do python3 tools/tokenizer-ref.py \\
        build/tests/data/bpe-tiny.gguf tests/data/multilingual.txt tests/data/tokenizer-bpe-$p.ids \\
        --pre $p --plain-only --llama-python /path/to/python-with-llama_cpp; done
(git keeps the vocabulary as text, tests/data/bpe-tiny.gguf.txt; make builds the GGUF from
it with tests/gen-gguf.c.)
"""
import argparse
import json
import os
import subprocess
import sys

# GPT-2 style pieces used by the pre-tokenizers below (as in the models' tokenizer.json).
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA_CHILD = r"""
import json, sys
from llama_cpp import Llama
model, texts = sys.argv[1], json.load(open(sys.argv[2], encoding="utf-8"))
m = Llama(model_path=model, vocab_only=True, verbose=False)
out = []
for t in texts:
    b = t.encode("utf-8")
    out.append([m.tokenize(b, add_bos=False, special=False) if b else [],
                m.tokenize(b, add_bos=False, special=True) if b else []])
json.dump(out, sys.stdout)
"""


def gguf_vocab(path):
    from gguf import GGUFReader
    r = GGUFReader(path)

    def scalar(key, default=None):
        f = r.fields.get(key)
        if f is None:
            return default
        v = f.parts[f.data[0]]
        return bytes(v).decode("utf-8") if f.types[0].name == "STRING" else v[0]

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    bos = scalar("tokenizer.ggml.bos_token_id")
    eos = scalar("tokenizer.ggml.eos_token_id")
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    merges = strings("tokenizer.ggml.merges")
    return dict(model=scalar("tokenizer.ggml.model"), pre=scalar("tokenizer.ggml.pre", "default"),
                tokens=tokens, types=types, merges=merges, bos=int(bos), eos=int(eos))


def write_vocab_gguf(v, path):
    """A vocabulary-only GGUF llama.cpp can load (it wants some hyperparameters)."""
    import gguf
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(v["model"])
    w.add_tokenizer_pre(v["pre"])
    w.add_token_list(v["tokens"])
    w.add_token_types(v["types"])
    w.add_token_merges(v["merges"])
    w.add_bos_token_id(v["bos"])
    w.add_eos_token_id(v["eos"])
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_vocab(out, text_path, vocab_size=1200):
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import BPE
    text = open(text_path, "rb").read().decode("utf-8")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # the file and its lines, so that pairs across line ends count too
    tok.train_from_iterator([text] + text.split("\n"), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in specials else 1 for t in tokens]
    user = "<im_start>"
    if user in tokens:
        types[tokens.index(user)] = 4
    else:
        tokens.append(user)
        types.append(4)
    write_vocab_gguf(dict(model="gpt2", pre="gpt-2", tokens=tokens, types=types, merges=merges,
                          bos=specials.index("<|endoftext|>"), eos=specials.index("<|im_end|>")),
                     out)
    print(f"{len(tokens)} tokens, {len(merges)} merges", file=sys.stderr)


def hf_tokenizers(v):
    """Two HF tokenizers for a gpt2-kind vocabulary: without and with special tokens."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers, decoders
    from tokenizers.models import BPE
    from tokenizers import AddedToken

    vocab = {t: i for i, t in enumerate(v["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in v["merges"]]
    pre = v["pre"]
    ignore_merges = pre in ("llama3", "llama-bpe", "llama-v3")
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bl_noregex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        pt = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl])
    elif pre in ("gpt-2", "gpt2"):
        pt = bl
    elif pre == "default":
        return None
    elif pre in ("llama3", "llama-bpe", "llama-v3"):
        pt = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_RE), "isolated"), bl_noregex])
    elif pre == "qwen2":
        pt = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_RE), "isolated"), bl_noregex])
    else:
        raise SystemExit(f"no HF pipeline for pre-tokenizer {pre!r}")

    out = []
    for with_special in (False, True):
        tok = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False,
                            ignore_merges=ignore_merges))
        tok.pre_tokenizer = pt
        tok.decoder = decoders.ByteLevel()
        added = []
        for i, (t, ty) in enumerate(zip(v["tokens"], v["types"])):
            # user-defined tokens are split out even when special parsing is off (llama.cpp
            # and HF agree on that); control tokens only when it is on
            if ty == 4 or (ty == 3 and with_special):
                added.append(AddedToken(t, special=(ty == 3), normalized=False))
        if added:
            tok.add_special_tokens(added)
        out.append(tok)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("--llama-python", help="python with llama_cpp installed")
    ap.add_argument("--pre", help="use this tokenizer.ggml.pre instead of the file's")
    ap.add_argument("--plain-only", action="store_true", help="no parse_special records")
    ap.add_argument("--make-vocab", action="store_true",
                    help="train a tiny vocabulary on TEXT into MODEL (OUT unused)")
    if "--make-vocab" in sys.argv:
        sys.argv.remove("--make-vocab")
        if len(sys.argv) != 3:
            raise SystemExit("usage: tokenizer-ref.py --make-vocab OUT.gguf TEXT")
        make_vocab(sys.argv[1], sys.argv[2])
        return
    a = ap.parse_args()

    raw = open(a.text, "rb").read().decode("utf-8")
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    texts = lines + [raw]

    v = gguf_vocab(a.model)
    if v["model"] != "gpt2":
        raise SystemExit("this script is for gpt2-kind vocabularies (see tools/spm-ref.py)")
    if a.pre:
        v["pre"] = a.pre
    pair = hf_tokenizers(v)
    hf = None
    if pair:  # no HF pipeline for llama.cpp's "default" list
        plain, special = pair
        hf = [[plain.encode(t).ids, special.encode(t).ids] for t in texts]

    llama = None
    if a.llama_python:
        tmp = a.out + ".texts.json"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(texts, f)
        model = a.model
        if a.pre:
            model = a.out + ".vocab.gguf"
            write_vocab_gguf(v, model)
        try:
            r = subprocess.run([a.llama_python, "-c", LLAMA_CHILD, model, tmp],
                               capture_output=True, text=True, check=True)
            llama = json.loads(r.stdout)
        finally:
            os.unlink(tmp)
            if model != a.model:
                os.unlink(model)

    ndiff = 0
    if llama and hf:
        for i, (h, l) in enumerate(zip(hf, llama)):
            for mode in (0, 1):
                if h[mode] != l[mode]:
                    ndiff += 1
                    what = f"line {i + 1}" if i < len(lines) else "whole file"
                    print(f"DISAGREE {what} special={bool(mode)}:\n  hf    {h[mode]}\n"
                          f"  llama {l[mode]}", file=sys.stderr)
        print(f"llama.cpp vs HF tokenizers: {ndiff} disagreement(s) in {2 * len(texts)} encodings",
              file=sys.stderr)
    if not llama and not hf:
        raise SystemExit("no reference: pass --llama-python for this pre-tokenizer")
    ref = llama if llama else hf
    src = "llama.cpp (llama-cpp-python)" if llama else "HF tokenizers"
    other = "n/a" if not (llama and hf) else ndiff

    with open(a.out, "w") as f:
        f.write(f"# generated by tools/tokenizer-ref.py from {os.path.basename(a.text)} and "
                f"{os.path.basename(a.model)}\n")
        f.write(f"# ids from {src}; pre-tokenizer {v['pre']}; "
                f"{other} disagreement(s) with the other reference\n")
        for i in range(len(lines)):
            f.write(f"L{i + 1} " + " ".join(map(str, ref[i][0])) + "\n")
            if not a.plain_only:
                f.write(f"P{i + 1} " + " ".join(map(str, ref[i][1])) + "\n")
        f.write("F " + " ".join(map(str, ref[-1][0])) + "\n")
        if not a.plain_only:
            f.write("FP " + " ".join(map(str, ref[-1][1])) + "\n")


if __name__ == "__main__":
    main()
