"""Ensemble members as plain Python objects (no Ray): the Serve deployments in ``scorers.py`` wrap them, and the
bare single-process app of the benchmark calls them directly, so both run the identical computation.

Every member answers in its *own* index space and tags each answer with its artifact's sha256; the ingress
translates raw ids and aligns members by raw item id. Items added at run time ("new items") travel with each call
as encoder outputs (``extra_hidden`` [n_new, hidden]) and are appended after the artifact's items: the member
projects them through the text half of its item tower (the ID embedding is gated off, as for any unseen item).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmrec.artifacts.tables import IdMap, ScoreTable, csr_from_padded
from lmrec.artifacts.manifest import sha256_file
from lmrec.serving.protocol import Capabilities, VersionSkew
from lmrec.storage import local_artifact


def _info(kind: str, root: Path, manifest: dict, name: str, sha: str) -> dict:
    return {
        "kind": kind,
        "name": name,
        "version": root.name,
        "sha256": sha,
        "created_unix": manifest.get("created_unix"),
        "dataset_fingerprint": manifest.get("dataset_fingerprint"),
    }


class TwoTowerMember:
    """The encoder two-tower, served from its precomputed tables (no encoder pass per request)."""

    capabilities = Capabilities(texts=True, rates=True)

    def __init__(self, artifact_dir: str | Path) -> None:
        from lmrec.artifacts.two_tower import load_artifact

        root = local_artifact(artifact_dir)  # a URI is fetched into the local cache first
        art = load_artifact(root)
        self.model = art.model
        t = art.embeddings
        self.item_vec = t["item_vectors"].numpy()
        self.item_bias = t["item_bias"].numpy()
        self.item_interest = t["item_interest"].numpy()
        self.item_interest_bias = t["item_interest_bias"].numpy()
        self.user_vec = t["user_vectors"].numpy()
        self.user_interest = t["user_interest"].numpy()
        self.user_bias = self.model.user_bias.weight[:, 0].detach().numpy()
        self.global_mean = float(self.model.global_mean)
        self.history = self.model.history.numpy()
        # ratings of artifact items come from the offline recommender itself (evaluation's numbers, clamped to the
        # training ratings' range); the same clamp bounds the text-only ratings of run-time items
        self.recommender = art.recommender
        self.rating_range = tuple(self.model.rating_range.cpu().tolist())
        self.interest_head = self.model.ranking_head == "interest"
        self.users = IdMap(art.user_ids)
        self.item_ids = list(art.item_ids)
        self.sha256 = sha256_file(root / "manifest.json")
        self.info = _info("two_tower", root, art.manifest, art.manifest["config"].get("name", "two-tower"),
                          self.sha256) | {"n_users": len(self.users), "n_items": len(self.item_ids),
                                          "hidden": self.model.encoder.hidden_size}
        # every training row when the artifact has them (older ones: the model's last max_history items per user)
        indptr, seen = ((art.seen_indptr, art.seen_items) if art.seen_indptr is not None
                        else csr_from_padded(self.history))
        vec = (self.user_interest, self.item_interest) if self.interest_head else (self.user_vec, self.item_vec)
        const = self.item_interest_bias if self.interest_head else self.item_bias
        self.table = ScoreTable(self.sha256, list(art.user_ids), self.item_ids, vec[0], vec[1], const, None,
                                indptr, seen, item_texts=art.item_texts)

    # ---- new items (text tower only) ----
    @torch.no_grad()
    def project(self, hidden: np.ndarray) -> dict[str, np.ndarray]:
        """Text-only item vectors, biases, interest vectors and interest biases of encoder outputs [n, hidden]."""
        h = torch.as_tensor(np.asarray(hidden, dtype=np.float32)).reshape(-1, self.info["hidden"])
        vec = self.model.item_tower.text_proj(h)
        return {"vec": vec.numpy(), "bias": self.model.text_bias(h)[:, 0].numpy(),
                "interest": self.model.interest(vec).numpy(),
                "interest_bias": self.model.interest_text_biases(h).numpy()}

    def _tables(self, extra_hidden: np.ndarray | None, encoder_sha: str | None) -> tuple[np.ndarray, ...]:
        """(item vectors, biases, interest vectors, interest biases) of artifact items followed by the new items."""
        if extra_hidden is None or len(extra_hidden) == 0:
            return self.item_vec, self.item_bias, self.item_interest, self.item_interest_bias
        self.check_encoder(encoder_sha)
        p = self.project(extra_hidden)
        return (np.concatenate([self.item_vec, p["vec"]]), np.concatenate([self.item_bias, p["bias"]]),
                np.concatenate([self.item_interest, p["interest"]]),
                np.concatenate([self.item_interest_bias, p["interest_bias"]]))

    def ranking_rows(self, extra_hidden=None, encoder_sha=None) -> dict:
        """The run-time items' rows of the score table's arithmetic (``table.item_vec``, ``table.item_const``): what
        the router's item index adds for them (``lmrec.serving.retrieval``)."""
        if extra_hidden is None or len(extra_hidden) == 0:
            vec = np.zeros((0, self.table.item_vec.shape[1]), dtype=np.float32)
            return {"sha256": self.sha256, "vec": vec, "const": np.zeros(0, dtype=np.float32)}
        self.check_encoder(encoder_sha)
        p = self.project(extra_hidden)
        vec, const = (p["interest"], p["interest_bias"]) if self.interest_head else (p["vec"], p["bias"])
        return {"sha256": self.sha256, "vec": vec, "const": const}

    def check_encoder(self, encoder_sha: str | None) -> None:
        if encoder_sha != self.sha256:
            raise VersionSkew(f"encoder outputs from artifact {str(encoder_sha)[:12]}, member is {self.sha256[:12]}")

    def _rank(self, vec, interest, tables) -> np.ndarray:
        item_vec, item_bias, item_interest, interest_bias = tables
        return item_interest @ interest + interest_bias if self.interest_head else item_vec @ vec + item_bias

    # ---- requests ----
    def user_scores(self, user_id, extra_hidden=None, encoder_sha=None) -> dict | None:
        """Ranking scores of every item (artifact + new); ``scores`` is None for an unknown user."""
        out = self.table.user_scores(user_id)
        if out["scores"] is None or extra_hidden is None or len(extra_hidden) == 0:
            return out
        self.check_encoder(encoder_sha)
        p = self.project(extra_hidden)
        u = self.users.index(user_id)
        extra = self._rank(self.user_vec[u], self.user_interest[u],
                           (p["vec"], p["bias"], p["interest"], p["interest_bias"]))
        return out | {"scores": np.concatenate([out["scores"], extra])}

    def predict(self, user_id, item_idx: np.ndarray, extra_hidden=None, encoder_sha=None) -> dict:
        """Ratings (rating head, clamped to the training ratings' range) for items in the combined index space;
        ``ratings`` is None for an unknown user."""
        u = self.users.index(user_id)
        if u is None:
            return {"sha256": self.sha256, "ratings": None}
        i = np.asarray(item_idx, dtype=np.int64)
        known = i < len(self.item_ids)
        out = np.empty(len(i), dtype=np.float32)
        if known.any():
            out[known] = self.recommender.predict(np.full(int(known.sum()), u), i[known])
        if not known.all():
            item_vec, item_bias, _, _ = self._tables(extra_hidden, encoder_sha)
            new = i[~known]
            raw = self.global_mean + self.user_bias[u] + item_bias[new] + item_vec[new] @ self.user_vec[u]
            out[~known] = np.clip(raw, *self.rating_range)
        return {"sha256": self.sha256, "ratings": out}

    @torch.no_grad()
    def cold_user(self, item_idx: np.ndarray, profile_hidden: np.ndarray | None, extra_hidden=None,
                  encoder_sha=None) -> dict:
        """Scores for an unseen user: the user tower pools the rated items' vectors, plus the profile text.

        A model trained with a user-text tower adds its projection of the profile text; otherwise the profile
        text enters the pool as one more (text-only) item, so a user with no ratings still gets a vector.
        """
        tables = self._tables(extra_hidden, encoder_sha)
        item_vec = torch.as_tensor(tables[0])
        pool = [item_vec[torch.as_tensor(np.asarray(item_idx, dtype=np.int64))]]
        extra = torch.zeros(item_vec.shape[1])
        tower = self.model.user_tower
        if profile_hidden is not None:
            self.check_encoder(encoder_sha)
            h = torch.as_tensor(np.asarray(profile_hidden, dtype=np.float32)).reshape(1, -1)
            if tower.text_proj is not None:
                extra = tower.text_proj(h)[0]
            else:
                pool.append(self.model.item_tower.text_proj(h))
        hist = torch.cat(pool)
        if len(hist) == 0:
            raise ValueError("a cold-start user needs rated items or a profile text")
        if tower.kind == "attention":  # the learned query alone: there is no user-ID embedding to add
            logits = tower.key(hist) @ tower.query / hist.shape[-1] ** 0.5
            weights = torch.softmax(logits, 0)
        else:
            weights = torch.full((len(hist),), 1.0 / len(hist))
        vec = weights @ hist + extra
        interest = self.model.interest(vec[None])[0]
        return {"sha256": self.sha256, "scores": self._rank(vec.numpy(), interest.numpy(), tables)}

    def similar(self, k: int, item_idx: int | None = None, hidden: np.ndarray | None = None, extra_hidden=None,
                encoder_sha=None) -> dict:
        """Top-k items by interest-space cosine to an item (itself excluded) or to an encoded text."""
        tables = self._tables(extra_hidden, encoder_sha)
        if item_idx is not None:
            query = tables[2][item_idx]
        else:
            self.check_encoder(encoder_sha)
            query = self.project(hidden)["interest"][0]
        sims = tables[2] @ query
        if item_idx is not None:
            sims[item_idx] = -np.inf
        k = min(k, int(np.isfinite(sims).sum()))
        top = np.argpartition(-sims, k - 1)[:k] if k else np.zeros(0, np.int64)
        top = top[np.argsort(-sims[top], kind="stable")]
        return {"sha256": self.sha256, "item_idx": top, "similarity": sims[top]}

    def explain(self, item_idx: np.ndarray, history_idx: np.ndarray, n: int, extra_hidden=None,
                encoder_sha=None) -> dict:
        """For each recommended item, the ``n`` history items closest in the interest space."""
        interest = self._tables(extra_hidden, encoder_sha)[2]
        hist = np.asarray(history_idx, dtype=np.int64)
        sims = interest[np.asarray(item_idx, dtype=np.int64)] @ interest[hist].T  # [k, H]
        order = np.argsort(-sims, axis=1, kind="stable")[:, :n]
        return {"history_idx": hist[order], "similarity": np.take_along_axis(sims, order, 1)}


