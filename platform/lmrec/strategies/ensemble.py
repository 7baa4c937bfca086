"""Fused ensemble: several trained members' scores combined with weights learned on the validation split.

Fusion is exactly the one Serve applies (``lmrec.serving.ensemble.fuse_scores``): each member's scores are
z-scored over the candidate items of a user, then averaged with non-negative weights that sum to 1. So the weights
learned here, written by ``save_weights`` as a JSON next to the artifacts, mean the same thing in production.

Learning the weights: ranking weights minimise a listwise softmax loss of the validation items over the fused
z-scores (a smooth stand-in for NDCG; weights are a softmax of free logits, so they stay on the simplex), with a
learned sharpness; rating weights (for ``predict``) are non-negative least squares on the members' predicted
ratings (``scipy.optimize.nnls``), normalised to sum to 1 so the blend stays on the rating scale.

Serve z-scores over a request's candidate items; ``score_items`` here, which has no request, z-scores over all
items, and ``fit_weights`` over the items the user has not rated in train (what a recommend request ranks).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.optimize import nnls

FORMAT = "lmrec.ensemble_weights/1"


def zscore_rows(scores: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-row (s - mean) / std over the finite entries inside ``mask``; others and constant rows give 0."""
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s) if mask is None else (np.asarray(mask, dtype=bool) & np.isfinite(s))
    n = ok.sum(1, keepdims=True)
    safe = np.where(ok, s, 0.0)
    mean = safe.sum(1, keepdims=True) / np.maximum(n, 1)
    var = (np.where(ok, s - mean, 0.0) ** 2).sum(1, keepdims=True) / np.maximum(n, 1)
    std = np.sqrt(var)
    z = np.where(ok & (std > 1e-12), (s - mean) / np.where(std > 1e-12, std, 1.0), 0.0)
    return z


