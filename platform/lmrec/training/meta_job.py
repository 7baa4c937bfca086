"""The meta-learning job: ``strategy: meta_learning`` in a ``TrainSpec`` routes here instead of the two-tower
recipe (its loop differs in shape: batches are users split into support and query sets; see
``lmrec.strategies.meta_loop``). Shared by ``train_local`` and the Ray Train worker; imports no ``ray``.

The output folder is a meta-learning artifact (``lmrec.artifacts.meta``: the meta-trained weights, the run's
per-epoch history and its cold-user metrics, under a hash-checked manifest; ``load_meta_artifact`` reads it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def run_meta_job(spec, data, device: str | torch.device = "cpu", artifact_dir: str | Path | None = None):
    """Meta-train on ``data``'s warm users, evaluate its cold users; optionally write the weights and metrics."""
    from lmrec.strategies.meta_loop import run_meta_learning
    from lmrec.strategies.scopes import count_parameters

    res = run_meta_learning(spec, data, device)
    res.metrics["trainable_params"] = float(count_parameters(res.model).trainable)
    log.info("meta-learning: %.1f s, cold users %s", res.fit_seconds,
             {k: round(v, 4) for k, v in res.metrics.items()})
    if artifact_dir is not None:
        save_meta_model(res, artifact_dir, spec, data)
    return res


def save_meta_model(res, directory: str | Path, spec, data=None) -> Path:
    """The run as a meta-learning artifact (``lmrec.artifacts.meta``); ``data`` adds its id maps and fingerprint."""
    from lmrec.artifacts.meta import save_meta_artifact

    return save_meta_artifact(
        directory, res.model, config=spec.model_dump(mode="json"), history=res.history, metrics=res.metrics,
        fit_seconds=res.fit_seconds, encode_seconds=res.encode_seconds,
        fingerprint=getattr(data, "fingerprint", None), user_ids=getattr(data, "user_ids", None),
        item_ids=getattr(data, "item_ids", None))
