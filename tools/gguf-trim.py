#!/usr/bin/env python3
"""tools/gguf-trim.py IN OUT LAYERS: a copy of a Llama GGUF with only its first LAYERS blocks.

The GPU machine takes at most 64 MiB a call (the tree included) and is given back 30 s
after a call ends, so the full SmolLM2 file (96 MB) no longer reaches it reliably in two
halves.  Its first 10 blocks with the real embedding, norms and output (54 MB) exercise
every kernel the full model does (same shapes and block types, real weights), so
test-steps' "greedy tokens cuda = cpu" runs on that file there (QD_MODEL; tools/gpu-pack.sh).
Needs the gguf Python package.
"""
import sys

from gguf import GGUFReader, GGUFWriter, GGUFValueType


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, dst, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
    r = GGUFReader(src)
    arch = r.fields["general.architecture"]
    arch = bytes(arch.parts[arch.data[0]]).decode()
    have = r.fields[f"{arch}.block_count"]
    have = int(have.parts[have.data[0]][0])
    if not 1 <= keep <= have:
        sys.exit(f"gguf-trim: LAYERS must be 1..{have}, not {keep}")
    w = GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        t = f.types[0]
        if name == f"{arch}.block_count":
            w.add_uint32(name, keep)
        elif name == "general.alignment":
            # the writer pads the tensor data to this, not only records it
            w.add_custom_alignment(int(f.parts[f.data[0]][0]))
        elif t == GGUFValueType.STRING:
            w.add_key_value(name, bytes(f.parts[f.data[0]]), t)  # bytes as they are
        elif t == GGUFValueType.ARRAY:
            sub = f.types[1] if len(f.types) > 1 else GGUFValueType.INT32
            if sub == GGUFValueType.STRING:
                vals = [bytes(f.parts[i]) for i in f.data]
            else:
                vals = [f.parts[i][0].item() for i in f.data]
            if not vals:  # the gguf writer refuses empty arrays
                print(f"gguf-trim: {name}: empty array left out", file=sys.stderr)
                continue
            w.add_key_value(name, vals, t, sub_type=sub)  # the element type as it was
        else:
            w.add_key_value(name, f.parts[f.data[0]][0].item(), t)
    for t in r.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= keep:
            continue
        w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


main()
