"""Label propagation over a user-user kNN graph (Zhou et al. 2004): ``Y <- αSY + (1-α)Y0`` until it settles.

The fixed point is ``(1-α)(I-αS)^-1 Y0``; iterating costs one sparse matmul per step and never forms the inverse.
The graph comes from learned user embeddings (``knn_graph``) or from co-rating similarity (``co_rating_graph``).

Labels are the user x item matrix. Two matrices are propagated with the same operator:
- ``mask`` (1 where rated): how much neighbourhood evidence reaches each (user, item), the *confidence*;
- ``centred`` (rating - user mean where rated): the neighbourhood's opinion.
Their ratio is a Nadaraya-Watson estimate of the rating deviation, so propagated labels stay on the rating scale
however sparse the row. They serve as (a) extra, down-weighted training targets (``PropagatedLabelTask``) and
(b) predictions for a new user linked into the graph by a few ratings (``LabelPropagation.cold_user_scores``).

Memory: labels are dense [n_users, n_items] float32 (ML-100K: 6 MB); catalogues of millions of items would
propagate a sampled item block instead.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from lmrec.models.baselines.interactions import check_pairs, check_train, known, user_item_matrix

Normalisation = Literal["symmetric", "row"]


def _top_k_sparse(sim: np.ndarray, k: int) -> sp.csr_matrix:
    """Keep each row's ``k`` largest positive entries (diagonal excluded)."""
    sim = sim.copy()
    np.fill_diagonal(sim, 0.0)
    n = sim.shape[0]
    k = min(k, n - 1)
    cols = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((n, 0), dtype=np.int64)
    vals = np.take_along_axis(sim, cols, 1)
    rows = np.repeat(np.arange(n), cols.shape[1])
    keep = vals.reshape(-1) > 0
    return sp.csr_matrix((vals.reshape(-1)[keep], (rows[keep], cols.reshape(-1)[keep])), shape=(n, n))


def knn_graph(embeddings: np.ndarray, k: int = 20) -> sp.csr_matrix:
    """Symmetric kNN graph of cosine similarities (negative similarities dropped); W[i, j] = max of both directions."""
    x = F.normalize(torch.as_tensor(np.asarray(embeddings, dtype=np.float32)), dim=1).numpy()
    w = _top_k_sparse(x @ x.T, k)
    return w.maximum(w.T).tocsr()


def co_rating_graph(train: pd.DataFrame, n_users: int, n_items: int, k: int = 20) -> sp.csr_matrix:
    """kNN graph over users from the cosine of their mean-centred rating rows (co-rating similarity)."""
    r = user_item_matrix(train, n_users, n_items, binary=False)
    counts = np.diff(r.indptr)
    means = np.asarray(r.sum(1)).ravel() / np.maximum(counts, 1)
    centred = r.copy()
    centred.data = centred.data - np.repeat(means, counts)
    norms = np.sqrt(np.asarray(centred.multiply(centred).sum(1)).ravel())
    centred = sp.diags(1.0 / np.maximum(norms, 1e-9)) @ centred
    w = _top_k_sparse((centred @ centred.T).toarray(), k)
    return w.maximum(w.T).tocsr()


def normalise_graph(w: sp.spmatrix, kind: Normalisation = "symmetric") -> sp.csr_matrix:
    """``D^-1/2 W D^-1/2`` (symmetric, Zhou et al.) or ``D^-1 W`` (row-stochastic); isolated nodes stay 0."""
    w = sp.csr_matrix(w, dtype=np.float64)
    deg = np.asarray(w.sum(1)).ravel()
    if kind == "symmetric":
        d = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
        return (sp.diags(d) @ w @ sp.diags(d)).tocsr()
    if kind == "row":
        return (sp.diags(np.where(deg > 0, 1.0 / np.maximum(deg, 1e-300), 0.0)) @ w).tocsr()
    raise ValueError(f"unknown normalisation {kind!r}; expected symmetric or row")


