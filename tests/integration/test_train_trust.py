"""A training run you can trust: ``lmrec train`` (``main_train``, what the console script runs) on the tiny spec,
with real Ray: it resumes only a run of the same spec and data, reports test metrics of the selected epoch, and
leaves per-epoch TensorBoard event files in the run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmrec.artifacts.two_tower import load_artifact
from lmrec.training.fingerprint import RUN_FILE
from lmrec.training.ray_train import METRICS_FILE, main_train

REPO = Path(__file__).resolve().parents[2]
SPEC = str(REPO / "tests" / "configs" / "tiny_two_tower.yaml")
RANKING = ("test_hr@10", "test_ndcg@10", "test_recall@10", "test_mrr@10")

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # two real `lmrec train` pairs: minutes (make test-heavy)


def lmrec_train(capsys, overrides: dict) -> tuple[int, dict | None, str]:
    code = main_train(SPEC, overrides, resume=True)
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return code, json.loads(lines[-1]) if lines else None, err


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob("epoch_*"))


def test_resume_needs_the_same_split_and_the_run_reports_test_metrics(ray_local, tmp_path, capsys):
    base = {"name": "trust", "scaling.storage_path": str(tmp_path), "optim.epochs": 1}
    code, first, err = lmrec_train(capsys, base)
    assert code == 0, err
    run = Path(first["run_path"])
    assert run == tmp_path / "trust" and checkpoints(run) == ["epoch_0000"]

    # test metrics of the selected epoch: in the final JSON line, the run folder's record and the artifact
    test = first["test"]
    assert {"test_rmse", "test_mae", *RANKING} <= set(test) and test["test_users"] > 0
    assert 0 < test["test_rmse"] < 3 and all(0 <= test[k] <= 1 for k in RANKING)
    record = json.loads((run / METRICS_FILE).read_text())
    assert record["test"] == test and record["best"]["val_rmse"] == first["best"]["val_rmse"]
    assert record["fingerprint"] == first["fingerprint"] == json.loads((run / RUN_FILE).read_text())["fingerprint"]
    assert load_artifact(first["artifact"]).manifest["metrics"]["test_rmse"] == pytest.approx(test["test_rmse"])
    assert not any(k.startswith("test_") for k in first["best"])  # the selection never saw the test part
    # progress: one line per epoch when stderr is not a terminal; TensorBoard events in the run folder
    assert "trust epoch 1/1 loss=" in err
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    # another split under the same name and storage: stopped before training, naming the field and the ways out
    code, _, err = lmrec_train(capsys, {**base, "data.split.test_frac": 0.3})
    assert code == 2
    assert "data.split.test_frac: 0.2 -> 0.3" in err and "--no-resume" in err and "Traceback" not in err
    assert checkpoints(run) == ["epoch_0000"]

    # the same spec resumes (more epochs are safe to change) and continues at epoch 1
    code, resumed, err = lmrec_train(capsys, {**base, "optim.epochs": 2})
    assert code == 0, err
    assert resumed["run_path"] == str(run) and resumed["fingerprint"] == first["fingerprint"]
    assert [int(h["resumed_at_epoch"]) for h in json.loads((run / METRICS_FILE).read_text())["history"]] == [0, 1]


def test_a_changed_data_file_never_resumes(ray_local, tmp_path, capsys, data_dir, monkeypatch):
    copy = tmp_path / "data" / "ml-100k"
    shutil.copytree(data_dir / "ml-100k", copy)
    monkeypatch.setenv("LMREC_DATA_DIR", str(tmp_path / "data"))
    base = {"name": "trust-data", "scaling.storage_path": str(tmp_path / "runs"), "optim.epochs": 1}
    code, first, err = lmrec_train(capsys, base)
    assert code == 0, err

    lines = (copy / "u.data").read_text().splitlines(keepends=True)
    user, item, rating, stamp = lines[0].split("\t")
    lines[0] = "\t".join([user, item, "1" if rating != "1" else "5", stamp])
    (copy / "u.data").write_text("".join(lines))
    code, _, err = lmrec_train(capsys, base)
    assert code == 2 and "data_file.u.data:" in err and "--no-resume" in err
    assert checkpoints(Path(first["run_path"])) == ["epoch_0000"]
