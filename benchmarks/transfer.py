"""Transfer that pays: the shipped fine-tuning recipe vs the frozen encoder, and the fused service vs EASE, one run.

Run on a GPU machine (see ../shared/gpu/README.md; no Ray needed, the single-process driver runs the same recipe):
    source .gpu-carry/env.sh && python3 benchmarks/transfer.py --out "$OUT/transfer.json" --deadline 370 --save-scores
Encoder size on a CPU (MiniLM-L6 vs the packaged all-mpnet-base-v2, frozen and LoRA under a CPU budget; install
the encoder first: see lmrec.models.packaged):
    LMREC_DATA_DIR=../shared/data python benchmarks/transfer.py --encoder-sizes \
        --out benchmarks/results/transfer_encoder_size_cpu.json [--protocols amazon-cold,mlls-warm --variants ...]
Smoke run on a CPU (tiny random encoder, 1 epoch: checks the script, measures nothing):
    LMREC_DATA_DIR=../shared/data python benchmarks/transfer.py --smoke --out /tmp/transfer-smoke.json

"fine-tuned" is ``jobs/strategies/full.yaml`` (the shipped recipe) under each protocol's split and ranking
settings; "frozen" is the same spec with ``optim.lr_encoder: 0``. Every model picks its epoch on the validation
slice of the training rows (never the test rows). Ablations switch one ingredient of the recipe off (or back to
the recipe shipped before) on the ML-100K cold-item protocol, where fine-tuning used to lose most. Records are
written after every run, so a run cut short by its deadline keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness import REPO, RESULTS, figure, machine, save_figure, write_results

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.evaluation.evaluate import evaluate_ranking, evaluate_ratings
from lmrec.models.baselines import EASE, ItemKNN, TfidfContent
from lmrec.training.data import prepare_data
from lmrec.training.local import train_local

FULL_JOB = REPO / "jobs" / "strategies" / "full.yaml"
U1_JOB = REPO / "jobs" / "ml100k-minilm-multitask.yaml"
KS = (10,)

# Ranking protocols: the click softmax ranks, the epoch is picked by validation NDCG@10; the recipe fields
# (how the encoder trains) come from the shipped full.yaml.
RANKING = {"model.interest_bias": True, "early_stopping.metric": "val_ndcg@10", "early_stopping.mode": "max",
           "early_stopping.patience": 3, "tasks.click.weight": 1.0, "tasks.click.max_rows": 1024,
           "tasks.related.max_rows": 1024, "tasks.rating.weight": 0.0, "optim.batch_size": 2048,
           "optim.lr_heads": 0.005, "optim.lr_schedule": "cosine", "scaling.engine": "ddp"}
PER_USER = {"kind": "per_user_random", "test_frac": 0.2, "seed": 42}
COLD = {"kind": "cold_start_items", "item_frac": 0.2, "seed": 0}
# name -> (spec overrides, kind, split label)
# cold-item protocols pick their epoch by ranking held-out *training items* (valid_by: items), as the test does
COLD_VALID = {"data.valid_by": "items", "data.valid_from_train": 0.1}
PROTOCOLS = {
    "ml100k-cold": ({"data.split": COLD, **RANKING, **COLD_VALID}, "cold", "cold-start-items-20%"),
    "ml100k-warm": ({"data.split": PER_USER, **RANKING}, "warm", "per-user-80-20"),
    "amazon-cold": ({"data.dataset": "amazon-magazine", "data.split": COLD, **RANKING, **COLD_VALID,
                     "model.max_length": 128},
                    "cold", "cold-start-items-20%"),
    "mlls-warm": ({"data.dataset": "ml-latest-small", "data.split": PER_USER, **RANKING}, "warm", "per-user-80-20"),
}
FROZEN = {"optim.lr_encoder": 0.0}
# one ingredient of the recipe changed at a time (the recipe is full.yaml; see docs/strategies.md)
ABLATIONS = {  # most telling first
    "recipe_before": {"optim.encode_items": "batch", "optim.items_encoded_per_step": 1024,
                      "optim.encoder_dropout": True, "model.interest_prior": "fixed", "optim.encoder_start_epoch": 0,
                      "optim.encoder_warmup_steps": 0, "optim.layer_decay": 1.0, "optim.lr_encoder": 3e-5},
    "with_dropout": {"optim.encoder_dropout": True},
    "prior_refit": {"model.interest_prior": "refit"},
    "batch_items_only": {"optim.encode_items": "batch", "optim.items_encoded_per_step": 1024},
    "no_two_stage": {"optim.encoder_start_epoch": 0, "optim.encoder_warmup_steps": 0, "optim.layer_decay": 1.0},
    "lr_encoder_1e-4": {"optim.lr_encoder": 1e-4},
    "lr_encoder_2e-5": {"optim.lr_encoder": 2e-5},
    "temperature_0.05": {"tasks.click.temperature": 0.05, "tasks.related.temperature": 0.05},
    "no_item_ids": {"model.item_id_embeddings": False},
    "id_dropout_0.8": {"tasks.click.id_dropout": 0.8},
}
# the other encoder-training strategies on the same recipe (full.yaml + the strategy block of its own job)
STRATEGIES = {
    "lora": {"strategy": {"name": "lora", "rank": 8, "alpha": 16.0, "targets": ["query", "value"]},
             "optim.lr_encoder": 5e-4, "optim.layer_decay": 1.0},
    "progressive_unfreezing": {"strategy": {"name": "progressive_unfreezing", "every": 1, "unit": "epoch",
                                            "decay": 0.8, "start_with_heads": True},
                               "optim.encoder_start_epoch": 0, "optim.encoder_warmup_steps": 0,
                               "optim.layer_decay": 1.0},
    "layer_sharing": {"strategy": {"name": "layer_sharing", "layers": 3}},
    "curriculum": {"strategy": {"name": "curriculum", "difficulty": "baseline_loss", "pacing": "root",
                                "start": 0.3, "full_at_epoch": 3}},
}
# encoder size on a CPU (--encoder-sizes): the packaged all-mpnet-base-v2 (lmrec.models.packaged; 109 M parameters,
# hidden 768) beside the default MiniLM-L6 (22.7 M, hidden 384), frozen, and LoRA under a CPU budget: 32 of each
# step's items re-encoded (not the catalogue), heads alone in epoch 0, at most 4 epochs
MPNET = "all-mpnet-base-v2"
CPU_LORA = {"strategy": {"name": "lora", "rank": 8, "alpha": 16.0, "targets": ["query", "value"]},
            "optim.lr_encoder": 5e-4, "optim.layer_decay": 1.0, "optim.encode_items": "batch",
            "optim.items_encoded_per_step": 32, "optim.encoder_start_epoch": 1, "optim.encoder_warmup_steps": 10,
            "optim.epochs": 4}
# MPNet names its attention projections q, k, v, o
MPNET_LORA = {**CPU_LORA, "strategy": {**CPU_LORA["strategy"], "targets": ["q", "v"]}}
ENCODER_SIZES = {
    "frozen": FROZEN,
    f"frozen[{MPNET}]": {"model.encoder": MPNET, **FROZEN},
    "lora_cpu_budget": CPU_LORA,
    f"lora_cpu_budget[{MPNET}]": {"model.encoder": MPNET, **MPNET_LORA},
}
# item text richness where the data has rich text: Amazon titles + descriptions cut at 32 tokens instead of 128
TEXT_ABLATIONS = {"amazon-cold": {"model.max_length": 32}}
SMOKE = {"model.encoder_init": "random-tiny", "optim.epochs": 1, "optim.encoder_start_epoch": 0,
         "data.max_users": 150, "model.max_length": 16}


def spec_for(protocol: str, variant_overrides: dict, smoke: bool) -> TrainSpec:
    overrides, _, _ = PROTOCOLS[protocol]
    variant_overrides = dict(variant_overrides)
    if smoke and variant_overrides.get("strategy", {}).get("name") == "layer_sharing":
        variant_overrides["strategy"] = {**variant_overrides["strategy"], "layers": 1}  # the tiny encoder has 2
    return load_spec(TrainSpec, FULL_JOB, {**overrides, **variant_overrides, **(SMOKE if smoke else {})})


class Bench:
    """Runs and records; writes the JSON after every record."""

    def __init__(self, out: Path, deadline: float, smoke: bool, save_scores: bool = False) -> None:
        self.out, self.smoke, self.save_scores = out, smoke, save_scores
        self.deadline = time.monotonic() + deadline
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device_name = torch.cuda.get_device_name(0) if self.device == "cuda" else "cpu"
        self.machine = machine()  # its date and commit label each record
        self.result = {"device": self.device_name, "records": [], "skipped": []}
        self.item_text: dict[tuple, torch.Tensor] = {}  # pretrained item encodings, shared by variants
        self.models: dict[tuple[str, str], tuple] = {}

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, rec: dict) -> None:
        key = (rec["protocol"], rec["variant"])  # a re-run replaces an appended record
        self.result["records"] = [r for r in self.result["records"] if (r["protocol"], r["variant"]) != key] + [
            {**rec, "run": self.machine["date"], "commit": self.machine["commit"]}]
        print(json.dumps({k: rec[k] for k in ("protocol", "variant")} | {"ndcg@10": rec["metrics"].get("ndcg@10"),
                                                                          "rmse": rec["metrics"].get("rmse")}),
              flush=True)
        self.write()

    def write(self) -> None:
        self.result["summary"] = summary(self.result["records"], self.device_name)
        write_results("transfer", self.result, summary=self.result["summary"], path=self.out)

    def train(self, protocol: str, variant: str, overrides: dict, need: float = 30.0):
        """Train one variant on one protocol and record it; returns (recommender, data) or None past the deadline."""
        if self.time_left() < need:
            self.result["skipped"].append(f"{protocol}/{variant}: deadline")
            print(f"skip {protocol}/{variant}: {self.time_left():.0f} s left", flush=True)
            return None
        _, kind, label = PROTOCOLS[protocol]
        spec = spec_for(protocol, overrides, self.smoke)
        data = prepare_data(spec)
        key = (protocol, spec.model.encoder, spec.model.max_length, spec.data.item_template)
        # a student encoder (layer sharing) encodes differently from the pretrained one the others start from
        shared = None if spec.strategy.name == "layer_sharing" else self.item_text.get(key)
        res = train_local(spec, data, device=self.device, item_text=shared)
        if not spec.optim.finetune_encoder:
            self.item_text.setdefault(key, res.recipe.model.item_text.detach().clone())
        rec = res.recommender()
        cands = data.cold_items if kind == "cold" else None
        metrics = evaluate_ranking(rec, data.train, data.test, data.n_items, KS, candidates=cands,
                                   exclude_df=data.valid)
        metrics.pop("n", None)
        r = res.recipe
        self.add({
            "dataset": data.dataset, "split": label, "protocol": protocol, "variant": variant, "model": "two_tower",
            "metrics": _round(metrics), "device": self.device_name, "overrides": overrides,
            "best_epoch": res.best.get("epoch"), "best_val_ndcg@10": res.best.get("val_ndcg@10"),
            "val_ndcg_by_epoch": [round(e.get("val_ndcg@10", float("nan")), 4) for e in res.epochs],
            "budget": {"epochs_run": len(res.epochs), "epochs_max": spec.optim.epochs,
                       "steps_per_epoch": r.steps_per_epoch, "batch_size": r.batch_size,
                       "encoder_trains_from_epoch": spec.optim.encoder_start_epoch if spec.optim.finetune_encoder
                       else None, "items_encoded": float(sum(e.get("items_encoded", 0) for e in res.epochs)),
                       "fit_seconds": round(res.fit_seconds, 1)},
        })
        self.models[(protocol, variant)] = (rec, data)
        if self.save_scores and kind == "warm" and variant in ("frozen", "full"):
            self.save_scores(protocol, variant, rec, data)
        return rec, data

    def save_scores(self, protocol: str, variant: str, rec, data) -> None:
        """Every user's item scores (float16) with train histories and with train + valid histories: the fusion
        can then be refitted and rescored on any machine without retraining the member."""
        users = np.arange(data.n_users)
        valid_scores = rec.score_items(users).astype(np.float16)
        known = pd.concat([data.train, data.valid]) if data.valid is not None else data.train
        rec.fit(known, data.n_users, data.n_items)
        test_scores = rec.score_items(users).astype(np.float16)
        rec.fit(data.train, data.n_users, data.n_items)
        path = self.out.parent / f"scores_{protocol}_{variant}.npz"
        np.savez_compressed(path, valid=valid_scores, test=test_scores)

    def peers(self, protocol: str) -> None:
        """Content (cold) or collaborative (warm) peers on the identical split, fitted on train + valid rows."""
        _, kind, label = PROTOCOLS[protocol]
        frozen = self.models.get((protocol, "frozen"))
        if frozen is None:
            return
        data = frozen[1]
        full_train = pd.concat([data.train, data.valid]) if data.valid is not None else data.train
        cands = data.cold_items if kind == "cold" else None
        makers = ([("tfidf", lambda: TfidfContent(item_texts=data.item_texts))] if kind == "cold"
                  else [("ease", EASE), ("item_knn", ItemKNN)])
        for name, make in makers:
            t = time.perf_counter()
            model = make().fit(full_train, data.n_users, data.n_items)
            m = evaluate_ranking(model, full_train, data.test, data.n_items, KS, candidates=cands)
            m.pop("n", None)
            self.add({"dataset": data.dataset, "split": label, "protocol": protocol, "variant": name, "model": name,
                      "metrics": _round(m), "device": "cpu", "budget": {"fit_seconds": round(time.perf_counter() - t, 1)}})

    def fused(self, protocol: str, variant: str) -> None:
        """The served ensemble (two-tower + EASE + item-kNN), scored offline through the same fusion code."""
        got = self.models.get((protocol, variant))
        if got is None or self.time_left() < 20:
            return
        try:
            from fusion import fused_records
        except ImportError as exc:
            self.result["skipped"].append(f"{protocol}/fused: {exc}")
            return
        rec, data = got
        _, _, label = PROTOCOLS[protocol]
        try:
            fused = fused_records(rec, data, data.dataset, label)
        except Exception as exc:  # noqa: BLE001  (a failed fusion must not cost the rest of a GPU run)
            self.result["skipped"].append(f"{protocol}/fused: {type(exc).__name__}: {exc}")
            self.write()
            return
        for r in fused:
            if r["variant"] != "fused":
                continue  # the peers come from `peers` (same fitting), the two-tower from `train`
            self.add({**r, "protocol": protocol, "variant": f"fused[{variant}]", "model": "fused",
                      "metrics": _round(r["metrics"]), "device": self.device_name})

    def u1(self) -> None:
        """ML-100K u1 rating RMSE of the default job (frozen encoder: rating runs gain nothing from fine-tuning)."""
        if self.time_left() < 40:
            self.result["skipped"].append("u1: deadline")
            return
        over = {"scaling.engine": "ddp", **(SMOKE if self.smoke else {})}
        over.pop("data.max_users", None)  # the canonical u1 split needs all of u.data
        spec = load_spec(TrainSpec, U1_JOB, over)
        data = prepare_data(spec)
        res = train_local(spec, data, device=self.device)
        m = evaluate_ratings(res.recommender(), data.test)
        m.pop("n", None)
        self.add({"dataset": "ml-100k", "split": "u1", "protocol": "u1", "variant": "frozen", "model": "two_tower",
                  "metrics": _round(m), "device": self.device_name,
                  "budget": {"epochs_run": len(res.epochs), "fit_seconds": round(res.fit_seconds, 1)}})


def _round(metrics: dict) -> dict:
    return {k: round(float(v), 6) for k, v in metrics.items()}


def summary(records: list[dict], device: str) -> dict:
    """The acceptance ratios (ours / the named reference, measured in this run); None where not measured."""
    def ndcg(protocol, variant):
        return next((r["metrics"].get("ndcg@10") for r in records
                     if r["protocol"] == protocol and r["variant"] == variant), None)

    def ratio(a, b):
        return None if a is None or not b else round(a / b, 4)

    def best_fused(protocol):
        vals = [r["metrics"]["ndcg@10"] for r in records if r["protocol"] == protocol and r["model"] == "fused"
                and r["variant"] == "fused[full]"] or \
               [r["metrics"]["ndcg@10"] for r in records if r["protocol"] == protocol and r["model"] == "fused"]
        return vals[0] if vals else None

    u1 = next((r["metrics"]["rmse"] for r in records if r["protocol"] == "u1"), None)
    return {
        "finetune_vs_frozen_cold_ml100k": ratio(ndcg("ml100k-cold", "full"), ndcg("ml100k-cold", "frozen")),
        "finetune_vs_frozen_warm_ml100k": ratio(ndcg("ml100k-warm", "full"), ndcg("ml100k-warm", "frozen")),
        "finetune_vs_frozen_cold_amazon": ratio(ndcg("amazon-cold", "full"), ndcg("amazon-cold", "frozen")),
        "fused_vs_ease_ml100k": ratio(best_fused("ml100k-warm"), ndcg("ml100k-warm", "ease")),
        "fused_vs_ease_mlls": ratio(best_fused("mlls-warm"), ndcg("mlls-warm", "ease")),
        "cold_vs_tfidf_ml100k": ratio(max(filter(None, [ndcg("ml100k-cold", "full"), ndcg("ml100k-cold", "frozen")]),
                                          default=None), ndcg("ml100k-cold", "tfidf")),
        "cold_vs_tfidf_amazon": ratio(max(filter(None, [ndcg("amazon-cold", "full"), ndcg("amazon-cold", "frozen")]),
                                          default=None), ndcg("amazon-cold", "tfidf")),
        "u1_rmse": u1,
        "device": device,
    }


def plot(result: dict, path: Path) -> None:
    """Left: each protocol's frozen / fine-tuned / peers / fused NDCG@10; right: the ablations (ML-100K cold)."""
    recs = [r for r in result["records"] if "ndcg@10" in r["metrics"]]
    main_recs = [r for r in recs if ":" not in r["variant"] or r["variant"].startswith("fused")]
    abl = [r for r in recs if r["protocol"] == "ml100k-cold" and (":" in r["variant"] and not
                                                                 r["variant"].startswith("fused")
                                                                 or r["variant"] in ("frozen", "full"))]
    fig, axes = figure(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    colors = {"frozen": "tab:gray", "full": "tab:blue"}
    for ax, group, title in ((axes[0], main_recs, "fine-tuned (full) vs frozen vs peers, same splits"),
                             (axes[1], abl, "ML-100K cold items: recipe ablations and strategies")):
        labels = [f"{r['protocol']}\n{r['variant']}" if ax is axes[0] else r["variant"] for r in group]
        vals = [r["metrics"]["ndcg@10"] for r in group]
        ax.bar(range(len(group)), vals, color=[colors.get(r["variant"], "tab:orange" if r["model"] == "fused"
                                                          else "tab:green") for r in group])
        ax.set_xticks(range(len(group)), labels, rotation=75, fontsize=6)
        ax.set_ylabel("NDCG@10 (test)")
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"lmrec transfer benchmark on {result.get('device')}", fontsize=10)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "transfer.json")
    ap.add_argument("--deadline", type=float, default=3600.0, help="Seconds; runs that would start later are skipped.")
    ap.add_argument("--smoke", action="store_true", help="Tiny random encoder, 1 epoch, 150 users (script check).")
    ap.add_argument("--ablations", default=",".join(ABLATIONS), help="Comma-separated subset ('' = none).")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="Comma-separated subset ('' = none).")
    ap.add_argument("--encoder-sizes", action="store_true",
                    help="Only the encoder-size rows (of --protocols) into --out (a CPU run).")
    ap.add_argument("--protocols", default="ml100k-cold,ml100k-warm", help="--encoder-sizes: protocols to run.")
    ap.add_argument("--variants", default=",".join(ENCODER_SIZES), help="--encoder-sizes: variants to run.")
    ap.add_argument("--append", action="store_true",
                    help="Keep the records already in --out (each record names its run's commit and device).")
    ap.add_argument("--save-scores", action="store_true",
                    help="Also write each warm frozen/full model's score matrices (npz beside --out): the fusion can "
                         "then be refitted elsewhere without retraining (GPU runs).")
    ap.add_argument("--plot-only", action="store_true", help="Redraw the PNG from an existing --out JSON.")
    ap.add_argument("--skip", default="", help="Comma-separated protocols to leave out.")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return
    torch.manual_seed(0)
    np.random.seed(0)
    b = Bench(args.out, args.deadline, args.smoke, args.save_scores)
    if args.append and args.out.exists():
        old = json.loads(args.out.read_text())
        b.result["records"] = old.get("records", [])
        b.result["earlier_runs"] = old.get("earlier_runs", []) + [old.get("machine", {})]
    skip = set(filter(None, args.skip.split(",")))
    if args.encoder_sizes:
        chosen = args.variants.split(",")
        for protocol in args.protocols.split(","):
            for variant in chosen:
                b.train(protocol, variant, ENCODER_SIZES[variant])
                if PROTOCOLS[protocol][1] == "warm" and variant.startswith("frozen"):
                    b.fused(protocol, variant)
            b.peers(protocol)
        b.write()
        print(json.dumps([{k: r[k] for k in ("protocol", "variant")} | {"ndcg@10": r["metrics"].get("ndcg@10")}
                          for r in b.result["records"]], indent=1))
        return
    # most important first: the acceptance comparisons, then the cheap frozen-only rows, then the ablations
    for protocol in ("ml100k-cold", "ml100k-warm", "amazon-cold"):
        if protocol in skip:
            continue
        b.train(protocol, "frozen", FROZEN)
        b.train(protocol, "full", {}, need=60.0)
        b.train(protocol, "full:prior_refit", ABLATIONS["prior_refit"], need=60.0)
        b.peers(protocol)
        if PROTOCOLS[protocol][1] == "warm":
            b.fused(protocol, "full")
    if "mlls-warm" not in skip:
        # ml-latest-small's 9,742-item catalogue is not re-encoded per step: its ensemble member is the frozen model
        b.train("mlls-warm", "frozen", FROZEN)
        b.peers("mlls-warm")
        b.fused("mlls-warm", "frozen")
    if "u1" not in skip:
        b.u1()
    ablations = [n for n in args.ablations.split(",") if n]
    ablations = [n for n in ablations if n != "prior_refit"]  # run on every protocol above
    first, rest = ablations[:4], ablations[4:]  # the recipe's own ingredients, then the strategies, then settings
    for name in first:
        b.train("ml100k-cold", f"ablation:{name}", ABLATIONS[name], need=60.0)
    for name in filter(None, args.strategies.split(",")):
        b.train("ml100k-cold", f"strategy:{name}", STRATEGIES[name], need=60.0)
    for name in rest:
        b.train("ml100k-cold", f"ablation:{name}", ABLATIONS[name], need=60.0)
    for protocol, over in TEXT_ABLATIONS.items():
        if protocol not in skip:
            b.train(protocol, "ablation:text_32_tokens:frozen", {**over, **FROZEN})
            b.train(protocol, "ablation:text_32_tokens:full", over)
    b.write()
    plot(b.result, args.out.with_suffix(".png"))
    print(json.dumps(b.result["summary"], indent=1))


if __name__ == "__main__":
    main()
