"""The Ray Train harness end to end on 2 CPU workers: a real worker crash mid-run, resume from the latest
checkpoint (DDP and DeepSpeed ZeRO-2), and an exported artifact that reloads to the trained model's predictions.

The crash is real: ``LMREC_FAULT_INJECTION`` makes rank 1 ``os._exit(1)`` in epoch 1, once (a marker file
disarms it), and Ray's ``FailureConfig`` restarts the worker group, which must continue at epoch 1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.artifacts.two_tower import load_artifact
from lmrec.training.data import prepare_data
from lmrec.training.ray_train import FAULT_ENV, TrainResult, main_train, train
from lmrec.training.recipe import TwoTowerRecipe

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "tests" / "configs" / "tiny_two_tower.yaml"
INVALID_SPEC = REPO / "tests" / "configs" / "invalid_two_tower.yaml"
ZERO2 = REPO / "jobs" / "deepspeed" / "zero2.json"


def tiny_spec(tmp_path: Path, **overrides) -> TrainSpec:
    return load_spec(TrainSpec, SPEC, {"scaling.storage_path": str(tmp_path / "runs"), **overrides})


def assert_resumed_after_crash(result: TrainResult) -> None:
    """The crash happened, and the restarted group continued at epoch 1 from epoch 0's checkpoint."""
    run = Path(result.run_path)
    assert (run / ".fault_injected").read_text().startswith("killed rank 1 in epoch 1")
    assert [int(h["epoch"]) for h in result.history] == [0, 1, 2]
    # epoch 0 ran in the first attempt; epochs 1 and 2 in the restarted group, which started at epoch 1, not 0
    assert [int(h["resumed_at_epoch"]) for h in result.history] == [0, 1, 1]
    assert int(result.metrics["epoch"]) == 2 and int(result.metrics["resumed_at_epoch"]) == 1
    assert Path(result.checkpoint_path).name == "epoch_0002"
    kept = sorted(p.name for p in run.glob("epoch_*"))
    assert "epoch_0002" in kept and len(kept) <= 2, kept  # CheckpointConfig(num_to_keep=2)
    assert all(np.isfinite(h["loss"]) and h["steps"] > 0 for h in result.history)


def assert_artifact_matches(result: TrainResult, spec: TrainSpec) -> tuple[object, object]:
    """The artifact reloads (sha256-verified) and scores the validation split exactly as training measured it."""
    data = prepare_data(spec)
    artifact = load_artifact(result.artifact_path)
    assert artifact.manifest["dataset_fingerprint"] == data.fingerprint
    valid = data.valid
    pred = artifact.recommender.predict(valid["user_idx"].to_numpy(), valid["item_idx"].to_numpy())
    rmse = float(np.sqrt(np.mean((pred - valid["rating"].to_numpy(np.float32)) ** 2)))
    assert rmse == pytest.approx(result.best_metrics["val_rmse"], abs=1e-5)
    return data, artifact


def test_invalid_spec_fails_before_any_cluster_time(capsys):
    import ray

    was_up = ray.is_initialized()
    start = time.perf_counter()
    assert main_train(str(INVALID_SPEC), {}, resume=True) == 2
    err = capsys.readouterr().err
    assert "optim.learning_rate" in err and "scaling.num_workers" in err and "Traceback" not in err
    assert ray.is_initialized() == was_up and time.perf_counter() - start < 10


def test_missing_deepspeed_config_is_a_spec_error(capsys, tmp_path):
    overrides = {"scaling.engine": "deepspeed", "scaling.deepspeed_config": "no/such/zero9.json",
                 "scaling.storage_path": str(tmp_path)}
    assert main_train(str(SPEC), overrides, resume=True) == 2
    assert "no/such/zero9.json" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was started or written


@pytest.mark.slow
def test_ddp_crash_resume_and_artifact(ray_local, tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path, **{"name": "ddp-crash"})
    monkeypatch.setenv(FAULT_ENV, json.dumps({"epoch": 1, "rank": 1}))
    result = train(spec, spec_path=SPEC)
    assert_resumed_after_crash(result)
    data, artifact = assert_artifact_matches(result, spec)

    # the same predictions as the trained model itself, rebuilt from the checkpoint of the exported epoch
    best = int(result.best_metrics["epoch"])
    recipe = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    recipe.load_checkpoint(str(Path(result.run_path) / f"epoch_{best:04d}"))
    users = np.repeat(np.arange(data.n_users), 3)
    items = np.random.default_rng(0).integers(0, data.n_items, len(users))
    np.testing.assert_allclose(artifact.recommender.predict(users, items),
                               recipe.as_recommender().predict(users, items), rtol=0, atol=1e-5)
    np.testing.assert_allclose(artifact.recommender.score_items(np.arange(5)),
                               recipe.as_recommender().score_items(np.arange(5)), rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.heavy
def test_deepspeed_zero2_crash_resume_and_artifact(ray_local, tmp_path, monkeypatch):
    assert json.loads(ZERO2.read_text())["zero_optimization"]["stage"] == 2
    spec = tiny_spec(tmp_path, **{"name": "ds-crash", "scaling.engine": "deepspeed",
                                  "scaling.deepspeed_config": str(ZERO2)})
    monkeypatch.setenv(FAULT_ENV, json.dumps({"epoch": 1, "rank": 1}))
    result = train(spec, spec_path=SPEC)
    assert_resumed_after_crash(result)
    # every rank wrote its ZeRO shard into the same checkpoint folder
    shards = sorted(p.name for p in Path(result.checkpoint_path).rglob("*optim_states.pt"))
    assert len(shards) == 2, shards
    assert_artifact_matches(result, spec)
