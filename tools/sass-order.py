#!/usr/bin/env python3
"""tools/sass-order.py: where ptxas put the decode walks' weight loads among their mmas.

Usage: python3 tools/sass-order.py FILE [SUBSTRING ...]

FILE is anything cuobjdump reads (a .cubin from `ptxas -arch=sm_90a`, an object file, or a
binary such as build/qd-engine); cuobjdump comes from $CUOBJDUMP or PATH (the GPU machine
has it; here a wheel of the CUDA toolkit's cuobjdump carries one).  For every kernel whose
mangled name contains one of the SUBSTRINGs (default: the one-token walks k_mmv, k_mmv_3,
k_mmv_norm, k_mmv_swi, k_mmv_pair), it prints the order of its mma instructions (M: IMMA)
and of its predicated 128-bit weight loads (R: @P LDG.E.NA.128, the early reload's refill),
in program order (the first 64).  In session 29 the one-token walks' speed followed these
strings more than their instruction counts: loads before an item's mma chain (RRRR
MMMMMMMM) were faster than loads after it (MMMMMMMM RRRR) (bench/NOTES-gpu.md, session 29).
"""
import os
import re
import subprocess
import sys

DEFAULT = ["k_mmvI", "k_mmv_3I", "k_mmv_normI", "k_mmv_swiI", "k_mmv_pairI"]


def order(lines):
    out = []
    for line in lines:
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z][\w.]*)", line)
        if not m:
            continue
        op = m.group(2)
        if op.startswith("IMMA"):
            out.append("M")
        elif m.group(1) and op.startswith("LDG.E.NA.128"):
            out.append("R")
    return "".join(out)


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.stdout.write(__doc__)
        return 0 if len(sys.argv) > 1 else 2
    tool = os.environ.get("CUOBJDUMP", "cuobjdump")
    want = sys.argv[2:] or DEFAULT
    try:
        text = subprocess.run([tool, "-sass", sys.argv[1]], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.stderr.write("sass-order: %s -sass %s: %s\n" % (tool, sys.argv[1], e))
        return 1
    name, body = None, []
    funcs = []
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            if name:
                funcs.append((name, body))
            name, body = m.group(1), []
        elif name:
            body.append(line)
    if name:
        funcs.append((name, body))
    for fname, fbody in funcs:
        if any(w in fname for w in want):
            s = order(fbody)
            if "M" in s:
                print("%-48s %s" % (fname, s[:64]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
