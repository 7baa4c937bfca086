"""The click task's sampled softmax (``tasks.click.negatives: sampled``): the step's positives plus items drawn by
training popularity, each logit corrected by minus the log-probability that its item is a candidate; never-seen
items are neither sampled nor trained."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec.models.tasks import ClickTask, StepContext
from lmrec.training.recipe import TwoTowerRecipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_interest_bias import COLD, text_pop_data  # noqa: E402
from test_two_tower import one_thread, tiny_spec  # noqa: E402,F401  (one_thread is autouse)


def sampled_spec(**click):
    return tiny_spec(model={"interest_bias": True, "dim": 8},
                     tasks={"click": {"weight": 1.0, "negatives": "sampled", "num_negatives": 12, **click}},
                     optim={"items_encoded_per_step": 0, "lr_encoder": 0.0})


@pytest.fixture(scope="module")
def recipe():
    spec = sampled_spec(id_dropout=0.0)
    return TwoTowerRecipe(spec, text_pop_data(spec), device=torch.device("cpu"))


def step_context(recipe, rows: int = 48, seed: int = 0) -> StepContext:
    """One step's shared tensors, built as the training wrapper builds them."""
    model, train = recipe.model, recipe.data.train.iloc[:rows]
    user_idx = torch.as_tensor(train["user_idx"].to_numpy())
    item_idx = torch.as_tensor(train["item_idx"].to_numpy())
    text = model.text_table()
    text_vec = model.item_text_vectors(text)
    item_vec = model.item_tower.combine(text_vec)
    users, row_user = torch.unique(user_idx, return_inverse=True)
    user_vec = model.user_vectors(users, item_vec, row_user, exclude_item=item_idx)
    return StepContext(user_idx, item_idx, torch.as_tensor(train["rating"].to_numpy(), dtype=torch.float32), text,
                       item_vec, text_vec, model.item_biases(text), user_vec, torch.Generator().manual_seed(seed))


def test_logits_are_the_full_softmax_logits_corrected_by_inclusion_probability(recipe):
    model, task = recipe.model, recipe.objective.task("click")
    assert task.negatives == "sampled" and task.num_negatives == 12
    ctx = step_context(recipe)
    with torch.no_grad():
        user = model.interest(ctx.user_vec)
        logits, target, cand = task._sampled_logits(model, ctx, user, ctx.item_idx, None)
        full = (user @ model.interest(ctx.item_vec).T + model.interest_biases(ctx.text)[None, :]) / task.temperature
    count = np.bincount(recipe.data.train["item_idx"], minlength=recipe.data.n_items)
    q = count / count.sum()
    # each logit less the log-probability that its item is among the candidates (len(positives) + 12 draws from q)
    inclusion = 1 - (1 - q[cand.numpy()]) ** (len(ctx.item_idx) + 12)
    np.testing.assert_allclose(logits.numpy(), full[:, cand].numpy() - np.log(inclusion)[None, :], rtol=1e-5,
                               atol=1e-5)
    assert torch.equal(cand[target], ctx.item_idx)  # each row's label is its own positive
    assert len(cand) == len(set(cand.tolist()))  # a positive is never also listed as a negative
    assert set(ctx.item_idx.tolist()) < set(cand.tolist())  # samples beyond the positives
    assert (count[cand.numpy()] > 0).all()  # never-seen items are never candidates
    # the sample follows popularity: over many draws, items are drawn in proportion to their training count
    draws = torch.multinomial(task._q, 200_000, replacement=True, generator=torch.Generator().manual_seed(1))
    freq = np.bincount(draws.numpy(), minlength=len(q)) / 200_000
    np.testing.assert_allclose(freq, q, atol=0.003)


def test_sampled_epochs_train_the_seen_items_only():
    spec = sampled_spec(id_dropout=0.5)
    data = text_pop_data(spec)
    recipe = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    model = recipe.model
    seen = model.item_tower.seen.clone()
    assert int((~seen).sum()) == COLD
    before = model.interest_item_bias.weight.detach().clone()
    losses = [recipe.train_epoch(e, data.iter_train_batches(e, 64, 0))["loss_click"] for e in range(2)]
    after = model.interest_item_bias.weight.detach()
    assert np.isfinite(losses).all()
    assert not torch.allclose(after[seen], before[seen])
    torch.testing.assert_close(after[~seen], before[~seen])  # no gradient reaches never-seen items


def test_sampled_negatives_need_the_item_counts():
    task = ClickTask(negatives="sampled", num_negatives=4)
    with pytest.raises(RuntimeError, match="set_item_counts"):
        task._sampled_logits(None, None, None, None, None)
    with pytest.raises(ValueError, match="negatives"):
        ClickTask(negatives="some")


def test_with_enough_samples_the_loss_is_the_full_softmax_loss(recipe):
    """Every seen item drawn, each surely a candidate: no correction left, the full softmax over warm items."""
    model, task = recipe.model, recipe.objective.task("click")
    full_task = ClickTask(negatives="all", id_dropout=0.0, temperature=task.temperature)
    big = ClickTask(negatives="sampled", num_negatives=200_000, id_dropout=0.0, temperature=task.temperature)
    big.set_item_counts(np.bincount(recipe.data.train["item_idx"], minlength=recipe.data.n_items))
    with torch.no_grad():
        full_loss, _ = full_task.loss(model, step_context(recipe))
        sampled_loss, _ = big.loss(model, step_context(recipe))
        few_loss, _ = task.loss(model, step_context(recipe))  # 12 samples: a different (smaller) sum
    assert float(sampled_loss) == pytest.approx(float(full_loss), rel=1e-4)
    assert float(few_loss) != pytest.approx(float(full_loss), rel=1e-2)
