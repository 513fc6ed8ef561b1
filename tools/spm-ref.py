#!/usr/bin/env python3
"""Tiny SentencePiece vocabulary and reference ids for the "llama" (SPM) tokenizer tests.

No real llama-vocab GGUF ships with the repository, so this trains a small SentencePiece
BPE model (byte fallback, ~1000 pieces) on tests/data/multilingual.txt plus the text below,
stores its vocabulary as a tensor-less GGUF (tokenizer.ggml.model = "llama") and writes
sentencepiece's own ids for each line of the text file and for the whole file.

Normalization is switched off (identity rule, no whitespace collapsing) because llama.cpp's
SPM tokenizer does not normalize; the dummy prefix stays on (add_space_prefix).  Characters
rarer than the coverage limit are left out of the vocabulary on purpose so that byte
fallback is exercised.

When --llama-python names a Python with llama_cpp, the GGUF is also loaded by llama.cpp
(vocab only) and its ids are compared with sentencepiece's; disagreements are printed.

Output format: as tools/tokenizer-ref.py (L<n> lines and F, special tokens not parsed).

Usage (needs: pip install sentencepiece gguf):
    python3 tools/spm-ref.py tests/data/multilingual.txt build/tests/data/spm-tiny.gguf \\
        tests/data/tokenizer-spm.ids [--llama-python PY]
    build/tests/gen-gguf dump build/tests/data/spm-tiny.gguf > tests/data/spm-tiny.gguf.txt
(git keeps the vocabulary as text; make builds the GGUF from it with tests/gen-gguf.c.)
"""
import argparse
import io
import json
import os
import subprocess
import sys

EXTRA = """\
Once upon a time there was a small tokenizer that lived in a quiet repository.
Every morning it read the same sentences and every evening it wrote them back.
The numbers were easy, the words were harder, and the emoji were the hardest of all.
It learned that the space before a word belongs to the word, and that a byte can stand
for anything when nothing else fits.  The daemon asked it for ids, and it answered fast.
Quantization makes weights smaller; tokenization makes text countable.
We test the encoder with prose, code, numbers and many languages at once.
Der schnelle braune Fuchs springt über den faulen Hund.
Le vif renard brun saute par-dessus le chien paresseux.
El veloz zorro marrón salta sobre el perro perezoso.
Быстрая коричневая лиса прыгает через ленивую собаку.
Η γρήγορη αλεπού τρέχει στο δάσος και το ποτάμι.
"""

LLAMA_CHILD = r"""
import json, sys
from llama_cpp import Llama
model, texts = sys.argv[1], json.load(open(sys.argv[2], encoding="utf-8"))
m = Llama(model_path=model, vocab_only=True, verbose=False)
json.dump([m.tokenize(t.encode("utf-8"), add_bos=False, special=False) if t else []
           for t in texts], sys.stdout)
"""


def train(corpus, vocab_size):
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, model_type="bpe",
        vocab_size=vocab_size, byte_fallback=True, character_coverage=0.995,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        max_sentence_length=1 << 16, minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def write_gguf(sp, path):
    import gguf
    n = sp.get_piece_size()
    tokens, scores, types = [], [], []
    for i in range(n):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        else:
            t = gguf.TokenType.NORMAL
        types.append(int(t))
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name("spm-tiny")
    # hyperparameters only so that llama.cpp agrees to load the vocabulary
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("text")
    ap.add_argument("gguf_out")
    ap.add_argument("ids_out")
    ap.add_argument("--vocab-size", type=int, default=1000)
    ap.add_argument("--llama-python")
    a = ap.parse_args()

    raw = open(a.text, "rb").read().decode("utf-8")
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    texts = lines + [raw]

    corpus = [l for l in lines if l.strip()] + EXTRA.splitlines()
    sp = train(corpus, a.vocab_size)
    write_gguf(sp, a.gguf_out)
    ref = [sp.encode(t) if t else [] for t in texts]

    ndiff = None
    if a.llama_python:
        tmp = a.ids_out + ".texts.json"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(texts, f)
        try:
            r = subprocess.run([a.llama_python, "-c", LLAMA_CHILD, a.gguf_out, tmp],
                               capture_output=True, text=True, check=True)
            llama = json.loads(r.stdout)
        finally:
            os.unlink(tmp)
        ndiff = 0
        for i, (s, l) in enumerate(zip(ref, llama)):
            if s != l:
                ndiff += 1
                what = f"line {i + 1}" if i < len(lines) else "whole file"
                print(f"DISAGREE {what}:\n  sentencepiece {s}\n  llama.cpp     {l}",
                      file=sys.stderr)
        print(f"sentencepiece vs llama.cpp: {ndiff} disagreement(s) in {len(texts)} encodings",
              file=sys.stderr)

    with open(a.ids_out, "w") as f:
        f.write(f"# generated by tools/spm-ref.py from {os.path.basename(a.text)}; "
                f"vocabulary {os.path.basename(a.gguf_out)} ({sp.get_piece_size()} pieces)\n")
        f.write("# ids from sentencepiece " +
                (f"({ndiff} disagreement(s) with llama.cpp)\n" if ndiff is not None else "\n"))
        for i in range(len(lines)):
            f.write(f"L{i + 1} " + " ".join(map(str, ref[i])) + "\n")
        f.write("F " + " ".join(map(str, ref[-1])) + "\n")


if __name__ == "__main__":
    main()
