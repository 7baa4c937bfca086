"""What every baseline does with a train table: check it, turn it into a sparse user-item matrix, and
tell known indices from unseen ones.

Evaluation may ask about users or items that never appear in train (cold start) or even indices past
``n_users``/``n_items`` (a user added after the model was fitted). Baselines answer those with a fallback
instead of an ``IndexError``, so they all go through :func:`known` before indexing a fitted array.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lmrec.data.schema import DataError

TRAIN_COLUMNS = ("user_idx", "item_idx", "rating")


def check_train(train: pd.DataFrame, n_users: int, n_items: int) -> None:
    """Raise :class:`DataError` unless ``train`` has the index and rating columns with indices in range."""
    missing = [c for c in TRAIN_COLUMNS if c not in train.columns]
    if missing:
        raise DataError(f"train table lacks column(s) {missing}; has {list(train.columns)}")
    if n_users <= 0 or n_items <= 0:
        raise DataError(f"n_users and n_items must be positive, got {n_users} and {n_items}")
    if len(train) == 0:
        raise DataError("train table is empty")
    for col, n in (("user_idx", n_users), ("item_idx", n_items)):
        idx = train[col].to_numpy()
        if idx.min() < 0 or idx.max() >= n:
            raise DataError(f"train {col} must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    if not np.isfinite(train["rating"].to_numpy(dtype=np.float64)).all():
        raise DataError("train rating column holds NaN or infinite values")


def user_item_matrix(train: pd.DataFrame, n_users: int, n_items: int, binary: bool) -> sp.csr_matrix:
    """CSR matrix [n_users, n_items] of ratings (or 1.0 where ``binary``).

    A (user, item) pair that appears more than once keeps its last rating (binary: still 1), so repeated
    interactions neither inflate co-occurrence counts nor sum ratings past the scale.
    """
    last = train.drop_duplicates(["user_idx", "item_idx"], keep="last")
    values = np.ones(len(last), np.float32) if binary else last["rating"].to_numpy(np.float32)
    return sp.csr_matrix(
        (values, (last["user_idx"].to_numpy(), last["item_idx"].to_numpy())),
        shape=(n_users, n_items),
        dtype=np.float32,
    )


def known(idx: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split query indices into (mask of indices seen in train, those indices clipped safe to gather with).

    ``seen`` is a boolean array over the fitted index range. Negative and out-of-range indices count as
    unseen; the clipped copy may then be used to index fitted arrays, with the mask choosing the fallback.
    """
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    in_range = (idx >= 0) & (idx < len(seen))
    safe = np.where(in_range, idx, 0)
    return in_range & seen[safe], safe


def check_pairs(user_idx: np.ndarray, item_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten aligned (user, item) query arrays to int64, raising ValueError if their lengths differ."""
    u = np.asarray(user_idx, dtype=np.int64).reshape(-1)
    i = np.asarray(item_idx, dtype=np.int64).reshape(-1)
    if len(u) != len(i):
        raise ValueError(f"user_idx and item_idx must have the same length, got {len(u)} and {len(i)}")
    return u, i
