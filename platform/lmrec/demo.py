"""The main job on the embedded default: MovieLens 100K, from data to a served, tuned recommender.

Stages: classic baselines side by side; the MiniLM ranker fused with EASE and item-kNN in the ranking table; the
MiniLM two-tower trained on Ray Train (2 workers); a small Ray Tune search over its task weights; the ensemble
(two-tower + MF) deployed with Ray Serve and called. Each stage prints
progress as it goes; the report folder gets ``summary.md``, ``metrics.json`` and PNG charts.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lmrec.plotting import pyplot

log = logging.getLogger(__name__)


def _bar_chart(records: list[dict], metric: str, path: Path, title: str) -> None:
    plt = pyplot()
    if plt is None:
        return

    rows = [r for r in records if metric in r["metrics"]]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["model"] for r in rows], [r["metrics"][metric] for r in rows], color="#4c72b0")
    ax.set_xlabel(metric)
    ax.set_title(title)
    for i, r in enumerate(rows):
        ax.text(r["metrics"][metric], i, f" {r['metrics'][metric]:.3f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _u1_record(ds, artifact_path: str, model: str, fit_s: float) -> dict:
    """An artifact's u1 test metrics (RMSE/MAE and full ranking @10), in the demo's record shape."""
    from lmrec.evaluation import evaluate_ranking, evaluate_ratings
    from lmrec.experiments import load_split
    from lmrec.artifacts.two_tower import load_artifact

    art = load_artifact(artifact_path)
    split = load_split(ds, "u1")
    metrics = {k: v for k, v in evaluate_ratings(art.recommender, split.test).items() if k in ("rmse", "mae")}
    ranking = evaluate_ranking(art.recommender, split.train, split.test, ds.n_items, ks=(10,))
    metrics.update({k: v for k, v in ranking.items() if "@" in k})
    return {"dataset": ds.name, "split": "u1", "model": model,
            "metrics": {k: round(float(v), 6) for k, v in metrics.items()}, "fit_seconds": round(fit_s, 1),
            "artifact": artifact_path}


def _train_encoder(ds, out_dir: Path):
    """Train the default MiniLM two-tower on Ray Train (2 workers, u1) and evaluate its artifact on u1 test."""
    from lmrec.config.base import load_spec
    from lmrec.config.train import TrainSpec
    from lmrec.demo_stages import find_committed
    from lmrec.training.ray_train import train

    spec_path = find_committed("jobs", "ml100k-minilm-multitask.yaml")
    spec = load_spec(TrainSpec, spec_path, {"scaling.storage_path": str((out_dir / "runs").resolve())})
    t0 = time.perf_counter()
    result = train(spec, spec_path=spec_path, resume=False)
    record = _u1_record(ds, result.artifact_path, "two_tower_minilm", time.perf_counter() - t0)
    return record, result.history, spec


def _curve_chart(history: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return

    rows = [h for h in history if "val_rmse" in h]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h.get("epoch", i) for i, h in enumerate(rows)], [h["val_rmse"] for h in rows], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation RMSE")
    ax.set_title("Two-tower training on Ray Train (2 workers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tune(ds, out_dir: Path, stages: int, rating_records: list[dict]):
    """Stage 5: the committed task-weight search, shrunk to 4 trials; its best trial's artifact joins the table."""
    from lmrec.demo_stages import tune_chart, tune_stage

    print(f"[6/{stages}] Ray Tune: 4 trials over task weights + head LR (Optuna TPE, ASHA)", flush=True)
    outcome = tune_stage(out_dir)
    tune_chart(outcome, out_dir / "tune_trials.png")
    print(f"      {len(outcome.table)} trials, {outcome.epochs_used}/{outcome.epochs_possible} trial-epochs run "
          f"(ASHA), {outcome.seconds:.0f} s; best job spec: {outcome.spec_path}", flush=True)
    if outcome.artifact:
        rating_records.append(_u1_record(ds, outcome.artifact, "two_tower_tuned", outcome.seconds))
    return outcome


def _serve(spec, artifact: str, out_dir: Path, stages: int):
    """Stage 6: the ensemble (two-tower + MF on the same split) on Ray Serve, every endpoint called once or more."""
    from lmrec.demo_stages import latency_chart, serve_stage
    from lmrec.artifacts.mf import train_mf_artifact
    from lmrec.training.data import prepare_data

    print(f"[7/{stages}] Ray Serve: the ensemble (two-tower + MF) on loopback, sample requests", flush=True)
    data = prepare_data(spec)
    mf = train_mf_artifact(data, out_dir / "artifacts" / "mf")
    # raw ids as plain Python values: they go into JSON request bodies
    outcome = serve_stage(artifact, str(mf), data.user_ids.tolist(), data.item_ids.tolist())
    latency_chart(outcome, out_dir / "serve_latency.png")
    for row in outcome.summary():
        print(f"      {row['endpoint']}: {row['requests']} requests, p50 {row['p50_ms']} ms, "
              f"p99 {row['p99_ms']} ms", flush=True)
    return outcome


def _tune_section(tuned) -> str:
    if tuned is None:
        return ""
    import pandas as pd

    from lmrec.evaluation import format_metrics_table

    cols = [c for c in pd.DataFrame(tuned.table).columns if c not in ("artifact",)]
    table = format_metrics_table([{c: r.get(c) for c in cols} for r in tuned.table])
    return ("\n## Ray Tune: task weights + head learning rate\n\n"
            f"{len(tuned.table)} trials, {tuned.epochs_used} of {tuned.epochs_possible} trial-epochs run (ASHA "
            f"stopped the rest), {tuned.seconds:.0f} s. Best job spec: `{tuned.spec_path}`.\n\n```\n{table}\n```\n\n"
            "![trials](tune_trials.png)\n")


