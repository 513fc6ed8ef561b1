#!/usr/bin/env python3
"""tools/trace-step.py TRACE [--steps N]: one decode step's timeline from a block trace.

A trace comes from an experiment build with -DQD_TRACE (tools/gpu-variant.sh NAME
-DQD_TRACE) run with QD_TRACE_OUT=FILE: thread 0 of every traced block records its launch
(%gridid), multiprocessor and the global timer at its start, at its PDL wait's release and
at its end (kernels/cuda/internal.cuh).  This script groups the records by launch, cuts
the launches into steps where one starts after everything before it has ended, keeps the
last N steps of the most common length, and prints per position in the step (averaged over
those steps, microseconds from the step's first block), after the step's length and the
gap between consecutive steps (the host's part of a step's edge):

  kernel   grid x threads (the launch shape)
  start    first block's start .. last block's start
  wait     first .. last release of the PDL wait (blocks that waited)
  end      first .. last block's end
  hand     first wait release - the previous launch's last end (the hand-over)
  adds     last end - the previous launch's last end (what the launch adds to the step)
  late     blocks that started after the first wait release (not resident early), and
           how much later the last of them ended than the last early block

Then the same columns per kernel kind over the layers (positions grouped by shape and
place in the layer), which is where a step's time goes; and for kernels with stage marks
(KB_MARK(i) in their code: thread 0's timer at stage i), each mark's mean and largest time
after the block's wait.  Session 17's tables (bench/NOTES-gpu.md) were made this way:

  sh tools/gpu-variant.sh trace -DQD_TRACE
  device: QD_TRACE_OUT=/dev/shm/q8.trace .dev/v-trace/qd-engine bench -m 7b-Q8_0.gguf \
          --backend cuda --batch 1 --prompt 16
          python3 tools/trace-step.py /dev/shm/q8.trace

Tracing costs a 7B step ~6% (an atomic and a store a block)."""
import struct
import sys
from collections import Counter, defaultdict

REC = struct.Struct("<QQQQIIII8Q")


def load(path):
    data = open(path, "rb").read()
    recs = [REC.unpack_from(data, o) for o in range(0, len(data) - REC.size + 1, REC.size)]
    grids = defaultdict(list)
    for g, t0, tw, t1, blk, sm, nblk, nthr, *marks in recs:
        grids[g].append((t0, tw, t1, blk, sm, nblk, nthr, tuple(marks)))
    out = []
    for g, bl in grids.items():
        # a graph's replays run the same launch (one %gridid) again, one after another: its
        # blocks, ordered by start, are runs of the launch's block count, counted from the
        # newest (the ring may have overwritten part of the oldest run, which is dropped)
        bl.sort()
        nblk = bl[0][5]
        runs = [bl[i - nblk:i] for i in range(len(bl), nblk - 1, -nblk)]
        for run in runs:
            nblk, nthr = run[0][5], run[0][6]
            out.append({"grid": g, "blocks": run, "nblk": nblk, "nthr": nthr,
                        "t0": min(b[0] for b in run), "t0x": max(b[0] for b in run),
                        "t1": min(b[2] for b in run), "t1x": max(b[2] for b in run)})
    out.sort(key=lambda k: k["t0"])
    # launches whose ring entries were overwritten in part would mislead: drop incomplete ones
    return [k for k in out if len(k["blocks"]) == k["nblk"]]


def steps_of(ks, gap_ns=4000):
    steps, cur, end = [], [], 0
    for k in ks:
        if cur and k["t0"] > end + gap_ns:
            steps.append(cur)
            cur = []
        cur.append(k)
        end = max(end, k["t1x"]) if len(cur) > 1 else k["t1x"]
    if cur:
        steps.append(cur)
    return steps


def metrics(step):
    s0 = step[0]["t0"]
    rows, prev_end = [], None
    for k in step:
        waits = [b[1] for b in k["blocks"] if b[1]]
        tw = min(waits) if waits else None
        twx = max(waits) if waits else None
        late = [b for b in k["blocks"] if tw is not None and b[0] > tw]
        early = [b for b in k["blocks"] if tw is None or b[0] <= tw]
        late_lag = (max(b[2] for b in late) - max(b[2] for b in early)) if late and early else 0
        r = {"shape": f'{k["nblk"]}x{k["nthr"]}', "start": (k["t0"] - s0, k["t0x"] - s0),
             "wait": (tw - s0, twx - s0) if tw else None, "end": (k["t1"] - s0, k["t1x"] - s0),
             "hand": (tw - prev_end) if (tw and prev_end is not None) else None,
             "adds": (k["t1x"] - prev_end) if prev_end is not None else k["t1x"] - s0,
             "late": len(late), "lag": late_lag}
        prev_end = k["t1x"] if prev_end is None else max(prev_end, k["t1x"])
        rows.append(r)
    return rows


