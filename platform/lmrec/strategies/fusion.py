"""Score fusion of an ensemble: the one implementation the offline ``FusedEnsemble`` and Serve's ingress both run.

Each member's scores are z-scored over the candidate items of a user (members live on different scales: MF
predicts ratings, the two-tower a cosine, EASE a regression of the history row), then averaged with the weights of
the members that can score, normalised to sum to 1. An item a member cannot score (NaN or inf: an item added at run
time has no MF factors) gets z = 0 from that member, i.e. no opinion; a member that cannot score the user at all
(None) is left out and the others' weights are renormalised.

Everything is batched over leading axes: a request is one row ``[n_items]``, ``fit_weights`` a ``[users,
n_items]`` block; the arithmetic per row is the same. numpy only (no torch, no Ray), so the ingress replicas import
it without the training stack.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def zscore(scores: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(s - mean) / std along the last axis over the finite entries inside ``mask`` (every entry when None).

    Entries outside the mask, non-finite entries and rows with no spread (a constant member) give 0.
    """
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s)
    ok = finite if mask is None else (np.asarray(mask, dtype=bool) & finite)
    n = np.maximum(ok.sum(-1, keepdims=True), 1)
    safe = np.where(ok, s, 0.0)
    mean = safe.sum(-1, keepdims=True) / n
    std = np.sqrt((np.where(ok, s - mean, 0.0) ** 2).sum(-1, keepdims=True) / n)
    spread = std > 1e-12
    return np.where(ok & spread, (safe - mean) / np.where(spread, std, 1.0), 0.0)


def fuse_scores(members: Mapping[str, np.ndarray | None], weights: Mapping[str, float],
                mask: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of the members' z-scores (``zscore``); -inf outside ``mask``.

    Members with no positive weight, and members whose scores are None (they cannot score this user), are left
    out; the remaining weights are renormalised. ValueError when no member is left.
    """
    present = {m: s for m, s in members.items() if s is not None and weights.get(m, 0.0) > 0}
    if not present:
        raise ValueError(f"no member can score this request (members {sorted(members)}, weights {dict(weights)})")
    total = sum(weights[m] for m in present)
    fused = sum(weights[m] / total * zscore(s, mask) for m, s in present.items())
    return fused if mask is None else np.where(mask, fused, -np.inf)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest finite scores of one row, best first (ties by index)."""
    scores = np.asarray(scores)
    k = min(k, int(np.isfinite(scores).sum()))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.lexsort((top, -scores[top]))]
