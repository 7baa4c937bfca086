"""Every job spec in jobs/strategies/ runs end to end on a tiny ML-100K slice (60 users x 120 items, a random
2-layer BERT), through the same entry point as the real jobs run in-process (``train_local``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.artifacts.two_tower import load_artifact
from lmrec.training.data import prepare_data
from lmrec.training.local import train_local

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs" / "strategies"
# the tiny slice of tests/configs/tiny_two_tower.yaml; per-user split so every user has valid and test rows
TINY = {"data.max_users": 60, "data.max_items": 120, "model.encoder_init": "random-tiny", "model.dim": 16,
        "model.max_length": 16, "model.max_history": 32, "optim.epochs": 2, "optim.batch_size": 128,
        "optim.lr_heads": 0.01, "optim.encode_batch_size": 128, "optim.log_every_steps": 1000,
        "scaling.engine": "ddp", "early_stopping.patience": 5}
pytestmark = pytest.mark.usefixtures("one_torch_thread")
PER_USER = {"kind": "per_user_random", "test_frac": 0.2, "valid_frac": 0.1, "seed": 0}
# epoch 0 trains the heads, epoch 1 the encoder too (the shipped recipe's two stages, shortened)
ENCODER_STEPS = {"optim.lr_encoder": 1e-3, "optim.items_encoded_per_step": 4, "optim.encoder_start_epoch": 1}


def tiny_job(name: str, tmp_path: Path, **overrides) -> TrainSpec:
    over = {**TINY, "scaling.storage_path": str(tmp_path / "runs"), "name": f"tiny-{name}"}
    if name != "meta_learning":
        over["data.split"] = PER_USER
    else:  # the settings its loop reads (meta_learning refuses the others: they would be ignored)
        over = {k: v for k, v in over.items() if not k.startswith(("model.", "optim.", "tasks."))
                or k in ("model.encoder_init", "model.max_length", "optim.epochs", "optim.encode_batch_size")}
    if name in ("full", "lora", "progressive_unfreezing", "layer_sharing"):
        over.update(ENCODER_STEPS)
    return load_spec(TrainSpec, JOBS / f"{name}.yaml", {**over, **overrides})


@pytest.fixture(scope="module")
def tiny_data(data_dir):
    """The per-user tiny slice, prepared once (every two-tower strategy job trains on the same frames)."""
    return prepare_data(load_spec(TrainSpec, JOBS / "frozen.yaml", {**TINY, "data.split": PER_USER}))


@pytest.fixture(scope="module")
def teacher(tiny_data, tmp_path_factory):
    """The frozen job's artifact: the teacher that distillation and layer sharing start from."""
    out = tmp_path_factory.mktemp("teacher") / "frozen"
    res = train_local(tiny_job("frozen", out.parent), tiny_data, device="cpu", artifact_dir=out)
    assert res.recipe.trainable_params["encoder_trainable_params"] == 0
    return out


@pytest.mark.parametrize("name", ["full", "lora", "progressive_unfreezing", "layer_sharing", "curriculum",
                                  "distillation", "label_propagation"])
def test_strategy_job_trains_and_exports(name, tiny_data, teacher, tmp_path):
    over = {}
    if name in ("distillation", "layer_sharing"):
        over = {"strategy.teacher_artifact": str(teacher), "optim.lr_encoder": 1e-3}
        over["strategy.student_layers" if name == "distillation" else "strategy.layers"] = 1
    if name == "progressive_unfreezing":
        over = {"strategy.unit": "step", "strategy.every": 1}
    spec = tiny_job(name, tmp_path, **over)
    res = train_local(spec, tiny_data, device="cpu", artifact_dir=tmp_path / "artifact")
    assert len(res.epochs) == 2 and all(np.isfinite(e["loss"]) for e in res.epochs)
    assert np.isfinite(res.best["val_rmse"]) and res.best["val_rmse"] < 2.0
    art = load_artifact(tmp_path / "artifact")  # a plain, verified, servable two-tower artifact
    assert art.manifest["config"]["strategy"]["name"] == name
    enc = res.epochs[-1]["encoder_trainable_params"]
    if name == "lora":
        assert 0 < enc < 0.2 * res.epochs[-1]["encoder_params"]
        assert not any("lora" in k for k in art.model.state_dict())
    if name in ("distillation", "layer_sharing"):
        assert art.model.encoder.backbone.config.num_hidden_layers == 1
    if name == "distillation":
        assert res.epochs[-1]["loss_distill"] < res.epochs[0]["loss_distill"]
    if name == "label_propagation":
        assert "loss_propagated" in res.epochs[0]
    if name == "curriculum":
        assert res.epochs[0]["interactions"] < res.epochs[1]["interactions"] < len(tiny_data.train)  # growing pool
    scores = art.recommender.score_items(np.arange(3))
    np.testing.assert_allclose(scores, res.recommender().score_items(np.arange(3)), atol=1e-4)


def test_meta_learning_job_runs_its_own_loop(data_dir, tmp_path):
    spec = tiny_job("meta_learning", tmp_path, **{"strategy.tasks_per_batch": 8, "strategy.shots": [1, 5]})
    res = train_local(spec, device="cpu", artifact_dir=tmp_path / "meta")
    assert len(res.history) == 2 and res.metrics["cold_users"] > 0
    assert 0 <= res.metrics["ndcg@10_k5"] <= 1 and np.isfinite(res.metrics["rmse_k5"])
    assert (tmp_path / "meta" / "model.safetensors").exists()
