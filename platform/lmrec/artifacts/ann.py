"""Top-k items by inner product over an item table: exact scoring for small catalogues, faiss IVF above a threshold.

``/recommend`` ranks a user vector against every item vector. Below ``exact_below`` items (50,000 by default) that
dense product plus a partial sort is fast and exact, so no index is built. Above it, a faiss ``IndexIVFFlat`` (the
``ann`` extra) clusters the items into ``nlist`` cells and scores only the ``nprobe`` cells nearest the user. Measured
by ``benchmarks/scale.py --part ann`` on the 2-core reference machine, 10^6 clustered items at dim 64, one query at a
time, k = 100: exact 15.0 ms, IVF 0.57 ms (26x) at recall@100 0.9996, built in 14 s. faiss over hnswlib by
measurement (``--part ann-libraries``, 200,000 items): HNSW graphs, faiss' or hnswlib's, built as fast (9-13 s) but
their recall@100 stalled at 0.52-0.80 even at ef = 512 on inner products or on the transform below, where IVF reached
0.995 at 0.12 ms; and hnswlib has no wheel for Python 3.11 (it compiles from source).

Without faiss the index scores exactly and says so once in the log: slower at catalogue scale, never wrong.

Scores are ``item_vec @ user_vec (+ item_bias)``: a bias becomes one more coordinate (1 on the user side), so the
two-tower score ``item_vec @ user_vec + item_bias`` is one inner product. Returned ids are rows of the item table
(items added with ``add`` continue the numbering); a row with fewer than ``k`` eligible items is padded with id -1
and score -inf.
"""

from __future__ import annotations

import logging
import math
import numpy as np

log = logging.getLogger(__name__)

EXACT_BELOW = 50_000
# Rows of user vectors scored per dense product in the exact path: bounds the [rows, n_items] float32 scratch to
# ~256 MB at 10^6 items.
_SCRATCH_ELEMENTS = 64 * 2**20
# An allowed-item filter this selective or smaller is scored exactly over the allowed rows: over-fetching
# k / fraction candidates from the index would cost more than scoring them.
_EXACT_ALLOWED_FRACTION = 0.05
_OVERFETCH_MARGIN = 2.0


def _faiss():
    """The faiss module, or None (with one log line) when the ``ann`` extra is not installed."""
    try:
        import faiss
    except ImportError:
        if not getattr(_faiss, "warned", False):
            log.warning("faiss is not installed (pip install 'lmrec[ann]'): item retrieval scores every item exactly")
            _faiss.warned = True
        return None
    return faiss


def default_nlist(n_items: int) -> int:
    """IVF cells: the power of two nearest 4·sqrt(n) (4,096 at 10^6 items), at least 16, so a cell holds ~sqrt(n)/4
    items and both the cell ranking and the in-cell scan stay small."""
    return int(max(16, 2 ** round(math.log2(4 * math.sqrt(max(n_items, 1))))))


