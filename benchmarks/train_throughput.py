"""Training throughput: the naive "one text pair per rating" recipe vs lmrec's two-tower recipe, side by side.

Run: ``LMREC_DATA_DIR=/work/shared/data python benchmarks/train_throughput.py [--budget 480]``
Writes benchmarks/results/train_throughput.json and .png.

Same process, same encoder (all-MiniLM-L6-v2), same ML-100K u1 split (5% of u1.base held out as validation,
seeded), same 1,000 validation rows for every RMSE point (evaluation time is not counted).
(a) naive: "user text [SEP] item text" per rating -> encoder -> mean pool -> linear -> rating, MSE, batch 64, the
    encoder fine-tuned, for a fixed wall-clock budget.
(b) ours, fine-tuning (the like-for-like row): the shipped ``full`` strategy (jobs/strategies/full.yaml) with the
    encoder training from the first step (``encoder_start_epoch: 0``) and the CPU setting that spec's header gives
    (``encode_items: batch``: the batch's items re-encoded with gradient each step) -- the same work as (a): every
    step updates every encoder weight.
(c) ours, frozen encoder: the shipped default job (item texts encoded once), for reference.
Each ``speedup`` = wall time the naive recipe needs to reach its best validation RMSE / wall time the row needs to
reach the same RMSE (same budget rule for both of ours: stop ``--after-target`` seconds past it or after
``--max-epochs``). Clocks exclude model load and evaluation; ours' include the one-off item-text encoding.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from harness import REPO, figure, save_figure, write_results

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.data.text import render_user_texts
from lmrec.models.encoder import build_encoder, load_tokenizer
from lmrec.training.data import prepare_data
from lmrec.training.recipe import TwoTowerRecipe

JOB = REPO / "jobs" / "ml100k-minilm-multitask.yaml"
FINETUNE_JOB = REPO / "jobs" / "strategies" / "full.yaml"
# the encoder trains from the first step (no heads-first stage: the naive recipe has none), CPU item encoding
FINETUNE_OVERRIDES = {"optim.encoder_start_epoch": 0, "optim.encode_items": "batch"}
USER_TEMPLATE = "User aged {age}, gender {gender}, occupation {occupation}."


def val_rows(data, n: int = 1000, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(len(data.valid), size=min(n, len(data.valid)), replace=False))


def rmse(pred: np.ndarray, valid) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - valid["rating"].to_numpy()) ** 2)))


def run_naive(data, budget: float, eval_every: float, valid_idx: np.ndarray) -> dict:
    """Encoder once per rating row: the cost we are designing away from. Model load is not on its clock."""
    from lmrec.data.registry import load_dataset

    t_load = time.perf_counter()
    tok = load_tokenizer()
    encoder = build_encoder()
    model_load = time.perf_counter() - t_load
    t0 = time.perf_counter()
    dataset = load_dataset(data.dataset)
    users = render_user_texts(dataset, data.train, USER_TEMPLATE)
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

    setup = time.perf_counter() - t0
    curve = [{"seconds": setup, "rows": 0, "val_rmse": rmse(predict(valid), valid)}]
    rows, trained, tokens = 0, 0.0, 0
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
            curve.append({"seconds": setup + trained, "rows": rows, "val_rmse": rmse(predict(valid), valid)})
            print(f"naive {setup + trained:.0f}s rows {rows} val_rmse {curve[-1]['val_rmse']:.4f}", flush=True)
            step_start = time.perf_counter() - trained  # evaluation time is not training time
            next_eval += eval_every
        if trained >= budget:
            break
    return {"model_load_seconds_excluded": model_load, "setup_seconds": setup, "train_seconds": trained,
            "rows": rows, "interactions_per_s": rows / trained, "tokens_per_row": tokens / max(rows, 1),
            "epoch_fraction": rows / len(train), "curve": curve}


def run_ours(spec: TrainSpec, data, valid_idx: np.ndarray, target: float, max_epochs: int, eval_steps: int,
             after_target: float) -> dict:
    """The shipped recipe; its clock = item-text precompute + training steps (model load and evaluation excluded).

    Evaluates the same validation rows every ``eval_steps`` steps; stops ``after_target`` training seconds after
    first reaching ``target`` (or after ``max_epochs``).
    """
    recipe = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    precompute = recipe.setup_seconds["init_state"]  # global mean, histories and the one-off item-text encoding
    valid = data.valid.iloc[valid_idx]
    state = {"paused": 0.0, "start": time.perf_counter(), "reached": None}
    curve: list[dict] = []

    def clock() -> float:
        return precompute + time.perf_counter() - state["start"] - state["paused"]

    def record(epoch: int, step: int) -> None:
        pause = time.perf_counter()
        seconds = clock()
        value = rmse(recipe.as_recommender().predict(valid["user_idx"].to_numpy(), valid["item_idx"].to_numpy()),
                     valid)
        curve.append({"seconds": seconds, "epoch": epoch, "step": step, "val_rmse": value})
        if state["reached"] is None and value <= target:
            state["reached"] = seconds
        print(f"ours {seconds:.1f}s epoch {epoch} step {step} val_rmse {value:.4f}", flush=True)
        state["paused"] += time.perf_counter() - pause

    def done() -> bool:
        return state["reached"] is not None and clock() - state["reached"] >= after_target

    def evaluated(batches, epoch):
        for step, batch in enumerate(batches):
            if step % eval_steps == 0:
                record(epoch, step)
            if done():
                return
            yield batch

    rows, train_seconds = 0, 0.0
    for epoch in range(max_epochs):
        paused = state["paused"]
        logs = recipe.train_epoch(epoch, evaluated(data.iter_train_batches(epoch, spec.optim.batch_size, spec.seed),
                                                   epoch))
        rows += logs["interactions"]
        train_seconds += logs["seconds"] - (state["paused"] - paused)  # minus mid-epoch evaluations
        if done():
            break
    record(epoch + 1, 0)
    return {"model_load_seconds_excluded": recipe.setup_seconds["model_load"], "precompute_seconds": precompute,
            "train_seconds": train_seconds, "rows": rows, "interactions_per_s": rows / max(train_seconds, 1e-9),
            "curve": curve, "items_encoded_per_step": spec.optim.items_encoded_per_step,
            "batch_size": spec.optim.batch_size, "eval_every_steps": eval_steps}


def time_to(curve: list[dict], target: float) -> float | None:
    return next((p["seconds"] for p in curve if p["val_rmse"] <= target), None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=480.0, help="Naive recipe training budget (seconds).")
    ap.add_argument("--eval-every", type=float, default=60.0, help="Naive evaluation period (training seconds).")
    ap.add_argument("--eval-steps", type=int, default=2, help="Ours: evaluate every N optimizer steps.")
    ap.add_argument("--after-target", type=float, default=30.0, help="Ours: keep training N s past the target.")
    ap.add_argument("--max-epochs", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    spec = load_spec(TrainSpec, JOB)
    finetune_spec = load_spec(TrainSpec, FINETUNE_JOB, FINETUNE_OVERRIDES)
    if finetune_spec.data != spec.data:
        raise SystemExit(f"{FINETUNE_JOB} and {JOB} must read the same data for a side-by-side run")
    data = prepare_data(spec)
    idx = val_rows(data)
    naive = run_naive(data, args.budget, args.eval_every, idx)
    target = min(p["val_rmse"] for p in naive["curve"])
    load_after_naive = round(os.getloadavg()[0], 2)
    torch.manual_seed(0)
    finetune = run_ours(finetune_spec, data, idx, target, args.max_epochs, args.eval_steps, args.after_target)
    torch.manual_seed(0)
    ours = run_ours(spec, data, idx, target, args.max_epochs, args.eval_steps, args.after_target)
    t_naive = time_to(naive["curve"], target)
    t_ft, t_ours = time_to(finetune["curve"], target), time_to(ours["curve"], target)
    result = {
        "load_average_1m_after_naive": load_after_naive,
        "dataset": "ml-100k",
        "split": "u1 (5% of u1.base, seeded, held out as validation)",
        "encoder": "all-MiniLM-L6-v2 (pretrained; fine-tuned by naive and by ours_finetune; frozen in ours)",
        "job_spec": str(JOB.relative_to(REPO)),
        "finetune_job_spec": str(FINETUNE_JOB.relative_to(REPO)),
        "finetune_overrides": FINETUNE_OVERRIDES,
        "ours_config": spec.model_dump(mode="json"),
        "ours_finetune_config": finetune_spec.model_dump(mode="json"),
        "naive_budget_seconds": args.budget,
        "valid_rows_scored": int(len(idx)),
        "target_val_rmse": target,
        "naive": {**naive, "seconds_to_target": t_naive},
        "ours_finetune": {**finetune, "seconds_to_target": t_ft},
        "ours": {**ours, "seconds_to_target": t_ours},
        "finetune_throughput_ratio": finetune["interactions_per_s"] / naive["interactions_per_s"],
        "finetune_speedup_vs_naive": (t_naive / t_ft) if t_ft else None,
        "throughput_ratio": ours["interactions_per_s"] / naive["interactions_per_s"],
        "speedup": (t_naive / t_ours) if t_ours else None,
        "note": ("one process: naive, then ours fine-tuning, then ours frozen; clocks exclude model load and "
                 "evaluation; naive's clock includes its data setup, ours' the one-off item-text precompute; "
                 "target = naive's best validation RMSE within its budget; speedup = naive seconds to target / "
                 "the row's seconds to target. finetune_* compare the same work (every encoder weight updated "
                 "every step); throughput_ratio/speedup compare against the frozen-encoder job (not the same work)"),
    }
    headline = {k: result[k] for k in ("target_val_rmse", "finetune_speedup_vs_naive", "finetune_throughput_ratio",
                                       "speedup", "throughput_ratio")}
    headline["frozen_speedup_vs_naive"] = headline.pop("speedup")
    headline["frozen_throughput_ratio"] = headline.pop("throughput_ratio")
    write_results("train_throughput", result, summary=headline)
    plot(result)
    print(json.dumps(headline, indent=1))


def plot(result: dict) -> None:
    fig, ax = figure(figsize=(7, 4))
    for key, label in (("naive", "naive: encoder per rating, fine-tuned"),
                       ("ours_finetune", "lmrec full fine-tuning"), ("ours", "lmrec, frozen encoder")):
        c = result[key]["curve"]
        ax.plot([p["seconds"] for p in c], [p["val_rmse"] for p in c], marker="o",
                label=f"{label} ({result[key]['interactions_per_s']:.0f} interactions/s)")
    ax.axhline(result["target_val_rmse"], color="grey", ls="--", lw=1, label="naive best (target)")
    ax.set_xlabel("wall seconds (setup/precompute + training; model load, evaluation excluded)")
    ax.set_ylabel("validation RMSE (1,000 rows)")
    ft, frozen = result["finetune_speedup_vs_naive"], result["speedup"]
    ax.set_title(f"ML-100K u1, MiniLM-L6, CPU: to naive's best RMSE, fine-tuning {ft or float('nan'):.1f}x, "
                 f"frozen {frozen or float('nan'):.1f}x faster", fontsize=9)
    ax.legend()
    save_figure(fig, "train_throughput")


if __name__ == "__main__":
    main()
