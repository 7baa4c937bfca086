"""The pieces a transfer strategy plugs into the two-tower recipe; the recipe's loop stays the same for all.

``build_student_encoder(spec)`` gives the encoder to build the model around (layer sharing, distilled student);
``StrategyComponents.attach(spec, model, data, ...)`` then adapts the built model and hands the recipe:

- ``param_groups(default)``: optimizer groups (progressive unfreezing splits the encoder per block);
- ``on_epoch_start(optimizer, epoch)`` / ``on_step(optimizer, step)``: schedule changes (unfreezing);
- ``encoder_trains(epoch)``: whether this epoch encodes items with gradient at all;
- ``batches(epoch, default, batch_size, rank, world_size)``: the sampler (curriculum), else ``default``;
- ``extra_tasks``: losses added to the multi-task objective (distillation, propagated labels);
- ``before_export(model)``: make the model servable (merge LoRA adapters).

Meta-learning is not here: its loop differs in shape (``lmrec.strategies.meta_loop``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch

from lmrec.models.encoder import TextEncoder
from lmrec.strategies.curriculum import CurriculumSampler, difficulty_scores
from lmrec.strategies.scopes import ParameterCount, apply_scope, count_parameters, merge_lora
from lmrec.strategies.unfreezing import ParamGroup, ProgressiveUnfreezing

log = logging.getLogger(__name__)


def build_student_encoder(spec) -> TextEncoder | None:
    """The encoder a strategy substitutes for ``spec.model``'s (None = build the usual one).

    layer_sharing: bottom ``layers`` of the teacher artifact's encoder, or of the pretrained ``model.encoder``;
    distillation with ``student_layers``: bottom layers of the teacher artifact's encoder.
    """
    from lmrec.models.encoder import build_encoder
    from lmrec.strategies.layer_sharing import student_from_artifact, truncate_encoder

    s = spec.strategy
    if s.name == "layer_sharing":
        if s.teacher_artifact:
            return student_from_artifact(s.teacher_artifact, s.layers)
        return truncate_encoder(build_encoder(spec.model.encoder, spec.model.pooling, spec.model.encoder_init),
                                s.layers)
    if s.name == "distillation" and s.student_layers:
        return student_from_artifact(s.teacher_artifact, s.student_layers)
    return None


def _history_text_embeddings(model) -> np.ndarray:
    """Each user's mean pooled item text over their training history (an encoder-derived user embedding)."""
    hist = model.history
    mask = (hist >= 0).float()
    text = model.item_text.float()[hist.clamp_min(0)]
    return ((text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)).cpu().numpy()


