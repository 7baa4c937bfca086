"""Typed settings of each transfer strategy: the ``strategy`` section of ``TrainSpec``.

One closed set of names (``name`` is the discriminator); each strategy has its own fields and forbids unknown
keys, so ``strategy: {name: lora, rnak: 8}`` fails before any compute is spent.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from lmrec.config.base import StrictModel


class FullStrategy(StrictModel):
    name: Literal["full"] = Field("full", description="Fine-tune the whole encoder as ``optim`` says (the default).")


class FrozenStrategy(StrictModel):
    name: Literal["frozen"] = Field(description="Encoder never trains: item texts encoded once, heads/towers learn.")


class LoraStrategy(StrictModel):
    name: Literal["lora"] = Field(description="Low-rank adapters (peft) on attention projections; base frozen.")
    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha (update scaled by alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    targets: list[str] = Field(["query", "value"], min_length=1, description="Linear layer names to adapt.")


class LayerSharingStrategy(StrictModel):
    name: Literal["layer_sharing"] = Field(description="Student encoder = embeddings + bottom k layers of a teacher.")
    layers: int = Field(3, ge=1, description="Blocks the student keeps (from the bottom).")
    teacher_artifact: str | None = Field(
        None, description="Two-tower artifact whose fine-tuned encoder is cut; None = model.encoder (pretrained).")


class ProgressiveUnfreezingStrategy(StrictModel):
    name: Literal["progressive_unfreezing"] = Field(description="Heads first, then encoder blocks top-down.")
    every: int = Field(1, ge=1, description="Epochs (or steps) per stage: one more block unfreezes each stage.")
    unit: Literal["epoch", "step"] = Field("epoch", description="What ``every`` counts.")
    decay: float = Field(0.8, gt=0, le=1, description="LR factor per block going down (discriminative LRs).")
    start_with_heads: bool = Field(True, description="Stage 0 trains the heads only.")


class CurriculumStrategy(StrictModel):
    name: Literal["curriculum"] = Field(description="Easy-to-hard sampling with a growing pool.")
    difficulty: Literal["baseline_loss", "rating_deviation", "item_popularity", "text_length"] = Field(
        "baseline_loss", description="Per-example difficulty (see lmrec.strategies.curriculum).")
    pacing: Literal["linear", "root", "step"] = Field("root", description="How the pool grows.")
    start: float = Field(0.3, gt=0, le=1, description="Share of the easiest rows in epoch 0's pool.")
    full_at_epoch: int = Field(3, ge=0, description="Epoch from which the pool is all rows.")


class DistillationStrategy(StrictModel):
    name: Literal["distillation"] = Field(description="loss_student + weight * loss_kd against a teacher artifact.")
    teacher_artifact: str = Field(description="Folder of the teacher's two-tower artifact (same dataset and split).")
    weight: float = Field(1.0, gt=0, description="λ: weight of the distillation term.")
    rating_weight: float = Field(1.0, ge=0, description="MSE to the teacher's ratings inside loss_kd.")
    scores_weight: float = Field(1.0, ge=0, description="T²·KL on item-score softmaxes inside loss_kd.")
    temperature: float = Field(2.0, gt=0, description="Distillation temperature T.")
    student_layers: int | None = Field(
        None, ge=1, description="Student encoder = the teacher's bottom k layers (None = model.encoder as given).")

    @model_validator(mode="after")
    def _some_kd(self) -> "DistillationStrategy":
        if self.rating_weight == 0 and self.scores_weight == 0:
            raise ValueError("distillation needs rating_weight or scores_weight > 0")
        return self


class LabelPropagationStrategy(StrictModel):
    name: Literal["label_propagation"] = Field(description="Propagated labels as extra, down-weighted targets.")
    graph: Literal["co_rating", "text_history"] = Field(
        "co_rating", description="User-user kNN graph from co-rating similarity or from history text embeddings.")
    k: int = Field(30, ge=1, description="Neighbours per user.")
    alpha: float = Field(0.8, ge=0, lt=1, description="Propagation strength in Y <- αSY + (1-α)Y0.")
    weight: float = Field(0.1, gt=0, description="Weight of the propagated-label loss (down-weighting).")
    per_user: int = Field(8, ge=1, description="Extra targets per batch user (most supported unrated items).")


class MetaLearningStrategy(StrictModel):
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


StrategySpec = Annotated[
    Union[FullStrategy, FrozenStrategy, LoraStrategy, LayerSharingStrategy, ProgressiveUnfreezingStrategy,
          CurriculumStrategy, DistillationStrategy, LabelPropagationStrategy, MetaLearningStrategy],
    Field(discriminator="name"),
]

STRATEGY_NAMES = ("full", "frozen", "lora", "layer_sharing", "progressive_unfreezing", "curriculum", "distillation",
                  "label_propagation", "meta_learning")
