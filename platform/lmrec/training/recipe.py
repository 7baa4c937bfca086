"""The two-tower training recipe: setup -> epochs of steps -> validate -> checkpoint -> export.

Cost follows unique items, not interactions. Item texts are tokenised once (``PreparedData``) and encoded once
without gradient into a cache (``TwoTowerModel.item_text``). Each step re-encodes, *with* gradient, at most
``optim.items_encoded_per_step`` of the step's unique items (padded to the longest of them), splices those rows
into the cached table, and computes every item vector from that table: all ratings touching an item reuse one
vector, and user vectors are pooled from item vectors, never from per-row text. After the optimizer step the
fresh rows overwrite the stale cache rows; a full no-grad refresh runs every ``refresh_every_epochs``.

The transfer strategy (``spec.strategy``) attaches hooks (``lmrec.strategies.components``): it may swap the encoder
(layer sharing, distilled student), adapt it (frozen, LoRA), split the optimizer groups and change them per epoch
or step (progressive unfreezing), choose each epoch's batches (curriculum) and add losses to the multi-task
objective (distillation, propagated labels). The loop below is the same for all of them, and ``run_epochs`` is
the one epoch loop of both drivers (``train_local`` and the Ray Train worker).

The Ray harness (``lmrec.training`` Ray modules) calls exactly this class; this file imports no ``ray``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lmrec.config.train import TrainSpec
from lmrec.evaluation.evaluate import test_metrics, validation_metrics
from lmrec.models.encoder import (
    TextEncoder, build_encoder, enable_checkpointing, eval_mode_keep_checkpointing, load_tokenizer,
)
from lmrec.models.tasks import ClickTask, MultiTaskObjective, RatingTask, RelatedTask, StepContext
from lmrec.models.two_tower import TwoTowerModel, TwoTowerRecommender
from lmrec.strategies.components import StrategyHooks
from lmrec.strategies.scopes import count_parameters
from lmrec.strategies.unfreezing import encoder_layer_groups
from lmrec.training.data import PreparedData
from lmrec.training.engines import DeepSpeedEngine, TorchEngine, deepspeed_config, distributed_world, resolve_engine
from lmrec.training.optimizers import SparseRowsOptimizer, make_sparse, resolve_sparse_ids

log = logging.getLogger(__name__)


def build_model(spec: TrainSpec, n_users: int, n_items: int, encoder=None) -> TwoTowerModel:
    """The inference model described by ``spec.model`` (weights from the encoder, towers freshly initialised).

    ``encoder``: a ``TextEncoder`` to use instead of ``spec.model.encoder`` (a strategy's student).
    """
    m = spec.model
    if encoder is None:
        encoder = build_encoder(m.encoder, m.pooling, m.encoder_init)
    return TwoTowerModel(
        encoder, n_users, n_items, dim=m.dim, user_tower=m.user_tower, item_id_embeddings=m.item_id_embeddings,
        user_id_embeddings=m.user_id_embeddings, user_text=m.user_text, max_history=m.max_history,
        ranking_head="interest" if spec.tasks.click.weight > 0 or spec.tasks.related.weight > 0 else "rating",
        rating_user=m.rating_user, interest_bias=m.interest_bias,
    )


def build_objective(spec: TrainSpec, extra_tasks: list | None = None) -> MultiTaskObjective:
    """The weighted tasks of ``spec.tasks`` plus a strategy's ``extra_tasks`` (each carries its own weight)."""
    t = spec.tasks
    return MultiTaskObjective([
        RatingTask(t.rating.weight, t.rating.l2, t.rating.id_l2),
        ClickTask(t.click.weight, t.click.temperature, t.click.positive_threshold, t.click.id_dropout, t.click.max_rows,
                  t.click.negatives, t.click.num_negatives),
        RelatedTask(t.related.weight, t.related.temperature, t.related.max_rows),
        *(extra_tasks or []),
    ])


class TwoTowerTrain(nn.Module):
    """Training wrapper: one step's forward (encode fresh items, towers, task losses). Holds no extra weights."""

    def __init__(self, model: TwoTowerModel, objective: MultiTaskObjective, item_tokens: torch.Tensor,
                 item_lengths: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.register_buffer("item_tokens", item_tokens, persistent=False)
        self.register_buffer("item_lengths", item_lengths, persistent=False)
        self.autocast_dtype = autocast_dtype
        self.subset_rows = True  # project only the rows a batch-bound objective reads (False: every row; tests)

    def forward(self, user_idx: torch.Tensor, item_idx: torch.Tensor, rating: torch.Tensor,
                encode_idx: torch.Tensor, generator: torch.Generator | None = None):
        """Returns (total loss, float logs, the freshly encoded rows detached for the cache).

        When the objective is ``batch_bound`` (rating + sampled click), only the item rows the step reads are
        projected (the batch's items, its users' histories, the drawn negatives); the others stay zero and get
        no gradient. A step then costs what its batch holds, not what the catalogue holds.
        """
        model = self.model
        device = user_idx.device
        users, row_user = torch.unique(user_idx, return_inverse=True)
        click = self.objective.task("click")
        negatives = rows = None
        if click is not None and click.negatives == "sampled":  # drawn first: the rows to project include them
            negatives = click.draw(generator).to(device)
        if self.subset_rows and self.objective.batch_bound:
            hist = model.history[users]
            rows = torch.unique(torch.cat([item_idx, hist[hist >= 0], *([] if negatives is None else [negatives])]))
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            fresh = None
            if len(encode_idx):
                fresh = model.encode_items(self.item_tokens[encode_idx], self.item_lengths[encode_idx])
            text = model.text_table(encode_idx if fresh is not None else None, fresh)
            if rows is None:
                text_vec = model.item_text_vectors(text)
                item_vec = model.item_tower.combine(text_vec)
                item_bias = model.item_biases(text)
            else:
                text_rows = text[rows]
                part = model.item_text_vectors(text_rows)
                text_vec = _scatter_rows(part, rows, model.n_items)
                item_vec = _scatter_rows(model.item_tower.combine(part, rows=rows), rows, model.n_items)
                item_bias = _scatter_rows(model.item_biases(text_rows, rows=rows), rows, model.n_items)
            user_vec = model.user_vectors(users, item_vec, row_user, exclude_item=item_idx)
            ctx = StepContext(user_idx, item_idx, rating, text, item_vec, text_vec, item_bias, user_vec, generator,
                              negatives)
            loss, logs = self.objective(model, ctx)
        return loss, logs, None if fresh is None else fresh.detach()


def _scatter_rows(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """[n, ...] zeros with ``values`` at ``rows`` (differentiable in ``values``)."""
    return values.new_zeros((n, *values.shape[1:])).index_copy(0, rows, values)


class TwoTowerRecipe:
    """Model + optimizer + engine for one worker; see the module docstring for the step design.

    ``item_text``: the pooled text of every item, already encoded by this run's (pretrained) encoder; skips the
    first full encoding (benchmarks share one encoding between runs). ``encoder``: a built encoder instead of
    ``spec.model.encoder``'s (benchmarks of random-init shapes; it must fit the tokenizer ``data`` was made with).
    """

    def __init__(self, spec: TrainSpec, data: PreparedData, *, device: torch.device, world_size: int = 1,
                 rank: int = 0, item_text: torch.Tensor | None = None,
                 init_state: dict | None = None, encoder: TextEncoder | None = None) -> None:
        self.spec, self.data, self.device = spec, data, torch.device(device)
        self.world_size, self.rank = world_size, rank
        torch.manual_seed(spec.seed)
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        # where each step draws the items it encodes: on the device on a GPU (train_epoch)
        self.select_on_device = self.device.type == "cuda"
        o = spec.optim
        start = time.perf_counter()
        student = spec.strategy.student_encoder(spec)
        if encoder is not None and student is not None:
            raise ValueError(f"strategy {spec.strategy.name} builds its own encoder: pass no encoder")
        self.model = build_model(spec, data.n_users, data.n_items, student or encoder).to(self.device)
        # before adapters or freezing: the full count bounds what any strategy trains
        engine = resolve_engine(spec.scaling.engine, self.device, count_parameters(self.model).total)
        self.engine_name, self.engine_reason = engine.name, engine.reason
        log.info("engine %s (%s)", engine.name, engine.reason)
        if init_state is not None:  # an incremental fine-tune starts from a deployed artifact's weights
            self._load_weights(init_state)
        loaded = time.perf_counter()
        self._init_state(item_text)
        if init_state is None and self.model.interest_bias:  # fresh biases start at popularity (not on a warm start)
            fit = self.model.init_interest_biases(data.item_counts(), spec.tasks.click.temperature)
            log.info("interest biases from popularity: %s", {k: round(v, 4) for k, v in fit.items()})
        # setup cost split: loading the encoder is the same for any recipe; the item-text precompute is ours
        self.setup_seconds = {"model_load": loaded - start, "init_state": time.perf_counter() - loaded}
        # DDP / DeepSpeed fix the gradient-carrying parameters at wrap time: unfreeze through LRs there
        self.strategy: StrategyHooks = spec.strategy.attach(
            spec, self.model, data, device=self.device,
            distributed=world_size > 1 or self.engine_name == "deepspeed")
        if not isinstance(self.strategy, StrategyHooks):
            raise TypeError(f"strategy {spec.strategy.name}: attach returned a {type(self.strategy).__name__}, which "
                            f"lacks hooks; return a subclass of lmrec.strategies.components.StrategyHooks")
        enc_count = count_parameters(self.model.encoder)
        self.model.to(self.device)  # adapters (LoRA) are created on the CPU
        if o.gradient_checkpointing:  # on the encoder as it trains (after adapters); the spec refuses a frozen one
            enable_checkpointing(self.model.encoder)
        if o.compile:
            self.model.encoder.compile(dynamic=True)  # in place: the state dict keeps its keys (checkpoints, artifacts)
        count = count_parameters(self.model)
        self.trainable_params = {"trainable_params": float(count.trainable), "total_params": float(count.total),
                                 "encoder_trainable_params": float(enc_count.trainable),
                                 "encoder_params": float(enc_count.total)}
        log.info("strategy %s: %d of %d parameters train (encoder: %d of %d)", spec.strategy.name, count.trainable,
                 count.total, enc_count.trainable, enc_count.total)
        self.objective = build_objective(spec, self.strategy.extra_tasks())
        click = self.objective.task("click")
        if click is not None and click.negatives == "sampled":  # the sampler's popularity
            click.set_item_counts(data.item_counts())
        self.train_module = TwoTowerTrain(
            self.model, self.objective, torch.as_tensor(data.item_tokens).to(self.device),
            torch.as_tensor(data.item_lengths).to(self.device), self.autocast_dtype,
        )
        groups = self.strategy.param_groups(self._param_groups(), self.model, o.lr_heads)
        sparse = resolve_sparse_ids(o.sparse_id_grads, streaming=spec.data.streaming,
                                    batch_bound=self.objective.batch_bound, engine=self.engine_name)
        self.sparse_ids = sparse
        log.info("sparse ID rows %s (%s)", "on" if sparse.on else "off", sparse.reason)
        sparse_params = make_sparse(self.model.id_tables()) if sparse.on else []
        if sparse_params:  # the ID rows leave AdamW's groups for SparseAdam's
            moved = {id(p) for p in sparse_params}
            groups = [{**g, "params": [p for p in g["params"] if id(p) not in moved]} for g in groups]
            groups = [g for g in groups if g["params"]]
        # fused under DDP on CUDA: one kernel for every parameter's update instead of a loop of small ones
        # (DeepSpeed steps its own partitions, on the CPU too when it offloads)
        fused = self.device.type == "cuda" and self.engine_name == "ddp"
        optimizer = torch.optim.AdamW(groups, lr=o.lr_heads, weight_decay=o.weight_decay, fused=fused or None)
        if sparse_params:
            optimizer = SparseRowsOptimizer(optimizer, torch.optim.SparseAdam(sparse_params, lr=o.lr_heads))
        # the torch optimizer itself (DeepSpeed wraps it but reads these param groups): the LR schedule sets them
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        # small data: batches shrink so an epoch is never a single step
        self.batch_size = o.step_batch_size(data.n_train(), world_size)
        self.steps_per_epoch = data.steps_per_epoch(self.batch_size, world_size)
        self.encoder_start_step = o.encoder_start_epoch * self.steps_per_epoch
        if self.engine_name == "deepspeed":
            cfg = deepspeed_config(spec.scaling.deepspeed_config, micro_batch=self.batch_size, world_size=world_size,
                                   grad_clip=o.grad_clip, device=self.device)
            self.engine: TorchEngine | DeepSpeedEngine = DeepSpeedEngine(self.train_module, optimizer, cfg)
        else:
            self.engine = TorchEngine(self.train_module, optimizer, o.grad_clip, sparse_params)
        self.epoch = 0  # next epoch to run
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.history: list[dict] = []
        self._cache_fresh = True

    # ---- setup ----
    def _init_state(self, item_text: torch.Tensor | None = None) -> None:
        """Data-derived buffers: global mean, histories, seen gate, and the first (frozen) text encodings."""
        m, d = self.model, self.data
        mean, low, high = d.rating_summary()
        m.global_mean.fill_(mean)
        m.rating_range.copy_(torch.tensor([low, high]))
        m.set_history(d.history_matrix(m.max_history))
        m.set_seen_counts(d.known_item_counts())
        if item_text is not None and d.user_tokens is None:
            if tuple(item_text.shape) != tuple(m.item_text.shape):
                raise ValueError(f"item_text is {tuple(item_text.shape)}, the model's encoder gives "
                                 f"{tuple(m.item_text.shape)}")
            m.item_text.copy_(item_text)
            self._cache_fresh = True
        else:
            self._refresh_text()
        if not self.spec.optim.finetune_encoder:
            m.encoder.requires_grad_(False)

    def _load_weights(self, state: dict) -> None:
        """Trained weights in; ``_init_state`` then rebuilds the data-derived buffers (history, gate, text cache)."""
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"history"}:
            raise ValueError(f"initial weights do not fit the model: missing {missing}, unexpected {unexpected}")

    def _refresh_text(self, encoder_moved: bool = False) -> None:
        """Re-encode the cached texts; after encoder steps, refit the text popularity prior to the new vectors."""
        d, bs = self.data, self.spec.optim.encode_batch_size
        refit = encoder_moved and self.model.interest_bias and self.spec.model.interest_prior == "refit"
        with self.engine.gathered() if hasattr(self, "engine") else torch.no_grad():
            before = self.model.interest_biases(self.model.text_table()).detach().float() if refit else None
            self.model.refresh_item_text(torch.as_tensor(d.item_tokens), torch.as_tensor(d.item_lengths), bs,
                                         self.autocast_dtype)
            if d.user_tokens is not None:
                self.model.refresh_user_text(torch.as_tensor(d.user_tokens), torch.as_tensor(d.user_lengths), bs,
                                             self.autocast_dtype)
            if refit:
                fit = self.model.refit_interest_prior(d.item_counts(),
                                                      self.spec.tasks.click.temperature, before)
                log.info("text prior refitted on the re-encoded items: %s", {k: round(v, 4) for k, v in fit.items()})
        self._cache_fresh = True

    def _param_groups(self) -> list[dict]:
        """Heads, ID rows (no weight decay) and the encoder; every encoder group is named ``encoder...`` (its LR
        warms up after ``encoder_start_epoch``). ``layer_decay`` < 1 splits the encoder per block, top block at
        ``lr_encoder``, each block below ``layer_decay`` times the one above."""
        o = self.spec.optim
        enc, no_decay, rest = [], [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("encoder."):
                enc.append(p)
            elif "embedding" in name or name.endswith("_bias.weight") and "text_bias" not in name:
                no_decay.append(p)  # ID rows are regularised per batch by the rating task's L2
            else:
                rest.append(p)
        groups = [{"params": rest}, {"params": no_decay, "weight_decay": 0.0}]
        if enc and o.layer_decay < 1:
            trainable = {id(p) for p in enc}
            for g in encoder_layer_groups(self.model, o.lr_encoder, o.layer_decay):
                groups.append({"params": [p for p in g.params if id(p) in trainable], "lr": g.lr, "name": g.name})
        elif enc:
            groups.append({"params": enc, "lr": o.lr_encoder, "name": "encoder"})
        return [g for g in groups if g["params"]]

    # ---- training ----
    def epoch_batches(self, epoch: int, default: Iterable[dict]) -> Iterable[dict]:
        """This rank's batches for ``epoch``: the strategy's sampler (curriculum) or ``default``."""
        return self.strategy.batches(epoch, default, self.batch_size, self.rank, self.world_size)

    def _all_have_batch(self, have: bool) -> bool:
        initialised, world, _ = distributed_world()
        if not initialised or world == 1:
            return have
        flag = torch.tensor([1 if have else 0], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def train_epoch(self, epoch: int, batches: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
        """One pass over ``batches``; every rank stops at the step where the first rank runs out."""
        o = self.spec.optim
        self.train_module.train()
        if not o.encoder_dropout:
            # rows encoded with gradient then match the eval-mode cache and serving
            eval_mode_keep_checkpointing(self.model.encoder)
        rng = np.random.default_rng([self.spec.seed, epoch, self.rank])
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        # on a GPU the items to encode are drawn there (no host round trip per step); the CPU keeps NumPy's draws,
        # which the committed CPU results were made with
        device_gen = None
        if self.select_on_device:
            device_gen = torch.Generator(self.device).manual_seed(int(rng.integers(2**31)))
        k = o.items_encoded_per_step if o.finetune_encoder else 0
        sums: dict[str, float] = {}
        steps = rows = encoded = 0
        encoder_stepped = False  # rank-identical (a function of the schedule), so the refresh below is too
        start = time.perf_counter()
        if self.strategy.on_epoch_start(self.optimizer, epoch):
            self._rebase_lrs()
        it = iter(batches)
        while True:
            batch = next(it, None)
            if not self._all_have_batch(batch is not None):
                break
            u = torch.as_tensor(np.asarray(batch["user_idx"]), dtype=torch.long, device=self.device)
            i = torch.as_tensor(np.asarray(batch["item_idx"]), dtype=torch.long, device=self.device)
            r = torch.as_tensor(np.asarray(batch["rating"]), dtype=torch.float32, device=self.device)
            global_step = epoch * self.steps_per_epoch + steps
            if self.strategy.on_step(self.optimizer, global_step):
                self._rebase_lrs()
            trains = o.finetune_encoder and epoch >= o.encoder_start_epoch \
                and self.strategy.encoder_trains(epoch, global_step)
            encoder_stepped |= trains
            if trains and o.encode_items == "catalog":
                enc = torch.arange(self.data.n_items, device=self.device)
            elif device_gen is not None:
                enc = select_items(i, k, device_gen) if trains else i[:0]
            else:
                uniq = np.unique(np.asarray(batch["item_idx"]))
                pick = rng.choice(uniq, size=min(k, len(uniq)), replace=False) if trains else uniq[:0]
                enc = torch.as_tensor(np.sort(pick), dtype=torch.long, device=self.device)
            self._set_lr(global_step)
            loss, logs, fresh = self.engine.module(u, i, r, enc, gen)
            self.engine.step(loss)
            if fresh is not None:
                with torch.no_grad():
                    self.model.item_text[enc] = fresh.to(self.model.item_text.dtype)
                self._cache_fresh = False
            steps += 1
            rows += len(u)
            encoded += len(enc)
            for key, val in logs.items():
                sums[key] = sums.get(key, 0.0) + val
            if steps % o.log_every_steps == 0:
                el = time.perf_counter() - start
                log.info("epoch %d step %d loss %.4f %s %.0f interactions/s", epoch, steps, sums["loss"] / steps,
                         " ".join(f"{k}={v / steps:.4f}" for k, v in sums.items() if k.startswith("loss_")),
                         rows / el)
        if encoder_stepped and o.refresh_every_epochs and (epoch + 1) % o.refresh_every_epochs == 0:
            self._refresh_text(encoder_moved=True)
        seconds = time.perf_counter() - start
        self.epoch = epoch + 1
        out = {k: v / max(steps, 1) for k, v in sums.items()}
        out.update(epoch=float(epoch), steps=float(steps), interactions=float(rows), items_encoded=float(encoded),
                   seconds=seconds, interactions_per_s=rows / max(seconds, 1e-9), **self.trainable_params)
        out.update(self._rows_by_rank(rows))
        out.update(self.strategy.epoch_logs(self.optimizer))  # e.g. unfreezing: the trainable set grows
        log.info("epoch %d done: %d steps, %.1f s, %.0f interactions/s, loss %.4f", epoch, steps, seconds,
                 out["interactions_per_s"], out.get("loss", float("nan")))
        return out

    def _rows_by_rank(self, rows: int) -> dict[str, float]:
        """``interactions_rank<r>``: the rows every rank trained on this epoch (each reads its own shard)."""
        initialised, world, _ = distributed_world()
        if not initialised or world == 1:
            return {"interactions_rank0": float(rows)}
        device = self.device if dist.get_backend() == "nccl" else "cpu"
        got = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
        dist.all_gather(got, torch.tensor([rows], dtype=torch.long, device=device))
        return {f"interactions_rank{r}": float(t.item()) for r, t in enumerate(got)}

    def _rebase_lrs(self) -> None:
        """A strategy hook (re)set the groups' LRs: the schedule scales those from now on."""
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]

    def _set_lr(self, global_step: int) -> None:
        """LR of every group at ``global_step`` (a pure function of the step, so a resumed run continues it)."""
        o = self.spec.optim
        factor = 1.0
        if o.lr_schedule == "cosine":
            total = max(o.epochs * self.steps_per_epoch, 1)
            factor = 0.5 * (1.0 + math.cos(math.pi * min(global_step, total) / total))
        since = global_step - self.encoder_start_step
        warm = 1.0 if not o.encoder_warmup_steps else min(1.0, max(since + 1, 0) / o.encoder_warmup_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            encoder = str(group.get("name", "")).startswith("encoder")
            group["lr"] = base * factor * (warm if encoder else 1.0)

    # ---- evaluation ----
    def as_recommender(self) -> TwoTowerRecommender:
        """Predict/score_items view on the current weights (``lmrec.models.base.Recommender``)."""
        with self.engine.gathered():
            rec = TwoTowerRecommender(self.model, name=self.spec.name)
        self.train_module.train()
        return rec

    def validate(self) -> dict[str, float]:
        """Valid-split metrics; identical on every rank (full valid set everywhere, rank-identical caches)."""
        if self.world_size > 1 and not self._cache_fresh:
            self._refresh_text(encoder_moved=True)  # per-rank cache rows diverge between refreshes
        valid = self.data.valid
        out: dict[str, float] = {}
        if valid is not None and len(valid):
            out.update(validation_metrics(self.as_recommender(), self.data.known(), valid, self.data.n_items,
                                          ratings=self.objective.task("rating") is not None,
                                          candidates=self.data.valid_items))
        out.update(self._observe(out))
        return out

    def test(self) -> dict[str, float]:
        """Test-split metrics (``test_`` keys) of the current weights, computed as the artifact will score: call once,
        at the end, on the selected epoch. Every rank calls it (ZeRO-3 gathers collectively); results are equal."""
        test = self.data.test
        if test is None or not len(test):
            return {}
        if not self._cache_fresh:  # as export_artifact does: the served item vectors come from the final encoder
            self._refresh_text(encoder_moved=True)
        return test_metrics(self.as_recommender(), self.data.known(), self.data.valid, test, self.data.n_items,
                            ratings=self.objective.task("rating") is not None, cold_items=self.data.cold_items)

    def _observe(self, metrics: dict[str, float]) -> dict[str, float]:
        es = self.spec.early_stopping
        value = metrics.get(es.metric)
        improved = False
        if value is not None:
            better = self.best is None or (value < self.best if es.mode == "min" else value > self.best)
            if better:
                self.best, self.best_epoch, self.bad_epochs, improved = value, self.epoch - 1, 0, True
            else:
                self.bad_epochs += 1
        self.history.append({"epoch": self.epoch - 1, **metrics})
        return {"best": float("nan") if self.best is None else self.best, "best_epoch": float(self.best_epoch),
                "is_best": float(improved), "epochs_without_improvement": float(self.bad_epochs)}

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.spec.early_stopping.patience

    # ---- persistence ----
    def save_checkpoint(self, directory: str) -> None:
        """Model + optimizer + epoch + early-stopping state; every rank calls it."""
        client = {"epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch,
                  "bad_epochs": self.bad_epochs, "spec": self.spec.model_dump(mode="json")}
        self.engine.save(directory, client)

    def load_checkpoint(self, directory: str) -> int:
        """Restore what ``save_checkpoint`` wrote; returns the epoch to resume from."""
        client = self.engine.load(directory)
        self.epoch = int(client.get("epoch", 0))
        self.best, self.best_epoch = client.get("best"), int(client.get("best_epoch", -1))
        self.bad_epochs = int(client.get("bad_epochs", 0))
        self._cache_fresh = False
        return self.epoch

    def export_artifact(self, directory: str, metrics: dict | None = None) -> str:
        """Serving artifact (safetensors + tokenizer + manifest); call on rank 0 (on every rank under ZeRO-3)."""
        from lmrec.artifacts.two_tower import save_artifact

        self.strategy.before_export(self.model)  # e.g. LoRA adapters merged: a plain encoder is served
        if not self._cache_fresh:
            self._refresh_text(encoder_moved=True)  # precomputed item embeddings must come from the final encoder
        tokenizer = load_tokenizer(self.spec.model.encoder)
        with self.engine.gathered():
            if self.rank != 0:
                return directory
            return str(save_artifact(
                directory, self.model, tokenizer, spec=self.spec.model_dump(mode="json"),
                fingerprint=self.data.fingerprint, user_ids=self.data.user_ids, item_ids=self.data.item_ids,
                metrics=metrics or (self.history[-1] if self.history else {}),
                data_cutoff=self.data.trained_until(),
                lineage={**self.data.lineage, "engine": {"name": self.engine_name, "reason": self.engine_reason},
                         "sparse_id_grads": {"on": self.sparse_ids.on, "reason": self.sparse_ids.reason}},
                item_texts=list(self.data.item_texts),  # responses show them; metadata filters match them
                # every training row, so a service of this model alone excludes what evaluation excludes (the
                # model's own history keeps the last max_history items only)
                seen=self.data.seen_pairs(),
            ))


def select_items(item_idx: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``k`` of the distinct items of ``item_idx``, uniformly without replacement, sorted, on the batch's device
    (``generator`` lives there too): the same draws for the same seed, no copy to the host."""
    uniq = torch.unique(item_idx)
    if k >= len(uniq):
        return uniq
    return uniq[torch.randperm(len(uniq), generator=generator, device=uniq.device)[:k]].sort().values


def run_epochs(recipe: TwoTowerRecipe, first_epoch: int, default_batches: Callable[[int], Iterable[dict]],
               after_epoch: Callable[[int, dict, dict], None],
               wrap: Callable[[int, Iterable[dict]], Iterable[dict]] | None = None) -> None:
    """The epoch loop of every driver (``train_local``, the Ray Train worker), from ``first_epoch`` on.

    Each epoch: stop when early stopping says so (checked first: a resumed run may have stopped already), train on
    the strategy's batches (``default_batches(epoch)`` unless it samples its own), validate, then hand the epoch's
    train logs and validation metrics to ``after_epoch(epoch, logs, metrics)``, where the driver records,
    checkpoints and reports. ``wrap(epoch, batches)``: the Ray worker's test-only fault injection.
    """
    spec = recipe.spec
    for epoch in range(first_epoch, spec.optim.epochs):
        if recipe.should_stop:
            log.info("early stopping before epoch %d: %s has not improved for %d epochs (best epoch %d)",
                     epoch + 1, spec.early_stopping.metric, recipe.bad_epochs, recipe.best_epoch + 1)
            break
        batches = recipe.epoch_batches(epoch, default_batches(epoch))
        logs = recipe.train_epoch(epoch, batches if wrap is None else wrap(epoch, batches))
        after_epoch(epoch, logs, recipe.validate())
