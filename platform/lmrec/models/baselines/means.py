"""The rating baselines every other model must beat: the global mean, and global mean + user + item biases.

``BiasedMean`` is also the rating fallback of models that only rank (EASE, popularity, TF-IDF) and the
baseline that item-kNN predicts deviations from, so it has to be cheap and well regularised.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lmrec.models.baselines.interactions import check_pairs, check_train, known


class GlobalMean:
    """Predicts the mean train rating for every pair; ranks all items equally.

    The floor for rating accuracy: a model whose RMSE is not below this one has learned nothing.
    """

    name = "global_mean"
    rates = True

    def __init__(self) -> None:
        self.mean_: float | None = None

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "GlobalMean":
        """Store the mean rating. Returns self."""
        check_train(train, n_users, n_items)
        self.n_items_ = n_items
        self.mean_ = float(train["rating"].mean())
        return self

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """The global mean for every pair (float32)."""
        u, _ = check_pairs(user_idx, item_idx)
        return np.full(len(u), self.mean_, dtype=np.float32)

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        """A constant row per user: the global mean gives no ranking signal."""
        n = len(np.asarray(user_idx).reshape(-1))
        return np.full((n, self.n_items_), self.mean_, dtype=np.float32)


class BiasedMean:
    """r̂(u, i) = μ + b_u + b_i, biases shrunk towards zero (Koren 2010, "baseline estimates").

    Fitted by alternating closed-form updates, each bias the regularised mean of the residual left by
    the others: b_i = Σ_u (r − μ − b_u) / (reg_item + n_i), then b_u likewise. The damping keeps an item
    rated once at 5 stars from outranking one rated a thousand times at 4.6.

    Args:
        reg_user: shrinkage of user biases (pseudo-count of ratings at the global mean). Default 15,
            as scikit-surprise's ``BaselineOnly``.
        reg_item: shrinkage of item biases. Default 10.
        n_epochs: alternating passes; the updates converge in a handful. Default 10.

    Users or items unseen in train get bias 0. Predictions are clamped to the train rating range.
    ``score_items`` ranks by μ + b_u + b_i, i.e. by damped item mean: a quality-popularity ranking.
    """

    name = "biased_mean"
    rates = True

    def __init__(self, reg_user: float = 15.0, reg_item: float = 10.0, n_epochs: int = 10) -> None:
        if reg_user < 0 or reg_item < 0:
            raise ValueError(f"reg_user and reg_item must be >= 0, got {reg_user} and {reg_item}")
        if n_epochs < 1:
            raise ValueError(f"n_epochs must be >= 1, got {n_epochs}")
        self.reg_user = reg_user
        self.reg_item = reg_item
        self.n_epochs = n_epochs

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "BiasedMean":
        """Fit μ, b_u, b_i on ``train``. Returns self."""
        check_train(train, n_users, n_items)
        u = train["user_idx"].to_numpy(np.int64)
        i = train["item_idx"].to_numpy(np.int64)
        r = train["rating"].to_numpy(np.float64)
        self.mean_ = float(r.mean())
        self.rating_range_ = (float(r.min()), float(r.max()))
        n_u = np.bincount(u, minlength=n_users)
        n_i = np.bincount(i, minlength=n_items)
        b_u = np.zeros(n_users)
        b_i = np.zeros(n_items)
        # An unseen index has a zero residual sum; max(·, 1) only guards 0/0 when the shrinkage is 0.
        item_denom = np.maximum(self.reg_item + n_i, 1.0)
        user_denom = np.maximum(self.reg_user + n_u, 1.0)
        for _ in range(self.n_epochs):
            b_i = np.bincount(i, r - self.mean_ - b_u[u], minlength=n_items) / item_denom
            b_u = np.bincount(u, r - self.mean_ - b_i[i], minlength=n_users) / user_denom
        self.user_bias_ = b_u.astype(np.float32)
        self.item_bias_ = b_i.astype(np.float32)
        self.user_seen_ = n_u > 0
        self.item_seen_ = n_i > 0
        return self

    def user_bias(self, user_idx: np.ndarray) -> np.ndarray:
        """b_u for each query user; 0 for users unseen in train."""
        ok, safe = known(user_idx, self.user_seen_)
        return np.where(ok, self.user_bias_[safe], 0.0).astype(np.float32)

    def item_bias(self, item_idx: np.ndarray) -> np.ndarray:
        """b_i for each query item; 0 for items unseen in train."""
        ok, safe = known(item_idx, self.item_seen_)
        return np.where(ok, self.item_bias_[safe], 0.0).astype(np.float32)

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """μ + b_u + b_i, clamped to the train rating range (float32)."""
        u, i = check_pairs(user_idx, item_idx)
        est = self.mean_ + self.user_bias(u) + self.item_bias(i)
        return np.clip(est, *self.rating_range_).astype(np.float32)

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        """μ + b_u + b_i for every item (unclamped, so ties at the top of the scale still rank)."""
        b_u = self.user_bias(np.asarray(user_idx).reshape(-1))
        return (self.mean_ + b_u[:, None] + self.item_bias_[None, :]).astype(np.float32)
