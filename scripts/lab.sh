#!/usr/bin/env bash
# `make lab`: JupyterLab on notebooks/ with a dataset preselected (default build/demo, built
# from the bundled sample first if it is not there yet), on 127.0.0.1 with a random token.
set -euo pipefail
DS=${1:-build/demo}
BIN=.venv/bin
if [ ! -f "$DS/manifest.json" ]; then
    echo "== $DS missing: building it from data/sample/packages"
    "$BIN/biomedica" build --source data/sample/packages --out "$DS" --quiet
    "$BIN/biomedica" export "$DS"
fi
exec "$BIN/python" -m biomedica_kit.cli.lab "$DS"
