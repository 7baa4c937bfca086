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
from ray.tune.schedulers import ASHAScheduler

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


class ResumableASHA(ASHAScheduler):
    """ASHA whose rung records survive ``Tuner.restore``.

    Tune does not save a scheduler's state with the experiment: a restored study rebuilds it from the pickle written
    at the start, with empty rungs, and would let a bad trial through that the uninterrupted study stopped. As Tune
    re-adds each restored trial, this one replays the trial's logged reports (its ``result.json``) into the rungs
    it had reached: records only, no decisions. A fresh trial has no log yet and adds nothing.
    """

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        bracket = self._trial_info[trial.trial_id]
        for result in _logged_results(trial):
            if self._time_attr in result and self._metric in result:
                bracket.on_result(trial, result[self._time_attr], self._metric_op * result[self._metric])

    def rung_records(self) -> dict[float, dict[str, float]]:
        """Milestone -> {trial id: signed metric} over every bracket (what a stop decision compares against)."""
        out: dict[float, dict[str, float]] = {}
        for bracket in self._brackets:
            for milestone, recorded in bracket._rungs:
                out.setdefault(milestone, {}).update(recorded)
        return out


def _logged_results(trial) -> list[dict]:
    """The reports Tune logged for ``trial`` (one JSON object per line of its ``result.json``); none when new."""
    import json

    folders = []
    for attr in ("local_path", "path"):
        try:
            folders.append(getattr(trial, attr))
        except RuntimeError:  # a new trial has no folder before it starts
            continue
    for folder in dict.fromkeys(p for p in folders if p):
        path = Path(folder) / "result.json"
        if path.is_file():
            rows = []
            for line in path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut short by the interruption
                    continue
            return rows
    return []


def _anchor_source_paths(train, workdir: str | None) -> None:
    """Make ``data.source`` file paths absolute against the study driver's working directory: Tune runs a trial in
    its own folder, where the relative paths a user wrote (from the directory ``lmrec tune`` ran in) would not
    resolve."""
    source = train.data.source
    if source is None or workdir is None:
        return
    for table in source.tables().values():
        if not Path(table.path).expanduser().is_absolute():
            table.path = str(Path(workdir) / table.path)


def run_trial(config: dict, *, tune_spec: dict, base: str, study_path: str, workdir: str | None = None) -> None:
    """Tune function trainable: ``config`` holds the sampled parameters (simplex groups as raw coordinates);
    ``workdir``: the directory ``lmrec tune`` ran in (relative data file paths are read from there)."""
    import ray.tune

    from lmrec.training.ray_train import build_trainer

    spec = TuneSpec.model_validate(tune_spec)
    trial_id = ray.tune.get_context().get_trial_id()
    overrides = resolve_trial(spec, config)
    train = trial_spec(spec, Path(base), {**overrides, "name": trial_id, "scaling.storage_path": runs_dir(study_path)})
    _anchor_source_paths(train, workdir)
    log.info("trial %s: %s", trial_id, {k: overrides[k] for k in overrides if k not in spec.overrides})
    if _exported(Path(runs_dir(study_path), trial_id, "artifact")):
        # the trial finished (its reports are logged, its artifact written) but the interruption came before Tune
        # recorded it: a restored study keeps it as it is rather than training it again
        log.info("trial %s finished before the interruption: kept, not retrained", trial_id)
        return
    # resume=True: a restored trial picks its trainer run (and latest epoch checkpoint) up again
    report = TrialReport(spec.metric, spec.objective, train.optim.epochs)
    run = build_trainer(train, spec_path=base, resume=True, callbacks=[report])
    run.fit()


def _exported(artifact: Path) -> bool:
    """Whether ``artifact`` is a complete two-tower artifact (every file its manifest lists, hashes matching)."""
    from lmrec.artifacts.manifest import ArtifactError, verify_artifact
    from lmrec.artifacts.two_tower import FORMAT

    try:
        verify_artifact(artifact, FORMAT)  # a missing or unreadable manifest is an ArtifactError too
    except (ArtifactError, OSError):
        return False
    return True
