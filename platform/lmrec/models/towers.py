"""Item and user towers. Both work on *item vectors*, never on per-interaction text.

Item tower: projected item text + an item-ID embedding that is gated off for items never seen in training, so a
new item is scored from its text alone. User tower: mean or attention over the vectors of the user's history items,
plus an optional user-ID embedding and an optional projection of a user text embedding.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

UserTowerKind = Literal["mean", "attention"]


class ItemTower(nn.Module):
    """``item_vectors(text_hidden) -> [n_items, dim]``: text projection + gated ID embedding."""

    def __init__(self, hidden_size: int, dim: int, n_items: int, id_embeddings: bool = True) -> None:
        super().__init__()
        self.text_proj = nn.Linear(hidden_size, dim)
        # zero start: pooled encoder outputs share one large common direction, so a random projection would add
        # the same big offset to every rating dot product and the first hundreds of steps would only undo it
        nn.init.zeros_(self.text_proj.weight)
        nn.init.zeros_(self.text_proj.bias)
        self.id_embedding = nn.Embedding(n_items, dim) if id_embeddings else None
        if self.id_embedding is not None:
            nn.init.normal_(self.id_embedding.weight, std=0.01)
        # Items absent from the training interactions have untrained ID rows: the gate keeps them out.
        self.register_buffer("seen", torch.zeros(n_items, dtype=torch.bool))

    def forward(self, text_hidden: torch.Tensor, id_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors of all items. ``text_hidden`` is [n_items, hidden]; ``id_keep`` an optional extra 0/1 gate."""
        return self.combine(self.text_proj(text_hidden.to(self.text_proj.weight.dtype)), id_keep)

    def combine(self, text_vec: torch.Tensor, id_keep: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """Add the gated ID part to already projected text vectors (lets a step project the text only once).
        ``rows``: the item indices ``text_vec`` holds (a sampled softmax's candidates); all items without."""
        vec = text_vec
        if self.id_embedding is not None:
            gate = (self.seen if rows is None else self.seen[rows]).to(vec.dtype)
            if id_keep is not None:
                gate = gate * id_keep.to(vec.dtype)
            ids = self.id_embedding.weight if rows is None else self.id_embedding(rows)
            vec = vec + gate[:, None] * ids
        return vec


class UserTower(nn.Module):
    """Pools the user's history item vectors (mean or attention) and adds ID / text parts.

    ``exclude_item`` removes one item per row from its user's pool: during training a user must not see the very
    item being predicted in its own history, or the click task degenerates into an identity lookup.
    """

    def __init__(
        self,
        dim: int,
        n_users: int,
        kind: UserTowerKind = "mean",
        id_embeddings: bool = True,
        text_hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("mean", "attention"):
            raise ValueError(f"user tower kind must be 'mean' or 'attention', got {kind!r}")
        self.kind = kind
        self.id_embedding = nn.Embedding(n_users, dim) if id_embeddings else None
        if self.id_embedding is not None:
            nn.init.normal_(self.id_embedding.weight, std=0.01)
        self.text_proj = nn.Linear(text_hidden_size, dim) if text_hidden_size else None
        if kind == "attention":
            self.key = nn.Linear(dim, dim, bias=False)
            self.query = nn.Parameter(torch.zeros(dim))

    def pool_weights(self, hist_vec: torch.Tensor, mask: torch.Tensor, user_idx: torch.Tensor) -> torch.Tensor:
        """Unnormalised non-negative weights [U, L] over history slots (0 on padding)."""
        if self.kind == "mean":
            return mask.to(hist_vec.dtype)
        q = self.query.expand(len(user_idx), -1)
        if self.id_embedding is not None:
            q = q + self.id_embedding(user_idx)
        logits = torch.einsum("uld,ud->ul", self.key(hist_vec), q) / hist_vec.shape[-1] ** 0.5
        logits = logits.masked_fill(~mask, float("-inf"))
        # subtracting the row max keeps exp finite; rows with no history give 0 weights, not NaN
        peak = logits.max(1, keepdim=True).values.clamp_min(-1e4).detach()
        return torch.exp(logits - peak).masked_fill(~mask, 0.0)

    def forward(
        self,
        user_idx: torch.Tensor,
        history: torch.Tensor,
        item_vectors: torch.Tensor,
        row_user: torch.Tensor | None = None,
        exclude_item: torch.Tensor | None = None,
        user_text_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """User vectors.

        user_idx: [U] distinct users; history: [U, L] item indices, -1 = padding; item_vectors: [n_items, dim].
        Without ``row_user`` returns [U, dim]. With ``row_user`` ([B] positions into user_idx) and
        ``exclude_item`` ([B] items) returns one vector per row with that row's item left out of the pool.
        """
        mask = history >= 0
        if self.kind == "mean":
            # embedding_bag over the non-padding slots: no [U, L, dim] tensor, cheap sparse backward
            rows, cols = mask.nonzero(as_tuple=True)
            offsets = torch.cumsum(mask.sum(1), 0) - mask.sum(1)
            num = F.embedding_bag(history[rows, cols], item_vectors, offsets, mode="sum")
            weights = mask.to(item_vectors.dtype)
        else:
            hist_vec = item_vectors[history.clamp_min(0)]
            weights = self.pool_weights(hist_vec, mask, user_idx)
            num = torch.einsum("ul,uld->ud", weights, hist_vec)
        den = weights.sum(1)
        extra = torch.zeros_like(num)
        if self.id_embedding is not None:
            extra = extra + self.id_embedding(user_idx)
        if self.text_proj is not None and user_text_hidden is not None:
            extra = extra + self.text_proj(user_text_hidden)
        if row_user is None:
            return num / den.clamp_min(1e-6)[:, None] + extra
        num, den, extra = num[row_user], den[row_user], extra[row_user]
        if exclude_item is not None:
            hit = (history[row_user] == exclude_item[:, None]) & mask[row_user]
            w_hit = (weights[row_user] * hit).sum(1)
            num = num - w_hit[:, None] * item_vectors[exclude_item]
            den = den - w_hit
        pooled = torch.where(den[:, None] > 1e-6, num / den.clamp_min(1e-6)[:, None], torch.zeros_like(num))
        return pooled + extra
