#!/usr/bin/env bash
# Long-context benchmark: one chat growing to TARGET tokens (about 310 new
# tokens a turn, every earlier token cached), on a Spindle worker and on
# llama.cpp's llama-server with the same GGUF, threads, context size, flash
# attention and KV cache types. For each CONFIGS entry (flash:k-type:v-type)
# both servers start once; the chain then alternates between them REPEAT
# times (noise on shared cores hits both alike). Prints, per config and
# context checkpoint, the median per-turn ms and worker RSS of each server
# and their ratio; writes every run's JSON and summary.json into bench-out/.
#   THREADS=2 REPEAT=3 TARGET=25000 CTX=26624 CONFIGS="off:f16:f16 on:f16:f16" \
#     scripts/bench-context.sh [MODEL.gguf]
# stories260K (the default model) was trained on 2,048 tokens; both servers
# take the larger CTX anyway (quality aside, the cost is what is measured):
# llama-server caps a slot at the trained length, so it gets
# --override-kv ARCH.context_length=int:CTX (ARCH: the GGUF's architecture,
# default llama).
# Its attention heads hold 8 numbers, too few for a quantized cache: give a
# q8_0 config with SmolLM2 (e.g. TARGET=8000 CTX=8192).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
repeat=${REPEAT:-3}
target=${TARGET:-25000}
ctx=${CTX:-26624}
new_tokens=${MAX_TOKENS:-256}
configs=${CONFIGS:-"off:f16:f16 on:f16:f16"}
arch=${ARCH:-llama}
model=${1:-../shared/models/stories260K.gguf}
[ -f "$model" ] || { echo "[bench] no model at $model" >&2; exit 1; }
out=bench-out; mkdir -p "$out"
rm -f "$out"/context-*.json

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

for config in $configs; do
  IFS=: read -r fa ctk ctv <<<"$config"
  tag="fa-$fa-k-$ctk-v-$ctv"
  lp=$(port_of)
  echo "[bench] $tag: llama-server on :$lp, spindle worker, $threads threads, ctx $ctx" >&2
  "$peer" -m "$model" --host 127.0.0.1 --port "$lp" -t "$threads" -tb "$threads" -np 1 -c "$ctx" \
    -fa "$fa" -ctk "$ctk" -ctv "$ctv" --override-kv "$arch.context_length=int:$ctx" --log-disable >/dev/null 2>&1 &
  lpid=$!; pids+=("$lpid")
  sp=$(port_of)
  $spindle worker --model "$model" --port "$sp" --threads "$threads" --max-seqs 1 --ctx-size "$ctx" \
    --flash-attn "$fa" --cache-type-k "$ctk" --cache-type-v "$ctv" >"$out/context-$tag-worker.log" 2>&1 &
  spid=$!; pids+=("$spid")
  wait_ready "http://127.0.0.1:$lp"
  wait_ready "http://127.0.0.1:$sp"
  run_chain() { # label url pid repetition
    $spindle bench context --url "$2" --label "$1" --pid "$3" --target-tokens "$target" \
      --max-tokens "$new_tokens" --out "$out/context-$tag-$1-$4.json"
  }
  for r in $(seq "$repeat"); do
    echo "[bench] $tag: repetition $r/$repeat" >&2
    if (( r % 2 )); then
      run_chain llama-server "http://127.0.0.1:$lp" "$lpid" "$r"; run_chain spindle "http://127.0.0.1:$sp" "$spid" "$r"
    else
      run_chain spindle "http://127.0.0.1:$sp" "$spid" "$r"; run_chain llama-server "http://127.0.0.1:$lp" "$lpid" "$r"
    fi
  done
  kill "$lpid" "$spid" 2>/dev/null || true
  wait "$lpid" "$spid" 2>/dev/null || true
done

python3 - "$out" "$repeat" "$configs" <<'PY'
import json, statistics, sys, pathlib
out, repeat, configs = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split()
checkpoints = [1000, 2000, 4000, 8000, 12000, 16000, 20000, 24000, 25000]
med = statistics.median
def turns(tag, label, r):
    return json.loads((out / f"context-{tag}-{label}-{r}.json").read_text())["results"]["turns"]
def at(ts, c):  # the first turn reaching c tokens
    return next((t for t in ts if t["context_tokens"] >= c), None)
summary = {}
for config in configs:
    fa, ctk, ctv = config.split(":")
    tag = f"fa-{fa}-k-{ctk}-v-{ctv}"
    print(f"\n{tag}: medians over {repeat} alternating repetitions")
    print(f"{'context':>8} {'spindle ms':>11} {'llama ms':>9} {'ratio':>6} {'spindle MB':>11} {'llama MB':>9}")
    rows = []
    for c in checkpoints:
        pts = {label: [at(turns(tag, label, r), c) for r in range(1, repeat + 1)]
               for label in ("spindle", "llama-server")}
        if any(p is None for ps in pts.values() for p in ps):
            continue
        ms = {k: med([p["ms"] for p in v]) for k, v in pts.items()}
        rss = {k: med([p["rss_mb"] or 0 for p in v]) for k, v in pts.items()}
        ctx_tokens = med([p["context_tokens"] for p in pts["spindle"]])
        rows.append({"checkpoint": c, "context_tokens": ctx_tokens, "spindle_ms": ms["spindle"],
                     "llama_server_ms": ms["llama-server"], "ratio": ms["spindle"] / ms["llama-server"],
                     "spindle_rss_mb": rss["spindle"], "llama_server_rss_mb": rss["llama-server"]})
        print(f"{ctx_tokens:>8.0f} {ms['spindle']:>11.1f} {ms['llama-server']:>9.1f} "
              f"{ms['spindle'] / ms['llama-server']:>6.2f} {rss['spindle']:>11.1f} {rss['llama-server']:>9.1f}")
    summary[tag] = rows
(out / "context-summary.json").write_text(json.dumps({"repeat": repeat, "configs": summary}, indent=2))
print(f"\nwrote {out}/context-summary.json")
PY
