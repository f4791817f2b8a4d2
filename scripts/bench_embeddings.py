#!/usr/bin/env python3
"""Generation throughput of a worker with and without an embeddings load,
for each way of scheduling embeddings (`--embedding-mode`).

For every mode (alternating, REPEAT times) starts `spindle worker`
(target/release/spindle) on a model, runs STREAMS concurrent generations of
TOKENS tokens each (`/v1/generate`, ignore_eos) and measures generated
tokens per second: once alone, once while EMBEDDERS client threads keep
`/v1/embeddings` busy with BATCH texts per request (with the embedding
tokens/s and request latency meanwhile). Prints a table of medians and
writes every run as JSON (--json).

    scripts/bench_embeddings.py [--model PATH] [--streams 8] [--tokens 128]
        [--embedders 1] [--batch 32] [--threads N] [--embedding-threads N]
        [--modes separate,interleaved,interleaved@0.2] [--repeat 3]
        [--json bench-embeddings.json]

A mode `interleaved@S` runs interleaved with `--embedding-share S`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("Embeddings turn a passage of text into a vector, so that passages with similar "
        "meaning end up close together. ")


def start_worker(args) -> tuple[subprocess.Popen, str]:
    cmd = [str(ROOT / "target/release/spindle"), "worker", "--port", "0", "--model", args.model,
           "--max-seqs", str(args.streams)]
    mode, _, share = args.mode.partition("@")
    cmd += ["--embedding-mode", mode] + (["--embedding-share", share] if share else [])
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.embedding_threads:
        cmd += ["--embedding-threads", str(args.embedding_threads)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        m = re.search(r"spindle listening on (http://\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, m.group(1)
    raise SystemExit("the worker did not start")


def generate(url: str, tokens: int, i: int) -> int:
    body = {"prompt": f"Story {i}: Once upon a time", "sampling": {
        "max_tokens": tokens, "ignore_eos": True, "temperature": 0.0}}
    done = 0
    with requests.post(f"{url}/v1/generate", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.strip():
                continue
            ev = json.loads(line)
            if ev.get("type") == "done" or "usage" in ev:
                done = ev.get("usage", {}).get("completion_tokens", done)
    return done


def generation_round(url: str, streams: int, tokens: int) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        made = sum(pool.map(lambda i: generate(url, tokens, i), range(streams)))
    wall = time.perf_counter() - started
    return {"tokens": made, "seconds": round(wall, 3), "tokens_per_second": round(made / wall, 1)}


def embed_load(url: str, model: str, batch: int, stop: threading.Event, stats: dict) -> None:
    texts = [f"{i}. {TEXT}" for i in range(batch)]
    while not stop.is_set():
        t0 = time.perf_counter()
        r = requests.post(f"{url}/v1/embeddings", json={"model": model, "input": texts}, timeout=600)
        r.raise_for_status()
        stats["requests"] += 1
        stats["inputs"] += batch
        stats["tokens"] += r.json()["usage"]["prompt_tokens"]
        stats["latency"].append(time.perf_counter() - t0)


def measure(args) -> dict:
    """One worker in `args.mode`: generation alone, embedding alone, both."""
    proc, url = start_worker(args)
    try:
        model = requests.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        generation_round(url, args.streams, 16)  # warm up
        alone = generation_round(url, args.streams, args.tokens)
        solo = 0
        t0 = time.perf_counter()
        for _ in range(3):
            texts = [f"{i}. {TEXT}" for i in range(args.batch)]
            r = requests.post(f"{url}/v1/embeddings", json={"model": model, "input": texts}, timeout=600)
            r.raise_for_status()
            solo += r.json()["usage"]["prompt_tokens"]
        embed_alone = round(solo / (time.perf_counter() - t0), 1)
        stop = threading.Event()
        stats = {"requests": 0, "inputs": 0, "tokens": 0, "latency": []}
        loaders = [threading.Thread(target=embed_load, args=(url, model, args.batch, stop, stats))
                   for _ in range(args.embedders)]
        for t in loaders:
            t.start()
        time.sleep(1.0)  # the load is running before generation starts
        t0 = time.perf_counter()
        before = stats["tokens"]
        loaded = generation_round(url, args.streams, args.tokens)
        span = time.perf_counter() - t0
        embedded = stats["tokens"] - before
        stop.set()
        for t in loaders:
            t.join()
        lat = sorted(stats["latency"])
        return {
            "mode": args.mode, "alone": alone, "with_embeddings": loaded,
            "slowdown": round(1 - loaded["tokens_per_second"] / alone["tokens_per_second"], 3),
            "embedding_alone_tokens_per_second": embed_alone,
            "embedding_tokens_per_second": round(embedded / span, 1),
            "embedding_request_p50_s": round(lat[len(lat) // 2], 3) if lat else None,
        }
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(ROOT.parent / "shared/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--embedders", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int)
    p.add_argument("--embedding-threads", type=int)
    p.add_argument("--modes", default="separate,interleaved,interleaved@0.2")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default="bench-embeddings.json")
    args = p.parse_args()
    runs = []
    for rep in range(args.repeat):
        for mode in args.modes.split(","):
            args.mode = mode
            run = measure(args)
            run["repetition"] = rep
            runs.append(run)
            print(f"[bench] {mode} #{rep + 1}: generation {run['alone']['tokens_per_second']} alone, "
                  f"{run['with_embeddings']['tokens_per_second']} with embeddings "
                  f"({run['embedding_tokens_per_second']} embedding tok/s)", flush=True)
    med = lambda mode, f: statistics.median(f(r) for r in runs if r["mode"] == mode)
    columns = [
        ("generation alone tok/s", lambda r: r["alone"]["tokens_per_second"]),
        ("generation + embeddings tok/s", lambda r: r["with_embeddings"]["tokens_per_second"]),
        ("embedding tok/s meanwhile", lambda r: r["embedding_tokens_per_second"]),
        ("embedding request p50 s", lambda r: r["embedding_request_p50_s"] or 0),
        ("embedding alone tok/s", lambda r: r["embedding_alone_tokens_per_second"]),
    ]
    modes = args.modes.split(",")
    print(f"\nmedians of {args.repeat} (alternating), {args.streams} streams x {args.tokens} tokens, "
          f"{args.embedders} embedder(s) x {args.batch} texts")
    print("| | " + " | ".join(modes) + " |")
    print("|---|" + "---|" * len(modes))
    for name, f in columns:
        print(f"| {name} | " + " | ".join(f"{med(m, f):g}" for m in modes) + " |")
    Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
