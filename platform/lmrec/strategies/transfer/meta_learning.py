"""``strategy: meta_learning``: first-order MAML / Reptile over per-user tasks. Its loop differs in shape from the
two-tower recipe's (batches of users, each split into support and query), so it does not attach to the recipe:
``train_local`` and the Ray worker route it to ``lmrec.training.meta_job``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmrec.strategies.components import Strategy, StrategyHooks


class MetaLearningStrategy(Strategy):
    name: Literal["meta_learning"] = Field(description="First-order MAML / Reptile over per-user tasks (own loop).")
    algorithm: Literal["fomaml", "reptile"] = Field("fomaml", description="Outer update rule.")
    dim: int = Field(64, ge=2, description="Width of the fast user vector and item vectors.")
    inner_steps: int = Field(5, ge=1, description="Gradient steps on a support set.")
    inner_lr: float = Field(0.5, gt=0, description="Inner-loop step size.")
    click_weight: float = Field(0.3, ge=0, description="Weight of the softmax 'which items' term in a task loss.")
    l2: float = Field(0.01, ge=0, description="Inner-loop pull of the fast parameters toward their aggregate init.")
    max_support: int = Field(10, ge=1, description="Support ratings per training task: k ~ U{1..max_support}.")
    query_size: int = Field(20, ge=1, description="Query ratings per training task.")
    tasks_per_batch: int = Field(32, ge=1, description="Users per outer step.")
    lr: float = Field(3e-3, gt=0, description="Adam LR of the slow parameters.")
    shots: list[int] = Field([1, 3, 5, 10], min_length=1, description="Support sizes evaluated on cold users.")

    def attach(self, job, model, data, *, device, distributed=False) -> StrategyHooks:
        raise ValueError("strategy meta_learning runs its own loop (lmrec.training.meta_job), not the two-tower "
                         "recipe")
