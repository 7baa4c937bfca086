"""Classic baselines side by side with peer libraries on identical splits.

Run: `make bench` (or `.venv/bin/python benchmarks/baselines.py`), with LMREC_DATA_DIR pointing at the datasets.
Writes benchmarks/results/baselines.json (+ baselines.png). Needs the `bench` extra (scikit-surprise, implicit).
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns (and slows) with threaded BLAS

from harness import figure, save_figure, write_results  # noqa: E402
from peers import ImplicitFactors, SurpriseRating  # noqa: E402

from lmrec.data.registry import load_dataset  # noqa: E402
from lmrec.evaluation import format_metrics_table  # noqa: E402
from lmrec.experiments import ModelEntry, baseline_entries, evaluate_entries, load_split  # noqa: E402


def plot(records: list[dict]) -> None:
    rating = [r for r in records if "rmse" in r["metrics"]]
    ranking = [r for r in records if "ndcg@10" in r["metrics"]]
    datasets = sorted({r["dataset"] for r in ranking})
    fig, axes = figure(1, 1 + len(datasets), figsize=(5 * (1 + len(datasets)), 4))
    ax = axes[0]
    ax.barh([r["model"] for r in rating], [r["metrics"]["rmse"] for r in rating], color="#4c72b0")
    ax.set_xlim(0.85, max(r["metrics"]["rmse"] for r in rating) + 0.02)
    ax.set_title("ML-100K u1: RMSE (lower is better)")
    for ax, name in zip(axes[1:], datasets):
        rows = [r for r in ranking if r["dataset"] == name]
        ax.barh([r["model"] for r in rows], [r["metrics"]["ndcg@10"] for r in rows], color="#55a868")
        ax.set_title(f"{name} per-user 80/20: NDCG@10")
    save_figure(fig, "baselines", dpi=110)


PEERS = ("surprise_", "implicit_")
HEADLINES = (("ml-100k", "u1", "rmse", min), ("ml-100k", "per-user-80-20", "ndcg@10", max),
             ("ml-latest-small", "per-user-80-20", "ndcg@10", max))


def summary(records: list[dict]) -> dict:
    """Per split and headline metric: the best of lmrec's baselines beside the best peer-library model."""
    out = {}
    for dataset, split, metric, best in HEADLINES:
        rows = [r for r in records if (r["dataset"], r["split"]) == (dataset, split) and metric in r["metrics"]]
        entry = {}
        for side, mine in (("lmrec", True), ("peer", False)):
            group = [r for r in rows if r["model"].startswith(PEERS) != mine]
            if group:
                top = best(group, key=lambda r: r["metrics"][metric])
                entry[side] = {"model": top["model"], metric: top["metrics"][metric]}
        out[f"{dataset} {split} {metric}"] = entry
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    records: list[dict] = []

    ml100k = load_dataset("ml-100k")
    rating_entries = [e for e in baseline_entries(["global_mean", "biased_mean", "biased_mf", "item_knn"])]
    rating_entries += [
        ModelEntry("surprise_SVD", lambda: SurpriseRating("SVD", random_state=0), ranks=False),
        ModelEntry("surprise_SVDpp", lambda: SurpriseRating("SVDpp", random_state=0), ranks=False),
    ]
    records += evaluate_entries(ml100k, load_split(ml100k, "u1"), rating_entries, ranking_metrics=False, split_name="u1")

    for name in ("ml-100k", "ml-latest-small"):
        ds = ml100k if name == "ml-100k" else load_dataset(name)
        entries = baseline_entries(["popularity", "biased_mf", "item_knn", "ease"])
        entries += [
            ModelEntry("implicit_als", lambda: ImplicitFactors("als", factors=64), rates=False),
            ModelEntry("implicit_bpr", lambda: ImplicitFactors("bpr", factors=64), rates=False),
        ]
        records += evaluate_entries(
            ds, load_split(ds, "per-user-80-20", seed=42), entries, rating_metrics=False,
            ks=(10,), split_name="per-user-80-20",
        )

    print(format_metrics_table([{"dataset": r["dataset"], "split": r["split"], "model": r["model"], **r["metrics"],
                                 "fit_s": r["fit_seconds"]} for r in records]))
    write_results("baselines", {"protocol": {
        "u1": "ML-100K canonical u1.base/u1.test (generated from u.data), rating metrics on all test ratings",
        "per-user-80-20": "seeded (42) per-user 80/20 random split, every rating is a positive, full ranking over "
                          "all items with the user's training items excluded, K=10",
    }, "records": records}, summary=summary(records))
    plot(records)


if __name__ == "__main__":
    main()