def default_nprobe(nlist: int) -> int:
    """Cells scored per query: 1/32 of them (128 of 4,096). On clustered tables recall@100 is 0.997 already at 32 of
    4,096 and 0.9996 at 128 (benchmarks/scale.py); the margin is for flatter tables (uniform random vectors, with no
    neighbourhoods at all, get 0.36 at 128 and 0.70 at 512)."""
    return max(1, nlist // 32)


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the columns of the ``k`` highest finite scores, best first (ties by column), and those scores.

    Rows with fewer than ``k`` finite scores are padded with -1 / -inf.
    """
    rows, n = scores.shape
    ids = np.full((rows, k), -1, dtype=np.int64)
    out = np.full((rows, k), -np.inf, dtype=np.float32)
    if n == 0 or k == 0:
        return ids, out
    kk = min(k, n)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (rows, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    top_scores = np.take_along_axis(part_scores, order, axis=1)
    finite = np.isfinite(top_scores)
    ids[:, :kk] = np.where(finite, top, -1)
    out[:, :kk] = np.where(finite, top_scores, -np.inf)
    return ids, out


class ItemIndex:
    """Inner-product top-k over an item table; build with ``ItemIndex.build``.

    ``vectors`` is the [n_items, dim (+1 with a bias)] float32 table every exact score is computed from (the index
    keeps it: exact fallbacks and ``rebuild`` need it); ``ann`` the faiss index, or None when scoring exactly.
    Not safe for an ``add`` during a ``search`` in another thread: serialise them, or add to a ``rebuild`` and swap.
    """

    def __init__(self, table: np.ndarray, *, exact_below: int, has_bias: bool, nlist: int | None,
                 nprobe: int | None, seed: int) -> None:
        self._table, self._size = table, len(table)  # rows past _size: room for added items
        self.exact_below, self.has_bias, self.nlist, self.nprobe, self.seed = exact_below, has_bias, nlist, nprobe, seed
        self.ann = None
        self.trained_on = 0  # items the IVF cells were trained on; added items go to the existing cells
        self.max_norm = 0.0  # the largest item norm when the cells were trained (see ``_euclidean``)
        # added items longer than max_norm: the transform cannot place them, so every search scores them exactly
        self.overflow = np.zeros(0, dtype=np.int64)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        bias: np.ndarray | None = None,
        exact_below: int = EXACT_BELOW,
        nlist: int | None = None,
        nprobe: int | None = None,
        seed: int = 0,
    ) -> "ItemIndex":
        """An index over ``vectors`` [n_items, dim] (and ``bias`` [n_items], added to every item's score).

        exact_below: catalogues smaller than this are scored exactly (0 forces the approximate index).
        nlist, nprobe: IVF cells and cells scored per query (defaults: ``default_nlist``, ``default_nprobe``).
        seed: the k-means seed, so two builds over the same table are the same index.
        """
        table = np.ascontiguousarray(_with_bias(np.asarray(vectors, dtype=np.float32), bias))
        index = cls(table, exact_below=exact_below, has_bias=bias is not None, nlist=nlist, nprobe=nprobe, seed=seed)
        index._build_ann()
        return index

    @property
    def vectors(self) -> np.ndarray:
        return self._table[: self._size]

    @property
    def n_items(self) -> int:
        return self._size

    @property
    def dim(self) -> int:
        """The user vectors' width (without the bias coordinate)."""
        return self.vectors.shape[1] - self.has_bias

    @property
    def kind(self) -> str:
        """``ivf`` when an approximate index answers, ``exact`` otherwise."""
        return "ivf" if self.ann is not None else "exact"

    def _build_ann(self) -> None:
        self.ann, self.overflow = None, np.zeros(0, dtype=np.int64)
        if self.n_items == 0 or self.n_items < self.exact_below:
            return
        faiss = _faiss()
        if faiss is None:
            return
        # faiss' k-means wants ≥ 39 items per cell
        nlist = max(1, min(self.nlist or default_nlist(self.n_items), self.n_items // 39))
        self.max_norm = float(np.linalg.norm(self.vectors, axis=1).max())
        width = self.vectors.shape[1] + 1
        ann = faiss.IndexIVFFlat(faiss.IndexFlatL2(width), width, nlist, faiss.METRIC_L2)
        ann.cp.seed = self.seed
        # k-means on 64 items per cell (faiss' default 256 takes minutes at 10^6 items on 2 cores; the cells rank
        # as well)
        ann.cp.max_points_per_centroid = 64
        table = self._euclidean(self.vectors)
        ann.train(table)
        ann.add(table)
        ann.nprobe = self.nprobe or default_nprobe(nlist)
        self.ann, self.trained_on = ann, self.n_items

    def _euclidean(self, vectors: np.ndarray) -> np.ndarray:
        """Items with one more coordinate, sqrt(max_norm² - |v|²), so that every item has norm ``max_norm`` and the
        nearest items to a user (padded with 0) in L2 are those of highest inner product (Bachrach et al. 2014,
        "Speeding up the Xbox recommender system using a Euclidean transformation for inner-product spaces").
        Measured here: with the transform, IVF cells reach recall@100 ≥ 0.98 at a quarter of the cells that
        clustering by inner product needs. An item added later with a larger norm gets 0 and is scored exactly at
        every search (``overflow``) until ``rebuild``."""
        squared = np.einsum("ij,ij->i", vectors, vectors)
        extra = np.sqrt(np.maximum(self.max_norm**2 - squared, 0.0)).astype(np.float32)
        return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]))

    def rebuild(self) -> "ItemIndex":
        """A fresh index over every item (cells retrained with the added items): after a hot swap or many adds."""
        index = ItemIndex(self.vectors.copy(), exact_below=self.exact_below, has_bias=self.has_bias,
                          nlist=self.nlist, nprobe=self.nprobe, seed=self.seed)
        index._build_ann()
        return index

    def add(self, vectors: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        """Append items (``POST /items``); returns their ids. They are searchable at once: the approximate index puts
        them in its existing cells, and crossing ``exact_below`` builds it."""
        if (bias is not None) != self.has_bias:
            raise ValueError("add() needs a bias exactly when the index was built with one")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"item vectors must be [n, {self.dim}], got shape {vectors.shape}")
        new = np.ascontiguousarray(_with_bias(vectors, bias))
        ids = np.arange(self.n_items, self.n_items + len(new), dtype=np.int64)
        if self._size + len(new) > len(self._table):  # grow by an eighth, as lists do: adds copy rarely
            grown = np.empty((self._size + len(new) + self._size // 8, self._table.shape[1]), dtype=np.float32)
            grown[: self._size] = self.vectors
            self._table = grown
        self._table[self._size : self._size + len(new)] = new
        self._size += len(new)
        if self.ann is not None:
            longer = np.linalg.norm(new, axis=1) > self.max_norm
            self.overflow = np.concatenate([self.overflow, ids[longer]])
            self.ann.add(self._euclidean(new))
        elif self.n_items >= self.exact_below:
            self._build_ann()
        return ids

    def search(
        self,
        user_vectors: np.ndarray,
        k: int,
        exclude: list[np.ndarray] | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best items per user: (ids [B, k] int64, scores [B, k] float32), best first.

        exclude: per user, item ids never to return (seen items, ``exclude_item_ids``). allowed: item ids that may be
        returned (a filter), shared by the batch. The index over-fetches and filters; a row it cannot fill, or a
        filter that keeps few items, is scored exactly over the eligible items.
        """
        users = np.asarray(user_vectors, dtype=np.float32)
        users = users[None, :] if users.ndim == 1 else users
        if users.ndim != 2 or users.shape[1] != self.dim:
            raise ValueError(f"user vectors must be [B, {self.dim}], got shape {np.shape(user_vectors)}")
        if self.has_bias:
            users = np.hstack([users, np.ones((len(users), 1), dtype=np.float32)])
        users = np.ascontiguousarray(users)
        if exclude is not None and len(exclude) != len(users):
            raise ValueError(f"exclude has {len(exclude)} rows for {len(users)} user vectors")
        excluded = [np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude] if exclude is not None else None
        allowed_ids = None
        if allowed is not None:  # sorted, unique and in range; a mask, not np.unique: O(n), ~1 ms at 10^6 items
            allowed = np.asarray(allowed, dtype=np.int64).reshape(-1)
            mask = np.zeros(self.n_items, dtype=bool)
            mask[allowed[(allowed >= 0) & (allowed < self.n_items)]] = True
            allowed_ids = np.flatnonzero(mask)
        if self.ann is None or (
            allowed_ids is not None and len(allowed_ids) <= max(k, _EXACT_ALLOWED_FRACTION * self.n_items)
        ):
            return self._exact(users, k, excluded, allowed_ids)
        return self._approximate(users, k, excluded, allowed_ids)

    def _exact(self, users, k, excluded, allowed_ids) -> tuple[np.ndarray, np.ndarray]:
        table = self.vectors if allowed_ids is None else self.vectors[allowed_ids]
        ids = np.full((len(users), k), -1, dtype=np.int64)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        step = max(1, _SCRATCH_ELEMENTS // max(len(table), 1))
        for lo in range(0, len(users), step):
            block = users[lo : lo + step] @ table.T
            if excluded is not None:
                for r, items in enumerate(excluded[lo : lo + step]):
                    cols = items if allowed_ids is None else _positions(allowed_ids, items)
                    block[r, cols[(cols >= 0) & (cols < len(table))]] = -np.inf
            top, top_scores = top_k_rows(block, k)
            if allowed_ids is not None:
                top = np.where(top >= 0, allowed_ids[np.maximum(top, 0)], -1)
            ids[lo : lo + step], scores[lo : lo + step] = top, top_scores
        return ids, scores

    def _approximate(self, users, k, excluded, allowed_ids) -> tuple[np.ndarray, np.ndarray]:
        n_excluded = max((len(e) for e in excluded), default=0) if excluded is not None else 0
        fetch = k + n_excluded
        mask = None
        if allowed_ids is not None:
            mask = np.zeros(self.n_items, dtype=bool)
            mask[allowed_ids] = True
            fetch = math.ceil(fetch * _OVERFETCH_MARGIN * self.n_items / len(allowed_ids))
        fetch = min(fetch, self.n_items)
        padded = np.ascontiguousarray(np.hstack([users, np.zeros((len(users), 1), dtype=np.float32)]))
        params = None
        if fetch > k + n_excluded:
            # a filter keeps a share of each cell: score proportionally more cells, as deep in the list as unfiltered
            import faiss

            scale = fetch / (k + n_excluded) / _OVERFETCH_MARGIN
            params = faiss.SearchParametersIVF(nprobe=min(self.ann.nlist, math.ceil(self.ann.nprobe * scale)))
        _, cand = self.ann.search(padded, fetch, params=params)
        if len(self.overflow):
            cand = np.hstack([cand, np.broadcast_to(self.overflow, (len(cand), len(self.overflow)))])
        # candidates re-scored exactly: the scores returned are inner products, ranked by them
        cand_scores = np.einsum("bkd,bd->bk", self.vectors[np.maximum(cand, 0)], users)
        cand_scores[cand < 0] = -np.inf
        order = np.lexsort((cand, -cand_scores), axis=1)
        cand, cand_scores = np.take_along_axis(cand, order, axis=1), np.take_along_axis(cand_scores, order, axis=1)
        ids = np.full((len(users), k), -1, dtype=np.int64)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        short = []
        for r in range(len(users)):
            keep = cand[r] >= 0
            if mask is not None:
                keep &= mask[np.maximum(cand[r], 0)]
            if excluded is not None and len(excluded[r]):
                keep &= ~np.isin(cand[r], excluded[r])
            # a row with fewer than k survivors is scored exactly below
            found = min(int(keep.sum()), k)
            ids[r, :found], scores[r, :found] = cand[r][keep][:found], cand_scores[r][keep][:found]
            if found < k:
                short.append(r)
        if short:
            rows = np.asarray(short)
            sub_excluded = [excluded[r] for r in short] if excluded is not None else None
            ids[rows], scores[rows] = self._exact(users[rows], k, sub_excluded, allowed_ids)
        return ids, scores


def _with_bias(vectors: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    if vectors.ndim != 2:
        raise ValueError(f"item vectors must be [n_items, dim], got shape {vectors.shape}")
    if bias is None:
        return vectors
    bias = np.asarray(bias, dtype=np.float32).reshape(-1, 1)
    if len(bias) != len(vectors):
        raise ValueError(f"{len(bias)} biases for {len(vectors)} item vectors")
    return np.hstack([vectors, bias])


def _positions(sorted_ids: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Where each of ``items`` sits in ``sorted_ids`` (-1 where absent)."""
    if len(sorted_ids) == 0:
        return np.full(len(items), -1, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, items)
    pos = np.minimum(pos, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == items, pos, -1)
