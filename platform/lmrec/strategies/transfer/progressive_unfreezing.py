"""``strategy: progressive_unfreezing``: heads first, then encoder blocks top-down, one more per ``every`` epochs
(or steps), with discriminative LRs (``lmrec.strategies.unfreezing``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from lmrec.strategies.components import Strategy, StrategyHooks, require_trainable_encoder

if TYPE_CHECKING:
    from lmrec.strategies.unfreezing import ProgressiveUnfreezing

log = logging.getLogger(__name__)


class ProgressiveUnfreezingStrategy(Strategy):
    name: Literal["progressive_unfreezing"] = Field(description="Heads first, then encoder blocks top-down.")
    every: int = Field(1, ge=1, description="Epochs (or steps) per stage: one more block unfreezes each stage.")
    unit: Literal["epoch", "step"] = Field("epoch", description="What ``every`` counts.")
    decay: float = Field(0.8, gt=0, le=1, description="LR factor per block going down (discriminative LRs).")
    start_with_heads: bool = Field(True, description="Stage 0 trains the heads only.")

    def check_job(self, job) -> None:
        require_trainable_encoder(self.name, job)

    def attach(self, job, model, data, *, device, distributed=False) -> StrategyHooks:
        from lmrec.strategies.unfreezing import ProgressiveUnfreezing

        schedule = ProgressiveUnfreezing(model, [], job.optim.lr_encoder, self.decay, self.every,
                                         self.start_with_heads, freeze_by="lr" if distributed else "requires_grad")
        return UnfreezingHooks(schedule, self.unit)


@dataclass
class UnfreezingHooks(StrategyHooks):
    schedule: ProgressiveUnfreezing
    unit: str  # what the schedule's stage counts: "epoch" or "step"

    def param_groups(self, default: list[dict], model, lr_heads: float) -> list[dict]:
        """The recipe's groups with the encoder's replaced by one group per block (the schedule sets their LRs)."""
        from lmrec.strategies.unfreezing import ParamGroup

        enc = {id(p) for p in model.encoder.parameters()}
        heads = []
        for i, g in enumerate(default):
            params = [p for p in g["params"] if id(p) not in enc]
            if params:
                heads.append(ParamGroup(f"heads.{i}", params, g.get("lr", lr_heads), g.get("weight_decay")))
        self.schedule.head_groups = heads
        return self.schedule.groups()

    def on_epoch_start(self, optimizer, epoch: int) -> bool:
        if self.unit != "epoch":
            return False
        names = self.schedule.apply(optimizer, epoch)
        log.info("epoch %d trains %s", epoch, ", ".join(names))
        return True

    def on_step(self, optimizer, step: int) -> bool:
        if self.unit != "step":
            return False
        stage = self.schedule.stage
        names = self.schedule.apply(optimizer, step)
        if self.schedule.stage != stage:
            log.info("step %d trains %s", step, ", ".join(names))
        return True

    def encoder_trains(self, epoch: int, step: int = 0) -> bool:
        return self.schedule.encoder_trains(step if self.unit == "step" else epoch)

    def epoch_logs(self, optimizer) -> dict[str, float]:
        """The trainable set grows stage by stage: count the encoder blocks that train now."""
        return {"encoder_trainable_params": float(sum(
            p.numel() for g in optimizer.param_groups if str(g.get("name", "")).startswith("encoder.")
            and g["lr"] > 0 for p in g["params"] if p.requires_grad))}
