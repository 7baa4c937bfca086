"""``TrainSpec``: everything one two-tower training run needs, typed and checked before any compute is spent."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmrec.config.base import StrictModel
from lmrec.config.incremental import IncrementalSpec
from lmrec.config.scaling import ScalingSpec
from lmrec.data.registry import DATASET_NAMES
from lmrec.data.source import DataSource
from lmrec.data.splits import ML100KCanonicalSpec, SplitSpec, split_spec_from_name
from lmrec.strategies.spec import StrategySpec
from lmrec.strategies.transfer.full import FullStrategy

# strategies whose setup reads every training row (samplers, graphs, per-user splits): not on streamed data
STREAMING_REFUSED = ("curriculum", "label_propagation", "meta_learning")
ValMetric = Literal["val_rmse", "val_mae", "val_ndcg@10", "val_recall@10"]


class DataSpec(StrictModel):
    dataset: str | None = Field(
        None, description="Dataset name for lmrec.data.registry.load_dataset; none given = ml-100k, unless "
        "data.source names your own files.",
    )
    source: DataSource | None = Field(
        None, description="Your own files instead of a named dataset (lmrec.data.source): interactions, items with "
        "text_columns, optional users; checked by `lmrec data validate SPEC`.",
    )
    split: SplitSpec = Field(
        default_factory=lambda: ML100KCanonicalSpec(name="u1"),
        description="How to split (lmrec.data.splits): a mapping with a kind, or a name `lmrec baselines --split` "
        "takes (u1..ub are ML-100K's canonical splits; per-user-80-20, random-80-20, temporal-80-20, leave-last-1, "
        "cold-items-20 use seed 42, as there).",
    )
    valid_from_train: float = Field(
        0.05, ge=0, lt=0.5,
        description="When the split has no valid part, this fraction of train rows (seeded) becomes valid (0 = none).",
    )
    valid_by: Literal["rows", "items"] = Field(
        "rows", description="What valid_from_train holds out: a fraction of the training rows, or of the training "
        "items with all their rows (validation then ranks only those unseen items: model selection for cold-start "
        "items measures what the cold-item test measures).",
    )
    item_template: str | None = Field(
        None, description="Item text template (lmrec.data.text syntax); None = the dataset's default template "
        "(data.source: its text_columns as sentences, '[{title}.] [{description}.]').",
    )
    user_template: str | None = Field(
        None, description="User text template; None = the dataset's default (only read when model.user_text is on)."
    )
    max_users: int | None = Field(None, ge=1, description="Keep only the first N users (tiny CI slices).")
    max_items: int | None = Field(None, ge=1, description="Keep only the first N items (tiny CI slices).")
    streaming: bool = Field(
        False, description="Read the interactions with Ray Data and shard them to the workers; the driver never "
        "holds them (lmrec.data.stream). data.source is read as it is; a named dataset is first written to the "
        "cache as Parquet (lmrec.data.as_files). Needs a random split; validation and test rank eval_users users.",
    )
    eval_users: int = Field(
        2000, ge=1, description="streaming: users (seeded sample) whose valid and test rows are evaluated.",
    )

    @field_validator("split", mode="before")
    @classmethod
    def _split_by_name(cls, value):
        return split_spec_from_name(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _data_and_split_agree(self) -> "DataSpec":
        if self.source is not None and self.dataset is not None:
            raise ValueError("give data.dataset (a named dataset) or data.source (your own files), not both")
        if self.source is None and self.dataset is None:
            self.dataset = "ml-100k"
        if self.source is not None and "split" not in self.model_fields_set:
            raise ValueError("data.source needs a data.split (e.g. per-user-80-20; the default u1 is ML-100K's)")
        data = f"data.source ({self.source.name})" if self.source is not None else f"dataset {self.dataset!r}"
        # a named dataset other than ML-100K; a dataset built in code (Dataset.build) is not known here
        other = self.source is not None or (self.dataset in DATASET_NAMES and self.dataset != "ml-100k")
        if isinstance(self.split, ML100KCanonicalSpec) and other:
            raise ValueError(f"split {self.split.name} is one of ML-100K's canonical splits (u1..ub): it does not "
                             f"apply to {data}; use another, e.g. per-user-80-20")
        if self.source is not None and self.item_template is None:
            self.item_template = self.source.default_item_template()  # shown in the resolved spec and manifest
        if self.streaming:
            if getattr(self.split, "kind", None) != "random":
                raise ValueError("data.streaming needs split kind 'random' (each row's part is a hash of the row; "
                                 "the other splits need a global order)")
            if self.valid_by != "rows" or self.max_users is not None or self.max_items is not None:
                raise ValueError("data.streaming takes neither valid_by: items nor max_users / max_items")
        return self


class ModelSpec(StrictModel):
    encoder: str = Field("default", description="HF hub name or local path; 'default' = bundled all-MiniLM-L6-v2.")
    encoder_init: Literal["pretrained", "random-tiny"] = Field(
        "pretrained", description="'random-tiny' = 2-layer 32-wide BERT with the encoder's tokenizer (tests, probes)."
    )
    pooling: Literal["auto", "mean", "cls", "max"] = Field(
        "mean", description="How token states become one text vector. 'auto' = as the encoder's "
        "sentence-transformers folder declares: its pooling mode, L2 normalisation and query/passage prompts "
        "(user texts are queries, item texts passages; mean pooling when it declares nothing). A named mode pools "
        "the raw text that way, unnormalised.",
    )
    dim: int = Field(64, ge=2, description="Width of user/item vectors.")
    max_length: int = Field(32, ge=4, le=512, description="Token limit per item/user text.")
    item_id_embeddings: bool = Field(True, description="Add an item-ID embedding (gated off for unseen items).")
    user_id_embeddings: bool = Field(True, description="Add a user-ID embedding to the user tower.")
    user_tower: Literal["mean", "attention"] = Field("mean", description="Pooling over the user's history items.")
    user_text: bool = Field(False, description="Add a projection of the encoded user text to the user tower.")
    max_history: int = Field(256, ge=1, description="Most recent history items pooled per user.")
    interest_bias: bool = Field(
        False,
        description="Add a per-item term to the interest score: item popularity. Its text part is a ridge fit of "
        "log popularity on the item text (fixed; an unseen item is ranked with it), its item-ID part the seen items' "
        "residual, trained by the click softmax.",
    )
    interest_prior: Literal["fixed", "refit"] = Field(
        "fixed", description="When a fine-tuned encoder re-encodes the catalogue: keep the first fit of the text "
        "popularity prior (the encoder learns to follow it) or refit it on the new item vectors (warm items keep "
        "their total term; unseen items' priors then drift upward and crowd warm rankings, see docs/strategies.md).",
    )
    rating_user: Literal["id", "tower"] = Field(
        "id", description="User factor of the rating head: ID (+ user text) part only, or the whole user tower."
    )


class RatingTaskSpec(StrictModel):
    weight: float = Field(1.0, ge=0, description="Weight of the rating MSE in the total loss (0 = off).")
    l2: float = Field(0.12, ge=0, description="Per-rating L2 on the user/item vectors and biases the head uses.")
    id_l2: float = Field(0.06, ge=0, description="Extra per-rating L2 on the item-ID rows (text part is the prior).")


class ClickTaskSpec(StrictModel):
    weight: float = Field(0.5, ge=0, description="Weight of the implicit softmax loss (0 = off).")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature over cosine scores.")
    positive_threshold: float | None = Field(None, description="Min rating that counts as a positive (None = all).")
    id_dropout: float = Field(0.5, ge=0, lt=1, description="Chance to drop an item's ID part so text learns to rank.")
    max_rows: int = Field(256, ge=1, description="Positives per step in the softmax over all warm items (cost cap).")
    negatives: Literal["all", "sampled"] = Field(
        "all", description="Softmax candidates: every warm item, or the step's positives plus num_negatives items "
        "sampled by training popularity with the log-Q correction (cost follows the sample: large catalogues).",
    )
    num_negatives: int = Field(1024, ge=1, description="Items sampled per step with negatives: sampled.")


class RelatedTaskSpec(StrictModel):
    weight: float = Field(0.1, ge=0, description="Weight of the item-relatedness contrastive loss (0 = off).")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature over cosine scores.")
    max_rows: int = Field(256, ge=1, description="Anchor items per step (cost cap).")


class TasksSpec(StrictModel):
    rating: RatingTaskSpec = Field(default_factory=RatingTaskSpec, description="Explicit rating regression.")
    click: ClickTaskSpec = Field(default_factory=ClickTaskSpec, description="Implicit interest (ranking).")
    related: RelatedTaskSpec = Field(default_factory=RelatedTaskSpec, description="Co-consumed items close.")

    @model_validator(mode="after")
    def _one_task_on(self) -> "TasksSpec":
        if self.rating.weight == 0 and self.click.weight == 0 and self.related.weight == 0:
            raise ValueError("every task weight is 0: nothing to train")
        return self


class OptimSpec(StrictModel):
    epochs: int = Field(10, ge=1, description="Passes over the training interactions.")
    batch_size: int = Field(1024, ge=1, description="Interactions per optimizer step (per worker).")
    lr_heads: float = Field(3e-3, gt=0, description="AdamW LR of embeddings, projections and heads.")
    lr_encoder: float = Field(2e-5, ge=0, description="AdamW LR of the text encoder (0 = frozen encoder).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay (not on ID rows/biases).")
    items_encoded_per_step: int = Field(
        32, ge=0, description="Unique items of a step re-encoded with gradient (0 = frozen: precomputed text only).",
    )
    refresh_every_epochs: int = Field(1, ge=0, description="Re-encode all item texts every N epochs (0 = never).")
    encode_batch_size: int = Field(256, ge=1, description="Rows per no-grad encoder pass (cache refresh, export).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="'cosine' decays every LR to 0 over epochs x steps (settles the noisy ID rows)."
    )
    encode_items: Literal["batch", "catalog"] = Field(
        "batch", description="Rows encoded with gradient per step: up to items_encoded_per_step of the batch's "
        "items ('batch'), or every item of the catalogue ('catalog': no stale negatives; for catalogues that fit).",
    )
    encoder_dropout: bool = Field(
        False, description="Dropout inside the encoder while it trains. Off: rows encoded with gradient match the "
        "eval-mode cache they are scored against (train-mode rows were a fresh-vs-cached cue).",
    )
    encoder_start_epoch: int = Field(
        0, ge=0, description="Epochs that train the heads on the frozen encoder before it unfreezes (two-stage).",
    )
    encoder_warmup_steps: int = Field(
        0, ge=0, description="Linear warm-up of the encoder LR over this many steps once it unfreezes.",
    )
    layer_decay: float = Field(
        1.0, gt=0, le=1, description="Layer-wise LR decay: each encoder block gets this factor of the one above.",
    )
    min_steps_per_epoch: int = Field(
        8, ge=1, description="Batches shrink (per worker) so an epoch takes at least this many optimizer steps.",
    )
    grad_clip: float = Field(1.0, ge=0, description="Max global grad norm (0 = no clipping).")
    log_every_steps: int = Field(20, ge=1, description="Progress log period in steps.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute the training encoder's block activations in backward instead of keeping "
        "them: less memory (larger encoders, more items per step) for about a third more encoder compute.",
    )
    compile: bool = Field(
        False, description="torch.compile the training encoder's forward (dynamic shapes): a one-off compile, "
        "then faster steps on a GPU; needs a working compiler toolchain (Inductor).",
    )
    sparse_id_grads: bool | Literal["auto"] = Field(
        "auto", description="Sparse gradients for the ID tables (user/item embeddings and biases), stepped by a lazy "
        "Adam (SparseAdam): a step updates and all-reduces only the rows its batch read. Needs rating + click with "
        "negatives: sampled and the ddp engine. 'auto': on for streamed data (data.streaming) where those hold.",
    )

    @model_validator(mode="after")
    def _encoder_options_need_a_training_encoder(self) -> "OptimSpec":
        asked = [name for name in ("gradient_checkpointing", "compile") if getattr(self, name)]
        if asked and not self.finetune_encoder:
            raise ValueError(f"optim.{' and optim.'.join(asked)} apply to an encoder that trains; this one is frozen "
                             f"(lr_encoder > 0 and items_encoded_per_step > 0 or encode_items: catalog train it)")
        return self

    @property
    def finetune_encoder(self) -> bool:
        return self.lr_encoder > 0 and (self.items_encoded_per_step > 0 or self.encode_items == "catalog")

    def step_batch_size(self, rows: int, world_size: int = 1) -> int:
        """Interactions per step and worker: ``batch_size``, smaller when that would give < min_steps_per_epoch."""
        shard = -(-rows // max(world_size, 1))
        return max(1, min(self.batch_size, -(-shard // self.min_steps_per_epoch)))


class EarlyStoppingSpec(StrictModel):
    metric: ValMetric = Field("val_rmse", description="Validation metric that picks the best epoch.")
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher is better.")
    patience: int = Field(3, ge=1, description="Epochs without improvement before stopping.")

    @model_validator(mode="after")
    def _mode_matches(self) -> "EarlyStoppingSpec":
        expected = "min" if self.metric in ("val_rmse", "val_mae") else "max"
        if self.mode != expected:
            raise ValueError(f"{self.metric} improves when it goes {'down' if expected == 'min' else 'up'}: "
                             f"mode must be {expected!r}")
        return self


class TrainSpec(StrictModel):
    name: str = Field("two-tower", description="Run name (artifact and checkpoint folders).")
    seed: int = Field(0, ge=0, description="Seed of model init, batch order and sampling.")
    data: DataSpec = Field(default_factory=DataSpec, description="Dataset, split and texts.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Encoder and towers.")
    tasks: TasksSpec = Field(default_factory=TasksSpec, description="Task heads and their loss weights.")
    optim: OptimSpec = Field(default_factory=OptimSpec, description="Optimizer and step shape.")
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec, description="Best-epoch rule.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Workers, resources, engine.")
    incremental: IncrementalSpec = Field(
        default_factory=IncrementalSpec, description="Fine-tuning a deployed artifact on new data (--from-artifact).")
    strategy: StrategySpec = Field(
        default_factory=FullStrategy, description="Transfer strategy: a built-in by name (lmrec.strategies.spec), or "
        "one outside lmrec by import path, name: 'package.module:Class' (that class validates the section).")

    @model_validator(mode="after")
    def _metric_has_task(self) -> "TrainSpec":
        m = self.early_stopping.metric
        if m in ("val_rmse", "val_mae") and self.tasks.rating.weight == 0:
            raise ValueError(f"early_stopping.metric {m} needs the rating task (tasks.rating.weight > 0)")
        if self.model.user_text and self.data.source is not None and self.data.user_template is None:
            raise ValueError("model.user_text on your own data (data.source) needs a data.user_template")
        if self.data.streaming:
            if self.model.user_text:
                raise ValueError("data.streaming: model.user_text renders every user's history on the driver; turn "
                                 "it off")
            if self.strategy.name in STREAMING_REFUSED:
                raise ValueError(f"data.streaming: strategy {self.strategy.name} reads the whole training frame "
                                 f"on every worker; streamed data has none")
        if self.optim.sparse_id_grads is True:
            t = self.tasks
            if t.related.weight > 0 or t.click.weight > 0 and t.click.negatives != "sampled":
                raise ValueError("optim.sparse_id_grads: true needs a step that reads only its batch's rows: "
                                 "tasks.related.weight 0 and tasks.click.negatives: sampled")
            if self.scaling.engine == "deepspeed":
                raise ValueError("optim.sparse_id_grads: true needs scaling.engine ddp (DeepSpeed steps dense "
                                 "gradients only)")
        self.strategy.check_job(self)  # e.g. lora and progressive_unfreezing need an encoder that trains
        return self
