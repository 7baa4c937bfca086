"""Serving artifact of a biased matrix factorisation member: safetensors + JSON + manifest, never pickle.

Layout::

    manifest.json        format, name, hyper-parameters, dataset fingerprint, metrics, sha256 of every other file
    mf.safetensors       global_mean, user_bias, item_bias, user_factors, item_factors, and the training
                         interactions as CSR (seen_indptr, seen_items, seen_ratings): the ensemble needs them to
                         exclude seen items and to explain ("because you liked ...")
    id_maps.json         raw user/item ids in index order, and the item texts (for readable explanations)

The format mirrors ``lmrec.artifacts.two_tower`` (same hashing, same verify-before-load rule) so one ensemble
manifest can point at both kinds of member.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from lmrec.artifacts.manifest import sha256_file, verify_artifact, write_member_manifest

MF_FORMAT = "lmrec.mf/1"
MANIFEST = "manifest.json"


@dataclass
class MFArtifact:
    """A verified MF artifact: arrays (numpy), raw ids, item texts and the manifest."""

    manifest: dict
    global_mean: float
    user_bias: np.ndarray  # [n_users]
    item_bias: np.ndarray  # [n_items]
    user_factors: np.ndarray  # [n_users, k]
    item_factors: np.ndarray  # [n_items, k]
    seen_indptr: np.ndarray  # [n_users + 1]
    seen_items: np.ndarray  # [nnz]
    seen_ratings: np.ndarray  # [nnz]
    user_ids: list
    item_ids: list
    item_texts: list[str]
    sha256: str

    def seen(self, user_idx: int) -> tuple[np.ndarray, np.ndarray]:
        """Training items and ratings of one user."""
        lo, hi = int(self.seen_indptr[user_idx]), int(self.seen_indptr[user_idx + 1])
        return self.seen_items[lo:hi], self.seen_ratings[lo:hi]

    @property
    def recommender(self) -> "MFRecommender":
        """``Recommender`` view of the arrays (what the ensemble job fits fusion weights with)."""
        return MFRecommender(self)


class MFRecommender:
    """``lmrec.models.base.Recommender`` over an MF artifact: the numbers ``BiasedMF`` gave before export.

    Scoring is ``BiasedMF``'s own (``predict`` clamps to the training ratings' range, ``score_items`` does not),
    run on the artifact's arrays; ``fit`` never retrains, it only checks the index space.
    """

    name = "mf"
    rates = True

    def __init__(self, art: MFArtifact) -> None:
        from lmrec.models.baselines.mf import BiasedMF

        self.art = art
        mf = BiasedMF(dim=art.user_factors.shape[1])
        r = art.seen_ratings
        mf.mean_ = float(art.global_mean)
        mf.rating_range_ = (float(r.min()), float(r.max())) if len(r) else (-np.inf, np.inf)
        mf.user_seen_ = np.diff(art.seen_indptr) > 0
        mf.item_seen_ = np.bincount(art.seen_items, minlength=len(art.item_ids)) > 0
        mf.user_factors_, mf.item_factors_ = art.user_factors, art.item_factors
        mf.user_bias_, mf.item_bias_ = art.user_bias, art.item_bias
        self._mf = mf

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "MFRecommender":
        """The artifact is trained already: only checks that ``train`` lives in its index space."""
        if (n_users, n_items) != (len(self.art.user_ids), len(self.art.item_ids)):
            raise ValueError(f"MF artifact has {len(self.art.user_ids)} users x {len(self.art.item_ids)} items, "
                             f"got {n_users} x {n_items}")
        return self

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        return self._mf.predict(user_idx, item_idx)

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        return self._mf.score_items(user_idx)


def save_mf_artifact(
    directory: str | Path,
    *,
    global_mean: float,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    train: pd.DataFrame,
    user_ids: list | np.ndarray,
    item_ids: list | np.ndarray,
    item_texts: list[str] | None = None,
    name: str = "biased-mf",
    params: dict | None = None,
    fingerprint: str = "",
    metrics: dict | None = None,
) -> Path:
    """Write an MF artifact folder from plain arrays; ``train`` (user_idx, item_idx, rating) becomes the seen CSR."""
    n_users, n_items = len(user_ids), len(item_ids)
    if user_factors.shape[0] != n_users or item_factors.shape[0] != n_items:
        raise ValueError(f"factor rows {user_factors.shape[0]}x{item_factors.shape[0]} != ids {n_users}x{n_items}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    order = np.lexsort((train["item_idx"].to_numpy(), train["user_idx"].to_numpy()))
    users = train["user_idx"].to_numpy()[order]
    tensors = {
        "global_mean": np.asarray([global_mean], dtype=np.float32),
        "user_bias": np.ascontiguousarray(user_bias, dtype=np.float32),
        "item_bias": np.ascontiguousarray(item_bias, dtype=np.float32),
        "user_factors": np.ascontiguousarray(user_factors, dtype=np.float32),
        "item_factors": np.ascontiguousarray(item_factors, dtype=np.float32),
        "seen_indptr": np.concatenate([[0], np.cumsum(np.bincount(users, minlength=n_users))]).astype(np.int64),
        "seen_items": train["item_idx"].to_numpy()[order].astype(np.int64),
        "seen_ratings": train["rating"].to_numpy()[order].astype(np.float32),
    }
    save_file(tensors, str(root / "mf.safetensors"))
    write_member_manifest(root, MF_FORMAT, user_ids=user_ids, item_ids=item_ids, item_texts=item_texts,
                          n_items=n_items, metrics=metrics, params=params, fingerprint=fingerprint,
                          fields={"name": name})
    return root


def load_mf_artifact(directory: str | Path) -> MFArtifact:
    """Verify every sha256 (and that no file was added or removed), then read the arrays."""
    root = Path(directory)
    manifest = verify_artifact(root, MF_FORMAT)
    t = load_file(str(root / "mf.safetensors"))
    ids = json.loads((root / "id_maps.json").read_text())
    return MFArtifact(
        manifest=manifest, global_mean=float(t["global_mean"][0]), user_bias=t["user_bias"],
        item_bias=t["item_bias"], user_factors=t["user_factors"], item_factors=t["item_factors"],
        seen_indptr=t["seen_indptr"], seen_items=t["seen_items"], seen_ratings=t["seen_ratings"],
        user_ids=ids["user_ids"], item_ids=ids["item_ids"], item_texts=ids.get("item_texts", []),
        sha256=sha256_file(root / MANIFEST),
    )


def train_mf_artifact(
    data,
    directory: str | Path,
    *,
    factors: int = 64,
    epochs: int = 80,
    lr: float = 0.05,
    reg: float = 0.12,
    seed: int = 0,
    name: str = "biased-mf",
) -> Path:
    """Fit lmrec's ``BiasedMF`` on ``data.train`` (a ``PreparedData``) and export it as an MF artifact.

    Using the two-tower run's own ``PreparedData`` gives both members the same split and id maps.
    """
    from lmrec.models.baselines import BiasedMF

    train = data.train
    mf = BiasedMF(dim=factors, l2=reg, lr=lr, epochs=epochs, seed=seed).fit(train, data.n_users, data.n_items)
    return save_mf_artifact(
        directory, global_mean=mf.mean_, user_bias=mf.user_bias_.astype(np.float32),
        item_bias=mf.item_bias_.astype(np.float32), user_factors=mf.user_factors_.astype(np.float32),
        item_factors=mf.item_factors_.astype(np.float32), train=train, user_ids=data.user_ids,
        item_ids=data.item_ids, item_texts=data.item_texts,
        name=name, params={"factors": factors, "epochs": epochs, "lr": lr, "l2": reg, "seed": seed},
        fingerprint=data.fingerprint,
    )
