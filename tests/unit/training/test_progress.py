"""The driver's per-epoch record of ``lmrec train``: lines (no terminal), TensorBoard events, MLflow metrics."""

from __future__ import annotations

import io
import sys

import pytest

from lmrec.config.base import SpecError
from lmrec.training.progress import RunTracker, mlflow_uri

EPOCHS = [{"epoch": 0, "loss": 1.5, "val_rmse": 1.1, "val_ndcg@10": 0.05, "steps": 8, "is_best": True},
          {"epoch": 1, "loss": 1.2, "val_rmse": 1.0, "val_ndcg@10": 0.07, "steps": 8, "note": "text"}]


def test_lines_and_tensorboard_events(tmp_path):
    stream = io.StringIO()
    tracker = RunTracker("tiny", str(tmp_path / "run"), 2, {"model.dim": "16"}, experiment="tiny", stream=stream)
    for metrics in EPOCHS:
        tracker.epoch(metrics)
    tracker.finish(EPOCHS[1], {"test_rmse": 1.05, "test_ndcg@10": 0.06})
    tracker.close()
    lines = stream.getvalue().splitlines()
    assert lines == ["tiny epoch 1/2 loss=1.5000 val_rmse=1.1000 val_ndcg@10=0.0500",
                     "tiny epoch 2/2 loss=1.2000 val_rmse=1.0000 val_ndcg@10=0.0700"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/val_rmse", "test/test_rmse", "best/best_val_rmse"} <= tags
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("val/val_rmse")] == [(1, 1.1), (2, 1.0)]


def test_mlflow_run_when_a_tracking_uri_is_set(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = RunTracker("tiny-1", str(tmp_path / "run"), 2, {"model.dim": "16"}, experiment="tiny",
                         stream=io.StringIO(), mlflow_tracking_uri=mlflow_uri())
    for metrics in EPOCHS:
        tracker.epoch(metrics)
    tracker.finish(EPOCHS[1], {"test_rmse": 1.05})
    tracker.close()
    run = mlflow.search_runs(experiment_names=["tiny"], output_format="list")[0]
    assert run.info.run_name == "tiny-1" and run.info.status == "FINISHED"
    assert run.data.params["model.dim"] == "16"
    assert run.data.metrics["val_ndcg_at_10"] == pytest.approx(0.07) and run.data.metrics["test_rmse"] == 1.05


def test_tracking_uri_without_mlflow_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an install without the tracking extra looks like
    with pytest.raises(SpecError, match="mlflow is not installed"):
        mlflow_uri()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert mlflow_uri() is None


def test_one_bar_with_an_eta_on_a_terminal(tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with os.fdopen(slave, "w") as stream:
        tracker = RunTracker("tiny", str(tmp_path / "run"), 3, {}, experiment="tiny", stream=stream)
        tracker.epoch({**EPOCHS[1], "epoch": 1})  # a resumed run: its first report is epoch 2 of 3
        tracker.close()
    shown = os.read(master, 65536).decode()
    os.close(master)
    assert "2/3" in shown and "epoch/s" in shown and "val_rmse=1.0000" in shown
    assert "tiny epoch 2/3" not in shown  # the bar, not the per-epoch lines
