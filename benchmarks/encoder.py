"""Quality of the encoder two-tower vs classic peers, same process, identical splits.

Run: ``LMREC_DATA_DIR=/work/shared/data python benchmarks/encoder.py [--only u1,cold,ml100k-8020,mlls-8020]``
Writes benchmarks/results/encoder.json (one record per (dataset, split, model), shaped like baselines.json) and
encoder.png.

Runs: ML-100K u1 (rating RMSE; target <= 0.92 and <= the best classic peer, BiasedMF fitted in the same run),
ML-100K cold-start items (20% of items held out; rank only held-out items; target NDCG@10 >= 1.25x TF-IDF),
ML-100K and ml-latest-small per-user 80/20 (seed 42 as in baselines.json; full ranking, train items excluded;
vs EASE and item-kNN). Our model picks its best epoch on a seeded 5% slice of the training rows (never the test
rows) and trains on the other 95%; the peers fit on all training rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness import REPO, RESULTS, figure, save_figure, write_results

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.evaluation.evaluate import evaluate_ranking, evaluate_ratings
from lmrec.models.baselines import EASE, BiasedMF, ItemKNN, TfidfContent
from lmrec.training.data import prepare_data
from lmrec.training.local import train_local

JOB = REPO / "jobs" / "ml100k-minilm-multitask.yaml"
KS = (10,)


def _spec(overrides: dict) -> TrainSpec:
    return load_spec(TrainSpec, JOB, overrides)


# Ranking runs select the epoch by validation NDCG and lean on the softmax click task (FINDINGS: the objective
# decides cold-start quality), with the interest score's popularity term (model.interest_bias: a ridge fit of log
# popularity on the item text, so a held-out item is ranked with a text-based popularity prior); the encoder stays
# frozen there to keep CPU time bounded.
RANKING = {"model.interest_bias": True, "early_stopping.metric": "val_ndcg@10", "early_stopping.mode": "max", "tasks.click.weight": 1.0,
           "tasks.click.max_rows": 1024, "tasks.related.max_rows": 1024, "tasks.rating.weight": 0.0,
           "optim.items_encoded_per_step": 0, "optim.lr_encoder": 0.0, "optim.batch_size": 2048,
           "optim.lr_heads": 0.005, "optim.lr_schedule": "cosine", "optim.epochs": 8, "early_stopping.patience": 2}
PER_USER = {"kind": "per_user_random", "test_frac": 0.2, "seed": 42}
# name -> (spec overrides, kind, split label as in baselines.json)
RUNS = {
    "u1": ({}, "rating", "u1"),
    "cold": ({"data.split": {"kind": "cold_start_items", "item_frac": 0.2, "seed": 0}, **RANKING}, "cold",
             "cold-start-items-20%"),
    "ml100k-8020": ({"data.split": PER_USER, **RANKING}, "ranking", "per-user-80-20"),
    "mlls-8020": ({"data.dataset": "ml-latest-small", "data.split": PER_USER, **RANKING}, "ranking",
                  "per-user-80-20"),
}


def record(dataset: str, split: str, model: str, metrics: dict, fit_seconds: float, **extra) -> dict:
    return {"dataset": dataset, "split": split, "model": model, "fit_seconds": round(fit_seconds, 1),
            "metrics": {k: round(float(v), 6) for k, v in metrics.items()}, **extra}


def interest_ablation(rec, data, cands) -> dict:
    """NDCG@10 of the two parts of the interest score alone: the cosine of the towers, and the per-item popularity
    term (for held-out items: its ridge prior on the item text)."""
    t = rec.tables

    class Part:
        def __init__(self, cosine: float, bias: float) -> None:
            self.cosine, self.bias = cosine, bias

        def score_items(self, users):
            u = torch.as_tensor(np.asarray(users), dtype=torch.long)
            cos = t["user_interest"][u] @ t["item_interest"].T
            return (self.cosine * cos + self.bias * t["item_interest_bias"][None, :]).numpy()

    return {name: round(evaluate_ranking(Part(*w), data.train, data.test, data.n_items, KS, candidates=cands,
                                         exclude_df=data.valid)["ndcg@10"], 6)
            for name, w in (("cosine_only_ndcg@10", (1.0, 0.0)), ("popularity_term_only_ndcg@10", (0.0, 1.0)))}


def run(name: str, epochs: int | None) -> list[dict]:
    overrides, kind, label = RUNS[name]
    if epochs:
        overrides = {**overrides, "optim.epochs": epochs}
    spec = _spec(overrides)
    data = prepare_data(spec)
    res = train_local(spec, data, device="cpu")
    rec = res.recommender()
    out = []
    cands = data.cold_items if kind == "cold" else None
    ours = evaluate_ranking(rec, data.train, data.test, data.n_items, KS, candidates=cands, exclude_df=data.valid)
    if kind == "rating":
        ours = {**evaluate_ratings(rec, data.test), **ours}
    ours.pop("n", None)
    extra = {"ablation": interest_ablation(rec, data, cands)} if kind == "cold" and spec.model.interest_bias else {}
    out.append(record(data.dataset, label, "two_tower_minilm", ours, res.fit_seconds,
                      best_epoch=res.best.get("epoch"), split_params=data.split_params,
                      config=spec.model_dump(mode="json"), **extra))
    # peers on the identical split (train + valid rows: they need no early-stopping slice)
    full_train = pd.concat([data.train, data.valid]) if data.valid is not None else data.train
    peers = {"cold": [("tfidf", lambda: TfidfContent(item_texts=data.item_texts))],
             "ranking": [("ease", EASE), ("item_knn", ItemKNN)], "rating": [("biased_mf", BiasedMF)]}[kind]
    for model_name, make in peers:
        t = time.perf_counter()
        model = make().fit(full_train, data.n_users, data.n_items)
        fit = time.perf_counter() - t
        m = evaluate_ranking(model, full_train, data.test, data.n_items, KS, candidates=cands)
        if kind == "rating":
            m = {**evaluate_ratings(model, data.test), **m}
        m.pop("n", None)
        out.append(record(data.dataset, label, model_name, m, fit))
    for r in out:
        print(name, r["model"], {k: round(v, 4) for k, v in r["metrics"].items()}, f"{r['fit_seconds']}s", flush=True)
    return out


def summary(records: list[dict]) -> dict:
    """The acceptance ratios, read off the records of this file."""
    def metric(dataset, split, model, key):
        return next((r["metrics"].get(key) for r in records
                     if (r["dataset"], r["split"], r["model"]) == (dataset, split, model)), None)

    out = {}
    ours_rmse, mf_rmse = metric("ml-100k", "u1", "two_tower_minilm", "rmse"), metric("ml-100k", "u1", "biased_mf", "rmse")
    if ours_rmse is not None:
        out["u1_rmse"] = {"ours": ours_rmse, "biased_mf_same_run": mf_rmse, "surprise_SVDpp_baselines": 0.924749}
    ours_cold = metric("ml-100k", "cold-start-items-20%", "two_tower_minilm", "ndcg@10")
    tfidf = metric("ml-100k", "cold-start-items-20%", "tfidf", "ndcg@10")
    if ours_cold is not None and tfidf:
        out["cold_ndcg@10_ratio_vs_tfidf"] = ours_cold / tfidf
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(RUNS), help="Comma-separated subset of " + ",".join(RUNS))
    ap.add_argument("--epochs", type=int, default=None, help="Override optim.epochs (quick runs).")
    ap.add_argument("--out", type=Path, default=RESULTS / "encoder.json", help="JSON to merge records into.")
    args = ap.parse_args()

    path = args.out
    result = json.loads(path.read_text()) if path.exists() else {"records": []}
    for name in args.only.split(","):
        recs = run(name, args.epochs)
        keys = {(r["dataset"], r["split"], r["model"]) for r in recs}
        result["records"] = [r for r in result["records"] if (r["dataset"], r["split"], r["model"]) not in keys] + recs
        result["summary"] = summary(result["records"])
        write_results("encoder", result, summary=result["summary"], path=path)
    plot(result, path.with_suffix(".png"))
    print(json.dumps(result["summary"], indent=1))


def plot(result: dict, path: Path) -> None:
    recs = [r for r in result["records"] if "ndcg@10" in r["metrics"]]
    fig, ax = figure(figsize=(8, 4))
    labels = [f"{r['dataset']}\n{r['split']}\n{r['model']}" for r in recs]
    ax.bar(range(len(recs)), [r["metrics"]["ndcg@10"] for r in recs])
    ax.set_xticks(range(len(recs)), labels, fontsize=6)
    ax.set_ylabel("NDCG@10")
    ax.set_title("Encoder two-tower vs peers (same splits)")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