class MFMember:
    """Biased matrix factorisation over an MF artifact (``lmrec.artifacts.mf``)."""

    capabilities = Capabilities(rates=True)

    def __init__(self, artifact_dir: str | Path, fold_in_l2: float = 0.1) -> None:
        from lmrec.artifacts.mf import load_mf_artifact

        root = local_artifact(artifact_dir)
        self.art = load_mf_artifact(root)
        self.users = IdMap(self.art.user_ids)
        self.item_ids = list(self.art.item_ids)
        self.sha256 = self.art.sha256
        self.fold_in_l2 = fold_in_l2
        self.info = _info("mf", root, self.art.manifest, self.art.manifest.get("name", "mf"), self.sha256) | {
            "n_users": len(self.users), "n_items": len(self.item_ids)}
        a = self.art
        self.recommender = a.recommender  # predict: the offline recommender's own (clamped) ratings
        # a user without training rows scores as the offline recommender scores them: no user factors or bias
        trained = (np.diff(a.seen_indptr) > 0)
        user_factors = a.user_factors if trained.all() else a.user_factors * trained[:, None]
        user_bias = a.user_bias.astype(np.float64) * trained
        self.table = ScoreTable(self.sha256, list(a.user_ids), self.item_ids, user_factors, a.item_factors,
                                a.item_bias, a.global_mean + user_bias, a.seen_indptr,
                                a.seen_items, a.seen_ratings, list(a.item_texts))

    def _scores(self, bias: float, factors: np.ndarray) -> np.ndarray:
        """Scores of a user vector that is not in the table (a folded-in user), in the table's arithmetic."""
        a = self.art
        return a.item_factors @ factors + a.item_bias + (a.global_mean + np.float64(bias))

    def user_scores(self, user_id) -> dict:
        """Scores of every artifact item, the user's training items and ratings; ``scores`` None if unknown."""
        return self.table.user_scores(user_id)

    def predict(self, user_id, item_idx: np.ndarray) -> dict:
        """Ratings of artifact items, clamped to the training ratings' range; ``ratings`` None if unknown."""
        u = self.users.index(user_id)
        if u is None:
            return {"sha256": self.sha256, "ratings": None}
        i = np.asarray(item_idx, dtype=np.int64)
        return {"sha256": self.sha256, "ratings": self.recommender.predict(np.full(len(i), u), i)}

    def fold_in(self, item_idx: np.ndarray, ratings: np.ndarray) -> dict:
        """A new user's bias and factors by ridge regression on the item side held fixed (no retraining)."""
        a = self.art
        i = np.asarray(item_idx, dtype=np.int64)
        resid = np.asarray(ratings, dtype=np.float64) - a.global_mean - a.item_bias[i]
        if len(i) == 0:
            return {"sha256": self.sha256, "scores": None}
        bias = resid.sum() / (len(i) + 1.0)  # shrunk towards 0 like a regularised bias
        q = a.item_factors[i].astype(np.float64)
        k = q.shape[1]
        p = np.linalg.solve(q.T @ q + self.fold_in_l2 * len(i) * np.eye(k) + 1e-6 * np.eye(k), q.T @ (resid - bias))
        return {"sha256": self.sha256, "scores": self._scores(bias, p.astype(np.float32))}


