"""Tune specs: distributions, the simplex (Dirichlet) sampler, and the checks that run before any trial."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from lmrec.config.base import SpecError
from lmrec.tuning.spec import RAW_SEP, Simplex, TuneSpec, load_tune_spec, raw_point, resolve_trial

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "tests" / "configs" / "tiny_tune.yaml"
KEYS = ["tasks.rating.weight", "tasks.click.weight", "tasks.related.weight"]


def _spec(**changes) -> dict:
    data = yaml.safe_load(TINY.read_text())
    if "params" in changes:  # the committed start points name the committed parameters
        data["search"] = {"kind": "optuna"}
    data.update(changes)
    return data


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**data, "base": str(TINY.parent / data["base"])}))
    return path


def test_simplex_is_dirichlet_and_sums_to_total():
    group = Simplex(type="simplex", keys=KEYS, concentration=[2.0, 1.0, 1.0], total=1.6)
    rng = np.random.default_rng(0)
    draws = np.array([group.weights(list(rng.uniform(size=3))) for _ in range(4000)])
    assert np.allclose(draws.sum(axis=1), 1.6)
    assert (draws > 0).all()
    # Dirichlet(2, 1, 1) means: alpha_i / sum(alpha), scaled by the total
    assert np.allclose(draws.mean(axis=0) / 1.6, [0.5, 0.25, 0.25], atol=0.02)


def test_points_round_trip_through_the_raw_coordinates():
    spec = TuneSpec.model_validate(_spec())
    point = {"optim.lr_heads": 0.02, "tasks.click.temperature": 0.1, "task_weights": [1.2, 0.3, 0.1]}
    raw = raw_point(spec, point)
    assert set(raw) == {"optim.lr_heads", "tasks.click.temperature"} | {f"task_weights{RAW_SEP}{i}" for i in range(3)}
    resolved = resolve_trial(spec, raw)
    assert [resolved[k] for k in KEYS] == pytest.approx([1.2, 0.3, 0.1])
    assert resolved["optim.epochs"] == 6  # fixed overrides ride along


def test_the_committed_specs_load():
    spec, base = load_tune_spec(TINY)
    assert base.name == "tiny_two_tower.yaml" and spec.scheduler.kind == "asha"
    spec, base = load_tune_spec(REPO / "tune" / "ml100k-task-weights.yaml")
    assert spec.objective == {"val_ndcg@10": 1.0, "val_rmse": -2.0}


@pytest.mark.parametrize("change, message", [
    ({"params": {"optim.lr_head": {"type": "uniform", "low": 0.01, "high": 0.1}}}, "not a job spec key"),
    ({"params": {"optim.lr_heads": {"type": "uniform", "low": 0.1, "high": 0.01}}}, "must be below"),
    ({"params": {"optim.lr_heads": {"type": "gaussian", "low": 0.1, "high": 0.01}}}, "does not match any"),
    ({"metric": "val_ndcg"}, "not reported per epoch"),
    ({"searcher": "optuna"}, "Extra inputs are not permitted"),
    ({"overrides": {"optim.lr_heads": 0.01}}, "both set"),
    ({"search": {"kind": "optuna", "points_to_evaluate": [{"optim.lr_heads": 0.01}]}}, "lacks"),
])
def test_mistakes_fail_before_any_trial(tmp_path, change, message):
    with pytest.raises(SpecError, match=message):
        load_tune_spec(_write(tmp_path, _spec(**change)))
