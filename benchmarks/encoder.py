"""Quality of the encoder two-tower vs classic peers, same process, identical splits.

Run: ``LMREC_DATA_DIR=/work/shared/data python benchmarks/encoder.py [--only u1,cold,ml100k-8020,mlls-8020]``
Writes benchmarks/results/encoder.json (one record per (dataset, split, model)) and encoder.png.

Runs: ML-100K u1 (rating RMSE; target <= 0.92 and <= SVD++ 0.933), ML-100K cold-start items (20% of items held
out; rank only held-out items; target NDCG@10 >= 1.25x TF-IDF), ML-100K and ml-latest-small per-user 80/20
(full ranking, train items excluded; vs EASE).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.evaluation.evaluate import evaluate_ranking, evaluate_ratings
from lmrec.models.baselines import EASE, TfidfContent
from lmrec.training.data import prepare_data
from lmrec.training.local import train_local

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
JOB = ROOT / "jobs" / "ml100k-minilm-multitask.yaml"
KS = (10,)


def _spec(overrides: dict) -> TrainSpec:
    return load_spec(TrainSpec, JOB, overrides)


# Ranking runs select the epoch by validation NDCG and lean on the softmax click task (FINDINGS: the objective
# decides cold-start quality); the encoder stays frozen there to keep CPU time bounded.
RANKING = {"early_stopping.metric": "val_ndcg@10", "early_stopping.mode": "max", "tasks.click.weight": 1.0,
           "optim.items_encoded_per_step": 0, "optim.lr_encoder": 0.0}
RUNS = {
    "u1": ({}, "rating"),
    "cold": ({"data.split": {"kind": "cold_start_items", "item_frac": 0.2, "seed": 0}, **RANKING}, "cold"),
    "ml100k-8020": ({"data.split": {"kind": "per_user_random", "test_frac": 0.2, "seed": 0}, **RANKING}, "ranking"),
    "mlls-8020": ({"data.dataset": "ml-latest-small", "data.split": {"kind": "per_user_random", "test_frac": 0.2,
                   "seed": 0}, **RANKING}, "ranking"),
}


def record(dataset: str, split: str, model: str, metrics: dict, fit_seconds: float, **extra) -> dict:
    return {"dataset": dataset, "split": split, "model": model, "fit_seconds": round(fit_seconds, 1),
            "metrics": {k: float(v) for k, v in metrics.items()}, **extra}


def run(name: str, epochs: int | None) -> list[dict]:
    overrides, kind = RUNS[name]
    if epochs:
        overrides = {**overrides, "optim.epochs": epochs}
    spec = _spec(overrides)
    data = prepare_data(spec)
    split = json.dumps(data.split_params, sort_keys=True)
    res = train_local(spec, data, device="cpu")
    rec = res.recommender()
    out = []
    cands = data.cold_items if kind == "cold" else None
    ours = evaluate_ranking(rec, data.train, data.test, data.n_items, KS, candidates=cands,
                            exclude_df=data.valid)
    if kind == "rating":
        ours = {**evaluate_ratings(rec, data.test), **ours}
    out.append(record(data.dataset, split, "two_tower_minilm", ours, res.fit_seconds, best_epoch=res.best.get("epoch"),
                      config=spec.model_dump(mode="json")))
    # peers on the identical split (train + valid rows: they need no early-stopping slice)
    import pandas as pd

    full_train = pd.concat([data.train, data.valid]) if data.valid is not None else data.train
    peers = {"cold": [("tfidf", lambda: TfidfContent(item_texts=data.item_texts))],
             "ranking": [("ease", lambda: EASE())], "rating": []}[kind]
    for label, make in peers:
        t = time.perf_counter()
        model = make().fit(full_train, data.n_users, data.n_items)
        fit = time.perf_counter() - t
        m = evaluate_ranking(model, full_train, data.test, data.n_items, KS, candidates=cands)
        out.append(record(data.dataset, split, label, m, fit))
    for r in out:
        print(name, r["model"], {k: round(v, 4) for k, v in r["metrics"].items()}, f"{r['fit_seconds']}s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(RUNS), help="Comma-separated subset of " + ",".join(RUNS))
    ap.add_argument("--epochs", type=int, default=None, help="Override optim.epochs (quick runs).")
    args = ap.parse_args()
    from train_throughput import machine

    path = RESULTS / "encoder.json"
    result = json.loads(path.read_text()) if path.exists() else {"records": []}
    result["machine"] = machine()
    for name in args.only.split(","):
        recs = run(name, args.epochs)
        keys = {(r["dataset"], r["split"], r["model"]) for r in recs}
        result["records"] = [r for r in result["records"] if (r["dataset"], r["split"], r["model"]) not in keys] + recs
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / "encoder.png")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in result["records"] if "ndcg@10" in r["metrics"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['dataset']}\n{json.loads(r['split']).get('kind', '')}\n{r['model']}" for r in recs]
    ax.bar(range(len(recs)), [r["metrics"]["ndcg@10"] for r in recs])
    ax.set_xticks(range(len(recs)), labels, fontsize=6)
    ax.set_ylabel("NDCG@10")
    ax.set_title("Encoder two-tower vs peers (same splits)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
