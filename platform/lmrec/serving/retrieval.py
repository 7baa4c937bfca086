"""``/recommend`` over a large catalogue: the text member's score table searched through an item index.

The router answers a known user's ``/recommend`` from the members' score tables (``lmrec.serving.router``): every
item scored, z-scored over the eligible items, the top k picked. At 10^6 items that dense pass is most of a
request. When the two-tower is the service's only member, its score is one inner product per item (``item_vec @
user_vec + item_const``), so above ``exact_below`` artifact items the router holds a ``TableIndex`` over the
two-tower's table: ``lmrec.artifacts.ann.ItemIndex`` (faiss IVF) finds the top k, and the fused score of each
(``fuse_scores`` of one member: its z-score over the eligible items) comes from the table's first two moments, kept
beside the index, less the excluded items' own terms. Below the threshold, and for every ensemble, the router
scores exactly as before: fused z-scores of several members line up only by raw id, and EASE and item-kNN scores
are no inner products.

Measured by ``benchmarks/scale.py --part ann-serve`` (10^6 clustered items, dim 64, k = 100, 150 seen items
excluded, 2-core machine under load): one ``/recommend`` in the router 36 ms scoring every item, 1.3 ms through the
index (29x), recall@100 0.997 against the exact answer, fused scores equal to 2e-6.

Items added at run time (``POST /items``) join the index through ``add`` (their rows projected by the text member
through its text tower). A hot swap builds a new index over the new table in a thread while the old table and index
answer. Each ingress replica builds its own, once per artifact version, and the first ``/recommend`` of a new
replica waits for it as it waits for the tables: at 10^6 items 14 s on 2 idle cores (``--part ann``), but faiss'
k-means wants every core: 24 s at load 2.4, 129 s in the ``ann-serve`` run beside another job on both cores.
"""

from __future__ import annotations

import math

import numpy as np

from lmrec.artifacts.ann import EXACT_BELOW, ItemIndex
from lmrec.artifacts.tables import ScoreTable

# rows scored per dense block of the moment sums: bounds their float64 scratch at 10^6 items
_CHUNK = 65_536
# fuse_scores' own cut-off: a member with no spread gives z = 0 everywhere (lmrec.strategies.fusion.zscore)
_NO_SPREAD = 1e-12


class TableIndex:
    """A ``ScoreTable``'s items (and the run-time items ``add``-ed after them) in an ``ItemIndex``, with the sums
    that give the mean and spread of a user's scores over any eligible set without scoring every item.

    Building takes seconds at 10^6 items (faiss k-means, ``benchmarks/scale.py --part ann``): run it off the event
    loop. ``search`` and ``add`` must not overlap (the router runs both on its event loop, never in a thread).
    """

    def __init__(self, table: ScoreTable, *, exact_below: int = EXACT_BELOW, nprobe: int | None = None) -> None:
        self.table, self.sha256, self.n_artifact = table, table.sha256, len(table.item_ids)
        self.index = ItemIndex.build(table.item_vec, bias=table.item_const, exact_below=exact_below, nprobe=nprobe)
        width = self.index.vectors.shape[1]
        self._sum, self._outer = np.zeros(width), np.zeros((width, width))
        self._add_moments(self.index.vectors)

    @property
    def kind(self) -> str:
        """``ivf`` or ``exact`` (``ItemIndex.kind``)."""
        return self.index.kind

    @property
    def n_items(self) -> int:
        return self.index.n_items

    @property
    def n_added(self) -> int:
        """Run-time items in the index (they follow the artifact's items, in the catalog's order)."""
        return self.index.n_items - self.n_artifact

    def add(self, vectors: np.ndarray, const: np.ndarray) -> None:
        """Append run-time items: rows of the table's arithmetic (``item_vec``, ``item_const``)."""
        ids = self.index.add(vectors, bias=const)
        self._add_moments(self.index.vectors[ids])

    def _add_moments(self, rows: np.ndarray) -> None:
        for lo in range(0, len(rows), _CHUNK):
            block = rows[lo : lo + _CHUNK].astype(np.float64)
            self._sum += block.sum(0)
            self._outer += block.T @ block

    def recommend(self, u: int, k: int, exclude: np.ndarray, allowed: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """User row ``u``'s best ``k`` eligible items: (item ids, the member's scores, fused scores), best first.

        exclude: item ids never to return (seen, ``exclude_item_ids``); allowed: the ids that may be returned
        (candidates, a filter), None for all. Ids outside the index are ignored. The fused score is the member's
        z-score over the eligible items, as ``fuse_scores`` gives a one-member service.
        """
        n = self.n_items
        exclude = np.unique(np.asarray(exclude, dtype=np.int64))
        exclude = exclude[(exclude >= 0) & (exclude < n)]
        if allowed is not None:
            allowed = np.unique(np.asarray(allowed, dtype=np.int64))
            allowed = allowed[(allowed >= 0) & (allowed < n)]
        user = np.asarray(self.table.user_vec[u], dtype=np.float32)
        ids, scores = self.index.search(user[None], k, exclude=[exclude], allowed=allowed)
        found = ids[0] >= 0
        ids, scores = ids[0][found], scores[0][found].astype(np.float64)
        mean, std = self._spread(user, exclude, allowed)
        fused = (scores - mean) / std if std > _NO_SPREAD else np.zeros(len(scores))
        if self.table.user_const is not None:  # MF's mean + user bias: it moves no z-score
            scores = scores + float(self.table.user_const[u])
        return ids, scores, fused

    def _spread(self, user: np.ndarray, exclude: np.ndarray, allowed: np.ndarray | None) -> tuple[float, float]:
        """Mean and standard deviation of the user's scores over the eligible items."""
        w = np.append(user, 1.0).astype(np.float32)  # the bias coordinate
        if allowed is None:  # every item's sums from the moments, less the excluded items' own
            count, total, squares = _sums(self.index.vectors, exclude, w)
            count = self.n_items - count
            w64 = w.astype(np.float64)
            total, squares = self._sum @ w64 - total, w64 @ self._outer @ w64 - squares
        else:  # a filter's items are scored (the filter itself already read every item's text)
            count, total, squares = _sums(self.index.vectors, np.setdiff1d(allowed, exclude, assume_unique=True), w)
        if count <= 0:
            return 0.0, 0.0
        mean = total / count
        return mean, math.sqrt(max(squares / count - mean * mean, 0.0))


def _sums(vectors: np.ndarray, ids: np.ndarray, w: np.ndarray) -> tuple[int, float, float]:
    """(count, sum, sum of squares) of the scores ``vectors[ids] @ w``, in blocks."""
    total = squares = 0.0
    for lo in range(0, len(ids), _CHUNK):
        s = (vectors[ids[lo : lo + _CHUNK]] @ w).astype(np.float64)
        total, squares = total + s.sum(), squares + s @ s
    return len(ids), total, squares
