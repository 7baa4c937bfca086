"""Meta-learning for cold-start users: a shared init of the user parameters that adapts in a few gradient steps.

Each user is a task. The *fast* parameters are the user's own: a vector ``u`` and a bias ``b`` (``dim + 1``
numbers). Everything else is *slow* and shared: the item side (a projection of frozen item text vectors + gated
item-ID rows + a text read-out bias) and the init ``(u0, b0)`` that every user's adaptation starts from.

A task's loss on its (items, ratings) is rating MSE plus, with ``click_weight``, a softmax over all items of
the task's items (rank the items the user picked above the rest: FINDINGS shows a rating loss alone teaches
little about *which* items a user picks).

Inner loop (``adapt``): ``steps`` plain gradient steps on the support set, vectorised over a batch of tasks
(per-task losses are summed, so each task's rows of the gradient are its own). The item tables are computed once
and held fixed, which is why a new user adapts in well under a millisecond per step on CPU.

Outer updates (``meta_loss``, used by ``lmrec.strategies.meta_loop``):
- first-order MAML: the query loss at the adapted parameters, with the gradient passed straight to the init
  (``u0 + stop_grad(u' - u0)``, the first-order approximation) and to the item side;
- Reptile: the init moves toward the adapted parameters (``grad = u0 - mean(u')``), the item side by the loss at
  the adapted parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


class ColdStartModel(nn.Module):
    """Slow item side + the fast-parameter init. ``item_tables()`` -> (item vectors [n_items, dim], biases)."""

    def __init__(self, item_features: torch.Tensor, dim: int = 32, global_mean: float = 3.5,
                 seen_items: torch.Tensor | None = None, item_ids: bool = True) -> None:
        super().__init__()
        n_items, hidden = item_features.shape
        self.register_buffer("item_features", item_features.float())
        seen = torch.ones(n_items, dtype=torch.bool) if seen_items is None else seen_items.bool()
        self.register_buffer("seen", seen)
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self.text_proj = nn.Linear(hidden, dim)
        self.text_bias = nn.Linear(hidden, 1)
        nn.init.zeros_(self.text_bias.weight)
        self.item_id = nn.Embedding(n_items, dim) if item_ids else None
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.item_bias.weight)
        if self.item_id is not None:
            nn.init.normal_(self.item_id.weight, std=0.01)
        self.user_init = nn.Parameter(torch.zeros(dim + 1))  # (u0, b0)

    @property
    def dim(self) -> int:
        return self.text_proj.out_features

    def item_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Item vectors and biases; ID parts only for items seen in training (an unseen item is its text)."""
        gate = self.seen.float()
        vec = self.text_proj(self.item_features)
        if self.item_id is not None:
            vec = vec + gate[:, None] * self.item_id.weight
        bias = self.text_bias(self.item_features)[:, 0] + gate * self.item_bias.weight[:, 0]
        return vec, bias

    def init_fast(self, n_tasks: int) -> torch.Tensor:
        return self.user_init.expand(n_tasks, -1)


def predict_ratings(fast: torch.Tensor, items: torch.Tensor, vec: torch.Tensor, bias: torch.Tensor,
                    global_mean: torch.Tensor) -> torch.Tensor:
    """[T, L] ratings of each task's items under its fast parameters ``fast`` [T, dim + 1]."""
    u, b = fast[:, :-1], fast[:, -1]
    return global_mean + b[:, None] + bias[items] + torch.einsum("td,tld->tl", u, vec[items])


