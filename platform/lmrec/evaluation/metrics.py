"""Rating and full-ranking metrics.

Rating metrics (``rmse``, ``mae``, ``auc``) work on flat arrays. Ranking metrics work on a dense score matrix
``[users, items]`` processed in row batches with ``torch.topk``, so a catalogue the size of ML-1M never needs a
full sort.

**The ranked list.** For each user, the items ranked are the catalogue (or ``candidates``) minus the user's
*excluded* items (their training items). Excluded wins: an item both excluded and relevant is neither ranked
nor counted as relevant. Items are ordered by a total order that does not reward ties (pessimistic):

1. higher score first;
2. among equal scores, non-relevant items before relevant ones;
3. then lower item index first (only matters for which items coverage sees).

So a model that gives every item the same score gets the worst possible ranking of the relevant items, never
a lucky one, and results do not depend on how ``torch.topk`` happens to order equal values.

**Definitions** (binary relevance; ``hits`` = relevant items among the first K of the list):

- ``hr@K``: 1 if any relevant item is in the top K, else 0.
- ``precision@K``: hits ÷ K (K as asked, even when fewer than K items can be ranked).
- ``recall@K``: hits ÷ number of relevant items (the standard denominator, not min(K, #relevant), so recall@K
  < 1 whenever a user has more than K relevant items).
- ``ndcg@K``: DCG with gain 1 and discount 1/log2(rank + 1) (rank from 1), divided by the ideal DCG of
  min(K, #relevant) relevant items at the top.
- ``mrr@K``: 1 / rank of the first relevant item within the top K, else 0.
- ``coverage@K``: distinct items in any evaluated user's top K ÷ number of candidate items.

User metrics are averaged over *evaluated* users: users with at least one relevant, non-excluded candidate
item. Users with none are skipped (not counted as 0); ``users`` reports how many were evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.stats import rankdata

RANKING_METRICS = ("ndcg", "recall", "hr", "precision", "mrr")


# ---------------------------------------------------------------------------------------------- ratings


def _paired(y: ArrayLike, y_hat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(y, dtype=np.float64).ravel()
    b = np.asarray(y_hat, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"y has {a.size} values but y_hat has {b.size}")
    if a.size == 0:
        raise ValueError("cannot compute a metric over zero values")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("y and y_hat must be finite (got NaN or inf)")
    return a, b


def rmse(y: ArrayLike, y_hat: ArrayLike) -> float:
    """Root mean squared error between true ratings ``y`` and predictions ``y_hat``."""
    a, b = _paired(y, y_hat)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def mae(y: ArrayLike, y_hat: ArrayLike) -> float:
    """Mean absolute error between true ratings ``y`` and predictions ``y_hat``."""
    a, b = _paired(y, y_hat)
    return float(np.mean(np.abs(a - b)))


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Exact ROC AUC: P(score of a random positive > score of a random negative), ties counting 1/2.

    Computed as the Mann-Whitney U statistic with average ranks for ties. ``labels`` are booleans or 0/1.
    Raises ``ValueError`` when only one class is present (AUC is undefined then).
    """
    lab = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if lab.shape != s.shape:
        raise ValueError(f"labels has {lab.size} values but scores has {s.size}")
    if not np.isin(lab, (0, 1)).all():
        raise ValueError("labels must be 0/1 or boolean")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    pos = lab.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positive and {n_neg} negative labels")
    ranks = rankdata(s, method="average")
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# ---------------------------------------------------------------------------------------------- ranking


