#!/usr/bin/env bash
# Label Studio 1.23.2 in its own virtual environment (.venv-labelstudio/ at the repository
# root), then a migrated template data dir inside it (curation/server.py copies it for every
# new server: seconds instead of the first start's migrations).
# Why its own environment: label-studio pins Django 5.2, DRF 3.17.2, label-studio-sdk 2.1.2
# and numpy<2.3, which the project's .venv (numpy 2.4) cannot hold; the project talks to it
# over HTTP only. Idempotent: quiet and quick when both are there. Run by `make labelstudio`.
set -euo pipefail
PY=${PY:-python3}
VENV=${BIOMEDICA_LABELSTUDIO_VENV:-.venv-labelstudio}
STAMP="$VENV/.installed-label-studio-1.23.2"
if [ ! -f "$STAMP" ]; then
    echo "labelstudio_venv: installing label-studio==1.23.2 into $VENV (a few minutes)"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "label-studio==1.23.2"
    touch "$STAMP"
fi
if [ ! -f "$VENV/template-data/label_studio.sqlite3" ]; then
    echo "labelstudio_venv: migrating a template data dir (once)"
    BIOMEDICA_LABELSTUDIO_VENV="$VENV" .venv/bin/python -m curation.server template >/dev/null
fi
