"""The real `lmrec` console script, run as a user would (subprocess), on the real ML-100K files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LMREC = [sys.executable, "-m", "lmrec.cli"]


def run(args: list[str], tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMREC_DATA_DIR": str(data_dir), "LMREC_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(LMREC + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_data_stats_json(tmp_path, data_dir):
    res = run(["data", "stats", "--dataset", "ml-100k", "--json"], tmp_path, data_dir)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)
    assert stats["rating_histogram"] == {1.0: 6110, 2.0: 11370, 3.0: 27145, 4.0: 34174, 5.0: 21201} or stats[
        "rating_histogram"
    ] == {"1.0": 6110, "2.0": 11370, "3.0": 27145, "4.0": 34174, "5.0": 21201}
    assert abs(stats["density"] - 100_000 / (943 * 1682)) < 1e-9


def test_data_stats_table(tmp_path, data_dir):
    res = run(["data", "stats", "--dataset", "ml-latest-small"], tmp_path, data_dir)
    assert res.returncode == 0, res.stderr
    assert "100,836" in res.stdout and "610" in res.stdout


def test_unknown_dataset_is_one_clear_line(tmp_path, data_dir):
    res = run(["data", "stats", "--dataset", "ml-2k"], tmp_path, data_dir)
    assert res.returncode == 2
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "ml-2k" in lines[0] and "ml-100k" in lines[0]
    assert "Traceback" not in res.stderr


def test_baselines_writes_metrics_table(tmp_path, data_dir):
    out = tmp_path / "m.json"
    res = run(["baselines", "--dataset", "ml-100k", "--split", "u1", "--models", "biased_mean,popularity",
               "--out", str(out)], tmp_path, data_dir)
    assert res.returncode == 0, res.stderr
    records = json.loads(out.read_text())
    by_model = {r["model"]: r for r in records}
    assert set(by_model) == {"biased_mean", "popularity"}
    # a biased mean on u1 is a well-known ~0.96-0.98 RMSE; popularity does not predict ratings
    assert 0.9 < by_model["biased_mean"]["metrics"]["rmse"] < 1.0
    assert "rmse" not in by_model["popularity"]["metrics"]
    assert 0.0 < by_model["popularity"]["metrics"]["ndcg@10"] < 1.0
    assert "biased_mean" in res.stdout and "ndcg@10" in res.stdout


@pytest.mark.slow
def test_demo_quick_writes_report(tmp_path, data_dir):
    res = run(["demo", "--quick", "--out", str(tmp_path / "report")], tmp_path, data_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    report = tmp_path / "report"
    assert (report / "summary.md").exists() and (report / "metrics.json").exists()
    assert (report / "ranking_ndcg.png").stat().st_size > 1000
    assert "[1/" in res.stdout
