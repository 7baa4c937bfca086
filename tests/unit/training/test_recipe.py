"""Recipe: local training end to end, batches/sharding, checkpoint resume, DeepSpeed one step on CPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.training.local import train_local
from lmrec.training.recipe import TwoTowerRecipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_two_tower import data_for, one_thread, tiny_spec  # noqa: E402,F401  (one_thread: autouse)

ROOT = Path(__file__).resolve().parents[3]


def test_job_spec_validates():
    spec = load_spec(TrainSpec, ROOT / "jobs" / "ml100k-minilm-multitask.yaml")
    assert spec.data.split.kind == "ml100k_canonical" and spec.tasks.rating.weight > 0
    assert spec.early_stopping.metric == "val_rmse"
    first = (ROOT / "jobs" / "ml100k-minilm-multitask.yaml").read_text().splitlines()[:2]
    assert first == ["# lmrec train jobs/ml100k-minilm-multitask.yaml",
                     "# ray job submit --working-dir . -- lmrec train jobs/ml100k-minilm-multitask.yaml"]
    with pytest.raises(ValueError):
        TrainSpec.model_validate({"optim": {"epoch": 3}})  # typo -> error
    with pytest.raises(ValueError):
        TrainSpec.model_validate({"early_stopping": {"metric": "val_ndcg@10", "mode": "min"}})


def test_batches_shard_and_shuffle():
    data = data_for(tiny_spec())
    full = np.concatenate([b["item_idx"] for b in data.iter_train_batches(0, 50, 1)])
    assert len(full) == len(data.train)
    shards = [np.concatenate([b["user_idx"] * 1000 + b["item_idx"] for b in
                              data.iter_train_batches(0, 50, 1, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(np.intersect1d(shards[0], shards[1])) == 0
    assert sum(map(len, shards)) == len(data.train)
    e0 = next(data.iter_train_batches(0, 50, 1))["item_idx"]
    e1 = next(data.iter_train_batches(1, 50, 1))["item_idx"]
    assert not np.array_equal(e0, e1)
    assert set(next(data.iter_train_batches(0, 50, 1))) == {"user_idx", "item_idx", "rating"}


def test_train_local_learns_and_stops():
    spec = tiny_spec(optim={"epochs": 4, "lr_heads": 0.05}, early_stopping={"patience": 4})
    data = data_for(spec)
    res = train_local(spec, data, device="cpu")
    val = [e["val_rmse"] for e in res.epochs]
    assert len(val) == 4 and min(val) < val[0]
    mean_rmse = float(np.sqrt(np.mean((data.valid["rating"] - data.train["rating"].mean()) ** 2)))
    assert min(val) < mean_rmse  # better than predicting the global mean
    assert res.best["val_rmse"] == pytest.approx(min(val))
    assert "val_ndcg@10" in res.epochs[-1] and res.epochs[-1]["interactions_per_s"] > 0


def test_checkpoint_resume(tmp_path):
    spec = tiny_spec()
    data = data_for(spec)
    a = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    a.train_epoch(0, data.iter_train_batches(0, 64, 0))
    a.validate()
    a.save_checkpoint(str(tmp_path))
    b = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    assert b.load_checkpoint(str(tmp_path)) == 1
    assert b.best == a.best
    users, items = np.arange(10), np.arange(10)
    np.testing.assert_allclose(a.as_recommender().predict(users, items), b.as_recommender().predict(users, items))
    # optimizer state came back too: one more identical step keeps them identical
    batch = list(data.iter_train_batches(1, 64, 0))[:1]
    for r in (a, b):
        r.spec = r.spec.model_copy(update={"optim": r.spec.optim.model_copy(update={"items_encoded_per_step": 0})})
        r.train_module.eval()
    a.train_epoch(1, iter(batch))
    b.train_epoch(1, iter(batch))
    torch.testing.assert_close(a.model.item_tower.id_embedding.weight, b.model.item_tower.id_embedding.weight)


@pytest.mark.slow
@pytest.mark.timeout(600)  # a hang guard: ~25 s on an idle machine, 3 min seen at load 15
def test_deepspeed_engine_one_step_cpu(monkeypatch, tmp_path):
    import importlib

    import torch.distributed as dist

    # A world of one has nothing to all-reduce: skip DeepSpeed's optional shared-memory comm kernel, whose
    # just-in-time C++ build takes minutes on a busy 2-core machine. ZeRO-2 itself runs for real.
    # (by module path: the attribute deepspeed.comm.torch is the torch package that module imports)
    monkeypatch.setattr(importlib.import_module("deepspeed.comm.torch"), "build_shm_op", lambda: None)

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(29500 + os.getpid() % 1000)}.items():
        monkeypatch.setenv(k, v)
    spec = tiny_spec(scaling={"engine": "deepspeed", "deepspeed_config": str(ROOT / "jobs/deepspeed/zero2.json")})
    data = data_for(spec)
    try:
        r = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
        assert r.engine.name == "deepspeed" and r.engine.config["bf16"]["enabled"] is False
        before = r.model.item_tower.id_embedding.weight.detach().clone()
        logs = r.train_epoch(0, iter(list(data.iter_train_batches(0, 64, 0))[:1]))
        assert logs["steps"] == 1 and np.isfinite(logs["loss"])
        assert not torch.equal(before, r.model.item_tower.id_embedding.weight.detach())
        r.save_checkpoint(str(tmp_path))
        assert (tmp_path / "latest").read_text().strip() == "checkpoint" and (tmp_path / "checkpoint").is_dir()
        after = r.model.item_tower.id_embedding.weight.detach().clone()
        with torch.no_grad():
            r.model.item_tower.id_embedding.weight.zero_()
        assert r.load_checkpoint(str(tmp_path)) == 1
        torch.testing.assert_close(r.model.item_tower.id_embedding.weight.detach(), after)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("interest_bias", [False, True])
def test_a_batch_bound_step_projects_only_its_rows_and_matches_the_full_step(interest_bias):
    """Rating + sampled click: the step projects only the batch's items, its users' histories and the negatives,
    and its loss and every gradient equal those of the step that projects the whole catalogue."""
    spec = tiny_spec(tasks={"click": {"negatives": "sampled", "num_negatives": 16}, "related": {"weight": 0}},
                     model={"interest_bias": interest_bias}, optim={"lr_encoder": 0})
    data = data_for(spec)
    recipe = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    step = recipe.train_module
    assert recipe.objective.batch_bound
    batch = next(data.iter_train_batches(0, 64, 0))
    args = [torch.as_tensor(batch[k]) for k in ("user_idx", "item_idx", "rating")]
    got = {}
    for subset in (True, False):
        step.subset_rows = subset
        recipe.model.zero_grad()
        loss, _, _ = step(*args, torch.zeros(0, dtype=torch.long), torch.Generator().manual_seed(3))
        loss.backward()
        got[subset] = (loss.detach(), {n: p.grad.clone() for n, p in recipe.model.named_parameters()
                                        if p.grad is not None})
    assert torch.allclose(got[True][0], got[False][0], atol=1e-6)
    assert got[True][1].keys() == got[False][1].keys()
    for name, grad in got[False][1].items():
        assert torch.allclose(got[True][1][name], grad, atol=1e-6), name
    # a softmax over every item reads every row: the full projection stays
    assert not TwoTowerRecipe(tiny_spec(optim={"lr_encoder": 0}), data, device=torch.device("cpu")).objective.batch_bound
