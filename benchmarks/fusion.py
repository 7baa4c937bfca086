"""Fused ensemble (two-tower + EASE + item-kNN) vs EASE alone on warm ranking, same process, identical splits.

Run: ``LMREC_DATA_DIR=/work/shared/data python benchmarks/fusion.py [--only ml100k-8020,mlls-8020]``
Writes benchmarks/results/fusion.json. Target: fused NDCG@10 >= 1.03x EASE on ML-100K and ml-latest-small
per-user 80/20 (seed 42; full ranking, train items excluded).

Protocol (the test rows decide nothing):

1. The two-tower is the frozen-encoder ranking run of benchmarks/encoder.py (same spec, trained on ``data.train``,
   best epoch picked on ``data.valid``).
2. EASE's λ and item-kNN's k are chosen by each member's own NDCG@10 on ``data.valid``, fitted on ``data.train``.
3. The fusion weights (``FusedEnsemble.fit_weights``, method "best": listwise surrogate + a simplex grid scored by
   validation NDCG@10) are fitted on ``data.valid``, the members fitted on / pooling ``data.train``.
4. With everything chosen, the ensemble is refitted on train + valid (EASE and kNN refit, the two-tower re-pools
   its user histories without retraining) and scored on ``data.test``, train and valid items excluded; so are the
   peers (EASE and item-kNN with their default settings, fitted on train + valid exactly as in encoder.py) and the
   tuned-λ EASE alone (variant "ease_tuned", to show what tuning alone buys).

Fusion is ``lmrec.strategies.ensemble.fuse`` (z-scores over each user's unseen items, weighted mean): the function
Serve's ``fuse_scores`` matches.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from harness import RESULTS, write_results

from lmrec.evaluation.evaluate import evaluate_ranking
from lmrec.models.baselines import EASE, ItemKNN
from lmrec.strategies.ensemble import FusedEnsemble

KS = (10,)
METRICS = ("ndcg@10", "recall@10", "hr@10", "mrr@10")
EASE_L2 = (100.0, 250.0, 500.0, 1000.0)  # candidates for λ (250: EASE's default, the peer's setting)
KNN_K = (50, 100, 200)  # candidates for item-kNN's k (100: the default)
GRID_STEP = 0.1


def _metrics(model, known: pd.DataFrame, target: pd.DataFrame, n_items: int) -> dict[str, float]:
    m = evaluate_ranking(model, known, target, n_items, KS)
    return {k: round(float(m[k]), 6) for k in METRICS}


def _tune(make, values, data) -> tuple[object, float, dict[float, float], float]:
    """Fit ``make(v)`` on train for each v; keep the best by validation NDCG@10 (first of ties)."""
    start = time.perf_counter()
    scores, best = {}, None
    for v in values:
        model = make(v).fit(data.train, data.n_users, data.n_items)
        scores[v] = round(float(evaluate_ranking(model, data.train, data.valid, data.n_items, KS)["ndcg@10"]), 6)
        if best is None or scores[v] > scores[best[0]]:
            best = (v, model)
    return best[1], best[0], scores, time.perf_counter() - start


def fused_records(two_tower_rec, data, dataset_label: str, split_label: str, *, ease_l2=EASE_L2, knn_k=KNN_K,
                  grid_step: float = GRID_STEP) -> list[dict]:
    """Records for variants ease, item_knn, two_tower, fused (and ease_tuned); see the module docstring."""
    if data.valid is None or not len(data.valid):
        raise ValueError("fusion needs a validation part (data.valid) to choose its settings on")
    n_users, n_items = data.n_users, data.n_items
    seconds = {}
    # 1-2. members fitted on train; EASE λ and kNN k chosen on validation
    ease, l2, ease_valid, seconds["tune_ease"] = _tune(lambda v: EASE(l2=v), ease_l2, data)
    knn, k, knn_valid, seconds["tune_item_knn"] = _tune(lambda v: ItemKNN(k=v), knn_k, data)
    two_tower_rec.fit(data.train, n_users, n_items)  # histories = train rows (what it was trained with)
    # 3. fusion weights on validation
    t = time.perf_counter()
    ens = FusedEnsemble({"two_tower": two_tower_rec, "ease": ease, "item_knn": knn})
    weights = ens.fit_weights(data.train, data.valid, n_items, method="best", grid_step=grid_step,
                              max_users=n_users)
    seconds["fit_weights"] = time.perf_counter() - t
    # 4. refit on train + valid, score test
    full = pd.concat([data.train, data.valid], ignore_index=True)
    t = time.perf_counter()
    ens.fit(full, n_users, n_items)
    seconds["refit_members"] = time.perf_counter() - t
    t = time.perf_counter()
    fused = _metrics(ens, full, data.test, n_items)
    seconds["score_fused"] = time.perf_counter() - t
    settings = {"ease_l2": l2, "item_knn_k": k, "ease_valid_ndcg@10": ease_valid, "item_knn_valid_ndcg@10": knn_valid,
                "fusion_validation": ens.validation}
    base = {"dataset": dataset_label, "split": split_label}
    out = [{**base, "variant": "fused", "metrics": fused, "weights": dict(weights), "settings": settings},
           {**base, "variant": "two_tower", "metrics": _metrics(two_tower_rec, full, data.test, n_items),
            "weights": {"two_tower": 1.0}},
           {**base, "variant": "ease_tuned", "metrics": _metrics(ease, full, data.test, n_items),
            "weights": {"ease": 1.0}, "settings": {"ease_l2": l2}}]
    # peers: default settings on train + valid, as benchmarks/encoder.py (reuse an identical fit)
    t = time.perf_counter()
    peer_ease = ease if l2 == EASE().l2 else EASE().fit(full, n_users, n_items)
    peer_knn = knn if k == ItemKNN().k else ItemKNN().fit(full, n_users, n_items)
    out += [{**base, "variant": "ease", "metrics": _metrics(peer_ease, full, data.test, n_items),
             "weights": {"ease": 1.0}, "settings": {"ease_l2": EASE().l2}},
            {**base, "variant": "item_knn", "metrics": _metrics(peer_knn, full, data.test, n_items),
             "weights": {"item_knn": 1.0}, "settings": {"item_knn_k": ItemKNN().k}}]
    seconds["peers"] = time.perf_counter() - t
    for r in out:
        r["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    return out


RUNS = {"ml100k-8020": {}, "mlls-8020": {"data.dataset": "ml-latest-small"}}


def run(name: str, epochs: int | None) -> list[dict]:
    from encoder import PER_USER, RANKING, _spec

    from lmrec.training.data import prepare_data
    from lmrec.training.local import train_local

    overrides = {"data.split": PER_USER, **RANKING, **RUNS[name]}
    if epochs:
        overrides["optim.epochs"] = epochs
    spec = _spec(overrides)
    data = prepare_data(spec)
    t = time.perf_counter()
    res = train_local(spec, data, device="cpu")
    train_seconds = time.perf_counter() - t
    recs = fused_records(res.recommender(), data, data.dataset, "per-user-80-20")
    for r in recs:
        r["seconds"]["train_two_tower"] = round(train_seconds, 1)
        r["best_epoch"] = res.best.get("epoch")
        print(name, r["variant"], r["metrics"], r["weights"], flush=True)
    return recs


def summary(records: list[dict]) -> dict:
    out = {}
    for ds in sorted({r["dataset"] for r in records}):
        by = {r["variant"]: r for r in records if r["dataset"] == ds}
        if "fused" in by and "ease" in by:
            out[ds] = {"fused_over_ease_ndcg@10": round(by["fused"]["metrics"]["ndcg@10"] / by["ease"]["metrics"]["ndcg@10"], 4),
                       "fused_ndcg@10": by["fused"]["metrics"]["ndcg@10"], "ease_ndcg@10": by["ease"]["metrics"]["ndcg@10"],
                       "weights": by["fused"]["weights"], "target": 1.03}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(RUNS), help="Comma-separated subset of " + ",".join(RUNS))
    ap.add_argument("--epochs", type=int, default=None, help="Override optim.epochs (quick runs).")
    ap.add_argument("--out", type=Path, default=RESULTS / "fusion.json", help="JSON to merge records into.")
    args = ap.parse_args()

    path = args.out
    result = json.loads(path.read_text()) if path.exists() else {"records": []}
    for name in args.only.split(","):
        recs = run(name, args.epochs)
        keys = {(r["dataset"], r["split"], r["variant"]) for r in recs}
        result["records"] = [r for r in result["records"] if (r["dataset"], r["split"], r["variant"]) not in keys] + recs
        result["summary"] = summary(result["records"])
        write_results("fusion", result, summary=result["summary"], path=path)
    for ds, s in result["summary"].items():
        print(f"{ds}: fused/EASE NDCG@10 = {s['fused_over_ease_ndcg@10']:.4f} (fused {s['fused_ndcg@10']:.4f}, "
              f"EASE {s['ease_ndcg@10']:.4f}), weights {s['weights']}")


if __name__ == "__main__":
    main()
