"""The GPU training step: lmrec's step under each engine vs a plain PyTorch loop on the same encoder, one process.

Run on a CUDA machine (about 3-5 minutes on one H100/H200; see ../shared/gpu/README.md):
    source .gpu-carry/env.sh && python3 benchmarks/gpu_step.py --out "$OUT/gpu.json"
then copy gpu.json and gpu.png into benchmarks/results/ (run there without --out, it writes them in place).
Smoke run on a CPU (seconds; a 2-layer, 32-wide encoder; writes to a temp folder unless --out, never to results/):
    LMREC_DATA_DIR=../shared/data python benchmarks/gpu_step.py --tiny

Encoders are random-init BERTs built from configs (MiniLM-L6, bert-base and bert-large shapes) with the default
encoder's tokenizer: throughput needs no weights. Data: ML-100K u1 tokenised at max_length 32. Per shape:
(a) plain loop: the encoder alone on ``k`` item rows per step padded to 32 tokens, bf16 autocast (CUDA), fused
    AdamW (CUDA), no dropout (as lmrec's step), a linear head and an MSE loss: samples/s;
(b) lmrec's step (``TwoTowerRecipe.train_epoch``, ``jobs/strategies/full.yaml`` with ``encode_items: batch``,
    ``k`` items encoded with gradient per step, the encoder training from step 0, no cache refresh) under each
    engine available: the plain/DDP engine always; DeepSpeed ZeRO-2 when deepspeed imports and CUDA is present;
    for bert-large also ZeRO-3 under a memory cap (``--zero3-cap-gib``, enforced with
    ``torch.cuda.set_per_process_memory_fraction``): encoded items/s.
Both after ``--warmup`` untimed steps, over ``--steps`` timed steps, with peak memory
(``torch.cuda.max_memory_allocated``) and MFU = 6 x encoder parameters x tokens/s ÷ the GPU's dense bf16 peak
(tokens = rows x padded width of the encoder passes with gradient; embeddings counted, as in issue 19's figures).
``engine: auto``'s choice (``lmrec.training.engines.resolve_engine``, by memory) and its reason are recorded.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import os
import tempfile
import time
from pathlib import Path

import torch

from harness import REPO, RESULTS, figure, save_figure, write_results

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.models.encoder import TextEncoder, resolve_encoder_path
from lmrec.strategies.scopes import count_parameters
from lmrec.training.data import prepare_data
from lmrec.training.engines import resolve_engine
from lmrec.training.recipe import TwoTowerRecipe

JOB = REPO / "jobs" / "strategies" / "full.yaml"
DEEPSPEED = {"zero2": REPO / "jobs" / "deepspeed" / "zero2.json", "zero3": REPO / "jobs" / "deepspeed" / "zero3.json"}
# BertConfig fields per shape, and k: the rows each step encodes with gradient (issue 19's measurements)
SHAPES = {
    "minilm-l6": ({"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                   "intermediate_size": 1536}, 256),
    "bert-base": ({"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "intermediate_size": 3072}, 512),
    "bert-large": ({"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                    "intermediate_size": 4096}, 512),
    "tiny": ({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}, 16),
}
GPU_SHAPES = ("minilm-l6", "bert-base", "bert-large")
# dense bf16 peak FLOP/s (no sparsity) by a name fragment of torch.cuda.get_device_name
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
SEQ = 32
TINY_DATA = {"data.max_users": 60, "data.max_items": 120,
             "data.split": {"kind": "per_user_random", "test_frac": 0.2, "valid_frac": 0.1, "seed": 0}}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for key, v in PEAK_BF16.items() if key in name), None)


def make_encoder(shape: str, vocab_size: int) -> TextEncoder:
    from transformers import AutoModel, BertConfig

    fields, _ = SHAPES[shape]
    torch.manual_seed(0)
    return TextEncoder(AutoModel.from_config(BertConfig(vocab_size=vocab_size, max_position_embeddings=512,
                                                        **fields)), "mean")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def start_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def allocated_gib(device: torch.device) -> float | None:
    """Memory still held when a run starts (an earlier DeepSpeed engine may keep some): part of its peak."""
    return round(torch.cuda.memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def mfu(params: int, tokens_per_s: float, device: torch.device) -> float | None:
    peak = peak_flops(device)
    return round(6 * params * tokens_per_s / peak, 4) if peak else None


def plain_loop(shape: str, data, device: torch.device, vocab: int, steps: int, warmup: int) -> dict:
    """The encoder alone: k rows of 32 tokens per step, bf16 autocast, fused AdamW, no dropout."""
    _, k = SHAPES[shape]
    encoder = make_encoder(shape, vocab).to(device).eval()  # eval: no dropout, as lmrec's step
    params = sum(p.numel() for p in encoder.parameters())
    head = torch.nn.Linear(encoder.hidden_size, 1).to(device)
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=2e-5, fused=cuda)
    ids = torch.as_tensor(data.item_tokens[:, :SEQ]).long().to(device)
    lengths = torch.as_tensor(data.item_lengths).to(device)
    mask = (torch.arange(ids.shape[1], device=device)[None, :] < lengths[:, None]).long()
    target = torch.rand(k, device=device) * 4 + 1
    rows = torch.arange(k, device=device)

    def step(n: int) -> None:
        pick = (rows + n * k) % len(ids)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            pred = head(encoder(ids[pick], mask[pick]))[:, 0]
            loss = torch.nn.functional.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start_memory(device)
    for n in range(warmup):
        step(n)
    sync(device)
    t0 = time.perf_counter()
    for n in range(steps):
        step(warmup + n)
    sync(device)
    seconds = time.perf_counter() - t0
    tokens_per_s = steps * k * ids.shape[1] / seconds
    out = {"shape": shape, "run": "plain", "rows_per_step": k, "seq": int(ids.shape[1]), "steps": steps,
           "seconds": round(seconds, 3), "samples_per_s": round(steps * k / seconds, 1),
           "tokens_per_s": round(tokens_per_s), "peak_memory_gib": peak_gib(device),
           "mfu": mfu(params, tokens_per_s, device), "encoder_params": params}
    del encoder, head, opt
    return out


def lmrec_step(shape: str, data, base: dict, device: torch.device, vocab: int, engine: str, steps: int,
               warmup: int, cap_gib: float | None = None) -> dict:
    """``TwoTowerRecipe.train_epoch`` over ``warmup`` then ``steps`` batches, under one engine."""
    _, k = SHAPES[shape]
    ds = engine.startswith("zero")
    overrides = {**base, "optim.items_encoded_per_step": k, "scaling.engine": "deepspeed" if ds else "ddp"}
    if ds:
        overrides["scaling.deepspeed_config"] = str(DEEPSPEED[engine])
    spec = load_spec(TrainSpec, JOB, overrides)
    encoder = make_encoder(shape, vocab)
    params = sum(p.numel() for p in encoder.parameters())
    start_memory(device)
    held = allocated_gib(device)
    if cap_gib is not None:
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, cap_gib * 2**30 / torch.cuda.get_device_properties(device).total_memory), device)
    tokens = [0]
    recipe = None
    try:
        recipe = TwoTowerRecipe(spec, data, device=device, encoder=encoder)

        def count(_module, args):  # rows x padded width of every encoder pass that carries gradient
            if torch.is_grad_enabled():
                tokens[0] += args[0].numel()

        recipe.model.encoder.register_forward_pre_hook(count)

        def batches(epoch: int, n: int):
            return itertools.islice(data.iter_train_batches(epoch, recipe.batch_size, spec.seed), n)

        recipe.train_epoch(0, batches(0, warmup))
        tokens[0] = 0
        sync(device)
        t0 = time.perf_counter()
        logs = recipe.train_epoch(1, batches(1, steps))
        sync(device)
        seconds = time.perf_counter() - t0
        tokens_per_s = tokens[0] / seconds
        out = {"shape": shape, "run": engine, "engine": recipe.engine_name, "rows_per_step": k,
               "steps": int(logs["steps"]), "seconds": round(seconds, 3),
               "encoded_items_per_s": round(logs["items_encoded"] / seconds, 1),
               "interactions_per_s": round(logs["interactions"] / seconds, 1),
               "batch_size": recipe.batch_size, "tokens_per_s": round(tokens_per_s),
               "padded_width": round(tokens[0] / max(logs["items_encoded"], 1), 1),
               "peak_memory_gib": peak_gib(device), "allocated_at_start_gib": held,
               "mfu": mfu(params, tokens_per_s, device), "encoder_params": params,
               "loss": round(logs.get("loss", float("nan")), 4)}
        if cap_gib is not None:
            out["memory_cap_gib"] = cap_gib
            out["fits_cap"] = out["peak_memory_gib"] <= cap_gib
    except Exception as exc:  # noqa: BLE001  one engine failing (OOM, DeepSpeed set-up) keeps the others' rows
        out = {"shape": shape, "run": engine, "error": f"{type(exc).__name__}: {str(exc)[:300]}",
               "peak_memory_gib": peak_gib(device), **({"memory_cap_gib": cap_gib, "fits_cap": False}
                                                      if cap_gib is not None else {})}
    finally:
        del recipe, encoder
        if cap_gib is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    print(out, flush=True)
    return out


def engines_here(device: torch.device) -> list[str]:
    if device.type == "cuda" and importlib.util.find_spec("deepspeed") is not None:
        return ["ddp", "zero2"]
    return ["ddp"]


def auto_choice(shape: str, data, base: dict, device: torch.device, vocab: int) -> dict:
    """What ``scaling.engine: auto`` picks for this shape's whole two-tower model on this device, and why."""
    spec = load_spec(TrainSpec, JOB, {**base, "optim.items_encoded_per_step": SHAPES[shape][1]})
    from lmrec.training.recipe import build_model

    n = count_parameters(build_model(spec, data.n_users, data.n_items, make_encoder(shape, vocab))).total
    choice = resolve_engine("auto", device, n)
    return {"engine": choice.name, "run": "ddp" if choice.name == "ddp" else "zero2", "reason": choice.reason,
            "model_params": n}


