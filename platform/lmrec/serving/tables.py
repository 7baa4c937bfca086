"""A member's ranking scores as plain arrays (no torch): what the ingress holds to answer ``/recommend`` itself.

Both members rank a known user's items with a dot product: the two-tower ``item_vec @ user_vec + item_bias`` (or
its interest-space cosine), biased MF ``item_factors @ user_factors + item_bias + global_mean + user_bias``. A
``ScoreTable`` keeps those arrays with the artifact's id maps and the users' training items. It is small (ML-100K:
943 users and 1,682 items at 64 dimensions, ~0.7 MB), so each ingress replica fetches it once per artifact
version and scores a known user in-process: one HTTP hop per request instead of a hop per member. The member
deployments compute their own answers from the same table, so both paths return the same scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lmrec.serving.protocol import IdMap


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
        lo, hi = int(self.seen_indptr[u]), int(self.seen_indptr[u + 1])
        return self.seen_items[lo:hi], (self.seen_ratings[lo:hi] if self.seen_ratings is not None else None)

    def user_scores(self, user_id) -> dict:
        """The member's answer for a known user: every item's score and the user's training items (and their
        ratings when known); ``scores`` is None for an unknown user."""
        u = self.users.index(user_id)
        if u is None:
            return {"sha256": self.sha256, "scores": None}
        items, ratings = self.seen(u)
        out = {"sha256": self.sha256, "scores": self.scores(u), "seen": items}
        return out | {"seen_ratings": ratings} if ratings is not None else out


def csr_from_padded(history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, items) of a padded [n_users, H] history array whose padding is negative."""
    keep = history >= 0
    return np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64), history[keep].astype(np.int64)
