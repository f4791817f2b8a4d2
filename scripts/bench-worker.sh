#!/usr/bin/env bash
# Side-by-side benchmark of a Spindle worker and llama.cpp's llama-server on
# the same GGUF with the same thread count, in one run. Both servers start
# once; the benchmark then alternates between them REPEAT times, so a noisy
# machine (shared cores) hits both alike, and the summary uses medians.
# Prints each table and the ratios; writes JSON into bench-out/. Then, on
# Spindle alone, 16 streams with half of them constrained by a JSON schema
# against none (`spindle bench structured`: REPEAT alternating pairs of
# STRUCTURED_SECONDS runs).
#   THREADS=2 REPEAT=5 ROUNDS=2 MAX_TOKENS=128 scripts/bench-worker.sh [MODEL.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
repeat=${REPEAT:-5}
rounds=${ROUNDS:-2}
max_tokens=${MAX_TOKENS:-128}
structured_seconds=${STRUCTURED_SECONDS:-8}
model=${1:-../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$model" ] || model="${SPINDLE_CACHE_DIR:-$HOME/.cache/spindle}/SmolLM2-135M-Instruct.Q4_1.gguf"
out=bench-out; mkdir -p "$out"
rm -f "$out"/*-streams-*.json "$out"/*-followup-*.json "$out"/*-structured.json

# `spindle bench` exists only in builds with the bench feature.
cargo build --release --locked --features bench >&2
spindle=target/release/spindle
[ -f "$model" ] || { echo "[bench] no model at $model: run scripts/serve once to fetch the default model" >&2; exit 1; }
peer=$(scripts/build-llama-server.sh)

port_of() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {
  for _ in $(seq 600); do curl -sf "$1/health" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "[bench] $1 did not come up" >&2; return 1
}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

# Idle servers cost nothing, so both stay up for the whole run.
lp=$(port_of)
echo "[bench] llama-server ($peer) on :$lp, $threads threads" >&2
"$peer" -m "$model" --host 127.0.0.1 --port "$lp" -t "$threads" -tb "$threads" -np 16 -c 32768 \
  --log-disable >/dev/null 2>&1 &
pids+=($!)
sp=$(port_of)
echo "[bench] spindle worker on :$sp, $threads threads" >&2
$spindle worker --model "$model" --port "$sp" --threads "$threads" --max-seqs 16 >/dev/null 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$lp"
wait_ready "http://127.0.0.1:$sp"

run_bench() { # label url repetition
  $spindle bench streams --url "$2" --label "$1" --concurrency 1,16 \
    --rounds "$rounds" --max-tokens "$max_tokens" --out "$out/$1-streams-$3.json"
  $spindle bench followup --url "$2" --label "$1" --trials 5 --out "$out/$1-followup-$3.json"
}
for r in $(seq "$repeat"); do
  echo "[bench] repetition $r/$repeat" >&2
  # Alternate which server goes first so neither always follows the other.
  if (( r % 2 )); then
    run_bench llama-server "http://127.0.0.1:$lp" "$r"; run_bench spindle "http://127.0.0.1:$sp" "$r"
  else
    run_bench spindle "http://127.0.0.1:$sp" "$r"; run_bench llama-server "http://127.0.0.1:$lp" "$r"
  fi
done

# Grammar-constrained output has no llama-server counterpart here: Spindle only.
$spindle bench structured --url "http://127.0.0.1:$sp" --streams 16 --seconds "$structured_seconds" \
  --repeat "$repeat" --max-tokens "$max_tokens" --out "$out/spindle-structured.json"

python3 - "$out" "$repeat" <<'PY'
import json, statistics, sys, pathlib
out, repeat = pathlib.Path(sys.argv[1]), int(sys.argv[2])
load = lambda name: json.loads((out / name).read_text())["results"]
med = statistics.median
rows = []
print(f"\nmedians over {repeat} alternating repetitions (spindle / llama-server)")
levels = [row["concurrency"] for row in load("spindle-streams-1.json")]
for i, c in enumerate(levels):
    s = [load(f"spindle-streams-{r}.json")[i]["tokens_per_s"] for r in range(1, repeat + 1)]
    l = [load(f"llama-server-streams-{r}.json")[i]["tokens_per_s"] for r in range(1, repeat + 1)]
    pair = [a / b for a, b in zip(s, l)]
    rows.append({"concurrency": c, "spindle_tok_s": s, "llama_server_tok_s": l,
                 "ratio_of_medians": med(s) / med(l), "median_pair_ratio": med(pair)})
    print(f"  {c:>3} streams: {med(s):7.1f} vs {med(l):7.1f} tok/s = {med(s) / med(l):.2f}x"
          f"  (per-repetition ratios {', '.join(f'{p:.2f}' for p in pair)})")
fu = {}
for label in ("spindle", "llama-server"):
    runs = [load(f"{label}-followup-{r}.json")[0] for r in range(1, repeat + 1)]
    fu[label] = {k: med([x[k] for x in runs]) for k in ("cold_ttft_p50_ms", "warm_ttft_p50_ms", "ratio")}
    f = fu[label]
    print(f"  {label}: cached follow-up TTFT / cold TTFT {f['ratio']:.3f} "
          f"({f['warm_ttft_p50_ms']:.1f} / {f['cold_ttft_p50_ms']:.1f} ms)")
structured = load("spindle-structured.json")
(out / "summary.json").write_text(json.dumps({"repeat": repeat, "throughput": rows, "followup": fu,
                                              "structured": structured}, indent=2))
print(f"wrote {out}/summary.json")
PY
