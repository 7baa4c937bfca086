"""``strategy: meta_learning``: first-order MAML / Reptile over per-user tasks. Its loop differs in shape from the
two-tower recipe's (batches of users, each split into support and query), so it does not attach to the recipe:
``train_local`` and the Ray worker route it to ``lmrec.training.meta_job``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmrec.strategies.components import Strategy, StrategyHooks


# the job settings the meta-learning loop reads besides its own section (check_job)
USED_MODEL = ("encoder", "encoder_init", "pooling", "max_length")
USED_OPTIM = ("epochs", "encode_batch_size")


class MetaLearningStrategy(Strategy):
    name: Literal["meta_learning"] = Field(description="First-order MAML / Reptile over per-user tasks (own loop).")
    algorithm: Literal["fomaml", "reptile"] = Field("fomaml", description="Outer update rule.")
    dim: int = Field(64, ge=2, description="Width of the fast user vector and item vectors.")
    inner_steps: int = Field(3, ge=1, description="Gradient steps on a support set.")
    inner_lr: float = Field(0.5, gt=0, description="Inner-loop step size.")
    click_weight: float = Field(3.0, ge=0, description="Weight of the softmax 'which items' term in a task loss.")
    l2: float = Field(1.0, ge=0, description="Inner-loop pull of the fast parameters toward their aggregate init.")
    max_support: int = Field(10, ge=1, description="Support ratings per training task: k ~ U{1..max_support}.")
    query_size: int = Field(64, ge=1, description="Query ratings per training task.")
    tasks_per_batch: int = Field(32, ge=1, description="Users per outer step.")
    lr: float = Field(3e-3, gt=0, description="Adam LR of the slow parameters.")
    shots: list[int] = Field([1, 3, 5, 10], min_length=1, description="Support sizes evaluated on cold users.")
    # defaults: the settings benchmarks/meta_cold_start.py measured; lmrec.strategies.meta_loop.MetaSettings
    # takes its defaults from here (one set)

    def check_job(self, job) -> None:
        """No silently ignored settings: this loop reads the encoder settings of ``model``, ``optim.epochs`` and
        ``optim.encode_batch_size``, and its own section; anything else set in ``model``, ``optim`` or ``tasks``
        would be ignored, so it is an error."""
        used = {"model": set(USED_MODEL), "optim": set(USED_OPTIM), "tasks": set()}
        ignored = [f"{section}.{key}" for section, keep in used.items()
                   for key in sorted(getattr(job, section).model_fields_set - keep)]
        if ignored:
            raise ValueError(f"strategy meta_learning ignores {', '.join(ignored)}: remove them (its own settings "
                             "are under strategy: dim, inner_steps, click_weight, lr, ...)")

    def attach(self, job, model, data, *, device, distributed=False) -> StrategyHooks:
        raise ValueError("strategy meta_learning runs its own loop (lmrec.training.meta_job), not the two-tower "
                         "recipe")
