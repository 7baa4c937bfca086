"""One Tune trial: build the job's own ``TorchTrainer`` (``lmrec.training.ray_train.build_trainer``) and fit it.

The Ray 2.60 Tune + Train pattern: the trial is a function that constructs and fits a ``TorchTrainer`` whose
``RunConfig(callbacks=[TuneReportCallback()])`` forwards every worker report (one per epoch) to the trial, so ASHA
sees per-epoch metrics. The trial driver only coordinates (it is given a fraction of a CPU); the workers get the
CPUs. Each trial's trainer run lives in ``<study>/runs/<trial id>``, so a restored study's trials continue from
their latest epoch checkpoint and the best trial's serving artifact is at ``<study>/runs/<trial id>/artifact``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from ray.tune.integration.ray_train import TuneReportCallback

from lmrec.tuning.spec import TuneSpec, resolve_trial, trial_spec

log = logging.getLogger(__name__)

EPOCHS_DONE = "epochs_done"  # survives a restored trial (training_iteration restarts at 0)
# ASHA's clock: epochs done, left out of the final epoch's report. ASHA stops a trial whose clock reaches max_t (or
# a rung it falls short of) as that report arrives, which would kill the worker loop before it exports the
# artifact; without the clock on the final report the trial always finishes its export.
ASHA_CLOCK = "asha_epoch"


def runs_dir(study_path: str) -> str:
    return f"{study_path.rstrip('/')}/runs"


def objective_value(objective: dict[str, float] | None, metrics: dict) -> float | None:
    """The weighted sum the spec optimises, or ``None`` without an ``objective``; NaN when a term is missing."""
    if objective is None:
        return None
    terms = [w * float(metrics.get(k, math.nan)) for k, w in objective.items()]
    return float(sum(terms))


class TrialReport(TuneReportCallback):
    """``TuneReportCallback`` that adds the epoch count, ASHA's clock and the spec's weighted objective."""

    def __init__(self, metric: str, objective: dict[str, float] | None, epochs: int):
        super().__init__()
        self._metric, self._objective, self._epochs = metric, objective, epochs

    def after_report(self, run_context, metrics, checkpoint):
        done = int(metrics[0].get("epoch", -1)) + 1
        extra = {EPOCHS_DONE: done, **({ASHA_CLOCK: done} if done < self._epochs else {})}
        value = objective_value(self._objective, metrics[0])
        if value is not None:
            extra[self._metric] = value
        super().after_report(run_context, [{**metrics[0], **extra}, *metrics[1:]], checkpoint)


def run_trial(config: dict, *, tune_spec: dict, base: str, study_path: str) -> None:
    """Tune function trainable: ``config`` holds the sampled parameters (simplex groups as raw coordinates)."""
    import ray.tune

    from lmrec.training.ray_train import build_trainer

    spec = TuneSpec.model_validate(tune_spec)
    trial_id = ray.tune.get_context().get_trial_id()
    overrides = resolve_trial(spec, config)
    train = trial_spec(spec, Path(base), {**overrides, "name": trial_id, "scaling.storage_path": runs_dir(study_path)})
    log.info("trial %s: %s", trial_id, {k: overrides[k] for k in overrides if k not in spec.overrides})
    # resume=True: a restored trial picks its trainer run (and latest epoch checkpoint) up again
    report = TrialReport(spec.metric, spec.objective, train.optim.epochs)
    run = build_trainer(train, spec_path=base, resume=True, callbacks=[report])
    run.fit()
