"""Splits never leak, never lose a row, and are a function of their arguments: on synthetic data and ML-100K."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from lmrec.data.schema import DataError, Dataset
from lmrec.data.splits import (
    ColdStartItemsSpec,
    RandomSplitSpec,
    Split,
    cold_start_items,
    cold_start_users,
    leave_last_k,
    make_split,
    parse_split_spec,
    per_user_random_split,
    random_split,
    temporal_split,
)

ML100K_DIR = Path(os.environ.get("LMREC_DATA_DIR", "/work/shared/data")) / "ml-100k"
COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def ml100k() -> Dataset:
    if not (ML100K_DIR / "u.data").exists():
        pytest.skip(f"no ML-100K at {ML100K_DIR}")
    return Dataset.build("ml-100k", pd.read_csv(ML100K_DIR / "u.data", sep="\t", names=COLUMNS))


@st.composite
def interactions(draw: st.DrawFn, min_rows: int = 1) -> pd.DataFrame:
    """A small ratings table with repeated users/items and tied timestamps (ties are where splits go wrong)."""
    n = draw(st.integers(min_rows, 60))
    ints = st.lists(st.integers(1, 12), min_size=n, max_size=n)
    frame = pd.DataFrame(
        {
            "user_id": draw(ints),
            "item_id": draw(st.lists(st.integers(100, 125), min_size=n, max_size=n)),
            "rating": draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)),
            "timestamp": draw(st.lists(st.integers(0, 8), min_size=n, max_size=n)),
        }
    )
    return Dataset.build("synthetic", frame).interactions


def synthetic(n: int = 3000, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 80, n),
            "item_id": rng.integers(0, 200, n),
            "rating": rng.integers(1, 6, n),
            "timestamp": rng.integers(0, 500, n),
        }
    )
    return Dataset.build("synthetic", frame).interactions


def assert_partition(split: Split, inter: pd.DataFrame) -> None:
    """Every input row is in exactly one part, unchanged, with all its columns."""
    labels = np.concatenate([frame.index.to_numpy() for frame in split.parts.values()])
    assert len(labels) == len(inter) and len(np.unique(labels)) == len(inter)
    assert set(labels) == set(inter.index)
    for frame in split.parts.values():
        assert list(frame.columns) == list(inter.columns)
        pd.testing.assert_frame_equal(frame, inter.loc[frame.index])
        assert frame.index.is_monotonic_increasing  # original row order kept
    if split.support is not None:
        assert split.support.index.isin(split.train.index).all()


def row_users(frame: pd.DataFrame) -> set[int]:
    return set(frame["user_idx"].tolist())


def time_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by (user, timestamp, original position): the order leave-last-k and support sets are defined on."""
    return frame.assign(_pos=np.arange(len(frame))).sort_values(["user_idx", "timestamp", "_pos"])


# ------------------------------------------------------------------------------ properties on synthetic data


@FAST
@given(interactions(), st.floats(0.05, 0.6), st.sampled_from([0.0, 0.1, 0.3]), st.integers(0, 3))
def test_random_split(inter: pd.DataFrame, test_frac: float, valid_frac: float, seed: int) -> None:
    split = random_split(inter, test_frac, valid_frac, seed)
    assert_partition(split, inter)
    assert len(split.test) == int(np.floor(test_frac * len(inter) + 0.5))
    assert (split.valid is None) == (valid_frac == 0)
    # the test part is drawn first: tuning valid_frac cannot move test rows
    pd.testing.assert_frame_equal(split.test, random_split(inter, test_frac, 0.0, seed).test)


@FAST
@given(interactions(), st.floats(0.05, 0.6), st.sampled_from([0.0, 0.2]))
def test_temporal_split_puts_the_latest_rows_in_test(inter: pd.DataFrame, test_frac: float,
                                                      valid_frac: float) -> None:
    split = temporal_split(inter, test_frac, valid_frac)
    assert_partition(split, inter)
    earlier = pd.concat([split.train, split.valid if split.valid is not None else split.train.iloc[:0]])
    if len(split.test) and len(earlier):
        assert split.test["timestamp"].min() >= earlier["timestamp"].max()
    if split.valid is not None and len(split.valid) and len(split.train):
        assert split.valid["timestamp"].min() >= split.train["timestamp"].max()
    # ties are cut in file order: at the boundary timestamp, test holds the later rows
    if len(split.test) and len(earlier):
        t = split.test["timestamp"].min()
        if (earlier["timestamp"] == t).any():
            assert split.test.index[split.test["timestamp"] == t].min() > earlier.index[earlier["timestamp"] == t].max()


