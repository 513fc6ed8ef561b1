#!/usr/bin/env python3
"""tools/trace-tail.py TRACE [--steps N]: where a launch's last blocks come from.

Reads a block trace as tools/trace-step.py does (same records, same steps) and, per kernel
kind (shape and the shape before it), over the last N steps of the most common length,
times every block from its launch's first wait release (tw):

  end p50 / p90 / max   the blocks' ends after tw (us): max - p50 is the launch's tail
  sm tail               per launch, the latest multiprocessor's last end minus the median
                        multiprocessor's last end (mean over launches)
  sm bias               spread (sd, us) over multiprocessors of their mean lateness: near 0
                        when no multiprocessor is late launch after launch
  corr(start, end)      Pearson correlation of a block's start with its end (both after tw):
                        near 1 when late-resident blocks (the previous kernel still held the
                        multiprocessor) are the late enders
  late start            mean start (after tw) of the blocks in the last 10% of ends, and of
                        the others
  co-res                mean blocks a multiprocessor ran in the launch, for the latest 10% of
                        multiprocessors and for the others

Session 26 (bench/NOTES-gpu.md) used it to ask whether handing row groups out at run time
could shorten the products' tails.
"""
import importlib.util
import math
import os
import statistics
import sys
from collections import defaultdict

_spec = importlib.util.spec_from_file_location(
    "trace_step", os.path.join(os.path.dirname(os.path.abspath(__file__)), "trace-step.py"))
ts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ts)


def pearson(xs, ys):
    if len(xs) < 3:
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return sxy / (sx * sy) if sx > 0 and sy > 0 else float("nan")


def mean(v):
    return statistics.fmean(v) if v else float("nan")


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]


def main():
    a = ts.cli(__doc__)
    if a is None:
        return 2
    path, nsteps = a
    steps = ts.steps_of(ts.load(path))
    n = max(set(len(s) for s in steps), key=lambda m: sum(1 for s in steps if len(s) == m))
    keep = [s for s in steps if len(s) == n][-nsteps:]
    kinds = defaultdict(list)
    for s in keep:
        for i in range(len(s)):
            kinds[ts.kind([{"shape": f'{k["nblk"]}x{k["nthr"]}'} for k in s], i)].append(s[i])
    print(f"{len(keep)} steps of {n} launches\n")
    print("| kernel (after) | launches | end p50 / p90 / max (us) | sm tail | sm bias | corr(start, end) "
          "| late start: last 10% / others | co-res: latest 10% SMs / others |")
    print("|---|---:|---|---:|---:|---:|---|---|")
    for kd, launches in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        p50s, p90s, maxs, smt, starts, ends = [], [], [], [], [], []
        late_s, other_s, cr_late, cr_other = [], [], [], []
        sm_late = defaultdict(list)
        for k in launches:
            waits = [b[1] for b in k["blocks"] if b[1]]
            if not waits:
                continue
            tw = min(waits)
            e = [(b[2] - tw) / 1000 for b in k["blocks"]]
            st = [(b[0] - tw) / 1000 for b in k["blocks"]]
            p50s.append(pct(e, 0.5))
            p90s.append(pct(e, 0.9))
            maxs.append(max(e))
            starts += st
            ends += e
            cut = pct(e, 0.9)
            for s_, e_ in zip(st, e):
                (late_s if e_ >= cut else other_s).append(s_)
            per_sm, cnt = defaultdict(float), defaultdict(int)
            for b, e_ in zip(k["blocks"], e):
                per_sm[b[4]] = max(per_sm.get(b[4], -1e9), e_)
                cnt[b[4]] += 1
            med = statistics.median(per_sm.values())
            smt.append(max(per_sm.values()) - med)
            for sm, v in per_sm.items():
                sm_late[sm].append(v - med)
            scut = pct(list(per_sm.values()), 0.9)
            for sm, v in per_sm.items():
                (cr_late if v >= scut else cr_other).append(cnt[sm])
        if not p50s:
            continue
        bias = statistics.pstdev([statistics.fmean(v) for v in sm_late.values()]) if len(sm_late) > 1 else 0
        print(f"| {kd} | {len(p50s)} | {statistics.fmean(p50s):.2f} / {statistics.fmean(p90s):.2f} / "
              f"{statistics.fmean(maxs):.2f} | {statistics.fmean(smt):.2f} | {bias:.2f} | "
              f"{pearson(starts, ends):.2f} | {mean(late_s):.2f} / {mean(other_s):.2f} | "
              f"{mean(cr_late):.2f} / {mean(cr_other):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
