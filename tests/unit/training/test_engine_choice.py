"""scaling.engine: 'auto' chooses by a memory model (weights + gradients + AdamW state against half a device), not by
the device type; explicit choices are kept; a missing DeepSpeed is a clear error, not an ImportError mid-run."""

from __future__ import annotations

import builtins

import pytest
import torch

from lmrec.training.engines import DDP_MEMORY_SHARE, TRAIN_BYTES_PER_PARAM, require_deepspeed, resolve_engine

GIB = 2**30
CUDA = torch.device("cuda", 0)


def _params_filling(share: float, memory: int) -> int:
    return int(memory * DDP_MEMORY_SHARE * share / TRAIN_BYTES_PER_PARAM)


@pytest.mark.parametrize("n_params, expected", [
    (22_713_216, "ddp"),        # MiniLM-L6 on a 16 GiB GPU
    (335_000_000, "ddp"),       # bert-large: 5.0 GiB of state, fits 8 GiB
    (2_000_000_000, "deepspeed"),  # 29.8 GiB of state: ZeRO
])
def test_auto_chooses_by_memory_on_a_16_gib_device(n_params, expected):
    choice = resolve_engine("auto", CUDA, n_params, device_memory=16 * GIB)
    assert choice.name == expected
    assert "GiB" in choice.reason and choice.reason.startswith("auto")


def test_the_boundary_is_the_memory_share():
    memory = 80 * GIB
    assert resolve_engine("auto", CUDA, _params_filling(0.99, memory), device_memory=memory).name == "ddp"
    assert resolve_engine("auto", CUDA, _params_filling(1.01, memory), device_memory=memory).name == "deepspeed"


def test_cpu_is_ddp_and_explicit_choices_are_kept():
    assert resolve_engine("auto", torch.device("cpu"), 10**12).name == "ddp"
    assert resolve_engine("ddp", CUDA, 10**12, device_memory=GIB).reason == "requested by scaling.engine"
    assert resolve_engine("deepspeed", torch.device("cpu")).name == "deepspeed"
    with pytest.raises(ValueError, match="unknown engine"):
        resolve_engine("fsdp", CUDA)


def test_missing_deepspeed_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_deepspeed(name, *args, **kwargs):
        if name == "deepspeed":
            raise ImportError("No module named 'deepspeed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_deepspeed)
    with pytest.raises(RuntimeError, match=r"lmrec\[deepspeed\]"):
        require_deepspeed()
    with pytest.raises(RuntimeError, match="scaling.engine: ddp"):
        resolve_engine("auto", CUDA, 10**10, device_memory=GIB)
