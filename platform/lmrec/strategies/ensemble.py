"""Fused ensemble: several trained members' scores combined with weights learned on the validation split.

Fusion is the one Serve applies, the same function (``lmrec.strategies.fusion.fuse_scores``; ``fuse`` and
``zscore_rows`` here are its names of old): each member's scores are z-scored over the candidate items of a user,
then averaged with non-negative weights that sum to 1. So the weights learned here, written by ``save_weights`` as
a JSON next to the artifacts, mean the same thing in production.

Learning the ranking weights (``fit_weights``; validation items are relevant, the user's train items excluded, as
in ``evaluate_ranking``), by ``method``:

* ``"listwise"``: minimise a listwise softmax loss of the validation items over the fused z-scores (a smooth
  stand-in for NDCG; weights are a softmax of free logits, so they stay on the simplex), with a learned sharpness;
* ``"grid"``: the point of a regular grid over the simplex (step ``grid_step``) with the highest validation
  NDCG@k, measured exactly as ``evaluate_ranking`` measures it (``RankingAccumulator``);
* ``"best"`` (default): both; the listwise solution competes with the grid points and the highest validation
  NDCG@k wins (ties go to the grid point met first: the order of ``simplex_grid``).

Rating weights (for ``predict``) are non-negative least squares on the members' predicted ratings
(``scipy.optimize.nnls``), normalised to sum to 1 so the blend stays on the rating scale.

Serve z-scores over a request's candidate items, which exclude the user's seen items. ``fit_weights`` z-scores
over the items the user has not rated in train (what a recommend request ranks); so does ``score_items`` once the
ensemble knows the histories (``fit`` or ``set_seen``: seen items then score -inf, as in Serve), and over all items
otherwise.
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

from lmrec.artifacts.ensemble import WEIGHTS_FORMAT as FORMAT
from lmrec.strategies.fusion import fuse_scores, zscore



# One fusion for the offline ensemble and Serve (``lmrec.strategies.fusion``); the offline names stay as aliases.
zscore_rows = zscore
fuse = fuse_scores


def simplex_grid(n_members: int, step: float) -> np.ndarray:
    """[G, n_members] every weight vector with entries in {0, step, 2·step, ..., 1} summing to 1 (vertices first)."""
    if not 0 < step <= 1:
        raise ValueError(f"grid step must be in (0, 1], got {step}")
    n = int(round(1 / step))
    if abs(n * step - 1) > 1e-9:
        raise ValueError(f"grid step must divide 1, got {step}")

    def parts(m: int, total: int):
        if m == 1:
            yield (total,)
            return
        for first in range(total, -1, -1):
            for rest in parts(m - 1, total - first):
                yield (first, *rest)

    grid = np.array(list(parts(n_members, n)), dtype=np.float64) / n
    # the single members first, so ties prefer the simplest mix
    order = np.argsort(~(grid == 1.0).any(1), kind="stable")
    return grid[order]


def ranking_ndcg(fused: np.ndarray, relevant: np.ndarray, seen: np.ndarray, k: int = 10) -> float:
    """NDCG@k of a score matrix, ``seen`` excluded, ``relevant`` relevant (``evaluate_ranking``'s metric)."""
    from lmrec.evaluation.metrics import RankingAccumulator

    acc = RankingAccumulator(fused.shape[1], (k,))
    acc.add(torch.as_tensor(fused), torch.as_tensor(relevant), torch.as_tensor(seen))
    return float(acc.result()[f"ndcg@{k}"])


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
        self.validation: dict = {}
        self.seen_: sp.csr_matrix | None = None

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "FusedEnsemble":
        """Fit every member on ``train`` and remember its histories (``set_seen``). Returns self."""
        for member in self.members.values():
            member.fit(train, n_users, n_items)
        return self.set_seen(train, n_users, n_items)

    def set_seen(self, train: pd.DataFrame, n_users: int, n_items: int) -> "FusedEnsemble":
        """Users' known items: ``score_items`` z-scores over the others (Serve's ``exclude_seen``). Returns self."""
        self.seen_ = _user_items(train, np.arange(n_users), n_items)
        return self

    def member_scores(self, user_idx: np.ndarray) -> dict[str, np.ndarray]:
        return {m: np.asarray(r.score_items(user_idx), dtype=np.float64) for m, r in self.members.items()}

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        """``fuse`` of the members' scores; with known histories, over each user's unseen items (seen: -inf)."""
        if self.seen_ is None:
            return fuse(self.member_scores(user_idx), self.weights).astype(np.float32)
        seen = self.seen_[np.asarray(user_idx)].toarray()
        fused = fuse(self.member_scores(user_idx), self.weights, ~seen)
        return np.where(seen, -np.inf, fused).astype(np.float32)

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        total = sum(w for m, w in self.rating_weights.items() if w > 0 and hasattr(self.members[m], "predict"))
        preds = sum(w / total * np.asarray(self.members[m].predict(user_idx, item_idx), dtype=np.float64)
                    for m, w in self.rating_weights.items() if w > 0)
        return np.asarray(preds, dtype=np.float32)

    def fit_weights(self, train: pd.DataFrame, valid: pd.DataFrame, n_items: int, *, steps: int = 300,
                    lr: float = 0.05, max_users: int = 2048, seed: int = 0,
                    rating_members: list[str] | None = None,
                    relevance_threshold: float | None = None, method: str = "best", grid_step: float = 0.1,
                    k: int = 10) -> dict[str, float]:
        """Learn ranking weights on ``valid`` (train items excluded), and rating weights by NNLS; returns weights.

        Ranking: a valid row is relevant when its rating is >= ``relevance_threshold`` (every row when None);
        ``method`` is "listwise", "grid" or "best" (module docstring), the grid scored by validation NDCG@``k``.
        Rating weights are fitted on every valid row.
        """
        if method not in ("listwise", "grid", "best"):
            raise ValueError(f"method must be 'listwise', 'grid' or 'best', got {method!r}")
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
        seen = _user_items(train, users, n_items).toarray()
        rel &= ~seen
        names = list(self.members)
        raw = self.member_scores(users)
        z = np.stack([zscore_rows(raw[m], ~seen) for m in names])  # [M, U, I]
        self.validation = {"method": method, "valid_users": int(rel.any(1).sum()),
                           f"member_valid_ndcg@{k}": {m: ranking_ndcg(z[j], rel, seen, k) for j, m in enumerate(names)}}
        candidates: list[tuple[str, np.ndarray]] = []
        if method in ("listwise", "best"):
            w, loss = _listwise_weights(z, rel, seen, steps=steps, lr=lr)
            self.validation["listwise_loss"] = loss
            candidates.append(("listwise", w))
        if method in ("grid", "best"):
            candidates = [("grid", g) for g in simplex_grid(len(names), grid_step)] + candidates
        scored = [(ranking_ndcg(np.einsum("m,mui->ui", w, z), rel, seen, k), src, w) for src, w in candidates]
        best = max(range(len(scored)), key=lambda j: scored[j][0])  # first of the ties
        ndcg, source, w = scored[best]
        self.weights = {m: float(v) for m, v in zip(names, w)}
        self.validation.update({f"valid_ndcg@{k}": ndcg, "chosen_by": source, "candidates": len(scored)})
        if method == "best":
            self.validation[f"listwise_valid_ndcg@{k}"] = scored[-1][0]
        rating_members = rating_members or [m for m in names if getattr(self.members[m], "rates", False)]
        if rating_members:
            v = ratings_valid
            cols = np.stack([np.asarray(self.members[m].predict(v["user_idx"].to_numpy(), v["item_idx"].to_numpy()),
                                        dtype=np.float64) for m in rating_members], 1)
            coef, _ = nnls(cols, v["rating"].to_numpy(np.float64))
            if coef.sum() <= 0:
                coef = np.ones(len(rating_members))
            self.rating_weights = {m: float(c / coef.sum()) for m, c in zip(rating_members, coef)}
        self.validation["fit_seconds"] = time.perf_counter() - start
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


def _user_items(frame: pd.DataFrame, users: np.ndarray, n_items: int) -> sp.csr_matrix:
    """[len(users), n_items] boolean CSR of the (user, item) rows of ``frame`` whose user is in sorted ``users``."""
    rows = frame[frame["user_idx"].isin(users)]
    m = sp.csr_matrix((np.ones(len(rows), dtype=bool), (np.searchsorted(users, rows["user_idx"].to_numpy()),
                                                       rows["item_idx"].to_numpy())), shape=(len(users), n_items))
    m.sum_duplicates()
    return m


def _listwise_weights(z: np.ndarray, rel: np.ndarray, seen: np.ndarray, *, steps: int,
                      lr: float) -> tuple[np.ndarray, float]:
    """Simplex weights minimising the listwise softmax loss of the relevant items over fused z-scores [M, U, I]."""
    z_t = torch.as_tensor(z, dtype=torch.float32)
    rel_t = torch.as_tensor(rel)
    seen_t = torch.as_tensor(seen)
    has = rel_t.any(1)
    logits = torch.zeros(z.shape[0], requires_grad=True)
    log_scale = torch.zeros((), requires_grad=True)  # sharpness of the listwise softmax
    opt = torch.optim.Adam([logits, log_scale], lr=lr)
    loss = torch.zeros(())
    for _ in range(steps):
        w = torch.softmax(logits, 0)
        fused = torch.einsum("m,mui->ui", w, z_t[:, has]) * log_scale.exp() * 4.0
        logp = F.log_softmax(fused.masked_fill(seen_t[has], float("-inf")), dim=1)
        r = rel_t[has].float()
        loss = -(torch.where(rel_t[has], logp, torch.zeros_like(logp)) * r).sum(1).div(r.sum(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.softmax(logits, 0).detach().numpy().astype(np.float64), float(loss.detach())
