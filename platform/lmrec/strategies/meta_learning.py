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

from typing import Literal

import torch
import torch.nn.functional as F

from lmrec.models.cold_start import ColdStartModel, ItemTables, TaskBatch, item_scores, predict_ratings

MetaAlgorithm = Literal["fomaml", "reptile"]


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
