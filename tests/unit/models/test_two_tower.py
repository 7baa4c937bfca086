"""Two-tower model: shapes, unseen-item gating, cost model (encoder rows per step), multi-task loss algebra."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lmrec.config.train import TrainSpec
from lmrec.data.schema import Dataset
from lmrec.models.tasks import ClickTask, MultiTaskObjective, RatingTask, RelatedTask
from lmrec.training.data import build_prepared
from lmrec.training.recipe import TwoTowerRecipe

GENRES = ["comedy", "drama", "horror", "space", "romance"]


def tiny_data(spec: TrainSpec, n_users: int = 30, n_items: int = 40, cold: int = 4, seed: int = 0):
    """Synthetic ratings with user/item structure; the last ``cold`` items never appear in train."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items - cold, size=12, replace=False):
            rows.append((u, i, float(np.clip(round(3 + (u % 3 - 1) + (i % 5 - 2) * 0.5 + rng.normal(0, .3)), 1, 5)), u * 100 + i))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": np.arange(n_items), "title": [f"Film {i} {GENRES[i % 5]}" for i in range(n_items)]})
    ds = Dataset.build("tiny", inter, items)
    texts = [f"{t}. A {GENRES[i % 5]} story." for i, t in enumerate(ds.items["title"])]
    valid_mask = rng.random(len(ds.interactions)) < 0.15
    train, valid = ds.interactions[~valid_mask], ds.interactions[valid_mask]
    return build_prepared(spec, ds, train, valid, None, texts)


def tiny_spec(**over) -> TrainSpec:
    base = {
        "data": {"dataset": "tiny", "valid_from_train": 0.0},
        "model": {"encoder_init": "random-tiny", "max_length": 16, "dim": 8},
        "optim": {"epochs": 1, "batch_size": 64, "items_encoded_per_step": 6, "lr_encoder": 1e-3, "log_every_steps": 1000},
        "scaling": {"engine": "ddp"},
    }
    for key, value in over.items():
        base.setdefault(key, {}).update(value)
    return TrainSpec.model_validate(base)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP hand-offs that crawl when the shared 2-core machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_DATA = {}


def data_for(spec: TrainSpec):
    """Tokenised tiny data, shared by tests whose specs tokenise alike (same encoder and max_length)."""
    key = (spec.model.encoder, spec.model.max_length, spec.model.user_text)
    if key not in _DATA:
        _DATA[key] = tiny_data(spec)
    return _DATA[key]


@pytest.fixture(scope="module")
def recipe() -> TwoTowerRecipe:
    spec = tiny_spec()
    data = data_for(spec)
    r = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    r.train_epoch(0, data.iter_train_batches(0, 64, 0))
    return r


def test_shapes(recipe):
    rec = recipe.as_recommender()
    n_items = recipe.data.n_items
    assert rec.predict(np.array([0, 1, 2]), np.array([3, 4, 5])).shape == (3,)
    scores = rec.score_items(np.array([0, 5]))
    assert scores.shape == (2, n_items) and scores.dtype == np.float32
    assert rec.similar_items(np.array([0]), k=5).shape == (1, 5)
    assert np.isfinite(scores).all()


def test_unseen_item_is_scored_from_text_only(recipe):
    model = recipe.model
    seen = model.item_tower.seen
    cold = int(torch.nonzero(~seen)[0])
    warm = int(torch.nonzero(seen)[0])
    users = np.arange(5)
    before = recipe.as_recommender()
    with torch.no_grad():
        model.item_tower.id_embedding.weight[cold] += 5.0
        model.item_bias.weight[cold] += 5.0
    after = recipe.as_recommender()
    np.testing.assert_allclose(before.score_items(users)[:, cold], after.score_items(users)[:, cold], atol=1e-6)
    np.testing.assert_allclose(before.predict(users, np.full(5, cold)), after.predict(users, np.full(5, cold)), atol=1e-6)
    with torch.no_grad():
        model.item_tower.id_embedding.weight[warm] += 5.0
    moved = recipe.as_recommender()
    assert not np.allclose(after.predict(users, np.full(5, warm)), moved.predict(users, np.full(5, warm)))
    with torch.no_grad():  # undo for the other tests sharing the fixture
        model.item_tower.id_embedding.weight[cold] -= 5.0
        model.item_bias.weight[cold] -= 5.0
        model.item_tower.id_embedding.weight[warm] -= 5.0


def test_encoder_rows_per_step_bounded_by_unique_items():
    spec = tiny_spec(optim={"items_encoded_per_step": 1000})
    data = data_for(spec)
    r = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    rows_seen: list[int] = []
    hook = r.model.encoder.register_forward_hook(lambda m, args, out: rows_seen.append(out.shape[0]))
    batches = list(data.iter_train_batches(0, 64, 0))
    r.train_epoch(0, iter(batches))
    hook.remove()
    # the last forward calls are the end-of-epoch cache refresh (no grad); the first len(batches) are the steps
    step_rows = rows_seen[: len(batches)]
    unique = [len(np.unique(b["item_idx"])) for b in batches]
    assert step_rows == unique  # each unique item encoded exactly once, never once per rating
    assert sum(step_rows) < sum(len(b["item_idx"]) for b in batches)

    capped = tiny_spec(optim={"items_encoded_per_step": 3})
    r2 = TwoTowerRecipe(capped, data, device=torch.device("cpu"))
    rows_seen.clear()
    hook = r2.model.encoder.register_forward_hook(lambda m, args, out: rows_seen.append(out.shape[0]))
    r2.train_epoch(0, iter(batches))
    hook.remove()
    assert max(rows_seen[: len(batches)]) <= 3


