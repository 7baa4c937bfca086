"""Strategies plugged into the real two-tower recipe: the spec section, and tiny end-to-end runs of each."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.data.schema import Dataset
from lmrec.strategies.layer_sharing import num_layers
from lmrec.strategies.spec import BUILTIN_STRATEGIES, strategy_class
from lmrec.training.data import build_prepared
from lmrec.training.local import train_local

ROOT = Path(__file__).resolve().parents[3]

GENRES = ["comedy", "drama", "horror", "space", "romance"]


def tiny_spec(strategy: dict, **over) -> TrainSpec:
    base = {
        "data": {"dataset": "tiny", "valid_from_train": 0.0},
        "model": {"encoder_init": "random-tiny", "max_length": 12, "dim": 8},
        "optim": {"epochs": 1, "batch_size": 64, "items_encoded_per_step": 6, "lr_encoder": 1e-3,
                  "log_every_steps": 1000},
        "scaling": {"engine": "ddp"},
        "strategy": strategy,
    }
    for key, value in over.items():
        base.setdefault(key, {}).update(value)
    return TrainSpec.model_validate(base)


_DATA: dict = {}


def tiny_data(spec: TrainSpec, cold_users: int = 0):
    """30 users x 40 items with structure; ``cold_users`` last users keep 3 train rows, the rest is test."""
    key = (spec.model.max_length, cold_users)
    if key in _DATA:
        return _DATA[key]
    rng = np.random.default_rng(0)
    rows = []
    for u in range(30):
        for t, i in enumerate(rng.choice(36, size=12, replace=False)):
            r = float(np.clip(round(3 + (u % 3 - 1) + (i % 5 - 2) * 0.5 + rng.normal(0, .3)), 1, 5))
            rows.append((u, i, r, u * 100 + t))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": np.arange(40), "title": [f"Film {i} {GENRES[i % 5]}" for i in range(40)]})
    ds = Dataset.build("tiny", inter, items)
    texts = [f"{t}. A {GENRES[i % 5]} story." for i, t in enumerate(ds.items["title"])]
    df = ds.interactions
    if cold_users:
        cold = df["user_idx"] >= 30 - cold_users
        rank = df.groupby("user_idx").cumcount()
        test = df[cold & (rank >= 3)]
        train = df.drop(test.index)
        valid = None
    else:
        is_valid = rng.random(len(df)) < 0.15
        train, valid, test = df[~is_valid], df[is_valid], None
    _DATA[key] = build_prepared(spec, ds, train, valid, test, texts)
    return _DATA[key]


def _encoder_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}


# A strategy outside lmrec: one module, named by import path (the test puts its folder on sys.path).
OPEN_STRATEGY = '''
from pydantic import Field

from lmrec.strategies.components import Strategy, StrategyHooks


class Halved(Strategy):
    factor: float = Field(0.5, gt=0, description="Factor on every group's LR.")

    def check_job(self, job):
        if job.tasks.click.weight == 0:
            raise ValueError("halved needs the click task")

    def attach(self, job, model, data, *, device, distributed=False):
        return HalvedHooks(self.factor)


class HalvedHooks(StrategyHooks):
    def __init__(self, factor):
        self.factor, self.calls = factor, []

    def param_groups(self, default, model, lr_heads):
        self.calls.append("param_groups")
        return [{**g, "lr": g.get("lr", lr_heads) * self.factor} for g in default]

    def on_epoch_start(self, optimizer, epoch):
        self.calls.append(f"epoch {epoch}")
        return False

    def epoch_logs(self, optimizer):
        return {"halved_lr": optimizer.param_groups[0]["lr"]}

    def before_export(self, model):
        self.calls.append("export")


class NotAStrategy:
    pass
'''


@pytest.fixture
def open_strategy(tmp_path, monkeypatch) -> str:
    """The module above, importable as ``open_strategy_probe``; returns the import path of its strategy."""
    (tmp_path / "open_strategy_probe.py").write_text(textwrap.dedent(OPEN_STRATEGY), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "open_strategy_probe:Halved"
    sys.modules.pop("open_strategy_probe", None)


# ---- the spec ----
def test_strategy_section_is_typed_and_strict():
    assert TrainSpec().strategy.name == "full"
    with pytest.raises(ValueError, match="the built-in strategies are full, frozen, lora, .*'package.module:Class'"):
        TrainSpec.model_validate({"strategy": {"name": "lorra"}})
    with pytest.raises(ValueError):
        TrainSpec.model_validate({"strategy": {"name": "lora", "rnak": 8}})
    with pytest.raises(ValueError, match="encoder"):
        TrainSpec.model_validate({"strategy": {"name": "lora"}, "optim": {"lr_encoder": 0.0}})
    with pytest.raises(ValueError):
        TrainSpec.model_validate({"strategy": {"name": "distillation"}})  # teacher_artifact is required


def test_builtins_are_one_table_of_one_module_each():
    for name, path in BUILTIN_STRATEGIES.items():
        cls = strategy_class(name)
        assert f"{cls.__module__}:{cls.__qualname__}" == path
        assert cls.__module__ == f"lmrec.strategies.transfer.{name}"
        assert cls.model_fields["name"].annotation.__args__ == (name,)  # Literal[name]: the union's tag
    schema = TrainSpec.model_json_schema()["properties"]["strategy"]
    builtin, by_path = schema["anyOf"]
    assert set(builtin["discriminator"]["mapping"]) == set(BUILTIN_STRATEGIES)
    pattern = by_path["properties"]["name"]["pattern"]
    assert re.match(pattern, "my_pkg.my_module:MyStrategy") and not re.match(pattern, "lorra")


def test_a_strategy_named_by_import_path_validates_through_its_own_class(open_strategy):
    spec = TrainSpec.model_validate({"strategy": {"name": open_strategy, "factor": 0.25}})
    assert type(spec.strategy).__name__ == "Halved" and spec.strategy.factor == 0.25
    dumped = spec.model_dump(mode="json")
    assert dumped["strategy"] == {"name": open_strategy, "factor": 0.25}
    assert TrainSpec.model_validate(dumped) == spec  # what the Ray workers receive
    with pytest.raises(ValueError, match="strategy.fcator"):
        TrainSpec.model_validate({"strategy": {"name": open_strategy, "fcator": 0.25}})
    with pytest.raises(ValueError, match="greater than 0"):
        TrainSpec.model_validate({"strategy": {"name": open_strategy, "factor": 0}})
    with pytest.raises(ValueError, match="halved needs the click task"):  # its check_job
        TrainSpec.model_validate({"strategy": {"name": open_strategy}, "tasks": {"click": {"weight": 0}}})
    for name, message in [("open_strategy_probe:Nope", "has no 'Nope'"),
                          ("open_strategy_probe:NotAStrategy", "not a subclass of lmrec.strategies.components"),
                          ("no_such_package.module:Thing", "cannot import module 'no_such_package.module'")]:
        with pytest.raises(ValueError, match=message):
            TrainSpec.model_validate({"strategy": {"name": name}})


def test_every_strategy_job_spec_validates_and_says_how_to_run_it():
    files = sorted((ROOT / "jobs" / "strategies").glob("*.yaml"))
    names = {f.stem for f in files}
    assert {"frozen", "full", "lora", "layer_sharing", "progressive_unfreezing", "curriculum", "distillation",
            "label_propagation", "meta_learning"} <= names
    for f in files:
        spec = load_spec(TrainSpec, f)
        assert spec.strategy.name == f.stem
        assert f.read_text().splitlines()[0] == f"# lmrec train jobs/strategies/{f.name}"


# ---- end to end on a tiny slice ----
def test_frozen_run_never_changes_the_encoder():
    spec = tiny_spec({"name": "frozen"})
    data = tiny_data(spec)
    res = train_local(spec, data, device="cpu")
    before = _encoder_state(res.recipe.model)
    res2 = train_local(spec.model_copy(update={"optim": spec.optim.model_copy(update={"epochs": 2})}), data,
                       device="cpu")
    assert res.recipe.trainable_params["encoder_trainable_params"] == 0
    assert res2.epochs[-1]["items_encoded"] == 0
    for k, v in _encoder_state(res2.recipe.model).items():
        torch.testing.assert_close(v, before[k])  # same seed, same init, never trained


def test_lora_run_trains_adapters_only_and_exports_a_plain_encoder(tmp_path):
    from lmrec.artifacts.two_tower import load_artifact

    spec = tiny_spec({"name": "lora", "rank": 4, "alpha": 8.0})
    data = tiny_data(spec)
    res = train_local(spec, data, device="cpu", artifact_dir=tmp_path / "art")
    trainable = res.recipe.trainable_params["encoder_trainable_params"]
    assert trainable == 2 * 2 * 4 * (32 + 32)  # 2 layers x (query, value) x r x (in + out)
    assert res.epochs[0]["items_encoded"] > 0
    art = load_artifact(tmp_path / "art")
    assert not any("lora" in k for k in art.model.state_dict())
    scores = art.recommender.score_items(np.array([0, 1]))
    np.testing.assert_allclose(scores, res.recommender().score_items(np.array([0, 1])), atol=1e-4)


def test_progressive_unfreezing_trains_top_block_before_lower_ones():
    spec = tiny_spec({"name": "progressive_unfreezing", "every": 1, "unit": "epoch", "decay": 0.5},
                     optim={"epochs": 2, "lr_encoder": 1e-2})
    data = tiny_data(spec)
    from lmrec.training.recipe import TwoTowerRecipe

    recipe = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    start = _encoder_state(recipe.model)
    logs0 = recipe.train_epoch(0, data.iter_train_batches(0, 64, 0))
    after0 = _encoder_state(recipe.model)
    assert logs0["items_encoded"] == 0  # heads-only stage: no encoder pass with gradient
    assert all(torch.equal(after0[k], start[k]) for k in start)
    recipe.train_epoch(1, data.iter_train_batches(1, 64, 0))
    after1 = _encoder_state(recipe.model)
    changed = {k for k in start if not torch.equal(after1[k], start[k])}
    assert any(k.startswith("backbone.encoder.layer.1.") for k in changed)
    assert not any(k.startswith(("backbone.encoder.layer.0.", "backbone.embeddings.")) for k in changed)
    lrs = {g["name"]: g["lr"] for g in recipe.engine.optimizer.param_groups}
    assert lrs["encoder.layer.1"] == pytest.approx(1e-2) and lrs["encoder.layer.0"] == pytest.approx(5e-3)


def test_curriculum_run_starts_on_the_easy_pool():
    spec = tiny_spec({"name": "curriculum", "difficulty": "rating_deviation", "pacing": "linear", "start": 0.5,
                      "full_at_epoch": 2}, optim={"epochs": 3})
    data = tiny_data(spec)
    res = train_local(spec, data, device="cpu")
    seen = [e["interactions"] for e in res.epochs]
    n = len(data.train)
    assert seen == [np.ceil(0.5 * n), np.ceil(0.75 * n), n]


def test_layer_sharing_and_distillation_runs(tmp_path):
    teacher_spec = tiny_spec({"name": "frozen"}, optim={"epochs": 2})
    data = tiny_data(teacher_spec)
    train_local(teacher_spec, data, device="cpu", artifact_dir=tmp_path / "teacher")
    shared = train_local(tiny_spec({"name": "layer_sharing", "layers": 1,
                                    "teacher_artifact": str(tmp_path / "teacher")}), data, device="cpu")
    assert num_layers(shared.recipe.model.encoder) == 1
    spec = tiny_spec({"name": "distillation", "teacher_artifact": str(tmp_path / "teacher"), "student_layers": 1,
                      "weight": 2.0}, optim={"epochs": 2})
    res = train_local(spec, data, device="cpu")
    assert num_layers(res.recipe.model.encoder) == 1
    assert "loss_distill" in res.epochs[0] and res.epochs[-1]["distill_kl"] >= 0
    assert res.epochs[-1]["loss_distill"] < res.epochs[0]["loss_distill"]


def test_label_propagation_run_adds_its_targets():
    spec = tiny_spec({"name": "label_propagation", "k": 5, "weight": 0.2, "per_user": 4}, optim={"epochs": 2})
    res = train_local(spec, tiny_data(spec), device="cpu")
    assert "loss_propagated" in res.epochs[0]
    assert np.isfinite(res.epochs[-1]["loss_propagated"])


def test_meta_learning_run_uses_its_own_loop_and_reports_cold_users():
    spec = TrainSpec.model_validate({  # only what its loop reads: anything else set is refused (ignored)
        "data": {"dataset": "tiny", "valid_from_train": 0.0},
        "model": {"encoder_init": "random-tiny", "max_length": 12}, "optim": {"epochs": 2},
        "scaling": {"engine": "ddp"},
        "strategy": {"name": "meta_learning", "dim": 8, "shots": [1, 3], "tasks_per_batch": 8, "query_size": 5}})
    data = tiny_data(spec, cold_users=6)
    res = train_local(spec, data, device="cpu")
    assert len(res.history) == 2
    assert res.metrics["cold_users"] == 6
    assert 0 <= res.metrics["ndcg@10_k1"] <= 1 and np.isfinite(res.metrics["rmse_k3"])


def test_a_strategy_named_by_import_path_runs_its_hooks(open_strategy, tmp_path):
    from lmrec.artifacts.two_tower import load_artifact

    spec = tiny_spec({"name": open_strategy, "factor": 0.25}, optim={"epochs": 2})
    res = train_local(spec, tiny_data(spec), device="cpu", artifact_dir=tmp_path / "art")
    assert res.recipe.strategy.calls == ["param_groups", "epoch 0", "epoch 1", "export"]
    assert [e["halved_lr"] for e in res.epochs] == pytest.approx([0.25 * spec.optim.lr_heads] * 2)
    art = load_artifact(tmp_path / "art")
    assert art.manifest["config"]["strategy"] == {"name": open_strategy, "factor": 0.25}


def test_meta_learning_refuses_settings_its_loop_would_ignore():
    with pytest.raises(ValueError, match=r"ignores model\.dim, optim\.batch_size"):
        tiny_spec({"name": "meta_learning"})  # tiny_spec sets model.dim, optim.batch_size, ... for the recipe
    with pytest.raises(ValueError, match=r"ignores tasks\.click"):
        TrainSpec.model_validate({"data": {"dataset": "tiny"}, "tasks": {"click": {"weight": 0.2}},
                                  "strategy": {"name": "meta_learning"}})
    from lmrec.strategies.meta_loop import MetaSettings, settings_from_spec

    plain = TrainSpec.model_validate({"data": {"dataset": "tiny"}, "optim": {"epochs": 30},
                                      "strategy": {"name": "meta_learning"}})
    assert settings_from_spec(plain) == MetaSettings()  # one set of defaults
