#!/usr/bin/env python3
"""Writes tests/data/quant-vectors.hex: reference vectors from the `gguf` Python package
(gguf-py, llama.cpp's own reader/writer) that tests/test-quant.c checks our kernels against.
gguf-py is an implementation independent of ours (numpy), so agreement with it checks our
block layouts and rounding from the outside.

    pip install gguf numpy
    python3 tools/quant-vectors.py [OUT]        (default OUT: tests/data/quant-vectors.hex)

The output is deterministic (fixed seed) and small (~16 KB); commit it.

The file is the bytes below as lowercase hex, 64 digits a line (text: no binary blob in
git).  Format of those bytes, all integers little-endian:

    header   char magic[8] = "QDQVEC1\\0"
             u32  n_records
    record   char kind[4]   "QUAN": gguf-py quantized the input
                            "DEQU": gguf-py dequantized the blocks
             u32  type      GGML / GGUF type id (F32 0, F16 1, Q4_0 2, Q4_1 3, Q8_0 8,
                            Q4_K 12, Q6_K 14, BF16 30)
             u32  n         number of elements
             u32  nbytes    bytes of the quantized form (n / block size * block bytes)
             QUAN: f32 input[n], then u8 quantized[nbytes]
             DEQU: u8 blocks[nbytes], then f32 dequantized[n]

QUAN records exist for the types gguf-py can quantize (F16, BF16, Q8_0, Q4_0, Q4_1); their
input is one 320-value row made of ten 32-value blocks with different shapes (normal,
all zero, negative only, one large outlier, exact .5 ties after Q8 scaling, values near
the f16 limit, tiny values that underflow f16, uniform, exact rounding points of Q4_0 and
of Q4_1).  DEQU records cover every type our
kernels compute; their blocks are random bytes with the f16 scale fields set to finite
values (random f16 bit patterns would include NaNs, whose payloads no one agrees on).
"""

import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

SEED = 20240611
MAGIC = b"QDQVEC1\0"


def quant_input(rng):
    """One row of 320 f32 values, ten blocks of 32 with different shapes."""
    b = []
    b.append(rng.normal(0.0, 1.0, 32))                         # ordinary
    b.append(np.zeros(32))                                     # all zero
    b.append(-np.abs(rng.normal(0.0, 2.0, 32)) - 0.01)         # negative only
    o = rng.normal(0.0, 0.02, 32)
    o[11] = 37.0                                               # one large outlier
    b.append(o)
    # amax 127 gives Q8 scale 1, so these land exactly on .5: roundf and
    # round-half-even disagree on every one of them
    t = np.array([127.0] + [(k % 20) + 0.5 for k in range(31)])
    t[1::2] *= -1
    b.append(t)
    b.append(rng.uniform(-65504.0, 65504.0, 32))               # f16 range limit
    b.append(rng.normal(0.0, 1e-7, 32))                        # scales underflow f16
    b.append(rng.uniform(-3.0, 3.0, 32))
    # Q4_0: max -8 gives d = 1, so x*id + 8.5 is an exact integer where truncation
    # decides; Q4_1: min 0, max 15 gives d = 1 and (x - min)*id + 0.5 exact integers
    b.append(np.array([-8.0] + [(k % 15) - 7.5 for k in range(31)]))
    b.append(np.array([0.0, 15.0] + [(k % 15) + 0.5 for k in range(30)]))
    return np.concatenate(b).astype(np.float32)


def f16_bits(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(-1, 2)


def random_blocks(rng, qtype, n_blocks):
    """Random block bytes for qtype with finite f16 scale fields."""
    block_size, type_size = quants.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    if qtype in (T.Q8_0, T.Q4_0):
        raw[:, 0:2] = f16_bits(rng.normal(0, 0.05, n_blocks))
    elif qtype == T.Q4_1:
        raw[:, 0:2] = f16_bits(rng.normal(0, 0.05, n_blocks))
        raw[:, 2:4] = f16_bits(rng.normal(0, 0.5, n_blocks))
    elif qtype == T.Q4_K:
        raw[:, 0:2] = f16_bits(np.abs(rng.normal(0, 0.01, n_blocks)))
        raw[:, 2:4] = f16_bits(np.abs(rng.normal(0, 0.01, n_blocks)))
    elif qtype == T.Q6_K:
        raw[:, type_size - 2:] = f16_bits(rng.normal(0, 0.002, n_blocks))
    return raw.reshape(-1)


def random_plain(rng, qtype, n):
    if qtype == T.F32:
        return rng.normal(0, 10.0, n).astype(np.float32).view(np.uint8)
    bits = rng.integers(0, 65536, size=n, dtype=np.uint32).astype(np.uint16)
    # F16 exponent all ones with a mantissa is NaN, as is BF16's; replace those
    if qtype == T.F16:
        nan = (bits & 0x7C00) == 0x7C00
        bits[nan] &= 0xBFFF
    else:
        nan = ((bits & 0x7F80) == 0x7F80) & ((bits & 0x7F) != 0)
        bits[nan] &= 0xBFFF
    return bits.view(np.uint8)


def dequantize(raw, qtype, n):
    if qtype == T.F32:
        return raw.view(np.float32).copy()
    if qtype == T.F16:
        return raw.view(np.float16).astype(np.float32)
    return quants.dequantize(raw.reshape(1, -1), qtype).reshape(-1).astype(np.float32)


def quantize(x, qtype):
    if qtype == T.F16:
        return x.astype(np.float16).view(np.uint8).reshape(-1)
    return np.asarray(quants.quantize(x.reshape(1, -1), qtype)).reshape(-1)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/quant-vectors.hex"
    rng = np.random.default_rng(SEED)
    records = []

    x = quant_input(rng)
    for qtype in (T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1):
        q = quantize(x, qtype)
        records.append((b"QUAN", qtype, x.size, q.astype(np.uint8).tobytes(), x.tobytes(), True))

    dequ = [(T.F32, 32), (T.F16, 128), (T.BF16, 128), (T.Q8_0, 128), (T.Q4_0, 128),
            (T.Q4_1, 128), (T.Q4_K, 256), (T.Q6_K, 256)]
    for qtype, n in dequ:
        if qtype in (T.F32, T.F16, T.BF16):
            raw = random_plain(rng, qtype, n)
        else:
            raw = random_blocks(rng, qtype, n // quants.GGML_QUANT_SIZES[qtype][0])
        y = dequantize(raw, qtype, n)
        assert y.size == n and np.all(np.isfinite(y) | (qtype in (T.F16, T.BF16)))
        records.append((b"DEQU", qtype, n, raw.tobytes(), y.astype(np.float32).tobytes(), False))

    blob = bytearray(MAGIC)
    blob += struct.pack("<I", len(records))
    for kind, qtype, n, qbytes, fbytes, quan in records:
        blob += kind
        blob += struct.pack("<III", int(qtype), n, len(qbytes))
        blob += fbytes + qbytes if quan else qbytes + fbytes
    digits = blob.hex()
    with open(out, "w") as f:
        for i in range(0, len(digits), 64):
            f.write(digits[i:i + 64] + "\n")
    print(f"{out}: {len(records)} records")


if __name__ == "__main__":
    main()
