"""Most-popular: every user gets the items with the most train interactions.

Weak on paper and hard to beat in practice on long-tailed data, which is why every ranking result is
reported next to it. It is also the ranking that kNN and EASE fall back to for users with no history.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lmrec.models.baselines.interactions import check_pairs, check_train
from lmrec.models.baselines.means import BiasedMean


class Popularity:
    """Scores each item by its number of train interactions (distinct users, repeats counted once).

    ``rates = False``: ``predict`` does not estimate ratings from counts; it returns the ``BiasedMean``
    estimate (μ + b_u + b_i, default shrinkage) fitted on the same train table, so callers that ask for
    ratings get a sensible number rather than a count.
    """

    name = "popularity"
    rates = False

    def __init__(self) -> None:
        self.counts_: np.ndarray | None = None

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "Popularity":
        """Count interactions per item. Returns self."""
        check_train(train, n_users, n_items)
        pairs = train.drop_duplicates(["user_idx", "item_idx"])
        self.counts_ = np.bincount(pairs["item_idx"].to_numpy(np.int64), minlength=n_items).astype(np.float32)
        self.rating_model_ = BiasedMean().fit(train, n_users, n_items)
        return self

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Biased-mean rating estimates (popularity itself gives no rating)."""
        u, i = check_pairs(user_idx, item_idx)
        return self.rating_model_.predict(u, i)

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        """The same count row for every user; items unseen in train score 0."""
        n = len(np.asarray(user_idx).reshape(-1))
        return np.broadcast_to(self.counts_, (n, len(self.counts_))).copy()
