"""Implicit view, exact negative sampling and the user × item matrix, on ML-100K and synthetic tables."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lmrec.data.sampling import implicit_view, sample_negatives, user_item_csr
from lmrec.data.schema import DataError, Dataset

ML100K_DIR = Path(os.environ.get("LMREC_DATA_DIR", "/work/shared/data")) / "ml-100k"
COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


@pytest.fixture(scope="module")
def ml100k() -> Dataset:
    if not (ML100K_DIR / "u.data").exists():
        pytest.skip(f"no ML-100K at {ML100K_DIR}")
    return Dataset.build("ml-100k", pd.read_csv(ML100K_DIR / "u.data", sep="\t", names=COLUMNS))


def pairs(users: list[int], items: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"user_idx": np.asarray(users, dtype=np.int64), "item_idx": np.asarray(items, dtype=np.int64)})


def known_pairs(*frames: pd.DataFrame) -> set[tuple[int, int]]:
    return {(int(u), int(i)) for f in frames for u, i in zip(f["user_idx"], f["item_idx"])}


# ------------------------------------------------------------------------------ implicit view


def test_implicit_view_thresholds_ratings(ml100k: Dataset) -> None:
    inter = ml100k.interactions
    liked = implicit_view(inter, threshold=4)
    assert len(liked) == 34_174 + 21_201  # ratings 4 and 5 in the README's histogram
    assert (liked["rating"] >= 4).all() and list(liked.columns) == list(inter.columns)
    assert liked.index.isin(inter.index).all()
    assert len(implicit_view(inter)) == len(inter)
    with pytest.raises(DataError):
        implicit_view(inter.drop(columns="rating"), threshold=4)


# ------------------------------------------------------------------------------ negatives


def test_negatives_on_ml100k_are_never_known(ml100k: Dataset) -> None:
    inter = ml100k.interactions
    positives = implicit_view(inter, threshold=4)
    neg = sample_negatives(positives, ml100k.n_items, 8, seed=1, exclude=inter)
    assert neg.shape == (len(positives), 8) and neg.dtype == np.int64
    assert neg.min() >= 0 and neg.max() < ml100k.n_items
    # vectorised membership: key = user * n_items + item against every rated pair (positive or not)
    rated = np.unique(inter["user_idx"].to_numpy() * ml100k.n_items + inter["item_idx"].to_numpy())
    keys = positives["user_idx"].to_numpy()[:, None] * ml100k.n_items + neg
    assert not np.isin(keys, rated).any()
    np.testing.assert_array_equal(neg, sample_negatives(positives, ml100k.n_items, 8, seed=1, exclude=inter))
    assert not np.array_equal(neg, sample_negatives(positives, ml100k.n_items, 8, seed=2, exclude=inter))


def test_without_exclude_only_positives_are_avoided(ml100k: Dataset) -> None:
    inter = ml100k.interactions
    positives = implicit_view(inter, threshold=4)
    neg = sample_negatives(positives, ml100k.n_items, 4, seed=0)
    keys = positives["user_idx"].to_numpy()[:, None] * ml100k.n_items + neg
    pos_keys = positives["user_idx"].to_numpy() * ml100k.n_items + positives["item_idx"].to_numpy()
    assert not np.isin(keys, pos_keys).any()
    low = inter.loc[inter["rating"] < 4]
    low_keys = low["user_idx"].to_numpy() * ml100k.n_items + low["item_idx"].to_numpy()
    assert np.isin(keys, low_keys).any()  # disliked items are fair game unless excluded


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 12),
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 11)), min_size=1, max_size=40),
    st.integers(1, 5),
    st.integers(0, 1000),
)
def test_negatives_are_exact_even_for_nearly_complete_users(n_items: int, rows: list[tuple[int, int]], k: int,
                                                            seed: int) -> None:
    users = [u for u, i in rows if i < n_items]
    items = [i for u, i in rows if i < n_items]
    if not users:
        return
    positives = pairs(users, items)
    # user 0 knows every item but one: rejection alone keeps failing, the exact fallback must fill the slots
    exclude = pairs([0] * (n_items - 1), list(range(1, n_items)))
    knows = {u: {i for v, i in zip(users, items) if v == u} for u in set(users)}
    knows[0] = knows.get(0, set()) | set(range(1, n_items))
    if any(len(seen) == n_items for seen in knows.values()):  # user 0 with item 0, or a small catalogue all rated
        with pytest.raises(ValueError, match="every item"):
            sample_negatives(positives, n_items, k, seed, exclude)
        return
    neg = sample_negatives(positives, n_items, k, seed, exclude)
    known = known_pairs(positives, exclude)
    for user, row in zip(positives["user_idx"], neg):
        assert all((int(user), int(item)) not in known for item in row)
    assert (neg[positives["user_idx"].to_numpy() == 0] == 0).all()


def test_negatives_are_uniform_over_unknown_items() -> None:
    n_items, known = 10, [2, 5, 7]
    positives = pairs([3] * len(known), known)
    neg = sample_negatives(positives, n_items, 3000, seed=0)
    counts = np.bincount(neg.ravel(), minlength=n_items)
    assert counts[known].sum() == 0
    unknown = np.setdiff1d(np.arange(n_items), known)
    assert stats.chisquare(counts[unknown]).pvalue > 1e-3


def test_user_who_knows_every_item_is_an_error() -> None:
    with pytest.raises(ValueError, match="every item"):
        sample_negatives(pairs([0, 0, 0], [0, 1, 2]), n_items=3, n_per_positive=1)
    with pytest.raises(ValueError, match="out of range"):
        sample_negatives(pairs([0], [5]), n_items=3, n_per_positive=1)


# ------------------------------------------------------------------------------ user × item matrix


def test_csr_holds_the_ratings(ml100k: Dataset) -> None:
    inter = ml100k.interactions
    m = user_item_csr(inter, ml100k.n_users, ml100k.n_items)
    assert m.shape == (943, 1682) and m.nnz == 100_000 and m.dtype == np.float32
    assert m.sum() == pytest.approx(float(inter["rating"].sum()))
    row = inter.iloc[123]
    assert m[int(row["user_idx"]), int(row["item_idx"])] == row["rating"]
    b = user_item_csr(inter, ml100k.n_users, ml100k.n_items, values="binary")
    assert b.nnz == 100_000 and set(np.unique(b.data)) == {1.0}
    np.testing.assert_array_equal(np.asarray(b.sum(axis=1)).ravel(), inter.groupby("user_idx").size().to_numpy())


def test_csr_keeps_the_latest_duplicate() -> None:
    df = pd.DataFrame(
        {"user_idx": [0, 0, 1, 0], "item_idx": [1, 1, 2, 1], "rating": [2.0, 5.0, 3.0, 4.0],
         "timestamp": [10, 30, 5, 20]}
    )
    m = user_item_csr(df, 2, 3)
    assert m.nnz == 2 and m[0, 1] == 5.0 and m[1, 2] == 3.0
    assert user_item_csr(df, 2, 3, values="binary")[0, 1] == 1.0
    with pytest.raises(ValueError, match="out of range"):
        user_item_csr(df, 1, 3)
    with pytest.raises(ValueError, match="values"):
        user_item_csr(df, 2, 3, values="count")
