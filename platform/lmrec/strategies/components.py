"""How a transfer strategy plugs into the two-tower recipe: the base of its spec and the hooks the recipe calls.

A strategy is one module. Its spec class (a ``Strategy``: the fields of the job spec's ``strategy:`` section,
unknown keys forbidden) also says how it attaches to the recipe (``lmrec.training.recipe``), which asks it for:

- ``student_encoder(job)``: the encoder to build the model around (layer sharing, a distilled student), or None;
- ``attach(job, model, data, device=, distributed=)``: adapt the built model (freeze it, add adapters) after its
  data buffers are set, and return its ``StrategyHooks``;
- ``check_job(job)``: checks against the rest of the job spec, run when the spec validates (raise ``ValueError``).

The hooks are what the recipe's loop, the same for every strategy, calls. Subclass ``StrategyHooks`` and override
only what the strategy changes; the defaults change nothing:

- ``param_groups(default, model, lr_heads)``: optimizer groups (progressive unfreezing splits the encoder per block);
- ``on_epoch_start(optimizer, epoch)`` / ``on_step(optimizer, step)``: schedule changes (unfreezing);
- ``encoder_trains(epoch, step)``: whether this step encodes items with gradient at all;
- ``batches(epoch, default, batch_size, rank, world_size)``: the sampler (curriculum), else ``default``;
- ``extra_tasks()``: losses added to the multi-task objective (distillation, propagated labels);
- ``epoch_logs(optimizer)``: values added to (or replacing) an epoch's training logs;
- ``before_export(model)``: make the model servable (merge LoRA adapters).

The built-in strategies are ``lmrec.strategies.transfer.<name>``, listed once in ``lmrec.strategies.spec``; a
strategy outside lmrec is named by import path (``strategy: {name: "my_pkg.my_module:MyStrategy"}``). This module
imports no torch: job specs validate without it. Meta-learning does not attach here: its loop differs in shape
(``lmrec.training.meta_job``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol, runtime_checkable

from pydantic import Field

from lmrec.config.base import StrictModel

if TYPE_CHECKING:
    import torch

    from lmrec.models.encoder import TextEncoder


@runtime_checkable
class StrategyHooks(Protocol):
    """What one strategy changes in a recipe run; every hook defaults to changing nothing (the ``full`` run)."""

    def param_groups(self, default: list[dict], model, lr_heads: float) -> list[dict]:
        """The optimizer's groups; ``default`` groups without an ``lr`` use ``lr_heads``."""
        return default

    def on_epoch_start(self, optimizer, epoch: int) -> bool:
        """Called before the epoch's first step; True when group LRs were (re)set (the LR schedule rebases)."""
        return False

    def on_step(self, optimizer, step: int) -> bool:
        """Called before global ``step``; True when group LRs were (re)set."""
        return False

    def encoder_trains(self, epoch: int, step: int = 0) -> bool:
        """False when this step needs no encoder pass with gradient (frozen, or unfreezing not there yet)."""
        return True

    def batches(self, epoch: int, default: Iterable[dict], batch_size: int, rank: int = 0,
                world_size: int = 1) -> Iterable[dict] | Iterator[dict]:
        """This rank's batches for ``epoch`` (every rank holds the whole ``PreparedData``), else ``default``."""
        return default

    def extra_tasks(self) -> list:
        """Tasks (``lmrec.models.tasks``, each with its own weight) added to the multi-task objective."""
        return []

    def epoch_logs(self, optimizer) -> dict[str, float]:
        """Values merged into the epoch's training logs after its last step."""
        return {}

    def before_export(self, model) -> None:
        """Make ``model`` servable before the artifact is written."""


class NoHooks(StrategyHooks):
    """The hooks of a strategy that only changes the model it is given (full, layer sharing)."""


@dataclass
class ExtraTasks(StrategyHooks):
    """The hooks of a strategy that adds losses to the objective and changes nothing else."""

    tasks: list = field(default_factory=list)

    def extra_tasks(self) -> list:
        return list(self.tasks)


class Strategy(StrictModel):
    """Base of a strategy's spec (see the module docstring); a subclass adds its own fields and hooks."""

    name: str = Field(description="A built-in strategy, or 'package.module:Class' naming one outside lmrec.")

    def student_encoder(self, job) -> TextEncoder | None:
        """The encoder the recipe builds the model around instead of ``job.model``'s (None = the usual one)."""
        return None

    def check_job(self, job) -> None:
        """Checks against the whole job spec (a ``TrainSpec``) when it validates; raise ``ValueError``."""

    def attach(self, job, model, data, *, device: torch.device, distributed: bool = False) -> StrategyHooks:
        """Adapt ``model`` (data buffers set; ``data`` is the run's ``PreparedData``) and return the hooks.

        ``distributed``: the engine wraps the model (DDP with >1 rank, or DeepSpeed), which fixes the set of
        gradient-carrying parameters at wrap time: change what trains through LRs, not ``requires_grad``.
        """
        return NoHooks()


def require_trainable_encoder(name: str, job) -> None:
    """For a strategy whose point is training the encoder: the job's ``optim`` must let it train."""
    if not job.optim.finetune_encoder:
        raise ValueError(f"strategy {name} trains the encoder: it needs optim.lr_encoder > 0 and "
                         f"optim.items_encoded_per_step > 0")
