"""Fused ensemble: Serve's z-score fusion, weights learned on validation, the JSON Serve reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lmrec.artifacts.ensemble import load_weights
from lmrec.strategies.ensemble import FusedEnsemble, fuse, zscore_rows


class _Fixed:
    """A member with given score and prediction tables (a stand-in fitted model with a known quality)."""

    rates = True

    def __init__(self, scores: np.ndarray, ratings: np.ndarray | None = None) -> None:
        self.scores, self.ratings = scores, ratings if ratings is not None else scores

    def fit(self, train, n_users, n_items):
        return self

    def score_items(self, user_idx):
        return self.scores[np.asarray(user_idx)]

    def predict(self, user_idx, item_idx):
        return self.ratings[np.asarray(user_idx), np.asarray(item_idx)]


def test_fusion_matches_serving():
    serving = pytest.importorskip("lmrec.serving.ensemble")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 12)) * 5 + 2, rng.normal(size=(3, 12))
    b[1] = 4.0  # a constant member row has no opinion
    mask = rng.random((3, 12)) < 0.7
    ours = fuse({"two_tower": a, "mf": b}, {"two_tower": 0.7, "mf": 0.3}, mask)
    for row in range(3):
        ref = serving.fuse_scores({"two_tower": a[row], "mf": b[row]}, {"two_tower": 0.7, "mf": 0.3}, mask[row])
        np.testing.assert_allclose(ours[row][mask[row]], ref[mask[row]], atol=1e-12)
    np.testing.assert_allclose(zscore_rows(b)[1], 0.0)


def test_weights_learned_on_validation_favour_the_informative_member(tmp_path):
    rng = np.random.default_rng(1)
    n_users, n_items = 40, 30
    train = pd.DataFrame({"user_idx": np.repeat(np.arange(n_users), 2), "item_idx": rng.integers(0, n_items, 80),
                          "rating": np.full(80, 3.0, dtype=np.float32)})
    valid_items = rng.integers(0, n_items, (n_users, 3))
    valid = pd.DataFrame({"user_idx": np.repeat(np.arange(n_users), 3), "item_idx": valid_items.ravel()})
    valid = valid.merge(train[["user_idx", "item_idx"]], how="left", indicator=True)
    valid = valid[valid["_merge"] == "left_only"].drop(columns="_merge").drop_duplicates()
    truth = np.zeros((n_users, n_items))
    truth[valid["user_idx"], valid["item_idx"]] = 1.0
    ratings_true = 1 + 4 * truth
    valid["rating"] = np.float32(5.0)
    disliked = pd.DataFrame({"user_idx": np.arange(n_users), "item_idx": truth.argmin(1), "rating": np.float32(1.0)})
    valid = pd.concat([valid, disliked], ignore_index=True)  # 1-star rows: rated, but not relevant
    good = _Fixed(truth + rng.normal(scale=0.5, size=truth.shape), ratings_true + rng.normal(scale=0.3, size=truth.shape))
    noise = _Fixed(rng.normal(size=truth.shape), np.full(truth.shape, 3.0))
    ens = FusedEnsemble({"two_tower": good, "mf": noise})
    weights = ens.fit_weights(train, valid, n_items, steps=200, relevance_threshold=4.0)
    assert weights["two_tower"] > 0.8 and sum(weights.values()) == pytest.approx(1.0)
    assert ens.rating_weights["two_tower"] > 0.9
    assert ens.score_items(np.array([0, 1])).shape == (2, n_items)
    path = ens.save_weights(tmp_path / "ensemble_weights.json", artifacts={"two_tower": "a", "mf": "b"})
    doc = load_weights(path)
    assert doc["weights"] == pytest.approx(weights)
    app = pytest.importorskip("lmrec.serving.app")
    app.EnsembleWeights(**doc["weights"])  # the JSON's weights validate as Serve's fusion weights
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an ensemble weights file"):
        load_weights(tmp_path / "bad.json")
