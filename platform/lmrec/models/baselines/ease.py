"""EASE: an item-item linear autoencoder with a closed-form solution (Steck, "Embarrassingly Shallow
Autoencoders for Sparse Data", WWW 2019).

minimise ‖X − XB‖² + λ‖B‖² subject to diag(B) = 0 has the solution B = I − P · diag(1/diag(P)) with
P = (XᵀX + λI)⁻¹, i.e. B_ij = −P_ij / P_jj off the diagonal. One Cholesky solve of an
[n_items, n_items] system: memory and time grow with the catalogue (≈ 20k items is the practical limit
on one machine), not with the number of interactions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.linalg

from lmrec.models.baselines.interactions import check_pairs, check_train, known, user_item_matrix
from lmrec.models.baselines.means import BiasedMean


class EASE:
    """Ranks items by X B, with X the binary user-item matrix and B the zero-diagonal EASE weights.

    Args:
        l2: λ, the ridge penalty on B. Default 250 (good on ML-100K; Steck used 200–1000 on larger sets).

    ``rates = False``: EASE scores are not ratings. ``predict`` returns the ``BiasedMean`` estimate
    (μ + b_u + b_i) fitted on the same train table. Users without train history are ranked by popularity
    (their X row is empty, so X B would be all zeros).
    """

    name = "ease"
    rates = False

    def __init__(self, l2: float = 250.0) -> None:
        if l2 <= 0:
            raise ValueError(f"l2 must be > 0 (it keeps XᵀX + λI invertible), got {l2}")
        self.l2 = l2

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "EASE":
        """Solve for B. Returns self."""
        check_train(train, n_users, n_items)
        self.X_ = user_item_matrix(train, n_users, n_items, binary=True)
        # float64: P's diagonal is small for popular items, and B divides by it.
        gram = (self.X_.T @ self.X_).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        P = scipy.linalg.cho_solve(scipy.linalg.cho_factor(gram, lower=True), np.eye(n_items))
        B = P / (-np.diag(P))[None, :]
        B[np.diag_indices_from(B)] = 0.0
        self.B_ = B.astype(np.float32)
        self.popularity_ = np.asarray(self.X_.sum(axis=0), dtype=np.float32).reshape(-1)
        self.user_seen_ = np.diff(self.X_.indptr) > 0
        self.rating_model_ = BiasedMean().fit(train, n_users, n_items)
        return self

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Biased-mean rating estimates (EASE scores are not on the rating scale)."""
        u, i = check_pairs(user_idx, item_idx)
        return self.rating_model_.predict(u, i)

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        """X[u] B for users with history; item popularity for the rest. Train items are not masked."""
        ok, safe = known(user_idx, self.user_seen_)
        scores = np.asarray(self.X_[safe] @ self.B_, dtype=np.float32)
        scores[~ok] = self.popularity_
        return scores
