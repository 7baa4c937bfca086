"""Transfer strategies side by side on ML-100K: accuracy and cost of each (docs/strategies.md has the recipes).

Run: `.venv/bin/python benchmarks/strategies.py` with LMREC_DATA_DIR pointing at the datasets (≈20 min on a
2-core CPU). Writes benchmarks/results/strategies.json (+ strategies.png); artifacts and the ensemble weights JSON
go to runs/strategies/.

Protocols:
- warm (u1): RMSE on u1.test, NDCG@10 over all items (train and valid items excluded), relevant = test items;
- cold-start items: 20% of items held out with all their ratings; rank only those items; relevant = rated;
- cold-start users: 20% of users held out, each known by their earliest 10 ratings; at k = 1, 3, 5, 10 known
  ratings, NDCG@10 over all items (all 10 support items excluded, so every k ranks the same candidates).
Short runs on CPU: these compare strategies under one small budget, they are not tuned results. Encoder-training
rows train one epoch, frozen-encoder rows two (the frozen teacher of the components phase four). All rows share one frozen MiniLM encoding of the item texts where the encoder
is the pretrained one (encoded once, passed to each run).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, write_results  # noqa: E402

from lmrec.config.base import load_spec  # noqa: E402
from lmrec.config.train import TrainSpec  # noqa: E402
from lmrec.data.registry import load_dataset  # noqa: E402
from lmrec.data.splits import cold_start_users  # noqa: E402
from lmrec.evaluation.evaluate import evaluate_ranking, evaluate_ratings  # noqa: E402
from lmrec.strategies.scopes import count_parameters  # noqa: E402
from lmrec.training.data import prepare_data  # noqa: E402
from lmrec.training.local import train_local  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "strategies"
log = logging.getLogger("strategies")


def spec_for(name: str, **overrides) -> TrainSpec:
    """The strategy's job spec, shortened for the benchmark (dotted-key overrides)."""
    base = {"optim.log_every_steps": 1000, "scaling.engine": "ddp", "early_stopping.patience": 10}
    return load_spec(TrainSpec, ROOT / "jobs" / "strategies" / f"{name}.yaml", {**base, **overrides})


def inference_ms(rec, n_users: int, repeats: int = 3) -> float:
    """Milliseconds per user of ``score_items`` over the whole catalogue (batches of 256 users)."""
    users = np.arange(min(256, n_users))
    rec.score_items(users)
    start = time.perf_counter()
    for _ in range(repeats):
        rec.score_items(users)
    return (time.perf_counter() - start) * 1000 / (repeats * len(users))


def warm_metrics(rec, data) -> dict:
    """u1 test: RMSE and NDCG@10 (train and valid items excluded)."""
    out = {}
    if getattr(rec, "rates", True):
        out["rmse"] = evaluate_ratings(rec, data.test)["rmse"]
    r = evaluate_ranking(rec, data.train, data.test, data.n_items, ks=(10,), exclude_df=data.valid)
    out["ndcg@10"] = r["ndcg@10"]
    return out


def cold_item_metrics(rec, data) -> dict:
    cand = np.intersect1d(data.cold_items, data.test["item_idx"].to_numpy())
    r = evaluate_ranking(rec, data.train, data.test, data.n_items, ks=(10,), candidates=cand, exclude_df=data.valid)
    return {"cold_item_ndcg@10": r["ndcg@10"]}


def run_recipe(name: str, spec: TrainSpec, data, item_text: torch.Tensor | None, rows: list, artifact: bool = False):
    """Train one strategy with the real recipe (train_local), evaluate, record accuracy and cost."""
    log.info("== %s", name)
    res = train_local(spec, data, device="cpu", item_text=item_text,
                      artifact_dir=str(RUNS / name) if artifact else None)
    rec = res.recommender()
    model_count = count_parameters(res.recipe.model)
    row = {"strategy": name, "protocol": "u1", **warm_metrics(rec, data),
           "trainable_params": model_count.trainable,
           "encoder_trainable_params": res.recipe.strategy.encoder_count.trainable,
           "encoder_params": res.recipe.strategy.encoder_count.total,
           "epochs": len(res.epochs), "train_s": res.fit_seconds, "inference_ms_per_user": inference_ms(rec, data.n_users)}
    log.info("%s", row)
    rows.append(row)
    return res, rec


def item_text_cache(data) -> Path:
    return RUNS / f"item_text_{data.fingerprint}.pt"


