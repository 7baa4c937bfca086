"""Ray Tune over the default ML-100K job's task weights + head learning rate, judged on u1.test.

Run: ``LMREC_DATA_DIR=/work/shared/data python benchmarks/tune.py [--storage /tmp/lmrec-tune]``
Writes benchmarks/results/tune.json, tune_{params,simplex,curves}.png and jobs/tuned/ml100k-task-weights.yaml.

The study is ``tune/ml100k-task-weights.yaml`` run through the same code as ``lmrec tune`` (Optuna TPE, ASHA,
trials that build the job's own TorchTrainer). It optimises a validation objective (val NDCG@10 - 2 x val RMSE
on the job's seeded 5% slice of u1.base); u1.test is touched only afterwards, to compare the exported best trial's
artifact with the job spec as it is (16 epochs; trained like the trials: Ray Train, one worker, same seed), both scored
by the same code: RMSE on u1.test and NDCG@10 over the full catalogue with training and validation items excluded
(as benchmarks/encoder.py scores the job). ASHA's saving: trial-epochs run / trial-epochs a FIFO search would run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from harness import REPO, RESULTS, write_results

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.evaluation.evaluate import evaluate_ranking, evaluate_ratings
from lmrec.training.data import prepare_data

TUNE_SPEC = REPO / "tune" / "ml100k-task-weights.yaml"
JOB = REPO / "jobs" / "ml100k-minilm-multitask.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics(rec, data) -> dict:
    out = {**evaluate_ratings(rec, data.test),
           **evaluate_ranking(rec, data.train, data.test, data.n_items, (10,), exclude_df=data.valid)}
    return {k: round(float(out[k]), 6) for k in ("rmse", "mae", "ndcg@10", "recall@10")}


def default_job(tuned_spec: TrainSpec, storage: str) -> dict:
    """The job spec as committed, trained like the trials: Ray Train, one worker of the same size, same seed."""
    from lmrec.artifacts.two_tower import load_artifact
    from lmrec.training.ray_train import train

    spec = load_spec(TrainSpec, JOB, {"scaling.num_workers": tuned_spec.scaling.num_workers,
                                      "scaling.cpus_per_worker": tuned_spec.scaling.cpus_per_worker,
                                      "scaling.storage_path": storage})
    res = train(spec, spec_path=JOB, resume=False)
    return {"test": test_metrics(load_artifact(res.artifact_path).recommender, prepare_data(spec)),
            "epochs": len(res.history), "best_epoch": int(res.best_metrics.get("epoch", -1)) + 1,
            "val": {k: round(float(v), 6) for k, v in res.best_metrics.items() if k in ("val_rmse", "val_ndcg@10")},
            "seconds": round(res.seconds, 1), "trained": "Ray Train, 1 worker (as the trials)"}


def study_span(report) -> dict:
    """Wall time from the first trial's start to the last report (across interruptions) and summed trial time."""
    starts, ends, trial_s = [], [], 0.0
    for frame in report.curves.values():
        if len(frame) and "timestamp" in frame:
            starts.append(float(frame["timestamp"].iloc[0] - frame["time_this_iter_s"].iloc[0]))
            ends.append(float(frame["timestamp"].iloc[-1]))
            trial_s += float(frame["time_total_s"].iloc[-1])
    return {"wall_seconds_first_start_to_last_report": round(max(ends) - min(starts), 1) if starts else None,
            "trial_seconds_total": round(trial_s, 1)}


def default_local() -> dict:
    """Fallback when the cluster is busy: the job spec as committed, trained in-process on one thread."""
    import torch

    from lmrec.training.local import train_local

    torch.set_num_threads(1)
    spec = load_spec(TrainSpec, JOB)
    data = prepare_data(spec)
    res = train_local(spec, data, device="cpu")
    return {"test": test_metrics(res.recommender(), data), "epochs": len(res.epochs),
            "best_epoch": int(res.best.get("epoch", -1)) + 1, "trained": "in-process (train_local), 1 thread",
            "val": {k: round(float(v), 6) for k, v in res.best.items() if k in ("val_rmse", "val_ndcg@10")},
            "seconds": round(res.fit_seconds, 1)}