def propagate(s: sp.spmatrix, y0: np.ndarray | sp.spmatrix, alpha: float = 0.8, tol: float = 1e-6,
              max_iter: int = 200) -> tuple[np.ndarray, int]:
    """Iterate ``Y <- αSY + (1-α)Y0`` from ``Y0``; returns (Y, iterations). Stops when max |ΔY| < tol.

    Converges for 0 <= α < 1 when S's spectral radius is <= 1 (both normalisations above).
    """
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    y = y0.toarray().astype(np.float64) if sp.issparse(y0) else np.array(y0, dtype=np.float64)
    base = (1 - alpha) * y
    for it in range(1, max_iter + 1):
        nxt = alpha * (s @ y) + base
        delta = float(np.abs(nxt - y).max(initial=0.0))
        y = nxt
        if delta < tol:
            return y, it
    return y, max_iter


def propagation_closed_form(s: sp.spmatrix, y0: np.ndarray, alpha: float) -> np.ndarray:
    """``(1-α)(I-αS)^-1 Y0`` by a dense solve: a check for small graphs, not for production sizes."""
    a = np.eye(s.shape[0]) - alpha * (s.toarray() if sp.issparse(s) else s)
    return (1 - alpha) * np.linalg.solve(a, np.asarray(y0, dtype=np.float64))


