"""Top k items for a batch of known users, Ray-free: what each Ray Data actor of ``lmrec recommend-batch`` runs.

Every artifact kind is scored by the member class Serve loads it with (``lmrec.serving.members``), so a user's rows
are what ``/recommend`` answers for that user (``exclude_seen`` as given, no filter, no items added at run time):

* two-tower and MF: the member's score table holds user and item vectors, so the batch goes through
  ``lmrec.artifacts.ann.ItemIndex`` (one dense product per batch below 50,000 items, faiss IVF above), the
  per-user constant of MF added back to the scores it returns;
* EASE and item-kNN: the history rows times W for the whole batch (``ItemItemArtifact.score_users``, the offline
  recommender's arithmetic), seen items masked, exact top k;
* an ensemble artifact: per user, the members' table scores aligned by raw item id and fused over the user's
  unseen items with ``lmrec.strategies.fusion.fuse_scores``, as the router fuses a request (the score written is
  the fused one).

Rows come back as columns ``user_id``, ``rank`` (1 = best), ``item_id``, ``score`` with the artifact's raw ids; a
user with fewer than k eligible items gets fewer rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.artifacts.ann import ItemIndex, top_k_rows
from lmrec.artifacts.ensemble import ENSEMBLE_FORMAT
from lmrec.artifacts.item_item import ITEM_ITEM_FORMAT
from lmrec.artifacts.manifest import ArtifactError, artifact_format
from lmrec.artifacts.mf import MF_FORMAT
from lmrec.artifacts.tables import IdMap, ScoreTable
from lmrec.artifacts.two_tower import FORMAT as TWO_TOWER_FORMAT
from lmrec.storage import local_artifact, normalize

# artifact format -> the member Serve scores it with (an ensemble resolves to several of them)
MEMBER_OF_FORMAT = {TWO_TOWER_FORMAT: "two_tower", MF_FORMAT: "mf", ITEM_ITEM_FORMAT: "ease"}


def _member(kind: str, location: str | Path):
    from lmrec.serving.members import MEMBER_CLASSES

    return MEMBER_CLASSES[kind](location)


class BatchRecommender:
    """The artifact at ``artifact`` (folder or URI, any kind Serve loads), loaded once; ``recommend`` scores a
    batch of user indices (rows of ``user_ids``). ``ArtifactError`` for a folder that is no artifact or a kind
    that does not rank known users (a meta-learning cold-start model)."""

    def __init__(self, artifact: str | Path, *, k: int = 10, exclude_seen: bool = True) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.exclude_seen = int(k), bool(exclude_seen)
        root = local_artifact(artifact)
        fmt = artifact_format(root)
        if fmt is None:
            raise ArtifactError(f"{normalize(artifact)}: no readable manifest.json (not an artifact folder)")
        if fmt == ENSEMBLE_FORMAT:
            from lmrec.serving.app import ServeAppArgs, resolve_ensemble

            try:
                args = resolve_ensemble(ServeAppArgs(ensemble_artifact=str(artifact)))
            except ValueError as e:  # members or weights Serve could not use either
                raise ArtifactError(str(e)) from None
            self.weights = args.served_weights()
            self.members = {m: _member(m, args.artifact(m)) for m in self.weights}
        elif fmt in MEMBER_OF_FORMAT:
            self.weights = None
            self.members = {MEMBER_OF_FORMAT[fmt]: _member(MEMBER_OF_FORMAT[fmt], root)}
        else:
            raise ArtifactError(f"{normalize(artifact)}: a {fmt!r} artifact does not rank known users; "
                                f"recommend-batch takes {', '.join([*MEMBER_OF_FORMAT, ENSEMBLE_FORMAT])}")
        self.primary = next(iter(self.members.values()))  # the two-tower of an ensemble: its users and items
        self.table = self.primary.table
        self.user_ids = np.asarray(self.table.user_ids)
        self.item_ids = np.asarray(self.table.item_ids)
        self.index = None
        if self.weights is None and isinstance(self.table, ScoreTable):
            self.index = ItemIndex.build(self.table.item_vec, bias=self.table.item_const)
        if self.weights is not None:
            self._aligned = {name: pd.Index([str(v) for v in m.table.item_ids]).get_indexer(
                [str(v) for v in self.table.item_ids]) for name, m in self.members.items()}

    @property
    def kind(self) -> str:
        return "ensemble" if self.weights is not None else self.primary.info["kind"]

    def user_index(self, raw_ids: list) -> np.ndarray:
        """Rows of ``raw_ids`` in ``user_ids``; ``ValueError`` naming the ids the artifact does not know."""
        users = IdMap(list(self.user_ids))
        found = [users.index(raw) for raw in raw_ids]
        unknown = [raw for raw, i in zip(raw_ids, found) if i is None]
        if unknown:
            raise ValueError(f"{len(unknown)} user id(s) not in the artifact: {unknown[:10]}")
        return np.asarray(found, dtype=np.int64)

    def recommend(self, user_idx: np.ndarray) -> dict[str, np.ndarray]:
        """Columns ``user_id``, ``rank``, ``item_id``, ``score`` of the top k of every user in ``user_idx``."""
        users = np.asarray(user_idx, dtype=np.int64).reshape(-1)
        if self.weights is not None:
            ids, scores = self._fused(users)
        elif self.index is not None:
            ids, scores = self.index.search(self.table.user_vec[users], self.k, exclude=self._seen(users))
            if self.table.user_const is not None:  # MF's mean + user bias: no effect on the order
                scores = (scores + self.table.user_const[users][:, None]).astype(np.float32)
        else:
            block = self.primary.art.score_users(users)
            for row, items in enumerate(self._seen(users) or ()):
                block[row, items] = -np.inf
            ids, scores = top_k_rows(block, self.k)
        keep = ids >= 0
        rows, ranks = np.nonzero(keep)
        return {"user_id": self.user_ids[users[rows]], "rank": (ranks + 1).astype(np.int32),
                "item_id": self.item_ids[ids[keep]], "score": scores[keep].astype(np.float32)}

    def _seen(self, users: np.ndarray) -> list[np.ndarray] | None:
        return [self.table.seen(u)[0] for u in users] if self.exclude_seen else None

    def _fused(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The router's fusion of one request, per user: each member's scores of the user moved into the primary
        member's items (NaN where it has no such item), every member's training items excluded."""
        from lmrec.strategies.fusion import fuse_scores

        n = len(self.item_ids)
        fused = np.empty((len(users), n))
        for row, u in enumerate(users):
            raw = self.user_ids[u].item() if hasattr(self.user_ids[u], "item") else self.user_ids[u]
            scores, mask = {}, np.ones(n, dtype=bool)
            for name, member in self.members.items():
                answer = member.table.user_scores(raw)
                if answer["scores"] is None:  # a member that does not know the user is left out
                    scores[name] = None
                    continue
                to_member = self._aligned[name]
                scores[name] = np.where(to_member >= 0, answer["scores"][np.maximum(to_member, 0)], np.nan)
                if self.exclude_seen:
                    mask &= ~np.isin(to_member, answer["seen"]) | (to_member < 0)
            fused[row] = fuse_scores(scores, self.weights, mask)
        return top_k_rows(fused, self.k)
