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


def run_demo(out_dir: Path, *, quick: bool = False) -> int:
    """Load ML-100K, evaluate the baselines on u1 (ratings) and a per-user 80/20 split (ranking), write a report."""
    from lmrec.data.registry import load_dataset
    from lmrec.evaluation import format_metrics_table
    from lmrec.experiments import baseline_entries, evaluate_entries, load_split

    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    print("[1/3] loading MovieLens 100K", flush=True)
    ds = load_dataset("ml-100k")
    print(f"      {ds.n_users} users, {ds.n_items} items, {len(ds.interactions):,} ratings", flush=True)

    names = ["global_mean", "biased_mean", "popularity", "biased_mf", "item_knn", "ease"]
    if quick:
        names = ["biased_mean", "popularity", "ease"]
    print("[2/3] baselines on u1 (rating metrics)", flush=True)
    rating_records = evaluate_entries(
        ds, load_split(ds, "u1"), [e for e in baseline_entries(names) if e.rates], ranking_metrics=False,
        split_name="u1",
    )
    print("[3/3] baselines on a per-user 80/20 split (full ranking @10)", flush=True)
    rankers = [n for n in names if n not in ("global_mean", "biased_mean")]  # constant per-user rankings
    ranking_records = evaluate_entries(
        ds, load_split(ds, "per-user-80-20"), baseline_entries(rankers), rating_metrics=False,
        split_name="per-user-80-20",
    )

    rating_table = format_metrics_table([{"model": r["model"], **r["metrics"]} for r in rating_records])
    ranking_table = format_metrics_table([{"model": r["model"], **r["metrics"]} for r in ranking_records])
    print("\nRating prediction, ML-100K u1\n" + rating_table)
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
    )
    print(f"\nreport written to {out_dir}/ ({elapsed:.0f} s)")
    return 0