class LabelPropagation:
    """Recommender from propagated labels; see the module docstring.

    Args:
        k: neighbours per user in the graph.
        alpha: propagation strength (0 = no propagation).
        normalisation: graph normalisation (``row`` keeps labels a weighted average of neighbours').
        user_embeddings: build the graph from these [n_users, d] instead of co-rating similarity.
        shrink: evidence added to the confidence denominator, pulling thin estimates toward the user mean.
    """

    name = "label_propagation"
    rates = True

    def __init__(self, k: int = 30, alpha: float = 0.8, normalisation: Normalisation = "row",
                 user_embeddings: np.ndarray | None = None, shrink: float = 0.05, tol: float = 1e-5) -> None:
        self.k, self.alpha, self.normalisation = k, alpha, normalisation
        self.user_embeddings, self.shrink, self.tol = user_embeddings, shrink, tol

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "LabelPropagation":
        check_train(train, n_users, n_items)
        if self.user_embeddings is not None:
            self.graph_ = knn_graph(self.user_embeddings, self.k)
        else:
            self.graph_ = co_rating_graph(train, n_users, n_items, self.k)
        s = normalise_graph(self.graph_, self.normalisation)
        r = user_item_matrix(train, n_users, n_items, binary=False)
        counts = np.diff(r.indptr)
        self.global_mean_ = float(r.data.mean())
        self.user_mean_ = np.where(counts > 0, np.asarray(r.sum(1)).ravel() / np.maximum(counts, 1),
                                   self.global_mean_).astype(np.float32)
        mask = r.copy()
        mask.data[:] = 1.0
        centred = r.copy()
        centred.data = centred.data - np.repeat(self.user_mean_, counts)
        self.confidence_, self.iterations_ = propagate(s, mask, self.alpha, self.tol)
        opinion, _ = propagate(s, centred, self.alpha, self.tol)
        self.deviation_ = (opinion / (self.confidence_ + self.shrink)).astype(np.float32)
        self.confidence_ = self.confidence_.astype(np.float32)
        self.rated_ = mask.tocsr()
        self.centred_ = centred.tocsr()
        self.rating_range_ = (float(r.data.min()), float(r.data.max()))
        self.user_seen_ = counts > 0
        return self

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        u, i = check_pairs(user_idx, item_idx)
        ok, safe = known(u, self.user_seen_)
        i = np.clip(i, 0, self.deviation_.shape[1] - 1)
        est = np.where(ok, self.user_mean_[safe] + self.deviation_[safe, i], self.global_mean_)
        return np.clip(est, *self.rating_range_).astype(np.float32)

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        """Propagated evidence (how strongly the neighbourhood consumed each item): a ranking, not a rating."""
        ok, safe = known(np.asarray(user_idx), self.user_seen_)
        return (self.confidence_[safe] * ok[:, None]).astype(np.float32)

    def cold_user_scores(self, item_idx: np.ndarray, ratings: np.ndarray | None = None,
                         by: Literal["evidence", "rating"] = "evidence") -> np.ndarray:
        """Scores [n_items] for a new user known by a few items: one propagation step from their neighbours.

        The new user is linked to the ``k`` warm users most similar to them: cosine of the user's support ratings
        (centred on the global mean, so a lone 5 still says "liked") with each warm user's centred ratings on
        the same items, or plain overlap of rated items without ``ratings``. The similarity-weighted mean of the
        neighbours' propagated rows becomes the new user's scores: ``evidence`` (what they consume, the signal
        that ranks held-out items best) or ``rating`` (what they would rate it: mean + propagated deviation).
        """
        items = np.asarray(item_idx, dtype=np.int64)
        n_items = self.rated_.shape[1]
        profile = np.zeros(n_items, dtype=np.float64)
        if ratings is None:
            profile[items] = 1.0
            warm = self.rated_
        else:
            profile[items] = np.asarray(ratings, dtype=np.float64) - self.global_mean_
            warm = self.centred_
        norms = np.sqrt(np.asarray(warm[:, items].multiply(warm[:, items]).sum(1)).ravel())
        sims = (warm @ profile) / np.maximum(norms * np.linalg.norm(profile), 1e-9)
        top = np.argsort(-sims)[: self.k]
        weights = np.clip(sims[top], 0, None)
        table = self.confidence_ if by == "evidence" else self.user_mean_[:, None] + self.deviation_
        if weights.sum() <= 0:
            return table.mean(0).astype(np.float32)
        return (weights @ table[top] / weights.sum()).astype(np.float32)

    def targets(self, user_idx: np.ndarray, per_user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Extra (user, item, rating target, confidence) for each user's ``per_user`` most-supported unrated items."""
        users = np.unique(np.asarray(user_idx, dtype=np.int64))
        conf = self.confidence_[users].copy()
        conf[self.rated_[users].toarray() > 0] = -np.inf  # a real rating beats a propagated one
        per_user = min(per_user, conf.shape[1])
        items = np.argpartition(-conf, per_user - 1, axis=1)[:, :per_user]
        u = np.repeat(users, per_user)
        i = items.reshape(-1)
        c = np.take_along_axis(conf, items, 1).reshape(-1)
        keep = np.isfinite(c) & (c > 0)
        target = self.user_mean_[u] + self.deviation_[u, i]
        return u[keep], i[keep], np.clip(target[keep], *self.rating_range_), c[keep]


class PropagatedLabelTask:
    """Extra down-weighted rating targets from label propagation, as a two-tower task (its ``weight`` is the
    down-weighting): confidence-weighted MSE on the batch users' most-supported unrated items."""

    name = "propagated"

    def __init__(self, propagation: LabelPropagation, weight: float = 0.1, per_user: int = 8) -> None:
        self.propagation, self.weight, self.per_user = propagation, weight, per_user

    def loss(self, model, ctx) -> tuple[torch.Tensor, dict[str, float]]:
        u, i, target, conf = self.propagation.targets(ctx.user_idx.cpu().numpy(), self.per_user)
        if len(u) == 0:
            return ctx.user_vec.sum() * 0.0, {}
        dev = ctx.item_vec.device
        u_t, i_t = torch.as_tensor(u, device=dev), torch.as_tensor(i, device=dev)
        # the batch's user vectors exclude one item each; for extra targets the full history pool is right
        user_vec = model.user_vectors(u_t, ctx.item_vec)
        pred = model.rating(user_vec, u_t, ctx.item_vec[i_t], ctx.item_bias[i_t]).float()
        w = torch.as_tensor(conf / conf.mean(), dtype=torch.float32, device=dev)
        err = (pred - torch.as_tensor(target, dtype=torch.float32, device=dev)) ** 2
        loss = (w * err).mean()
        return loss, {"mse": float(err.detach().mean())}
