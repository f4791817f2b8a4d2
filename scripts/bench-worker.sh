#!/usr/bin/env bash
# Side-by-side benchmark of a Spindle worker and llama.cpp's llama-server on
# the same GGUFs with the same thread count, in one run. For each model both
# servers start once; the benchmark then alternates between them REPEAT
# times, so a noisy machine (shared cores) hits both alike, and the summary
# uses medians. Per repetition: `spindle bench streams` (1 and 16 streams),
# `followup` (cached 1,000-token history vs cold) and `prefill` (PREFILL
# unique 1,000-token prompts at once: the batched ceiling the build's
# kernels reach).
# Then, on Spindle alone and the first model only, 16 streams with half of
# them constrained by a JSON schema against none (`spindle bench structured`).
# Prints one table with a row per model and writes JSON into bench-out/.
#   THREADS=2 REPEAT=5 ROUNDS=2 MAX_TOKENS=128 PREFILL=8 scripts/bench-worker.sh [MODEL.gguf ...]
# e.g. scripts/bench-worker.sh ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf "$(scripts/fetch-gemma.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
repeat=${REPEAT:-5}
rounds=${ROUNDS:-2}
max_tokens=${MAX_TOKENS:-128}
structured_seconds=${STRUCTURED_SECONDS:-8}
prefill=${PREFILL:-8}
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  models=(../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf)
  [ -f "${models[0]}" ] || models=("${SPINDLE_CACHE_DIR:-$HOME/.cache/spindle}/SmolLM2-135M-Instruct.Q4_1.gguf")
fi
for m in "${models[@]}"; do
  [ -f "$m" ] || { echo "[bench] no model at $m (scripts/serve fetches the default, scripts/fetch-gemma.sh Gemma)" >&2; exit 1; }
done
out=bench-out; mkdir -p "$out"

# `spindle bench` exists only in builds with the bench feature.
cargo build --release --locked --features bench >&2
spindle=target/release/spindle
peer=$(scripts/build-llama-server.sh)

port_of() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {
  for _ in $(seq 600); do curl -sf "$1/health" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "[bench] $1 did not come up" >&2; return 1
}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

run_bench() { # label url repetition dir
  $spindle bench streams --url "$2" --label "$1" --concurrency 1,16 \
    --rounds "$rounds" --max-tokens "$max_tokens" --out "$4/$1-streams-$3.json"
  $spindle bench followup --url "$2" --label "$1" --trials 5 --out "$4/$1-followup-$3.json"
  $spindle bench prefill --url "$2" --label "$1" --concurrency "$prefill" --trials 1 --out "$4/$1-prefill-$3.json"
}

first=1
for model in "${models[@]}"; do
  dir="$out/$(basename "$model" .gguf)"; rm -rf "$dir"; mkdir -p "$dir"
  # Idle servers cost nothing, so both stay up for the model's whole run.
  lp=$(port_of)
  echo "[bench] $model: llama-server ($peer) on :$lp, $threads threads" >&2
  "$peer" -m "$model" --host 127.0.0.1 --port "$lp" -t "$threads" -tb "$threads" -np 16 -c 32768 \
    --log-disable >/dev/null 2>&1 &
  lpid=$!; pids+=("$lpid")
  sp=$(port_of)
  echo "[bench] $model: spindle worker on :$sp, $threads threads" >&2
  $spindle worker --model "$model" --port "$sp" --threads "$threads" --max-seqs 16 >/dev/null 2>&1 &
  spid=$!; pids+=("$spid")
  wait_ready "http://127.0.0.1:$lp"
  wait_ready "http://127.0.0.1:$sp"
  for r in $(seq "$repeat"); do
    echo "[bench] $(basename "$model"): repetition $r/$repeat" >&2
    # Alternate which server goes first so neither always follows the other.
    if (( r % 2 )); then
      run_bench llama-server "http://127.0.0.1:$lp" "$r" "$dir"; run_bench spindle "http://127.0.0.1:$sp" "$r" "$dir"
    else
      run_bench spindle "http://127.0.0.1:$sp" "$r" "$dir"; run_bench llama-server "http://127.0.0.1:$lp" "$r" "$dir"
    fi
  done
  # Grammar-constrained output has no llama-server counterpart here: Spindle only.
  if (( first )); then
    $spindle bench structured --url "http://127.0.0.1:$sp" --streams 16 --seconds "$structured_seconds" \
      --repeat "$repeat" --max-tokens "$max_tokens" --out "$dir/spindle-structured.json"
  fi
  first=0
  kill "$lpid" "$spid" 2>/dev/null || true
  wait "$lpid" "$spid" 2>/dev/null || true