def summarise(rows: list[dict], auto: dict[str, dict]) -> dict:
    def rate(shape: str, run: str) -> float | None:
        row = next((r for r in rows if r["shape"] == shape and r["run"] == run), None)
        return None if row is None else row.get("encoded_items_per_s", row.get("samples_per_s"))

    step_vs_plain, auto_vs_best = {}, {}
    for shape, choice in auto.items():
        engines = {r["run"]: r["encoded_items_per_s"] for r in rows
                   if r["shape"] == shape and r["run"] != "plain" and r.get("encoded_items_per_s")}
        picked, plain = rate(shape, choice["run"]), rate(shape, "plain")
        if picked and plain:
            step_vs_plain[shape] = round(picked / plain, 3)
        best = max((v for run, v in engines.items() if run != "zero3"), default=None)  # ZeRO-3: the capped run
        if picked and best:
            auto_vs_best[shape] = round(picked / best, 3)
    zero3 = next((r for r in rows if r["run"] == "zero3"), None)
    return {
        "step_vs_plain_bert_base": step_vs_plain.get("bert-base"),
        "auto_vs_best_engine": auto_vs_best,
        "step_vs_plain": step_vs_plain,
        "auto_engine": {shape: c["engine"] for shape, c in auto.items()},
        "zero3_bert_large": None if zero3 is None else {
            k: zero3.get(k) for k in ("memory_cap_gib", "peak_memory_gib", "fits_cap", "encoded_items_per_s")},
    }


