#!/usr/bin/env python3
"""tools/ncu-step.py: one decode step's kernels, each timed alone, from an ncu CSV.

On the GPU machine (bench/NOTES-gpu.md, session 15):

    ncu --clock-control none --csv \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__registers_per_thread \
        --kernel-name "regex:k_mmv|k_attention" \
        qd-engine bench -m /dev/shm/7b-q8_0.gguf --backend cuda --batch 1 --prompt 16 \
        --gen 3 --reps 1 > ncu.csv

then here:  tools/ncu-step.py ncu.csv [--kernels 161] [--layer 5]

It takes the last KERNELS profiled kernels (one step: 5 a layer for 32 layers plus the
output head, for a 7B model whose products and attention the regex selects), prints
their time, DRAM bytes and GB/s summed by kernel and grid, their total, and the KERNELS
list's kernels LAYER*5 .. LAYER*5+4 one by one (one layer).  ncu serializes kernels, so
the times are each kernel alone: no early launch, no overlap with its neighbours.
"""
import argparse
import collections
import csv
import re
import sys


def load(path):
    """Kernels in profile order: {'name', 'grid', 'block', metric: value}."""
    kernels = collections.OrderedDict()
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if len(r) > 10]  # ncu's own log lines are shorter
    if not rows:
        sys.exit(f"{path}: no ncu CSV rows")
    head = rows[0]
    for r in rows[1:]:
        d = dict(zip(head, r))
        k = kernels.setdefault(int(d["ID"]), {"name": d["Kernel Name"], "grid": d["Grid Size"],
                                              "block": d["Block Size"]})
        try:
            k[d["Metric Name"]] = float(d["Metric Value"].replace(",", ""))
        except ValueError:
            pass
    return list(kernels.values())


def short(name):
    return re.sub(r"\(.*", "", name).replace("void ", "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--kernels", type=int, default=161, help="kernels in one step (default 161: 7B)")
    ap.add_argument("--layer", type=int, default=5, help="which layer to list one by one")
    a = ap.parse_args()
    ks = load(a.csv)
    if len(ks) < a.kernels:
        sys.exit(f"{a.csv}: {len(ks)} kernels, fewer than one step of {a.kernels}")
    step = ks[-a.kernels:]
    T, B = "gpu__time_duration.sum", "dram__bytes_read.sum"
    agg = collections.OrderedDict()
    for k in step:
        key = (short(k["name"]), k["grid"], k["block"])
        s = agg.setdefault(key, [0, 0.0, 0.0, k.get("launch__registers_per_thread", 0)])
        s[0] += 1
        s[1] += k.get(T, 0)
        s[2] += k.get(B, 0)
    print(f"{'n':>4} {'us':>9} {'us each':>8} {'MB each':>8} {'GB/s':>6} {'regs':>4}  kernel (grid, block)")
    tot_t = tot_b = 0.0
    for (name, grid, block), (n, t, b, regs) in agg.items():
        tot_t += t
        tot_b += b
        print(f"{n:4d} {t / 1e3:9.1f} {t / n / 1e3:8.2f} {b / n / 1e6:8.2f} {b / t if t else 0:6.0f} {regs:4.0f}  "
              f"{name} {grid} {block}")
    print(f"step: {tot_t / 1e3:.1f} us, {tot_b / 1e6:.1f} MB, {tot_b / tot_t if tot_t else 0:.0f} GB/s "
          f"(each kernel alone)")
    print(f"layer {a.layer}:")
    for k in step[5 * a.layer:5 * a.layer + 5]:
        t, b = k.get(T, 0), k.get(B, 0)
        print(f"  {t / 1e3:7.2f} us {b / 1e6:7.2f} MB {b / t if t else 0:6.0f} GB/s  {short(k['name'])} {k['grid']}")


if __name__ == "__main__":
    main()
