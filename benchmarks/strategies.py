"""Transfer strategies side by side on ML-100K, each trained by the real recipe from its job spec (jobs/strategies/).

Run: `.venv/bin/python benchmarks/strategies.py` with LMREC_DATA_DIR pointing at the datasets (about an hour on a
busy 2-core CPU; `--only NAME ...` re-runs some rows and keeps the others). Writes
benchmarks/results/strategies.json (+ strategies.png); artifacts and the ensemble weights go to runs/strategies/.

Every strategy trains twice, on two splits, through ``train_local`` (the recipe the Ray job runs):
- **u1** (the canonical ML-100K split): warm RMSE on u1.test;
- **protocol split** (one seeded split for the ranking protocols): 20% of items are cold (all their ratings held
  out), 20% of users are cold (each known by their earliest 5 ratings, the rest held out), and every other user's
  ratings of warm items are split per user 80/20. From one model per strategy it gives
  warm NDCG@10 (warm users, their 20%, candidates = warm items), cold-start item NDCG@10 (warm users, candidates =
  cold items) and cold-start user k = 5 NDCG@10 (candidates = warm items) and RMSE.
Next to them: the classic peers (biased MF, EASE, popularity) on the same splits, the fused ensemble
(two-tower + distilled student + MF) with its members, the distillation acceptance (student/teacher warm NDCG@10 and
encoder time per item text, measured side by side), and the meta-learning cold-user rows (their own k-shot protocol).

Short runs on a shared CPU: every row gets the same small budget (frozen-encoder rows a few epochs, encoder-training
rows fewer epochs with a few items re-encoded per step); they compare strategies under one budget, they are not
tuned results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from frozen_item_text import RUNS, shared_item_text
from harness import REPO, RESULTS, figure, save_figure, write_results
from meta_cold_start import cold_user_rows

from lmrec.config.base import load_spec  # noqa: E402
from lmrec.config.train import TrainSpec  # noqa: E402
from lmrec.data.registry import load_dataset  # noqa: E402
from lmrec.evaluation.evaluate import evaluate_ranking, evaluate_ratings  # noqa: E402
from lmrec.training.data import build_prepared, prepare_data  # noqa: E402
from lmrec.training.local import train_local  # noqa: E402

log = logging.getLogger("strategies")

# one CPU budget for every row (dotted overrides of the job specs)
COMMON = {"optim.log_every_steps": 1000, "scaling.engine": "ddp", "optim.batch_size": 2048, "optim.lr_heads": 0.01,
          "optim.lr_schedule": "cosine", "early_stopping.patience": 10, "optim.encode_batch_size": 128}
FROZEN_EPOCHS = 4
ENCODER_EPOCHS = 1
# a CPU budget: a few of each step's items re-encoded (not the whole catalogue), the encoder trains from epoch 0
ENCODER_ROWS = {"optim.epochs": ENCODER_EPOCHS, "optim.items_encoded_per_step": 4, "optim.encode_items": "batch",
                "optim.encoder_start_epoch": 0, "optim.refresh_every_epochs": ENCODER_EPOCHS}
# frozen-encoder rows first (the teacher and ensemble members among them), encoder-training rows after
FROZEN_STRATEGIES = ("frozen", "distillation", "curriculum", "label_propagation")
ENCODER_STRATEGIES = ("full", "lora", "progressive_unfreezing", "layer_sharing")


def spec_for(name: str, split: dict, **overrides) -> TrainSpec:
    """The strategy's job spec on ``split``, shortened to the benchmark's budget."""
    enc = name in ENCODER_STRATEGIES
    budget = ENCODER_ROWS if enc else {"optim.epochs": FROZEN_EPOCHS}
    return load_spec(TrainSpec, REPO / "jobs" / "strategies" / f"{name}.yaml",
                     {**COMMON, **budget, "data.split": split, "name": f"bench-{name}", **overrides})


U1 = {"kind": "ml100k_canonical", "name": "u1"}


# ---- the protocol split ----
def protocol_split(spec: TrainSpec, seed: int = 0, item_frac: float = 0.2, user_frac: float = 0.2,
                   k_support: int = 5, test_frac: float = 0.2, valid_frac: float = 0.05):
    """One seeded split carrying the three ranking protocols (see the module docstring); PreparedData + ids."""
    from lmrec.data.text import default_item_template, render_item_texts

    ds = load_dataset("ml-100k")
    df = ds.interactions
    rng = np.random.default_rng(seed)
    cold_items = np.sort(rng.permutation(ds.n_items)[: round(item_frac * ds.n_items)])
    on_cold_item = df["item_idx"].isin(cold_items).to_numpy()
    counts = df.loc[~on_cold_item].groupby("user_idx").size()
    eligible = counts.index[counts > k_support + 1].to_numpy()
    cold_users = np.sort(rng.permutation(eligible)[: round(user_frac * len(eligible))])
    of_cold_user = df["user_idx"].isin(cold_users).to_numpy()
    part = np.full(len(df), "train", dtype=object)
    part[on_cold_item & ~of_cold_user] = "test"  # cold-item protocol
    part[on_cold_item & of_cold_user] = "drop"
    cu = df[of_cold_user & ~on_cold_item].sort_values(["user_idx", "timestamp"], kind="stable")
    rank = cu.groupby("user_idx").cumcount().to_numpy()
    part[df.index.get_indexer(cu.index[rank >= k_support])] = "test"  # cold-user protocol; first k stay in train
    warm = np.flatnonzero(~of_cold_user & ~on_cold_item)
    draw = rng.random(len(warm))
    part[warm[draw < test_frac]] = "test"
    part[warm[(draw >= test_frac) & (draw < test_frac + valid_frac)]] = "valid"
    texts = render_item_texts(ds.items, default_item_template(ds.name))
    params = {"kind": "benchmark_protocols", "item_frac": item_frac, "user_frac": user_frac, "k_support": k_support,
              "test_frac": test_frac, "valid_frac": valid_frac, "seed": seed}
    data = build_prepared(spec, ds, df[part == "train"], df[part == "valid"], df[part == "test"], texts,
                          cold_items=cold_items, split_params=params)
    return data, cold_items, cold_users


def protocol_metrics(rec, data, cold_items: np.ndarray, cold_users: np.ndarray) -> dict:
    """Warm per-user NDCG@10, cold-item NDCG@10, cold-user (k = 5) NDCG@10 and RMSE from one model."""
    test = data.test
    warm_items = np.setdiff1d(np.arange(data.n_items), cold_items)
    is_ci = test["item_idx"].isin(cold_items)
    is_cu = test["user_idx"].isin(cold_users)
    warm, ci, cu = test[~is_ci & ~is_cu], test[is_ci & ~is_cu], test[is_cu & ~is_ci]
    rank = lambda part, cand: evaluate_ranking(rec, data.train, part, data.n_items, ks=(10,), candidates=cand,
                                               exclude_df=data.valid)["ndcg@10"]
    out = {"warm_ndcg@10": rank(warm, warm_items), "cold_item_ndcg@10": rank(ci, cold_items),
           "cold_user_k5_ndcg@10": rank(cu, warm_items)}
    if getattr(rec, "rates", True):
        out["cold_user_k5_rmse"] = evaluate_ratings(rec, cu)["rmse"]
    return out


def u1_metrics(rec, data) -> dict:
    out = {"u1_ndcg@10": evaluate_ranking(rec, data.train, data.test, data.n_items, ks=(10,),
                                          exclude_df=data.valid)["ndcg@10"]}
    if getattr(rec, "rates", True):
        out = {"u1_rmse": evaluate_ratings(rec, data.test)["rmse"], **out}
    return out


# ---- one strategy ----
def run_strategy(name: str, datasets: dict, item_text: torch.Tensor, members: dict) -> dict:
    """Train ``name`` on u1 and on the protocol split; one row with every metric and both training times."""
    row: dict = {"strategy": name, "kind": "recipe"}
    for key, (data, split, extra) in datasets.items():
        over = {}
        if name == "distillation":
            over = {"strategy.teacher_artifact": str(RUNS / key / "frozen"), "optim.lr_encoder": 0.0,
                    "optim.items_encoded_per_step": 0}
        if name == "progressive_unfreezing":  # per-step stages so the short run walks down the whole encoder
            steps = ENCODER_EPOCHS * data.steps_per_epoch(COMMON["optim.batch_size"])
            over = {"strategy.unit": "step", "strategy.every": max(1, steps // 8)}
        spec = spec_for(name, split, **over)
        # the pretrained encoder's encoding is shared; a student encoder (fewer layers) encodes for itself
        text = None if name in ("layer_sharing", "distillation") else item_text
        log.info("== %s on %s", name, key)
        res = train_local(spec, data, device="cpu", item_text=text,
                          artifact_dir=str(RUNS / key / name) if name in ("frozen", "distillation") else None)
        rec = res.recommender()
        metrics = u1_metrics(rec, data) if key == "u1" else protocol_metrics(rec, data, *extra)
        row.update(metrics)
        row[f"train_s_{key}"] = res.fit_seconds
        row[f"epochs_{key}"] = len(res.epochs)
        params = res.recipe.trainable_params
        row.update(trainable_params=int(params["trainable_params"]),
                   encoder_trainable_params=int(res.epochs[-1].get("encoder_trainable_params",
                                                                   params["encoder_trainable_params"])),
                   encoder_params=int(params["encoder_params"]),
                   encoder_layers=int(res.recipe.model.encoder.backbone.config.num_hidden_layers))
        if name in ("frozen", "distillation"):
            members.setdefault(key, {})["two_tower" if name == "frozen" else "student"] = rec
            row[f"artifact_{key}"] = str((RUNS / key / name).relative_to(REPO))
        log.info("%s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    row["train_s"] = row.get("train_s_u1", 0.0) + row.get("train_s_protocols", 0.0)
    return row


def classic_rows(datasets: dict, members: dict) -> list[dict]:
    from lmrec.models.baselines.ease import EASE
    from lmrec.models.baselines.mf import BiasedMF
    from lmrec.models.baselines.popularity import Popularity

    rows = []
    for name, make in (("classic: biased MF", lambda: BiasedMF(dim=64, l2=0.1)),
                       ("classic: EASE", lambda: EASE(l2=250.0)), ("classic: popularity", Popularity)):
        row: dict = {"strategy": name, "kind": "classic", "train_s": 0.0}
        for key, (data, _, extra) in datasets.items():
            t0 = time.perf_counter()
            model = make().fit(data.train, data.n_users, data.n_items)
            row["train_s"] += time.perf_counter() - t0
            row.update(u1_metrics(model, data) if key == "u1" else protocol_metrics(model, data, *extra))
            if name == "classic: biased MF":
                members.setdefault(key, {})["mf"] = model
        rows.append(row)
        log.info("%s", row)
    return rows


def ensemble_rows(datasets: dict, members: dict, notes: dict) -> list[dict]:
    """Fused ensemble (two-tower + distilled student + MF): weights on validation, scored on test, per split."""
    from lmrec.strategies.ensemble import FusedEnsemble

    row: dict = {"strategy": "ensemble (two_tower+student+mf)", "kind": "ensemble", "train_s": 0.0}
    member_rows = {m: {"strategy": f"ensemble member: {m}", "kind": "ensemble_member"} for m in
                   ("two_tower", "student", "mf")}
    weights = {}
    for key, (data, _, extra) in datasets.items():
        have = members.get(key, {})
        if not {"two_tower", "student", "mf"} <= set(have):
            continue
        t0 = time.perf_counter()
        ens = FusedEnsemble({m: have[m] for m in ("two_tower", "student", "mf")})
        w = ens.fit_weights(data.train, data.valid, data.n_items, rating_members=["two_tower", "student", "mf"])
        row["train_s"] += time.perf_counter() - t0
        metric = (lambda r: u1_metrics(r, data)) if key == "u1" else (lambda r: protocol_metrics(r, data, *extra))
        row.update(metric(ens))
        for m in member_rows:
            member_rows[m].update(metric(have[m]))
        weights[key] = {"ranking": w, "rating": ens.rating_weights}
        ens.save_weights(RUNS / key / "ensemble_weights.json",
                         artifacts={"two_tower": str(RUNS / key / "frozen"), "student": str(RUNS / key / "distillation")})
    if not weights:
        return []
    notes["ensemble_weights"] = weights
    best_rmse = min(r["u1_rmse"] for r in member_rows.values())
    best_ndcg = max(r["warm_ndcg@10"] for r in member_rows.values())
    notes["ensemble_acceptance"] = {
        "u1_rmse": row["u1_rmse"], "best_member_u1_rmse": best_rmse, "rmse_ok": row["u1_rmse"] <= best_rmse,
        "warm_ndcg@10": row["warm_ndcg@10"], "best_member_warm_ndcg@10": best_ndcg,
        "ndcg_ok": row["warm_ndcg@10"] >= best_ndcg}
    log.info("ensemble acceptance %s", notes["ensemble_acceptance"])
    return [row, *member_rows.values()]


def encoder_cost(data, teacher_dir: Path, student_dir: Path, repeats: int = 3) -> dict:
    """Encoder seconds per item text of teacher and student artifacts, measured alternately in this process."""
    from lmrec.artifacts.two_tower import load_artifact
    from lmrec.models.encoder import encode_all

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: a shared machine's load distorts multi-thread timings most
    enc = {"teacher": load_artifact(teacher_dir).model.encoder, "student": load_artifact(student_dir).model.encoder}
    ids, lengths = torch.as_tensor(data.item_tokens[:512]), torch.as_tensor(data.item_lengths[:512])
    times: dict[str, list[float]] = {k: [] for k in enc}
    for _ in range(repeats):
        for k, e in enc.items():
            t0 = time.perf_counter()
            encode_all(e, ids, lengths, 128)
            times[k].append((time.perf_counter() - t0) / len(ids))
    torch.set_num_threads(threads)
    ms = {k: 1000 * float(np.min(v)) for k, v in times.items()}
    return {"teacher_ms_per_item": ms["teacher"], "student_ms_per_item": ms["student"],
            "cost_ratio": ms["student"] / ms["teacher"], "items_timed": int(len(ids)), "repeats": repeats,
            "teacher_layers": enc["teacher"].backbone.config.num_hidden_layers,
            "student_layers": enc["student"].backbone.config.num_hidden_layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="re-run only these rows: strategy names, classic, ensemble, "
                                                   "distillation_cost, meta_learning (others are kept)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    # one thread: on a shared, oversubscribed CPU two-thread kernels lose more to waiting than they gain
    torch.set_num_threads(1)
    want = (lambda n: True) if not args.only else (lambda n: n in args.only)
    started = time.perf_counter()
    previous = RESULTS / "strategies.json"
    doc = json.loads(previous.read_text()) if previous.exists() else {}
    old_rows = doc.get("rows", []) if args.only else []
    notes: dict = dict(doc.get("notes", {})) if args.only else {}
    notes["load_average_at_start"] = os.getloadavg()
    rows: list[dict] = []

    def save() -> None:
        fresh = {r["strategy"] for r in rows}
        kept = [r for r in old_rows if r["strategy"] not in fresh]
        notes["benchmark_s"] = time.perf_counter() - started
        write_results("strategies", {"protocols": PROTOCOLS, "budget": {"common": COMMON, "frozen_epochs":
                                     FROZEN_EPOCHS, "encoder_rows": ENCODER_ROWS}, "rows": kept + rows,
                                     "notes": notes}, summary=summary(kept + rows, notes))
        plot(kept + rows)

    u1 = prepare_data(spec_for("frozen", U1))
    per_user = {"kind": "per_user_random", "test_frac": 0.2, "valid_frac": 0.05, "seed": 0}
    proto, cold_items, cold_users = protocol_split(spec_for("frozen", per_user))
    notes["protocol_split"] = {"train": len(proto.train), "valid": len(proto.valid), "test": len(proto.test),
                               "cold_items": len(cold_items), "cold_users": len(cold_users)}
    datasets = {"u1": (u1, U1, ()), "protocols": (proto, per_user, (cold_items, cold_users))}
    t0 = time.perf_counter()
    item_text = shared_item_text(u1)
    notes["shared_encoding_s"] = time.perf_counter() - t0
    members: dict = {}
    for name in FROZEN_STRATEGIES:
        if want(name):
            rows.append(run_strategy(name, datasets, item_text, members))
            save()
    for key, name, member in (("u1", "frozen", "two_tower"), ("protocols", "frozen", "two_tower"),
                              ("u1", "distillation", "student"), ("protocols", "distillation", "student")):
        if member not in members.get(key, {}) and (RUNS / key / name).exists():  # not re-run: its artifact
            from lmrec.artifacts.two_tower import load_artifact

            members.setdefault(key, {})[member] = load_artifact(RUNS / key / name).recommender
    if want("classic") or want("ensemble"):
        rows.extend(classic_rows(datasets, members))
        save()
    if want("ensemble"):
        rows.extend(ensemble_rows(datasets, members, notes))
        save()
    if want("distillation_cost") or want("distillation"):
        by_name = {r["strategy"]: r for r in rows + old_rows}
        teacher, student = by_name.get("frozen"), by_name.get("distillation")
        if teacher and student:
            cost = encoder_cost(proto, RUNS / "protocols" / "frozen", RUNS / "protocols" / "distillation")
            keep = student["warm_ndcg@10"] / teacher["warm_ndcg@10"]
            notes["distillation_acceptance"] = {
                **cost, "teacher_warm_ndcg@10": teacher["warm_ndcg@10"], "student_warm_ndcg@10":
                student["warm_ndcg@10"], "ndcg_kept": keep, "ok": keep >= 0.95 and cost["cost_ratio"] <= 0.6}
            log.info("distillation acceptance %s", notes["distillation_acceptance"])
            save()
    for name in ENCODER_STRATEGIES:
        if want(name):
            rows.append(run_strategy(name, datasets, item_text, members))
            save()
    if want("meta_learning"):
        rows.extend(cold_user_rows(item_text, notes))
        save()


PROTOCOLS = {
    "u1_rmse": "ML-100K u1.test RMSE (model trained on u1.base minus 5% valid)",
    "warm_ndcg@10": "protocol split: warm users' per-user 20% of warm-item ratings; candidates = warm items",
    "cold_item_ndcg@10": "protocol split: 20% of items with every rating held out; warm users; candidates = cold items",
    "cold_user_k5": "protocol split: 20% of users known by their earliest 5 ratings; NDCG@10 over warm items, RMSE",
    "meta rows (ndcg@10_kN)": "cold_start_users split (20% users, first 10 ratings = support), k = 1, 3, 5, 10",
}


def summary(rows: list[dict], notes: dict) -> dict:
    """Each recipe and classic row's four protocol figures, and the ensemble and distillation acceptances."""
    keys = ("u1_rmse", "warm_ndcg@10", "cold_item_ndcg@10", "cold_user_k5_ndcg@10")
    out: dict = {"rows": {r["strategy"]: {k: round(r[k], 4) for k in keys if k in r} for r in rows
                          if r.get("kind") in ("recipe", "classic", "ensemble")}}
    for name in ("ensemble_acceptance", "distillation_acceptance"):
        if name in notes:
            out[name] = notes[name]
    return out


