"""``lmrec.artifacts.ann.ItemIndex``: exact below the threshold, faiss IVF above it, exclusions and filters honoured,
items added at run time findable, and exact scoring when faiss is not installed."""

from __future__ import annotations

import importlib.util
import logging
import sys

import numpy as np
import pytest

from lmrec.artifacts import ann
from lmrec.artifacts.ann import ItemIndex
from lmrec.data.synthetic import clustered_vectors

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                                 reason="the ann extra (faiss-cpu) is not installed")


@pytest.fixture(scope="module")
def table():
    """20,000 clustered items and 50 users at 64 dimensions, their exact top 100, and one forced-IVF index."""
    items, users = clustered_vectors(20_000, 50, 64, seed=0)
    truth = np.argsort(-(users @ items.T), axis=1, kind="stable")[:, :100]
    return items, users, truth, ItemIndex.build(items, exact_below=0)


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(ids, truth)]))


def test_exact_path_equals_argsort():
    items, users = clustered_vectors(3_000, 7, 16, seed=1)
    index = ItemIndex.build(items)
    assert index.kind == "exact"
    ids, scores = index.search(users, 25)
    full = users @ items.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :25]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-6)


@needs_faiss
def test_bias_is_part_of_the_score():
    items, users = clustered_vectors(500, 4, 8, seed=2)
    bias = np.random.default_rng(0).normal(0, 1, 500).astype(np.float32)
    ids, scores = ItemIndex.build(items, bias=bias).search(users, 10)
    full = users @ items.T + bias
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1, kind="stable")[:, :10])
    ann_ids, _ = ItemIndex.build(items, bias=bias, exact_below=0).search(users, 10)
    assert recall(ann_ids, ids) >= 0.9


@needs_faiss
def test_ivf_recall_at_100(table):
    items, users, truth, index = table
    assert index.kind == "ivf"
    ids, scores = index.search(users, 100)
    assert recall(ids, truth) >= 0.98
    # scores are the exact inner products of the returned items, best first
    np.testing.assert_allclose(scores, np.einsum("bkd,bd->bk", items[ids], users), rtol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


@needs_faiss
def test_exclusions_are_honoured(table):
    items, users, truth, index = table
    exclude = [truth[r, : 10 + r] for r in range(len(users))]  # each user's own best items, of varying count
    for idx in (index, ItemIndex.build(items)):
        ids, _ = idx.search(users, 100, exclude=exclude)
        for r in range(len(users)):
            assert not np.isin(ids[r], exclude[r]).any()
            assert (ids[r] >= 0).all()
        # what is left of the exact list is still found
        assert recall(ids, truth[:, 60:]) >= 0.95


@needs_faiss
@pytest.mark.parametrize("share", [0.5, 0.01])
def test_allowed_filter_is_honoured(table, share):
    """A broad filter goes through the index (over-fetch), a narrow one is scored exactly over the allowed items."""
    items, users, _, index = table
    allowed = np.flatnonzero(np.random.default_rng(3).random(len(items)) < share)
    ids, _ = index.search(users, 100, allowed=allowed, exclude=[allowed[:5]] * len(users))
    assert np.isin(ids, allowed).all()
    assert not np.isin(ids, allowed[:5]).any()
    truth = np.argsort(-(users @ items[allowed].T), axis=1, kind="stable")
    truth = allowed[truth[:, :105]]
    truth = np.stack([row[~np.isin(row, allowed[:5])][:100] for row in truth])
    assert recall(ids, truth) >= 0.97


@needs_faiss
def test_a_filter_with_fewer_items_than_k_pads():
    items, users = clustered_vectors(200, 2, 8, seed=4)
    ids, scores = ItemIndex.build(items, exact_below=0).search(users, 10, allowed=np.array([3, 7, 11]))
    assert sorted(ids[0, :3]) == [3, 7, 11]
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()


@needs_faiss
def test_added_items_are_findable(table):
    items, users, _, _ = table
    index = ItemIndex.build(items, exact_below=0)
    direction = users[:4] / np.linalg.norm(users[:4], axis=1, keepdims=True)
    # each new item points straight at one user, so it must top that user's list: first one inside the trained
    # cells, then three longer than any item the cells were trained on (scored exactly until a rebuild)
    inside = index.add(direction[:1] * 0.99 * index.max_norm)
    assert inside.tolist() == [20_000] and len(index.overflow) == 0
    assert index.search(users[:1], 100)[0][0, 0] == 20_000
    longer = index.add(direction[1:] * 10 * index.max_norm)
    np.testing.assert_array_equal(longer, [20_001, 20_002, 20_003])
    np.testing.assert_array_equal(index.overflow, longer)
    np.testing.assert_array_equal(index.search(users[1:4], 100)[0][:, 0], longer)
    rebuilt = index.rebuild()
    assert rebuilt.n_items == 20_004 and rebuilt.trained_on == 20_004 and len(rebuilt.overflow) == 0
    np.testing.assert_array_equal(rebuilt.search(users[1:4], 1)[0][:, 0], longer)


@needs_faiss
def test_crossing_the_threshold_builds_the_index():
    items, users = clustered_vectors(1_000, 2, 8, seed=5)
    index = ItemIndex.build(items[:900], exact_below=950)
    assert index.kind == "exact"
    index.add(items[900:])
    assert index.kind == "ivf"


def test_without_faiss_it_scores_exactly(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    monkeypatch.setattr(ann._faiss, "warned", False, raising=False)
    items, users = clustered_vectors(2_000, 3, 8, seed=6)
    with caplog.at_level(logging.WARNING, logger="lmrec.artifacts.ann"):
        index = ItemIndex.build(items, exact_below=0)
    assert index.kind == "exact"
    assert "faiss is not installed" in caplog.text
    ids, _ = index.search(users, 10)
    np.testing.assert_array_equal(ids, np.argsort(-(users @ items.T), axis=1, kind="stable")[:, :10])


def test_bad_shapes_are_errors():
    index = ItemIndex.build(np.ones((5, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        index.search(np.ones((2, 3)), 1)
    with pytest.raises(ValueError, match="exclude has 1 rows for 2"):
        index.search(np.ones((2, 4)), 1, exclude=[np.array([0])])
