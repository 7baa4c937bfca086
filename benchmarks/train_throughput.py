"""Training throughput: the naive "one text pair per rating" recipe vs lmrec's two-tower recipe, side by side.

Run: ``LMREC_DATA_DIR=/work/shared/data python benchmarks/train_throughput.py [--budget 480]``
Writes benchmarks/results/train_throughput.json and .png.

Same process, same encoder (all-MiniLM-L6-v2, fine-tuned by both), same ML-100K u1 split (5% of u1.base held out
as validation, seeded), same 1,000 validation rows for every RMSE point (evaluation time is not counted).
(a) naive: "user text [SEP] item text" per rating -> encoder -> mean pool -> linear -> rating, MSE, batch 64, for a
    fixed wall-clock budget. (b) ours: ``TwoTowerRecipe`` with the shipped job's settings. ``speedup`` = wall time
    the naive recipe needs to reach its best validation RMSE ÷ wall time ours needs to reach the same RMSE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as stdlib_platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.data.text import render_user_texts
from lmrec.models.encoder import build_encoder, load_tokenizer
from lmrec.training.data import prepare_data
from lmrec.training.recipe import TwoTowerRecipe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
JOB = ROOT / "jobs" / "ml100k-minilm-multitask.yaml"
USER_TEMPLATE = "User aged {age}, gender {gender}, occupation {occupation}."


def machine() -> dict:
    return {"platform": stdlib_platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_avg_at_start": os.getloadavg()[0],
            "python": sys.version.split()[0]}


def val_rows(data, n: int = 1000, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(len(data.valid), size=min(n, len(data.valid)), replace=False))


def run_naive(data, budget: float, eval_every: float, valid_idx: np.ndarray) -> dict:
    """Encoder once per rating row: the cost we are designing away from."""
    from lmrec.data.registry import load_dataset

    t0 = time.perf_counter()
    dataset = load_dataset(data.dataset)
    users = render_user_texts(dataset, data.train, USER_TEMPLATE)
    tok = load_tokenizer()
    encoder = build_encoder()
    head = torch.nn.Linear(encoder.hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.constant_(head.bias, float(data.train["rating"].mean()))
    opt = torch.optim.AdamW([{"params": encoder.parameters(), "lr": 2e-5}, {"params": head.parameters(), "lr": 1e-3}])
    train = data.train.sample(frac=1.0, random_state=0)
    valid = data.valid.iloc[valid_idx]

    def texts(df):
        return [f"{users[u]} [SEP] {data.item_texts[i]}" for u, i in zip(df["user_idx"], df["item_idx"])]

    def predict(df) -> np.ndarray:
        encoder.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(df), 128):
                enc = tok(texts(df.iloc[s : s + 128]), padding=True, truncation=True, max_length=64,
                          return_tensors="pt")
                out.append(head(encoder(enc["input_ids"], enc["attention_mask"]))[:, 0])
        encoder.train()
        return torch.cat(out).numpy()

    curve, rows, trained, tokens = [], 0, 0.0, 0
    setup = time.perf_counter() - t0
    next_eval = eval_every
    step_start = time.perf_counter()
    for s in range(0, len(train), 64):
        b = train.iloc[s : s + 64]
        enc = tok(texts(b), padding=True, truncation=True, max_length=64, return_tensors="pt")
        pred = head(encoder(enc["input_ids"], enc["attention_mask"]))[:, 0]
        loss = F.mse_loss(pred, torch.as_tensor(b["rating"].to_numpy(), dtype=torch.float32))
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows += len(b)
        tokens += int(enc["attention_mask"].sum())
        trained = time.perf_counter() - step_start
        if trained >= next_eval or trained >= budget:
            rmse = float(np.sqrt(np.mean((predict(valid) - valid["rating"].to_numpy()) ** 2)))
            curve.append({"seconds": setup + trained, "rows": rows, "val_rmse": rmse})
            print(f"naive {setup + trained:.0f}s rows {rows} val_rmse {rmse:.4f}", flush=True)
            step_start = time.perf_counter() - trained  # evaluation time is not training time
            next_eval += eval_every
        if trained >= budget:
            break
    return {"setup_seconds": setup, "train_seconds": trained, "rows": rows, "interactions_per_s": rows / trained,
            "tokens_per_row": tokens / max(rows, 1), "epoch_fraction": rows / len(train), "curve": curve}


def run_ours(spec: TrainSpec, data, valid_idx: np.ndarray, target: float, max_epochs: int, eval_steps: int) -> dict:
    t0 = time.perf_counter()
    recipe = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    valid = data.valid.iloc[valid_idx]
    clock = {"paused": 0.0}
    curve: list[dict] = []
    train_time = {"rows": 0, "seconds": 0.0}

    def evaluated(batches, epoch):
        for step, batch in enumerate(batches):
            if step and step % eval_steps == 0:
                record(epoch)
            yield batch

    def record(epoch):
        pause = time.perf_counter()
        seconds = pause - t0 - clock["paused"]
        pred = recipe.as_recommender().predict(valid["user_idx"].to_numpy(), valid["item_idx"].to_numpy())
        rmse = float(np.sqrt(np.mean((pred - valid["rating"].to_numpy()) ** 2)))
        curve.append({"seconds": seconds, "epoch": epoch, "val_rmse": rmse})
        print(f"ours {seconds:.0f}s epoch {epoch} val_rmse {rmse:.4f}", flush=True)
        clock["paused"] += time.perf_counter() - pause

    setup = time.perf_counter() - t0
    for epoch in range(max_epochs):
        paused = clock["paused"]
        logs = recipe.train_epoch(epoch, evaluated(data.iter_train_batches(epoch, spec.optim.batch_size, spec.seed),
                                                   epoch))
        train_time["rows"] += logs["interactions"]
        train_time["seconds"] += logs["seconds"] - (clock["paused"] - paused)  # minus mid-epoch evaluations
        record(epoch + 1)
        if curve[-1]["val_rmse"] <= target - 0.03:
            break
    return {"setup_seconds": setup, "train_seconds": train_time["seconds"], "rows": train_time["rows"],
            "interactions_per_s": train_time["rows"] / max(train_time["seconds"], 1e-9), "curve": curve,
            "items_encoded_per_step": spec.optim.items_encoded_per_step, "batch_size": spec.optim.batch_size}


def time_to(curve: list[dict], target: float) -> float | None:
    return next((p["seconds"] for p in curve if p["val_rmse"] <= target), None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=480.0, help="Naive recipe training budget (seconds).")
    ap.add_argument("--eval-every", type=float, default=60.0)
    ap.add_argument("--max-epochs", type=int, default=4)
    ap.add_argument("--reuse-naive", action="store_true", help="Reuse the naive run saved by a previous call.")
    args = ap.parse_args()
    torch.manual_seed(0)
    spec = load_spec(TrainSpec, JOB)
    data = prepare_data(spec)
    idx = val_rows(data)
    info = machine()
    partial = RESULTS / "train_throughput.naive.json"
    if args.reuse_naive and partial.exists():
        naive = json.loads(partial.read_text())
    else:
        naive = run_naive(data, args.budget, args.eval_every, idx)
        RESULTS.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(naive))
    target = min(p["val_rmse"] for p in naive["curve"])
    ours = run_ours(spec, data, idx, target, args.max_epochs, eval_steps=10)
    t_naive, t_ours = time_to(naive["curve"], target), time_to(ours["curve"], target)
    result = {
        "machine": info,
        "dataset": "ml-100k",
        "split": "u1 (5% of u1.base, seeded, held out as validation)",
        "encoder": "all-MiniLM-L6-v2 (fine-tuned in both)",
        "naive_budget_seconds": args.budget,
        "valid_rows_scored": int(len(idx)),
        "target_val_rmse": target,
        "naive": {**naive, "seconds_to_target": t_naive},
        "ours": {**ours, "seconds_to_target": t_ours},
        "throughput_ratio": ours["interactions_per_s"] / naive["interactions_per_s"],
        "speedup": (t_naive / t_ours) if t_ours else None,
        "note": "wall times include model setup; evaluation time excluded; machine shared (see load_avg_at_start)",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / "train_throughput.png")
    print(json.dumps({k: result[k] for k in ("target_val_rmse", "throughput_ratio", "speedup")}, indent=1))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("naive", "naive: encoder per rating"), ("ours", "lmrec two-tower recipe")):
        c = result[key]["curve"]
        ax.plot([p["seconds"] for p in c], [p["val_rmse"] for p in c], marker="o",
                label=f"{label} ({result[key]['interactions_per_s']:.0f} interactions/s)")
    ax.axhline(result["target_val_rmse"], color="grey", ls="--", lw=1, label="naive best (target)")
    ax.set_xlabel("wall seconds (setup + training)")
    ax.set_ylabel("validation RMSE (1,000 rows)")
    ax.set_title(f"ML-100K u1, MiniLM-L6, CPU — speedup {result['speedup'] or float('nan'):.1f}x")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