def fuse(member_scores: dict[str, np.ndarray], weights: dict[str, float], mask: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of per-row z-scores of the members with a positive weight (Serve's fusion, batched)."""
    present = {m: s for m, s in member_scores.items() if weights.get(m, 0.0) > 0}
    if not present:
        raise ValueError("no member has a positive weight")
    total = sum(weights[m] for m in present)
    return sum(weights[m] / total * zscore_rows(s, mask) for m, s in present.items())


class FusedEnsemble:
    """``Recommender`` over fitted members (each a ``Recommender``); ``fit_weights`` learns the fusion weights.

    ``fit`` fits every member on ``train`` (skip it when the members are already trained).
    """

    name = "fused_ensemble"
    rates = True

    def __init__(self, members: dict[str, object], weights: dict[str, float] | None = None,
                 rating_weights: dict[str, float] | None = None) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = dict(members)
        uniform = {m: 1.0 / len(members) for m in members}
        self.weights = dict(weights or uniform)
        self.rating_weights = dict(rating_weights or uniform)
        self.validation: dict[str, float] = {}

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "FusedEnsemble":
        for member in self.members.values():
            member.fit(train, n_users, n_items)
        return self

    def member_scores(self, user_idx: np.ndarray) -> dict[str, np.ndarray]:
        return {m: np.asarray(r.score_items(user_idx), dtype=np.float64) for m, r in self.members.items()}

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        return fuse(self.member_scores(user_idx), self.weights).astype(np.float32)

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        total = sum(w for m, w in self.rating_weights.items() if w > 0 and hasattr(self.members[m], "predict"))
        preds = sum(w / total * np.asarray(self.members[m].predict(user_idx, item_idx), dtype=np.float64)
                    for m, w in self.rating_weights.items() if w > 0)
        return np.asarray(preds, dtype=np.float32)

    def fit_weights(self, train: pd.DataFrame, valid: pd.DataFrame, n_items: int, *, steps: int = 300,
                    lr: float = 0.05, max_users: int = 2048, seed: int = 0,
                    rating_members: list[str] | None = None,
                    relevance_threshold: float | None = None) -> dict[str, float]:
        """Learn ranking weights on ``valid`` (train items excluded), and rating weights by NNLS; returns weights.

        Ranking: a valid row is relevant when its rating is >= ``relevance_threshold`` (every row when None).
        Rating weights are fitted on every valid row.
        """
        start = time.perf_counter()
        ratings_valid = valid
        if relevance_threshold is not None:
            valid = valid[valid["rating"] >= relevance_threshold]
        users = np.unique(valid["user_idx"].to_numpy())
        rng = np.random.default_rng(seed)
        if len(users) > max_users:
            users = np.sort(rng.choice(users, max_users, replace=False))
        pos = np.searchsorted(users, valid["user_idx"].to_numpy())
        keep = (pos < len(users)) & (users[np.minimum(pos, len(users) - 1)] == valid["user_idx"].to_numpy())
        rel = sp.csr_matrix((np.ones(keep.sum()), (pos[keep], valid["item_idx"].to_numpy()[keep])),
                            shape=(len(users), n_items)).toarray() > 0
        tr = train[train["user_idx"].isin(users)]
        seen = sp.csr_matrix((np.ones(len(tr)), (np.searchsorted(users, tr["user_idx"].to_numpy()),
                                                 tr["item_idx"].to_numpy())), shape=(len(users), n_items)).toarray() > 0
        rel &= ~seen
        names = list(self.members)
        raw = self.member_scores(users)
        z = np.stack([zscore_rows(raw[m], ~seen) for m in names])  # [M, U, I]
        z_t = torch.as_tensor(z, dtype=torch.float32)
        rel_t = torch.as_tensor(rel)
        seen_t = torch.as_tensor(seen)
        has = rel_t.any(1)
        logits = torch.zeros(len(names), requires_grad=True)
        log_scale = torch.zeros((), requires_grad=True)  # sharpness of the listwise softmax
        opt = torch.optim.Adam([logits, log_scale], lr=lr)
        for _ in range(steps):
            w = torch.softmax(logits, 0)
            fused = torch.einsum("m,mui->ui", w, z_t[:, has]) * log_scale.exp() * 4.0
            logp = F.log_softmax(fused.masked_fill(seen_t[has], float("-inf")), dim=1)
            r = rel_t[has].float()
            loss = -(torch.where(rel_t[has], logp, torch.zeros_like(logp)) * r).sum(1).div(r.sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        w = torch.softmax(logits, 0).detach().numpy()
        self.weights = {m: float(v) for m, v in zip(names, w)}
        rating_members = rating_members or [m for m in names if getattr(self.members[m], "rates", False)]
        if rating_members:
            v = ratings_valid
            cols = np.stack([np.asarray(self.members[m].predict(v["user_idx"].to_numpy(), v["item_idx"].to_numpy()),
                                        dtype=np.float64) for m in rating_members], 1)
            coef, _ = nnls(cols, v["rating"].to_numpy(np.float64))
            if coef.sum() <= 0:
                coef = np.ones(len(rating_members))
            self.rating_weights = {m: float(c / coef.sum()) for m, c in zip(rating_members, coef)}
        self.validation = {"fit_seconds": time.perf_counter() - start, "listwise_loss": float(loss.detach()),
                           "valid_users": int(has.sum())}
        return self.weights

    def save_weights(self, path: str | Path, *, artifacts: dict[str, str] | None = None,
                     metrics: dict[str, float] | None = None,
                     artifact_sha256: dict[str, str] | None = None) -> Path:
        """Write the weights JSON Serve reads (``weights`` maps member name -> weight, as in ``EnsembleWeights``).

        ``artifacts`` maps member name -> artifact location; ``artifact_sha256`` member name -> sha256 of that
        artifact's manifest.json, which pins the exact members the weights were fitted for.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": FORMAT,
            "fusion": "zscore_weighted_mean",
            "weights": self.weights,
            "rating_weights": self.rating_weights,
            "artifacts": artifacts or {},
            "artifact_sha256": artifact_sha256 or {},
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "validation": self.validation,
        }
        path.write_text(json.dumps(doc, indent=1, sort_keys=True))
        return path


def load_weights(path: str | Path) -> dict:
    """Read a weights JSON written by ``FusedEnsemble.save_weights`` (checks the format tag)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ensemble weights file (format {doc.get('format')!r}, expected {FORMAT})")
    return doc
