#!/bin/sh
# make bench-cpu: prompt and decode tokens/s of the default model on this machine's CPU,
# with the roofline, written to bench/results/cpu-<date>.md (table) and .jsonl (rows).
set -eu
QUANTD=${1:-build/quantd}
MODEL=${2:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
BATCH=${BENCH_BATCH:-1,4,16}
PROMPT=${BENCH_PROMPT:-256}
date=$(date -u +%Y-%m-%d)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain 2>/dev/null | grep -q . && echo "+dirty" || true)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
mkdir -p bench/results
out=bench/results/cpu-$date
cmd="$QUANTD bench -m $MODEL --batch $BATCH --prompt $PROMPT"
{
	echo "# CPU benchmark $date"
	echo
	echo "- commit: $commit$dirty"
	echo "- machine: $cpu, $(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB"
	echo "- load before the run: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine lowers every number)"
	echo "- command: \`$cmd\`"
	echo
	$cmd
} | tee "$out.md"
$cmd --json | sed "s/^{/{\"date\": \"$date\", \"commit\": \"$commit$dirty\", /" >"$out.jsonl"
echo "wrote $out.md and $out.jsonl" >&2
