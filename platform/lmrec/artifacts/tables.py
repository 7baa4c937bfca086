"""A member's ranking scores as plain arrays (no torch): what the ingress holds to answer ``/recommend`` itself.

The factor members rank a known user's items with a dot product: the two-tower ``item_vec @ user_vec + item_bias``
(or its interest-space cosine), biased MF ``item_factors @ user_factors + item_bias + global_mean + user_bias``. A
``ScoreTable`` keeps those arrays with the artifact's id maps and the users' training items. The item-item members
(EASE, item-kNN) rank by the user's history row times an item-item matrix: ``ItemItemTable``, with the same
``user_scores`` answer, so the ingress treats every member's table alike. It is small (ML-100K:
943 users and 1,682 items at 64 dimensions, ~0.7 MB), so each ingress replica fetches it once per artifact
version and scores a known user in-process: one HTTP hop per request instead of a hop per member. The member
deployments compute their own answers from the same table, so both paths return the same scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class IdMap:
    """Raw id <-> contiguous index. Accepts ints and their string spelling alike (JSON clients send either)."""

    def __init__(self, ids: list) -> None:
        self.ids = list(ids)
        self._index = {self._key(v): i for i, v in enumerate(self.ids)}

    @staticmethod
    def _key(raw) -> str:
        return str(raw)

    def index(self, raw) -> int | None:
        return self._index.get(self._key(raw))

    def __contains__(self, raw) -> bool:
        return self._key(raw) in self._index

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ScoreTable:
    """``scores(u) = item_vec @ user_vec[u] + item_const (+ user_const[u])`` over the artifact's items."""

    sha256: str
    user_ids: list
    item_ids: list
    user_vec: np.ndarray  # [n_users, d]
    item_vec: np.ndarray  # [n_items, d]
    item_const: np.ndarray  # [n_items]
    user_const: np.ndarray | None  # [n_users], or None
    seen_indptr: np.ndarray  # training items per user as CSR: [n_users + 1]
    seen_items: np.ndarray  # [nnz] item indices
    seen_ratings: np.ndarray | None = None  # [nnz], when the member knows the ratings
    item_texts: list | None = None
    users: IdMap = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.users = IdMap(self.user_ids)

    def scores(self, u: int) -> np.ndarray:
        s = self.item_vec @ self.user_vec[u] + self.item_const
        return s + self.user_const[u] if self.user_const is not None else s

    def seen(self, u: int) -> tuple[np.ndarray, np.ndarray | None]:
        return _seen(self, u)

    def user_scores(self, user_id) -> dict:
        """The member's answer for a known user: every item's score and the user's training items (and their
        ratings when known); ``scores`` is None for an unknown user."""
        return _user_scores(self, user_id)


@dataclass
class ItemItemTable:
    """``scores(u) = x_u @ weights`` with x_u the user's training row (``seen_values`` at ``seen_items``).

    ``weights`` is the [n_items, n_items] item-item matrix (EASE's B, dense; item-kNN's neighbour similarities
    transposed, scipy CSR). A user with an empty row gets ``popularity`` (the fitted models' own fallback).
    """

    sha256: str
    user_ids: list
    item_ids: list
    weights: object  # np.ndarray [n_items, n_items] or scipy.sparse.csr_matrix
    popularity: np.ndarray  # [n_items]
    seen_indptr: np.ndarray  # [n_users + 1]
    seen_items: np.ndarray  # [nnz]
    seen_values: np.ndarray  # [nnz] the row values the model scores with (1.0, or ratings)
    seen_ratings: np.ndarray | None = None  # [nnz]
    item_texts: list | None = None
    users: IdMap = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.users = IdMap(self.user_ids)

    def scores(self, u: int) -> np.ndarray:
        lo, hi = int(self.seen_indptr[u]), int(self.seen_indptr[u + 1])
        return self.scores_of_history(self.seen_items[lo:hi], self.seen_values[lo:hi])

    def scores_of_history(self, items: np.ndarray, values: np.ndarray) -> np.ndarray:
        """float32 ``values @ weights[items]`` (any history row, e.g. a cold user's); popularity when empty."""
        items = np.asarray(items, dtype=np.int64)
        if len(items) == 0:
            return np.asarray(self.popularity, dtype=np.float32).copy()
        out = self.weights[items].T @ np.asarray(values, dtype=np.float32)
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def seen(self, u: int) -> tuple[np.ndarray, np.ndarray | None]:
        return _seen(self, u)

    def user_scores(self, user_id) -> dict:
        """``ScoreTable.user_scores``' answer, from this table's arithmetic."""
        return _user_scores(self, user_id)


def _seen(table, u: int) -> tuple[np.ndarray, np.ndarray | None]:
    lo, hi = int(table.seen_indptr[u]), int(table.seen_indptr[u + 1])
    return table.seen_items[lo:hi], (table.seen_ratings[lo:hi] if table.seen_ratings is not None else None)


def _user_scores(table, user_id) -> dict:
    u = table.users.index(user_id)
    if u is None:
        return {"sha256": table.sha256, "scores": None}
    items, ratings = table.seen(u)
    out = {"sha256": table.sha256, "scores": table.scores(u), "seen": items}
    return out | {"seen_ratings": ratings} if ratings is not None else out


def csr_from_padded(history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, items) of a padded [n_users, H] history array whose padding is negative."""
    keep = history >= 0
    return np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64), history[keep].astype(np.int64)