def plot(rows: list[dict]) -> None:
    panels = [("u1_rmse", "u1 RMSE (lower is better)"), ("warm_ndcg@10", "warm per-user NDCG@10"),
              ("cold_item_ndcg@10", "cold-start items NDCG@10"), ("cold_user_k5_ndcg@10", "cold users, k=5: NDCG@10")]
    shown = [r for r in rows if any(k in r for k, _ in panels)]
    fig, axes = figure(1, len(panels) + 1, figsize=(24, 0.35 * max(len(shown), 8) + 2))
    names = [r["strategy"] for r in shown]
    colors = {"recipe": "#4c72b0", "classic": "#8c8c8c", "ensemble": "#c44e52", "ensemble_member": "#dd8452"}
    for ax, (key, title) in zip(axes, panels):
        vals = [r.get(key, np.nan) for r in shown]
        ax.barh(names, vals, color=[colors.get(r.get("kind"), "#55a868") for r in shown])
        finite = [v for v in vals if np.isfinite(v)]
        if key == "u1_rmse" and finite:
            ax.set_xlim(min(finite) - 0.03, max(finite) + 0.02)
        ax.set_title(title)
        if ax is not axes[0]:
            ax.set_yticklabels([])
    meta = [r for r in rows if "ndcg@10_k1" in r]
    for r in meta:
        ks = [k for k in (1, 3, 5, 10) if f"ndcg@10_k{k}" in r]
        axes[-1].plot(ks, [r[f"ndcg@10_k{k}"] for k in ks], marker="o", label=r["strategy"])
    axes[-1].set_xlabel("known ratings of the new user (k)")
    axes[-1].set_title("cold-start users (meta-learning protocol)")
    if meta:
        axes[-1].legend(fontsize=7)
    save_figure(fig, "strategies", dpi=100)


if __name__ == "__main__":
    main()
