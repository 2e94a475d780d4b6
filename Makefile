# claimbench: `make reproduce` (tiny scale end to end) and `make test` (ruff, snakemake --lint, pytest).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
SCALE ?= tiny
STAMP := $(VENV)/.installed
# The torch build: cpu (default; laptops, CI, CPU nodes) or cuda (GPU nodes). EXTRAS: optional
# extras of pyproject.toml besides dev, e.g. `make venv TORCH=cuda EXTRAS=gpu` on a GPU node.
TORCH ?= cpu
EXTRAS ?=
TORCH_VERSION := 2.13.0
# PyTorch's own CPU wheels: on a stock package index `torch==2.13.0` is the CUDA build (Linux).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# TORCH=cuda: the stock index's CUDA build, or PyTorch's index for another CUDA version (a node
# whose driver is older than the default build's), e.g. https://download.pytorch.org/whl/cu126
TORCH_CUDA_INDEX ?=
# vLLM (OpenAI-compatible server) in a venv of its own: no vLLM release fits our pins.
VLLM_VENV := .venv-vllm
VLLM_VERSION ?= 0.32.0
comma := ,
PIP_EXTRAS := dev$(if $(strip $(EXTRAS)),$(comma)$(strip $(EXTRAS)))
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
INSTALL := torch=$(TORCH) extras=$(PIP_EXTRAS)
ifeq ($(filter $(TORCH),cpu cuda),)
$(error TORCH=$(TORCH) is not one of cpu, cuda)
endif
# `make venv TORCH=...` (or EXTRAS=...) on a venv installed otherwise installs again.
ifneq ($(filter command line,$(origin TORCH) $(origin EXTRAS)),)
ifneq ($(strip $(shell cat $(STAMP) 2>/dev/null)),$(INSTALL))
REINSTALL := FORCE
endif
endif

# Rules run `python -m ...`: the venv's interpreter must come first on PATH, and this
# checkout's packages first on the import path (also when the venv is shared by worktrees).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv reproduce unlock test test-all lint format dryrun report clean vllm-venv gpu-smoke FORCE

venv: $(STAMP)

# torch first, in the build TORCH names, then the project with its pinned dependencies.
# cpu: a torch wheel that pip's own configuration supplies without an index (a local wheel
# folder, find-links) is used as it is; otherwise PyTorch's CPU index (a bare `torch` from a
# stock index is a multi-GB CUDA build). cuda: the stock index's build; the check is that
# torch was built with CUDA, not that a GPU is visible (a login node has none).
$(STAMP): pyproject.toml $(REINSTALL)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(TORCH),cpu)
	if $(PIP) --dry-run --no-index --no-deps torch==$(TORCH_VERSION) >/dev/null 2>&1; then \
	  $(PIP) torch==$(TORCH_VERSION); \
	else \
	  $(PIP) --index-url $(TORCH_CPU_INDEX) torch==$(TORCH_VERSION); \
	fi
	$(PIP) -e '.[$(PIP_EXTRAS)]'
	$(BIN)/python -c "import torch; assert torch.version.cuda is None, \
	  'TORCH=cpu: a CUDA torch build was installed'"
else
	$(PIP) $(if $(TORCH_CUDA_INDEX),--index-url $(TORCH_CUDA_INDEX)) torch==$(TORCH_VERSION)
	$(PIP) -e '.[$(PIP_EXTRAS)]'
	$(BIN)/python -c "import torch; assert torch.version.cuda, 'TORCH=cuda: torch ' \
	  + torch.__version__ + ' is a CPU-only build (a CPU wheel from pip config? pip config list)'"
endif
	echo '$(INSTALL)' > $(STAMP)

# vLLM's OpenAI-compatible server for GPU nodes (`$(VLLM_VENV)/bin/vllm serve <model>`), in a
# venv of its own: its release pins (torch, transformers, compressed-tensors) differ from ours.
# 0.32.0 is the last release on torch 2.13.0, the project's torch.
vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check vllm==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/python -c "import torch, vllm; \
	  assert torch.version.cuda, 'vLLM needs the CUDA torch build'"
	touch $@

FORCE:

# A lock left by a killed run (kill -9, lost session) is removed first, and only when no
# Snakemake run or job is still going in this folder (tools/snakemake_unlock.py).
WORKFLOW := $(BIN)/snakemake --cores $(CORES) reproduce_all --config scale=$(SCALE)

reproduce: $(STAMP)
	$(BIN)/python tools/snakemake_unlock.py --quiet -- $(WORKFLOW)
	$(WORKFLOW)
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

# The paper scale's code path on micro models in the real architectures, in minutes, on one GPU
# (`make gpu-smoke`), or here on the CPU (`make gpu-smoke DEVICE=cpu`): tools/gpu_smoke.py.
DEVICE ?= cuda
gpu-smoke: $(STAMP)
	$(BIN)/python tools/gpu_smoke.py --device $(DEVICE)

unlock: $(STAMP)
	$(BIN)/python tools/snakemake_unlock.py -- $(WORKFLOW)

report: $(STAMP)
	$(BIN)/claimbench report

clean:
	rm -rf data artifacts results/runs results/claimbench.duckdb reports/*.html logs .snakemake