def test_frozen_encoder_never_runs_during_steps():
    spec = tiny_spec(optim={"items_encoded_per_step": 0, "lr_encoder": 0.0})
    data = data_for(spec)
    r = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    calls = []
    hook = r.model.encoder.register_forward_hook(lambda m, a, o: calls.append(o.shape[0]))
    r.train_epoch(0, data.iter_train_batches(0, 64, 0))
    hook.remove()
    assert calls == []


def test_multitask_loss_is_weighted_sum(recipe):
    model, tm = recipe.model, recipe.train_module
    batch = next(recipe.data.iter_train_batches(1, 64, 0))
    u, i = torch.as_tensor(batch["user_idx"]), torch.as_tensor(batch["item_idx"])
    r = torch.as_tensor(batch["rating"])
    enc = torch.as_tensor(np.unique(batch["item_idx"])[:4])

    def run(objective, seed=3):
        tm.objective = objective
        with torch.no_grad():
            loss, logs, _ = tm(u, i, r, enc, torch.Generator().manual_seed(seed))
        return float(loss), logs

    tm.eval()  # no dropout: the two runs below must see identical encoder outputs
    tasks = [RatingTask(1.0, 0.05), ClickTask(0.7, 0.1), RelatedTask(0.2, 0.1)]
    total, logs = run(MultiTaskObjective(tasks))
    singles = [logs[f"loss_{t.name}"] for t in tasks]
    assert total == pytest.approx(1.0 * singles[0] + 0.7 * singles[1] + 0.2 * singles[2], rel=1e-5)
    rating_only, _ = run(MultiTaskObjective([RatingTask(2.0, 0.05)]))
    assert rating_only == pytest.approx(2.0 * singles[0], rel=1e-5)
    tm.objective = recipe.objective
    tm.train()
    with pytest.raises(ValueError):
        MultiTaskObjective([RatingTask(0.0)])


def test_user_vector_leaves_target_out_of_its_history(recipe):
    model = recipe.model
    with torch.no_grad():
        item_vec = model.item_vectors(model.text_table())
        user = torch.tensor([0])
        hist = model.history[0]
        hist = hist[hist >= 0]
        target = hist[:1]
        got = model.user_vectors(user, item_vec, torch.tensor([0]), exclude_item=target)
        rest = hist[1:]
        expected = item_vec[rest].mean(0) + model.user_tower.id_embedding.weight[0]
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=1e-5)


def test_attention_user_tower_trains():
    spec = tiny_spec(model={"user_tower": "attention"})
    data = data_for(spec)
    r = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    logs = r.train_epoch(0, data.iter_train_batches(0, 64, 0))
    assert np.isfinite(logs["loss"])
    assert r.model.user_tower.key.weight.grad is not None


def test_rating_head_user_factor_is_id_part_unless_tower(recipe):
    model = recipe.model
    users, items = np.arange(6), np.arange(6)
    assert model.rating_user == "id"
    by_id = recipe.as_recommender().predict(users, items)
    saved = model.history.clone()
    model.history = torch.full_like(saved, -1)  # the history moves the user tower, not the ID factor
    try:
        np.testing.assert_allclose(recipe.as_recommender().predict(users, items), by_id, atol=1e-6)
    finally:
        model.history = saved
    model.rating_user = "tower"
    try:
        by_tower = recipe.as_recommender().predict(users, items)
    finally:
        model.rating_user = "id"
    assert not np.allclose(by_tower, by_id, atol=1e-4)


def test_rating_l2_covers_the_text_part(recipe):
    """A text projection no ID row pays for must still be penalised (else it overfits, see RatingTask)."""
    model, tm = recipe.model, recipe.train_module
    batch = next(recipe.data.iter_train_batches(2, 64, 0))
    u, i = torch.as_tensor(batch["user_idx"]), torch.as_tensor(batch["item_idx"])
    r = torch.as_tensor(batch["rating"])
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def loss(l2: float) -> float:
        tm.objective = MultiTaskObjective([RatingTask(1.0, l2=l2, id_l2=0.0)])
        with torch.no_grad():
            return float(tm(u, i, r, torch.zeros(0, dtype=torch.long))[0])

    tm.eval()
    try:
        with torch.no_grad():
            model.item_tower.id_embedding.weight.zero_()
            model.item_bias.weight.zero_()
        with torch.no_grad():
            model.user_tower.id_embedding.weight.zero_()
            model.user_bias.weight.zero_()
        # users' factors are 0 now, so only the (zero) ID rows and the text part of item vectors can carry L2
        quiet = loss(1.0) - loss(0.0)
        with torch.no_grad():
            model.item_tower.text_proj.weight.normal_(std=0.5)
        assert loss(1.0) - loss(0.0) > quiet + 0.1
    finally:
        model.load_state_dict(state)
        tm.objective = recipe.objective
        tm.train()