def kind(p, i):
    """A launch's kind: its shape and the shape of the launch before it in the step."""
    return (p[i - 1]["shape"] if i else "-") + " > " + p[i]["shape"]


def avg(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def us(v):
    return "" if v is None else f"{v / 1000:.2f}"


def cli(doc):
    """TRACE and N from the command line (TRACE [--steps N], N 8 by default); None after
    printing DOC when no trace is named."""
    args = sys.argv[1:]
    nsteps = 8
    if "--steps" in args:
        i = args.index("--steps")
        nsteps = int(args[i + 1])
        del args[i:i + 2]
    if not args:
        print(doc)
        return None
    return args[0], nsteps


def main():
    a = cli(__doc__)
    if a is None:
        return 2
    path, nsteps = a
    ks = load(path)
    steps = steps_of(ks)
    lens = Counter(len(s) for s in steps)
    n, _ = lens.most_common(1)[0]
    keep = [s for s in steps if len(s) == n][-nsteps:]
    print(f"{len(ks)} launches, {len(steps)} steps (lengths {dict(lens.most_common(4))}); "
          f"the last {len(keep)} of {n} launches averaged")
    per = [metrics(s) for s in keep]
    total = avg([s[-1]["t1x"] - s[0]["t0"] for s in keep])
    print(f"step: {us(total)} us from the first block's start to the last block's end")
    # the step's edge: from a step's last block to the next step's first (the host's sync,
    # the next step's index copy and graph launch), over consecutive steps of the kept length
    gaps = [b[0]["t0"] - max(k["t1x"] for k in a) for a, b in zip(steps, steps[1:])
            if len(a) == n and len(b) == n]
    gaps = gaps[-nsteps:]
    print(f"between steps: {us(avg(gaps))} us (min {us(min(gaps) if gaps else None)}, "
          f"max {us(max(gaps) if gaps else None)}, {len(gaps)} gaps)\n")
    print("| # | kernel | start | wait | end | hand | adds | late (lag) |")
    print("|---:|---|---|---|---|---:|---:|---|")
    show = list(range(min(n, 14))) + list(range(max(14, n - 8), n))
    for i in show:
        col = [p[i] for p in per]
        st = (avg([c["start"][0] for c in col]), avg([c["start"][1] for c in col]))
        wt = (avg([c["wait"][0] if c["wait"] else None for c in col]),
              avg([c["wait"][1] if c["wait"] else None for c in col]))
        en = (avg([c["end"][0] for c in col]), avg([c["end"][1] for c in col]))
        print(f'| {i} | {col[0]["shape"]} | {us(st[0])}..{us(st[1])} | {us(wt[0])}..{us(wt[1])} | '
              f'{us(en[0])}..{us(en[1])} | {us(avg([c["hand"] for c in col]))} | '
              f'{us(avg([c["adds"] for c in col]))} | {avg([c["late"] for c in col]):.0f} '
              f'({us(avg([c["lag"] for c in col]))}) |')
    # kinds: a layer repeats; group by shape and the shape of the launch before
    kinds = defaultdict(list)
    for p in per:
        for i, c in enumerate(p):
            kinds[kind(p, i)].append(c)
    print("\n| kernel (after) | launches a step | hand | post-wait to last end | adds | late (lag) |")
    print("|---|---:|---:|---:|---:|---|")
    tot = 0
    for key, cs in sorted(kinds.items(), key=lambda kv: -sum(c["adds"] for c in kv[1])):
        a = avg([c["adds"] for c in cs])
        cnt = len(cs) / len(per)
        tot += a * cnt
        post = avg([(c["end"][1] - c["wait"][0]) if c["wait"] else None for c in cs])
        print(f'| {key} | {cnt:.0f} | {us(avg([c["hand"] for c in cs]))} | {us(post)} | {us(a)} | '
              f'{avg([c["late"] for c in cs]):.0f} ({us(avg([c["lag"] for c in cs]))}) |')
    print(f"\nsum of adds: {us(tot)} us")
    # stage marks (KB_MARK in a kernel): microseconds after the block's wait release
    marked = defaultdict(list)
    for s, p in zip(keep, per):
        for i, k in enumerate(s):
            for b in k["blocks"]:
                if b[1] and any(b[7]):
                    marked[kind(p, i)].append(b)
    for shape, bl in marked.items():
        print(f"\nstage marks of {shape} ({len(bl)} blocks), us after the block's wait (mean / max):")
        v = [b[0] - b[1] for b in bl]
        print(f"  start:  {us(sum(v) / len(v))} / {us(max(v))}")
        for i in range(len(bl[0][7])):
            v = [(b[7][i] - b[1]) for b in bl if b[7][i]]
            if v:
                print(f"  mark {i}: {us(sum(v) / len(v))} / {us(max(v))}")
        v = [b[2] - b[1] for b in bl]
        print(f"  end:    {us(sum(v) / len(v))} / {us(max(v))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
