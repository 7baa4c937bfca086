"""A strategy from outside lmrec, added from inside this test (one module, no edit anywhere else), trains through
``lmrec train`` on Ray Train: the job names it by import path, its class validates the ``strategy:`` section, the
Ray workers import it from PYTHONPATH, the recipe calls its hooks, and the artifact loads.

The toy strategy freezes the encoder and scales the heads' LRs. Every hook it implements leaves a mark the test
reads back: lines in a file (``param_groups``, ``on_epoch_start`` with the LRs the optimizer holds, ``before_export``)
and a value in each epoch's logs (``epoch_logs``), which reach the run's metrics and the artifact's manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny_two_tower.yaml"

TOY_STRATEGY = '''
"""A toy transfer strategy: frozen encoder, heads at ``lr_scale`` times their LR; each hook records that it ran."""

import json
import os
from pathlib import Path

from pydantic import Field

from lmrec.strategies.components import Strategy, StrategyHooks


class ScaledHeads(Strategy):
    lr_scale: float = Field(0.5, gt=0, description="Factor on every optimizer group's LR.")
    record: str = Field(description="File each hook appends a JSON line to.")

    def attach(self, job, model, data, *, device, distributed=False):
        model.encoder.requires_grad_(False)
        return ScaledHeadsHooks(self.lr_scale, Path(self.record))


class ScaledHeadsHooks(StrategyHooks):
    def __init__(self, lr_scale, record):
        self.lr_scale, self.record = lr_scale, record

    def _mark(self, hook, **values):
        with self.record.open("a") as f:
            f.write(json.dumps({"hook": hook, "pid": os.getpid(), **values}) + "\\n")

    def param_groups(self, default, model, lr_heads):
        self._mark("param_groups", lr_heads=lr_heads)
        return [{**g, "lr": g.get("lr", lr_heads) * self.lr_scale} for g in default]

    def on_epoch_start(self, optimizer, epoch):
        self._mark("on_epoch_start", epoch=epoch, lrs=[g["lr"] for g in optimizer.param_groups])
        return False

    def encoder_trains(self, epoch, step=0):
        return False

    def epoch_logs(self, optimizer):
        return {"toy_lr_scale": self.lr_scale}

    def before_export(self, model):
        self._mark("before_export")
'''


@pytest.fixture
def private_ray(tmp_path, monkeypatch):
    """The toy module's folder on PYTHONPATH, then a private Ray instance (its workers inherit that environment;
    ``lmrec train`` would otherwise join any local cluster it finds). Yields (module folder, Ray address)."""
    ray = pytest.importorskip("ray")
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "toy_strategy.py").write_text(textwrap.dedent(TOY_STRATEGY), encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(modules), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    temp_dir = tempfile.mkdtemp(prefix="lmrec-toy-", dir="/tmp")  # Ray's socket paths are length-limited
    info = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir)
    try:
        yield modules, info.address_info["gcs_address"]
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_strategy_named_by_import_path_trains_through_lmrec_train(tmp_path, data_dir, private_ray):
    modules, address = private_ray
    record = tmp_path / "hooks.jsonl"
    job = yaml.safe_load(TINY.read_text())
    job.update(name="toy-strategy", strategy={"name": "toy_strategy:ScaledHeads", "lr_scale": 0.5,
                                              "record": str(record)})
    job["optim"]["epochs"] = 2
    job["scaling"]["storage_path"] = str(tmp_path / "runs")
    spec = tmp_path / "toy.yaml"
    spec.write_text(f"# lmrec train {spec}\n" + yaml.safe_dump(job, sort_keys=False), encoding="utf-8")

    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "lmrec.cli", "train", str(spec)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])

    # the hooks ran in both Ray workers, and the optimizer held the LRs the strategy set
    marks = [json.loads(line) for line in record.read_text().splitlines()]
    lr_heads = job["optim"]["lr_heads"]
    assert {m["lr_heads"] for m in marks if m["hook"] == "param_groups"} == {lr_heads}
    starts = [m for m in marks if m["hook"] == "on_epoch_start"]
    assert sorted(m["epoch"] for m in starts) == [0, 0, 1, 1] and len({m["pid"] for m in starts}) == 2
    assert all(lr == pytest.approx(0.5 * lr_heads) for m in starts for lr in m["lrs"])
    assert [m["hook"] for m in marks].count("before_export") == 1  # rank 0 writes the artifact
    assert len(result["best"]) and result["best"]["toy_lr_scale"] == 0.5  # epoch_logs reached the reports
    assert result["best"]["encoder_trainable_params"] == 0

    from lmrec.artifacts.two_tower import load_artifact

    artifact = load_artifact(result["artifact"])  # a plain, verified two-tower artifact
    assert artifact.manifest["config"]["strategy"] == {"name": "toy_strategy:ScaledHeads", "lr_scale": 0.5,
                                                      "record": str(record)}
    assert artifact.manifest["metrics"]["toy_lr_scale"] == 0.5
    assert np.isfinite(artifact.recommender.score_items(np.arange(3))).all()
