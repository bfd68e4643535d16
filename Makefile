# graine: one target per stage. CONFIG picks the run, EXECUTOR where it runs (inline, local, slurm).
# Every target depends on `setup`, so a fresh clone needs nothing typed first.
SHELL := /bin/bash
CONFIG ?= configs/demo.yaml
EXECUTOR ?= local
ARGS ?=
# `make test` runs on 2 pytest workers: the Slurm tests (mostly waiting on jobs and walltimes) on one,
# in order, the rest beside them (tests/conftest.py groups them). TEST_WORKERS=0 runs one process.
TEST_WORKERS ?= 2
# Inside an environment that already has torch (a cluster module, an active venv or conda env),
# graine installs into it and leaves torch alone; otherwise it creates .venv with the CPU torch wheel.
HOST_PY := $(shell command -v python3 || command -v python)
USE_ACTIVE := $(shell [ ! -x .venv/bin/python ] && { [ -n "$$VIRTUAL_ENV$$CONDA_PREFIX" ] || [ -n "$$GRAINE_USE_ACTIVE_ENV" ]; } && $(HOST_PY) -c 'import torch' 2>/dev/null && echo 1)
ifeq ($(USE_ACTIVE),1)
PY := $(HOST_PY)
else
PY := .venv/bin/python
endif
GRAINE := $(PY) -m pipeline.cli
STAMP := .graine-setup.stamp
TORCH_PIN := torch==2.13.0
# Triton runs the kernel tests through its CPU interpreter here; on a cluster the module's own is kept.
TRITON_PIN := triton==3.9.0
export DS_ACCELERATOR ?= cpu
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED := 1

.PHONY: help setup demo corpus test test-fast lint clean-corpus tokenizer preprocess pretrain resume export evaluate status report plan bench slurm-up slurm-down clean delete-runs

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16
	@echo; echo "variables: CONFIG=$(CONFIG) EXECUTOR=$(EXECUTOR) ARGS='key=value ...'"

setup: $(STAMP)  ## create .venv (or use the active env with its torch) and install graine
$(STAMP): pyproject.toml
ifeq ($(USE_ACTIVE),1)
	$(PY) -m pip install -e '.[dev]'
else
	[ -x .venv/bin/python ] || $(HOST_PY) -m venv .venv
	# torch pinned in the same call as deepspeed: unpinned, it resolves to a multi-GB CUDA build.
	if .venv/bin/python -c 'import torch' 2>/dev/null; then .venv/bin/pip install -q $(TRITON_PIN) -e '.[dev]'; \
	else .venv/bin/pip install -q $(TORCH_PIN) $(TRITON_PIN) -e '.[dev]'; fi
endif
	touch $@

corpus: setup  ## generate the embedded multilingual demo corpus
	$(PY) -m data_prep.synthetic runs/demo-corpus

demo: setup corpus  ## the whole pipeline on the embedded default, on this machine
	$(GRAINE) run all -c $(CONFIG) --executor $(EXECUTOR) $(ARGS)
	$(GRAINE) status -c $(CONFIG) $(ARGS)
	$(GRAINE) report -c $(CONFIG) $(ARGS)

clean-corpus: setup  ## stage clean: normalise, language-id, filter, redact, dedup
	$(GRAINE) run clean -c $(CONFIG) --executor $(EXECUTOR) $(ARGS)

tokenizer: setup  ## stage tokenizer: SentencePiece + Hugging Face tokenizer
	$(GRAINE) run tokenizer -c $(CONFIG) --executor $(EXECUTOR) $(ARGS)

preprocess: setup  ## stage preprocess: token shards (Megatron mmap) and blend
	$(GRAINE) run preprocess -c $(CONFIG) --executor $(EXECUTOR) $(ARGS)

pretrain: setup  ## stage pretrain: DeepSpeed training (resumes if checkpoints exist)
	$(GRAINE) run pretrain -c $(CONFIG) --executor $(EXECUTOR) $(ARGS)

resume: pretrain  ## resume pretraining from the latest valid checkpoint (same as pretrain)

export: setup  ## stage export: a Hugging Face release of a checkpoint
	$(GRAINE) run export -c $(CONFIG) --executor $(EXECUTOR) $(ARGS)

evaluate: setup  ## stage evaluate: per-language perplexity, bits per byte (and lm-eval tasks) of the exports
	$(GRAINE) run evaluate -c $(CONFIG) --executor $(EXECUTOR) $(ARGS)

status: setup  ## where each stage of the run stands
	$(GRAINE) status -c $(CONFIG) $(ARGS)

report: setup  ## report/index.html and PNG figures of the run (loss, throughput, perplexity, data mix, lineage)
	$(GRAINE) report -c $(CONFIG) $(ARGS)

plan: setup  ## memory per GPU, time and GPU-hours of pretrain on the profile (e.g. ARGS='cluster.profile=jean-zay-a100')
	$(GRAINE) plan -c $(CONFIG) $(ARGS)

slurm-up:  ## install (first time) and start a local Slurm on this machine (NODES=2: two nodes)
	bash slurm/local-cluster/install.sh
	NODES=$(or $(NODES),1) bash slurm/local-cluster/start.sh

slurm-down:  ## stop the local Slurm (either mode)
	bash slurm/local-cluster/stop.sh

lint: setup  ## ruff, and the layer contracts of pyproject.toml (import-linter)
	$(PY) -m ruff check .
	$(PY) -c 'import sys; from importlinter.cli import lint_imports_command; sys.argv[0] = "lint-imports"; sys.exit(lint_imports_command())' --no-cache

# pytest exits 5 when it collects nothing: a filtered run with no tests is not a failure.
test: setup lint  ## lint and the whole test suite (real Slurm tests need `make slurm-up` or CI)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(ARGS) || [ $$? -eq 5 ]

test-fast: setup  ## tests not marked slow or slurm
	$(PY) -m pytest -q -m "not slow and not slurm" $(ARGS) || [ $$? -eq 5 ]

bench: setup  ## benchmarks (print figures; see README)
	@for b in tests/benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:  ## remove caches only (never data; the clean stage is `make clean-corpus`)
	rm -rf .pytest_cache .ruff_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

delete-runs:  ## delete runs/ (corpus, checkpoints, everything): needs CONFIRM=delete-my-runs
	@if [ "$(CONFIRM)" != "delete-my-runs" ]; then \
		echo "refusing: this deletes runs/ with every corpus, checkpoint and release in it."; \
		echo "run: make delete-runs CONFIRM=delete-my-runs"; exit 2; fi
	rm -rf runs
