#!/bin/sh
# Fetches evaluation and calibration text for `quantd eval` / `quantd quantize --calib`:
# Jane Austen's novels (public domain; Project Gutenberg transcriptions) as shipped in the
# Debian package r-cran-janeaustenr (package code MIT, Julia Silge).  The package stores
# each novel as an R character vector (one line per element) in a zlib-compressed lazy-load
# database; a few lines of Python read R's XDR serialization directly, so R is not needed.
#
# Writes models/text/<book>.txt (models/ is git-ignored) for emma, mansfieldpark,
# northangerabbey, persuasion, prideprejudice, sensesensibility.  By convention the
# quality table evaluates on prideprejudice and calibrates on emma (different books).
# Needs apt-get (Debian) and python3.  Usage: sh tools/fetch-eval-text.sh [DEST_DIR]
set -eu
DEST=${1:-models/text}
PKG=r-cran-janeaustenr

mkdir -p "$DEST"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching Debian package $PKG ..." >&2
(cd "$tmp" && apt-get download "$PKG" >/dev/null 2>&1) || {
	echo "fetch-eval-text: 'apt-get download $PKG' failed (run 'apt-get update' first?)" >&2
	exit 1
}
dpkg-deb -x "$tmp"/"$PKG"_*.deb "$tmp/x"
python3 - "$tmp/x/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb" "$DEST" <<'EOF'
import struct, sys, zlib

rdb, dest = sys.argv[1], sys.argv[2]
data = open(rdb, "rb").read()

class Reader:
    def __init__(self, b):
        self.b, self.p = b, 0
    def i32(self):
        v = struct.unpack_from(">i", self.b, self.p)[0]
        self.p += 4
        return v
    def raw(self, n):
        v = self.b[self.p:self.p + n]
        self.p += n
        return v

def strings(blob):
    """The elements of a serialized character vector (STRSXP), or None for other objects."""
    r = Reader(blob)
    if r.raw(2) != b"X\n":
        return None
    version = r.i32()
    r.i32(); r.i32()
    if version == 3:
        r.raw(r.i32())  # native encoding name
    flags = r.i32()
    if flags & 0xFF != 16:  # STRSXP
        return None
    out = []
    for _ in range(r.i32()):
        f, n = r.i32(), r.i32()
        if f & 0xFF != 9:  # CHARSXP
            return None
        out.append("" if n < 0 else r.raw(n).decode("utf-8", "replace"))
    return out

# Entries follow one another: big-endian uncompressed length, then a zlib stream.
books, pos = [], 0
while pos + 4 < len(data):
    d = zlib.decompressobj()
    blob = d.decompress(data[pos + 4:])
    if len(blob) != struct.unpack_from(">I", data, pos)[0]:
        sys.exit("fetch-eval-text: unexpected lazy-load entry at byte %d" % pos)
    pos = len(data) - len(d.unused_data)
    lines = strings(blob)
    if lines and len(lines) > 1000:
        books.append(lines)

# The database is ordered by object name; check it by each novel's opening lines.
names = {"EMMA": "emma", "MANSFIELD PARK": "mansfieldpark", "NORTHANGER ABBEY": "northangerabbey",
         "PERSUASION": "persuasion", "PRIDE AND PREJUDICE": "prideprejudice",
         "SENSE AND SENSIBILITY": "sensesensibility"}
found = 0
for lines in books:
    head = " ".join(lines[:20]).upper()
    for title, name in names.items():
        if title in head:
            with open("%s/%s.txt" % (dest, name), "w") as f:
                f.write("\n".join(lines) + "\n")
            print("%s/%s.txt: %d lines" % (dest, name, len(lines)), file=sys.stderr)
            found += 1
            break
if found < 6:
    sys.exit("fetch-eval-text: found %d of 6 novels" % found)
EOF
