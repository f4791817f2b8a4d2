#!/usr/bin/env python3
"""What mixing LoRA adapters in one worker costs: generated tokens/s of
STREAMS concurrent greedy streams (fixed length, `ignore_eos`) that are all
base, all under one adapter, or half and half (two adapter sets, so every
step decodes two batches and switches the context's adapter).

    .venv/bin/python scripts/bench-lora.py [--streams 8] [--tokens 128] [--rounds 3]

Starts target/release/spindle worker with SmolLM2 and a generated rank-8
adapter on every layer's attn_q (tests/lora_adapter.py).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from lora_adapter import write_lora, _arch, _tensor  # noqa: E402

import numpy as np  # noqa: E402
from gguf import GGUFReader  # noqa: E402

MODEL = ROOT.parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_adapter(out: Path, rank: int) -> None:
    reader = GGUFReader(str(MODEL))
    rng = np.random.default_rng(3)
    pairs = {}
    n_layers = sum(1 for t in reader.tensors if t.name.endswith("attn_q.weight"))
    for i in range(n_layers):
        name = f"blk.{i}.attn_q.weight"
        n_in, n_out = (int(x) for x in _tensor(reader, name).shape[:2])
        pairs[name] = (
            rng.normal(0, 0.02, (rank, n_in)).astype(np.float32),
            rng.normal(0, 0.02, (n_out, rank)).astype(np.float32),
        )
    write_lora(str(out), _arch(reader), 0.0, pairs)


def start(adapter: Path, threads: int) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen(
        [str(ROOT / "target/release/spindle"), "worker", "--port", "0", "--model", str(MODEL),
         "--threads", str(threads), "--lora", f"tuned={adapter}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert p.stderr is not None
    for line in p.stderr:
        m = re.search(r"spindle listening on (http://\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, m.group(1)
    raise SystemExit("the worker did not start")


def one(url: str, tokens: int, lora: bool, i: int) -> int:
    body = {
        "messages": [{"role": "user", "content": f"Tell me a long story about the number {i}."}],
        "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
    }
    if lora:
        body["lora"] = [{"name": "tuned", "scale": 1.0}]
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["usage"]["completion_tokens"]


def run(url: str, streams: int, tokens: int, adapted: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(streams) as ex:
        done = sum(ex.map(lambda i: one(url, tokens, i < adapted, i), range(streams)))
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        adapter = Path(d) / "tuned.gguf"
        make_adapter(adapter, a.rank)
        p, url = start(adapter, a.threads)
        try:
            one(url, 8, False, 0)
            one(url, 8, True, 0)
            cases = {"all base": 0, "half adapter": a.streams // 2, "all adapter": a.streams}
            results = {k: [] for k in cases}
            for _ in range(a.rounds):
                for name, adapted in cases.items():
                    results[name].append(run(url, a.streams, a.tokens, adapted))
            for name, tps in results.items():
                print(f"{name:>13}: {max(tps):7.1f} tok/s (best of {a.rounds}: {', '.join(f'{x:.1f}' for x in tps)})")
        finally:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