def _serve_section(served) -> str:
    if served is None:
        return ""
    from lmrec.evaluation import format_metrics_table

    top = served.samples.get("/recommend", {}).get("items", [])[:5]
    lines = "\n".join(f"- {it.get('text') or it['item_id']} (score {it['score']:.3f})" for it in top)
    return ("\n## Ray Serve: the ensemble on loopback\n\n"
            f"Deployed `serve/recommender.yaml` at {served.url} (two-tower + MF), {served.seconds:.0f} s incl. "
            "start-up. Sequential requests:\n\n```\n" + format_metrics_table(served.summary()) + "\n```\n\n"
            f"Top 5 for the first user:\n\n{lines}\n\n![latency](serve_latency.png)\n")


def run_demo(out_dir: Path, *, quick: bool = False) -> int:
    """Load ML-100K, evaluate the baselines on u1 (ratings) and a per-user 80/20 split (ranking), write a report."""
    from lmrec.data.registry import load_dataset
    from lmrec.evaluation import format_metrics_table
    from lmrec.experiments import baseline_entries, evaluate_entries, load_split

    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = 3 if quick else 7
    print(f"[1/{stages}] loading MovieLens 100K", flush=True)
    ds = load_dataset("ml-100k")
    print(f"      {ds.n_users} users, {ds.n_items} items, {len(ds.interactions):,} ratings", flush=True)

    names = ["global_mean", "biased_mean", "popularity", "biased_mf", "item_knn", "ease"]
    if quick:
        names = ["biased_mean", "popularity", "ease"]
    print(f"[2/{stages}] baselines on u1 (rating metrics)", flush=True)
    rating_records = evaluate_entries(
        ds, load_split(ds, "u1"), [e for e in baseline_entries(names) if e.rates], ranking_metrics=False,
        split_name="u1",
    )
    print(f"[3/{stages}] baselines on a per-user 80/20 split (full ranking @10)", flush=True)
    rankers = [n for n in names if n not in ("global_mean", "biased_mean")]  # constant per-user rankings
    ranking_records = evaluate_entries(
        ds, load_split(ds, "per-user-80-20"), baseline_entries(rankers), rating_metrics=False,
        split_name="per-user-80-20",
    )

    history: list[dict] = []
    tuned = served = None
    fused = None
    if not quick:
        from lmrec.demo_stages import fused_stage

        print(f"[4/{stages}] the MiniLM ranker (jobs/ml100k-ranking.yaml) fused with EASE and item-kNN", flush=True)
        fused = fused_stage()
        ranking_records.extend(fused.records)
        print(f"      fusion weights (fitted on validation): {fused.weights}", flush=True)
        print(f"[5/{stages}] training the MiniLM two-tower on Ray Train (2 workers, u1)", flush=True)
        encoder_record, history, spec = _train_encoder(ds, out_dir)
        rating_records.append(encoder_record)
        _curve_chart(history, out_dir / "training_curve.png")
        tuned = _tune(ds, out_dir, stages, rating_records)
        served = _serve(spec, encoder_record["artifact"], out_dir, stages)

    rating_table = format_metrics_table([{"model": r["model"], **r["metrics"]} for r in rating_records])
    ranking_table = format_metrics_table([{"model": r["model"], **r["metrics"]} for r in ranking_records])
    print("\nRating prediction, ML-100K u1 (ranking columns: u1 test, full ranking)\n" + rating_table)
    print("\nFull ranking, ML-100K per-user 80/20\n" + ranking_table)

    records = rating_records + ranking_records
    report = {"records": records, "fused": fused and {"weights": fused.weights, "seconds": round(fused.seconds, 1)},
              "tune": tuned and {k: v for k, v in tuned.__dict__.items() if k != "files"},
              "serve": served and {"summary": served.summary(), "samples": served.samples}}
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    _bar_chart(rating_records, "rmse", out_dir / "rating_rmse.png", "ML-100K u1: RMSE (lower is better)")
    _bar_chart(ranking_records, "ndcg@10", out_dir / "ranking_ndcg.png", "ML-100K per-user 80/20: NDCG@10")
    elapsed = time.perf_counter() - t_start
    (out_dir / "summary.md").write_text(
        "# lmrec demo report\n\n"
        f"Dataset: MovieLens 100K ({ds.n_users} users, {ds.n_items} items, {len(ds.interactions):,} ratings). "
        f"Wall time {elapsed:.0f} s.\n\n"
        "## Rating prediction (u1)\n\n```\n" + rating_table + "\n```\n\n![rmse](rating_rmse.png)\n\n"
        "## Full ranking (per-user 80/20, training items excluded)\n\n```\n" + ranking_table + "\n```\n\n"
        + (f"The fused row is what the ensemble service ranks: the MiniLM ranker, EASE and item-kNN, z-scored per "
           f"user and mixed with weights {fused.weights} fitted on a validation slice of the training rows.\n\n"
           if fused else "")
        + "![ndcg](ranking_ndcg.png)\n"
        + ("\n## Two-tower training curve\n\n![curve](training_curve.png)\n" if history else "")
        + _tune_section(tuned) + _serve_section(served)
    )
    print(f"\nreport written to {out_dir}/ ({elapsed:.0f} s)")
    return 0
