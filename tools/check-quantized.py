#!/usr/bin/env python3
"""Checks a file written by `quantd quantize` with an independent decoder: the `gguf` Python
package (gguf-py, from llama.cpp).

For every tensor of OUT it compares against the same tensor of SRC:
  - names, shapes and the key/values of SRC (all kept, except general.file_type and
    general.quantization_version, which quantd sets);
  - the values: gguf-py's dequantizer on OUT against gguf-py's dequantizer on SRC, as a
    relative RMS error that must stay below a bound for the output type;
  - for Q8_0, Q4_0 and Q4_1 (which gguf-py can also quantize) the bytes: gguf-py's own
    round-to-nearest quantization of the dequantized source must equal ours exactly.

Usage: check-quantized.py SRC.gguf OUT.gguf [--max-rows N]
Exit status 0 when everything holds, 1 with a list of failures otherwise, 77 when the
gguf package is missing (so a test harness can report SKIP).
"""
import argparse
import sys

try:
    import numpy as np
    import gguf
    from gguf import quants
except ImportError as e:  # pragma: no cover
    print("check-quantized: SKIP: %s (pip install gguf)" % e, file=sys.stderr)
    sys.exit(77)

T = gguf.GGMLQuantizationType
# Relative RMS error bounds, generous enough for any sane weights, tight enough to catch a
# wrong layout (which gives errors near or above 1).
BOUND = {T.F32: 1e-7, T.F16: 1e-3, T.BF16: 1e-2, T.Q8_0: 0.02, T.Q6_K: 0.05,
         T.Q4_K: 0.2, T.Q4_0: 0.25, T.Q4_1: 0.2}
REQUANT = {T.Q8_0, T.Q4_0, T.Q4_1}
SET_BY_QUANTD = {"general.file_type", "general.quantization_version"}


def values(t, max_rows):
    """The tensor dequantized to float32, as [rows, cols] (at most max_rows rows)."""
    data = np.asarray(t.data)
    if data.ndim == 1:
        data = data.reshape(1, -1)
    data = data.reshape(-1, data.shape[-1])[:max_rows]
    if t.tensor_type in (T.F32, T.F16):
        return data.astype(np.float32)
    return quants.dequantize(data, t.tensor_type).astype(np.float32)


def kv_value(field):
    if not field.types:
        return None
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return [bytes(field.parts[i]) for i in field.data]
    return bytes(field.parts[field.data[0]]) if field.data else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--max-rows", type=int, default=1 << 30, help="rows checked per tensor")
    a = ap.parse_args()
    src, out = gguf.GGUFReader(a.src), gguf.GGUFReader(a.out)
    bad = []

    for key, f in src.fields.items():
        if key.startswith("GGUF.") or key in SET_BY_QUANTD or key.startswith("quantize."):
            continue
        g = out.fields.get(key)
        if g is None:
            bad.append("key %s missing" % key)
        elif kv_value(f) != kv_value(g) or f.types != g.types:
            bad.append("key %s changed" % key)
    for key in ("general.file_type", "quantize.method", "quantize.type"):
        if key not in out.fields:
            bad.append("key %s not written" % key)

    st = {t.name: t for t in src.tensors}
    if set(st) != {t.name for t in out.tensors}:
        bad.append("tensor names differ")
    worst = {}
    n_bytes_equal = 0
    for t in out.tensors:
        s = st.get(t.name)
        if s is None:
            continue
        if list(s.shape) != list(t.shape):
            bad.append("%s: shape %s != %s" % (t.name, list(t.shape), list(s.shape)))
            continue
        x, y = values(s, a.max_rows), values(t, a.max_rows)
        err = float(np.sqrt(np.mean((x - y) ** 2)) / (np.sqrt(np.mean(x ** 2)) + 1e-30))
        ty = t.tensor_type
        worst[ty] = max(worst.get(ty, 0.0), err)
        if err > BOUND.get(ty, 0.3):
            bad.append("%s (%s): relative RMS error %.4g > %.4g" % (t.name, ty.name, err, BOUND.get(ty, 0.3)))
        if ty in REQUANT:
            mine = np.asarray(t.data).reshape(-1, np.asarray(t.data).shape[-1])[:a.max_rows]
            ref = quants.quantize(x, ty)
            if not np.array_equal(mine.view(np.uint8), ref.view(np.uint8)):
                diff = int(np.count_nonzero(mine.view(np.uint8) != ref.view(np.uint8)))
                bad.append("%s (%s): %d bytes differ from gguf-py's quantization" % (t.name, ty.name, diff))
            else:
                n_bytes_equal += 1
    for ty, e in sorted(worst.items(), key=lambda kv: kv[0].name):
        print("%-5s worst relative RMS error %.4g" % (ty.name, e))
    print("%d tensors byte-identical to gguf-py's own quantization" % n_bytes_equal)
    if bad:
        print("FAILED:\n  " + "\n  ".join(bad[:50]))
        return 1
    print("OK: %s decodes with gguf-py %s and matches %s" % (a.out, getattr(gguf, "__version__", ""), a.src))
    return 0


if __name__ == "__main__":
    sys.exit(main())
