#!/usr/bin/env bash
# Training and evaluation on the demo dataset (after scripts/demo_review.sh): an article-grouped
# split, a few CPU steps of open_clip continued pretraining by streaming the shards (the tiny
# architecture from random weights: no CLIP weights can be downloaded here), the trained
# checkpoint evaluated beside its random-init starting point, then the report again, now with
# the cluster map (05_clusters) and the evaluation (07_eval).
set -euo pipefail
DS=${1:-build/demo}
BIN=.venv/bin
STEPS_SAMPLES=${TRAIN_SAMPLES:-128}
export HF_HUB_OFFLINE=1
echo "== split: article-grouped train / validation / test"
"$BIN/biomedica" split "$DS"
echo "== train: biomedica-tiny-clip, 2 epochs of $STEPS_SAMPLES samples (caption + inline refs)"
"$BIN/biomedica" train "$DS" --model biomedica-tiny-clip --text caption+refs --epochs 2 \
  --samples-per-epoch "$STEPS_SAMPLES" --batch-size 16 --lr 5e-4 --warmup 0 --workers 1 \
  --log-every 4 --name demo --fresh
echo "== evaluate: random init vs the trained checkpoint, on the test articles"
"$BIN/biomedica" evaluate "$DS" --model biomedica-tiny-clip \
  --model "$DS/train/demo/checkpoints/epoch_2.pt" --name demo --no-progress
REPORT=${REPORT:-build/demo-report}
echo "== report: notebooks -> $REPORT/index.html (with 05_clusters and 07_eval)"
rm -rf "$REPORT"
"$BIN/biomedica" report "$DS" --out "$REPORT"
