"""Writes small LoRA adapters in llama.cpp's GGUF layout for tests.

No LoRA for the test models ships in a registry, so tests generate theirs
(never committed). The layout follows llama.cpp's convert_lora_to_gguf.py
and src/llama-adapter.cpp: metadata `general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha` and the base model's
`general.architecture`; for a base weight W of ggml shape [n_in, n_out]
(numpy (n_out, n_in)) the pair `NAME.lora_a` has numpy shape (r, n_in) and
`NAME.lora_b` (n_out, r), and llama.cpp adds
`scale * alpha / r * B @ (A @ x)` to `W @ x`.

Two kinds:

- `output`: on the lm head (`output.weight`, for models with an untied
  one such as stories260K). A's rows are the lm head's own rows of the
  chosen tokens and B puts `beta` back on the same tokens, so
  `A @ u` is those tokens' base logits and the adapted logit of each chosen
  token t is exactly `L0[t] * (1 + scale * alpha * beta / r)`; every other
  logit is unchanged.
- `layer`: seeded random A and B on one weight (any model), for tests that
  only need an adapter that changes the output.

Usage:
  python tests/lora_adapter.py output MODEL OUT --tokens 5,9 --alpha 4 --beta 0.25
  python tests/lora_adapter.py layer MODEL OUT --tensor blk.0.attn_q.weight --rank 4 --std 0.05
"""

import argparse
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType


def _arch(reader):
    field = reader.fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode()


def _tensor(reader, name):
    for t in reader.tensors:
        if t.name == name:
            return t
    raise SystemExit(f"{name} is not in the model")


def write_lora(out, arch, alpha, pairs):
    """pairs: {base tensor name: (A (r, n_in), B (n_out, r))}, float32."""
    w = GGUFWriter(out, arch)
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(alpha))
    for name, (a, b) in pairs.items():
        w.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
        w.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def output_lora(model, out, tokens, alpha, beta):
    reader = GGUFReader(model)
    head = _tensor(reader, "output.weight")
    if head.tensor_type != GGMLQuantizationType.F32:
        raise SystemExit("the output kind needs an F32 lm head (its rows are copied exactly)")
    n_embd, n_vocab = (int(x) for x in head.shape)
    rows = np.asarray(head.data, dtype=np.float32).reshape(n_vocab, n_embd)
    a = rows[tokens]
    b = np.zeros((n_vocab, len(tokens)), dtype=np.float32)
    for j, t in enumerate(tokens):
        b[t, j] = beta
    write_lora(out, _arch(reader), alpha, {"output.weight": (a, b)})


def layer_lora(model, out, tensor, rank, std, seed, alpha):
    reader = GGUFReader(model)
    n_in, n_out = (int(x) for x in _tensor(reader, tensor).shape[:2])
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, std, (rank, n_in)).astype(np.float32)
    b = rng.normal(0.0, std, (n_out, rank)).astype(np.float32)
    write_lora(out, _arch(reader), alpha, {tensor: (a, b)})


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="kind", required=True)
    o = sub.add_parser("output")
    o.add_argument("model")
    o.add_argument("out")
    o.add_argument("--tokens", required=True)
    o.add_argument("--alpha", type=float, default=0.0)
    o.add_argument("--beta", type=float, default=1.0)
    l = sub.add_parser("layer")
    l.add_argument("model")
    l.add_argument("out")
    l.add_argument("--tensor", required=True)
    l.add_argument("--rank", type=int, default=4)
    l.add_argument("--std", type=float, default=0.05)
    l.add_argument("--seed", type=int, default=1)
    l.add_argument("--alpha", type=float, default=0.0)
    args = p.parse_args(argv)
    if args.kind == "output":
        tokens = [int(t) for t in args.tokens.split(",")]
        output_lora(args.model, args.out, tokens, args.alpha, args.beta)
    else:
        layer_lora(args.model, args.out, args.tensor, args.rank, args.std, args.seed, args.alpha)


if __name__ == "__main__":
    main(sys.argv[1:])
