"""Training faults: a Ray Train worker SIGKILLed mid-checkpoint-write, and checkpoints torn or altered on storage.

The fast subset of ``benchmarks/reliability.py`` (which runs >= 10 seeded kill points): one real SIGKILL on a
2-worker run must resume from the last complete checkpoint and finish; a checkpoint whose files do not match
its manifest is never loaded, on resume the worker falls back to the newest intact one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.training.checkpoint_manifest import (
    CheckpointIntegrityError, manifest_name, verify_checkpoint, write_manifest)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
SPEC = REPO / "tests" / "configs" / "tiny_two_tower.yaml"


def _sealed(tmp_path: Path, writers=(0,)) -> Path:
    root = tmp_path / "ckpt"
    (root / "sub").mkdir(parents=True)
    (root / "checkpoint.pt").write_bytes(os.urandom(4096))
    (root / "sub" / "shard.pt").write_bytes(b"x" * 100)
    write_manifest(root, 0, list(writers))
    return root


def test_sealed_checkpoint_verifies(tmp_path):
    root = _sealed(tmp_path)
    manifests = verify_checkpoint(root)
    assert set(manifests[0]["files"]) == {"checkpoint.pt", "sub/shard.pt"}
    (tmp_path / "empty").mkdir()
    assert write_manifest(tmp_path / "empty", 1, [0]) is None  # a rank that wrote nothing seals nothing


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove_file", "remove_manifest", "garbage_manifest",
                                    "missing_rank", "traversal", "absolute"])
def test_torn_or_altered_checkpoint_is_rejected(tmp_path, damage):
    root = _sealed(tmp_path, writers=(0, 1) if damage == "missing_rank" else (0,))
    ckpt, manifest = root / "checkpoint.pt", root / manifest_name(0)
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage == "flip":
        data = bytearray(ckpt.read_bytes()); data[10] ^= 1; ckpt.write_bytes(bytes(data))
    elif damage == "remove_file":
        (root / "sub" / "shard.pt").unlink()
    elif damage == "remove_manifest":
        manifest.unlink()
    elif damage == "garbage_manifest":
        manifest.write_text("{not json")
    elif damage in ("traversal", "absolute"):
        m = json.loads(manifest.read_text())
        outside = tmp_path / "outside.pt"
        outside.write_bytes(b"x")
        from lmrec.artifacts.manifest import sha256_file
        name = "../outside.pt" if damage == "traversal" else str(outside)
        m["files"][name] = sha256_file(outside)
        manifest.write_text(json.dumps(m))
    with pytest.raises(CheckpointIntegrityError) as e:
        verify_checkpoint(root)
    assert str(root) in str(e.value)


# ---- the real thing: 2 Ray Train workers, a SIGKILL, a resume ----

@pytest.mark.slow
@pytest.mark.heavy
def test_sigkill_mid_checkpoint_write_then_corrupted_latest(ray_local, tmp_path, monkeypatch):
    from lmrec.training.ray_train import FAULT_ENV, train

    spec = load_spec(TrainSpec, SPEC, {"scaling.storage_path": str(tmp_path / "runs"), "name": "kill-ckpt"})
    # rank 0 dies in epoch 1 with its checkpoint files written but not sealed: epoch 1 is never committed
    monkeypatch.setenv(FAULT_ENV, json.dumps({"epoch": 1, "rank": 0, "point": "checkpoint", "delay_s": 0}))
    result = train(spec, spec_path=SPEC)
    run = Path(result.run_path)
    assert "killed rank 0 in epoch 1 after writing its checkpoint files" in (run / ".fault_injected").read_text()
    assert [int(h["epoch"]) for h in result.history] == [0, 1, 2]
    assert [int(h["resumed_at_epoch"]) for h in result.history] == [0, 1, 1]  # from epoch 0's checkpoint
    kept = sorted(run.glob("epoch_*"))
    for folder in kept:
        verify_checkpoint(folder)  # every checkpoint Ray kept is complete

    # the latest checkpoint is damaged on storage after it was committed: a resumed run must skip it
    latest = Path(result.checkpoint_path)
    assert latest.name == "epoch_0002"
    (latest / "checkpoint.pt").write_bytes((latest / "checkpoint.pt").read_bytes()[:2048])
    with pytest.raises(CheckpointIntegrityError):
        verify_checkpoint(latest)
    intact = max(int(p.name.split("_")[1]) for p in kept if p != latest)
    monkeypatch.delenv(FAULT_ENV)
    again = train(spec.model_copy(update={"optim": spec.optim.model_copy(update={"epochs": 4})}), spec_path=SPEC)
    assert again.run_path == result.run_path
    assert int(again.history[-1]["epoch"]) == 3
    assert int(again.history[-1]["resumed_at_epoch"]) == intact + 1  # not 3: the torn epoch 2 was not loaded
