"""The cold-start user model that meta-learning trains (``lmrec.strategies.meta_learning``): an item side over
frozen item text vectors and the history-aggregate init of a user's fast parameters ``(u, b)``.

The inference part only (STYLE: the model you serve is not the thing you train): the task batches, the item
tables, the model, and the rating and interest scores under given fast parameters. Losses, adaptation and the
outer updates live in ``lmrec.strategies.meta_learning``; the artifact in ``lmrec.artifacts.meta``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn


@dataclass
class TaskBatch:
    """Padded per-task rows: items/ratings [T, L], mask [T, L] (False = padding)."""

    items: torch.Tensor
    ratings: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_lists(cls, items: list[np.ndarray], ratings: list[np.ndarray]) -> "TaskBatch":
        width = max(1, max((len(x) for x in items), default=1))
        it = np.zeros((len(items), width), dtype=np.int64)
        rt = np.zeros((len(items), width), dtype=np.float32)
        mk = np.zeros((len(items), width), dtype=bool)
        for row, (i, r) in enumerate(zip(items, ratings)):
            it[row, : len(i)], rt[row, : len(i)], mk[row, : len(i)] = i, r, True
        return cls(torch.from_numpy(it), torch.from_numpy(rt), torch.from_numpy(mk))

    def concat(self, other: "TaskBatch") -> "TaskBatch":
        """Row-wise union of two batches over the same tasks."""
        return TaskBatch(torch.cat([self.items, other.items], 1), torch.cat([self.ratings, other.ratings], 1),
                         torch.cat([self.mask, other.mask], 1))

    def item_mask(self, n_items: int) -> torch.Tensor:
        """[T, n_items] True where the item is one of the task's rows."""
        rows = torch.arange(len(self.items))[:, None].expand_as(self.items)
        out = torch.zeros(len(self.items), n_items, dtype=torch.bool)
        out[rows[self.mask], self.items[self.mask]] = True
        return out


class ItemTables(NamedTuple):
    """Item side of the model, computed once per outer step (or once per model load when serving)."""

    vec: torch.Tensor  # [n_items, dim] rating-head item vectors
    rating_bias: torch.Tensor  # [n_items]
    interest_vec: torch.Tensor  # [n_items, dim]
    interest_bias: torch.Tensor  # [n_items]

    def detach(self) -> "ItemTables":
        return ItemTables(*(t.detach() for t in self))


class ColdStartModel(nn.Module):
    """Slow item side + the history-aggregate init of the fast user parameters."""

    def __init__(self, item_features: torch.Tensor, dim: int = 32, global_mean: float = 3.5,
                 seen_items: torch.Tensor | None = None, item_ids: bool = True) -> None:
        super().__init__()
        n_items, hidden = item_features.shape
        self.register_buffer("item_features", item_features.float())
        seen = torch.ones(n_items, dtype=torch.bool) if seen_items is None else seen_items.bool()
        self.register_buffer("seen", seen)
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self.text_proj = nn.Linear(hidden, dim)
        self.text_bias = nn.Linear(hidden, 2)  # rating and interest bias read from the text
        nn.init.zeros_(self.text_bias.weight)
        self.item_id = nn.Embedding(n_items, dim) if item_ids else None
        self.item_bias = nn.Embedding(n_items, 2)
        nn.init.zeros_(self.item_bias.weight)
        if self.item_id is not None:
            nn.init.normal_(self.item_id.weight, std=0.01)
        self.interest_proj = nn.Linear(dim, dim, bias=False)
        # the aggregate tower: u0 = user_init[:dim] + A·mean(v) + D·mean(dev·v), b0 = user_init[dim] + a·mean(dev)
        self.agg_items = nn.Linear(dim, dim, bias=False)
        self.agg_devs = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.agg_items.weight)
        nn.init.zeros_(self.agg_devs.weight)
        self.agg_bias = nn.Parameter(torch.tensor(0.5))
        self.user_init = nn.Parameter(torch.zeros(dim + 1))

    @property
    def dim(self) -> int:
        return self.text_proj.out_features

    @property
    def n_items(self) -> int:
        return self.item_features.shape[0]

    @torch.no_grad()
    def init_item_biases(self, items: np.ndarray, ratings: np.ndarray, shrinkage: float = 10.0) -> None:
        """Start the ID biases at their count-based estimates: interest = log item frequency (the softmax's
        optimum for a user who says nothing), rating = the item's shrunk mean deviation. A few hundred outer
        steps cannot learn the popularity spread of a catalogue from zero, and the biases carry most of it."""
        n = np.bincount(items, minlength=self.n_items).astype(np.float64)
        dev = np.bincount(items, weights=ratings - float(self.global_mean), minlength=self.n_items)
        rating = dev / (n + shrinkage)
        interest = np.log1p(n)
        interest -= interest[n > 0].mean() if (n > 0).any() else 0.0
        self.item_bias.weight.copy_(torch.from_numpy(np.stack([rating, interest], 1)).float())

    def item_tables(self) -> ItemTables:
        """Item vectors and biases; ID parts only for items seen in training (an unseen item is its text)."""
        gate = self.seen.float()
        vec = self.text_proj(self.item_features)
        if self.item_id is not None:
            vec = vec + gate[:, None] * self.item_id.weight
        bias = self.text_bias(self.item_features) + gate[:, None] * self.item_bias.weight
        return ItemTables(vec, bias[:, 0], self.interest_proj(vec), bias[:, 1])

    def init_from_sums(self, sum_vec: torch.Tensor, sum_dev_vec: torch.Tensor, sum_dev: torch.Tensor,
                       count: torch.Tensor) -> torch.Tensor:
        """``φ₀`` [..., dim + 1] from history sums (Σv, Σdev·v, Σdev, n); n = 0 gives the learned init alone."""
        n = count.clamp_min(1.0)[..., None]
        u = self.user_init[:-1] + self.agg_items(sum_vec / n) + self.agg_devs(sum_dev_vec / n)
        b = self.user_init[-1] + self.agg_bias * sum_dev / n[..., 0]
        return torch.cat([u, b[..., None]], -1)

    def init_fast(self, support: TaskBatch, tables: ItemTables) -> torch.Tensor:
        """``φ₀(S)`` [T, dim + 1] of each task's support set."""
        m = support.mask.float()
        v = tables.vec[support.items]
        dev = (support.ratings - self.global_mean - tables.rating_bias[support.items]) * m
        return self.init_from_sums((v * m[..., None]).sum(1), (v * dev[..., None]).sum(1), dev.sum(1), m.sum(1))


def predict_ratings(fast: torch.Tensor, items: torch.Tensor, tables: ItemTables,
                    global_mean: torch.Tensor) -> torch.Tensor:
    """[T, L] ratings of each task's items under its fast parameters ``fast`` [T, dim + 1]."""
    u, b = fast[:, :-1], fast[:, -1]
    return global_mean + b[:, None] + tables.rating_bias[items] + torch.einsum("td,tld->tl", u, tables.vec[items])


def item_scores(fast: torch.Tensor, tables: ItemTables) -> torch.Tensor:
    """[T, n_items] interest scores (the ranking)."""
    return fast[:, :-1] @ tables.interest_vec.T + tables.interest_bias[None, :]
