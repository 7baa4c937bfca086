"""Biased matrix factorisation (Koren, Bell & Volinsky 2009) in torch: r̂ = μ + b_u + b_i + p_u · q_i.

Trained with Adam on the full train set per step rather than Funk-style SGD: on ML-100K-sized data one
full-batch step is a few milliseconds of vectorised work, the loss goes down smoothly, and the result
does not depend on a shuffling order. The setting that matters most is the L2 strength: with 64 factors,
per-rating L2 around 0.1 is far stronger than scikit-surprise's 0.02 and worth ~0.03 RMSE on ML-100K.
The defaults were tuned on a 10% validation slice of ML-100K u1.base (not on u1.test); on u1.test they
give RMSE 0.925, against 0.951 for Surprise ``SVD`` and 0.933 for ``SVDpp`` with default settings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lmrec.models.baselines.interactions import check_pairs, check_train, known


class BiasedMF:
    """Biased MF fitted by full-batch (or mini-batch) Adam on squared error.

    Loss = mean over train ratings of (r̂ − r)² + l2 · (‖p_u‖² + ‖q_i‖² + b_u² + b_i²): the penalty is
    per rating, as in SGD-trained MF, so frequent users and items are held by their data and rare ones
    by the prior.

    Args:
        dim: latent factors per user/item. Default 64.
        l2: per-rating L2 weight on factors and biases. Default 0.12.
        lr: Adam learning rate. Default 0.05.
        epochs: passes over train (one step each when ``batch_size`` is None). Default 80.
        batch_size: ratings per step; None = the whole train set in one step. Default None.
        init_std: std of the Gaussian factor initialisation (biases start at 0). Default 0.1.
        seed: seeds factor initialisation and batch order; equal seeds give equal models. Default 0.

    Users/items with no train rating keep zero factors and biases, so they are predicted from the other
    side's bias (or μ). Predictions are clamped to the train rating range.
    """

    name = "biased_mf"
    rates = True

    def __init__(
        self,
        dim: int = 64,
        l2: float = 0.12,
        lr: float = 0.05,
        epochs: int = 80,
        batch_size: int | None = None,
        init_std: float = 0.1,
        seed: int = 0,
    ) -> None:
        if dim < 1 or epochs < 1:
            raise ValueError(f"dim and epochs must be >= 1, got dim={dim}, epochs={epochs}")
        if l2 < 0 or lr <= 0 or init_std < 0:
            raise ValueError(f"need l2 >= 0, lr > 0, init_std >= 0; got l2={l2}, lr={lr}, init_std={init_std}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be None or >= 1, got {batch_size}")
        self.dim = dim
        self.l2 = l2
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.init_std = init_std
        self.seed = seed

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "BiasedMF":
        """Train factors and biases on ``train``. Returns self."""
        check_train(train, n_users, n_items)
        gen = torch.Generator().manual_seed(self.seed)
        u = torch.from_numpy(train["user_idx"].to_numpy(np.int64, copy=True))
        i = torch.from_numpy(train["item_idx"].to_numpy(np.int64, copy=True))
        r = torch.from_numpy(train["rating"].to_numpy(np.float32, copy=True))
        self.mean_ = float(r.mean())
        self.rating_range_ = (float(r.min()), float(r.max()))

        user_f = (torch.randn(n_users, self.dim, generator=gen) * self.init_std).requires_grad_()
        item_f = (torch.randn(n_items, self.dim, generator=gen) * self.init_std).requires_grad_()
        user_b = torch.zeros(n_users, requires_grad=True)
        item_b = torch.zeros(n_items, requires_grad=True)
        opt = torch.optim.Adam([user_f, item_f, user_b, item_b], lr=self.lr)
        n = len(r)
        step = self.batch_size or n
        self.loss_history_: list[float] = []
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen) if step < n else None
            epoch_loss = 0.0
            for start in range(0, n, step):
                idx = order[start : start + step] if order is not None else slice(None)
                bu, bi, rr = u[idx], i[idx], r[idx]
                # F.embedding and gather, not tensor[idx]: on multi-threaded CPU the backward of plain
                # indexing accumulates in a racy order, so two fits with one seed differed in the 5th digit.
                dot = (F.embedding(bu, user_f) * F.embedding(bi, item_f)).sum(dim=1)
                pred = self.mean_ + user_b.gather(0, bu) + item_b.gather(0, bi) + dot
                # The per-rating penalty Σ_ratings ‖p_u‖² equals Σ_u n_u ‖p_u‖²: computing it on the parameter
                # tables avoids two more passes over [batch, dim] tensors, the costliest part of a step.
                n_u = torch.bincount(bu, minlength=n_users).float()
                n_i = torch.bincount(bi, minlength=n_items).float()
                penalty = n_u @ (user_f.square().sum(dim=1) + user_b.square()) + n_i @ (
                    item_f.square().sum(dim=1) + item_b.square()
                )
                loss = (pred - rr).square().mean() + self.l2 * penalty / len(rr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                epoch_loss += loss.item() * len(rr)
            self.loss_history_.append(epoch_loss / n)

        # Rows with no train rating never got a gradient and still hold their random init: zero them so
        # unseen users/items fall back to the other side's bias and μ.
        self.user_seen_ = np.bincount(u.numpy(), minlength=n_users) > 0
        self.item_seen_ = np.bincount(i.numpy(), minlength=n_items) > 0
        self.user_factors_ = user_f.detach().numpy() * self.user_seen_[:, None]
        self.item_factors_ = item_f.detach().numpy() * self.item_seen_[:, None]
        self.user_bias_ = user_b.detach().numpy() * self.user_seen_
        self.item_bias_ = item_b.detach().numpy() * self.item_seen_
        return self

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """μ + b_u + b_i + p_u · q_i, clamped to the train rating range (float32)."""
        u, i = check_pairs(user_idx, item_idx)
        u_ok, u_safe = known(u, self.user_seen_)
        i_ok, i_safe = known(i, self.item_seen_)
        p = self.user_factors_[u_safe] * u_ok[:, None]
        q = self.item_factors_[i_safe] * i_ok[:, None]
        est = self.mean_ + self.user_bias_[u_safe] * u_ok + self.item_bias_[i_safe] * i_ok + (p * q).sum(axis=1)
        return np.clip(est, *self.rating_range_).astype(np.float32)

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        """Unclamped μ + b_u + b_i + p_u · q_i for every item (clamping would tie the top of the scale)."""
        ok, safe = known(user_idx, self.user_seen_)
        p = self.user_factors_[safe] * ok[:, None]
        b_u = self.user_bias_[safe] * ok
        return (self.mean_ + b_u[:, None] + self.item_bias_[None, :] + p @ self.item_factors_.T).astype(np.float32)
