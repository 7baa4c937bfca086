"""Every benchmark in sequence, cheapest first, each in its own process: what `make bench` runs.

Run: `.venv/bin/python benchmarks/run_all.py [--only fusion,encoder] [--list]` (`make bench [BENCH=fusion]`).
Each benchmark runs with its default arguments and writes its own results/<name>.json (+ .png). The minutes are
rough wall-clock figures of the committed runs on a 2-core CPU; a loaded machine takes longer. A benchmark whose
needs are missing (a GPU, an optional package, the packaged all-mpnet-base-v2 encoder) is skipped, with the reason.
A failure does not stop the others; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Benchmark:
    name: str  # what --only (make's BENCH) takes
    script: str  # under benchmarks/
    minutes: float  # estimated wall-clock minutes on a 2-core CPU (on one GPU where ``gpu``)
    args: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()  # optional packages it imports
    gpu: bool = False
    encoder: str | None = None  # a packaged encoder it loads (lmrec.models.packaged)

    def missing(self) -> str | None:
        """Why it cannot run here, or None."""
        absent = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if absent:
            return f"needs {', '.join(absent)} (`make setup` installs the extras)"
        if self.gpu:
            import torch

            if not torch.cuda.is_available():
                return "needs a GPU"
        if self.encoder:
            from lmrec.models.packaged import packaged_path

            if packaged_path(self.encoder) is None:
                return f"needs the packaged {self.encoder} encoder (README: larger packaged encoder)"
        return None

    def command(self) -> list[str]:
        return [sys.executable, str(HERE / self.script), *self.args]


BENCHMARKS = (
    Benchmark("fusion", "fusion.py", 7),
    Benchmark("baselines", "baselines.py", 8, modules=("surprise", "implicit", "matplotlib")),
    Benchmark("meta_cold_start", "meta_cold_start.py", 10),
    Benchmark("train_throughput", "train_throughput.py", 11, modules=("matplotlib",)),
    Benchmark("encoder", "encoder.py", 16, modules=("matplotlib",)),
    Benchmark("serve_load", "serve_load.py", 20, modules=("ray", "aiohttp", "matplotlib")),
    Benchmark("tune", "tune.py", 25, modules=("ray", "optuna")),
    # refreshes the ML-100K rows of the encoder-size comparison, keeps the file's other rows
    Benchmark("transfer_encoder_sizes", "transfer.py", 25, modules=("matplotlib",), encoder="all-mpnet-base-v2",
              args=("--encoder-sizes", "--append", "--out", "benchmarks/results/transfer_encoder_size_cpu.json")),
    Benchmark("reliability", "reliability.py", 45, modules=("ray", "aiohttp", "schemathesis", "psutil")),
    Benchmark("strategies", "strategies.py", 60, modules=("matplotlib",)),
    # no committed run yet: guesses from the parts' budgets (ann stops optional steps after 480 s)
    Benchmark("scale_data", "scale.py", 5, args=("--part", "data")),
    Benchmark("scale_ann_libraries", "scale.py", 10, args=("--part", "ann-libraries"), modules=("faiss", "hnswlib")),
    Benchmark("scale_ann", "scale.py", 12, args=("--part", "ann"), modules=("faiss", "matplotlib")),
    Benchmark("scale_ann_serve", "scale.py", 2, args=("--part", "ann-serve"), modules=("faiss",)),
    Benchmark("scale_train", "scale.py", 50, args=("--part", "train"), modules=("psutil",)),
    # the transfer benchmark proper: made for a GPU (about 5 minutes on one H200), hours on a CPU
    Benchmark("transfer", "transfer.py", 5, modules=("matplotlib",), gpu=True),
    # the training step vs a plain loop, per engine (issue 19); `--tiny` is its CPU smoke run (tests/configs)
    Benchmark("gpu_step", "gpu_step.py", 5, modules=("matplotlib",), gpu=True),
)


def estimate(b: Benchmark) -> str:
    return f"~{b.minutes:g} min on {'one GPU' if b.gpu else 'a 2-core CPU'}"


def main() -> int:
    names = [b.name for b in BENCHMARKS]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(names))
    p.add_argument("--list", action="store_true", help="list the benchmarks with their estimates; run nothing")
    args = p.parse_args()
    chosen = [n for n in args.only.split(",") if n]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        p.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(names)}")
    plan = sorted((b for b in BENCHMARKS if not chosen or b.name in chosen), key=lambda b: (b.gpu, b.minutes))
    for b in plan:
        print(f"{b.name:24} {estimate(b):28} python benchmarks/{' '.join([b.script, *b.args])}")
    if args.list:
        return 0
    print(f"about {sum(b.minutes for b in plan if not b.gpu):g} min of CPU benchmarks in all\n", flush=True)
    outcome = {}
    for i, b in enumerate(plan, 1):
        why = b.missing()
        if why:
            outcome[b.name] = f"skipped: {why}"
            print(f"[{i}/{len(plan)}] {b.name}: {outcome[b.name]}", flush=True)
            continue
        print(f"[{i}/{len(plan)}] {b.name} ({estimate(b)})", flush=True)
        start = time.monotonic()
        rc = subprocess.run(b.command(), cwd=HERE.parent).returncode
        took = f"{(time.monotonic() - start) / 60:.1f} min"
        outcome[b.name] = f"ok in {took}" if rc == 0 else f"FAILED (exit {rc}) after {took}"
        print(f"[{i}/{len(plan)}] {b.name}: {outcome[b.name]}\n", flush=True)
    print("\n".join(f"{name:24} {text}" for name, text in outcome.items()))
    return int(any(text.startswith("FAILED") for text in outcome.values()))


if __name__ == "__main__":
    sys.exit(main())
