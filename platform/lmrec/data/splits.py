"""Train / valid / test splits of an interactions table, each one a deterministic function of its arguments.

Every split function takes the interactions frame (``Dataset.interactions``: user_id, item_id, rating, timestamp,
user_idx, item_idx) and returns a ``Split`` whose parts are row subsets of that frame: all columns kept, the
original index kept (so a row's identity survives the split), rows in their original order. Randomness comes only
from ``numpy.random.default_rng(seed)``; splits without randomness record ``seed=None``.

Where a split has both a validation and a test part, the test part is drawn first, so for a given seed the test
set does not change when ``valid_frac`` / ``valid_k`` is tuned.

``SplitSpec`` is the typed, YAML-friendly description of a split; ``make_split(dataset, spec)`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Literal, Union

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from lmrec.data.canonical import ML100K_SPLIT_NAMES, ml100k_test_mask
from lmrec.data.schema import DataError, Dataset

_TRAIN, _VALID, _TEST = 0, 1, 2


@dataclass(frozen=True, eq=False)
class Split:
    """One split of an interactions table.

    train / valid / test partition the input rows: every row is in exactly one of them (``valid`` is None when the
    split has no validation part).

    support: for cold-start-user splits only, the held-out users' few known ratings (their earliest ``k_support``).
        **These rows are also in ``train``** (``support`` is a labelled subset of ``train``, not a fourth part), so a
        model fitted on ``train`` sees exactly what the protocol allows it to know about a new user, and evaluation
        code that excludes a user's train items from ranking excludes the support items too. A protocol that must
        withhold them until adaptation time uses ``train_without_support()``. None for other splits.
    cold_items: item_idx of every held-out item (in valid or test, never in train); None unless items are held out.
        ``cold_items_in("test")`` gives the candidate set for ranking on the test part.
    cold_users: user_idx of the held-out users; their only train rows are their support rows. None otherwise.
    seed: the numpy seed used, or None for deterministic splits (temporal, leave-last-k, canonical).
    params: the arguments that made the split, including ``kind``: enough to make it again.
    """

    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    valid: pd.DataFrame | None = None
    support: pd.DataFrame | None = None
    cold_items: np.ndarray | None = None
    cold_users: np.ndarray | None = None
    seed: int | None = None
    params: dict = field(default_factory=dict)

    @property
    def parts(self) -> dict[str, pd.DataFrame]:
        """The disjoint parts that exist, by name: train, valid (if any), test."""
        out = {"train": self.train}
        if self.valid is not None:
            out["valid"] = self.valid
        out["test"] = self.test
        return out

    def cold_items_in(self, part: Literal["valid", "test"]) -> np.ndarray:
        """Held-out items that occur in ``part`` (sorted item_idx): the candidates when ranking only new items."""
        if self.cold_items is None:
            raise ValueError(f"split {self.name!r} holds out no items")
        frame = self.valid if part == "valid" else self.test
        if frame is None:
            return np.empty(0, dtype=np.int64)
        return np.intersect1d(self.cold_items, frame["item_idx"].to_numpy()).astype(np.int64)

    def train_without_support(self) -> pd.DataFrame:
        """``train`` minus the cold users' support rows (for protocols that feed support only at adaptation)."""
        if self.support is None:
            return self.train
        return self.train.loc[~self.train.index.isin(self.support.index)]

    def summary(self) -> dict:
        """Row, user and item counts per part, for logs and reports."""
        out: dict = {"name": self.name, "seed": self.seed}
        frames = dict(self.parts)
        if self.support is not None:
            frames["support"] = self.support
        for part, frame in frames.items():
            out[part] = {
                "rows": len(frame),
                "users": int(frame["user_idx"].nunique()),
                "items": int(frame["item_idx"].nunique()),
            }
        if self.cold_items is not None:
            out["cold_items"] = len(self.cold_items)
        if self.cold_users is not None:
            out["cold_users"] = len(self.cold_users)
        return out


# ----------------------------------------------------------------------------------------------- helpers


def _check_interactions(interactions: pd.DataFrame, needs: tuple[str, ...]) -> None:
    missing = [c for c in needs if c not in interactions.columns]
    if missing:
        raise DataError(f"cannot split interactions: missing column(s) {missing}")
    if len(interactions) == 0:
        raise DataError("cannot split an empty interactions table")
    if not interactions.index.is_unique:
        # Parts are identified by index label (support ⊆ train, leakage checks): duplicates would blur that.
        raise DataError("interactions index must be unique (use reset_index(drop=True))")


