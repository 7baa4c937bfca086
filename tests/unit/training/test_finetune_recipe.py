"""The fine-tuning recipe: whole-catalogue encoding, no dropout, heads first then warm-up and layer-wise LR decay,
a text prior that follows the encoder, and enough steps per epoch on small data (tiny encoders, CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec.config.train import OptimSpec
from lmrec.training.recipe import TwoTowerRecipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_interest_bias import text_pop_data  # noqa: E402
from test_two_tower import data_for, one_thread, tiny_spec  # noqa: E402,F401  (one_thread: autouse)

RECIPE = {"encode_items": "catalog", "encoder_start_epoch": 1, "encoder_warmup_steps": 4, "layer_decay": 0.5,
          "lr_encoder": 1e-3, "batch_size": 64, "min_steps_per_epoch": 1}


def _recipe(**optim) -> TwoTowerRecipe:
    spec = tiny_spec(optim={**RECIPE, **optim}, tasks={"click": {"weight": 1.0}})
    return TwoTowerRecipe(spec, data_for(spec), device=torch.device("cpu"))


def _encoder_state(r: TwoTowerRecipe) -> list[torch.Tensor]:
    return [p.detach().clone() for p in r.model.encoder.parameters()]


def test_step_batch_size_keeps_enough_steps():
    o = OptimSpec(batch_size=2048, min_steps_per_epoch=8)
    assert o.step_batch_size(1_900) == 238  # Amazon-sized data: 8 steps, not one
    assert o.step_batch_size(100_000) == 2048  # large data keeps the configured batch
    assert o.step_batch_size(1_900, world_size=2) == 119
    spec = tiny_spec(optim={"batch_size": 4096, "min_steps_per_epoch": 5, "items_encoded_per_step": 0,
                            "lr_encoder": 0.0})
    r = TwoTowerRecipe(spec, data_for(spec), device=torch.device("cpu"))
    logs = r.train_epoch(0, r.data.iter_train_batches(0, r.batch_size, 0))
    assert logs["steps"] >= 5 and r.steps_per_epoch >= 5


def test_heads_first_then_whole_catalogue_without_dropout():
    r = _recipe()
    data = r.data
    modes = []
    r.model.encoder.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    before = _encoder_state(r)
    logs0 = r.train_epoch(0, data.iter_train_batches(0, r.batch_size, 0))
    assert logs0["items_encoded"] == 0  # stage 1: heads on the frozen encoder
    assert all(torch.equal(a, b) for a, b in zip(before, _encoder_state(r)))
    logs1 = r.train_epoch(1, data.iter_train_batches(1, r.batch_size, 0))
    assert logs1["items_encoded"] == logs1["steps"] * data.n_items  # every item, every step
    assert any(not torch.equal(a, b) for a, b in zip(before, _encoder_state(r)))
    assert modes and not any(modes)  # the encoder always ran in eval mode (no dropout)


def test_dropout_on_when_asked():
    r = _recipe(encoder_dropout=True, encoder_start_epoch=0)
    modes = []
    r.model.encoder.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    r.train_epoch(0, r.data.iter_train_batches(0, r.batch_size, 0))
    assert True in modes


def test_warmup_and_layer_decay():
    r = _recipe()
    groups = {g["name"]: g for g in r.optimizer.param_groups if str(g.get("name", "")).startswith("encoder")}
    top, bottom = "encoder.layer.1", "encoder.embeddings"  # the tiny encoder has 2 blocks
    assert groups[top]["lr"] == pytest.approx(1e-3)
    assert groups["encoder.layer.0"]["lr"] == pytest.approx(5e-4)
    assert groups[bottom]["lr"] == pytest.approx(2.5e-4)
    start = r.encoder_start_step
    for step, factor in ((start, 0.25), (start + 1, 0.5), (start + 3, 1.0), (start + 10, 1.0)):
        r._set_lr(step)
        assert groups[top]["lr"] == pytest.approx(1e-3 * factor)
        assert r.optimizer.param_groups[0]["lr"] == pytest.approx(r.spec.optim.lr_heads)  # heads: no warm-up


@pytest.mark.parametrize("prior", ["refit", "fixed"])
def test_text_prior_follows_the_encoder(prior):
    spec = tiny_spec(model={"interest_bias": True, "dim": 8, "interest_prior": prior},
                     tasks={"click": {"weight": 1.0}}, optim={**RECIPE, "encoder_start_epoch": 0, "lr_encoder": 5e-3})
    data = text_pop_data(spec)
    r = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    m = r.model
    first = m.interest_text_bias.weight.detach().clone()
    # one epoch of encoder steps (no automatic refresh), then the re-encoding that refits the prior
    r.spec = r.spec.model_copy(update={"optim": r.spec.optim.model_copy(update={"refresh_every_epochs": 0})})
    r.train_epoch(0, data.iter_train_batches(0, r.batch_size, 0))
    old_total = m.interest_biases(m.text_table()).detach().clone()
    r._refresh_text(encoder_moved=True)
    new_total = m.interest_biases(m.text_table()).detach()
    seen = m.item_tower.seen
    if prior == "fixed":
        assert torch.equal(m.interest_text_bias.weight, first)
        return
    assert not torch.allclose(m.interest_text_bias.weight, first)
    torch.testing.assert_close(new_total[seen], old_total[seen], atol=1e-5, rtol=1e-5)  # warm scores kept
    # unseen items: the prior is a ridge fit on the *current* item vectors
    count = np.bincount(data.train["item_idx"].to_numpy(), minlength=data.n_items)
    x = m.item_text.numpy()
    pred = m.interest_text_bias(torch.as_tensor(x))[:, 0].detach().numpy()
    target = spec.tasks.click.temperature * np.log1p(count)
    target -= target[count > 0].mean()
    assert np.corrcoef(pred[count > 0], target[count > 0])[0, 1] > 0.5
    torch.testing.assert_close(new_total[~seen], torch.as_tensor(pred[~seen.numpy()]), atol=1e-5, rtol=1e-5)


def test_validation_by_held_out_items_ranks_only_them():
    from lmrec.training.data import prepare_data

    spec = tiny_spec(data={"dataset": "ml-100k", "max_users": 80, "max_items": 300, "valid_from_train": 0.2,
                           "valid_by": "items", "split": {"kind": "per_user_random", "test_frac": 0.2, "seed": 0}},
                     optim={"items_encoded_per_step": 0, "lr_encoder": 0.0})
    data = prepare_data(spec)
    assert data.valid_items is not None and len(data.valid_items) > 0
    assert set(data.valid["item_idx"]) == set(data.valid_items)  # every row of a held-out item, only those
    assert not set(data.train["item_idx"]) & set(data.valid_items)  # unseen in training
    r = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    assert not r.model.item_tower.seen[torch.as_tensor(data.valid_items)].any()
    r.train_epoch(0, data.iter_train_batches(0, r.batch_size, 0))
    got = r.validate()
    rec = r.as_recommender()

    class OnlyHeldOut:  # the same scores with every other item pushed to the bottom
        def score_items(self, users):
            s = rec.score_items(users)
            out = np.full_like(s, -1e9)
            out[:, data.valid_items] = s[:, data.valid_items]
            return out

    from lmrec.evaluation import evaluate_ranking

    on_held_out = evaluate_ranking(OnlyHeldOut(), data.known(), data.valid, data.n_items)
    assert got["val_ndcg@10"] == pytest.approx(on_held_out["ndcg@10"])
    assert got["val_ndcg@10"] != pytest.approx(evaluate_ranking(rec, data.known(), data.valid, data.n_items)["ndcg@10"])


def test_validation_metrics_are_the_reported_metrics():
    """val_recall@10 / val_ndcg@10 (early stopping, Tune) equal what ``evaluation`` reports on the same data."""
    from lmrec.evaluation import evaluate_ranking, evaluate_ratings

    spec = tiny_spec(data={"dataset": "ml-100k", "max_users": 80, "max_items": 300, "valid_from_train": 0.2,
                           "split": {"kind": "per_user_random", "test_frac": 0.2, "seed": 0}},
                     optim={"items_encoded_per_step": 0, "lr_encoder": 0.0})
    from lmrec.training.data import prepare_data

    data = prepare_data(spec)
    r = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    r.train_epoch(0, data.iter_train_batches(0, r.batch_size, 0))
    got = r.validate()
    rec = r.as_recommender()
    ranking = evaluate_ranking(rec, data.known(), data.valid, data.n_items, (10,))
    ratings = evaluate_ratings(rec, data.valid)
    assert got["val_recall@10"] == pytest.approx(ranking["recall@10"])
    assert got["val_ndcg@10"] == pytest.approx(ranking["ndcg@10"])
    assert got["val_rmse"] == pytest.approx(ratings["rmse"])
    # recall's denominator is the number of relevant items, not min(k, relevant): a user with > 10 validation items
    # cannot reach 1.0
    many = data.valid.groupby("user_idx").size()
    assert (many > 10).any() and got["val_recall@10"] < 1.0
