"""The main job on the embedded default: MovieLens 100K, classic baselines side by side, a report on disk.

Stages print progress as they go; the report folder gets ``summary.md``, ``metrics.json`` and PNG charts.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _bar_chart(records: list[dict], metric: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _find_job_spec(name: str) -> Path:
    """The committed job spec: from the working directory (a checkout) or beside the installed package."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "jobs" / name).exists():
            return root / "jobs" / name
    raise FileNotFoundError(f"jobs/{name} not found: run the demo from an lmrec checkout")


def _train_encoder(ds, out_dir: Path) -> tuple[list[dict], list[dict]]:
    """Train the default MiniLM two-tower on Ray Train (2 workers, u1) and evaluate its artifact on u1 test."""
    import time as _time

    from lmrec.config.base import load_spec
    from lmrec.config.train import TrainSpec
    from lmrec.evaluation import evaluate_ranking, evaluate_ratings
    from lmrec.experiments import load_split
    from lmrec.models.artifact import load_artifact
    from lmrec.training.ray_train import train

    spec_path = _find_job_spec("ml100k-minilm-multitask.yaml")
    spec = load_spec(TrainSpec, spec_path, {"scaling.storage_path": str((out_dir / "runs").resolve())})
    t0 = _time.perf_counter()
    result = train(spec, spec_path=spec_path, resume=False)
    fit_s = _time.perf_counter() - t0
    art = load_artifact(result.artifact_path)
    split = load_split(ds, "u1")
    metrics = {k: v for k, v in evaluate_ratings(art.recommender, split.test).items() if k in ("rmse", "mae")}
    ranking = evaluate_ranking(art.recommender, split.train, split.test, ds.n_items, ks=(10,))
    metrics.update({k: v for k, v in ranking.items() if "@" in k})
    record = {"dataset": ds.name, "split": "u1", "model": "two_tower_minilm",
              "metrics": {k: round(float(v), 6) for k, v in metrics.items()}, "fit_seconds": round(fit_s, 1),
              "artifact": result.artifact_path}
    return [record], result.history


def _curve_chart(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def run_demo(out_dir: Path, *, quick: bool = False) -> int:
    """Load ML-100K, evaluate the baselines on u1 (ratings) and a per-user 80/20 split (ranking), write a report."""
    from lmrec.data.registry import load_dataset
    from lmrec.evaluation import format_metrics_table
    from lmrec.experiments import baseline_entries, evaluate_entries, load_split

    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = 3 if quick else 4
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
    if not quick:
        print(f"[4/{stages}] training the MiniLM two-tower on Ray Train (2 workers, u1)", flush=True)
        encoder_records, history = _train_encoder(ds, out_dir)
        rating_records += encoder_records
        _curve_chart(history, out_dir / "training_curve.png")

    rating_table = format_metrics_table([{"model": r["model"], **r["metrics"]} for r in rating_records])
    ranking_table = format_metrics_table([{"model": r["model"], **r["metrics"]} for r in ranking_records])
    print("\nRating prediction, ML-100K u1 (ranking columns: u1 test, full ranking)\n" + rating_table)
    print("\nFull ranking, ML-100K per-user 80/20\n" + ranking_table)

    records = rating_records + ranking_records
    (out_dir / "metrics.json").write_text(json.dumps(records, indent=2))
    _bar_chart(rating_records, "rmse", out_dir / "rating_rmse.png", "ML-100K u1: RMSE (lower is better)")
    _bar_chart(ranking_records, "ndcg@10", out_dir / "ranking_ndcg.png", "ML-100K per-user 80/20: NDCG@10")
    elapsed = time.perf_counter() - t_start
    (out_dir / "summary.md").write_text(
        "# lmrec demo report\n\n"
        f"Dataset: MovieLens 100K ({ds.n_users} users, {ds.n_items} items, {len(ds.interactions):,} ratings). "
        f"Wall time {elapsed:.0f} s.\n\n"
        "## Rating prediction (u1)\n\n```\n" + rating_table + "\n```\n\n![rmse](rating_rmse.png)\n\n"
        "## Full ranking (per-user 80/20, training items excluded)\n\n```\n" + ranking_table + "\n```\n\n"
        "![ndcg](ranking_ndcg.png)\n"
        + ("\n## Two-tower training curve\n\n![curve](training_curve.png)\n" if history else "")
    )
    print(f"\nreport written to {out_dir}/ ({elapsed:.0f} s)")
    return 0
