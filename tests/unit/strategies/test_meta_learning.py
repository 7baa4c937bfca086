"""Meta-learning for cold-start users: inner adaptation, first-order outer gradients, loop, latency."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lmrec.strategies.meta_learning import (
    ColdStartModel, TaskBatch, adapt, meta_loss, reptile_init_grad, task_losses,
)
from lmrec.strategies.meta_loop import (
    MetaSettings, adaptation_latency_ms, evaluate_cold_users, sample_tasks, train_meta, train_standard, user_rows,
)


def _model(n_items=30, hidden=16, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ColdStartModel(torch.randn(n_items, hidden, generator=gen), dim=dim, global_mean=3.5)


def _batch():
    return TaskBatch.from_lists([np.array([0, 3, 5]), np.array([7])], [np.array([5.0, 1.0, 4.0]), np.array([2.0])])


def test_task_batch_pads_and_masks():
    b = _batch()
    assert b.items.shape == (2, 3) and b.mask.tolist() == [[True, True, True], [True, False, False]]


def test_adapt_lowers_each_tasks_support_loss_and_tasks_are_independent():
    model = _model()
    b = _batch()
    vec, bias = model.item_tables()
    before = task_losses(model.init_fast(2), b, vec, bias, model.global_mean, 0.3)
    fast = adapt(model, b, steps=5, inner_lr=0.1, click_weight=0.3)
    after = task_losses(fast, b, vec, bias, model.global_mean, 0.3)
    assert torch.all(after < before)
    # adapting the tasks together = adapting each alone (per-task losses are summed)
    one = adapt(model, TaskBatch(b.items[1:, :1], b.ratings[1:, :1], b.mask[1:, :1]), 5, 0.1, 0.3)
    torch.testing.assert_close(fast[1:], one, atol=1e-5, rtol=1e-5)
    # the item side is untouched by the inner loop
    assert model.text_proj.weight.grad is None


def test_fomaml_gradient_on_init_is_the_query_gradient_at_the_adapted_point():
    model = _model()
    support = _batch()
    query = TaskBatch.from_lists([np.array([1, 2]), np.array([8, 9])], [np.array([3.0, 4.0]), np.array([5.0, 1.0])])
    loss, logs = meta_loss(model, support, query, "fomaml", steps=3, inner_lr=0.1, click_weight=0.0)
    loss.backward()
    adapted = adapt(model, support, 3, 0.1).requires_grad_(True)
    vec, bias = (t.detach() for t in model.item_tables())
    q = task_losses(adapted, query, vec, bias, model.global_mean).mean()
    (g,) = torch.autograd.grad(q, adapted)
    torch.testing.assert_close(model.user_init.grad, g.sum(0))
    assert model.text_proj.weight.grad is not None and logs["query_rmse"] > 0


def test_reptile_moves_the_init_toward_the_adapted_parameters():
    model = _model()
    loss, _ = meta_loss(model, _batch(), _batch(), "reptile", steps=3, inner_lr=0.1)
    loss.backward()
    reptile_init_grad(model)
    init = model.user_init.detach().clone()
    torch.optim.SGD([model.user_init], lr=1.0).step()  # lr 1: the init lands on the mean adapted point
    assert not torch.equal(model.user_init.detach(), init)
    with pytest.raises(RuntimeError):
        reptile_init_grad(model)


def _clustered(n_users=80, n_items=40, seed=0):
    """Two user groups with opposite tastes over item features: the item side can learn the axis, the init the
    population mean; a new user's few ratings must say which group they are in."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n_items, 6)).astype(np.float32)
    axis = feats[:, 0]
    rows = []
    for u in range(n_users):
        sign = 1 if u % 2 else -1
        items = rng.choice(n_items, 16, replace=False)
        r = np.clip(np.round(3 + 1.5 * sign * axis[items] + rng.normal(scale=0.3, size=16)), 1, 5)
        rows += [(u, int(i), float(x), t) for t, (i, x) in enumerate(zip(items, r))]
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"])
    return df.astype({"rating": np.float32}), torch.from_numpy(feats)


def test_meta_training_beats_no_adaptation_for_new_users():
    df, feats = _clustered()
    warm, cold = df[df["user_idx"] < 60], df[df["user_idx"] >= 60]
    support = cold.groupby("user_idx").head(5)
    test = cold.drop(support.index)
    settings = MetaSettings(epochs=15, inner_steps=5, inner_lr=0.3, click_weight=0.0, l2=0.0, max_support=5,
                            query_size=10, tasks_per_batch=20, lr=0.02)
    model = ColdStartModel(feats, dim=4, global_mean=float(warm["rating"].mean()), item_ids=False)
    history = train_meta(model, warm, settings)
    assert history[-1]["query_rmse"] < history[0]["query_rmse"]
    res = evaluate_cold_users(model, support, test, 40, shots=(5,), steps=5, inner_lr=0.3, click_weight=0.0, l2=0.0)
    no_adapt = evaluate_cold_users(model, support, test, 40, shots=(5,), steps=0, inner_lr=0.3, click_weight=0.0)
    assert res["rmse_k5"] < 0.8 * no_adapt["rmse_k5"]
    assert res["cold_users"] == 20 and 0 <= res["ndcg@10_k5"] <= 1
    # the control trains too and sets the init to the mean user
    control = ColdStartModel(feats, dim=4, global_mean=3.0, item_ids=False)
    train_standard(control, warm, MetaSettings(epochs=3, tasks_per_batch=20))
    assert torch.isfinite(control.user_init).all() and control.user_init.abs().sum() > 0


def test_task_sampling_keeps_support_and_query_apart():
    df, _ = _clustered(n_users=6)
    rows = user_rows(df)
    s, q = sample_tasks(rows, np.arange(6), np.random.default_rng(0), max_support=4, query_size=5)
    for t in range(6):
        si = set(s.items[t][s.mask[t]].tolist())
        qi = set(q.items[t][q.mask[t]].tolist())
        assert 1 <= len(si) <= 4 and len(qi) == 5 and not si & qi


def test_new_user_adapts_within_latency_budget():
    """k = 10 ratings, MiniLM-sized item features (384) and dim 64: adapt + score 1,682 items, ≤ 50 ms on CPU."""
    model = ColdStartModel(torch.randn(1682, 384), dim=64)
    items = np.arange(10) * 7
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a request is a few tiny ops: one thread per request (how a replica would run it)
    try:
        lat = adaptation_latency_ms(model, items, np.linspace(1, 5, 10), steps=5, repeats=20)
    finally:
        torch.set_num_threads(threads)
    assert lat["median_ms"] < 50, lat
