"""The encoder two-tower model for inference: encoder, towers and scoring heads. It knows nothing of losses.

Scores:
- rating head: ``mu + b_u + b_i + <p_u, item_vec>`` where ``b_i`` = gated item-ID bias + a linear read-out of
  the item text (so an unseen item still gets a text-based bias) and ``p_u`` is the user-ID (+ user-text) part of
  the user tower (``rating_user="id"``, biased-MF-like: pooling history vectors into the rating made it overfit on
  ML-100K) or the whole user tower (``rating_user="tower"``);
- interest head: cosine of a shared projection of both vectors (+ an optional per-item term, ``interest_bias``:
  gated item-ID bias + text read-out, so an unseen item keeps a text-based popularity prior); used to rank items
  (``score_items``).

The model carries, as buffers, the cached pooled text of every item (``item_text``), the users' training
histories (``history``) and the item-seen gate, so a saved state dict is enough to serve.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lmrec.models.encoder import TextEncoder, batch_tokens, encode_all
from lmrec.models.towers import ItemTower, UserTower, UserTowerKind

RankingHead = Literal["interest", "rating"]
RatingUser = Literal["id", "tower"]


def history_matrix(train: pd.DataFrame, n_users: int, max_history: int) -> torch.Tensor:
    """[n_users, L] item indices of each user's training items (most recent ``max_history``), -1 = padding."""
    cols = ["user_idx", "timestamp", "item_idx"] if "timestamp" in train else ["user_idx", "item_idx"]
    df = train.sort_values(cols, kind="stable")
    users = df["user_idx"].to_numpy()
    items = df["item_idx"].to_numpy()
    counts = np.bincount(users, minlength=n_users)
    width = max(1, min(int(counts.max(initial=0)), max_history))
    # position of each row from the end of its user's block: keeps the most recent when truncating
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    rank_from_end = counts[users] - 1 - (np.arange(len(users)) - starts)
    keep = rank_from_end < width
    out = np.full((n_users, width), -1, dtype=np.int64)
    slot = np.minimum(counts[users], width) - 1 - rank_from_end
    out[users[keep], slot[keep]] = items[keep]
    return torch.from_numpy(out)


