"""Progressive unfreezing with discriminative learning rates (ULMFiT, Howard & Ruder 2018).

Stage 0 trains only the heads (towers, biases, projections). Every ``every`` epochs (or steps) one more encoder
block is unfrozen, top block first, down to the embeddings. Each encoder group has its own LR: the top block gets
``lr_encoder``, each block below ``decay`` times the one above, the embeddings the smallest: lower layers hold
general features that a recommender objective should bend least.

Freezing works in one of two ways:
- ``"requires_grad"`` (single process): frozen weights get no gradient, so backward stops early and costs less;
- ``"lr"`` (DDP / DeepSpeed): every weight keeps ``requires_grad`` and a frozen group's LR is 0. Those engines fix
  the set of gradient-carrying parameters when they wrap the model, so flipping ``requires_grad`` later would
  leave the newly unfrozen weights out of the gradient all-reduce and let ranks diverge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from lmrec.strategies.layer_sharing import layer_stack

FreezeBy = Literal["requires_grad", "lr"]


@dataclass
class ParamGroup:
    """One optimizer param group: its name, parameters, and the LR it gets once unfrozen."""

    name: str
    params: list[nn.Parameter]
    lr: float
    weight_decay: float | None = None


def encoder_layer_groups(model: nn.Module, lr_encoder: float, decay: float) -> list[ParamGroup]:
    """Encoder parameters split top-down: ``layer.{n-1}``, ..., ``layer.0``, ``embeddings`` (+ anything else).

    ``model`` is a ``TwoTowerModel`` (or anything with ``.encoder.backbone``). Parameters outside the blocks
    (embeddings, a pooler) form the last group: the pooler is unused by mean/CLS pooling of hidden states.
    """
    backbone = model.encoder.backbone
    blocks = layer_stack(backbone)
    in_block: set[int] = set()
    groups = []
    for depth, index in enumerate(reversed(range(len(blocks)))):
        params = [p for p in blocks[index].parameters()]
        in_block.update(id(p) for p in params)
        groups.append(ParamGroup(f"encoder.layer.{index}", params, lr_encoder * decay**depth))
    rest = [p for p in backbone.parameters() if id(p) not in in_block]
    groups.append(ParamGroup("encoder.embeddings", rest, lr_encoder * decay ** len(blocks)))
    return groups


class ProgressiveUnfreezing:
    """Schedule over param groups: ``groups()`` feeds the optimizer, ``apply(optimizer, t)`` sets stage ``t``.

    Args:
        model: the two-tower model (its ``encoder`` is split into blocks).
        head_groups: the non-encoder param groups (always trainable).
        lr_encoder: LR of the top encoder block.
        decay: LR factor per block going down (0 < decay <= 1).
        every: epochs (or steps, whatever ``t`` counts) per stage.
        start_with_heads: stage 0 trains the heads only (else stage 0 already has the top block).
        freeze_by: see the module docstring.
    """

    def __init__(self, model: nn.Module, head_groups: list[ParamGroup], lr_encoder: float, decay: float = 0.8,
                 every: int = 1, start_with_heads: bool = True, freeze_by: FreezeBy = "requires_grad") -> None:
        if not 0 < decay <= 1 or every < 1:
            raise ValueError(f"need 0 < decay <= 1 and every >= 1, got decay={decay}, every={every}")
        if freeze_by not in ("requires_grad", "lr"):
            raise ValueError(f"freeze_by must be 'requires_grad' or 'lr', got {freeze_by!r}")
        self.head_groups = head_groups
        self.encoder_groups = encoder_layer_groups(model, lr_encoder, decay)
        self.every, self.start_with_heads, self.freeze_by = every, start_with_heads, freeze_by
        self.stage = -1

    @property
    def all_groups(self) -> list[ParamGroup]:
        return self.head_groups + self.encoder_groups

    def groups(self) -> list[dict]:
        """Optimizer param groups, heads first, then the encoder top-down; each carries its ``name``."""
        out = []
        for g in self.all_groups:
            group = {"params": g.params, "lr": g.lr, "name": g.name}
            if g.weight_decay is not None:
                group["weight_decay"] = g.weight_decay
            out.append(group)
        return out

    def unfrozen_encoder_groups(self, t: int) -> int:
        """How many encoder groups (from the top) train at time ``t``."""
        stage = t // self.every
        n = stage if self.start_with_heads else stage + 1
        return max(0, min(n, len(self.encoder_groups)))

    def encoder_trains(self, t: int) -> bool:
        return self.unfrozen_encoder_groups(t) > 0

    def apply(self, optimizer, t: int) -> list[str]:
        """Set requires_grad / LR of every group for time ``t``; returns the names of the trainable groups.

        ``optimizer`` must have been built from ``groups()`` (groups matched by their ``name``).
        """
        n = self.unfrozen_encoder_groups(t)
        trainable = {g.name for g in self.head_groups} | {g.name for g in self.encoder_groups[:n]}
        by_name = {g.name: g for g in self.all_groups}
        for group in optimizer.param_groups:
            spec = by_name.get(group.get("name"))
            if spec is None:
                continue
            on = spec.name in trainable
            group["lr"] = spec.lr if on or self.freeze_by == "requires_grad" else 0.0
            if self.freeze_by == "requires_grad":
                for p in group["params"]:
                    p.requires_grad_(on)
        self.stage = t // self.every
        return [g.name for g in self.all_groups if g.name in trainable]
