#!/bin/sh
# tools/gpu-pack.sh: packs what a GPU machine without our build dependencies needs to run
# the CUDA tests, the benchmarks and the daemon, built for sm_90a only (a third of the size
# of the three-arch build) and stripped:
#   .dev/f  test-backend, test-fused, test-fused-qkv, test-steps, test-cuda-mmv, test-cuda-ll, bench-cuda-mmv, qd-engine (run/bench/
#           synth), the libraries they need that such machines lack (CUnit, PCRE2), gpu-run.sh;
#   .dev/d  quantd and quantctl with theirs (protobuf-c, liburing, libsystemd and what it
#           links), gpu-daemon.sh;
# both in one xz archive, .dev/x/pack.tar.xz (~13 MB: the binaries compress 6x), and the
# default model cut to its first 10 blocks, .dev/y/s10.gguf (tools/gguf-trim.py; 52 MiB),
# with a slim archive of test-steps and .dev/d, .dev/y/slim.tar.xz (6 MiB).  A device call
# carries at most 64 MiB with the tree, and the machine is given back 30 s after a call
# ends, too soon to carry the full model (96 MB) in two calls; the 10 blocks have every
# shape and block type the full model has, with its real weights:
#
#   call (carry .dev/y):  tar -xJf .dev/y/slim.tar.xz;
#           LD_LIBRARY_PATH=.dev/f QD_MODEL=.dev/y/s10.gguf .dev/f/test-steps;
#           M=.dev/y/s10.gguf bash .dev/d/gpu-daemon.sh
#   call (carry .dev/x):  tar -xJf .dev/x/pack.tar.xz; sh .dev/f/gpu-run.sh
#
# gpu-run.sh runs the GPU suites that need no model and a 7B Q4_0 benchmark on a
# random-weight model made there; gpu-daemon.sh measures the daemon's own work per token
# with the CUDA backend, here on the cut model (pack.tar.xz and the model together pass
# 64 MiB, hence the slim archive).
set -eu
cd "$(dirname "$0")/.."
O=.dev/b90
rm -rf .dev/f .dev/d
BINS="tests/test-backend tests/test-fused tests/test-fused-qkv tests/test-steps qd-engine tests/gpu/test-cuda-mmv tests/gpu/test-cuda-ll bench/bench-cuda-mmv"
make -j"$(nproc)" O=$O CUDA_GENCODE="-gencode arch=compute_90a,code=sm_90a" $(for b in $BINS; do echo "$O/$b"; done)
mkdir -p .dev/f
for b in $BINS; do
	cp "$O/$b" .dev/f/
	strip ".dev/f/${b##*/}"
done
# copy_libs DIR LIB...: this machine's x86-64 copies of the libraries into DIR
copy_libs() {
	dir=$1
	shift
	for lib; do
		path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ { print $NF; exit }')
		[ -n "$path" ] || { echo "gpu-pack: $lib not found" >&2; exit 1; }
		cp -L "$path" "$dir"/
	done
}
copy_libs .dev/f libcunit.so.1 libpcre2-8.so.0
# The daemon and its CLI with the runtime libraries such machines lack (protobuf-c,
# liburing, libsystemd and what libsystemd links), in .dev/d: in both archives (the slim
# one goes with the cut model), `bash .dev/d/gpu-daemon.sh` measures the daemon's own work
# per token on the GPU.
make -j"$(nproc)" O=$O CUDA_GENCODE="-gencode arch=compute_90a,code=sm_90a" $O/quantd $O/quantctl
mkdir -p .dev/d
cp $O/quantd $O/quantctl .dev/d/
strip .dev/d/quantd .dev/d/quantctl
copy_libs .dev/d libprotobuf-c.so.1 liburing.so.2 libsystemd.so.0 libcap.so.2 libgcrypt.so.20 liblzma.so.5 \
	libzstd.so.1 liblz4.so.1 libgpg-error.so.0 libpcre2-8.so.0
cp tools/gpu-daemon.sh .dev/d/
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
rm -rf .dev/y
if [ -f $M ]; then
	rm -f .dev/m.a?
	mkdir -p .dev/y
	python3 -c 'import gguf' 2>/dev/null || pip install -q gguf
	python3 tools/gguf-trim.py $M .dev/y/s10.gguf 10
	tar -cJf .dev/y/slim.tar.xz -C . .dev/f/test-steps .dev/f/libcunit.so.1 .dev/f/libpcre2-8.so.0 .dev/d
fi
cat > .dev/f/gpu-run.sh <<'EOF'
#!/bin/sh
# Runs on the GPU machine from the repository root; results go to $OUT.
export LD_LIBRARY_PATH="$PWD/.dev/f"
F=.dev/f
OUT=${OUT:-/tmp}
for t in test-backend test-fused test-fused-qkv; do
	timeout 300 $F/$t > "$OUT/$t.log" 2>&1
	echo "$t rc=$?"
	grep -E "asserts|differ|SKIP|FAIL|refused" "$OUT/$t.log"
done
[ -f /tmp/7b-q4_0.gguf ] || timeout 120 $F/qd-engine synth --shape llama2-7b --type q4_0 /tmp/7b-q4_0.gguf
timeout 200 $F/qd-engine bench -m /tmp/7b-q4_0.gguf --backend cuda --batch 1,8,32,64 --prompt 512 --json \
	> "$OUT/bench-7b-q4_0.jsonl"
cut -c1-240 "$OUT/bench-7b-q4_0.jsonl"
EOF
chmod +x .dev/f/gpu-run.sh
mkdir -p .dev/x
tar -cJf .dev/x/pack.tar.xz -C . .dev/f .dev/d
ls -la .dev/x/pack.tar.xz .dev/y/* 2>/dev/null || true
