"""Training tasks for the two-tower model. Each task owns its loss and its metrics; its weight is configuration.

- ``RatingTask``: MSE of the biased dot product + L2 on the ID rows the batch touches (regularisation strength
  dominates MF quality on MovieLens, see FINDINGS).
- ``ClickTask``: implicit positives vs every *warm* item (full softmax / InfoNCE with temperature), or vs the batch's
  positives plus items sampled by popularity with the log-Q correction (``negatives: sampled``: the softmax's cost
  follows the sample, not the catalogue); item-ID parts randomly dropped so the text part alone learns to rank
  (this is what makes cold-start ranking work).
- ``RelatedTask``: items co-consumed by one user are pulled together in the interest space (contrastive).

The total loss is ``sum(weight * loss)`` over tasks with a positive weight (``MultiTaskObjective``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmrec.models.two_tower import TwoTowerModel


@dataclass
class StepContext:
    """Tensors shared by all tasks in one step (computed once by the training wrapper)."""

    user_idx: torch.Tensor  # [B]
    item_idx: torch.Tensor  # [B]
    rating: torch.Tensor  # [B]
    text: torch.Tensor  # [n_items, hidden]: cached rows + the rows encoded with gradient this step
    item_vec: torch.Tensor  # [n_items, dim]
    item_text_vec: torch.Tensor  # [n_items, dim]: text part of item_vec
    item_bias: torch.Tensor  # [n_items]
    user_vec: torch.Tensor  # [B, dim]: each row's user, with that row's item left out of the history pool
    generator: torch.Generator | None = None
    # the click task's sampled negatives, drawn before the step's item rows were chosen (``ClickTask.draw``)
    negatives: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict)

    def item_interest(self, model: TwoTowerModel) -> torch.Tensor:
        if "item_interest" not in self._cache:
            self._cache["item_interest"] = model.interest(self.item_vec)
        return self._cache["item_interest"]


def _rand(n: int, ctx: StepContext) -> torch.Tensor:
    return torch.rand(n, generator=ctx.generator, device="cpu").to(ctx.item_vec.device)


def _subsample(rows: torch.Tensor, max_rows: int, ctx: StepContext) -> torch.Tensor:
    """Keep at most ``max_rows`` of the True rows (random): a [rows x all items] softmax is the costly part."""
    n = int(rows.sum())
    if n <= max_rows:
        return rows
    keys = _rand(len(rows), ctx).masked_fill(~rows, 2.0)
    keep = torch.zeros_like(rows)
    keep[keys.argsort()[:max_rows]] = True
    return keep


class RatingTask:
    """Explicit rating regression with per-rating L2, as in SGD-trained biased MF.

    ``l2`` weighs the squared norms of the vectors and biases the rating head actually uses (ID + text parts
    together); ``id_l2`` adds a penalty on the item-ID rows alone. The text projection is shared by all items and
    would otherwise escape regularisation (on ML-100K u1 an unpenalised text part overfits: validation RMSE 1.0
    against 0.915 for plain MF); penalised this way the text acts as a prior that ID rows deviate from.
    """

    name = "rating"

    def __init__(self, weight: float = 1.0, l2: float = 0.12, id_l2: float = 0.06) -> None:
        self.weight, self.l2, self.id_l2 = weight, l2, id_l2

    def loss(self, model: TwoTowerModel, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        p = model.rating_user_vectors(ctx.user_idx, ctx.user_vec)
        q, b_i = ctx.item_vec[ctx.item_idx], ctx.item_bias[ctx.item_idx]
        pred = model.rating(ctx.user_vec, ctx.user_idx, q, b_i)
        mse = F.mse_loss(pred.float(), ctx.rating)
        b_u = model.user_bias(ctx.user_idx)[:, 0]
        reg = self.l2 * (p.pow(2).sum(-1) + b_u.pow(2) + q.pow(2).sum(-1) + b_i.pow(2))
        id_reg = model.item_bias(ctx.item_idx)[:, 0].pow(2)
        if model.item_tower.id_embedding is not None:
            id_reg = id_reg + model.item_tower.id_embedding(ctx.item_idx).pow(2).sum(-1)
        reg = reg + self.id_l2 * id_reg
        return mse + reg.float().mean(), {"rmse": float(mse.detach().sqrt())}


class ClickTask:
    """Implicit interest: softmax of each positive (user, item) against all warm items, or against a sample.

    ``negatives="sampled"``: the candidates are the step's positives (in-batch negatives for the other rows) plus
    ``num_negatives`` items drawn with replacement from the training popularity ``q``; every candidate's logit is
    corrected by minus the log-probability that it is among the candidates (the log-Q correction of sampled
    softmax: without it popular items, drawn more often, are over-penalised and the popularity term learns the
    sampler instead of the data). Call ``set_item_counts`` first (the recipe does).
    """

    name = "click"

    def __init__(
        self, weight: float = 1.0, temperature: float = 0.1, positive_threshold: float | None = None,
        id_dropout: float = 0.5, max_rows: int = 256, negatives: str = "all", num_negatives: int = 1024,
    ) -> None:
        self.weight, self.temperature = weight, temperature
        self.positive_threshold, self.id_dropout, self.max_rows = positive_threshold, id_dropout, max_rows
        if negatives not in ("all", "sampled"):
            raise ValueError(f"negatives must be 'all' or 'sampled', not {negatives!r}")
        self.negatives, self.num_negatives = negatives, num_negatives
        self._q: torch.Tensor | None = None  # sampling distribution over items (0 for never-seen items)

    def set_item_counts(self, counts) -> None:
        """Training interactions per item: the sampler's popularity distribution ``q`` (sampled negatives)."""
        counts = torch.as_tensor(counts, dtype=torch.float64)
        if counts.sum() <= 0:
            raise ValueError("click task: no training interactions to sample negatives from")
        self._q = (counts / counts.sum()).float()

    def draw(self, generator: torch.Generator | None) -> torch.Tensor:
        """``num_negatives`` items drawn from the sampler's popularity, with replacement (CPU)."""
        if self._q is None:
            raise RuntimeError("click task with sampled negatives: set_item_counts was not called")
        return torch.multinomial(self._q, self.num_negatives, replacement=True, generator=generator)

    def loss(self, model: TwoTowerModel, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        pos = torch.ones_like(ctx.rating, dtype=torch.bool)
        if self.positive_threshold is not None:
            pos = ctx.rating >= self.positive_threshold
        pos = _subsample(pos, self.max_rows, ctx)
        if not bool(pos.any()):
            # keep the graph connected (DDP/ZeRO expect every rank to produce gradients for the same params)
            return ctx.user_vec.sum() * 0.0, {"acc": 0.0}
        keep = None
        if self.id_dropout > 0:
            keep = (_rand(model.n_items, ctx) >= self.id_dropout).float()
        user = model.interest(ctx.user_vec[pos])
        target = ctx.item_idx[pos]
        if self.negatives == "sampled":
            logits, target, _ = self._sampled_logits(model, ctx, user, target, keep)
        else:
            cand = model.interest(model.item_tower.combine(ctx.item_text_vec, keep) if keep is not None
                                  else ctx.item_vec)
            logits = (user @ cand.T + model.interest_biases(ctx.text, keep)[None, :]).float() / self.temperature
            # never-seen items are no negatives: the model would learn "texts like these are never consumed"
            logits = logits.masked_fill(~model.item_tower.seen[None, :], float("-inf"))
        loss = F.cross_entropy(logits, target)
        acc = float((logits.detach().argmax(1) == target).float().mean())
        return loss, {"acc": acc}

    def _sampled_logits(self, model: TwoTowerModel, ctx: StepContext, user: torch.Tensor, target: torch.Tensor,
                        keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits over the positives + sampled items (log-Q corrected), each row's target among them, and the
        candidates' item indices."""
        if self._q is None:
            raise RuntimeError("click task with sampled negatives: set_item_counts was not called")
        sampled = ctx.negatives if ctx.negatives is not None else self.draw(ctx.generator)
        # duplicates collapse: each candidate appears once, so a row's own positive is never also a "negative"
        cand, inverse = torch.unique(torch.cat([target, sampled.to(target.device)]), return_inverse=True)
        rows_keep = keep[cand] if keep is not None else None
        vec = model.interest(model.item_tower.combine(ctx.item_text_vec[cand], rows_keep, rows=cand))
        bias = model.interest_biases(ctx.text[cand], rows_keep, rows=cand)
        # log-Q: the log-probability that the candidate is in the set. The positives are draws from the data, the
        # negatives from q (its estimate), so the set is len(target) + num_negatives draws from q, and item j is in
        # it with probability 1 - (1 - q_j)^draws: ~draws * q_j for a rare item, 1 for a popular one (correcting by
        # log q_j alone would under-weigh popular items, which the set holds once however often they are drawn)
        draws = len(target) + self.num_negatives
        q = self._q.to(cand.device)[cand].double()
        log_q = torch.log(-torch.expm1(draws * torch.log1p(-q.clamp(max=1 - 1e-12)))).float()
        logits = (user @ vec.T + bias[None, :]).float() / self.temperature - log_q[None, :]
        return logits, inverse[: len(target)], cand


class RelatedTask:
    """Item relatedness: an item and another item from the same user's history are positives (InfoNCE)."""

    name = "related"

    def __init__(self, weight: float = 0.1, temperature: float = 0.1, max_rows: int = 256) -> None:
        self.weight, self.temperature, self.max_rows = weight, temperature, max_rows

    def loss(self, model: TwoTowerModel, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        hist = model.history[ctx.user_idx]  # [B, L]
        valid = (hist >= 0) & (hist != ctx.item_idx[:, None])
        n_valid = valid.sum(1)
        has = _subsample(n_valid > 0, self.max_rows, ctx)
        if not bool(has.any()):
            return ctx.item_vec.sum() * 0.0, {}
        # pick a uniformly random valid slot per row: rank slots by random keys, invalid slots last
        keys = _rand(hist.numel(), ctx).view(hist.shape).masked_fill(~valid, 2.0)
        partner = hist.gather(1, keys.argmin(1, keepdim=True))[:, 0]
        anchor, partner = ctx.item_idx[has], partner[has]
        table = ctx.item_interest(model)
        logits = (table[anchor] @ table.T).float() / self.temperature
        mask = ~model.item_tower.seen[None, :] | F.one_hot(anchor, model.n_items).bool()
        logits = logits.masked_fill(mask, float("-inf"))
        return F.cross_entropy(logits, partner), {}


Task = RatingTask | ClickTask | RelatedTask


class MultiTaskObjective:
    """Weighted sum of task losses; tasks with weight 0 are skipped entirely (no compute)."""

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = [t for t in tasks if t.weight > 0]
        if not self.tasks:
            raise ValueError("at least one task needs a positive weight")

    def __call__(self, model: TwoTowerModel, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        total = None
        logs: dict[str, float] = {}
        for task in self.tasks:
            loss, metrics = task.loss(model, ctx)
            total = task.weight * loss if total is None else total + task.weight * loss
            logs[f"loss_{task.name}"] = float(loss.detach())
            logs.update({f"{task.name}_{k}": v for k, v in metrics.items()})
        logs["loss"] = float(total.detach())
        return total, logs

    def task(self, name: str) -> Task | None:
        return next((t for t in self.tasks if t.name == name), None)

    @property
    def batch_bound(self) -> bool:
        """Whether a step reads only item rows it can name up front: the batch's items, its users' histories and
        the click task's sampled negatives. True for the rating task and a sampled click task; False for a
        softmax over every item (click ``negatives: all``, relatedness) and for a strategy's own tasks."""
        return all(isinstance(t, RatingTask) or isinstance(t, ClickTask) and t.negatives == "sampled"
                   for t in self.tasks)
