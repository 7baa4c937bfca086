"""Transfer that pays: the shipped fine-tuning recipe vs the frozen encoder, and the fused service vs EASE, one run.

Run on a GPU machine (see ../shared/gpu/README.md; no Ray needed, the single-process driver runs the same recipe):
    source .gpu-carry/env.sh && python3 benchmarks/transfer.py --out "$OUT/transfer.json" --deadline 520
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
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import RESULTS, machine
from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.evaluation.evaluate import evaluate_ranking, evaluate_ratings
from lmrec.models.baselines import EASE, ItemKNN, TfidfContent
from lmrec.training.data import prepare_data
from lmrec.training.local import train_local

ROOT = Path(__file__).resolve().parents[1]
FULL_JOB = ROOT / "jobs" / "strategies" / "full.yaml"
U1_JOB = ROOT / "jobs" / "ml100k-minilm-multitask.yaml"
KS = (10,)

# Ranking protocols: the click softmax ranks, the epoch is picked by validation NDCG@10; the recipe fields
# (how the encoder trains) come from the shipped full.yaml.
RANKING = {"model.interest_bias": True, "early_stopping.metric": "val_ndcg@10", "early_stopping.mode": "max",
           "early_stopping.patience": 3, "tasks.click.weight": 1.0, "tasks.click.max_rows": 1024,
           "tasks.related.max_rows": 1024, "tasks.rating.weight": 0.0, "optim.batch_size": 2048,
           "optim.lr_heads": 0.005, "optim.lr_schedule": "cosine"}
PER_USER = {"kind": "per_user_random", "test_frac": 0.2, "seed": 42}
COLD = {"kind": "cold_start_items", "item_frac": 0.2, "seed": 0}
# name -> (spec overrides, kind, split label)
PROTOCOLS = {
    "ml100k-cold": ({"data.split": COLD, **RANKING}, "cold", "cold-start-items-20%"),
    "ml100k-warm": ({"data.split": PER_USER, **RANKING}, "warm", "per-user-80-20"),
    "amazon-cold": ({"data.dataset": "amazon-magazine", "data.split": COLD, **RANKING, "model.max_length": 128},
                    "cold", "cold-start-items-20%"),
    "mlls-warm": ({"data.dataset": "ml-latest-small", "data.split": PER_USER, **RANKING}, "warm", "per-user-80-20"),
}
FROZEN = {"optim.lr_encoder": 0.0}
# one ingredient of the recipe changed at a time (the recipe is full.yaml; see docs/strategies.md)
ABLATIONS = {
    "recipe_before": {"optim.encode_items": "batch", "optim.items_encoded_per_step": 1024,
                      "optim.encoder_dropout": True, "model.interest_prior": "fixed", "optim.encoder_start_epoch": 0,
                      "optim.encoder_warmup_steps": 0, "optim.layer_decay": 1.0, "optim.lr_encoder": 3e-5},
    "with_dropout": {"optim.encoder_dropout": True},
    "prior_fixed": {"model.interest_prior": "fixed"},
    "batch_items_only": {"optim.encode_items": "batch", "optim.items_encoded_per_step": 1024},
    "no_two_stage": {"optim.encoder_start_epoch": 0, "optim.encoder_warmup_steps": 0, "optim.layer_decay": 1.0},
    "lr_encoder_1e-4": {"optim.lr_encoder": 1e-4},
    "lr_encoder_2e-5": {"optim.lr_encoder": 2e-5},
    "temperature_0.05": {"tasks.click.temperature": 0.05, "tasks.related.temperature": 0.05},
    "no_item_ids": {"model.item_id_embeddings": False},
}
SMOKE = {"model.encoder_init": "random-tiny", "optim.epochs": 1, "optim.encoder_start_epoch": 0,
         "data.max_users": 150, "model.max_length": 16}


def spec_for(protocol: str, variant_overrides: dict, smoke: bool) -> TrainSpec:
    overrides, _, _ = PROTOCOLS[protocol]
    return load_spec(TrainSpec, FULL_JOB, {**overrides, **variant_overrides, **(SMOKE if smoke else {})})


class Bench:
    """Runs and records; writes the JSON after every record."""

    def __init__(self, out: Path, deadline: float, smoke: bool) -> None:
        self.out, self.smoke = out, smoke
        self.deadline = time.monotonic() + deadline
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device_name = torch.cuda.get_device_name(0) if self.device == "cuda" else "cpu"
        self.result = {"machine": machine(), "device": self.device_name, "records": [], "skipped": []}
        self.result["machine"]["commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        self.item_text: dict[str, torch.Tensor] = {}  # protocol -> pretrained item encodings (shared by variants)
        self.models: dict[tuple[str, str], tuple] = {}

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, rec: dict) -> None:
        self.result["records"].append(rec)
        print(json.dumps({k: rec[k] for k in ("protocol", "variant")} | {"ndcg@10": rec["metrics"].get("ndcg@10"),
                                                                          "rmse": rec["metrics"].get("rmse")}),
              flush=True)
        self.write()

    def write(self) -> None:
        self.result["summary"] = summary(self.result["records"], self.device_name)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=1))

    def train(self, protocol: str, variant: str, overrides: dict, need: float = 30.0):
        """Train one variant on one protocol and record it; returns (recommender, data) or None past the deadline."""
        if self.time_left() < need:
            self.result["skipped"].append(f"{protocol}/{variant}: deadline")
            print(f"skip {protocol}/{variant}: {self.time_left():.0f} s left", flush=True)
            return None
        _, kind, label = PROTOCOLS[protocol]
        spec = spec_for(protocol, overrides, self.smoke)
        data = prepare_data(spec)
        shared = self.item_text.get(protocol) if spec.model.encoder_init == "pretrained" or self.smoke else None
        res = train_local(spec, data, device=self.device, item_text=shared)
        if not spec.optim.finetune_encoder:
            self.item_text.setdefault(protocol, res.recipe.model.item_text.detach().clone())
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
        return rec, data

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
        for r in fused_records(rec, data, data.dataset, label):
            if r["variant"] != "fused":
                continue  # the peers come from `peers` (same fitting), the two-tower from `train`
            self.add({**r, "protocol": protocol, "variant": f"fused[{variant}]", "model": "fused",
                      "metrics": _round(r["metrics"]), "device": self.device_name})

    def u1(self) -> None:
        """ML-100K u1 rating RMSE of the default job (frozen encoder: rating runs gain nothing from fine-tuning)."""
        if self.time_left() < 40:
            self.result["skipped"].append("u1: deadline")
            return
        over = {**(SMOKE if self.smoke else {})}
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "transfer.json")
    ap.add_argument("--deadline", type=float, default=3600.0, help="Seconds; runs that would start later are skipped.")
    ap.add_argument("--smoke", action="store_true", help="Tiny random encoder, 1 epoch, 150 users (script check).")
    ap.add_argument("--ablations", default=",".join(ABLATIONS), help="Comma-separated subset ('' = none).")
    ap.add_argument("--skip", default="", help="Comma-separated protocols to leave out.")
    args = ap.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    b = Bench(args.out, args.deadline, args.smoke)
    skip = set(filter(None, args.skip.split(",")))
    # most important first: the acceptance comparisons, then the cheap frozen-only rows, then the ablations
    for protocol in ("ml100k-cold", "ml100k-warm", "amazon-cold"):
        if protocol in skip:
            continue
        b.train(protocol, "frozen", FROZEN)
        b.train(protocol, "full", {}, need=60.0)
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
    for name in filter(None, args.ablations.split(",")):
        b.train("ml100k-cold", f"ablation:{name}", ABLATIONS[name], need=60.0)
    b.result["machine"]["load_avg_at_end"] = os.getloadavg()[0]
    b.write()
    print(json.dumps(b.result["summary"], indent=1))


if __name__ == "__main__":
    main()