class TwoTowerModel(nn.Module):
    """Encoder + item tower + user tower + rating and interest heads."""

    def __init__(
        self,
        encoder: TextEncoder,
        n_users: int,
        n_items: int,
        dim: int = 64,
        user_tower: UserTowerKind = "mean",
        item_id_embeddings: bool = True,
        user_id_embeddings: bool = True,
        user_text: bool = False,
        max_history: int = 256,
        ranking_head: RankingHead = "interest",
        rating_user: RatingUser = "id",
        interest_bias: bool = False,
    ) -> None:
        super().__init__()
        hidden = encoder.hidden_size
        self.encoder = encoder
        self.n_users, self.n_items, self.max_history = n_users, n_items, max_history
        self.ranking_head = ranking_head
        if rating_user not in ("id", "tower"):
            raise ValueError(f"rating_user must be 'id' or 'tower', got {rating_user!r}")
        if rating_user == "id" and not user_id_embeddings:
            raise ValueError("rating_user='id' needs user_id_embeddings")
        self.rating_user = rating_user
        self.item_tower = ItemTower(hidden, dim, n_items, item_id_embeddings)
        self.user_tower = UserTower(dim, n_users, user_tower, user_id_embeddings, hidden if user_text else None)
        # rating head
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.text_bias = nn.Linear(hidden, 1)
        nn.init.zeros_(self.text_bias.weight)
        # interest head
        self.interest_proj = nn.Linear(dim, dim)
        self.interest_bias = interest_bias
        if interest_bias:
            self.interest_item_bias = nn.Embedding(n_items, 1)
            nn.init.zeros_(self.interest_item_bias.weight)
            # the text read-out is a closed-form fit (init_interest_biases), never moved by the optimizer: Adam's
            # per-weight steps on 384 tiny ridge coefficients wiped the prior out within an epoch
            self.interest_text_bias = nn.Linear(hidden, 1).requires_grad_(False)
            nn.init.zeros_(self.interest_text_bias.weight)
            nn.init.zeros_(self.interest_text_bias.bias)
        self.register_buffer("global_mean", torch.zeros(()))
        # (min, max) of training ratings; predictions are clamped to it (+-inf = no clamp until set from data)
        self.register_buffer("rating_range", torch.tensor([float("-inf"), float("inf")]))
        self.register_buffer("item_text", torch.zeros(n_items, hidden))
        self.register_buffer("user_text", torch.zeros(n_users, hidden) if user_text else torch.zeros(0, hidden))
        self.register_buffer("history", torch.full((n_users, 1), -1, dtype=torch.long))

    def id_tables(self) -> list[nn.Embedding]:
        """The per-user and per-item rows (ID embeddings, rating and interest biases): a step reads few of them."""
        tables = [self.user_tower.id_embedding, self.item_tower.id_embedding, self.user_bias, self.item_bias,
                  getattr(self, "interest_item_bias", None)]
        return [t for t in tables if t is not None]

    # ---- building blocks (used by the training wrapper and by the recommender) ----
    def encode_items(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pooled encoder output for a block of pre-tokenised item texts, padded to its longest row."""
        b_ids, b_mask = batch_tokens(ids, lengths)
        return self.encoder(b_ids, b_mask)

    def text_table(self, fresh_idx: torch.Tensor | None = None, fresh: torch.Tensor | None = None) -> torch.Tensor:
        """All items' pooled text: cached rows (no gradient) with ``fresh_idx`` rows replaced by ``fresh``."""
        dtype = self.text_bias.weight.dtype  # bf16 under DeepSpeed bf16, float32 otherwise
        table = self.item_text.detach().to(dtype)
        if fresh_idx is None:
            return table
        return table.index_put((fresh_idx,), fresh.to(dtype))

    def item_vectors(self, text_table: torch.Tensor, id_keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_tower(text_table, id_keep)

    def item_text_vectors(self, text_table: torch.Tensor) -> torch.Tensor:
        """Text part of the item vectors only (what an unseen item gets)."""
        return self.item_tower.text_proj(text_table)

    def item_biases(self, text_table: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Rating-head item biases; ``rows``: the item indices ``text_table`` holds (all items without)."""
        gate = (self.item_tower.seen if rows is None else self.item_tower.seen[rows]).to(text_table.dtype)
        item = self.item_bias.weight[:, 0] if rows is None else self.item_bias(rows)[:, 0]
        return gate * item + self.text_bias(text_table)[:, 0]

    def interest_biases(self, text_table: torch.Tensor, id_keep: torch.Tensor | None = None,
                        rows: torch.Tensor | None = None) -> torch.Tensor:
        """[n_items] additive term of the interest score (cosine units): the item-ID part, gated off for unseen
        items (and for items whose ID is dropped, ``id_keep`` = 0), plus the text read-out; zeros without
        ``interest_bias``. ``rows``: the item indices ``text_table`` holds (all items without)."""
        if not self.interest_bias:
            return text_table.new_zeros(len(text_table))
        seen = self.item_tower.seen if rows is None else self.item_tower.seen[rows]
        gate = seen.to(text_table.dtype)
        if id_keep is not None:
            gate = gate * id_keep.to(gate.dtype)
        item_part = self.interest_item_bias.weight[:, 0] if rows is None else self.interest_item_bias(rows)[:, 0]
        return gate * item_part + self.interest_text_bias(text_table)[:, 0]

    @torch.no_grad()
    def init_interest_biases(self, counts: np.ndarray, scale: float) -> dict[str, float]:
        """Start the interest biases at item popularity, which a few hundred steps cannot learn from zero.

        A softmax over items converges to a per-item term of log frequency (+ a constant); scores are divided by
        the click temperature, so the target is ``scale · log(1 + count)`` (``scale`` = that temperature), centred
        over the seen items (``counts``: training interactions per item). The text read-out starts at the ridge fit
        of that target on the cached item text (alpha by leave-one-out over the seen items) — the popularity prior
        an unseen item gets, kept fixed — and the ID part at each seen item's residual, which training moves on.
        Returns the fit's diagnostics."""
        fitted = self._fit_text_prior(counts, scale)
        if fitted is None:
            return {}
        target, prior, seen, diag = fitted
        residual = np.where(seen, target - prior, 0.0)
        self.interest_item_bias.weight.copy_(torch.as_tensor(residual[:, None],
                                                             dtype=self.interest_item_bias.weight.dtype))
        return diag

    @torch.no_grad()
    def refit_interest_prior(self, counts: np.ndarray, scale: float, before: torch.Tensor) -> dict[str, float]:
        """Refit the text prior on the current ``item_text`` (a fine-tuned encoder moved the item vectors, so the
        first fit no longer reads them), keeping each seen item's total term at ``before`` (``interest_biases``
        before the re-encoding): warm scores do not jump, unseen items get a prior that follows the encoder."""
        fitted = self._fit_text_prior(counts, scale)
        if fitted is None:
            return {}
        _, prior, _, diag = fitted
        gate = self.item_tower.seen.cpu().numpy()
        residual = np.where(gate, before.double().cpu().numpy() - prior, 0.0)
        self.interest_item_bias.weight.copy_(torch.as_tensor(residual[:, None],
                                                             dtype=self.interest_item_bias.weight.dtype))
        return diag

    def _fit_text_prior(self, counts: np.ndarray, scale: float):
        """Ridge fit of ``scale · log(1 + count)`` (centred over seen items) on the cached item text; sets the text
        read-out and returns (target, prior of every item, seen mask, diagnostics), or None with < 2 seen items."""
        from sklearn.linear_model import RidgeCV

        count = np.asarray(counts, dtype=np.int64)
        seen = count > 0
        if not self.interest_bias or seen.sum() < 2:
            return None
        target = scale * np.log1p(count.astype(np.float64))
        target -= target[seen].mean()
        x = self.item_text.float().cpu().numpy().astype(np.float64)
        fit = RidgeCV(alphas=np.logspace(-2, 3, 11)).fit(x[seen], target[seen])
        dtype = self.interest_text_bias.weight.dtype
        self.interest_text_bias.weight.copy_(torch.as_tensor(fit.coef_[None, :], dtype=dtype))
        self.interest_text_bias.bias.fill_(float(fit.intercept_))
        diag = {"alpha": float(fit.alpha_), "r2_seen": float(fit.score(x[seen], target[seen]))}
        return target, fit.predict(x), seen, diag

    def interest_text_biases(self, hidden: torch.Tensor) -> torch.Tensor:
        """The text part of ``interest_biases`` for pooled encoder outputs [n, hidden] (new items)."""
        if not self.interest_bias:
            return hidden.new_zeros(hidden.shape[0])
        return self.interest_text_bias(hidden)[:, 0]

    def user_vectors(
        self,
        user_idx: torch.Tensor,
        item_vectors: torch.Tensor,
        row_user: torch.Tensor | None = None,
        exclude_item: torch.Tensor | None = None,
    ) -> torch.Tensor:
        text = self.user_text[user_idx] if self.user_text.shape[0] else None
        return self.user_tower(user_idx, self.history[user_idx], item_vectors, row_user, exclude_item, text)

    def rating_user_vectors(self, user_idx: torch.Tensor, user_vec: torch.Tensor) -> torch.Tensor:
        """The user factor of the rating head: the tower's ID (+ text) part, or ``user_vec`` itself."""
        if self.rating_user == "tower":
            return user_vec
        vec = self.user_tower.id_embedding(user_idx)
        if self.user_tower.text_proj is not None and self.user_text.shape[0]:
            vec = vec + self.user_tower.text_proj(self.user_text[user_idx].to(vec.dtype))
        return vec

    def rating(
        self, user_vec: torch.Tensor, user_idx: torch.Tensor, item_vec: torch.Tensor, item_bias: torch.Tensor
    ) -> torch.Tensor:
        """Aligned rows: predicted rating (``user_vec`` is the user tower's output; see ``rating_user_vectors``)."""
        p = self.rating_user_vectors(user_idx, user_vec)
        return self.global_mean + self.user_bias(user_idx)[:, 0] + item_bias + (p * item_vec).sum(-1)

    def interest(self, vec: torch.Tensor) -> torch.Tensor:
        """Unit vectors in the interest space (cosine scoring)."""
        return F.normalize(self.interest_proj(vec), dim=-1)

    # ---- maintenance ----
    @torch.no_grad()
    def refresh_item_text(
        self, ids: torch.Tensor, lengths: torch.Tensor, batch_size: int = 256, autocast_dtype: torch.dtype | None = None
    ) -> None:
        """Re-encode every item text with the current encoder (after fine-tuning steps made the cache stale)."""
        self.item_text.copy_(encode_all(self.encoder, ids, lengths, batch_size, autocast_dtype))

    @torch.no_grad()
    def refresh_user_text(
        self, ids: torch.Tensor, lengths: torch.Tensor, batch_size: int = 256, autocast_dtype: torch.dtype | None = None
    ) -> None:
        if self.user_text.shape[0]:
            self.user_text.copy_(encode_all(self.encoder, ids, lengths, batch_size, autocast_dtype))

    def set_history(self, train: pd.DataFrame | np.ndarray) -> None:
        """Replace the user histories from a training frame, or from a ready [n_users, L] matrix (-1 = padding)."""
        hist = torch.from_numpy(np.array(train)) if isinstance(train, np.ndarray) else \
            history_matrix(train, self.n_users, self.max_history)
        self.history = hist.to(self.history.device)  # buffer re-registration keeps it in the state dict, new width

    def set_seen_items(self, item_idx: np.ndarray) -> None:
        seen = torch.zeros(self.n_items, dtype=torch.bool, device=self.item_text.device)
        seen[torch.as_tensor(np.unique(item_idx), device=seen.device)] = True
        self.item_tower.seen.copy_(seen)

    def set_seen_counts(self, counts: np.ndarray) -> None:
        """The item-seen gate from interactions per item (nonzero = seen)."""
        self.set_seen_items(np.flatnonzero(np.asarray(counts)))

    @torch.no_grad()
    def precompute(self) -> dict[str, torch.Tensor]:
        """Serving tables from the cached item text: item vectors, biases, interest vectors, user vectors."""
        text = self.text_table()
        item_vec = self.item_vectors(text)
        users = torch.arange(self.n_users, device=text.device)
        user_vec = torch.cat([self.user_vectors(u, item_vec) for u in users.split(4096)])
        # "user_vectors" is the rating head's user factor (what serving dots with item vectors);
        # "tower_user_vectors" the pooled user tower output the interest space is computed from
        return {
            "user_vectors": self.rating_user_vectors(users, user_vec),
            "tower_user_vectors": user_vec,
            "item_vectors": item_vec,
            "item_bias": self.item_biases(text),
            "item_interest": self.interest(item_vec),
            "item_interest_bias": self.interest_biases(text),
            "user_interest": self.interest(user_vec),
        }


class TwoTowerRecommender:
    """``lmrec.models.base.Recommender`` view of a trained ``TwoTowerModel`` (precomputed tables, no encoder pass)."""

    name = "two_tower"

    def __init__(self, model: TwoTowerModel, name: str | None = None) -> None:
        self.model = model.eval()
        if name:
            self.name = name
        self.tables = {k: v.float().cpu() for k, v in model.precompute().items()}

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "TwoTowerRecommender":
        """Fold in new histories without retraining: user vectors are re-pooled from ``train``'s items."""
        if (n_users, n_items) != (self.model.n_users, self.model.n_items):
            raise ValueError(
                f"model was trained for {self.model.n_users} users x {self.model.n_items} items, "
                f"got {n_users} x {n_items}"
            )
        self.model.set_history(train)
        self.tables = {k: v.float().cpu() for k, v in self.model.precompute().items()}
        return self

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        t = self.tables
        u = torch.as_tensor(np.asarray(user_idx), dtype=torch.long)
        i = torch.as_tensor(np.asarray(item_idx), dtype=torch.long)
        dot = (t["user_vectors"][u] * t["item_vectors"][i]).sum(-1)
        bias = self.model.user_bias.weight[:, 0].detach().cpu()[u] + t["item_bias"][i]
        low, high = self.model.rating_range.cpu().tolist()
        return (self.model.global_mean.cpu() + bias + dot).clamp(low, high).numpy().astype(np.float32)

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        t = self.tables
        u = torch.as_tensor(np.asarray(user_idx), dtype=torch.long)
        if self.model.ranking_head == "interest":
            scores = t["user_interest"][u] @ t["item_interest"].T + t["item_interest_bias"][None, :]
            return scores.numpy().astype(np.float32)
        scores = t["user_vectors"][u] @ t["item_vectors"].T + t["item_bias"][None, :]
        return scores.numpy().astype(np.float32)

    def similar_items(self, item_idx: np.ndarray, k: int = 10) -> np.ndarray:
        """Top-k related items by interest-space cosine (the item itself excluded): [len(item_idx), k]."""
        t = self.tables["item_interest"]
        i = torch.as_tensor(np.asarray(item_idx), dtype=torch.long)
        sims = t[i] @ t.T
        sims[torch.arange(len(i)), i] = float("-inf")
        return sims.topk(k, dim=1).indices.numpy()
