"""GPU path: bf16 autocast training with the DDP-style and DeepSpeed engines. Skipped without a CUDA GPU (CI)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "models"))
from test_two_tower import data_for, tiny_spec  # noqa: E402

from lmrec.training.local import train_local  # noqa: E402


@pytest.mark.parametrize("engine", ["ddp", "deepspeed"])
def test_trains_on_gpu(engine, monkeypatch):
    if engine == "deepspeed":
        pytest.importorskip("deepspeed")
        for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": "29533"}.items():
            monkeypatch.setenv(key, os.environ.get(key, value))
    spec = tiny_spec(optim={"epochs": 2, "lr_heads": 0.05}, scaling={"engine": engine})
    res = train_local(spec, data_for(spec), device="cuda")
    val = [e["val_rmse"] for e in res.epochs]
    assert len(val) == 2 and all(v == v for v in val)  # finite
    assert next(res.recipe.model.parameters()).device.type == "cuda"
