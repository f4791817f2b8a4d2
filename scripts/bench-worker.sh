#!/usr/bin/env bash
# Side-by-side benchmark of a Spindle worker and llama.cpp's llama-server on
# the same GGUF with the same thread count, one server at a time, in one run.
# Prints each table and the ratios; writes JSON into bench-out/.
#   THREADS=2 ROUNDS=2 MAX_TOKENS=128 scripts/bench-worker.sh [MODEL.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
rounds=${ROUNDS:-2}
max_tokens=${MAX_TOKENS:-128}
model=${1:-../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$model" ] || model="${SPINDLE_CACHE_DIR:-$HOME/.cache/spindle}/SmolLM2-135M-Instruct.Q4_1.gguf"
out=bench-out; mkdir -p "$out"

cargo build --release --locked >&2
spindle=target/release/spindle
[ -f "$model" ] || { echo "[bench] no model at $model: run scripts/serve once to fetch the default model" >&2; exit 1; }
peer=$(scripts/build-llama-server.sh)

port_of() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {
  for _ in $(seq 600); do curl -sf "$1/health" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "[bench] $1 did not come up" >&2; return 1
}
run_bench() { # label url
  $spindle bench streams --url "$2" --label "$1" --concurrency 1,16 \
    --rounds "$rounds" --max-tokens "$max_tokens" --out "$out/$1-streams.json"
  $spindle bench followup --url "$2" --label "$1" --trials 5 --out "$out/$1-followup.json"
}

p=$(port_of)
echo "[bench] llama-server ($peer) on :$p, $threads threads" >&2
"$peer" -m "$model" --host 127.0.0.1 --port "$p" -t "$threads" -tb "$threads" -np 16 -c 32768 \
  --log-disable >/dev/null 2>&1 &
pid=$!; trap 'kill $pid 2>/dev/null || true' EXIT
wait_ready "http://127.0.0.1:$p"
run_bench llama-server "http://127.0.0.1:$p"
kill $pid; wait $pid 2>/dev/null || true

p=$(port_of)
echo "[bench] spindle worker on :$p, $threads threads" >&2
$spindle worker --model "$model" --port "$p" --threads "$threads" --max-seqs 16 >/dev/null 2>&1 &
pid=$!
wait_ready "http://127.0.0.1:$p"
run_bench spindle "http://127.0.0.1:$p"
kill $pid; wait $pid 2>/dev/null || true

python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
load = lambda n: json.loads((out / n).read_text())["results"]
s, l = load("spindle-streams.json"), load("llama-server-streams.json")
sf, lf = load("spindle-followup.json")[0], load("llama-server-followup.json")[0]
rows = []
print("\nratios (spindle / llama-server)")
for a, b in zip(s, l):
    r = a["tokens_per_s"] / b["tokens_per_s"]
    rows.append({"concurrency": a["concurrency"], "spindle_tok_s": a["tokens_per_s"], "llama_server_tok_s": b["tokens_per_s"], "ratio": r})
    print(f"  {a['concurrency']:>3} streams: {a['tokens_per_s']:7.1f} vs {b['tokens_per_s']:7.1f} tok/s  = {r:.2f}x")
print(f"  cached follow-up TTFT / cold TTFT: spindle {sf['ratio']:.3f} ({sf['warm_ttft_p50_ms']:.1f} / {sf['cold_ttft_p50_ms']:.1f} ms), llama-server {lf['ratio']:.3f}")
(out / "summary.json").write_text(json.dumps({"throughput": rows, "followup": {"spindle": sf, "llama_server": lf}}, indent=2))
print(f"wrote {out}/summary.json")
PY