def main() -> None:
    import ray

    from lmrec.artifacts.two_tower import load_artifact
    from lmrec.tuning.report import write_report
    from lmrec.tuning.spec import load_tune_spec
    from lmrec.tuning.study import _trainable, finished, locate, run_study

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--storage", default="/tmp/lmrec-tune-bench", help="study folder root")
    p.add_argument("--resume", action="store_true", help="restore an interrupted (or finished) study")
    p.add_argument("--report-only", action="store_true", help="report the study as it stands (implies --resume)")
    p.add_argument("--default-out", help="only train and score the job spec in-process; write that JSON here")
    p.add_argument("--default-from", help="use a --default-out JSON instead of training the job on the cluster")
    args = p.parse_args()
    if args.default_out:
        Path(args.default_out).write_text(json.dumps(default_local(), indent=2))
        return
    spec, base = load_tune_spec(TUNE_SPEC, {"storage_path": args.storage, "export_dir": str(REPO / "jobs" / "tuned")})
    study = locate(spec, TUNE_SPEC, base, args.resume or args.report_only)
    temp_dir = tempfile.mkdtemp(prefix="lmrec-tb-", dir="/tmp")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # private loopback instance
    for attempt in range(20):  # private instance (never another's cluster); a loaded machine can miss Ray's 30 s
        try:                  # raylet registration window, so retry
            # Logical CPUs with headroom (2 trials still run at once): Ray Train releases the worker reservation of
            # a trial ASHA stopped via the State API, whose address lookup fails when several Ray instances run
            # on one machine ("Found multiple active Ray instances"); the stale reservations must not starve
            # later trials.
            ray.init(num_cpus=16, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
                     _temp_dir=temp_dir)
            break
        except Exception:
            ray.shutdown()
            if attempt == 19:
                raise
    started = time.perf_counter()
    if args.report_only:  # what the study holds now, finished or not; runs nothing
        from ray import tune

        grid = tune.Tuner.restore(study.path, trainable=_trainable(study)).get_results()
    else:
        grid = run_study(study, resume=args.resume)
        if not finished(study, grid):
            raise SystemExit(f"study {study.path} interrupted: rerun with --resume")
    search_s = time.perf_counter() - started
    report = write_report(study, grid, Path(spec.export_dir))
    tuned_spec = load_spec(TrainSpec, report.spec_path)
    default = (json.loads(Path(args.default_from).read_text()) if args.default_from
               else default_job(tuned_spec, f"{study.path}/default-job"))
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
    for name in ("params", "simplex_task_weights", "curves"):
        src = Path(study.path, "plots", f"{name}.png")
        if src.exists():
            shutil.copy(src, RESULTS / f"tune_{name.replace('_task_weights', '')}.png")

    best = report.best or {}
    tuned = {"test": test_metrics(load_artifact(report.artifact).recommender, prepare_data(tuned_spec)),
             "val": {k: best.get(k) for k in (spec.metric, "val_rmse", "val_ndcg@10")},
             "params": {k: best[k] for k in best if k.startswith(("tasks.", "optim."))},
             "trial_id": best.get("trial_id"), "best_epoch": best.get("best_epoch")}
    ran = report.table[report.table["status"] != "no_report"]  # trials cut by an interruption before epoch 1
    possible = len(ran) * study.max_epochs
    table = report.table.drop(columns=["artifact"]).round(6)
    fraction_used = round(report.epochs_used / possible, 4)
    beats = {"ndcg@10": tuned["test"]["ndcg@10"] > default["test"]["ndcg@10"],
             "rmse": tuned["test"]["rmse"] < default["test"]["rmse"]}
    write_results("tune", {
        "tune_spec": str(TUNE_SPEC.relative_to(REPO)),
        "exported_job_spec": str(Path(report.spec_path).resolve().relative_to(REPO)),
        "search": {"trials": len(report.table), "trials_planned": spec.num_samples,
                   "finished": bool(finished(study, grid)), "max_concurrent": spec.max_concurrent,
                   "epochs_per_trial_max": study.max_epochs, "searcher": f"optuna-{spec.search.sampler}",
                   "scheduler": spec.scheduler.model_dump(), "metric": spec.metric, "objective": spec.objective,
                   "wall_seconds_this_session": round(search_s, 1), **study_span(report)},
        "asha": {"trial_epochs_used": report.epochs_used, "trial_epochs_possible": possible,
                 "fraction_used": fraction_used,
                 "note": "used/possible over trials that reported; stops by ASHA and by the job's own "
                         "early-stopping patience both count as saved epochs",
                 "trials_by_status": {k: int(v) for k, v in report.table["status"].value_counts().items()}},
        "trials": table.to_dict(orient="records"),
        "tuned": tuned,
        "default_job": default,
        "tuned_beats_default_on_test": beats,
    }, summary={"tuned_test": tuned["test"], "default_job_test": default["test"],
                "tuned_beats_default_on_test": beats, "asha_fraction_of_trial_epochs_used": fraction_used})


if __name__ == "__main__":
    main()
