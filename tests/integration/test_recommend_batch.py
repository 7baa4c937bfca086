"""`lmrec recommend-batch` run as a user would (a subprocess starting its own local Ray) on a tiny two-tower
artifact: the Parquet it writes holds every user's top k, ranked, scores non-increasing, no training item; a bad
spec, artifact, user or an existing output is a one-line error before Ray starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

LMREC = [sys.executable, "-m", "lmrec.cli", "recommend-batch"]
K = 7


def _run(spec: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    # RAY_ADDRESS=local: a private Ray instance, never a cluster another process started on this machine
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*LMREC, str(spec), *extra], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _spec(tmp_path: Path, **fields) -> Path:
    spec = tmp_path / "batch.yaml"
    spec.write_text(f"# lmrec recommend-batch {spec}\n" + yaml.safe_dump(fields, sort_keys=False), encoding="utf-8")
    return spec


@pytest.mark.slow
def test_recommend_batch_writes_every_users_top_k_to_parquet(serving_artifacts, tmp_path):
    import pandas as pd

    data = serving_artifacts["data"]
    out = tmp_path / "recs"
    spec = _spec(tmp_path, name="tiny-batch", artifact=str(serving_artifacts["v1"]), output=str(out), k=K,
                 batch_size=16, workers=1)  # one actor: the pool is the same code at any size, and this is 2 cores
    proc = _run(spec, tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    print("recommend-batch summary:", summary)  # users/s of the small case (pytest -s shows it)

    recs = pd.read_parquet(out)
    assert list(recs.columns) == ["user_id", "rank", "item_id", "score"]
    assert summary["users"] == data.n_users and summary["rows"] == len(recs) and summary["output"] == str(out)
    # raw ids, every user present, k rows each (or every unseen item where fewer remain)
    seen = data.train.assign(user_id=lambda f: np.asarray(data.user_ids)[f["user_idx"]],
                             item_id=lambda f: np.asarray(data.item_ids)[f["item_idx"]])
    unseen = data.n_items - seen.groupby("user_id").size().reindex(data.user_ids, fill_value=0)
    counts = recs.groupby("user_id").size()
    assert set(counts.index) == set(data.user_ids)
    assert (counts == np.minimum(K, unseen.loc[counts.index])).all()
    for _, rows in recs.groupby("user_id"):
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
        ordered = rows.sort_values("rank")["score"].to_numpy()
        assert (np.diff(ordered) <= 0).all()
    assert recs.merge(seen[["user_id", "item_id"]], on=["user_id", "item_id"]).empty  # no training item
    assert recs["item_id"].isin(data.item_ids).all()



@pytest.mark.parametrize("override,message", [
    ("artifact={missing}", "not an artifact folder"),
    ("k=0", "k: Input should be greater than or equal to 1"),
    ("users=[no-such-user]", "not in the artifact"),
    ("output={existing}", "exists: choose another output or set mode: overwrite"),
])
def test_bad_artifact_k_or_user_is_one_line_before_ray(serving_artifacts, tmp_path, override, message):
    spec = _spec(tmp_path, artifact=str(serving_artifacts["mf"]), output=str(tmp_path / "out"))
    (tmp_path / "earlier").mkdir()
    proc = _run(spec, tmp_path, "--set", override.format(missing=tmp_path / "nowhere", existing=tmp_path / "earlier"))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
