#!/usr/bin/env bash
# The search server on a demo dataset (default build/demo, made by scripts/demo.sh): embed it
# with the offline default models, index it, start `biomedica serve` on a free port of
# 127.0.0.1, search by text and by image through the JSON API, then stop (KEEP=1 keeps it
# serving the search page until Ctrl-C).
set -euo pipefail
DS=${1:-build/demo}
BIN=.venv/bin
export HF_HUB_OFFLINE=1
[ -f "$DS/manifest.json" ] || { echo "no dataset at $DS: run scripts/demo.sh first" >&2; exit 1; }
echo "== embed $DS (torchvision:mobilenet_v2 + all-MiniLM-L6-v2, offline)"
"$BIN/biomedica" embed "$DS" --no-progress
echo "== index $DS"
"$BIN/biomedica" index "$DS"
LOG=$(mktemp)
"$BIN/biomedica" serve "$DS" --port 0 2>"$LOG" &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; rm -f "$LOG" "$LOG.img" "$LOG.json"' EXIT
URL=""
for _ in $(seq 1 300); do
  URL=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$LOG" || true)
  [ -n "$URL" ] && curl -sf "$URL/health" >/dev/null && break
  kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.2
done
echo "== serving on $URL/"
echo "== text search: phylogenetic tree (hybrid)"
curl -sf "$URL/search?q=phylogenetic+tree&mode=hybrid&k=3" > "$LOG.json"
"$BIN/python" -c "
import json, sys
res = json.load(open(sys.argv[1]))
for r in res['results']:
    print(f\"  {r['score']:.4f}  {r['key']}  {(r['caption'] or '')[:70]}\")
" "$LOG.json"
KEY=$("$BIN/python" -c "import json, sys; print(json.load(open(sys.argv[1]))['results'][0]['key'])" "$LOG.json")
echo "== image search: the first result's own image ($KEY)"
curl -sf "$URL/samples/$KEY/image" -o "$LOG.img"
curl -sf -F "image=@$LOG.img" -F k=3 "$URL/search/image" > "$LOG.json"
"$BIN/python" -c "
import json, sys
for r in json.load(open(sys.argv[1]))['results']:
    print(f\"  {r['score']:.4f}  {r['key']}\")
" "$LOG.json"
if [ "${KEEP:-0}" = 1 ]; then
  echo "== the search page: $URL/ (Ctrl-C stops)"
  wait "$PID"
fi
