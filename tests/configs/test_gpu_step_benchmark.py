"""benchmarks/gpu_step.py runs (tiny shapes, CPU) so it cannot rot between GPU runs: every row and summary key is
written, throughputs are positive, and a CPU run never writes the committed results/gpu.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_step_tiny_runs_and_writes_its_schema(tmp_path, data_dir):
    pytest.importorskip("matplotlib")
    committed = ROOT / "benchmarks" / "results" / "gpu.json"
    before = committed.stat().st_mtime_ns if committed.exists() else None
    out = tmp_path / "gpu.json"
    env = {**os.environ, "LMREC_DATA_DIR": str(data_dir), "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--tiny", "--out", str(out)],
                   cwd=ROOT, env=env, check=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["benchmark"] == "gpu" and result["gpu"] is None and result["peak_bf16_flops"] is None
    assert {r["run"] for r in result["rows"]} == {"plain", "ddp"}
    plain = next(r for r in result["rows"] if r["run"] == "plain")
    step = next(r for r in result["rows"] if r["run"] == "ddp")
    assert plain["samples_per_s"] > 0 and step["encoded_items_per_s"] > 0 and step["tokens_per_s"] > 0
    assert step["steps"] == 3 and 0 < step["padded_width"] <= 32
    summary = result["summary"]
    assert {"step_vs_plain_bert_base", "auto_vs_best_engine", "step_vs_plain", "auto_engine"} <= set(summary)
    assert summary["auto_vs_best_engine"] == {"tiny": 1.0} and summary["step_vs_plain"]["tiny"] > 0
    assert result["auto"]["tiny"]["engine"] == "ddp" and result["auto"]["tiny"]["reason"].startswith("auto")
    assert out.with_suffix(".png").stat().st_size > 0
    assert (committed.stat().st_mtime_ns if committed.exists() else None) == before