class ItemItemMember:
    """EASE or item-kNN over an item-item artifact (``lmrec.artifacts.item_item``): history row times W."""

    capabilities = Capabilities()  # ranks known users and folds in cold ones; predicts no ratings

    def __init__(self, artifact_dir: str | Path) -> None:
        from lmrec.artifacts.item_item import load_item_item_artifact

        root = local_artifact(artifact_dir)
        self.art = load_item_item_artifact(root)
        self.users = IdMap(self.art.user_ids)
        self.item_ids = list(self.art.item_ids)
        self.sha256 = self.art.sha256
        self.info = _info(self.art.kind, root, self.art.manifest, self.art.manifest.get("name", self.art.kind),
                          self.sha256) | {"n_users": len(self.users), "n_items": len(self.item_ids)}
        self.table = self.art.table()

    def user_scores(self, user_id) -> dict:
        """Scores of every artifact item, the user's training items and ratings; ``scores`` None if unknown."""
        return self.table.user_scores(user_id)

    def fold_in(self, item_idx: np.ndarray, ratings: np.ndarray) -> dict:
        """A new user's scores: their rated items are their history row (no retraining, no solve)."""
        i = np.asarray(item_idx, dtype=np.int64)
        if len(i) == 0:
            return {"sha256": self.sha256, "scores": None}
        values = self.art.history_values(ratings)
        return {"sha256": self.sha256, "scores": self.table.scores_of_history(i, values)}


# member name (an ensemble's, or a Serve config's) -> the class that loads and scores that artifact
MEMBER_CLASSES = {"two_tower": TwoTowerMember, "mf": MFMember, "ease": ItemItemMember, "item_knn": ItemItemMember}
