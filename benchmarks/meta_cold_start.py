"""Meta-learning for cold-start users on ML-100K: k-shot NDCG@10 / RMSE of popularity, the same model trained
without meta-learning, and the meta-learned model, all in one run; plus adaptation latency for k = 10.

Run: `.venv/bin/python benchmarks/meta_cold_start.py` (about 10 min on a 2-core CPU; reuses the frozen MiniLM item
encoding cached under runs/strategies/ (benchmarks/frozen_item_text.py), or encodes it once). Writes
benchmarks/results/meta_cold_start.json; benchmarks/strategies.py adds the same rows to strategies.json.

Protocol: ``cold_start_users`` (20% of users held out, seed 0), each known by their earliest 10 ratings; at
k = 1, 3, 5, 10 known ratings (the first k), NDCG@10 over all items with all 10 support items excluded (so every
k ranks the same candidates), relevant = the user's later ratings; RMSE on those ratings. Meta-validation: 10% of
the remaining (warm) users are held out the same way and pick each model's test-time inner loop (steps, step
size, proximal weight; 0 steps = the user tower's output as is); neither model trains on them.
Both models share the architecture (``ColdStartModel``: frozen MiniLM item text -> item vectors and biases, a
history-aggregate user tower, rating and interest heads) and the bias init; they differ only in training:
- no meta-learning: ordinary training, every rating predicted from the user's whole history minus itself;
- meta-learning: first-order MAML episodes, support = a user's first k ~ U{1..10} ratings, 3 inner steps on the
  fast user parameters, query = 64 of their later ratings.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np
import torch

from frozen_item_text import shared_item_text
from harness import REPO, write_results

from lmrec.data.registry import load_dataset  # noqa: E402
from lmrec.data.splits import cold_start_users  # noqa: E402
from lmrec.models.baselines.popularity import Popularity  # noqa: E402
from lmrec.strategies.meta_learning import ColdStartModel  # noqa: E402
from lmrec.strategies.meta_loop import (  # noqa: E402
    ColdUsers, MetaSettings, adaptation_latency_ms, evaluate_cold_users, meta_validation_split, select_inner_loop,
    train_meta, train_standard,
)
from lmrec.strategies.scopes import count_parameters  # noqa: E402

log = logging.getLogger("meta_cold_start")
SHOTS = (1, 3, 5, 10)
META = MetaSettings(algorithm="fomaml", inner_steps=3, inner_lr=0.5, click_weight=3.0, l2=1.0, max_support=10,
                    query_size=64, tasks_per_batch=32, epochs=30, lr=3e-3, seed=0)
# ordinary training predicts each target from a leave-one-out aggregate of the whole history: [users, targets,
# items] logits make a step several times dearer than a meta step, so it gets fewer targets per step and half the
# epochs (about the meta run's training time; train_s in the rows)
STANDARD = dataclasses.replace(META, query_size=16, epochs=15)


def popularity_row(warm, cold: ColdUsers, n_users: int, n_items: int) -> dict:
    """Interaction counts of the warm users; ratings from its biased-mean fallback (the same for every k)."""
    pop = Popularity().fit(warm, n_users, n_items)
    scores = pop.score_items(cold.users)
    rows = cold.test_rows
    m = rows.mask.numpy()
    pred = pop.predict(np.repeat(cold.users, m.sum(1)), rows.items.numpy()[m])
    rmse = float(np.sqrt(np.mean((pred - rows.ratings.numpy()[m]) ** 2)))
    ndcg = float(cold.ranking(scores)["ndcg@10"])
    return {"strategy": "popularity", "protocol": "cold_users", "cold_users": float(len(cold.users)),
            **{f"ndcg@10_k{k}": ndcg for k in SHOTS}, **{f"rmse_k{k}": rmse for k in SHOTS}}


def label_propagation_row(warm, cold: ColdUsers, n_users: int, n_items: int) -> dict:
    """Label propagation's cold-user scores: the new user joins the warm users' kNN graph through their k ratings."""
    from lmrec.strategies.label_propagation import LabelPropagation

    lp = LabelPropagation(k=30, alpha=0.8).fit(warm, n_users, n_items)
    row = {"strategy": "label_propagation (cold users)", "protocol": "cold_users"}
    for k in SHOTS:
        scores = np.stack([lp.cold_user_scores(cold.support[int(u)][0][:k], cold.support[int(u)][1][:k])
                           for u in cold.users])
        row[f"ndcg@10_k{k}"] = float(cold.ranking(scores)["ndcg@10"])
    return row


def latency(model: ColdStartModel, cold: ColdUsers, steps_list: list[int], chosen: dict, click_weight: float) -> dict:
    """Adapt-and-score milliseconds for one new user with k = 10 ratings, one torch thread (a serving request)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        user = int(cold.users[0])
        items, ratings = cold.support[user][0][:10], cold.support[user][1][:10]
        out = {}
        for steps in sorted(set(steps_list)):
            lat = adaptation_latency_ms(model, items, ratings, steps, chosen["inner_lr"], click_weight, chosen["l2"])
            out[f"adapt_ms_k10_steps{steps}_median"] = lat["median_ms"]
            out[f"adapt_ms_k10_steps{steps}_p95"] = lat["p95_ms"]
            out[f"adapt_cpu_ms_k10_steps{steps}_median"] = lat["cpu_median_ms"]
        return out
    finally:
        torch.set_num_threads(threads)


