# rejuv developer tasks. Every target installs what it needs into .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch 2.13.0 is what CI uses; an unpinned install pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install test test-all test-browser lint format demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)  ## fast suite (what CI runs)
	$(BIN)/python -m pytest -q -m "not slow and not gpu and not browser"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

test-browser: $(STAMP)  ## the diagnose HTML page in headless Chromium (apt-get install chromium)
	$(BIN)/python -m pytest -q -m browser

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

demo: $(STAMP)  ## build a tiny local model pair (no network) and fuse it
	$(BIN)/python bench/make_pair.py --preset demo --out .demo
	$(BIN)/rejuv fuse .demo/base .demo/sft --out .demo/fused --overwrite --recipe recipes/paper.yaml

bench: $(STAMP)  ## fuse vs I/O floor vs naive transformers script, ~300M params
	$(BIN)/python bench/fuse_bench.py

clean:
	rm -rf .demo .bench build dist src/*.egg-info
