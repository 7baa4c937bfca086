"""Fine-tuning scopes: which encoder weights a run trains.

- ``full``: every encoder weight trains (the recipe encodes a few items per step with gradient);
- ``frozen``: the encoder never trains; item texts are encoded once and only towers/heads learn;
- ``lora``: low-rank adapters (``peft``) on the attention projections train, the pretrained weights stay fixed.

LoRA adapters are merged back into the backbone before export (``merge_lora``): a serving replica then loads a
plain Hugging Face backbone and never needs ``peft``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from lmrec.models.encoder import TextEncoder

Scope = Literal["full", "frozen", "lora"]

# BERT-family names of the attention projections; other families name theirs differently (see lora_targets)
_BERT_TARGETS = ("query", "key", "value")


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameter counts of a module."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def count_parameters(module: nn.Module) -> ParameterCount:
    """Count parameters with and without ``requires_grad`` (shared tensors counted once)."""
    seen: set[int] = set()
    trainable = total = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return ParameterCount(trainable, total)


def lora_targets(backbone: nn.Module, wanted: tuple[str, ...] = ("query", "value")) -> list[str]:
    """Module-name suffixes present in ``backbone`` among ``wanted`` (errors if none: LoRA would adapt nothing)."""
    names = {name.rsplit(".", 1)[-1] for name, mod in backbone.named_modules() if isinstance(mod, nn.Linear)}
    found = [w for w in wanted if w in names]
    if not found:
        raise ValueError(f"none of the LoRA targets {list(wanted)} is a Linear in {type(backbone).__name__}; "
                         f"its Linear layers are named {sorted(names)}")
    return found


def apply_lora(
    encoder: TextEncoder,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: tuple[str, ...] = ("query", "value"),
) -> TextEncoder:
    """Wrap ``encoder.backbone`` with LoRA adapters in place; only adapter weights keep ``requires_grad``."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=lora_targets(encoder.backbone, targets), bias="none")
    # get_peft_model freezes every base weight and leaves the lora_A / lora_B matrices trainable
    encoder.backbone = get_peft_model(encoder.backbone, config)
    return encoder


def has_lora(encoder: TextEncoder) -> bool:
    return any("lora_" in name for name, _ in encoder.named_parameters())


def merge_lora(encoder: TextEncoder) -> TextEncoder:
    """Fold the adapters into the base weights and drop ``peft``'s wrapper (export needs a plain backbone)."""
    if hasattr(encoder.backbone, "merge_and_unload"):
        encoder.backbone = encoder.backbone.merge_and_unload()
    return encoder


def apply_scope(encoder: TextEncoder, scope: Scope, **lora_kwargs) -> ParameterCount:
    """Set which encoder weights train for ``scope``; returns the encoder's parameter count afterwards.

    ``lora_kwargs`` go to ``apply_lora`` (rank, alpha, dropout, targets) and are ignored by other scopes.
    """
    if scope == "full":
        encoder.requires_grad_(True)
    elif scope == "frozen":
        encoder.requires_grad_(False)
    elif scope == "lora":
        if not has_lora(encoder):
            apply_lora(encoder, **lora_kwargs)
    else:
        raise ValueError(f"unknown fine-tuning scope {scope!r}; expected one of full, frozen, lora")
    return count_parameters(encoder)
