"""Metrics against brute-force pure-Python references on random cases with deliberate ties."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrec.evaluation.metrics import auc, mae, rank_top_k, ranking_metrics, rmse

# ------------------------------------------------------------------------------------- pure-Python references


def reference_auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def reference_ranking(scores, relevant, excluded, ks, candidates=None) -> dict:
    """Sort every user's list with Python's sorted() under the documented order and count by hand."""
    n_users, n_items = len(scores), len(scores[0])
    cand = set(range(n_items)) if candidates is None else set(int(c) for c in candidates)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("ndcg", "recall", "hr", "precision", "mrr")}
    covered = {k: set() for k in ks}
    users = 0
    for u in range(n_users):
        ranked = [i for i in range(n_items) if i in cand and not excluded[u][i]]
        rel = {i for i in ranked if relevant[u][i]}
        if not rel:
            continue
        users += 1
        # score descending, non-relevant before relevant, then item index.
        order = sorted(ranked, key=lambda i: (-scores[u][i], i in rel, i))
        for k in ks:
            top = order[:k]
            covered[k].update(top)
            hits = [i in rel for i in top]
            dcg = sum(1.0 / math.log2(r + 2) for r, h in enumerate(hits) if h)
            idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(rel))))
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"recall@{k}"] += sum(hits) / len(rel)
            sums[f"hr@{k}"] += float(any(hits))
            sums[f"precision@{k}"] += sum(hits) / k
            sums[f"mrr@{k}"] += 1.0 / (hits.index(True) + 1) if any(hits) else 0.0
    out = {key: (v / users if users else float("nan")) for key, v in sums.items()}
    for k in ks:
        out[f"coverage@{k}"] = len(covered[k]) / len(cand)
    out["users"] = users
    return out


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        if isinstance(want[key], float) and math.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], abs=1e-9), key


# ------------------------------------------------------------------------------------- rating metrics


def test_rmse_and_mae_known_values():
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert mae([1, 2, 3], [1, 2, 5]) == pytest.approx(2 / 3)
    assert rmse([4.0], [4.0]) == 0.0


@pytest.mark.parametrize("fn", [rmse, mae])
def test_rating_metrics_reject_bad_input(fn):
    with pytest.raises(ValueError, match="values"):
        fn([1, 2], [1])
    with pytest.raises(ValueError, match="zero"):
        fn([], [])
    with pytest.raises(ValueError, match="finite"):
        fn([1.0], [float("nan")])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(-3, 3)), min_size=2, max_size=40).filter(
        lambda xs: 0 < sum(y for y, _ in xs) < len(xs)
    )
)
def test_auc_matches_pairwise_count_with_ties(pairs):
    labels = [int(y) for y, _ in pairs]
    scores = [float(s) for _, s in pairs]
    assert auc(labels, scores) == pytest.approx(reference_auc(labels, scores))


def test_auc_extremes_and_single_class():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0/1"):
        auc([0, 2], [0.1, 0.2])


# ------------------------------------------------------------------------------------- ranking metrics


def random_case(rng: random.Random) -> dict:
    n_users, n_items = rng.randint(1, 12), rng.randint(1, 25)
    levels = rng.choice([2, 3, 5, 1000])  # few levels = many ties
    scores = [[float(rng.randrange(levels)) for _ in range(n_items)] for _ in range(n_users)]
    if rng.random() < 0.2:  # legitimate -inf scores must still rank (after every finite score)
        for row in scores:
            row[rng.randrange(n_items)] = float("-inf")
    relevant, excluded = [], []
    for _ in range(n_users):
        n_rel = rng.choice([0, 1, 1, 2, rng.randint(0, n_items)])
        rel_items = set(rng.sample(range(n_items), min(n_rel, n_items)))
        exc_items = set(rng.sample(range(n_items), rng.randint(0, n_items)))  # may overlap relevant items
        relevant.append([i in rel_items for i in range(n_items)])
        excluded.append([i in exc_items for i in range(n_items)])
    ks = tuple(rng.sample([1, 2, 3, 5, 10, 30], rng.randint(1, 3)))  # 30 > every catalogue here
    candidates = None
    if rng.random() < 0.3:
        candidates = rng.sample(range(n_items), rng.randint(1, n_items))
    return dict(scores=scores, relevant=relevant, excluded=excluded, ks=ks, candidates=candidates)


@pytest.mark.parametrize("seed", range(8))
def test_ranking_metrics_match_brute_force(seed):
    rng = random.Random(seed)
    for _ in range(50):
        case = random_case(rng)
        want = reference_ranking(**case)
        got = ranking_metrics(
            np.array(case["scores"], dtype=np.float32),
            np.array(case["relevant"]),
            np.array(case["excluded"]),
            ks=case["ks"],
            candidates=case["candidates"],
            batch_size=rng.randint(1, 5),
        )
        assert_same(got, want)


def test_constant_scores_do_not_look_good():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 200
    relevant = np.zeros((n_users, n_items), dtype=bool)
    for u in range(n_users):
        relevant[u, rng.choice(n_items, size=5, replace=False)] = True
    const = ranking_metrics(np.zeros((n_users, n_items), np.float32), relevant, ks=(10,))
    assert const["users"] == n_users
    # 195 non-relevant items rank ahead of the tied relevant ones: every top-10 is empty of hits.
    for m in ("ndcg@10", "recall@10", "hr@10", "precision@10", "mrr@10"):
        assert const[m] == 0.0
    random_scores = ranking_metrics(rng.random((n_users, n_items)).astype(np.float32), relevant, ks=(10,))
    assert random_scores["hr@10"] > const["hr@10"]


def test_perfect_scores_get_full_marks():
    relevant = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=bool)
    got = ranking_metrics(relevant.astype(np.float32), relevant, ks=(2, 10))
    for k in (2, 10):
        assert got[f"ndcg@{k}"] == pytest.approx(1.0)
        assert got[f"recall@{k}"] == 1.0
        assert got[f"hr@{k}"] == 1.0
        assert got[f"mrr@{k}"] == 1.0
    # precision divides by K, even past the catalogue size: user 0 has 2 hits, user 1 one hit.
    assert got["precision@10"] == pytest.approx((2 / 10 + 1 / 10) / 2)
    assert got["coverage@2"] == pytest.approx(3 / 5)  # {0, 2} ∪ {4, then item 0 wins the tie by index}


def test_recall_uses_all_relevant_items_as_denominator():
    scores = np.array([[5, 4, 3, 2, 1]], np.float32)
    relevant = np.array([[1, 1, 1, 1, 0]], bool)
    got = ranking_metrics(scores, relevant, ks=(2,))
    assert got["recall@2"] == 0.5
    assert got["ndcg@2"] == pytest.approx(1.0)  # ideal DCG is over min(K, #relevant) = 2 items


def test_excluded_wins_and_users_without_relevant_items_are_skipped():
    scores = np.array([[3, 2, 1], [3, 2, 1], [3, 2, 1]], np.float32)
    relevant = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 1]], bool)
    excluded = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]], bool)
    got = ranking_metrics(scores, relevant, excluded, ks=(1,))
    # user 0's only relevant item is excluded, user 1 has none: only user 2 counts, its item 2 at rank 2.
    assert got["users"] == 1
    assert got["hr@1"] == 0.0
    assert ranking_metrics(scores, relevant, excluded, ks=(2,))["mrr@2"] == 0.5


def test_candidates_restrict_the_ranking():
    scores = np.array([[9, 8, 1, 0]], np.float32)
    relevant = np.array([[0, 0, 0, 1]], bool)
    assert ranking_metrics(scores, relevant, ks=(1,))["hr@1"] == 0.0
    got = ranking_metrics(scores, relevant, ks=(1,), candidates=[2, 3])
    assert got["hr@1"] == 0.0 and got["mrr@1"] == 0.0
    got = ranking_metrics(scores, relevant, ks=(2,), candidates=[2, 3])
    assert got["mrr@2"] == 0.5 and got["coverage@2"] == 1.0


def test_rank_top_k_ignores_topk_tie_order():
    # 3 items tie at the K-th value, 1 of them relevant: the group is cut, non-relevant first, then by index.
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 3.0]])
    relevant = torch.tensor([[False, True, False, False, False]])
    none = torch.zeros_like(relevant)
    items, hits, n_rel = rank_top_k(scores, relevant, none, k=3)
    assert items.tolist() == [[4, 2, 3]] and hits.tolist() == [[False, False, False]] and n_rel.tolist() == [1]
    items, hits, _ = rank_top_k(scores, relevant, none, k=4)
    assert items.tolist() == [[4, 2, 3, 1]] and hits.tolist() == [[False, False, False, True]]
    # fewer rankable items than K: the list ends with -1, and a legitimate -inf score still ranks.
    scores = torch.tensor([[float("-inf"), 0.0, 5.0, float("-inf")]])
    excluded = torch.tensor([[False, False, True, True]])
    items, hits, _ = rank_top_k(scores, torch.tensor([[True, False, True, False]]), excluded, k=4)
    assert items.tolist() == [[1, 0, -1, -1]] and hits.tolist() == [[False, True, False, False]]


def test_ranking_rejects_nan_and_bad_arguments():
    rel = np.ones((1, 3), bool)
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(np.array([[1.0, np.nan, 0.0]]), rel)
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(np.zeros((1, 3)), rel, ks=(0,))
    with pytest.raises(ValueError, match="candidates"):
        ranking_metrics(np.zeros((1, 3)), rel, candidates=[5])
    with pytest.raises(ValueError, match="must match"):
        ranking_metrics(np.zeros((1, 3)), np.ones((1, 2), bool))


def test_score_dtypes_keep_their_order():
    relevant = np.array([[False, True, False]])
    # float64 scores closer than float32 can resolve must not collapse into a tie.
    close = np.array([[1.0, 1.0 + 1e-12, 0.0]], dtype=np.float64)
    assert ranking_metrics(close, relevant, ks=(1,))["hr@1"] == 1.0
    assert ranking_metrics(close.astype(np.float32), relevant, ks=(1,))["hr@1"] == 0.0  # now a tie: pessimistic
    assert ranking_metrics(np.array([[3, 7, 1]]), relevant, ks=(1,))["hr@1"] == 1.0  # integer scores
    half = torch.tensor([[0.5, 0.75, 0.25]], dtype=torch.float16)
    assert ranking_metrics(half, torch.from_numpy(relevant), ks=(1,))["mrr@1"] == 1.0