def _check_fracs(test_frac: float, valid_frac: float, what: str = "test_frac") -> None:
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"{what} must be in (0, 1), got {test_frac}")
    if not 0.0 <= valid_frac < 1.0 or test_frac + valid_frac >= 1.0:
        raise ValueError(f"valid_frac must be in [0, 1) with {what} + valid_frac < 1, got {valid_frac}")


def _count(frac: float, n: int | np.ndarray) -> int | np.ndarray:
    """round(frac * n), halves up (numpy's round would send 2.5 to 2)."""
    return np.floor(np.asarray(frac * n, dtype=np.float64) + 0.5).astype(np.int64)


def _within_user_order(user: np.ndarray, *keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort rows by user, then by ``keys`` (first key most significant).

    Returns (order, rank, size): ``order`` are row positions in sorted order; for the sorted rows, ``rank`` is the
    0-based place within the user's rows and ``size`` the user's row count.
    """
    order = np.lexsort(tuple(reversed(keys)) + (user,))
    u = user[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    sizes = np.diff(np.r_[starts, len(u)])
    rank = np.arange(len(u)) - np.repeat(starts, sizes)
    return order, rank, np.repeat(sizes, sizes)


def _assemble(interactions: pd.DataFrame, name: str, part: np.ndarray, with_valid: bool, seed: int | None,
              params: dict, **extra) -> Split:
    """Build the Split from a per-row part code (_TRAIN/_VALID/_TEST); rows keep their order and index."""

    def rows(code: int) -> pd.DataFrame:
        return interactions.iloc[np.flatnonzero(part == code)]

    return Split(
        name=name,
        train=rows(_TRAIN),
        valid=rows(_VALID) if with_valid else None,
        test=rows(_TEST),
        seed=seed,
        params=params,
        **extra,
    )


# ----------------------------------------------------------------------------------------------- split functions


def random_split(interactions: pd.DataFrame, test_frac: float, valid_frac: float = 0.0, seed: int = 0) -> Split:
    """Uniformly random rows: round(test_frac·n) to test, then round(valid_frac·n) to valid, the rest to train."""
    _check_interactions(interactions, ("user_idx", "item_idx"))
    _check_fracs(test_frac, valid_frac)
    n = len(interactions)
    n_test, n_valid = int(_count(test_frac, n)), int(_count(valid_frac, n))
    perm = np.random.default_rng(seed).permutation(n)
    part = np.full(n, _TRAIN, dtype=np.int8)
    part[perm[:n_test]] = _TEST
    part[perm[n_test:n_test + n_valid]] = _VALID
    params = {"kind": "random", "test_frac": test_frac, "valid_frac": valid_frac}
    return _assemble(interactions, "random", part, valid_frac > 0, seed, params)


def temporal_split(interactions: pd.DataFrame, test_frac: float, valid_frac: float = 0.0) -> Split:
    """Global time split: the latest round(test_frac·n) rows are test, the round(valid_frac·n) before them valid.

    Rows are ordered by (timestamp, original row position), so equal timestamps at a boundary are cut in file order;
    every test row is at least as recent as every valid row, and every valid row as every train row.
    """
    _check_interactions(interactions, ("user_idx", "item_idx", "timestamp"))
    _check_fracs(test_frac, valid_frac)
    n = len(interactions)
    n_test, n_valid = int(_count(test_frac, n)), int(_count(valid_frac, n))
    order = np.lexsort((np.arange(n), interactions["timestamp"].to_numpy()))
    part = np.full(n, _TRAIN, dtype=np.int8)
    part[order[n - n_test:]] = _TEST
    part[order[n - n_test - n_valid:n - n_test]] = _VALID
    params = {"kind": "temporal", "test_frac": test_frac, "valid_frac": valid_frac}
    return _assemble(interactions, "temporal", part, valid_frac > 0, None, params)


def per_user_random_split(interactions: pd.DataFrame, test_frac: float = 0.2, seed: int = 0,
                          valid_frac: float = 0.0) -> Split:
    """Per-user ratio split (the "per-user 80/20 random split" of ranking benchmarks).

    Each user with n ≥ 2 ratings gets round(test_frac·n) of them, clipped to [1, n-1], in test, so every such user
    keeps ≥ 1 train and ≥ 1 test rating; users with one rating stay in train. With ``valid_frac`` > 0, a further
    round(valid_frac·n) per user go to valid, as long as one train rating is left.
    """
    _check_interactions(interactions, ("user_idx", "item_idx"))
    _check_fracs(test_frac, valid_frac)
    n = len(interactions)
    key = np.random.default_rng(seed).random(n)
    order, rank, size = _within_user_order(interactions["user_idx"].to_numpy(), key)
    n_test = np.where(size >= 2, np.clip(_count(test_frac, size), 1, size - 1), 0)
    n_valid = np.clip(_count(valid_frac, size), 0, np.maximum(size - n_test - 1, 0))
    part = np.full(n, _TRAIN, dtype=np.int8)
    part[order[rank < n_test]] = _TEST
    part[order[(rank >= n_test) & (rank < n_test + n_valid)]] = _VALID
    params = {"kind": "per_user_random", "test_frac": test_frac, "valid_frac": valid_frac}
    return _assemble(interactions, "per_user_random", part, valid_frac > 0, seed, params)


def leave_last_k(interactions: pd.DataFrame, k: int = 1, valid_k: int = 0) -> Split:
    """Per user by time: the last ``k`` ratings are test, the ``valid_k`` before them valid.

    Ratings are ordered by (timestamp, original row position). A user with ≤ k ratings stays in train only; a user
    with ≤ k + valid_k ratings gets a test part but no valid part, so every user keeps ≥ 1 train rating.
    """
    if k < 1 or valid_k < 0:
        raise ValueError(f"leave_last_k needs k >= 1 and valid_k >= 0, got k={k}, valid_k={valid_k}")
    _check_interactions(interactions, ("user_idx", "item_idx", "timestamp"))
    n = len(interactions)
    order, rank, size = _within_user_order(
        interactions["user_idx"].to_numpy(), interactions["timestamp"].to_numpy(), np.arange(n)
    )
    from_end = size - 1 - rank
    part = np.full(n, _TRAIN, dtype=np.int8)
    part[order[(size > k) & (from_end < k)]] = _TEST
    part[order[(size > k + valid_k) & (from_end >= k) & (from_end < k + valid_k)]] = _VALID
    params = {"kind": "leave_last_k", "k": k, "valid_k": valid_k}
    return _assemble(interactions, f"leave_last_{k}", part, valid_k > 0, None, params)


def cold_start_items(interactions: pd.DataFrame, item_frac: float = 0.2, seed: int = 0,
                     valid_frac: float = 0.0) -> Split:
    """Hold out whole items: round(item_frac·m) of the m interacted items go to test, round(valid_frac·m) to valid.

    Every interaction with a held-out item lands in that item's part, so held-out items never appear in train.
    ``Split.cold_items`` lists all held-out items; ``cold_items_in("test")`` the test ones.
    """
    _check_interactions(interactions, ("user_idx", "item_idx"))
    _check_fracs(item_frac, valid_frac, what="item_frac")
    item = interactions["item_idx"].to_numpy()
    items = np.unique(item)
    n_test, n_valid = int(_count(item_frac, len(items))), int(_count(valid_frac, len(items)))
    if n_test < 1 or n_test + n_valid >= len(items):
        raise ValueError(f"item_frac={item_frac}, valid_frac={valid_frac} leave no test or no train items "
                         f"out of {len(items)}")
    perm = np.random.default_rng(seed).permutation(items)
    test_items, valid_items = perm[:n_test], perm[n_test:n_test + n_valid]
    part = np.full(len(item), _TRAIN, dtype=np.int8)
    part[np.isin(item, test_items)] = _TEST
    part[np.isin(item, valid_items)] = _VALID
    params = {"kind": "cold_start_items", "item_frac": item_frac, "valid_frac": valid_frac}
    cold = np.sort(np.concatenate([test_items, valid_items])).astype(np.int64)
    return _assemble(interactions, "cold_start_items", part, valid_frac > 0, seed, params, cold_items=cold)


def cold_start_users(interactions: pd.DataFrame, user_frac: float = 0.2, k_support: int = 5,
                     seed: int = 0) -> Split:
    """Hold out whole users, each with a few known ratings (k-shot cold start).

    Only users with more than ``k_support`` ratings can be tested; round(user_frac·e) of those e users are held out.
    A held-out user's earliest ``k_support`` ratings (by timestamp, then row position) are the support set: they are
    in ``train`` **and** in ``Split.support``; the rest are test. Nothing else of theirs is in train. Warm users'
    ratings are all in train, so the test part holds only cold users.
    """
    if not 0.0 < user_frac < 1.0 or k_support < 0:
        raise ValueError(f"need 0 < user_frac < 1 and k_support >= 0, got {user_frac}, {k_support}")
    _check_interactions(interactions, ("user_idx", "item_idx", "timestamp"))
    n = len(interactions)
    user = interactions["user_idx"].to_numpy()
    users, counts = np.unique(user, return_counts=True)
    eligible = users[counts > k_support]
    n_cold = int(_count(user_frac, len(eligible)))
    if n_cold < 1:
        raise ValueError(f"user_frac={user_frac} of {len(eligible)} users with > {k_support} ratings is no user")
    cold = np.sort(np.random.default_rng(seed).permutation(eligible)[:n_cold]).astype(np.int64)
    order, rank, _ = _within_user_order(user, interactions["timestamp"].to_numpy(), np.arange(n))
    is_cold = np.isin(user[order], cold)
    part = np.full(n, _TRAIN, dtype=np.int8)
    part[order[is_cold & (rank >= k_support)]] = _TEST
    support_pos = np.sort(order[is_cold & (rank < k_support)])
    params = {"kind": "cold_start_users", "user_frac": user_frac, "k_support": k_support}
    return _assemble(interactions, "cold_start_users", part, False, seed, params,
                     support=interactions.iloc[support_pos], cold_users=cold)


def ml100k_canonical(interactions: pd.DataFrame, name: str) -> Split:
    """GroupLens' ML-100K split ``name`` (u1..u5, ua, ub) as a ``Split``: test = ``{name}.test``, train = ``.base``.

    ``interactions`` must be the 100,000 ratings of ``u.data`` in file order (see ``lmrec.data.canonical``).
    """
    _check_interactions(interactions, ("user_idx", "item_idx", "user_id"))
    test = ml100k_test_mask(interactions, name)
    part = np.where(test, _TEST, _TRAIN).astype(np.int8)
    return _assemble(interactions, name, part, False, None, {"kind": "ml100k_canonical", "name": name})


# ----------------------------------------------------------------------------------------------- typed spec


class _SpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _SeededSpec(_SpecBase):
    seed: int = Field(0, ge=0, description="Seed of the numpy Generator that draws the split.")


class RandomSplitSpec(_SeededSpec):
    kind: Literal["random"] = "random"
    test_frac: float = Field(0.2, gt=0, lt=1, description="Fraction of all rows that go to test.")
    valid_frac: float = Field(0.0, ge=0, lt=1, description="Fraction of all rows that go to valid (0 = none).")

    @model_validator(mode="after")
    def _fractions_fit(self) -> "RandomSplitSpec":
        _check_fracs(self.test_frac, self.valid_frac)
        return self


class TemporalSplitSpec(_SpecBase):
    kind: Literal["temporal"] = "temporal"
    test_frac: float = Field(0.2, gt=0, lt=1, description="Fraction of rows, the most recent, that go to test.")
    valid_frac: float = Field(0.0, ge=0, lt=1, description="Fraction of rows just before test that go to valid.")

    @model_validator(mode="after")
    def _fractions_fit(self) -> "TemporalSplitSpec":
        _check_fracs(self.test_frac, self.valid_frac)
        return self


class PerUserRandomSplitSpec(_SeededSpec):
    kind: Literal["per_user_random"] = "per_user_random"
    test_frac: float = Field(0.2, gt=0, lt=1, description="Fraction of each user's ratings that go to test.")
    valid_frac: float = Field(0.0, ge=0, lt=1, description="Fraction of each user's ratings that go to valid.")

    @model_validator(mode="after")
    def _fractions_fit(self) -> "PerUserRandomSplitSpec":
        _check_fracs(self.test_frac, self.valid_frac)
        return self


class LeaveLastKSpec(_SpecBase):
    kind: Literal["leave_last_k"] = "leave_last_k"
    k: int = Field(1, ge=1, description="Each user's latest k ratings go to test.")
    valid_k: int = Field(0, ge=0, description="The valid_k ratings before those go to valid (0 = none).")


class ColdStartItemsSpec(_SeededSpec):
    kind: Literal["cold_start_items"] = "cold_start_items"
    item_frac: float = Field(0.2, gt=0, lt=1, description="Fraction of items held out, with all their rows, as test.")
    valid_frac: float = Field(0.0, ge=0, lt=1, description="Fraction of items held out as valid (0 = none).")

    @model_validator(mode="after")
    def _fractions_fit(self) -> "ColdStartItemsSpec":
        _check_fracs(self.item_frac, self.valid_frac, what="item_frac")
        return self


class ColdStartUsersSpec(_SeededSpec):
    kind: Literal["cold_start_users"] = "cold_start_users"
    user_frac: float = Field(0.2, gt=0, lt=1, description="Fraction of users (with > k_support ratings) held out.")
    k_support: int = Field(5, ge=0, description="Earliest ratings of a held-out user given to the model (in train).")


class ML100KCanonicalSpec(_SpecBase):
    kind: Literal["ml100k_canonical"] = "ml100k_canonical"
    name: Literal["u1", "u2", "u3", "u4", "u5", "ua", "ub"] = Field(description="GroupLens split file stem.")


SplitSpec = Annotated[
    Union[RandomSplitSpec, TemporalSplitSpec, PerUserRandomSplitSpec, LeaveLastKSpec, ColdStartItemsSpec,
          ColdStartUsersSpec, ML100KCanonicalSpec],
    Field(discriminator="kind"),
]
_SPEC_ADAPTER: TypeAdapter = TypeAdapter(SplitSpec, config=ConfigDict(title="SplitSpec"))


CANONICAL_SPLITS = ML100K_SPLIT_NAMES
SPLIT_NAMES = CANONICAL_SPLITS + ("per-user-80-20", "random-80-20", "temporal-80-20", "leave-last-1", "cold-items-20")


def split_spec_from_name(name: str, seed: int = 42) -> SplitSpec:
    """The named splits of ``lmrec baselines --split`` and of a job spec's ``data.split: NAME``, as typed specs."""
    table = {
        "per-user-80-20": {"kind": "per_user_random", "test_frac": 0.2, "seed": seed},
        "random-80-20": {"kind": "random", "test_frac": 0.2, "seed": seed},
        "temporal-80-20": {"kind": "temporal", "test_frac": 0.2},
        "leave-last-1": {"kind": "leave_last_k", "k": 1},
        "cold-items-20": {"kind": "cold_start_items", "item_frac": 0.2, "seed": seed},
    }
    if name in CANONICAL_SPLITS:
        raw = {"kind": "ml100k_canonical", "name": name}
    elif name in table:
        raw = table[name]
    else:
        raise ValueError(f"unknown split {name!r}; choose one of: {', '.join(SPLIT_NAMES)}")
    return _SPEC_ADAPTER.validate_python(raw)


def parse_split_spec(data: dict) -> SplitSpec:
    """Validate a mapping (e.g. a YAML ``split:`` block) into the matching spec; pydantic errors name the field."""
    return _SPEC_ADAPTER.validate_python(data)


def make_split(dataset: Dataset, spec: SplitSpec | dict) -> Split:
    """Run ``spec`` on ``dataset.interactions``; the split is named ``"{dataset.name}/{split}"``."""
    if isinstance(spec, dict):
        spec = parse_split_spec(spec)
    inter = dataset.interactions
    if isinstance(spec, RandomSplitSpec):
        split = random_split(inter, spec.test_frac, spec.valid_frac, spec.seed)
    elif isinstance(spec, TemporalSplitSpec):
        split = temporal_split(inter, spec.test_frac, spec.valid_frac)
    elif isinstance(spec, PerUserRandomSplitSpec):
        split = per_user_random_split(inter, spec.test_frac, spec.seed, spec.valid_frac)
    elif isinstance(spec, LeaveLastKSpec):
        split = leave_last_k(inter, spec.k, spec.valid_k)
    elif isinstance(spec, ColdStartItemsSpec):
        split = cold_start_items(inter, spec.item_frac, spec.seed, spec.valid_frac)
    elif isinstance(spec, ColdStartUsersSpec):
        split = cold_start_users(inter, spec.user_frac, spec.k_support, spec.seed)
    elif isinstance(spec, ML100KCanonicalSpec):
        split = ml100k_canonical(inter, spec.name)
    else:
        raise TypeError(f"not a split spec: {type(spec).__name__}")
    return replace(split, name=f"{dataset.name}/{split.name}")