@dataclass
class StrategyComponents:
    """What one strategy contributes to a recipe run (see module docstring); empty for ``full``."""

    name: str = "full"
    unfreezing: ProgressiveUnfreezing | None = None
    unfreeze_unit: str = "epoch"
    sampler: CurriculumSampler | None = None
    extra_tasks: list = field(default_factory=list)
    frozen: bool = False
    encoder_count: ParameterCount | None = None

    @classmethod
    def attach(cls, spec, model, data, *, device: torch.device, distributed: bool = False) -> "StrategyComponents":
        """Adapt ``model`` for ``spec.strategy`` (after its data buffers are set) and return the components.

        ``distributed``: the engine wraps the model (DDP with >1 rank, or DeepSpeed), so unfreezing must work
        through LRs, not ``requires_grad`` (see ``lmrec.strategies.unfreezing``).
        """
        s = spec.strategy
        out = cls(name=s.name)
        if s.name == "frozen":
            apply_scope(model.encoder, "frozen")
            out.frozen = True
        elif s.name == "lora":
            apply_scope(model.encoder, "lora", rank=s.rank, alpha=s.alpha, dropout=s.dropout,
                        targets=tuple(s.targets))
        elif s.name == "progressive_unfreezing":
            out.unfreezing = ProgressiveUnfreezing(
                model, [], spec.optim.lr_encoder, s.decay, s.every, s.start_with_heads,
                freeze_by="lr" if distributed else "requires_grad",
            )
            out.unfreeze_unit = s.unit
        elif s.name == "curriculum":
            d = data
            diff = difficulty_scores(d.train, s.difficulty, d.n_users, d.n_items, item_lengths=d.item_lengths)
            out.sampler = CurriculumSampler(d.train, diff, s.pacing, s.start, s.full_at_epoch, seed=spec.seed)
        elif s.name == "distillation":
            from lmrec.strategies.distillation import DistillationTask, Teacher

            task = DistillationTask(Teacher.from_artifact(s.teacher_artifact, device), s.weight, s.rating_weight,
                                    s.scores_weight, s.temperature, spec.tasks.click.temperature)
            task.check_compatible(data.n_users, data.n_items)
            out.extra_tasks.append(task)
        elif s.name == "label_propagation":
            from lmrec.strategies.label_propagation import LabelPropagation, PropagatedLabelTask

            emb = _history_text_embeddings(model) if s.graph == "text_history" else None
            prop = LabelPropagation(k=s.k, alpha=s.alpha, user_embeddings=emb).fit(data.train, data.n_users,
                                                                                   data.n_items)
            log.info("label propagation: %d iterations to converge", prop.iterations_)
            out.extra_tasks.append(PropagatedLabelTask(prop, s.weight, s.per_user))
        elif s.name not in ("full", "layer_sharing"):
            raise ValueError(f"strategy {s.name!r} has no recipe components (meta_learning runs its own loop)")
        out.encoder_count = count_parameters(model.encoder)
        return out

    # ---- optimizer ----
    def param_groups(self, default: list[dict], model, lr_heads: float) -> list[dict]:
        """The recipe's groups, with the encoder group replaced by per-block groups when unfreezing.

        ``default`` groups without an ``lr`` use ``lr_heads`` (the optimizer default in the recipe).
        """
        if self.unfreezing is None:
            return default
        enc = {id(p) for p in model.encoder.parameters()}
        heads = []
        for i, g in enumerate(default):
            params = [p for p in g["params"] if id(p) not in enc]
            if params:
                heads.append(ParamGroup(f"heads.{i}", params, g.get("lr", lr_heads), g.get("weight_decay")))
        self.unfreezing.head_groups = heads
        return self.unfreezing.groups()

    def on_epoch_start(self, optimizer, epoch: int) -> bool:
        """Apply the epoch's stage; True when group LRs were (re)set (the LR schedule must rebase on them)."""
        if self.unfreezing is not None and self.unfreeze_unit == "epoch":
            names = self.unfreezing.apply(optimizer, epoch)
            log.info("epoch %d trains %s", epoch, ", ".join(names))
            return True
        return False

    def on_step(self, optimizer, step: int) -> bool:
        """Apply the stage of global ``step``; True when group LRs were (re)set."""
        if self.unfreezing is not None and self.unfreeze_unit == "step":
            stage = self.unfreezing.stage
            names = self.unfreezing.apply(optimizer, step)
            if self.unfreezing.stage != stage:
                log.info("step %d trains %s", step, ", ".join(names))
            return True
        return False

    def encoder_trains(self, epoch: int, step: int = 0) -> bool:
        """False when this epoch's steps need no encoder pass with gradient (frozen, or unfreezing not there yet)."""
        if self.frozen:
            return False
        if self.unfreezing is not None:
            return self.unfreezing.encoder_trains(step if self.unfreeze_unit == "step" else epoch)
        return True

    # ---- data ----
    def batches(self, epoch: int, default: Iterable[dict], batch_size: int, rank: int = 0,
                world_size: int = 1) -> Iterable[dict] | Iterator[dict]:
        """Curriculum batches for this rank (every rank holds the whole PreparedData), else ``default``."""
        if self.sampler is None:
            return default
        return self.sampler.iter_batches(epoch, batch_size, rank, world_size)

    # ---- export ----
    def before_export(self, model) -> None:
        """Merge LoRA adapters into the backbone so the artifact is a plain Hugging Face encoder."""
        merge_lora(model.encoder)
