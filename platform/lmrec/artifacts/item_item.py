"""Serving artifact of an item-item member (EASE or item-kNN): safetensors + JSON + manifest, never pickle.

Both models score a user as the user's training row times an item-item matrix, ``x_u @ W``: EASE's ``B`` (dense,
zero diagonal), item-kNN's neighbour similarities transposed (``score(u, i) = sum_j x_uj s_ij``, sparse). So one
format holds either, and a user's history (known, or given at cold start) is all a scorer needs.

Layout::

    manifest.json          format, kind (ease | item_knn), name, hyper-parameters, dataset fingerprint, metrics,
                           sha256 of every other file
    item_item.safetensors  W (``weights`` dense, or ``weights_indptr/indices/data`` CSR), ``popularity`` (the
                           score of a user with no history, as the fitted models do), and the training rows as CSR:
                           ``seen_indptr``, ``seen_items``, ``seen_values`` (what the model multiplies: 1.0, or the
                           rating for a kNN fitted on ratings) and ``seen_ratings`` (for exclusion and explanations)
    id_maps.json           raw user/item ids in index order, and the item texts

Hashing and verify-before-load are ``lmrec.artifacts.two_tower``'s, as for the MF artifact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from lmrec.artifacts.manifest import ArtifactError, sha256_file, verify_artifact, write_member_manifest
from lmrec.artifacts.tables import ItemItemTable

ITEM_ITEM_FORMAT = "lmrec.item_item/1"
KINDS = ("ease", "item_knn")
MANIFEST = "manifest.json"


@dataclass
class ItemItemArtifact:
    """A verified item-item artifact: W, the training rows, raw ids, item texts and the manifest."""

    manifest: dict
    kind: str  # "ease" or "item_knn"
    weights: np.ndarray | sp.csr_matrix  # [n_items, n_items]: scores = x_u @ weights
    popularity: np.ndarray  # [n_items]
    seen_indptr: np.ndarray  # [n_users + 1]
    seen_items: np.ndarray  # [nnz]
    seen_values: np.ndarray  # [nnz]
    seen_ratings: np.ndarray  # [nnz]
    user_ids: list
    item_ids: list
    item_texts: list[str]
    sha256: str

    @property
    def binary(self) -> bool:
        """True when the model scores 0/1 rows (EASE; item-kNN with ``binary``), False for rating rows."""
        return bool(self.manifest.get("binary", True))

    def history(self) -> sp.csr_matrix:
        """[n_users, n_items] CSR of the training rows the model scores with."""
        return sp.csr_matrix((self.seen_values, self.seen_items, self.seen_indptr),
                             shape=(len(self.user_ids), len(self.item_ids)))

    def table(self) -> ItemItemTable:
        """What the ingress holds to score a known user (``tables.py``)."""
        return ItemItemTable(self.sha256, list(self.user_ids), list(self.item_ids), self.weights, self.popularity,
                             self.seen_indptr, self.seen_items, self.seen_values, self.seen_ratings,
                             list(self.item_texts))

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        """[len(user_idx), n_items] float32 ``X[u] @ W``; popularity for a user without training rows (or out of
        range), as the fitted model's ``score_items``."""
        u = np.asarray(user_idx, dtype=np.int64).reshape(-1)
        n_users = len(self.user_ids)
        in_range = (u >= 0) & (u < n_users)
        safe = np.where(in_range, u, 0)
        ok = in_range & (np.diff(self.seen_indptr)[safe] > 0)
        out = self.history()[safe] @ self.weights
        out = np.asarray(out.toarray() if sp.issparse(out) else out, dtype=np.float32)
        out[~ok] = self.popularity
        return out

    def history_values(self, ratings: np.ndarray) -> np.ndarray:
        """A new user's row values from their ratings: 1.0 for a binary model, the ratings otherwise."""
        r = np.asarray(ratings, dtype=np.float32)
        return np.ones_like(r) if self.binary else r

    @property
    def recommender(self) -> "ItemItemRecommender":
        """``Recommender`` view (what the ensemble job fits fusion weights with)."""
        return ItemItemRecommender(self)


class ItemItemRecommender:
    """``lmrec.models.base.Recommender`` over an item-item artifact: ranks only (``rates = False``), like EASE.

    ``predict`` is not offered: the artifact keeps no rating model, so the ensemble job leaves it out of the
    rating weights. ``fit`` never retrains, it only checks the index space.
    """

    rates = False

    def __init__(self, art: ItemItemArtifact) -> None:
        self.art = art
        self.name = art.kind

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "ItemItemRecommender":
        if (n_users, n_items) != (len(self.art.user_ids), len(self.art.item_ids)):
            raise ValueError(f"{self.art.kind} artifact has {len(self.art.user_ids)} users x "
                             f"{len(self.art.item_ids)} items, got {n_users} x {n_items}")
        return self

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        return self.art.score_users(user_idx)


