#!/usr/bin/env python3
"""Generation throughput of a worker with and without an embeddings load.

Starts `spindle worker` (target/release/spindle) on a model, runs STREAMS
concurrent generations of TOKENS tokens each (`/v1/generate`, ignore_eos)
and reports generated tokens per second: once alone, once while EMBEDDERS
client threads keep `/v1/embeddings` busy with BATCH texts per request.
Prints one JSON object.

    scripts/bench_embeddings.py [--model PATH] [--streams 8] [--tokens 128]
        [--embedders 1] [--batch 32] [--threads N] [--embedding-threads N]
"""

from __future__ import annotations

import argparse
import json
import re
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(ROOT.parent / "shared/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--embedders", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int)
    p.add_argument("--embedding-threads", type=int)
    args = p.parse_args()
    proc, url = start_worker(args)
    try:
        model = requests.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        generation_round(url, args.streams, 16)  # warm up
        alone = generation_round(url, args.streams, args.tokens)
        solo = {"requests": 0, "inputs": 0, "tokens": 0, "latency": []}
        t0 = time.perf_counter()
        for _ in range(3):
            texts = [f"{i}. {TEXT}" for i in range(args.batch)]
            r = requests.post(f"{url}/v1/embeddings", json={"model": model, "input": texts}, timeout=600)
            r.raise_for_status()
            solo["tokens"] += r.json()["usage"]["prompt_tokens"]
        embed_alone = round(solo["tokens"] / (time.perf_counter() - t0), 1)
        stop = threading.Event()
        stats = {"requests": 0, "inputs": 0, "tokens": 0, "latency": []}
        loaders = [threading.Thread(target=embed_load, args=(url, model, args.batch, stop, stats))
                   for _ in range(args.embedders)]
        for t in loaders:
            t.start()
        time.sleep(1.0)  # the load is running before generation starts
        t0 = time.perf_counter()
        before = dict(stats, latency=len(stats["latency"]))
        loaded = generation_round(url, args.streams, args.tokens)
        span = time.perf_counter() - t0
        embedded = stats["tokens"] - before["tokens"]
        stop.set()
        for t in loaders:
            t.join()
        lat = sorted(stats["latency"])
        print(json.dumps({
            "streams": args.streams, "tokens_per_stream": args.tokens,
            "embedders": args.embedders, "batch": args.batch,
            "alone": alone, "with_embeddings": loaded,
            "slowdown": round(1 - loaded["tokens_per_second"] / alone["tokens_per_second"], 3),
            "embedding_alone_tokens_per_second": embed_alone,
            "embedding_tokens_per_second": round(embedded / span, 1),
            "embedding_request_p50_s": round(lat[len(lat) // 2], 3) if lat else None,
        }, indent=1))
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
