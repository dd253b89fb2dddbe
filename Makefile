# The two commands: `make demo` (end-to-end on data/sample/) and `make test` (the whole suite).
# Both create .venv/ at the repository root and install what they need into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
DEMO_OUT ?= build/demo

.PHONY: demo test lint install clean lab

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,ray,notebooks]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: install
	bash scripts/ensure_chromium.sh
	bash scripts/demo.sh $(DEMO_OUT)

# JupyterLab on notebooks/ with the demo dataset preselected (127.0.0.1, random token).
lab: install
	bash scripts/lab.sh $(DEMO_OUT)

test: install
	bash scripts/ensure_chromium.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf build .pytest_cache
