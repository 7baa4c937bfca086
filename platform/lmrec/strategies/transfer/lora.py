"""``strategy: lora``: low-rank adapters (peft) on the encoder's attention projections, the base frozen; export
merges them into the weights, so the artifact is a plain Hugging Face encoder (``lmrec.strategies.scopes``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmrec.strategies.components import Strategy, StrategyHooks, require_trainable_encoder


class LoraStrategy(Strategy):
    name: Literal["lora"] = Field(description="Low-rank adapters (peft) on attention projections; base frozen.")
    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha (update scaled by alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    targets: list[str] = Field(["query", "value"], min_length=1, description="Linear layer names to adapt.")

    def check_job(self, job) -> None:
        require_trainable_encoder(self.name, job)

    def attach(self, job, model, data, *, device, distributed=False) -> StrategyHooks:
        from lmrec.strategies.scopes import apply_scope

        apply_scope(model.encoder, "lora", rank=self.rank, alpha=self.alpha, dropout=self.dropout,
                    targets=tuple(self.targets))
        return LoraHooks()


class LoraHooks(StrategyHooks):
    def before_export(self, model) -> None:
        from lmrec.strategies.scopes import merge_lora

        merge_lora(model.encoder)  # Serve then needs no peft
