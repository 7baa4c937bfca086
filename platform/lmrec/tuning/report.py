"""What a finished study leaves behind: results table, the best trial as a job spec + its artifact, plots.

Each trial is scored at the epoch its artifact was exported from (the job's early-stopping best epoch), so the
exported spec, the recorded artifact and the score all describe the same model. Trials stopped by ASHA have no
artifact and cannot be exported; their score is their best reported epoch (for the table and plots).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from lmrec.config.base import load_yaml, set_dotted
from lmrec.config.train import TrainSpec
from lmrec.plotting import pyplot
from lmrec.tuning.spec import Simplex, resolve_trial
from lmrec.tuning.trial import EPOCHS_DONE, runs_dir

log = logging.getLogger(__name__)

RESULTS_CSV = "results.csv"
BEST_JSON = "best.json"


@dataclass
class StudyReport:
    table: pd.DataFrame  # one row per trial
    curves: dict[str, pd.DataFrame]  # trial id -> per-epoch reports
    best: dict | None = None  # the exported trial's row
    spec_path: Path | None = None  # exported job spec
    artifact: str | None = None
    files: list[str] = field(default_factory=list)

    @property
    def epochs_used(self) -> int:
        return int(self.table["epochs"].sum())


def _status(result, last: dict, max_epochs: int) -> str:
    if result.error is not None:
        return "error"
    epochs = int(last.get(EPOCHS_DONE, 0))
    if epochs == 0:
        return "no_report"  # interrupted before its first epoch ended
    if epochs >= max_epochs:
        return "completed"
    patience_hit = last.get("epochs_without_improvement", 0) >= last.get("_patience", math.inf)
    return "patience" if patience_hit else "stopped_early"


def collect(study, grid) -> StudyReport:
    """Rows (params as trained, status, epochs, metric) and per-epoch curves for every trial of the grid."""
    spec = study.spec
    patience = TrainSpec.model_validate(load_yaml(study.base)).early_stopping.patience
    rows, curves = [], {}
    better = max if spec.mode == "max" else min
    for result in grid:
        frame = result.metrics_dataframe
        if frame is None or frame.empty or EPOCHS_DONE not in frame:
            frame = pd.DataFrame(columns=[EPOCHS_DONE, spec.metric])
        frame = frame.sort_values(EPOCHS_DONE).drop_duplicates(EPOCHS_DONE, keep="last")
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        curves[trial_id] = frame
        last = {**frame.iloc[-1].to_dict(), "_patience": patience} if len(frame) else {}
        artifact = f"{runs_dir(study.path)}/{trial_id}/artifact"
        has_artifact = Path(artifact, "manifest.json").exists()
        at_export = frame[frame["epoch"] == last.get("best_epoch")] if "epoch" in frame and last else frame.iloc[:0]
        values = frame[spec.metric].dropna() if spec.metric in frame else pd.Series(dtype=float)
        score_row = at_export.iloc[-1].to_dict() if has_artifact and len(at_export) else None
        if score_row is None and len(values):
            score_row = frame.loc[values.idxmax() if spec.mode == "max" else values.idxmin()].to_dict()
        params = resolve_trial(spec, result.config) if result.config else {}
        rows.append({
            "trial_id": trial_id,
            "status": _status(result, last, study.max_epochs),
            "epochs": int(last.get(EPOCHS_DONE, 0)),
            **{k: params[k] for k in params if k not in spec.overrides},
            spec.metric: (score_row or {}).get(spec.metric, math.nan),
            "best_epoch": int((score_row or {}).get("epoch", -1)) + 1,
            **{k: (score_row or {}).get(k, math.nan) for k in ("val_rmse", "val_ndcg@10") if k != spec.metric},
            f"{spec.metric}_last": last.get(spec.metric, math.nan),
            "artifact": artifact if has_artifact else None,
        })
    table = pd.DataFrame(rows)
    report = StudyReport(table=table, curves=curves)
    exportable = table[table["artifact"].notna() & table[spec.metric].notna()]
    if len(exportable):
        pick = better(exportable.index, key=lambda i: exportable.loc[i, spec.metric])
        report.best = table.loc[pick].to_dict()
    return report


def export_best(study, report: StudyReport, export_dir: Path) -> Path | None:
    """Write the best trial as a ready-to-run job spec and record (and verify) its artifact in ``best.json``."""
    from lmrec.artifacts.manifest import verify_artifact
    from lmrec.artifacts.two_tower import FORMAT as TWO_TOWER_FORMAT

    if report.best is None:
        log.warning("no trial finished with an artifact: nothing to export")
        return None
    spec, best = study.spec, report.best
    data = load_yaml(study.base)
    res = spec.resources
    searched = {k: best[k] for k in best if k in _searched_keys(spec)}
    fixed = {**spec.overrides, **{k: v for k, v in (("scaling.num_workers", res.num_workers),
                                                    ("scaling.cpus_per_worker", res.cpus_per_worker)) if v is not None}}
    for key, value in {**fixed, **searched}.items():
        set_dotted(data, key, value.item() if hasattr(value, "item") else value)
    data["name"] = spec.name
    TrainSpec.model_validate(data)  # the export is a valid job spec, or this is a bug
    manifest = verify_artifact(best["artifact"], TWO_TOWER_FORMAT)
    export_dir.mkdir(parents=True, exist_ok=True)
    out = export_dir / f"{spec.name}.yaml"
    rel = _display(out)
    header = [
        f"# lmrec train {rel}",
        f"# ray job submit --working-dir . -- lmrec train {rel}",
        f"# Best of {len(report.table)} trials of `lmrec tune {_display(study.spec_path)}` by {spec.metric} "
        f"({spec.mode}) = {best[spec.metric]:.6g} (trial {best['trial_id']}, epoch {best['best_epoch']}).",
        f"# Searched: {', '.join(sorted(searched))}. The trial's artifact: {best['artifact']}",
    ]
    out.write_text("\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    record = {"study": study.path, "trial_id": best["trial_id"], "metric": spec.metric, "mode": spec.mode,
              "value": best[spec.metric], "job_spec": str(out.resolve()), "artifact": best["artifact"],
              "artifact_metrics": manifest.get("metrics", {}), "dataset_fingerprint":
              manifest.get("dataset_fingerprint"), "params": searched}
    Path(study.path, BEST_JSON).write_text(json.dumps(record, indent=2, default=float), encoding="utf-8")
    report.spec_path, report.artifact = out, best["artifact"]
    return out


def _searched_keys(spec) -> set[str]:
    return {k for name, d in spec.params.items() for k in (d.keys if isinstance(d, Simplex) else [name])}


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def plot(study, report: StudyReport, out_dir: Path) -> list[Path]:
    """metric vs each parameter, the task-weight simplex heat-map (3-key groups), learning curves."""
    plt = pyplot()
    if plt is None:
        return []
    import matplotlib.ticker

    spec, table, metric = study.spec, report.table, study.spec.metric
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    keys = [k for k in _searched_keys(spec) if k in table]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.4 * max(1, len(keys)), 3.2), squeeze=False)
    for ax, key in zip(axes[0], sorted(keys)):
        stopped = table["status"] != "completed"
        ax.scatter(table.loc[~stopped, key], table.loc[~stopped, metric], label="ran to the end")
        ax.scatter(table.loc[stopped, key], table.loc[stopped, metric], marker="x", label="stopped early")
        dist = spec.params.get(key)
        if dist is not None and dist.type == "loguniform":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # overlapping labels on short ranges
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{spec.name}: {metric} per trial")
    fig.tight_layout()
    paths.append(out_dir / "params.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    for name, dist in spec.params.items():
        if isinstance(dist, Simplex) and len(dist.keys) == 3 and all(k in table for k in dist.keys):
            paths.append(_simplex_plot(plt, table, dist, metric, out_dir / f"simplex_{name}.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for trial_id, frame in report.curves.items():
        if metric in frame and len(frame):
            ax.plot(frame[EPOCHS_DONE], frame[metric], marker=".", label=trial_id[-8:])
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{spec.name}: learning curves (short = stopped early)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths.append(out_dir / "curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _simplex_plot(plt, table: pd.DataFrame, dist: Simplex, metric: str, path: Path) -> Path:
    """Barycentric map of a 3-weight simplex: trials as points coloured by the metric over an interpolated field."""
    import numpy as np

    w = table[dist.keys].to_numpy(float) / dist.total
    x = w[:, 1] + 0.5 * w[:, 2]
    y = (np.sqrt(3) / 2) * w[:, 2]
    z = table[metric].to_numpy(float)
    ok = np.isfinite(z)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    if ok.sum() >= 4:
        try:
            ax.tricontourf(x[ok], y[ok], z[ok], levels=12, cmap="viridis", alpha=0.55)
        except (ValueError, RuntimeError):  # collinear or too few distinct points
            pass
    sc = ax.scatter(x[ok], y[ok], c=z[ok], cmap="viridis", edgecolors="k", s=60)
    ax.plot([0, 1, 0.5, 0], [0, 0, np.sqrt(3) / 2, 0], "k-", lw=0.8)
    for (px, py), key in zip([(0, 0), (1, 0), (0.5, np.sqrt(3) / 2)], dist.keys):
        ax.annotate(key.replace("tasks.", "").replace(".weight", ""), (px, py), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 4), textcoords="offset points")
    fig.colorbar(sc, ax=ax, label=metric)
    ax.set_axis_off()
    ax.set_title(f"task-weight simplex: {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(study, grid, export_dir: Path) -> StudyReport:
    """Table (CSV + printed), exported best spec + artifact record, plots; returns the report."""
    report = collect(study, grid)
    csv = Path(study.path, RESULTS_CSV)
    report.table.to_csv(csv, index=False)
    shown = report.table.drop(columns=["artifact"])
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        print(shown.to_string(index=False))
    print(f"trial-epochs used {report.epochs_used} of {len(report.table) * study.max_epochs} possible")
    export_best(study, report, export_dir)
    report.files = [str(csv)] + [str(p) for p in plot(study, report, Path(study.path, "plots"))]
    if report.spec_path:
        report.files.append(str(report.spec_path))
    return report
