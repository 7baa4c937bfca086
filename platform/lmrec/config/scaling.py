"""Where and how a job runs: workers, resources, storage, fault tolerance. Read by ``lmrec.training`` only."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmrec.config.base import StrictModel


class ScalingSpec(StrictModel):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one process each; one GPU each when use_gpu).")
    use_gpu: bool | Literal["auto"] = Field("auto", description="Train on GPUs; 'auto' = when the cluster has any.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker (fractions allowed).")
    engine: Literal["auto", "ddp", "deepspeed"] = Field(
        "auto", description="'ddp' = torch DDP; 'deepspeed' = ZeRO engine; 'auto' = by memory: ddp when weights + gradients + AdamW state fit half a device, else deepspeed."
    )
    deepspeed_config: str = Field(
        "jobs/deepspeed/zero2.json", description="DeepSpeed JSON: absolute, or relative to the spec file, else to the working directory (the repository root; a Ray job's --working-dir)."
    )
    storage_path: str | None = Field(
        None, description="Checkpoints/artifacts root: local dir, shared filesystem or URI (default ~/ray_results)."
    )
    max_failures: int = Field(2, ge=-1, description="Worker-group restarts from the latest checkpoint (-1 = forever).")
