"""``strategy: curriculum``: easy-to-hard sampling with a growing pool; the sampler replaces each epoch's batches
(``lmrec.strategies.curriculum``: every rank a disjoint, equally long shard of the pool)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from lmrec.strategies.components import Strategy, StrategyHooks

if TYPE_CHECKING:
    from lmrec.strategies.curriculum import CurriculumSampler


class CurriculumStrategy(Strategy):
    name: Literal["curriculum"] = Field(description="Easy-to-hard sampling with a growing pool.")
    difficulty: Literal["baseline_loss", "rating_deviation", "item_popularity", "text_length"] = Field(
        "baseline_loss", description="Per-example difficulty (see lmrec.strategies.curriculum).")
    pacing: Literal["linear", "root", "step"] = Field("root", description="How the pool grows.")
    start: float = Field(0.3, gt=0, le=1, description="Share of the easiest rows in epoch 0's pool.")
    full_at_epoch: int = Field(3, ge=0, description="Epoch from which the pool is all rows.")

    def attach(self, job, model, data, *, device, distributed=False) -> StrategyHooks:
        from lmrec.strategies.curriculum import CurriculumSampler, difficulty_scores

        diff = difficulty_scores(data.train, self.difficulty, data.n_users, data.n_items,
                                 item_lengths=data.item_lengths)
        return CurriculumHooks(CurriculumSampler(data.train, diff, self.pacing, self.start, self.full_at_epoch,
                                                 seed=job.seed))


@dataclass
class CurriculumHooks(StrategyHooks):
    sampler: CurriculumSampler

    def batches(self, epoch, default, batch_size, rank=0, world_size=1):
        return self.sampler.iter_batches(epoch, batch_size, rank, world_size)
