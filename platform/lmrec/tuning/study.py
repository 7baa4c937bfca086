"""The Tune driver behind ``lmrec tune``: search space, searcher, scheduler, ``Tuner`` (fresh or restored).

    lmrec tune tune/ml100k-task-weights.yaml [--resume]
    ray job submit --working-dir . -- lmrec tune tune/ml100k-task-weights.yaml

The study lives in ``<storage_path>/<name>`` (Tune's experiment folder: per-trial ``progress.csv``,
``result.json`` and TensorBoard event files; the trials' trainer runs under ``runs/``). ``--resume`` restores an
interrupted study with ``Tuner.restore``: finished trials are kept, unfinished and errored ones continue from
their latest epoch checkpoint, and the searcher (its state is saved with the experiment) proposes the rest.
ASHA's rung records are not part of Tune's experiment state (Tune rebuilds the scheduler from the pickle written
when the study started), so the restored scheduler reads them back from each trial's ``result.json`` as Tune
re-adds the trial: a resumed study prunes as the uninterrupted one would. Ctrl-C stops a study gracefully (exit
code 130, no report).

The cluster needs its dashboard (Ray's default): Ray Train releases the worker reservation of a trial that ASHA
stopped through the State API it serves. Its actors find that API by address (``RAY_ADDRESS``, else the one Ray
instance on the machine); where several local instances run side by side the lookup fails and the reservation
stays, so such setups (the tests, the benchmark) give the cluster spare logical CPUs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from lmrec.config.base import SpecError
from lmrec.training.ray_train import DEFAULT_STORAGE, _is_uri, connect_ray
from lmrec.tuning.spec import (RAW_SEP, Choice, LogUniform, RandInt, Simplex, TuneSpec, Uniform, raw_point,
                               trial_spec)
from lmrec.tuning.trial import ASHA_CLOCK, run_trial

log = logging.getLogger(__name__)


@dataclass
class Study:
    """Where a study lives and what it needs to run: the validated spec and the base job spec."""

    spec: TuneSpec
    spec_path: Path
    base: Path
    storage: str
    name: str

    @property
    def path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def max_epochs(self) -> int:
        """Epochs a trial may run: the trial spec's ``optim.epochs``, capped by ASHA's ``max_t``."""
        epochs = trial_spec(self.spec, self.base, dict(self.spec.overrides)).optim.epochs
        max_t = getattr(self.spec.scheduler, "max_t", None)
        return min(epochs, max_t) if max_t else epochs


def locate(spec: TuneSpec, spec_path: Path, base: Path, resume: bool) -> Study:
    """Study folder: resuming needs the existing one; a fresh study of an existing name gets a timestamp."""
    storage = spec.storage_path or DEFAULT_STORAGE
    storage = storage if _is_uri(storage) else str(Path(storage).expanduser().resolve())
    study = Study(spec, spec_path, base, storage, spec.name)
    exists = _is_uri(storage) or Path(study.path).exists()
    if resume:
        from ray.tune import Tuner

        if not Tuner.can_restore(study.path):
            raise SpecError(f"--resume: no restorable study at {study.path}")
    elif exists and not _is_uri(storage):
        study.name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        log.info("study %r exists: starting a fresh one, %r", spec.name, study.name)
    return study


def search_space(spec: TuneSpec) -> dict:
    """Tune domains per parameter; a simplex group is one ``uniform(0, 1)`` raw coordinate per key."""
    from ray import tune

    space = {}
    for name, dist in spec.params.items():
        if isinstance(dist, Simplex):
            space.update({f"{name}{RAW_SEP}{i}": tune.uniform(0.0, 1.0) for i in range(len(dist.keys))})
        elif isinstance(dist, LogUniform):
            space[name] = tune.loguniform(dist.low, dist.high)
        elif isinstance(dist, Uniform):
            space[name] = tune.uniform(dist.low, dist.high)
        elif isinstance(dist, RandInt):
            space[name] = tune.randint(dist.low, dist.high)
        elif isinstance(dist, Choice):
            space[name] = tune.choice(dist.values)
    return space


def _searcher(spec: TuneSpec, max_concurrent: int):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    points = [raw_point(spec, p) for p in getattr(spec.search, "points_to_evaluate", [])]
    if spec.search.kind == "random":
        return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=spec.seed)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if spec.search.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=spec.search.n_startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    searcher = OptunaSearch(sampler=sampler, points_to_evaluate=points or None)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def _scheduler(study: Study):
    from ray.tune.schedulers import FIFOScheduler

    from lmrec.tuning.trial import ResumableASHA

    sched = study.spec.scheduler
    if sched.kind == "fifo":
        return FIFOScheduler()
    return ResumableASHA(time_attr=ASHA_CLOCK, max_t=study.max_epochs, grace_period=sched.grace_period,
                         reduction_factor=sched.reduction_factor)


def concurrency(study: Study) -> int:
    """Trials at once: the spec's ``max_concurrent``, capped by what the cluster's CPUs can hold."""
    import ray

    train = trial_spec(study.spec, study.base, dict(study.spec.overrides))
    per_trial = study.spec.resources.trial_cpu + train.scaling.num_workers * train.scaling.cpus_per_worker
    fits = max(1, int(ray.cluster_resources().get("CPU", 1) / per_trial + 1e-9))
    if fits < study.spec.max_concurrent:
        log.warning("max_concurrent %d lowered to %d: each trial takes %.2f CPU", study.spec.max_concurrent,
                    fits, per_trial)
    return min(fits, study.spec.max_concurrent)


def _callbacks(spec: TuneSpec) -> list:
    """MLflow through Ray's logger callback when a tracking URI is configured (CSV/JSON/TensorBoard are Tune's)."""
    uri = spec.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return []
    try:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        import mlflow  # noqa: F401  (the callback imports it lazily; fail here, before any trial)
    except ImportError:
        raise SpecError(f"MLflow tracking URI {uri!r} is set but mlflow is not installed (pip install mlflow)")
    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=spec.mlflow.experiment_name or spec.name,
                                 save_artifact=False)]


def _trainable(study: Study):
    from ray import tune

    fn = tune.with_parameters(run_trial, tune_spec=study.spec.model_dump(mode="json"), base=str(study.base),
                              study_path=study.path, workdir=os.getcwd())
    return tune.with_resources(fn, {"CPU": study.spec.resources.trial_cpu})


def run_study(study: Study, resume: bool = False):
    """Fit the study (fresh, or restored with ``Tuner.restore``) and return Tune's ``ResultGrid``."""
    from ray import tune

    connect_ray()
    spec = study.spec
    if resume:
        log.info("restoring study %s", study.path)
        tuner = tune.Tuner.restore(study.path, trainable=_trainable(study), resume_unfinished=True,
                                   resume_errored=True)
    else:
        limit = concurrency(study)
        tuner = tune.Tuner(
            _trainable(study),
            param_space=search_space(spec),
            tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                                        search_alg=_searcher(spec, limit), scheduler=_scheduler(study),
                                        max_concurrent_trials=limit),
            run_config=tune.RunConfig(name=study.name, storage_path=study.storage,
                                      failure_config=tune.FailureConfig(max_failures=spec.trial_retries),
                                      callbacks=_callbacks(spec), verbose=1),
        )
        log.info("study %s: %d trials, %d at once, %s + %s, up to %d epochs each", study.path, spec.num_samples,
                 limit, spec.search.kind, spec.scheduler.kind, study.max_epochs)
    return tuner.fit()