done

python3 - "$out" "$repeat" "${models[@]}" <<'PY'
import json, pathlib, re, statistics, sys
out, repeat, models = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
med = statistics.median
summary = {"repeat": repeat, "models": []}
print(f"\nmedians over {repeat} alternating repetitions (spindle vs llama-server)")
head = (f"{'model':<32} {'quant':<7} {'16 streams tok/s':>22} {'1 stream tok/s':>20} "
        f"{'prefill ceiling tok/s':>24} {'16 streams / ceiling':>21}")
print(head)
for model in models:
    stem = pathlib.Path(model).name.removesuffix(".gguf")
    d = out / stem
    load = lambda name: json.loads((d / name).read_text())["results"]
    m = re.search(r"(?i)(i?q\d_[0-9a-z_]+|bf16|f16|f32)$", stem)
    quant = m.group(1).upper() if m else "?"
    row = {"model": stem, "quant": quant, "throughput": []}
    for i, c in enumerate(r["concurrency"] for r in load("spindle-streams-1.json")):
        s = [load(f"spindle-streams-{r}.json")[i]["tokens_per_s"] for r in range(1, repeat + 1)]
        l = [load(f"llama-server-streams-{r}.json")[i]["tokens_per_s"] for r in range(1, repeat + 1)]
        row["throughput"].append({"concurrency": c, "spindle_tok_s": s, "llama_server_tok_s": l,
                                  "ratio_of_medians": med(s) / med(l),
                                  "median_pair_ratio": med([a / b for a, b in zip(s, l)])})
    for label in ("spindle", "llama-server"):
        runs = [load(f"{label}-followup-{r}.json")[0] for r in range(1, repeat + 1)]
        row.setdefault("followup", {})[label] = {
            k: med([x[k] for x in runs]) for k in ("cold_ttft_p50_ms", "warm_ttft_p50_ms", "ratio")}
        pre = [load(f"{label}-prefill-{r}.json")[0]["prompt_tokens_per_s"] for r in range(1, repeat + 1)]
        row.setdefault("prefill_tok_s", {})[label] = pre
    by = {t["concurrency"]: t for t in row["throughput"]}
    cell = lambda t: (f"{med(t['spindle_tok_s']):6.1f} / {med(t['llama_server_tok_s']):6.1f} "
                      f"{t['ratio_of_medians']:.2f}x")
    ps, pl = (med(row["prefill_tok_s"][k]) for k in ("spindle", "llama-server"))
    served = med(by[16]["spindle_tok_s"]) / ps if 16 in by else float("nan")
    row["served_over_ceiling"] = served
    print(f"{stem[:32]:<32} {quant:<7} {cell(by[16]) if 16 in by else '-':>22} "
          f"{cell(by[1]) if 1 in by else '-':>20} {ps:9.1f} / {pl:9.1f} {ps / pl:.2f}x {served:20.2f}")
    for label, f in row["followup"].items():
        print(f"{'':<32} {label}: cached follow-up TTFT / cold {f['ratio']:.3f} "
              f"({f['warm_ttft_p50_ms']:.1f} / {f['cold_ttft_p50_ms']:.1f} ms)")
    if (d / "spindle-structured.json").exists():
        row["structured"] = load("spindle-structured.json")
    summary["models"].append(row)
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(f"wrote {out}/summary.json")
PY
