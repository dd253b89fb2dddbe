#!/usr/bin/env bash
# Label Studio (pyproject.toml's `labelstudio` extra: 1.23.2 with its sdk 2.1.2) in its own
# virtual environment (.venv-labelstudio/ at the repository root), then a migrated template
# data dir inside it (curation/server.py copies it for every new server: seconds instead of the
# first start's migrations).
# Why its own environment: label-studio pins Django 5.2, DRF 3.17.2, label-studio-sdk 2.1.2
# and numpy<2.3, which the project's .venv (numpy 2.4) cannot hold; the project talks to it
# over HTTP only. Idempotent: quiet and quick when both are there. Run by `make labelstudio`.
set -euo pipefail
PY=${PY:-python3}
VENV=${BIOMEDICA_LABELSTUDIO_VENV:-.venv-labelstudio}
# The pins are declared once, as pyproject.toml's `labelstudio` extra.
PINS=$("$PY" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))
["project"]["optional-dependencies"]["labelstudio"]))')
STAMP="$VENV/.installed-$(echo "$PINS" | sha256sum | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
    echo "labelstudio_venv: installing $PINS into $VENV (a few minutes)"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    # shellcheck disable=SC2086 - one word per pin
    "$VENV/bin/pip" install -q $PINS
    rm -f "$VENV"/.installed-* && touch "$STAMP"
fi
if [ ! -f "$VENV/template-data/label_studio.sqlite3" ]; then
    echo "labelstudio_venv: migrating a template data dir (once)"
    BIOMEDICA_LABELSTUDIO_VENV="$VENV" .venv/bin/python -m curation.server template >/dev/null
fi
