# rejuv developer tasks. Every target installs what it needs into .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch 2.13.0 is what CI uses; an unpinned install pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install test test-all test-browser lint format demo bench handoff clean \
	test-gpu bench-gpu digests bench-compare docs handoff-full bench-moe bench-inputs bench-torchrun dist

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
	$(BIN)/ruff check src tests bench docs
	$(BIN)/ruff format --check src tests bench docs

format: $(STAMP)
	$(BIN)/ruff format src tests bench docs
	$(BIN)/ruff check --fix src tests bench docs

DEMO := bench/handoff/demo

demo: $(STAMP)  ## rejuvenate the shipped over-trained toy checkpoint, diagnose, sweep α
	$(BIN)/rejuv fuse $(DEMO)/base $(DEMO)/sft --out .demo/fused --overwrite --alpha 0.5
	$(BIN)/rejuv diagnose $(DEMO)/base $(DEMO)/sft --candidate .demo/fused \
		--calib $(DEMO)/calib.jsonl --samples 128
	$(BIN)/rejuv sweep $(DEMO)/base $(DEMO)/sft --calib $(DEMO)/calib.jsonl --samples 128 \
		--generate --html .demo/sweep.html

bench: $(STAMP)  ## fuse vs I/O floor vs naive script; sweep vs separate runs (~300M params); README figures
	$(BIN)/python bench/fuse_bench.py --repeats 5
	$(BIN)/python bench/sweep_bench.py --samples 32
	$(BIN)/python bench/inputs_bench.py
	$(BIN)/python docs/bench_tables.py

bench-inputs: $(STAMP)  ## fuse from a LoRA adapter, DCP and FSDP shards vs convert-then-fuse (~2 min)
	$(BIN)/python bench/inputs_bench.py
	$(BIN)/python docs/bench_tables.py

# GPU checks. No .venv and no install: any $(PYTHON) with torch (CUDA build), transformers,
# safetensors, accelerate, typer, rich, huggingface_hub, pyyaml, xxhash and pytest runs them
# from the source tree. Without CUDA they stop at once with one line; DRY_RUN=1 runs the same
# code with the CPU standing in for the GPU (results go to *-dry-run.* files).
test-gpu:  ## CUDA vs CPU on the tiny fixtures (~1-2 min) -> bench/results/gpu_tests.txt
	PYTHONPATH=src DRY_RUN=$(DRY_RUN) $(PYTHON) tests/gpu_helpers.py

bench-gpu:  ## fuse on CUDA vs the I/O floor, ~1.5B-param pair (<4 min) -> bench/results/gpu_bench.md
	PYTHONPATH=src DRY_RUN=$(DRY_RUN) $(PYTHON) bench/gpu_bench.py $(BENCH_ARGS)

bench-torchrun: $(STAMP)  ## fuse on 1 process vs 2 torch.distributed ranks, ~1B-param pair (~5 min)
	$(BIN)/python bench/torchrun_bench.py
	$(BIN)/python docs/bench_tables.py

bench-moe: $(STAMP)  ## peak memory of diagnose / --select dormant: MoE vs dense, same size (~89M)
	$(BIN)/python bench/moe_memory.py
	$(BIN)/python docs/bench_tables.py

bench-compare: $(STAMP)  ## fuse wall time vs REV, alternated: make bench-compare REV=<commit>
	$(BIN)/python bench/compare_revs.py $(REV)

docs: $(STAMP)  ## rewrite the README's usage and bench blocks, and the JSON Schema files (from their sources)
	$(BIN)/python docs/usage.py
	$(BIN)/python docs/bench_tables.py
	$(BIN)/python docs/schemas.py

digests: $(STAMP)  ## rerun the recorded fuse/mask/diagnose cases, compare with bench/results/digests.json
	$(BIN)/python bench/digests.py

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $@

handoff: $(VENV)/.bench  ## toy SFT->RL experiment (round two, the 60-min grid) -> bench/handoff/results/
	$(BIN)/python bench/handoff/run.py

handoff-full: $(VENV)/.bench  ## round two's full pre-registered grid (the committed results; ~70 min idle)
	$(BIN)/python bench/handoff/run.py --full

# The sdist from the checkout, then the wheel from that sdist (python -m build's default), so a
# missing sdist file fails here; earlier builds are removed so dist/ holds this version only.
dist: $(STAMP)  ## sdist and wheel into dist/ (tests/test_release.py installs the same build)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf .demo .bench .handoff build dist src/*.egg-info
