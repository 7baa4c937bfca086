"""``lmrec tune`` end to end on CPU: a real Ray Tune study (4 trials of the tiny two-tower, 2 at once, ASHA from
epoch 1, Optuna), interrupted with SIGINT once a trial has finished and a third has started, restored with ``--resume`` to the end,
then the exported best job spec is trained by ``lmrec train``.

Each command runs as the user would run it (a subprocess with its own local Ray: ``RAY_ADDRESS=local``), so the
restore really starts from what the interrupted driver left on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # minutes: a study interrupted, resumed, exported, trained

REPO = Path(__file__).resolve().parents[2]
TUNE_SPEC = REPO / "tests" / "configs" / "tiny_tune.yaml"
LMREC = [sys.executable, "-m", "lmrec.cli"]


@pytest.fixture(scope="module")
def env():
    """Environment of the ``lmrec`` commands: they join a private Ray instance started here for the module."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("optuna")
    data_dir = Path(os.environ.get("LMREC_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (data_dir / "ml-100k" / "u.data").exists():
        pytest.skip(f"ML-100K not found under {data_dir}")
    temp_dir = tempfile.mkdtemp(prefix="lmrec-tu-", dir="/tmp")  # short: Ray's socket paths are length-limited
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # private loopback instance; the CLI drivers need no token file
        mp.delenv("RAY_ADDRESS", raising=False)
        for attempt in range(3):  # a loaded shared machine can miss Ray's fixed 30 s raylet registration window
            try:
                # Logical CPUs with headroom (max_concurrent still runs 2 trials at once): Ray Train releases the
                # worker reservation of a trial ASHA stopped through the dashboard's State API, whose address
                # lookup fails while other Ray instances run on the machine; stale reservations must not starve.
                info = ray.init(num_cpus=6, include_dashboard=True, dashboard_host="127.0.0.1",
                                dashboard_port=_free_port(), _temp_dir=temp_dir)
                break
            except Exception:
                ray.shutdown()
                if attempt == 2:
                    raise
        yield {**os.environ, "LMREC_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "RAY_ADDRESS": info.address_info["gcs_address"], "PYTHONUNBUFFERED": "1"}
        ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finished_trials(study: Path) -> list[Path]:
    return sorted(p.parent.parent for p in study.glob("runs/*/artifact/manifest.json"))  # trial run folders


def _run(args, env, cwd, timeout) -> subprocess.CompletedProcess:
    proc = subprocess.run(LMREC + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def test_search_interrupt_resume_export_and_train(tmp_path, env):
    storage, export_dir = tmp_path / "studies", tmp_path / "jobs" / "tuned"
    args = [str(TUNE_SPEC), "--set", f"storage_path={storage}", "--set", f"export_dir={export_dir}"]
    study = storage / "tiny-tune"

    # 1. start the study and interrupt it (SIGINT, as Ctrl-C) mid-way: one trial finished, a later one started
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(LMREC + ["tune", *args], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not (_finished_trials(study) and len(list(study.glob("runs/*"))) >= 3):  # a third trainer started
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "the study made no progress in time"
            time.sleep(1)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 130, (tmp_path / "first.log").read_text()[-5000:]  # "interrupted; --resume"
    done_before = {p.name: (p / "artifact" / "manifest.json").stat().st_mtime for p in _finished_trials(study)}
    assert len(done_before) < 4
    assert not (study / "results.csv").exists()  # the interrupted driver wrote no report

    # 2. resume: finished trials are kept, the rest run, the report is written
    out = _last_json(_run(["tune", *args, "--resume"], env, REPO, timeout=420).stdout)
    table = pd.read_csv(study / "results.csv")
    assert len(table) == 4 and out["trials"] == 4
    assert (table["status"] != "error").all(), table
    # ASHA stopped at least one trial before its 6 epochs (the bad learning rate among them)
    assert (table["status"] == "stopped_early").sum() >= 1, table
    assert out["trial_epochs_used"] < out["trial_epochs_possible"] == 24
    for trial_id, mtime in done_before.items():  # not rerun
        assert (study / "runs" / trial_id / "artifact" / "manifest.json").stat().st_mtime == mtime
    # every trial logged TensorBoard events; the plots exist
    trial_dirs = [p for p in study.iterdir() if (p / "result.json").exists()]
    assert len(trial_dirs) == 4 and all(list(p.glob("events.out.tfevents*")) for p in trial_dirs)
    for name in ("params.png", "curves.png", "simplex_task_weights.png"):
        assert (study / "plots" / name).stat().st_size > 1000

    # 3. the best spec: a valid job spec with its run command first, the best trial's weights, the artifact
    exported = export_dir / "tiny-tune.yaml"
    lines = exported.read_text().splitlines()
    assert lines[0] == f"# lmrec train {exported}" and "ray job submit" in lines[1]
    spec = load_spec(TrainSpec, exported)
    best = json.loads((study / "best.json").read_text())
    finished = table[table["artifact"].notna()]
    assert best["value"] == pytest.approx(finished["val_rmse"].min())
    weights = [spec.tasks.rating.weight, spec.tasks.click.weight, spec.tasks.related.weight]
    assert sum(weights) == pytest.approx(1.6)
    assert spec.optim.lr_heads == pytest.approx(best["params"]["optim.lr_heads"])
    assert Path(best["artifact"], "manifest.json").exists()

    # 4. `lmrec train` runs the exported spec as it is
    trained = _last_json(_run(["train", str(exported), "--set", f"scaling.storage_path={tmp_path / 'train'}"],
                              env, REPO, timeout=240).stdout)
    assert Path(trained["artifact"], "manifest.json").exists()
    assert trained["epochs"] >= 1 and trained["best"]["val_rmse"] == pytest.approx(best["value"], abs=0.05)
    assert yaml.safe_load(exported.read_text())["name"] == "tiny-tune"
