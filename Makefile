# claimbench: `make reproduce` (tiny scale end to end) and `make test` (ruff, snakemake --lint, pytest).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
SCALE ?= tiny
STAMP := $(VENV)/.installed

# Rules run `python -m ...`: the venv's interpreter must come first on PATH, and this
# checkout's packages first on the import path (also when the venv is shared by worktrees).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv reproduce test test-all lint format dryrun report clean

venv: $(STAMP)

# torch first, pinned to the CPU wheel (a bare `torch` would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -c "import torch; assert torch.version.cuda is None, 'a CUDA torch build was installed'"
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) reproduce_all --config scale=$(SCALE)
	@echo "Report: $(CURDIR)/reports/index.html   Store: $(CURDIR)/results/claimbench.duckdb"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/python tools/snakemake_lint.py

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile rules/

test: lint
	$(BIN)/python -m pytest -q

test-all: lint
	$(BIN)/python -m pytest -q -m ''

dryrun: $(STAMP)
	$(BIN)/snakemake -n --cores $(CORES) reproduce_all --config scale=$(SCALE)

report: $(STAMP)
	$(BIN)/claimbench report

clean:
	rm -rf data artifacts results/runs results/claimbench.duckdb reports/*.html logs .snakemake