def item_scores(fast: torch.Tensor, vec: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[T, n_items] ranking scores (the user bias is constant per row, so it is left out)."""
    return fast[:, :-1] @ vec.T + bias[None, :]


def task_losses(fast: torch.Tensor, batch: TaskBatch, vec: torch.Tensor, bias: torch.Tensor,
                global_mean: torch.Tensor, click_weight: float = 0.0, l2: float = 0.0,
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """Per-task loss [T]: masked rating MSE + click_weight * softmax CE of the task's items + l2 * ||fast||²."""
    m = batch.mask.float()
    n = m.sum(1).clamp_min(1.0)
    err = (predict_ratings(fast, batch.items, vec, bias, global_mean) - batch.ratings) ** 2
    loss = (err * m).sum(1) / n
    if click_weight > 0:
        logits = item_scores(fast, vec, bias)
        if seen is not None:
            logits = logits.masked_fill(~seen[None, :], float("-inf"))
        logp = F.log_softmax(logits, dim=1).gather(1, batch.items)
        loss = loss + click_weight * (-(logp * m).sum(1) / n)
    if l2 > 0:
        loss = loss + l2 * fast.pow(2).sum(1)
    return loss


def adapt(model: ColdStartModel, support: TaskBatch, steps: int, inner_lr: float, click_weight: float = 0.0,
          l2: float = 0.0, tables: tuple[torch.Tensor, torch.Tensor] | None = None,
          start: torch.Tensor | None = None) -> torch.Tensor:
    """Fast parameters [T, dim + 1] after ``steps`` gradient steps on ``support`` (item side held fixed).

    ``tables`` = precomputed ``model.item_tables()`` (serving passes them once for many users); ``start`` =
    initial fast parameters (default: the learned init).
    """
    vec, bias = tables if tables is not None else model.item_tables()
    vec, bias = vec.detach(), bias.detach()
    fast = (model.init_fast(len(support.items)) if start is None else start).detach().clone()
    seen = model.seen if click_weight > 0 else None
    lr = inner_lr * step_scale(vec)
    for _ in range(steps):
        fast.requires_grad_(True)
        with torch.enable_grad():
            loss = task_losses(fast, support, vec, bias, model.global_mean, click_weight, l2, seen).sum()
            (grad,) = torch.autograd.grad(loss, fast)
        fast = (fast - lr * grad).detach()
    return fast


def step_scale(vec: torch.Tensor) -> float:
    """1 / (1 + mean squared item-vector norm): the MSE loss's curvature in ``u`` grows with ||v||², so a fixed
    step that suits one item side diverges on another. With this factor ``inner_lr`` means the same for a
    meta-trained and a conventionally trained item side, and ~1 is a safe step for both."""
    return float(1.0 / (1.0 + vec.detach().pow(2).sum(1).mean()))


def meta_loss(model: ColdStartModel, support: TaskBatch, query: TaskBatch, algorithm: MetaAlgorithm, steps: int,
              inner_lr: float, click_weight: float = 0.0, l2: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Outer loss whose ``backward()`` leaves the first-order MAML (or Reptile) gradient on every slow parameter.

    For Reptile the task's data is support + query together (Reptile does not split), and the init's gradient is
    added by hand after backward (see ``reptile_init_grad``); the returned loss trains the item side.
    """
    vec, bias = model.item_tables()
    init = model.init_fast(len(support.items))
    if algorithm == "reptile":
        support = TaskBatch(torch.cat([support.items, query.items], 1), torch.cat([support.ratings, query.ratings], 1),
                            torch.cat([support.mask, query.mask], 1))
        query = support
    adapted = adapt(model, support, steps, inner_lr, click_weight, l2, tables=(vec, bias))
    if algorithm == "fomaml":
        fast = init + (adapted - init).detach()  # d(query loss)/d(init) := d(query loss)/d(adapted)
    elif algorithm == "reptile":
        fast = adapted  # the init gets the Reptile direction instead, see reptile_init_grad
    else:
        raise ValueError(f"unknown meta algorithm {algorithm!r}; expected fomaml or reptile")
    seen = model.seen if click_weight > 0 else None
    per_task = task_losses(fast, query, vec, bias, model.global_mean, click_weight, 0.0, seen)
    m = query.mask.float()
    err = (predict_ratings(adapted, query.items, vec.detach(), bias.detach(), model.global_mean) - query.ratings) ** 2
    rmse = float(((err * m).sum() / m.sum().clamp_min(1)).sqrt())
    logs = {"query_loss": float(per_task.mean().detach()), "query_rmse": rmse}
    if algorithm == "reptile":
        model._reptile_target = adapted.mean(0).detach()  # read by reptile_init_grad after backward
    return per_task.mean(), logs


def reptile_init_grad(model: ColdStartModel) -> None:
    """Set the init's gradient to ``u0 - mean(adapted)``: an SGD step of size ε is then Reptile's ε-interpolation."""
    target = getattr(model, "_reptile_target", None)
    if target is None:
        raise RuntimeError("reptile_init_grad needs a preceding meta_loss(..., algorithm='reptile')")
    model.user_init.grad = (model.user_init.detach() - target).clone()
    model._reptile_target = None
