"""Peer libraries wrapped in lmrec's ``Recommender`` contract, so they are scored by the same evaluation code.

Needs the optional ``bench`` extra (scikit-surprise, implicit). Used only by the benchmarks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


class SurpriseRating:
    """A scikit-surprise rating algorithm (SVD, SVDpp, KNNBaseline…) with its default settings."""

    ranks = False

    def __init__(self, algo_name: str, **params):
        import surprise

        self.name = f"surprise_{algo_name}"
        self.algo = getattr(surprise, algo_name)(**params)

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int):
        import surprise

        lo, hi = float(train["rating"].min()), float(train["rating"].max())
        reader = surprise.Reader(rating_scale=(lo, hi))
        data = surprise.Dataset.load_from_df(train[["user_idx", "item_idx", "rating"]], reader)
        self.algo.fit(data.build_full_trainset())
        return self

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        return np.array(
            [self.algo.predict(int(u), int(i)).est for u, i in zip(user_idx, item_idx)], dtype=np.float32
        )

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError("surprise models are evaluated on rating metrics only")


class ImplicitFactors:
    """An ``implicit`` factor model (ALS or BPR) on the binary user-item matrix; scores = user · item factors."""

    rates = False

    def __init__(self, algo_name: str, **params):
        import implicit

        self.name = f"implicit_{algo_name}"
        cls = {"als": implicit.cpu.als.AlternatingLeastSquares, "bpr": implicit.cpu.bpr.BayesianPersonalizedRanking}
        self.algo = cls[algo_name](random_state=42, **params)

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int):
        x = sp.csr_matrix(
            (np.ones(len(train), dtype=np.float32), (train["user_idx"], train["item_idx"])), shape=(n_users, n_items)
        )
        x.data[:] = 1.0
        self.algo.fit(x, show_progress=False)
        self._u = np.asarray(self.algo.user_factors)
        self._i = np.asarray(self.algo.item_factors)
        return self

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        return np.einsum("nd,nd->n", self._u[user_idx], self._i[item_idx]).astype(np.float32)

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        return (self._u[user_idx] @ self._i.T).astype(np.float32)
