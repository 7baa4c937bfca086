"""The contract every recommender in lmrec honours, from the popularity baseline to the encoder two-tower.

Models work on contiguous indices (``user_idx``, ``item_idx``, see ``lmrec.data.schema``). Evaluation code
only calls these three methods, so it never special-cases a model.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd


@runtime_checkable
class Recommender(Protocol):
    name: str

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "Recommender":
        """Learn from ``train`` (columns user_idx, item_idx, rating, timestamp). Returns self."""
        ...

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Predicted ratings for aligned (user, item) pairs: float32 array of the same length."""
        ...

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        """Scores for every item, one row per user: float32 array [len(user_idx), n_items]; higher ranks first."""
        ...