def shared_item_text(data) -> tuple[torch.Tensor, float]:
    """One frozen MiniLM encoding of every item text, cached under runs/strategies/ (all phases reuse it)."""
    from lmrec.models.encoder import build_encoder, encode_all

    path = item_text_cache(data)
    if path.exists():
        return torch.load(path, weights_only=True), 0.0
    t0 = time.perf_counter()
    encoder = build_encoder("default")
    text = encode_all(encoder, torch.as_tensor(data.item_tokens), torch.as_tensor(data.item_lengths), 256)
    seconds = time.perf_counter() - t0
    torch.save(text, path)
    return text, seconds


def components_phase(data, rows: list, notes: dict, want) -> None:
    """Rows that need no strategy wiring in the recipe: the frozen teacher, MF students, label propagation as a
    recommender, the fused ensemble, cold-start users (meta-learning)."""
    from lmrec.models.baselines.ease import EASE
    from lmrec.models.baselines.mf import BiasedMF
    from lmrec.strategies.distillation import DistilledMF, Teacher
    from lmrec.strategies.label_propagation import LabelPropagation

    teacher_dir = RUNS / "frozen"
    # the frozen two-tower (the teacher and an ensemble member): the multitask job with the encoder frozen
    spec = load_spec(TrainSpec, ROOT / "jobs" / "ml100k-minilm-multitask.yaml", {
        "optim.epochs": 4, "optim.lr_encoder": 0.0, "optim.items_encoded_per_step": 0, "optim.log_every_steps": 1000,
        "scaling.engine": "ddp", "early_stopping.patience": 10, "name": "frozen-teacher"})
    t0 = time.perf_counter()
    res = train_local(spec, data, device="cpu", artifact_dir=str(teacher_dir))
    two_tower = res.recommender()
    count = count_parameters(res.recipe.model)
    enc = count_parameters(res.recipe.model.encoder)
    rows.append({"strategy": "frozen (teacher)", "protocol": "u1", **warm_metrics(two_tower, data),
                 "trainable_params": count.trainable, "encoder_trainable_params": enc.trainable,
                 "encoder_params": enc.total, "epochs": len(res.epochs), "train_s": time.perf_counter() - t0,
                 "inference_ms_per_user": inference_ms(two_tower, data.n_users)})
    log.info("%s", rows[-1])
    item_text = res.recipe.model.item_text.detach().clone()  # the frozen encoding every later row reuses
    torch.save(item_text, item_text_cache(data))

    def plain(name, model, fit_s):
        row = {"strategy": name, "protocol": "u1", **warm_metrics(model, data),
               "train_s": fit_s, "inference_ms_per_user": inference_ms(model, data.n_users)}
        if hasattr(model, "user_factors_"):
            row["trainable_params"] = int(model.user_factors_.size + model.item_factors_.size
                                          + model.user_bias_.size + model.item_bias_.size)
        rows.append(row)
        log.info("%s", row)
        return model

    t0 = time.perf_counter()
    mf = plain("mf (no teacher)", BiasedMF(dim=64, l2=0.1).fit(data.train, data.n_users, data.n_items),
               time.perf_counter() - t0)
    teacher = Teacher.from_artifact(teacher_dir)
    t0 = time.perf_counter()
    student = DistilledMF(teacher, dim=64, l2=0.05, lam=1.0, epochs=20, batch_size=4096)
    plain("distillation: mf student", student.fit(data.train, data.n_users, data.n_items), time.perf_counter() - t0)
    t0 = time.perf_counter()
    lp = LabelPropagation(k=30, alpha=0.8).fit(data.train, data.n_users, data.n_items)
    plain("label_propagation (recommender)", lp, time.perf_counter() - t0)
    notes["label_propagation_iterations"] = lp.iterations_

    from lmrec.strategies.ensemble import FusedEnsemble

    t0 = time.perf_counter()
    ease = EASE(l2=250.0).fit(data.train, data.n_users, data.n_items)
    ens = FusedEnsemble({"two_tower": two_tower, "mf": mf, "ease": ease})
    weights = ens.fit_weights(data.train, data.valid, data.n_items, rating_members=["two_tower", "mf"])
    fit_s = time.perf_counter() - t0
    for name, member in (("ease (member)", ease),):
        plain(name, member, 0.0)
    plain("ensemble (two_tower+mf+ease)", ens, fit_s)
    path = ens.save_weights(RUNS / "ensemble_weights.json", artifacts={"two_tower": str(teacher_dir)},
                            metrics={k: v for k, v in rows[-1].items() if k in ("rmse", "ndcg@10")})
    notes["ensemble_weights"] = {"ranking": weights, "rating": ens.rating_weights,
                                 "file": str(path.relative_to(ROOT))}
    if want("meta_learning"):
        rows.extend(cold_user_rows(item_text, notes))


