"""Write a copy of a GGUF model with its matrices quantized to Q5_0 and its
output layer to Q8_0, for worker/tests/repack.rs: no small Q5_0 model ships
in a registry, and the repack patch for Q5_0 and Q8_0 needs one in CI.

    python tests/quant_model.py IN.gguf OUT.gguf

Every metadata field is copied as is. A 2-D F32 weight whose rows are a
multiple of 32 wide and whose row count is a multiple of 4 (the repacked
layout's group) is quantized with the PyPI `gguf` package's reference
quantizers: `output.weight` to Q8_0, the layers' attention and FFN matrices
to Q5_0. Everything else (norms, the embedding, FFN-down rows of 172) stays
F32.
"""

import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter, GGMLQuantizationType
from gguf.quants import quantize

# Fields the writer sets itself.
SKIP = {"general.architecture", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}


def target_type(name, shape):
    """The type `name` gets; shape is (rows, row length)."""
    rows, width = shape
    if width % 32 or rows % 4:
        return None
    if name == "output.weight":
        return GGMLQuantizationType.Q8_0
    if name.startswith("blk.") and name.split(".", 2)[2] in {
        "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
        "ffn_gate.weight", "ffn_up.weight",
    }:
        return GGMLQuantizationType.Q5_0
    return None


def main(src, dst):
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name in SKIP:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    quantized = 0
    for t in reader.tensors:
        data = np.asarray(t.data)
        qtype = None
        if t.tensor_type == GGMLQuantizationType.F32 and data.ndim == 2:
            qtype = target_type(t.name, data.shape)
        if qtype is None:
            writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
        else:
            writer.add_tensor(t.name, quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
            quantized += 1
    if quantized == 0:
        sys.exit(f"{src}: no F32 matrix to quantize")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