def finished(study: Study, grid) -> bool:
    """Whether every trial ended; after Ctrl-C ``Tuner.fit`` returns the partial grid instead of raising."""
    return grid.num_terminated + grid.num_errors >= study.spec.num_samples


@contextlib.contextmanager
def _interrupt_flag():
    """An event set by Ctrl-C (SIGINT) while the study runs. Tune's own SIGINT handler stops a study gracefully but
    leaves no trace in the returned grid (unstarted trials can look terminated), so SIGINT is taken here and handed
    to Tune as SIGUSR1, which it treats the same way (``TUNE_DISABLE_SIGINT_HANDLER``)."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield event
        return

    def on_sigint(signum, frame):
        event.set()
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with mock.patch.dict(os.environ, {"TUNE_DISABLE_SIGINT_HANDLER": "1"}):
            yield event
    finally:
        signal.signal(signal.SIGINT, previous)


def main_tune(spec_path: str, overrides: dict | None = None, resume: bool = False) -> int:
    """``lmrec tune SPEC``: 0 when the study finished and a best spec was exported, 2 for an invalid spec, 1 else."""
    from lmrec.tuning.report import write_report
    from lmrec.tuning.spec import load_tune_spec

    try:
        spec, base = load_tune_spec(spec_path, overrides)
        study = locate(spec, Path(spec_path), base, resume)
    except SpecError as e:
        print(f"lmrec tune: error: {e}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with _interrupt_flag() as interrupted:
        grid = run_study(study, resume=resume)
    if interrupted.is_set() or not finished(study, grid):
        print(f"lmrec tune: study {study.path} interrupted after {grid.num_terminated} of {spec.num_samples} "
              f"trials; continue it with: lmrec tune {spec_path} --resume", file=sys.stderr)
        return 130
    report = write_report(study, grid, Path(spec.export_dir))
    summary = {"study": study.path, "trials": len(report.table), "seconds": round(time.perf_counter() - started, 1),
               "trial_epochs_used": report.epochs_used, "trial_epochs_possible": len(report.table) * study.max_epochs,
               "errors": int((report.table["status"] == "error").sum()) if len(report.table) else 0,
               "best": report.best and {k: report.best[k] for k in report.best if k != "artifact"},
               "job_spec": str(report.spec_path) if report.spec_path else None, "artifact": report.artifact,
               "files": report.files}
    print(json.dumps(summary, default=float))
    return 0 if report.spec_path else 1
