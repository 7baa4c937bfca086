"""Fusion weights chosen by validation NDCG (simplex grid + listwise), and scoring that applies exactly ``fuse``."""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
import pytest

from lmrec.evaluation.evaluate import evaluate_ranking
from lmrec.strategies.ensemble import FusedEnsemble, fuse, simplex_grid


class _Fixed:
    """A member with a fixed score table (a stand-in fitted model of known quality); ``fit`` is a no-op."""

    rates = False

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def fit(self, train, n_users, n_items):
        return self

    def score_items(self, user_idx):
        return self.scores[np.asarray(user_idx)]


def _toy(seed: int = 0, n_users: int = 50, n_items: int = 40):
    """Train rows, valid rows and three members: two partly informative (different noise) and one pure noise."""
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=(n_users, n_items))
    order = np.argsort(-taste, axis=1)
    train = pd.DataFrame({"user_idx": np.repeat(np.arange(n_users), 3), "item_idx": order[:, 5:8].ravel()})
    valid = pd.DataFrame({"user_idx": np.repeat(np.arange(n_users), 4), "item_idx": order[:, :4].ravel()})
    members = {"a": _Fixed(taste + rng.normal(scale=1.5, size=taste.shape)),
               "b": _Fixed(taste + rng.normal(scale=1.5, size=taste.shape)),
               "noise": _Fixed(rng.normal(size=taste.shape))}
    return train, valid, members, n_users, n_items


def _valid_ndcg(model, train, valid, n_items) -> float:
    return float(evaluate_ranking(model, train, valid, n_items, (10,))["ndcg@10"])


@pytest.mark.parametrize("method", ["grid", "best"])
def test_fitted_mix_beats_the_worst_member_on_validation(method):
    train, valid, members, n_users, n_items = _toy()
    ens = FusedEnsemble(members)
    weights = ens.fit_weights(train, valid, n_items, method=method, grid_step=0.1, steps=50)
    assert sum(weights.values()) == pytest.approx(1.0) and min(weights.values()) >= 0
    member = {m: _valid_ndcg(r, train, valid, n_items) for m, r in members.items()}
    ens.set_seen(train, n_users, n_items)  # score as fit_weights did: z-scores over each user's unseen items
    fused = _valid_ndcg(ens, train, valid, n_items)
    assert fused > min(member.values())
    assert fused >= max(member.values()) - 1e-12  # the single members are grid points
    assert fused == pytest.approx(ens.validation["valid_ndcg@10"])  # what it chose by is evaluate_ranking's metric
    assert ens.validation["member_valid_ndcg@10"] == pytest.approx(member)
    assert weights["noise"] < max(weights["a"], weights["b"])


def test_score_items_is_fuse_of_the_member_scores():
    train, valid, members, n_users, n_items = _toy(seed=1)
    ens = FusedEnsemble(members)
    ens.fit_weights(train, valid, n_items, method="grid", grid_step=0.25)
    users = np.array([0, 3, 7, 11])
    raw = {m: r.score_items(users) for m, r in members.items()}
    np.testing.assert_allclose(ens.score_items(users), fuse(raw, ens.weights), rtol=1e-5, atol=1e-5)
    ens.fit(train, n_users, n_items)  # knows the histories: z-scores over unseen items, seen ones at -inf (Serve)
    seen = np.zeros((len(users), n_items), dtype=bool)
    rows = train[train["user_idx"].isin(users)]
    seen[np.searchsorted(users, rows["user_idx"]), rows["item_idx"]] = True
    got = ens.score_items(users)
    assert np.isneginf(got[seen]).all()
    np.testing.assert_allclose(got[~seen], fuse(raw, ens.weights, ~seen)[~seen], rtol=1e-5, atol=1e-5)


def test_simplex_grid():
    g = simplex_grid(3, 0.1)
    assert g.shape == (comb(12, 2), 3)
    np.testing.assert_allclose(g.sum(1), 1.0)
    assert (g[:3] == 1.0).any(1).all()  # single members first
    with pytest.raises(ValueError):
        simplex_grid(3, 0.3)
    with pytest.raises(ValueError):
        FusedEnsemble({"a": _Fixed(np.zeros((2, 2)))}).fit_weights(pd.DataFrame(), pd.DataFrame(), 2, method="x")
