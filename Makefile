# rejuv developer tasks. Every target installs what it needs into .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch 2.13.0 is what CI uses; an unpinned install pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install test test-all test-browser lint format demo bench handoff clean

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

DEMO := bench/handoff/demo

demo: $(STAMP)  ## rejuvenate the shipped over-trained toy checkpoint and diagnose before/after
	$(BIN)/rejuv fuse $(DEMO)/base $(DEMO)/sft --out .demo/fused --overwrite --alpha 0.5
	$(BIN)/rejuv diagnose $(DEMO)/base $(DEMO)/sft --candidate .demo/fused \
		--calib $(DEMO)/calib.jsonl --samples 128

bench: $(STAMP)  ## fuse vs I/O floor vs naive transformers script, ~300M params
	$(BIN)/python bench/fuse_bench.py

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $@

handoff: $(VENV)/.bench  ## toy SFT->RL experiment, ~20 min on 2 CPU cores -> bench/handoff/results/
	$(BIN)/python bench/handoff/run.py

clean:
	rm -rf .demo .bench .handoff build dist src/*.egg-info
