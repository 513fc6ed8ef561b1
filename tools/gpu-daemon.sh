#!/bin/bash
# tools/gpu-daemon.sh: the daemon's own work per generated token (quantctl stats, HOST
# US/TOK: the engine thread's CPU time between forward passes) with the CUDA backend, on a
# GPU machine where the daemon's build dependencies are not installed: run there as
# `sh .dev/d/gpu-daemon.sh` from the repository root once tools/gpu-pack.sh's archive is
# unpacked and the model is in models/ or M names it (its header has the calls; B=cpu runs this on the
# CPU backend).  Greedy clients that sleep between tokens (the default) and ones that spin
# (QUANTD_SPIN_US): 1, 16 and 64 of them; output to $OUT (or /tmp).
export LD_LIBRARY_PATH="$PWD/.dev/d:$PWD/.dev/f"
D=.dev/d
OUT=${OUT:-/tmp}
M=${M:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
S=/tmp/quantd-gpu.sock
run() { # clients tokens spin_us label
	rm -f $S
	$D/quantd serve -m "$M" --socket $S --backend ${B:-cuda} > "$OUT/daemon-$4.log" 2>&1 &
	local qp=$! pids="" i
	for i in $(seq 100); do $D/quantctl --socket $S health > /dev/null 2>&1 && break; sleep 0.1; done
	for i in $(seq "$1"); do
		QUANTD_SPIN_US=$3 $D/quantctl --socket $S generate -n "$2" \
			"The history of the city number $i begins" > /dev/null &
		pids="$pids $!"
	done
	wait $pids
	echo "== $4: $1 clients x $2 tokens, client spin ${3} us"
	$D/quantctl --socket $S stats | sed -n 2,3p
	kill $qp
	wait $qp 2> /dev/null
}
run 1 1000 20 lone-sleeping
run 1 1000 20000 lone-spinning
run 16 300 20 16-sleeping
run 64 100 20 64-sleeping