def cold_user_rows(item_text: torch.Tensor, notes: dict) -> list[dict]:
    """Popularity, label propagation, the same model without meta-learning, the meta-learned model: k-shot rows
    for cold users.

    Also writes benchmarks/results/meta_cold_start.json (rows + meta-validation grids + settings)."""
    load_at_start = round(os.getloadavg()[0], 2)
    ds = load_dataset("ml-100k")
    split = cold_start_users(ds.interactions, user_frac=0.2, k_support=10, seed=0)
    warm = split.train_without_support()
    meta_train, val = meta_validation_split(warm, ds.n_items, user_frac=0.1, k_support=10, seed=1)
    cold = ColdUsers.from_frames(split.support, split.test, ds.n_items)
    seen = torch.zeros(ds.n_items, dtype=torch.bool)
    seen[torch.as_tensor(meta_train["item_idx"].to_numpy(copy=True))] = True
    rows = [popularity_row(meta_train, cold, ds.n_users, ds.n_items),
            label_propagation_row(meta_train, cold, ds.n_users, ds.n_items)]
    log.info("%s", rows)
    selections = {}
    for name, trainer, settings in (("no meta-learning (same model)", train_standard, STANDARD),
                                    ("meta_learning (fomaml)", train_meta, META)):
        model = ColdStartModel(item_text, 64, float(meta_train["rating"].mean()), seen_items=seen)
        t0 = time.perf_counter()
        trainer(model, meta_train, settings)
        fit_s = time.perf_counter() - t0
        chosen = select_inner_loop(model, val, settings.click_weight)
        selections[name] = chosen
        log.info("%s: meta-validation chose %s", name, {k: v for k, v in chosen.items() if k != "grid"})
        m = evaluate_cold_users(model, cold, shots=SHOTS, steps=chosen["steps"], inner_lr=chosen["inner_lr"],
                                click_weight=settings.click_weight, l2=chosen["l2"])
        rows.append({"strategy": name, "protocol": "cold_users", **m, "train_s": fit_s,
                     "inner_steps": chosen["steps"], "inner_lr": chosen["inner_lr"], "inner_l2": chosen["l2"],
                     "trainable_params": count_parameters(model).trainable,
                     **latency(model, cold, [chosen["steps"], META.inner_steps, 5], chosen, settings.click_weight)})
        log.info("%s", rows[-1])
    notes["cold_users"] = {"users": int(len(cold.users)), "k_support": 10, "meta_val_users": int(len(val.users)),
                           "file": "benchmarks/results/meta_cold_start.json"}
    write_results("meta_cold_start", {
        "protocol": __doc__.split("\n\n")[2], "load_average_1m_at_start": load_at_start,
        "settings": {"meta": dataclasses.asdict(META), "standard": dataclasses.asdict(STANDARD)},
        "meta_validation": selections, "rows": rows}, summary=summary(rows))
    return rows


def summary(rows: list[dict]) -> dict:
    """Per k: the meta-learned model's NDCG@10 and its ratio to the same model without meta-learning and to
    popularity."""
    by = {r["strategy"]: r for r in rows}
    meta, plain, pop = (by.get(n, {}) for n in ("meta_learning (fomaml)", "no meta-learning (same model)",
                                                 "popularity"))

    def ratio(a, b):
        return round(a / b, 4) if a is not None and b else None

    out = {}
    for k in SHOTS:
        m = meta.get(f"ndcg@10_k{k}")
        out[f"k{k}"] = {"meta_ndcg@10": None if m is None else round(m, 4),
                        "meta_over_no_meta": ratio(m, plain.get(f"ndcg@10_k{k}")),
                        "meta_over_popularity": ratio(m, pop.get(f"ndcg@10_k{k}"))}
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from lmrec.config.base import load_spec
    from lmrec.config.train import TrainSpec
    from lmrec.training.data import prepare_data

    torch.manual_seed(0)
    base = load_spec(TrainSpec, REPO / "jobs" / "ml100k-minilm-multitask.yaml")
    cold_user_rows(shared_item_text(prepare_data(base)), {})


if __name__ == "__main__":
    main()
