#!/usr/bin/env python3
"""What mixing LoRA adapters in one worker costs: generated tokens/s of
STREAMS concurrent greedy streams (fixed length, `ignore_eos`) that are all
base, all under one adapter, all under a combination of two, half base and
half adapter (two adapter sets, so every step decodes two batches and
switches the context's adapters), or a third each of base, one adapter and
the combination (three sets).

    .venv/bin/python scripts/bench-lora.py [--streams 8] [--tokens 128] [--rounds 3]
        [--json bench-lora.json]

Starts target/release/spindle worker with SmolLM2 and two generated rank-8
adapters on every layer's attn_q (tests/lora_adapter.py). Cases alternate
within each round; prints medians and writes every round as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
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


def make_adapter(out: Path, rank: int, seed: int = 3) -> None:
    reader = GGUFReader(str(MODEL))
    rng = np.random.default_rng(seed)
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


def start(adapters: dict[str, Path], threads: int) -> tuple[subprocess.Popen, str]:
    flags = [arg for name, path in adapters.items() for arg in ("--lora", f"{name}={path}")]
    p = subprocess.Popen(
        [str(ROOT / "target/release/spindle"), "worker", "--port", "0", "--model", str(MODEL),
         "--threads", str(threads), *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert p.stderr is not None
    for line in p.stderr:
        m = re.search(r"spindle listening on (http://\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, m.group(1)
    raise SystemExit("the worker did not start")


def one(url: str, tokens: int, names: list[str], i: int) -> int:
    body = {
        "messages": [{"role": "user", "content": f"Tell me a long story about the number {i}."}],
        "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
    }
    if names:
        body["lora"] = [{"name": n, "scale": 1.0} for n in names]
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["usage"]["completion_tokens"]


def run(url: str, streams: int, tokens: int, sets: list[list[str]]) -> float:
    """Stream i runs under sets[i % len(sets)]."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(streams) as ex:
        done = sum(ex.map(lambda i: one(url, tokens, sets[i % len(sets)], i), range(streams)))
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="bench-lora.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        adapters = {"tuned": Path(d) / "tuned.gguf", "other": Path(d) / "other.gguf"}
        make_adapter(adapters["tuned"], a.rank, seed=3)
        make_adapter(adapters["other"], a.rank, seed=5)
        p, url = start(adapters, a.threads)
        try:
            both = ["tuned", "other"]
            for names in ([], ["tuned"], both):
                one(url, 8, names, 0)
            cases = {
                "all base": [[]],
                "all one adapter": [["tuned"]],
                "all two adapters": [both],
                "half base, half adapter": [[], ["tuned"]],
                "base, adapter, both (3 sets)": [[], ["tuned"], both],
            }
            results: dict[str, list[float]] = {k: [] for k in cases}
            for r in range(a.rounds):
                for name, sets in cases.items():
                    results[name].append(run(url, a.streams, a.tokens, sets))
                print(f"[bench] round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
            base = statistics.median(results["all base"])
            print(f"| {a.streams} streams x {a.tokens} tokens, medians of {a.rounds} | tok/s | vs all base |")
            print("|---|---|---|")
            for name, tps in results.items():
                med = statistics.median(tps)
                print(f"| {name} | {med:.1f} | {med / base:.2f}x |")
            Path(a.json).write_text(json.dumps({"args": vars(a), "tokens_per_second": results}, indent=1))
        finally:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