@FAST
@given(interactions(), st.floats(0.05, 0.9), st.integers(0, 3))
def test_per_user_split_keeps_train_and_test_for_every_user(inter: pd.DataFrame, test_frac: float,
                                                             seed: int) -> None:
    split = per_user_random_split(inter, test_frac, seed)
    assert_partition(split, inter)
    sizes = inter.groupby("user_idx").size()
    n_test = split.test.groupby("user_idx").size().reindex(sizes.index, fill_value=0)
    n_train = split.train.groupby("user_idx").size().reindex(sizes.index, fill_value=0)
    assert (n_train >= 1).all()
    assert (n_test[sizes >= 2] >= 1).all() and (n_test[sizes == 1] == 0).all()
    want = np.clip(np.floor(test_frac * sizes + 0.5), 1, sizes - 1).where(sizes >= 2, 0)
    assert (n_test == want).all()


@FAST
@given(interactions(), st.integers(1, 3), st.integers(0, 2))
def test_leave_last_k_takes_each_users_latest(inter: pd.DataFrame, k: int, valid_k: int) -> None:
    split = leave_last_k(inter, k, valid_k)
    assert_partition(split, inter)
    for user, rows in time_order(inter).groupby("user_idx"):
        idx = rows.index.to_numpy()
        test = split.test.index[split.test["user_idx"] == user].to_numpy()
        if len(idx) <= k:
            assert len(test) == 0
        else:
            assert set(test) == set(idx[-k:])
        if split.valid is not None:
            valid = split.valid.index[split.valid["user_idx"] == user].to_numpy()
            expected = idx[-k - valid_k:-k] if len(idx) > k + valid_k else []
            assert set(valid) == set(expected)
        assert (split.train["user_idx"] == user).any()


@FAST
@given(interactions(min_rows=5), st.floats(0.1, 0.5), st.sampled_from([0.0, 0.2]), st.integers(0, 3))
def test_cold_items_never_reach_train(inter: pd.DataFrame, item_frac: float, valid_frac: float, seed: int) -> None:
    n_items = inter["item_idx"].nunique()
    n_test = int(np.floor(item_frac * n_items + 0.5))
    if n_test < 1 or n_test + int(np.floor(valid_frac * n_items + 0.5)) >= n_items:
        with pytest.raises(ValueError):
            cold_start_items(inter, item_frac, seed, valid_frac)
        return
    split = cold_start_items(inter, item_frac, seed, valid_frac)
    assert_partition(split, inter)
    held_out = set(split.test["item_idx"]) | (set(split.valid["item_idx"]) if split.valid is not None else set())
    assert held_out == set(split.cold_items.tolist())
    assert not held_out & set(split.train["item_idx"])
    assert split.cold_items_in("test").tolist() == sorted(set(split.test["item_idx"]))
    assert len(split.cold_items_in("test")) == n_test


@FAST
@given(interactions(min_rows=10), st.floats(0.1, 0.7), st.integers(0, 3), st.integers(0, 3))
def test_cold_users_only_have_their_support_in_train(inter: pd.DataFrame, user_frac: float, k_support: int,
                                                    seed: int) -> None:
    eligible = (inter.groupby("user_idx").size() > k_support).sum()
    if np.floor(user_frac * eligible + 0.5) < 1:
        with pytest.raises(ValueError):
            cold_start_users(inter, user_frac, k_support, seed)
        return
    split = cold_start_users(inter, user_frac, k_support, seed)
    assert_partition(split, inter)
    cold = split.cold_users
    cold_train = split.train.loc[split.train["user_idx"].isin(cold)]
    assert set(cold_train.index) == set(split.support.index)  # the design: support is in train, nothing else
    assert row_users(split.test) == set(cold.tolist())  # each has > k_support ratings, so ≥ 1 test row
    assert not split.train_without_support()["user_idx"].isin(cold).any()
    ordered = time_order(inter)
    for user in cold:
        first = ordered.index[ordered["user_idx"] == user][:k_support]
        assert set(split.support.index[split.support["user_idx"] == user]) == set(first)


# ------------------------------------------------------------------------------ determinism


SEEDED = [
    lambda inter, seed: random_split(inter, 0.2, 0.1, seed),
    lambda inter, seed: per_user_random_split(inter, 0.2, seed),
    lambda inter, seed: cold_start_items(inter, 0.2, seed, 0.1),
    lambda inter, seed: cold_start_users(inter, 0.2, 3, seed),
]


@pytest.mark.parametrize("split_fn", SEEDED, ids=["random", "per_user_random", "cold_start_items", "cold_start_users"])
def test_seed_decides_the_split(split_fn) -> None:
    inter = synthetic()
    a, b, c = split_fn(inter, 11), split_fn(inter, 11), split_fn(inter, 12)
    for part in a.parts:
        pd.testing.assert_frame_equal(a.parts[part], b.parts[part])
    assert not a.test.index.equals(c.test.index)
    assert a.seed == 11 and c.seed == 12


def test_unseeded_splits_are_reproducible() -> None:
    inter = synthetic()
    for fn in (lambda: temporal_split(inter, 0.2, 0.1), lambda: leave_last_k(inter, 2, 1)):
        first, second = fn(), fn()
        assert first.seed is None
        for part in first.parts:
            pd.testing.assert_frame_equal(first.parts[part], second.parts[part])


