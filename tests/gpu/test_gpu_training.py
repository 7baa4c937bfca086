"""GPU path: bf16 autocast training with the DDP-style and DeepSpeed engines. Skipped without a CUDA GPU (CI)."""

from __future__ import annotations

import importlib.util
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
    # DDP steps with the fused AdamW kernel; DeepSpeed keeps a plain one (it may step offloaded partitions)
    assert bool(res.recipe.optimizer.defaults.get("fused")) == (engine == "ddp")


def test_auto_picks_by_memory_on_this_gpu():
    from lmrec.training.engines import DDP_MEMORY_SHARE, TRAIN_BYTES_PER_PARAM, resolve_engine

    device = torch.device("cuda", 0)
    memory = torch.cuda.get_device_properties(device).total_memory
    fits = int(memory * DDP_MEMORY_SHARE / TRAIN_BYTES_PER_PARAM)
    assert resolve_engine("auto", device, 335_000_000).name == "ddp"  # bert-large fits any 16 GiB+ GPU
    if importlib.util.find_spec("deepspeed") is not None:
        assert resolve_engine("auto", device, 2 * fits).name == "deepspeed"
    spec = tiny_spec(scaling={"engine": "auto"})
    res = train_local(spec, data_for(spec), device="cuda")
    assert res.recipe.engine_name == "ddp" and "GiB" in res.recipe.engine_reason  # a GPU: decided by memory


def _encoder_peak(checkpointing: bool) -> tuple[float, int]:
    """Loss and peak bytes above the weights of one bf16 forward + backward of a bert-base-shaped encoder."""
    from transformers import AutoModel, BertConfig

    from lmrec.models.encoder import TextEncoder, enable_checkpointing, eval_mode_keep_checkpointing

    torch.manual_seed(0)
    config = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    encoder = TextEncoder(AutoModel.from_config(config)).cuda()
    if checkpointing:
        enable_checkpointing(encoder)
    eval_mode_keep_checkpointing(encoder)  # as the recipe trains it: no dropout
    ids = torch.randint(1000, 20000, (512, 32), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    mask = torch.ones_like(ids)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = encoder(ids, mask).float().pow(2).mean()
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del encoder
    torch.cuda.empty_cache()
    return float(loss.detach()), peak


def test_gradient_checkpointing_cuts_peak_memory_on_bert_base():
    loss, peak = _encoder_peak(False)
    loss_ckpt, peak_ckpt = _encoder_peak(True)
    assert loss_ckpt == pytest.approx(loss, rel=1e-3)
    # 512 rows x 32 tokens x 12 blocks of stored activations vs one block's at a time (+ the gradients both keep)
    assert peak_ckpt < 0.6 * peak, (peak_ckpt / 2**30, peak / 2**30)