def plot(result: dict, path: Path) -> None:
    shapes = list(result["auto"])
    fig, axes = figure(1, len(shapes), figsize=(4.2 * len(shapes), 3.8), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        rows = [r for r in result["rows"] if r["shape"] == shape]
        values = [r.get("samples_per_s", r.get("encoded_items_per_s", 0)) or 0 for r in rows]
        bars = ax.bar(range(len(rows)), values, color=["grey" if r["run"] == "plain" else "C0" for r in rows])
        for bar, r in zip(bars, rows):
            note = "error" if "error" in r else \
                f"{r['peak_memory_gib']} GiB\nMFU {r['mfu']}" if r.get("peak_memory_gib") is not None else ""
            ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7)
        ax.set_xticks(range(len(rows)), [("plain loop" if r["run"] == "plain" else f"lmrec {r['run']}")
                                         + (" (auto)" if r["run"] == result["auto"][shape]["run"] else "")
                                         for r in rows], fontsize=7)
        ax.set_title(f"{shape}, k={SHAPES[shape][1]} rows/step", fontsize=9)
        ax.set_ylabel("samples/s (plain) · encoded items/s (lmrec)", fontsize=7)
    fig.suptitle(f"Training step vs plain loop — {result['gpu'] or 'CPU'}", fontsize=10)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="2-layer, 32-wide encoder on an ML-100K slice (CPU smoke)")
    ap.add_argument("--shapes", default=",".join(GPU_SHAPES), help="comma-separated subset of " + ",".join(SHAPES))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30; --tiny 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; --tiny 1)")
    ap.add_argument("--zero3-cap-gib", type=float, default=32.0, help="memory cap of bert-large's ZeRO-3 run")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default: results/gpu.json on CUDA, "
                    "else a temp folder); the PNG goes beside it")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # tiny tensors: OpenMP hand-offs crawl on a busy shared CPU
    shapes = ["tiny"] if args.tiny else args.shapes.split(",")
    steps = args.steps or (3 if args.tiny else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    out = args.out or (RESULTS / "gpu.json" if device.type == "cuda" and not args.tiny
                       else Path(tempfile.mkdtemp(prefix="lmrec-gpu-step-")) / "gpu.json")
    if device.type == "cuda":
        for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": "29533"}.items():
            os.environ.setdefault(key, value)  # DeepSpeed in one process, without a launcher
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(resolve_encoder_path("default")).vocab_size
    base = {"model.max_length": SEQ, "model.encoder_init": "random-tiny", "optim.encode_items": "batch",
            "optim.encoder_start_epoch": 0, "optim.encoder_warmup_steps": 0, "optim.refresh_every_epochs": 0,
            "optim.log_every_steps": 10**6, **(TINY_DATA if args.tiny else {})}
    data = prepare_data(load_spec(TrainSpec, JOB, base))
    result = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "peak_bf16_flops": peak_flops(device), "device": str(device), "job_spec": str(JOB.relative_to(REPO)),
              "spec_overrides": base, "dataset": data.dataset, "steps": steps, "warmup_steps": warmup,
              "shapes": {s: {**SHAPES[s][0], "items_encoded_per_step": SHAPES[s][1]} for s in shapes},
              "rows": [], "auto": {}}
    for shape in shapes:
        result["auto"][shape] = auto_choice(shape, data, base, device, vocab)
        print(shape, "auto:", result["auto"][shape], flush=True)
        result["rows"].append(plain_loop(shape, data, device, vocab, steps, warmup))
        print(result["rows"][-1], flush=True)
        for engine in engines_here(device):
            result["rows"].append(lmrec_step(shape, data, base, device, vocab, engine, steps, warmup))
        if shape == "bert-large" and "zero2" in engines_here(device):
            result["rows"].append(lmrec_step(shape, data, base, device, vocab, "zero3", steps, warmup,
                                             cap_gib=args.zero3_cap_gib))
        write_results("gpu", result, summary=summarise(result["rows"], result["auto"]), path=out)  # per shape
    plot(result, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