def item_item_matrix(model) -> np.ndarray | sp.csr_matrix:
    """The fitted model's W with ``score_items(u) = X[u] @ W``: EASE's B, item-kNN's ``neighbours_.T``."""
    if hasattr(model, "B_"):
        return np.ascontiguousarray(model.B_, dtype=np.float32)
    if hasattr(model, "neighbours_"):
        w = model.neighbours_.T.tocsr().astype(np.float32)
        w.sort_indices()
        return w
    raise TypeError(f"{type(model).__name__} is not a fitted EASE or ItemKNN")


def save_item_item_artifact(directory: str | Path, model, train: pd.DataFrame, *, user_ids, item_ids,
                            item_texts: list[str] | None = None, name: str | None = None, params: dict | None = None,
                            fingerprint: str = "", metrics: dict | None = None) -> Path:
    """Write a fitted ``EASE`` or ``ItemKNN`` (fitted on ``train``) as an artifact folder."""
    from lmrec.models.baselines.interactions import user_item_matrix

    kind = getattr(model, "name", None)
    if kind not in KINDS:
        raise ValueError(f"an item-item artifact holds one of {KINDS}, got {kind!r}")
    n_users, n_items = len(user_ids), len(item_ids)
    x = model.X_.tocsr().copy()  # the rows the model multiplies, in its own index space
    if x.shape != (n_users, n_items):
        raise ValueError(f"model rows {x.shape} != ids {n_users}x{n_items}")
    x.sort_indices()
    ratings = user_item_matrix(train, n_users, n_items, binary=False)
    ratings.sort_indices()
    if not (np.array_equal(ratings.indptr, x.indptr) and np.array_equal(ratings.indices, x.indices)):
        raise ValueError("train is not the table the model was fitted on")
    w = item_item_matrix(model)
    tensors = {"popularity": np.ascontiguousarray(model.popularity_, dtype=np.float32),
               "seen_indptr": x.indptr.astype(np.int64), "seen_items": x.indices.astype(np.int64),
               "seen_values": x.data.astype(np.float32), "seen_ratings": ratings.data.astype(np.float32)}
    if sp.issparse(w):
        tensors |= {"weights_indptr": w.indptr.astype(np.int64), "weights_indices": w.indices.astype(np.int64),
                    "weights_data": w.data.astype(np.float32)}
    else:
        tensors["weights"] = w
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / "item_item.safetensors"))
    write_member_manifest(root, ITEM_ITEM_FORMAT, user_ids=user_ids, item_ids=item_ids, item_texts=item_texts,
                          n_items=n_items, metrics=metrics, params=params, fingerprint=fingerprint, fields={
                              "kind": kind, "name": name or kind, "binary": bool(getattr(model, "binary", True))})
    return root


def load_item_item_artifact(directory: str | Path) -> ItemItemArtifact:
    """Verify every sha256 (and that no file was added or removed), then read the arrays."""
    root = Path(directory)
    manifest = verify_artifact(root, ITEM_ITEM_FORMAT)
    if manifest.get("kind") not in KINDS:
        raise ArtifactError(f"{root}: item-item kind {manifest.get('kind')!r}, expected one of {KINDS}")
    t = load_file(str(root / "item_item.safetensors"))
    ids = json.loads((root / "id_maps.json").read_text())
    n_items = len(ids["item_ids"])
    if "weights" in t:
        w = t["weights"]
    else:
        w = sp.csr_matrix((t["weights_data"], t["weights_indices"], t["weights_indptr"]), shape=(n_items, n_items))
    if w.shape != (n_items, n_items) or len(t["seen_indptr"]) != len(ids["user_ids"]) + 1:
        raise ArtifactError(f"{root}: arrays do not match the id maps ({len(ids['user_ids'])} x {n_items})")
    return ItemItemArtifact(
        manifest=manifest, kind=manifest["kind"], weights=w, popularity=t["popularity"],
        seen_indptr=t["seen_indptr"], seen_items=t["seen_items"], seen_values=t["seen_values"],
        seen_ratings=t["seen_ratings"], user_ids=ids["user_ids"], item_ids=ids["item_ids"],
        item_texts=ids.get("item_texts", []), sha256=sha256_file(root / MANIFEST))


def train_item_item_artifact(data, directory: str | Path, kind: str = "ease", *, name: str | None = None,
                             **params) -> Path:
    """Fit lmrec's ``EASE`` or ``ItemKNN`` (``params``: its constructor's) on ``data.train`` (a ``PreparedData``)
    and export it; the two-tower run's own ``PreparedData`` gives every member the same split and id maps."""
    from lmrec.models.baselines import make_baseline

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    model = make_baseline(kind, **params).fit(data.train, data.n_users, data.n_items)
    return save_item_item_artifact(directory, model, data.train, user_ids=data.user_ids, item_ids=data.item_ids,
                                   item_texts=data.item_texts, name=name, params=params,
                                   fingerprint=data.fingerprint)
