"""Single-process driver: the same recipe the Ray harness runs, without Ray (benchmarks, unit tests, laptops)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmrec.config.train import TrainSpec
from lmrec.training.data import PreparedData, prepare_data
from lmrec.training.recipe import TwoTowerRecipe, run_epochs

log = logging.getLogger(__name__)


@dataclass
class LocalResult:
    """What ``train_local`` returns: the trained recipe (at its best epoch), per-epoch logs, timings."""

    recipe: TwoTowerRecipe
    data: PreparedData
    epochs: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    fit_seconds: float = 0.0
    artifact: str | None = None

    def recommender(self):
        return self.recipe.as_recommender()


def train_local(
    spec: TrainSpec,
    data: PreparedData | None = None,
    *,
    device: str | torch.device | None = None,
    artifact_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    on_epoch=None,
    item_text: torch.Tensor | None = None,
):
    """Train ``spec`` in this process: epochs -> validate -> early stopping -> best weights -> optional artifact.

    ``on_epoch(epoch, train_logs, val_metrics, recipe)`` is called after each validation (benchmarks record
    time-to-quality with it). Returns the recipe restored to its best epoch (by ``early_stopping.metric``).
    ``item_text``: precomputed pooled item texts of this encoder (see ``TwoTowerRecipe``).

    ``strategy: meta_learning`` runs its own loop (``lmrec.strategies.meta_loop``) and returns its
    ``MetaRunResult`` (history, cold-user metrics, the model; ``artifact_dir`` gets its weights).
    """
    start = time.perf_counter()
    data = data if data is not None else prepare_data(spec)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if spec.strategy.name == "meta_learning":
        from lmrec.training.meta_job import run_meta_job

        return run_meta_job(spec, data, device, artifact_dir)
    recipe = TwoTowerRecipe(spec, data, device=device, item_text=item_text)
    first = 0
    if checkpoint_dir is not None and Path(checkpoint_dir).exists():
        first = recipe.load_checkpoint(str(checkpoint_dir))
    result = LocalResult(recipe=recipe, data=data)
    best_state = None

    def after_epoch(epoch: int, logs: dict, metrics: dict) -> None:
        nonlocal best_state
        result.epochs.append({**logs, **metrics})
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in metrics.items()})
        if on_epoch is not None:
            on_epoch(epoch, logs, metrics, recipe)
        if metrics.get("is_best") or spec.early_stopping.metric not in metrics:
            best_state = recipe.engine.snapshot()
            result.best = {"epoch": epoch, **metrics}
        if checkpoint_dir is not None:
            recipe.save_checkpoint(str(checkpoint_dir))

    run_epochs(recipe, first, lambda epoch: data.iter_train_batches(epoch, recipe.batch_size, spec.seed), after_epoch)
    if best_state is not None:
        recipe.engine.restore(best_state)
    result.fit_seconds = time.perf_counter() - start
    if artifact_dir is not None:
        result.artifact = recipe.export_artifact(str(artifact_dir), metrics=result.best)
    return result
