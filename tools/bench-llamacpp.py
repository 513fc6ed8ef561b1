#!/usr/bin/env python3
"""Side-by-side reference: llama.cpp's CPU speed on the same model and machine.

Runs llama.cpp through the llama-cpp-python package (built from source outside this
repository; never in CI) with the same shape of work as `quantd bench`: a prompt of
N random token ids in one batch, then G single-token decode steps; best of R runs, timed
by the wall clock around each call (the package's perf counters are off by default; the
Python call overhead is a few microseconds per token).

usage: python3 tools/bench-llamacpp.py MODEL [--prompt 256] [--gen 64] [--threads 2] [--reps 3]
"""
import argparse
import random
import time

import llama_cpp
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    llm = Llama(model_path=a.model, n_ctx=a.prompt + a.gen + 32, n_batch=a.prompt, n_threads=a.threads,
                n_threads_batch=a.threads, flash_attn=False, verbose=False)
    rnd = random.Random(12345)
    n_vocab = llm.n_vocab()
    toks = [rnd.randrange(n_vocab) for _ in range(a.prompt)]
    best_pp = best_tg = 0.0
    for _ in range(a.reps):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks)
        t1 = time.perf_counter()
        for i in range(a.gen):
            llm.eval([toks[i]])
        t2 = time.perf_counter()
        pp, tg = a.prompt / (t1 - t0), a.gen / (t2 - t1)
        best_pp, best_tg = max(best_pp, pp), max(best_tg, tg)
    print(f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), {a.threads} threads: "
          f"prompt {a.prompt} tokens {best_pp:.1f} tok/s, decode {best_tg:.1f} tok/s")


if __name__ == "__main__":
    main()
