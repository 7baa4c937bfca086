"""``strategy: frozen``: the encoder never trains; item texts are encoded once and the towers and heads learn."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmrec.strategies.components import Strategy, StrategyHooks


class FrozenStrategy(Strategy):
    name: Literal["frozen"] = Field(description="Encoder never trains: item texts encoded once, heads/towers learn.")

    def attach(self, job, model, data, *, device, distributed=False) -> StrategyHooks:
        from lmrec.strategies.scopes import apply_scope

        apply_scope(model.encoder, "frozen")
        return FrozenHooks()


class FrozenHooks(StrategyHooks):
    def encoder_trains(self, epoch: int, step: int = 0) -> bool:
        return False  # no step encodes with gradient
