"""The evaluation driver on tiny real models of the ``Recommender`` contract with fixed score matrices."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmrec.evaluation import (
    evaluate_model,
    evaluate_ranking,
    evaluate_ratings,
    format_metrics_table,
    ranking_metrics,
)
from lmrec.models.base import Recommender

DATA_DIR = Path(os.environ.get("LMREC_DATA_DIR", "/work/shared/data"))


def assert_same(got: dict, want: dict) -> None:
    """Same keys; equal values (NaN equal to NaN)."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key


class FixedScores:
    """A complete recommender whose scores are a fixed matrix: predict = the matrix entry."""

    def __init__(self, scores: np.ndarray, name: str = "fixed") -> None:
        self.scores = np.asarray(scores, dtype=np.float32)
        self.name = name

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "FixedScores":
        return self

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        return self.scores[user_idx, item_idx]

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        return self.scores[user_idx]


@dataclass
class SimpleSplit:
    """The attributes of ``lmrec.data.splits.Split`` that evaluation reads."""

    train: pd.DataFrame
    test: pd.DataFrame
    valid: pd.DataFrame | None = None
    support: pd.DataFrame | None = None
    cold_items: np.ndarray | None = None


def frame(rows: list[tuple[int, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating"])


SCORES = np.array(
    [
        [5.0, 4.0, 3.0, 2.0, 1.0],
        [1.0, 2.0, 3.0, 4.0, 5.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ]
)
TRAIN = frame([(0, 0, 4), (1, 4, 5), (2, 1, 3)])
TEST = frame([(0, 1, 5), (0, 3, 2), (1, 0, 4), (2, 2, 5), (2, 4, 1)])


def test_fixed_scores_honours_the_contract():
    assert isinstance(FixedScores(SCORES), Recommender)


def test_evaluate_ratings_known_values():
    got = evaluate_ratings(FixedScores(SCORES), TEST)
    err = np.array([4 - 5, 2 - 2, 1 - 4, 0 - 5, 0 - 1], dtype=float)
    assert got == pytest.approx({"rmse": np.sqrt(np.mean(err**2)), "mae": np.mean(np.abs(err)), "n": 5})


def test_evaluate_ranking_hand_computed():
    got = evaluate_ranking(FixedScores(SCORES), TRAIN, TEST, n_items=5, ks=(2,))
    # user 0 ranks [1, 2, 3, 4] (0 is train): item 1 at rank 1 hits, item 3 at rank 3 misses.
    # user 1 ranks [3, 2, 1, 0] (4 is train): item 0 is last.
    # user 2 ties everything; non-relevant first: [0, 3, 2, 4] -> no hit in the top 2.
    assert got["users"] == 3
    assert got["hr@2"] == pytest.approx(1 / 3)
    assert got["recall@2"] == pytest.approx(0.5 / 3)
    assert got["precision@2"] == pytest.approx(0.5 / 3)
    assert got["mrr@2"] == pytest.approx(1 / 3)
    assert got["ndcg@2"] == pytest.approx((1 / (1 + 1 / np.log2(3))) / 3)
    assert got["coverage@2"] == pytest.approx(len({1, 2, 3, 0}) / 5)


def test_relevance_threshold_keeps_only_liked_items():
    got = evaluate_ranking(FixedScores(SCORES), TRAIN, TEST, n_items=5, ks=(2,), relevance_threshold=4)
    # relevant: user 0 -> {1}, user 1 -> {0}, user 2 -> {2}; user 0 now has recall 1.
    assert got["users"] == 3
    assert got["recall@2"] == pytest.approx(1 / 3)
    assert evaluate_ranking(FixedScores(SCORES), TRAIN, TEST, 5, relevance_threshold=6)["users"] == 0


def test_driver_matches_dense_metrics_and_is_batch_independent():
    # ranking_metrics on dense masks is checked against a brute-force reference in test_metrics.py;
    # here the driver must build the same masks from frames, whatever the batch size.
    rng = np.random.default_rng(3)
    n_users, n_items = 40, 30
    scores = rng.integers(0, 4, size=(n_users, n_items)).astype(np.float32)  # heavy ties
    pairs = rng.permutation([(u, i) for u in range(n_users) for i in range(n_items)])[:500]
    ratings = rng.integers(1, 6, size=len(pairs)).astype(float)
    rows = frame([(int(u), int(i), r) for (u, i), r in zip(pairs, ratings)])
    train, test = rows.iloc[:350], rows.iloc[350:]
    model = FixedScores(scores)
    relevant = np.zeros((n_users, n_items), bool)
    excluded = np.zeros((n_users, n_items), bool)
    relevant[test.user_idx, test.item_idx] = True
    excluded[train.user_idx, train.item_idx] = True
    want = ranking_metrics(scores, relevant, excluded, ks=(1, 5, 50))
    for batch_size in (1, 7, 512):
        got = evaluate_ranking(model, train, test, n_items, ks=(1, 5, 50), batch_size=batch_size)
        assert_same(got, want)
    cands = np.arange(0, n_items, 2)
    want = ranking_metrics(scores, relevant, excluded, ks=(5,), candidates=cands)
    assert_same(evaluate_ranking(model, train, test, n_items, ks=(5,), candidates=cands), want)


def test_evaluate_model_flat_dict_excludes_valid_and_ranks_cold_items():
    valid = frame([(1, 3, 4)])
    split = SimpleSplit(train=TRAIN, test=TEST, valid=valid)
    model = FixedScores(SCORES)
    got = evaluate_model(model, split, n_items=5, ks=(1,))
    assert {"rmse", "mae", "n", "ndcg@1", "coverage@1", "users"} <= got.keys()
    # user 1's top item after train (4) and valid (3) are excluded is item 2: no hit.
    assert got["hr@1"] == pytest.approx(1 / 3)
    assert got == evaluate_model(model, split, 5, (1,)) and got["n"] == 5
    assert "rmse" not in evaluate_model(model, split, 5, (1,), rating_metrics=False)
    on_valid = evaluate_model(model, split, 5, (1,), part="valid", rating_metrics=False)
    assert on_valid["users"] == 1 and on_valid["hr@1"] == 1.0  # item 3 ranks first once 4 is excluded

    test_rows = TEST.iloc[:4]  # item 4 now occurs only in valid
    cold = SimpleSplit(train=TRAIN, test=test_rows, cold_items=np.array([2, 3, 4]), valid=frame([(0, 4, 5)]))
    ranked_cold = evaluate_model(model, cold, 5, (1,), rating_metrics=False)
    # cold item 4 only occurs in valid, so only {2, 3} are ranked on test:
    # user 0 -> 3 relevant (rank 2), user 1 -> none (skipped), user 2 -> 2 vs 3 tie (3 first).
    assert ranked_cold["users"] == 2 and ranked_cold["hr@1"] == 0.0 and ranked_cold["coverage@1"] == 1.0
    everything = evaluate_model(model, cold, 5, (1,), rating_metrics=False, rank_cold_items_only=False)
    assert everything["users"] == 3


def test_bad_model_output_is_reported():
    class WrongWidth(FixedScores):
        def score_items(self, user_idx: np.ndarray) -> np.ndarray:
            return self.scores[user_idx, :4]

    with pytest.raises(ValueError, match="expected"):
        evaluate_ranking(WrongWidth(SCORES, name="wrong"), TRAIN, TEST, n_items=5)
    with pytest.raises(ValueError, match="outside"):
        evaluate_ranking(FixedScores(SCORES), TRAIN, frame([(0, 9, 5)]), n_items=5)


def test_format_metrics_table_aligns_columns():
    rows = [
        {"model": "popularity", "rmse": 1.0234567, "ndcg@10": 0.1, "users": 943},
        {"model": "mf", "ndcg@10": 0.25, "users": 943, "extra": float("nan")},
    ]
    text = format_metrics_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["model", "rmse", "ndcg@10", "users", "extra"]
    assert "1.0235" in lines[2] and lines[3].split()[-1] == "-"
    # numbers are right-aligned under their header; the model name is left-aligned
    for col, row, value in (("rmse", 2, "1.0235"), ("ndcg@10", 3, "0.2500"), ("users", 3, "943")):
        assert lines[row].index(value) + len(value) == lines[0].index(col) + len(col)
    assert lines[3].startswith("mf ")
    print("\n" + text)
    assert format_metrics_table([]) == ""


@pytest.mark.skipif(not (DATA_DIR / "ml-100k" / "u1.base").exists(), reason="ML-100K not available")
def test_ml100k_sized_full_ranking_speed_and_correctness():
    cols = ["user_idx", "item_idx", "rating", "timestamp"]
    train = pd.read_csv(DATA_DIR / "ml-100k" / "u1.base", sep="\t", names=cols)
    test = pd.read_csv(DATA_DIR / "ml-100k" / "u1.test", sep="\t", names=cols)
    train[["user_idx", "item_idx"]] -= 1  # raw ids are 1..943 / 1..1682, contiguous
    test[["user_idx", "item_idx"]] -= 1
    n_users, n_items = 943, 1682
    popularity = np.bincount(train.item_idx, minlength=n_items).astype(np.float32)
    model = FixedScores(np.tile(popularity, (n_users, 1)), name="popularity")
    start = time.perf_counter()
    got = evaluate_ranking(model, train, test, n_items, ks=(10, 20))
    elapsed = time.perf_counter() - start
    print(f"\nML-100K u1 full ranking, 943 x 1682, ks=(10, 20): {elapsed:.3f} s; popularity {got}")
    # the first 60 users against dense masks built independently of the driver
    some = test[test.user_idx < 60]
    relevant = np.zeros((60, n_items), bool)
    excluded = np.zeros((60, n_items), bool)
    relevant[some.user_idx, some.item_idx] = True
    tr = train[train.user_idx < 60]
    excluded[tr.user_idx, tr.item_idx] = True
    want = ranking_metrics(model.scores[:60], relevant, excluded, ks=(10, 20))
    assert_same(evaluate_ranking(model, train, some, n_items, ks=(10, 20)), want)
    assert got["users"] == test.user_idx.nunique() == 459
    assert 0.0 < got["ndcg@10"] < 1.0
    dense = ranking_metrics(model.scores, np.zeros((n_users, n_items), bool), ks=(10,))
    assert dense["users"] == 0
