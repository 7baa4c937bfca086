"""Sparse ID rows: the user and item tables updated only where a step read them.

A two-tower's per-user and per-item rows (ID embeddings, rating and interest biases) grow with the user list and the
catalogue. With dense gradients every step zeroes, all-reduces and Adam-steps every row of them, however few rows
its batch read: at 160k users and 60k items that is ~14M parameters a step, a cost that grows with the data, not
with the batch. Marked sparse (``nn.Embedding.sparse``), those tables get gradients holding only the rows looked up;
``all_reduce_sparse_rows`` averages them over the ranks (DDP's reducer leaves them alone) and
``torch.optim.SparseAdam`` (a lazy Adam: the moments of a row move only when the row is read) steps them, while
AdamW keeps every other parameter.

``resolve_sparse_ids`` decides whether a run may use them, ``SparseRowsOptimizer`` steps the two optimizers as
one, and ``clip_grad_norm`` clips sparse and dense gradients together (torch's own clip has no sparse norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class SparseIdChoice:
    on: bool
    reason: str


def resolve_sparse_ids(setting: bool | str, *, streaming: bool, batch_bound: bool, engine: str) -> SparseIdChoice:
    """Whether the ID tables train with sparse gradients (``optim.sparse_id_grads``: True, False or 'auto').

    They need a batch-bound objective (the step names every row it reads; a softmax over every item reads them all,
    so its gradient is dense anyway) and the plain engine (DeepSpeed partitions dense gradients). 'auto' turns them
    on for streamed data, where the tables grow with data that does not fit one machine; in-memory runs keep dense
    AdamW on every row as before.
    """
    if setting is False:
        return SparseIdChoice(False, "optim.sparse_id_grads: false")
    blockers = []
    if not batch_bound:
        blockers.append("the objective reads every item row (a click softmax over all items, the related task, or "
                        "a strategy's own task): use rating + click with negatives: sampled")
    if engine != "ddp":
        blockers.append(f"engine {engine} steps dense gradients only: use scaling.engine: ddp")
    if blockers:
        if setting is True:
            raise ValueError("optim.sparse_id_grads: true, but " + "; ".join(blockers))
        return SparseIdChoice(False, "auto: off, " + blockers[0])
    if setting is True:
        return SparseIdChoice(True, "optim.sparse_id_grads: true")
    if streaming:
        return SparseIdChoice(True, "auto: streamed data, a step updates only the ID rows its batch read")
    return SparseIdChoice(False, "auto: in-memory data keeps dense AdamW on every ID row")


def make_sparse(tables: list[nn.Embedding]) -> list[nn.Parameter]:
    """Mark ``tables`` sparse (their lookups now give sparse gradients); returns the weights that train."""
    for table in tables:
        table.sparse = True
    return [t.weight for t in tables if t.weight.requires_grad]


class SparseRowsOptimizer:
    """AdamW over the dense parameters and SparseAdam over the sparse ID tables, stepped as one optimizer.

    ``param_groups`` lists both optimizers' groups (dense first), so the LR schedule and strategy hooks that set
    group LRs reach the ID rows too; ``state_dict`` holds both (checkpoints resume either)."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer) -> None:
        self.dense, self.sparse = dense, sparse

    @property
    def param_groups(self) -> list[dict]:
        return self.dense.param_groups + self.sparse.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for p in (p for g in self.sparse.param_groups for p in g["params"]):
            if p.grad is not None and not p.grad.is_sparse:
                raise RuntimeError("a sparse ID table got a dense gradient: something read its whole weight during "
                                   "the step (turn optim.sparse_id_grads off for this objective)")
        self.dense.step()
        self.sparse.step()

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"dense", "sparse"}:
            raise ValueError("this checkpoint's optimizer has no sparse ID rows: resume it with the "
                             "optim.sparse_id_grads it was written with")
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


def all_reduce_sparse_rows(params: list[nn.Parameter]) -> None:
    """Average the sparse gradients of ``params`` over the ranks with dense collectives: every rank all-gathers the
    others' row indices and values (padded to the longest) and sums them locally. The reducer of DDP leaves these
    parameters alone (``ddp_ignored``): a 25M-row run through its sparse all-reduce (gloo) aborted on a corrupted
    heap after ~850 steps, and NCCL has no sparse all-reduce at all. A rank without a gradient for a table sends no
    rows but still takes part."""
    if not params or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    grads = [p.grad.coalesce() if p.grad is not None else None for p in params]
    # every table's row count from every rank in one collective
    mine = torch.tensor([0 if g is None else g._nnz() for g in grads], dtype=torch.long, device=params[0].device)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    per_table = torch.stack(gathered, 1).tolist()  # [table][rank]
    for p, grad, counts in zip(params, grads, per_table):
        rows = grad._indices()[0] if grad is not None else torch.zeros(0, dtype=torch.long, device=p.device)
        values = grad._values() if grad is not None else p.new_zeros((0, *p.shape[1:]))
        width = max(counts)
        if width == 0:
            continue
        pad = width - len(rows)
        rows = torch.cat([rows, rows.new_zeros(pad)])
        values = torch.cat([values, values.new_zeros((pad, *values.shape[1:]))])
        all_rows = [torch.empty_like(rows) for _ in range(world)]
        all_values = [torch.empty_like(values) for _ in range(world)]
        dist.all_gather(all_rows, rows)
        dist.all_gather(all_values, values)
        index = torch.cat([r[:n] for r, n in zip(all_rows, counts)])[None]
        summed = torch.cat([v[:n] for v, n in zip(all_values, counts)]) / world
        p.grad = torch.sparse_coo_tensor(index, summed, p.shape).coalesce()


def ddp_ignored(module: nn.Module, params: list[nn.Parameter]) -> None:
    """Tell DDP (before it wraps ``module``) to leave ``params`` to ``all_reduce_sparse_rows``."""
    ids = {id(p) for p in params}
    names = [name for name, p in module.named_parameters() if id(p) in ids]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse gradients (coalesced, their values counted once)."""
    dense, sparse = [], []
    for p in parameters:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            sparse.append(p.grad)
        else:
            dense.append(p)
    if not sparse:
        return torch.nn.utils.clip_grad_norm_(dense, max_norm)
    norms = [torch.linalg.vector_norm(p.grad) for p in dense] + [torch.linalg.vector_norm(g._values()) for g in sparse]
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in dense:
        p.grad.mul_(coef.to(p.grad.dtype))
    for g in sparse:
        g._values().mul_(coef.to(g.dtype))  # the coalesced tensor's own values, in place
    return total
