#!/usr/bin/env bash
# The review loop end to end on a demo dataset (make demo builds it first): embed (offline
# models), cluster, start Label Studio, push, a scripted reviewer (two experts through the
# HTTP API), pull, apply-labels, verify, export, stop. Needs .venv-labelstudio/ (`bash
# scripts/labelstudio_venv.sh`).
set -euo pipefail
DS=${1:-build/demo}
BIN=.venv/bin
HOME_LS=${BIOMEDICA_LABELSTUDIO_HOME:-build/demo-labelstudio}
PORT=${LABELSTUDIO_PORT:-8089}
K=${REVIEW_K:-8}
export HF_HUB_OFFLINE=1
LS=("$BIN/python" -m curation labelstudio)
REVIEW=("$BIN/python" -m curation review)
echo "== embed + cluster (k=$K) + proposals"
"$BIN/biomedica" embed "$DS" --workers 0 --no-progress
"$BIN/biomedica" cluster "$DS" --k "$K" --map pca --run demo-k"$K"
echo "== Label Studio on 127.0.0.1:$PORT"
# A fresh server home, as the dataset is fresh: the scripted experts sign up anew (an old home
# already has them, and their tokens were never stored), and no stale project lingers.
"${LS[@]}" stop --home "$HOME_LS" >/dev/null 2>&1 || true
rm -rf "$HOME_LS"
"${LS[@]}" start --home "$HOME_LS" --port "$PORT" --files-root "$(dirname "$DS")"
trap '"${LS[@]}" stop --home "$HOME_LS" >/dev/null' EXIT
echo "== push"
"${REVIEW[@]}" push "$DS" --clusters demo-k"$K" --home "$HOME_LS" --spot-checks 10
echo "== scripted review: two experts"
BIOMEDICA_LABELSTUDIO_HOME="$HOME_LS" "$BIN/python" -m curation.demo "$DS" demo-k"$K"
echo "== pull"
"${REVIEW[@]}" pull "$DS" --clusters demo-k"$K" --home "$HOME_LS"
echo "== apply-labels + verify + export"
"$BIN/python" -c "import sys; from biomedica_kit.cli.labels import apply_labels; \
apply_labels.main(sys.argv[1:])" "$DS"
"$BIN/biomedica" verify "$DS"
"$BIN/biomedica" export "$DS"
echo "== label distribution after review"
"$BIN/biomedica" query "$DS" "SELECT label_source, image_primary_label[1] AS primary_label, \
count(*) AS samples FROM figures GROUP BY ALL ORDER BY samples DESC"