def recipe_phase(data, item_text, rows: list, notes: dict, want) -> None:
    """Strategies wired into the two-tower recipe (TrainSpec ``strategy``), each from its job spec, shortened."""
    teacher_dir = str(RUNS / "frozen")
    # one CPU budget for all rows: frozen-encoder rows 2 epochs, encoder-training rows 1 epoch (+ one full
    # re-encode of the catalogue); batches of 2048 (the softmax tasks cap their rows per step, so larger
    # batches cost less per rating)
    short = {"optim.epochs": 2, "optim.batch_size": 2048}
    one_epoch = {"optim.epochs": 1, "optim.batch_size": 2048, "optim.items_encoded_per_step": 16}
    runs = [
        ("frozen", spec_for("frozen", **short), item_text),
        ("lora", spec_for("lora", **one_epoch), item_text),
        ("full", spec_for("full", **one_epoch), item_text),
        # per-step stages so one epoch (≈38 steps) walks down the whole encoder
        ("progressive_unfreezing", spec_for("progressive_unfreezing", **one_epoch,
                                            **{"strategy.unit": "step", "strategy.every": 6}), item_text),
        ("layer_sharing", spec_for("layer_sharing", **one_epoch), None),
        ("curriculum", spec_for("curriculum", **short, **{"strategy.full_at_epoch": 1}), item_text),
        ("label_propagation", spec_for("label_propagation", **short), item_text),
        ("distillation", spec_for("distillation", **short, **{
            "optim.lr_encoder": 0.0, "optim.items_encoded_per_step": 0,
            "strategy.teacher_artifact": teacher_dir, "strategy.student_layers": 3}), None),
    ]
    for name, spec, text in runs:
        if want(name):
            run_recipe(name, spec, data, text, rows)
    if want("cold_items"):
        ci_spec = spec_for("frozen", **short, **{"data.split": {"kind": "cold_start_items", "item_frac": 0.2,
                                                                           "seed": 0},
                                         "early_stopping.metric": "val_ndcg@10", "early_stopping.mode": "max"})
        ci_data = prepare_data(ci_spec)
        for name, strategy in (("frozen", {"name": "frozen"}),):
            run_spec = TrainSpec.model_validate({**ci_spec.model_dump(), "strategy": strategy})
            res = train_local(run_spec, ci_data, device="cpu", item_text=item_text)
            rows.append({"strategy": name, "protocol": "cold_items", **cold_item_metrics(res.recommender(), ci_data),
                         "train_s": res.fit_seconds})
            log.info("%s", rows[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=["components", "recipe", "all"], default="all",
                        help="components: rows that need no recipe wiring; recipe: TrainSpec strategies")
    parser.add_argument("--only", nargs="*", help="run only these rows (names as in the table)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    want = (lambda n: True) if not args.only else (lambda n: n in args.only)
    RUNS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    previous = RESULTS / "strategies.json"
    doc = json.loads(previous.read_text()) if previous.exists() else {"rows": [], "notes": {}}
    rows: list[dict] = []
    notes: dict = dict(doc.get("notes", {}))
    base = load_spec(TrainSpec, ROOT / "jobs" / "ml100k-minilm-multitask.yaml")
    data = prepare_data(base)
    if args.phase in ("components", "all"):
        components_phase(data, rows, notes, want)
    if args.phase in ("recipe", "all"):
        item_text, seconds = shared_item_text(data)
        if seconds:
            notes["frozen_encoding_s"] = seconds
        recipe_phase(data, item_text, rows, notes, want)
    notes[f"{args.phase}_phase_s"] = time.perf_counter() - started
    # rows of the other phase (or of rows not re-run) are kept; re-run rows replace their old version
    fresh = {(r["strategy"], r["protocol"]) for r in rows}
    kept = [r for r in doc.get("rows", []) if (r["strategy"], r["protocol"]) not in fresh]
    write_results("strategies", {"rows": kept + rows, "notes": notes})
    plot(kept + rows)


def cold_user_rows(item_text: torch.Tensor, notes: dict) -> list[dict]:
    """k-shot cold-user NDCG@10 / RMSE: FOMAML init + adaptation vs conventional training + the same adaptation,
    and label propagation's neighbour scores; adaptation latency for k = 10."""
    from lmrec.strategies.label_propagation import LabelPropagation
    from lmrec.strategies.meta_learning import ColdStartModel
    from lmrec.strategies.meta_loop import (
        MetaSettings, adaptation_latency_ms, evaluate_cold_users, support_by_user, train_meta, train_standard,
    )
    from lmrec.evaluation.metrics import ranking_metrics

    ds = load_dataset("ml-100k")
    split = cold_start_users(ds.interactions, user_frac=0.2, k_support=10, seed=0)
    warm = split.train_without_support()
    seen = torch.zeros(ds.n_items, dtype=torch.bool)
    seen[torch.as_tensor(warm["item_idx"].to_numpy(copy=True))] = True
    settings = MetaSettings(epochs=10)
    out = []
    for name, trainer in (("meta_learning (fomaml)", train_meta), ("no meta-learning (same model)", train_standard)):
        model = ColdStartModel(item_text, 64, float(warm["rating"].mean()), seen_items=seen)
        t0 = time.perf_counter()
        trainer(model, warm, settings)
        fit_s = time.perf_counter() - t0
        m = evaluate_cold_users(model, split.support, split.test, ds.n_items, (1, 3, 5, 10), settings.inner_steps,
                                settings.inner_lr, settings.click_weight, settings.l2)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        sup = support_by_user(split.support)
        first = sorted(sup)[0]
        lat = adaptation_latency_ms(model, sup[first][0][:10], sup[first][1][:10], settings.inner_steps,
                                    settings.inner_lr, settings.click_weight, settings.l2)
        torch.set_num_threads(threads)
        out.append({"strategy": name, "protocol": "cold_users", **m, "train_s": fit_s,
                    "trainable_params": count_parameters(model).trainable,
                    "adapt_ms_k10_median": lat["median_ms"], "adapt_ms_k10_p95": lat["p95_ms"]})
        log.info("%s", out[-1])
    # label propagation: the cold user is linked to warm users by their k ratings
    lp = LabelPropagation(k=30, alpha=0.8).fit(warm, ds.n_users, ds.n_items)
    sup = support_by_user(split.support)
    users = np.array(sorted(set(sup) & set(split.test["user_idx"].unique())))
    rel = np.zeros((len(users), ds.n_items), dtype=bool)
    exc = np.zeros_like(rel)
    pos = {u: r for r, u in enumerate(users)}
    t = split.test[split.test["user_idx"].isin(users)]
    rel[t["user_idx"].map(pos).to_numpy(), t["item_idx"].to_numpy()] = True
    for u in users:
        exc[pos[u], sup[u][0]] = True
    row = {"strategy": "label_propagation (cold users)", "protocol": "cold_users"}
    for k in (1, 3, 5, 10):
        scores = np.stack([lp.cold_user_scores(sup[u][0][:k], sup[u][1][:k]) for u in users])
        row[f"ndcg@10_k{k}"] = ranking_metrics(scores, rel, exc, ks=(10,))["ndcg@10"]
    out.append(row)
    log.info("%s", row)
    notes["cold_users"] = {"users": int(len(users)), "k_support": 10}
    return out


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warm = [r for r in rows if r["protocol"] == "u1"]
    cold = [r for r in rows if r["protocol"] == "cold_users" and "ndcg@10_k1" in r]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    names = [r["strategy"] for r in warm]
    axes[0].barh(names, [r.get("rmse", np.nan) for r in warm], color="#4c72b0")
    axes[0].set_xlim(0.85, max(r.get("rmse", 0.9) for r in warm) + 0.03)
    axes[0].set_title("ML-100K u1: RMSE (lower is better)")
    axes[1].barh(names, [r["ndcg@10"] for r in warm], color="#55a868")
    axes[1].set_title("u1: NDCG@10 (higher is better)")
    for r in cold:
        ks = [1, 3, 5, 10]
        axes[2].plot(ks, [r[f"ndcg@10_k{k}"] for k in ks], marker="o", label=r["strategy"])
    axes[2].set_xlabel("known ratings of the new user (k)")
    axes[2].set_title("cold-start users: NDCG@10")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "strategies.png", dpi=110)


if __name__ == "__main__":
    main()
