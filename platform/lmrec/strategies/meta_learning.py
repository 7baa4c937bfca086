"""Meta-learning for cold-start users: a user tower whose output adapts to a new user in a few gradient steps.

Each user is a task. The *fast* parameters are the user's own ``(u, b)`` (``dim + 1`` numbers): a vector shared
by the rating head (``μ + b + r_i + u·v_i``) and the interest head (``u·w_i + c_i``, ``w_i`` the item vector
seen through the interest projection). Everything else is *slow* and shared: the item side (a projection of
frozen item text vectors + gated item-ID rows, rating biases ``r_i``, interest biases ``c_i``) and the
**history-aggregate init** ``φ₀(S)``: the user's starting ``(u, b)`` is a learned function of the items and
ratings of their support set ``S`` (mean item vector, rating-deviation-weighted mean item vector, mean rating
deviation). With no inner step this is an ordinary two-tower user tower; meta-learning trains it for the case it
is used in (a few ratings) and adds adaptation on top.

A task's loss on a set of (item, rating) rows is rating MSE plus ``click_weight`` times a softmax over the
catalogue of the task's items (rank the items the user picked above the rest: a rating loss alone teaches little
about *which* items a user picks). Ranking uses the interest head only.

Inner loop (``adapt``): ``steps`` gradient steps on the support loss plus a proximal term ``l2·||φ − φ₀||²``
that keeps the adapted user near the aggregate (five ratings must not override what the tower read from them),
vectorised over a batch of tasks. The item tables are computed once and held fixed, so a new user adapts in
milliseconds on CPU.

Outer updates (``meta_loss``, used by ``lmrec.strategies.meta_loop``):
- first-order MAML: the query loss at the adapted parameters, with the gradient passed straight to the init
  (``φ₀ + stop_grad(φ' − φ₀)``, the first-order approximation) and from there into the aggregate tower, and to
  the item side; the query softmax leaves the support items out (they are known, never recommended);
- Reptile: the init moves toward the parameters adapted on support + query (``½||φ₀ − stop_grad(φ')||²``), the
  item side is trained by the loss at the adapted parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MetaAlgorithm = Literal["fomaml", "reptile"]


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


def task_losses(fast: torch.Tensor, batch: TaskBatch, tables: ItemTables, global_mean: torch.Tensor,
                click_weight: float = 0.0, seen: torch.Tensor | None = None,
                exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Per-task loss [T]: masked rating MSE + click_weight · softmax CE of the task's items over the catalogue.

    ``seen`` [n_items] limits the softmax to items with training data; ``exclude`` [T, n_items] removes known
    items (a query's support) from each task's softmax.
    """
    m = batch.mask.float()
    n = m.sum(1).clamp_min(1.0)
    err = (predict_ratings(fast, batch.items, tables, global_mean) - batch.ratings) ** 2
    loss = (err * m).sum(1) / n
    if click_weight > 0:
        logits = item_scores(fast, tables)
        if seen is not None:
            logits = logits.masked_fill(~seen[None, :], float("-inf"))
        if exclude is not None:
            logits = logits.masked_fill(exclude, float("-inf"))
        logp = F.log_softmax(logits, dim=1).gather(1, batch.items)
        loss = loss + click_weight * (-torch.where(batch.mask, logp, 0.0).sum(1) / n)
    return loss


def step_scale(tables: ItemTables, click_weight: float) -> float:
    """1 / (1 + mean ||v||² + click_weight · mean ||w||²): the loss's curvature in ``u`` grows with the item
    vectors' squared norms, so a fixed step that suits one item side diverges on another. With this factor
    ``inner_lr`` means the same for differently trained item sides, and ~1 is a safe step."""
    v = tables.vec.detach().pow(2).sum(1).mean()
    w = tables.interest_vec.detach().pow(2).sum(1).mean()
    return float(1.0 / (1.0 + v + click_weight * w))


