"""The interest score's popularity term (``model.interest_bias``): a ridge prior on the item text for unseen items,
a trained item-ID residual for seen ones, and the same scores from the recommender, the artifact and the Serve member.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lmrec.data.schema import Dataset
from lmrec.artifacts.two_tower import load_artifact
from lmrec.training.data import build_prepared
from lmrec.training.recipe import TwoTowerRecipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_two_tower import one_thread, tiny_spec  # noqa: E402,F401  (one_thread is autouse)

N_USERS, N_ITEMS, COLD = 40, 48, 8  # the last COLD items never appear in training


def popular(i: int) -> bool:
    return i % 2 == 0


def text_pop_data(spec):
    """Half the items are 'blockbusters' (5x as likely to be consumed), and their text says so."""
    rng = np.random.default_rng(0)
    warm = np.arange(N_ITEMS - COLD)
    p = np.where([popular(i) for i in warm], 5.0, 1.0)
    rows = []
    for u in range(N_USERS):
        for i in rng.choice(warm, size=10, replace=False, p=p / p.sum()):
            rows.append((u, int(i), float(rng.integers(1, 6)), u * 100 + int(i)))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": np.arange(N_ITEMS), "title": [f"Film {i}" for i in range(N_ITEMS)]})
    ds = Dataset.build("textpop", inter, items)
    texts = [f"Film {i}: " + ("a blockbuster hit everybody saw." if popular(i) else "an obscure art piece.")
             for i in range(N_ITEMS)]
    return build_prepared(spec, ds, ds.interactions, None, None, texts)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    spec = tiny_spec(model={"interest_bias": True, "dim": 8}, tasks={"click": {"weight": 1.0}},
                     optim={"items_encoded_per_step": 0, "lr_encoder": 0.0})
    data = text_pop_data(spec)
    recipe = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    model = recipe.model
    text = model.text_table()
    start = {"biases": model.interest_biases(text).detach().clone(), "text_weight": model.interest_text_bias.weight.clone(),
             "id": model.interest_item_bias.weight.detach().clone()}
    recipe.train_epoch(0, data.iter_train_batches(0, 64, 0))
    path = recipe.export_artifact(str(tmp_path_factory.mktemp("art") / "a"))
    return recipe, start, path


def test_init_is_the_popularity_the_softmax_converges_to(trained):
    recipe, start, _ = trained
    data, model = recipe.data, recipe.model
    count = np.bincount(data.train["item_idx"], minlength=data.n_items)
    seen = count > 0
    target = recipe.spec.tasks.click.temperature * np.log1p(count)
    target -= target[seen].mean()
    # text read-out + ID residual reproduce the target on seen items; unseen items get the text part alone
    np.testing.assert_allclose(start["biases"].numpy()[seen], target[seen], atol=1e-5)
    cold = np.flatnonzero(~seen)
    assert len(cold) == COLD
    prior = start["biases"].numpy()[cold]
    is_pop = np.array([popular(int(data.item_ids[i])) for i in cold])
    assert prior[is_pop].min() > prior[~is_pop].max(), "the text prior must rank unseen blockbusters first"


def test_text_prior_stays_fixed_while_id_part_trains(trained):
    recipe, start, _ = trained
    model = recipe.model
    assert not model.interest_text_bias.weight.requires_grad
    torch.testing.assert_close(model.interest_text_bias.weight, start["text_weight"])
    assert not torch.allclose(model.interest_item_bias.weight, start["id"])


def test_unseen_item_ranked_by_cosine_plus_text_prior(trained):
    recipe, _, _ = trained
    model = recipe.model
    cold = int(torch.nonzero(~model.item_tower.seen)[0])
    users = np.arange(5)
    before = recipe.as_recommender()
    with torch.no_grad():
        model.interest_item_bias.weight[cold] += 5.0  # gated off: an unseen item has no ID part
    after = recipe.as_recommender()
    np.testing.assert_allclose(before.score_items(users)[:, cold], after.score_items(users)[:, cold], atol=1e-6)
    with torch.no_grad():
        model.interest_item_bias.weight[cold] -= 5.0
    t = after.tables
    expect = t["user_interest"][users] @ t["item_interest"][cold] + t["item_interest_bias"][cold]
    np.testing.assert_allclose(after.score_items(users)[:, cold], expect.numpy(), atol=1e-6)
    assert float(t["item_interest_bias"].abs().max()) > 0


def test_artifact_and_serve_member_score_with_the_term(trained):
    from lmrec.serving.members import TwoTowerMember

    recipe, _, path = trained
    live = recipe.as_recommender()
    art = load_artifact(path)
    assert art.manifest["model_args"]["interest_bias"] is True
    users = np.arange(6)
    np.testing.assert_allclose(art.recommender.score_items(users), live.score_items(users), atol=1e-6)
    member = TwoTowerMember(path)
    uid = art.user_ids[3]
    np.testing.assert_allclose(member.user_scores(uid)["scores"], live.score_items(np.array([3]))[0], atol=1e-5)
    # a brand-new item with an unseen item's text scores like that unseen item (text vector + text prior)
    cold = int(torch.nonzero(~recipe.model.item_tower.seen)[0])
    hidden = recipe.model.item_text[cold : cold + 1].numpy()
    out = member.user_scores(uid, extra_hidden=hidden, encoder_sha=member.sha256)["scores"]
    assert out.shape == (recipe.data.n_items + 1,)
    np.testing.assert_allclose(out[-1], out[cold], atol=1e-5)