def _as_tensor(x: ArrayLike | torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    return t if dtype is None else t.to(dtype)


def rank_top_k(
    scores: torch.Tensor, relevant: torch.Tensor, excluded: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's first ``k`` ranks under the module's total order (score, then non-relevant first, then index).

    scores: float [B, n]; relevant, excluded: bool [B, n]. Returns ``items`` int64 [B, min(k, n)] (the item
    at each rank; -1 where fewer items than ranks can be ranked), ``hits`` bool [B, min(k, n)] (that item is
    relevant) and ``n_relevant`` int64 [B] (relevant items that are not excluded).

    ``torch.topk`` orders equal values arbitrarily and may cut a tie group at the K-th value anywhere, so
    only its values and the *set* of items strictly above the K-th value are trusted: the K columns are
    re-sorted with stable sorts, and rows whose K-th-value group was cut (or reaches excluded items at
    -inf) refill that group from the whole row with an exact integer ``topk`` on (relevance, index).
    """
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; a ranking over NaN is undefined")
    n = scores.shape[1]
    relevant = relevant & ~excluded
    n_relevant = relevant.sum(dim=1)
    masked = scores.masked_fill(excluded, float("-inf"))
    k_eff = min(k, n)
    values, items = torch.topk(masked, k_eff, dim=1)
    # Lexicographic sort of the K columns: least significant key first (index, relevance, score), each stable.
    perm = torch.sort(items, dim=1, stable=True).indices
    values, items = values.gather(1, perm), items.gather(1, perm)
    perm = torch.sort(relevant.gather(1, items).to(torch.uint8), dim=1, stable=True).indices
    values, items = values.gather(1, perm), items.gather(1, perm)
    perm = torch.sort(values, dim=1, descending=True, stable=True).indices
    values, items = values.gather(1, perm), items.gather(1, perm)

    kth = values[:, -1:]
    cut = ((masked == kth).sum(dim=1) != (values == kth).sum(dim=1)) | (kth[:, 0] == float("-inf"))
    if cut.any():
        rows = cut.nonzero()[:, 0]
        items[rows] = _refill_kth_group(masked[rows], values[rows], items[rows], relevant[rows], excluded[rows])
    hits = relevant.gather(1, items.clamp(min=0)) & (items >= 0)
    return items, hits, n_relevant


def _refill_kth_group(
    masked: torch.Tensor, values: torch.Tensor, items: torch.Tensor, relevant: torch.Tensor, excluded: torch.Tensor
) -> torch.Tensor:
    """Replace the ranks holding the K-th value with the tied items in (non-relevant first, index) order."""
    n, k = masked.shape[1], values.shape[1]
    kth = values[:, -1:]
    n_above = (values > kth).sum(dim=1, keepdim=True)
    # Excluded items sit at -inf too; they are never ranked, so a row may hold fewer than K ranked items.
    n_ranked = n - excluded.sum(dim=1, keepdim=True)
    n_slots = n_ranked.clamp(max=k) - n_above
    tied = (masked == kth) & ~excluded
    order_key = relevant.long() * n + torch.arange(n)
    key = torch.where(tied, -order_key, torch.full_like(order_key, -2 * n - 1))
    tied_items = torch.topk(key, k, dim=1).indices
    slot = torch.arange(k) - n_above
    refill = torch.where(slot < n_slots, tied_items.gather(1, slot.clamp(min=0)), torch.full_like(items, -1))
    return torch.where(slot < 0, items, refill)


def user_metrics_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Per-user ndcg/recall/hr/precision/mrr at ``k`` from a ``hits`` matrix of at least min(k, n) columns.

    Rows with ``n_relevant == 0`` get NaN recall/ndcg; callers drop them (see ``RankingAccumulator``).
    """
    h = hits[:, :k].to(torch.float64)
    width = h.shape[1]
    n_hits = h.sum(dim=1)
    discount = 1.0 / torch.log2(torch.arange(max(k, 1), dtype=torch.float64) + 2.0)
    dcg = (h * discount[:width]).sum(dim=1)
    ideal = torch.cumsum(discount, dim=0)[(n_relevant.clamp(min=1, max=k) - 1)]
    first = h.argmax(dim=1).to(torch.float64)
    any_hit = n_hits > 0
    nan = torch.full_like(n_hits, float("nan"))
    return {
        "ndcg": torch.where(n_relevant > 0, dcg / ideal, nan),
        "recall": torch.where(n_relevant > 0, n_hits / n_relevant.clamp(min=1), nan),
        "hr": any_hit.to(torch.float64),
        "precision": n_hits / k,
        "mrr": torch.where(any_hit, 1.0 / (first + 1.0), torch.zeros_like(n_hits)),
    }


class RankingAccumulator:
    """Sums ranking metrics over user batches so the full score matrix never has to exist at once.

    ``candidates`` (item indices) restricts ranking to those items: everything else counts as excluded for
    every user, and coverage is measured against the number of candidates.
    """

    def __init__(self, n_items: int, ks: Sequence[int] = (10,), candidates: ArrayLike | None = None) -> None:
        self.ks = _check_ks(ks)
        self.n_items = int(n_items)
        self.non_candidate = torch.zeros(self.n_items, dtype=torch.bool)
        if candidates is not None:
            cand = np.unique(np.asarray(candidates, dtype=np.int64))
            if cand.size == 0:
                raise ValueError("candidates is empty: nothing to rank")
            if cand.min() < 0 or cand.max() >= self.n_items:
                raise ValueError(f"candidates hold item indices outside [0, {self.n_items})")
            self.non_candidate[:] = True
            self.non_candidate[torch.from_numpy(cand)] = False
        self.n_candidates = int((~self.non_candidate).sum())
        self.users = 0
        self.sums = {f"{m}@{k}": 0.0 for k in self.ks for m in RANKING_METRICS}
        self.covered = {k: torch.zeros(self.n_items, dtype=torch.bool) for k in self.ks}

    def add(
        self,
        scores: ArrayLike | torch.Tensor,
        relevant: ArrayLike | torch.Tensor,
        excluded: ArrayLike | torch.Tensor | None = None,
    ) -> None:
        """Add one batch: scores [B, n_items], relevant and excluded bool [B, n_items]."""
        s = _as_tensor(scores)
        if not s.is_floating_point():
            s = s.to(torch.float64)
        elif s.dtype not in (torch.float32, torch.float64):
            s = s.to(torch.float32)  # widening half/bfloat16 keeps every tie and every order
        rel = _as_tensor(relevant, torch.bool)
        exc = torch.zeros_like(rel) if excluded is None else _as_tensor(excluded, torch.bool)
        if s.ndim != 2 or s.shape[1] != self.n_items:
            raise ValueError(f"scores must be [users, {self.n_items}], got {tuple(s.shape)}")
        if rel.shape != s.shape or exc.shape != s.shape:
            raise ValueError(f"relevant {tuple(rel.shape)} / excluded {tuple(exc.shape)} must match {tuple(s.shape)}")
        exc = exc | self.non_candidate
        items, hits, n_rel = rank_top_k(s, rel, exc, max(self.ks))
        keep = n_rel > 0
        if not keep.any():
            return
        items, hits, n_rel = items[keep], hits[keep], n_rel[keep]
        self.users += int(keep.sum())
        for k in self.ks:
            for name, per_user in user_metrics_at_k(hits, n_rel, k).items():
                self.sums[f"{name}@{k}"] += float(per_user.sum())
            top = items[:, :k]
            self.covered[k][top[top >= 0]] = True

    def result(self) -> dict[str, float | int]:
        """Mean of each metric over evaluated users, coverage@K, and ``users`` (the evaluated count)."""
        out: dict[str, float | int] = {}
        for k in self.ks:
            for m in RANKING_METRICS:
                out[f"{m}@{k}"] = self.sums[f"{m}@{k}"] / self.users if self.users else float("nan")
            out[f"coverage@{k}"] = float(self.covered[k].sum()) / self.n_candidates
        out["users"] = self.users
        return out


def ranking_metrics(
    scores: ArrayLike | torch.Tensor,
    relevant: ArrayLike | torch.Tensor,
    excluded: ArrayLike | torch.Tensor | None = None,
    ks: Sequence[int] = (10,),
    candidates: ArrayLike | None = None,
    batch_size: int = 512,
) -> dict[str, float | int]:
    """Full-ranking metrics for a dense score matrix [users, items] with bool relevance/exclusion masks.

    See the module docstring for the ranked list, the tie rule and each metric's definition.
    """
    s = _as_tensor(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D [users, items], got shape {tuple(s.shape)}")
    acc = RankingAccumulator(s.shape[1], ks, candidates)
    rel = _as_tensor(relevant, torch.bool)
    exc = None if excluded is None else _as_tensor(excluded, torch.bool)
    for lo in _batches(len(s), batch_size):
        acc.add(s[lo : lo + batch_size], rel[lo : lo + batch_size], None if exc is None else exc[lo : lo + batch_size])
    return acc.result()


def _batches(n: int, batch_size: int) -> Iterable[int]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return range(0, n, batch_size)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if not out or any(k < 1 for k in out):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks!r}")
    return tuple(sorted(set(out)))