def adapt(model: ColdStartModel, support: TaskBatch, steps: int, inner_lr: float, click_weight: float = 0.0,
          l2: float = 0.0, tables: ItemTables | None = None, start: torch.Tensor | None = None) -> torch.Tensor:
    """Fast parameters [T, dim + 1] after ``steps`` gradient steps on ``support`` from ``φ₀(support)``.

    The item side is held fixed; ``tables`` = precomputed ``model.item_tables()`` (serving computes them once for
    many users); ``start`` = the initial fast parameters (default: the aggregate init). The result carries no
    graph: the outer loop uses the first-order approximation.
    """
    tables = (model.item_tables() if tables is None else tables).detach()
    with torch.no_grad():
        anchor = model.init_fast(support, tables) if start is None else start.detach()
    fast = anchor.clone()
    seen = model.seen if click_weight > 0 else None
    lr = inner_lr * step_scale(tables, click_weight)
    for _ in range(steps):
        fast.requires_grad_(True)
        with torch.enable_grad():
            loss = task_losses(fast, support, tables, model.global_mean, click_weight, seen)
            loss = loss + l2 * (fast - anchor).pow(2).sum(1)
            (grad,) = torch.autograd.grad(loss.sum(), fast)
        fast = (fast - lr * grad).detach()
    return fast


def meta_loss(model: ColdStartModel, support: TaskBatch, query: TaskBatch, algorithm: MetaAlgorithm, steps: int,
              inner_lr: float, click_weight: float = 0.0, l2: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Outer loss whose ``backward()`` leaves the first-order MAML (or Reptile) gradient on every slow parameter.

    For Reptile the task's data is support + query together (Reptile does not split the task).
    """
    if algorithm not in ("fomaml", "reptile"):
        raise ValueError(f"unknown meta algorithm {algorithm!r}; expected fomaml or reptile")
    tables = model.item_tables()
    seen = model.seen if click_weight > 0 else None
    if algorithm == "reptile":
        support = query = support.concat(query)
        exclude = None
    else:
        exclude = support.item_mask(model.n_items)
    init = model.init_fast(support, tables)
    adapted = adapt(model, support, steps, inner_lr, click_weight, l2, tables=tables, start=init)
    if algorithm == "fomaml":
        fast = init + (adapted - init).detach()  # d(query loss)/d(init) := d(query loss)/d(adapted)
        per_task = task_losses(fast, query, tables, model.global_mean, click_weight, seen, exclude)
        loss = per_task.mean()
    else:
        per_task = task_losses(adapted, query, tables, model.global_mean, click_weight, seen)
        loss = per_task.mean() + 0.5 * (init - adapted).pow(2).sum(1).mean()
    with torch.no_grad():
        m = query.mask.float()
        err = (predict_ratings(adapted, query.items, tables, model.global_mean) - query.ratings) ** 2
        rmse = float(((err * m).sum() / m.sum().clamp_min(1)).sqrt())
    return loss, {"query_loss": float(per_task.mean().detach()), "query_rmse": rmse}


def leave_one_out_losses(model: ColdStartModel, history: TaskBatch, targets: torch.Tensor, tables: ItemTables,
                         click_weight: float = 0.0) -> torch.Tensor:
    """Ordinary (non-episodic) training loss of the aggregate tower, per user [T].

    Each target row ``targets`` [T, P] (positions into ``history``, -1 = none) is predicted from the user's whole
    history minus that row (its own rating must not be an input), the way a two-tower user tower is trained.
    """
    m = history.mask.float()
    v = tables.vec[history.items]
    dev = (history.ratings - model.global_mean - tables.rating_bias[history.items]) * m
    sums = [(v * m[..., None]).sum(1), (v * dev[..., None]).sum(1), dev.sum(1), m.sum(1)]
    tmask = (targets >= 0).float()
    pos = targets.clamp_min(0)
    t_items = history.items.gather(1, pos)
    t_v = tables.vec[t_items]
    t_dev = dev.gather(1, pos) * tmask
    parts = [t_v * tmask[..., None], t_v * t_dev[..., None], t_dev, tmask]
    fast = model.init_from_sums(*(s.unsqueeze(1) - p for s, p in zip(sums, parts)))  # [T, P, dim + 1]
    u, b = fast[..., :-1], fast[..., -1]
    t_ratings = history.ratings.gather(1, pos)
    pred = model.global_mean + b + tables.rating_bias[t_items] + (u * t_v).sum(-1)
    n = tmask.sum(1).clamp_min(1.0)
    loss = ((pred - t_ratings) ** 2 * tmask).sum(1) / n
    if click_weight > 0:
        logits = u @ tables.interest_vec.T + tables.interest_bias  # [T, P, n_items]
        logits = logits.masked_fill(~model.seen, float("-inf"))
        logp = F.log_softmax(logits, -1).gather(2, t_items[..., None])[..., 0]
        loss = loss + click_weight * (-torch.where(tmask > 0, logp, 0.0).sum(1) / n)
    return loss
