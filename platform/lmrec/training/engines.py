"""How the training module is wrapped for the optimizer step: plain / DistributedDataParallel, or DeepSpeed ZeRO.

Both engines expose the same small surface (``module`` to call forward through, ``step(loss)``, ``save``/``load``,
``gathered()`` for full parameters) so the recipe reads the same whatever the engine.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from lmrec.training.optimizers import all_reduce_sparse_rows, clip_grad_norm, ddp_ignored

EngineName = Literal["ddp", "deepspeed"]
CHECKPOINT_FILE = "checkpoint.pt"
DEEPSPEED_TAG = "checkpoint"


# bytes per trainable parameter under a plain engine: fp32 weights, fp32 gradients, AdamW's two moments
TRAIN_BYTES_PER_PARAM = 16
# the share of one GPU's memory the plain engine may plan for: the rest is activations, the item-text table, CUDA
DDP_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class EngineChoice:
    name: EngineName
    reason: str


def resolve_engine(engine: str, device: torch.device, n_params: int = 0,
                   device_memory: int | None = None) -> EngineChoice:
    """'auto' chooses by memory, not by device: the plain engine (DDP) whenever weights + gradients + optimizer state
    fit one device with margin (on one GPU DeepSpeed measured 0.5-0.7x of it), DeepSpeed ZeRO (the spec's
    ``scaling.deepspeed_config``) when they do not. ``device_memory``: bytes of one device (read from CUDA)."""
    if engine not in ("auto", "ddp", "deepspeed"):
        raise ValueError(f"unknown engine {engine!r}")
    if engine != "auto":
        choice = EngineChoice(engine, "requested by scaling.engine")  # type: ignore[arg-type]
    elif device.type != "cuda" and device_memory is None:
        choice = EngineChoice("ddp", "auto: CPU workers (DeepSpeed's ZeRO saves no memory worth its cost here)")
    else:
        if device_memory is None:
            device_memory = torch.cuda.get_device_properties(device).total_memory
        need = n_params * TRAIN_BYTES_PER_PARAM
        budget = int(device_memory * DDP_MEMORY_SHARE)
        sizes = f"{need / 2**30:.2f} GiB of weights + gradients + AdamW state vs {budget / 2**30:.1f} GiB"
        choice = (EngineChoice("ddp", f"auto: {sizes} (half the device): fits, plain DDP")
                  if need <= budget else EngineChoice("deepspeed", f"auto: {sizes} (half the device): ZeRO"))
    if choice.name == "deepspeed":
        require_deepspeed()
    return choice


def require_deepspeed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("the DeepSpeed engine needs the deepspeed package: pip install 'lmrec[deepspeed]' "
                           "(or set scaling.engine: ddp)") from exc


def distributed_world() -> tuple[bool, int, int]:
    """(initialised, world_size, rank) of the default process group."""
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_world_size(), dist.get_rank()
    return False, 1, 0


def deepspeed_config(
    path: str | Path, *, micro_batch: int, world_size: int, grad_clip: float, device: torch.device
) -> dict:
    """Read a DeepSpeed JSON and fill its "auto" values the way the HF integration does; bf16 only on CUDA."""
    cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    auto = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch * world_size,
        "gradient_clipping": grad_clip,
    }
    for key, value in auto.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
    cfg.setdefault("bf16", {})
    cfg["bf16"]["enabled"] = device.type == "cuda" and bool(cfg["bf16"].get("enabled", True))
    cfg.setdefault("fp16", {})["enabled"] = False
    zero = cfg.setdefault("zero_optimization", {})
    for key in list(zero):
        if zero[key] == "auto":
            zero.pop(key)  # DeepSpeed's own default is the sensible "auto" for bucket sizes
    return cfg


class TorchEngine:
    """Plain module (one process) or DistributedDataParallel (torch.distributed initialised, world_size > 1)."""

    name = "ddp"

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float = 0.0,
                 sparse_params: list[nn.Parameter] | None = None) -> None:
        self.inner = module
        self.optimizer = optimizer
        self.grad_clip = grad_clip
        self.sparse_params = list(sparse_params or [])  # sparse ID rows: averaged by all_reduce_sparse_rows
        initialised, world, _ = distributed_world()
        self.module: nn.Module = module
        if initialised and world > 1:
            if self.sparse_params:
                ddp_ignored(module, self.sparse_params)
            # find_unused: a task with weight 0 or a frozen encoder leaves parameters without gradient;
            # broadcast_buffers off: each rank refreshes its own item-text cache rows
            self.module = nn.parallel.DistributedDataParallel(
                module, find_unused_parameters=True, broadcast_buffers=False
            )

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_sparse_rows(self.sparse_params)
        if self.grad_clip > 0:
            clip_grad_norm(self.inner.parameters(), self.grad_clip)
        self.optimizer.step()

    def gathered(self):
        return contextlib.nullcontext()

    def snapshot(self) -> dict:
        """An in-memory copy of the weights (best-epoch restore without disk)."""
        return copy.deepcopy({k: v.detach().cpu() for k, v in self.inner.state_dict().items()})

    def restore(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def save(self, directory: str, client_state: dict) -> None:
        _, _, rank = distributed_world()
        if rank == 0:
            os.makedirs(directory, exist_ok=True)
            state = {"model": self.inner.state_dict(), "optimizer": self.optimizer.state_dict(), "client": client_state}
            torch.save(state, Path(directory) / CHECKPOINT_FILE)
        if distributed_world()[0]:
            dist.barrier()

    def load(self, directory: str) -> dict:
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        _resize_buffers(self.inner, state["model"])
        self.inner.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        return state["client"]


class DeepSpeedEngine:
    """``deepspeed.initialize`` around the training module with a torch optimizer (ZeRO 1/2/3, optional offload)."""

    name = "deepspeed"

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, config: dict) -> None:
        import deepspeed

        self.inner = module
        self.config = config
        self.module, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
        self.zero_stage = int(config.get("zero_optimization", {}).get("stage", 0))

    def step(self, loss: torch.Tensor) -> None:
        self.module.backward(loss)
        self.module.step()

    def gathered(self):
        """Full parameters on every rank (ZeRO-3 partitions them); a no-op below stage 3."""
        if self.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.inner.parameters()), modifier_rank=None)

    def snapshot(self) -> dict | None:
        if self.zero_stage >= 3:
            return None  # partitioned weights: rely on checkpoints instead
        return copy.deepcopy({k: v.detach().cpu() for k, v in self.inner.state_dict().items()})

    def restore(self, state: dict | None) -> None:
        if state is not None:
            self.inner.load_state_dict(state)

    def save(self, directory: str, client_state: dict) -> None:
        # DeepSpeed writes a file named "latest" holding the tag, so the tag itself must not be "latest"
        self.module.save_checkpoint(directory, tag=DEEPSPEED_TAG, client_state=client_state)

    def load(self, directory: str) -> dict:
        _, client = self.module.load_checkpoint(directory, tag=None)  # None = the tag named in "latest"
        return client or {}


def _resize_buffers(module: nn.Module, state: dict) -> None:
    """Buffers whose width depends on data (user histories) take the saved shape before loading."""
    for name, buf in module.named_buffers():
        saved = state.get(name)
        if saved is not None and saved.shape != buf.shape:
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            setattr(owner, name.rsplit(".", 1)[-1], torch.empty_like(saved, device=buf.device))


def init_single_process_group(backend: str = "gloo", port: int = 29533) -> None:
    """A world of one (DeepSpeed needs a process group even alone): sets the env vars a launcher would set."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(key, value)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=0, world_size=1)
