# Set-up and everyday commands. `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU machines: keep torch at the CPU build. GPU users: TORCH_SPEC="torch" (see README) after installing CUDA torch.
TORCH_SPEC ?= torch==2.13.0
# pip's configured find-links folder (holds the local CPU torch wheel); uv does not read pip's configuration.
FIND_LINKS := $(shell $(PY) -m pip config get global.find-links 2>/dev/null || echo "")
UV_FLAGS := --python $(BIN)/python $(if $(FIND_LINKS),--find-links $(FIND_LINKS),)
export LMREC_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# local demo/test clusters listen on loopback only; see README "Ray authentication"
export RAY_AUTH_MODE ?= disabled

.PHONY: setup demo test test-fast test-heavy cluster-smoke docs bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip uv

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install $(UV_FLAGS) "$(TORCH_SPEC)"
	$(BIN)/uv pip install $(UV_FLAGS) "$(TORCH_SPEC)" -e ".[dev,bench]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/lmrec demo

# the default suite (about 15 min on 2 cores); the minutes-long fault-injection tests run with `make test-heavy`
test: setup
	$(BIN)/python -m pytest -q -m "not heavy"

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# DeepSpeed ZeRO-2 crash-resume, SIGKILL mid-checkpoint, replica kill under load, continuous fine-tuning
test-heavy: setup
	$(BIN)/python -m pytest -q -m heavy

# two Ray nodes (separate `ray start` processes on loopback), a training job through the Jobs API, the worker node
# killed after the first checkpoint and replaced: the job resumes and matches an uninterrupted run (val RMSE/MAE
# within 0.03; about 6 min; CI runs it)
cluster-smoke: setup
	LMREC_MULTINODE=1 $(BIN)/python -m pytest -q -s tests/integration/test_multinode.py

# docs/reference.md from the pydantic schemas (tests/configs/test_reference_docs.py checks it is current)
docs: setup
	$(BIN)/python -m lmrec.config.reference

bench: setup
	$(BIN)/python benchmarks/baselines.py

clean:
	rm -rf $(VENV) demo-report
