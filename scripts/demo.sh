#!/usr/bin/env bash
# The main job end to end on the bundled sample: build shards, verify them, export the
# metadata and publish the analysis notebooks as an HTML report (build/demo-report/).
# Run through `make demo` (which creates .venv and installs the package first).
set -euo pipefail
OUT=${1:-build/demo}
BIN=.venv/bin
rm -rf "$OUT"
echo "== build: data/sample/packages -> $OUT"
"$BIN/biomedica" build --source data/sample/packages --out "$OUT" --quiet
echo "== verify"
"$BIN/biomedica" verify "$OUT"
echo "== export: metadata/*.parquet"
"$BIN/biomedica" export "$OUT"
REPORT=${REPORT:-build/demo-report}
echo "== report: notebooks -> $REPORT/index.html"
rm -rf "$REPORT"
"$BIN/biomedica" report "$OUT" --out "$REPORT"