# ------------------------------------------------------------------------------ ML-100K


ML100K_SPECS = [
    {"kind": "random", "test_frac": 0.2, "valid_frac": 0.1, "seed": 3},
    {"kind": "temporal", "test_frac": 0.2},
    {"kind": "per_user_random", "test_frac": 0.2, "seed": 3},
    {"kind": "leave_last_k", "k": 1, "valid_k": 1},
    {"kind": "cold_start_items", "item_frac": 0.2, "valid_frac": 0.1, "seed": 3},
    {"kind": "cold_start_users", "user_frac": 0.2, "k_support": 5, "seed": 3},
    {"kind": "ml100k_canonical", "name": "u1"},
]


@pytest.mark.parametrize("spec", ML100K_SPECS, ids=[s["kind"] for s in ML100K_SPECS])
def test_ml100k_splits_do_not_leak(ml100k: Dataset, spec: dict) -> None:
    inter = ml100k.interactions
    split = make_split(ml100k, spec)
    assert_partition(split, inter)
    assert split.name.startswith("ml-100k/")
    assert split.params == {k: v for k, v in parse_split_spec(spec).model_dump().items() if k != "seed"}
    if split.cold_items is not None:
        assert not split.train["item_idx"].isin(split.cold_items).any()
    if split.cold_users is not None:
        cold_train = split.train.loc[split.train["user_idx"].isin(split.cold_users)]
        assert cold_train.index.equals(split.support.index)
        assert (cold_train.groupby("user_idx").size() == spec["k_support"]).all()
    again = make_split(ml100k, spec)
    for part in split.parts:
        assert split.parts[part].index.equals(again.parts[part].index)


def test_ml100k_reference_counts(ml100k: Dataset) -> None:
    inter = ml100k.interactions
    per_user = per_user_random_split(inter, 0.2, seed=0)
    # per-user round(0.2·n) happens to sum to exactly 20% of ML-100K's ratings
    assert (len(per_user.train), len(per_user.test)) == (80_000, 20_000)
    assert per_user.test["user_idx"].nunique() == ml100k.n_users
    last = leave_last_k(inter, k=1)
    assert len(last.test) == ml100k.n_users  # every user has ≥ 20 ratings
    cold = cold_start_items(inter, item_frac=0.2, seed=0)
    assert len(cold.cold_items) == round(0.2 * ml100k.n_items)


# ------------------------------------------------------------------------------ the spec


def test_spec_rejects_typos_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="extra"):
        parse_split_spec({"kind": "random", "test_frac": 0.2, "tset_frac": 0.1})
    with pytest.raises(ValidationError):
        parse_split_spec({"kind": "random_split"})
    with pytest.raises(ValidationError, match="valid_frac"):
        RandomSplitSpec(test_frac=0.6, valid_frac=0.5)
    with pytest.raises(ValidationError):
        ColdStartItemsSpec(item_frac=1.2)
    with pytest.raises(ValidationError):
        parse_split_spec({"kind": "ml100k_canonical", "name": "u6"})
    with pytest.raises(ValidationError):
        parse_split_spec({"kind": "leave_last_k", "k": 0})


def test_every_spec_field_is_described() -> None:
    from typing import get_args

    from lmrec.data.canonical import ML100K_SPLIT_NAMES
    from lmrec.data.splits import ML100KCanonicalSpec, SplitSpec

    union = get_args(get_args(SplitSpec)[0])
    assert len(union) == 7
    for model in union:
        for name, info in model.model_fields.items():
            assert name == "kind" or info.description, f"{model.__name__}.{name} lacks a description"
    assert set(get_args(ML100KCanonicalSpec.model_fields["name"].annotation)) == set(ML100K_SPLIT_NAMES)


def test_make_split_equals_the_function() -> None:
    inter = synthetic()
    ds = Dataset(name="syn", interactions=inter, items=pd.DataFrame(), users=pd.DataFrame())
    via_spec = make_split(ds, RandomSplitSpec(test_frac=0.25, seed=5))
    direct = random_split(inter, 0.25, seed=5)
    assert via_spec.name == "syn/random" and via_spec.test.index.equals(direct.test.index)


def test_bad_inputs_are_named() -> None:
    inter = synthetic(50)
    with pytest.raises(DataError, match="timestamp"):
        temporal_split(inter.drop(columns="timestamp"), 0.2)
    with pytest.raises(DataError, match="unique"):
        random_split(pd.concat([inter, inter]), 0.2)
    with pytest.raises(DataError, match="empty"):
        random_split(inter.iloc[:0], 0.2)
    with pytest.raises(ValueError, match="test_frac"):
        random_split(inter, 0.0)
    with pytest.raises(ValueError):
        leave_last_k(inter, k=0)
