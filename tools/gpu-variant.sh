#!/bin/sh
# tools/gpu-variant.sh NAME [NVCC_DEFINES...]: an experiment build of qd-engine,
# test-backend, test-fused, test-fused-qkv and test-steps for sm_90a, in a build directory made fresh for it
# (.dev/bv-NAME), stripped into .dev/v-NAME/ and packed as .dev/x/v-NAME.tar.xz, for A/B
# timings against the default pack (tools/gpu-pack.sh) on a GPU machine:
#
#   sh tools/gpu-variant.sh attexit -DQD_DEV_ATT_EXIT
#   device: tar -xJf .dev/x/pack.tar.xz && tar -xJf .dev/x/v-attexit.tar.xz
#           LD_LIBRARY_PATH=.dev/f .dev/v-attexit/test-backend   (and test-fused, test-fused-qkv, and
#           test-steps for a change to the forward pass, before its timings count)
#           LD_LIBRARY_PATH=.dev/f .dev/v-attexit/qd-engine bench ...
#
# Why a fresh directory every time: in session 9 a reused one held objects from an
# earlier session, so the variant's Q4 products were wrong and it timed 7% "faster"
# (bench/NOTES-gpu.md).  Why the tests travel with it: a variant's timing only counts
# once its products are right (a variant that drops work on purpose shows which).
set -eu
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: tools/gpu-variant.sh NAME [NVCC_DEFINES...]" >&2; exit 2; }
NAME=$1
shift
case $NAME in *[!A-Za-z0-9_-]*|"") echo "gpu-variant: NAME: letters, digits, _ and - only" >&2; exit 2;; esac
O=.dev/bv-$NAME
rm -rf "$O" ".dev/v-$NAME"
BINS="qd-engine tests/test-backend tests/test-fused tests/test-fused-qkv tests/test-steps bench/bench-cuda-mmv"
# the bench's "revision" names the variant (a command-line variable overrides the Makefile's)
REV="$(git describe --always --dirty 2>/dev/null || echo unknown) v-$NAME $*"
make -j"$(nproc)" O="$O" CUDA_GENCODE="-gencode arch=compute_90a,code=sm_90a" NVCCFLAGS="-O3 $*" QD_REVISION="$REV" \
	$(for b in $BINS; do echo "$O/$b"; done)
mkdir -p ".dev/v-$NAME" .dev/x
for b in $BINS; do
	cp "$O/$b" ".dev/v-$NAME/"
	strip ".dev/v-$NAME/${b##*/}"
done
echo "$(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty) $*" > ".dev/v-$NAME/build"
tar -cJf ".dev/x/v-$NAME.tar.xz" ".dev/v-$NAME"
ls -la ".dev/x/v-$NAME.tar.xz"
