"""Every committed spec (jobs/, serve/, tune/) says how to run it and validates before any cluster time is spent."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec

ROOT = Path(__file__).resolve().parents[2]


def _runs_with(path: Path, command: str) -> bool:
    """The spec's first line (the command that runs it) is ``# lmrec <command> ...``: that picks its schema."""
    return path.read_text().splitlines()[0].startswith(f"# lmrec {command} ")


TOP_SPECS = sorted((ROOT / "jobs").glob("*.yaml")) + sorted((ROOT / "jobs" / "tuned").glob("*.yaml")) + sorted(
    (ROOT / "jobs" / "examples").glob("*.yaml"))
ENSEMBLE_SPECS = [p for p in TOP_SPECS if _runs_with(p, "ensemble")]
BATCH_SPECS = [p for p in TOP_SPECS if _runs_with(p, "recommend-batch")]
JOB_SPECS = [p for p in TOP_SPECS if p not in ENSEMBLE_SPECS + BATCH_SPECS]
STRATEGY_SPECS = sorted((ROOT / "jobs" / "strategies").glob("*.yaml"))
SERVE_CONFIGS = sorted((ROOT / "serve").glob("*.yaml"))
TUNE_SPECS = sorted((ROOT / "tune").glob("*.yaml"))
ALL = TOP_SPECS + STRATEGY_SPECS + SERVE_CONFIGS + TUNE_SPECS


def test_there_are_specs():
    assert JOB_SPECS and ENSEMBLE_SPECS and BATCH_SPECS and SERVE_CONFIGS


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(ROOT)))
def test_first_line_is_the_command_that_runs_it(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("lmrec " in first or "ray job submit" in first or "serve " in first), first


@pytest.mark.parametrize("path", JOB_SPECS, ids=lambda p: p.name)
def test_job_specs_validate(path):
    spec = load_spec(TrainSpec, path)
    assert spec.name


@pytest.mark.parametrize("path", ENSEMBLE_SPECS, ids=lambda p: p.name)
def test_ensemble_specs_validate(path):
    from lmrec.config.ensemble import MEMBERS, EnsembleSpec

    spec = load_spec(EnsembleSpec, path)
    assert set(spec.members) <= set(MEMBERS) and len(spec.members) >= 2 and spec.output_dir


@pytest.mark.parametrize("path", BATCH_SPECS, ids=lambda p: p.name)
def test_recommend_batch_specs_validate(path):
    from lmrec.config.recommend_batch import RecommendBatchSpec
    from lmrec.config.shipped import spec_kind

    spec = load_spec(RecommendBatchSpec, path)
    assert spec.k >= 1 and spec.artifact and spec.output and spec_kind(path) == "recommend-batch"


@pytest.mark.parametrize("path", STRATEGY_SPECS, ids=lambda p: p.name)
def test_strategy_specs_validate(path):
    spec = load_spec(TrainSpec, path)
    assert spec.strategy.name == path.stem


@pytest.mark.parametrize("path", TUNE_SPECS, ids=lambda p: p.name)
def test_tune_specs_validate(path):
    from lmrec.tuning.spec import load_tune_spec

    spec, base = load_tune_spec(path)  # also validates the base job spec with every parameter at a probe value
    assert base.is_file() and spec.params


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_configs_validate(path):
    from lmrec.serving.cli import load_serve_config

    load_serve_config(path)


def test_deepspeed_configs_are_json():
    import json

    configs = sorted((ROOT / "jobs" / "deepspeed").glob("*.json"))
    assert {p.name for p in configs} >= {"zero2.json", "zero3.json"}
    for p in configs:
        cfg = json.loads(p.read_text())
        assert "zero_optimization" in cfg
