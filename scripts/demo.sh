#!/usr/bin/env bash
# The main job end to end on the bundled sample: build shards, verify them.
# Run through `make demo` (which creates .venv and installs the package first).
set -euo pipefail
OUT=${1:-build/demo}
BIN=.venv/bin
rm -rf "$OUT"
echo "== build: data/sample/packages -> $OUT"
"$BIN/biomedica" build --source data/sample/packages --out "$OUT" --quiet
echo "== verify"
"$BIN/biomedica" verify "$OUT"
