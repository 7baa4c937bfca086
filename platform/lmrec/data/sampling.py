"""The implicit-feedback view of ratings, exact negative sampling and the user × item sparse matrix.

Ranking objectives (BPR, sampled softmax, two-tower training) see ratings as positives and need items a user has
*not* interacted with as negatives. Sampling is vectorised rejection: draw uniformly, redraw only the hits on known
items; the few slots that keep hitting (users who rated almost every item) are filled from the user's exact
complement, so the result is exact and the loop always ends.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lmrec.data.schema import DataError

# Rejection rounds before the exact per-user fallback; a user who knows a fraction p of the items still has a
# slot unfilled after r rounds with probability p**r, so this only matters for near-complete users.
_REJECTION_ROUNDS = 16


def implicit_view(interactions: pd.DataFrame, threshold: float | None = None) -> pd.DataFrame:
    """The positive rows: rating ≥ ``threshold``, or every interaction when ``threshold`` is None.

    Columns and index are kept, so positives can be traced back to their ratings.
    """
    if threshold is None:
        return interactions
    if "rating" not in interactions.columns:
        raise DataError("implicit_view with a threshold needs a 'rating' column")
    return interactions.loc[interactions["rating"].to_numpy() >= threshold]


def _pair_keys(frame: pd.DataFrame, n_items: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in ("user_idx", "item_idx") if c not in frame.columns]
    if missing:
        raise DataError(f"{what} lacks column(s) {missing}")
    user = frame["user_idx"].to_numpy(dtype=np.int64)
    item = frame["item_idx"].to_numpy(dtype=np.int64)
    if len(item) and (item.min() < 0 or item.max() >= n_items or user.min() < 0):
        raise ValueError(f"{what}: indices out of range (n_items={n_items})")
    return user, user * n_items + item


def sample_negatives(
    positives: pd.DataFrame,
    n_items: int,
    n_per_positive: int,
    seed: int = 0,
    exclude: pd.DataFrame | None = None,
) -> np.ndarray:
    """For each positive row, ``n_per_positive`` items that its user has not interacted with.

    Known items of a user are the items of their rows in ``positives`` plus those in ``exclude`` (pass the full
    training interactions there so that rated-but-not-positive items, or held-out ones, are never drawn as
    negatives). Draws are uniform over the user's unknown items and independent, so a row may repeat an item.
    Returns int64 item_idx of shape [len(positives), n_per_positive]. Deterministic given ``seed``.
    """
    if n_per_positive < 1 or n_items < 1:
        raise ValueError(f"need n_per_positive >= 1 and n_items >= 1, got {n_per_positive}, {n_items}")
    user, pos_keys = _pair_keys(positives, n_items, "positives")
    known = pos_keys
    if exclude is not None:
        known = np.concatenate([known, _pair_keys(exclude, n_items, "exclude")[1]])
    known = np.unique(known)
    known_users, known_counts = np.unique(known // n_items, return_counts=True)
    full = known_users[known_counts >= n_items]
    if np.isin(user, full).any():
        raise ValueError(f"user(s) {full[:5].tolist()} have interacted with every item: no negative exists")

    rng = np.random.default_rng(seed)
    out = rng.integers(0, n_items, size=(len(user), n_per_positive), dtype=np.int64)
    flat = out.reshape(-1)  # a view: writes land in out
    slot_user = np.repeat(user, n_per_positive)

    def is_known(keys: np.ndarray) -> np.ndarray:
        if not len(known):
            return np.zeros(keys.shape, dtype=bool)
        at = np.minimum(np.searchsorted(known, keys), len(known) - 1)
        return known[at] == keys

    bad = np.flatnonzero(is_known(slot_user * n_items + flat))
    for _ in range(_REJECTION_ROUNDS):
        if not len(bad):
            break
        flat[bad] = rng.integers(0, n_items, size=len(bad), dtype=np.int64)
        bad = bad[is_known(slot_user[bad] * n_items + flat[bad])]
    if len(bad):
        _fill_from_complement(flat, bad, slot_user[bad], known, n_items, rng)
    return out


def _fill_from_complement(flat: np.ndarray, slots: np.ndarray, slot_user: np.ndarray, known: np.ndarray,
                          n_items: int, rng: np.random.Generator) -> None:
    """Exact draw for the slots rejection did not fill: choose from each user's unknown items directly."""
    for u in np.unique(slot_user):
        lo, hi = np.searchsorted(known, [u * n_items, (u + 1) * n_items])
        unknown = np.setdiff1d(np.arange(n_items, dtype=np.int64), known[lo:hi] - u * n_items, assume_unique=True)
        mine = slots[slot_user == u]
        flat[mine] = rng.choice(unknown, size=len(mine))


def user_item_csr(
    df: pd.DataFrame,
    n_users: int,
    n_items: int,
    values: Literal["rating", "binary"] = "rating",
) -> sp.csr_matrix:
    """The [n_users, n_items] float32 interaction matrix: the rating, or 1.0 for every interaction (``"binary"``).

    A (user, item) pair that occurs more than once keeps its latest rating (by timestamp, then row order) instead
    of the sum that a plain COO → CSR conversion would produce.
    """
    if values not in ("rating", "binary"):
        raise ValueError(f"values must be 'rating' or 'binary', got {values!r}")
    missing = [c for c in ("user_idx", "item_idx") + (("rating",) if values == "rating" else ()) if c not in df]
    if missing:
        raise DataError(f"user_item_csr: missing column(s) {missing}")
    if "timestamp" in df.columns:
        df = df.iloc[np.argsort(df["timestamp"].to_numpy(), kind="stable")]
    df = df.drop_duplicates(["user_idx", "item_idx"], keep="last")
    row = df["user_idx"].to_numpy(dtype=np.int64)
    col = df["item_idx"].to_numpy(dtype=np.int64)
    if len(row) and (row.min() < 0 or row.max() >= n_users or col.min() < 0 or col.max() >= n_items):
        raise ValueError(f"user_item_csr: indices out of range for shape ({n_users}, {n_items})")
    data = np.ones(len(row), dtype=np.float32) if values == "binary" else df["rating"].to_numpy(dtype=np.float32)
    return sp.csr_matrix((data, (row, col)), shape=(n_users, n_items), dtype=np.float32)
