"""Train a ``TrainSpec`` on Ray Train: the driver behind ``lmrec train`` and Ray Jobs.

    lmrec train jobs/ml100k-minilm-multitask.yaml
    ray job submit --working-dir . -- lmrec train jobs/ml100k-minilm-multitask.yaml

The driver checks everything it can before any cluster time is spent (the spec, the DeepSpeed JSON, the data:
``prepare_data`` runs here, once), then joins a running cluster (``RAY_ADDRESS`` or ``address="auto"``) or starts
a local one, shards the training interactions as a Ray Dataset and runs ``lmrec.training.worker`` on
``num_workers`` workers under a ``TorchTrainer``. Checkpoints go to ``<storage_path>/<name>/epoch_NNNN``; running
the same spec again resumes from the latest one (``resume=False`` starts a fresh, timestamped run), and
``FailureConfig(max_failures)`` restarts a crashed worker group from it. Rank 0 writes the serving artifact to
``<storage_path>/<name>/artifact``.

A resume continues only a run of the same identity (``lmrec.training.fingerprint``: the spec fields that define
model and data, and the data files' content), recorded in ``<run>/lmrec_run.json``; another identity stops before
the cluster is touched. At the end the selected (best-on-validation) weights are scored once on the test part;
``<run>/lmrec_metrics.json`` holds the validation and test metrics and the per-epoch history. ``lmrec train``
shows one progress bar (``lmrec.training.progress``) and writes TensorBoard event files to ``<run>/tensorboard``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError

from lmrec.config.base import SpecError, StrictModel, load_spec
from lmrec.config.train import TrainSpec
from lmrec.storage import StorageError, exists, filesystem, is_uri, join, normalize, read_text, write_text
from lmrec.training.fingerprint import RUN_FILE, RunIdentity, check_resume, run_identity, spec_data_files

log = logging.getLogger(__name__)

FAULT_ENV = "LMREC_FAULT_INJECTION"
DEFAULT_STORAGE = "~/ray_results"
# What a worker needs from the driver's environment (Ray workers inherit the raylet's, not the driver's).
PASSED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TORCH_EXTENSIONS_DIR", "LMREC_DATA_DIR",
              "LMREC_CACHE_DIR")
METRICS_FILE = "lmrec_metrics.json"


class FaultInjection(StrictModel):
    """Test-only: worker ``rank`` is SIGKILLed once in epoch ``epoch`` (``LMREC_FAULT_INJECTION`` holds this as JSON).

    ``point="step"`` kills it before batch ``batch`` of the epoch; ``point="checkpoint"`` kills it ``delay_s``
    after the epoch's checkpoint write began (0: once its files are written, before they are sealed; a longer
    delay lands inside the upload to storage, or later).
    """

    epoch: int = Field(..., ge=0, description="0-based epoch in which the worker dies.")
    rank: int = Field(..., ge=0, description="World rank of the worker that dies.")
    point: Literal["step", "checkpoint"] = Field("step", description="Mid-epoch training step or checkpoint write.")
    batch: int = Field(1, ge=0, description="point=step: the 0-based batch the worker dies before.")
    delay_s: float = Field(0.0, ge=0, le=60, description="point=checkpoint: seconds after the write began.")
    marker: str | None = Field(None, description="File written before dying; its presence disarms the fault.")


@dataclass
class TrainResult:
    """What a finished run leaves behind; paths are on the run's storage (local path or URI)."""

    name: str
    run_path: str
    metrics: dict  # last reported epoch: train losses, val metrics, best-so-far
    best_metrics: dict  # the epoch the artifact was exported from
    history: list[dict] = field(default_factory=list)  # one entry per trained epoch, across restarts
    checkpoint_path: str | None = None  # latest checkpoint (what a resume starts from)
    best_checkpoint_path: str | None = None
    artifact_path: str | None = None
    seconds: float = 0.0
    test_metrics: dict = field(default_factory=dict)  # the exported epoch on the test part (never used to select)
    fingerprint: str = ""  # the run identity's digest (lmrec.training.fingerprint)


def parse_overrides(items: list[str]) -> dict:
    """``["optim.lr_heads=1e-3", "scaling.num_workers=4"]`` -> dotted-key dict; values parsed as YAML scalars."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"override {item!r} is not KEY=VALUE (e.g. optim.epochs=3)")
        out[key.strip()] = yaml.safe_load(value)
    return out


_is_uri = is_uri  # lmrec.storage decides what is a URI; this name stays for existing callers


def resolve_deepspeed_config(spec: TrainSpec, spec_path: str | Path | None) -> dict | None:
    """The DeepSpeed JSON as a dict when the engine may be DeepSpeed; ``None`` for DDP.

    A relative path is looked up beside the spec file, then in the working directory (the job's working_dir).
    Missing or invalid JSON is a ``SpecError`` for engine "deepspeed"; for "auto" only when a GPU makes it needed.
    """
    scaling = spec.scaling
    if scaling.engine == "ddp":
        return None
    raw = Path(scaling.deepspeed_config).expanduser()
    if raw.is_absolute():
        candidates = [raw]
    else:
        candidates = ([Path(spec_path).parent / raw] if spec_path else []) + [Path.cwd() / raw]
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise SpecError(f"{path}: scaling.deepspeed_config is not valid JSON: {e}") from None
    if scaling.engine == "deepspeed":
        tried = ", ".join(str(p) for p in candidates)
        raise SpecError(f"scaling.deepspeed_config {scaling.deepspeed_config!r} not found (tried {tried})")
    return None


def fault_from_env(run_path: str) -> dict | None:
    """Parse ``LMREC_FAULT_INJECTION``; the default marker lives in the run folder (so a rerun stays disarmed)."""
    raw = os.environ.get(FAULT_ENV)
    if not raw:
        return None
    try:
        fault = FaultInjection.model_validate_json(raw)
    except ValidationError as e:
        raise SpecError(f"{FAULT_ENV}: {e}") from None
    if fault.marker is None:
        if _is_uri(run_path):
            raise SpecError(f"{FAULT_ENV}: give a 'marker' path when the storage is remote ({run_path})")
        fault.marker = str(Path(run_path) / ".fault_injected")
    return fault.model_dump()


def run_location(spec: TrainSpec, resume: bool) -> tuple[str, str]:
    """(storage_path, run name). Resuming reuses ``spec.name``; a fresh run of an existing name gets a timestamp.

    The storage is a local path (made absolute) or a URI (``lmrec.storage``); the run name must be one plain path
    segment, so neither can point the run's checkpoints and artifact outside the storage.
    """
    try:
        storage = normalize(spec.scaling.storage_path or DEFAULT_STORAGE)
        run_path = join(storage, spec.name)
    except StorageError as e:
        raise SpecError(f"scaling.storage_path / name: {e}") from None
    name = spec.name
    if not resume and exists(run_path):
        name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        log.info("resume disabled and run %r exists: starting a fresh run %r", spec.name, name)
    return storage, name


def _has_checkpoints(run_path: str) -> bool:
    import pyarrow.fs

    fs, path = filesystem(run_path)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return any(Path(i.path).name.startswith("epoch_") for i in infos)


def claim_run(spec: TrainSpec, data, run_path: str, name: str, from_spec: bool) -> RunIdentity:
    """The run's identity, checked against the one recorded in ``run_path`` (a resume of another identity raises
    ``IdentityMismatch``), then recorded there. ``from_spec``: ``data`` was prepared from ``spec.data``'s files."""
    identity = run_identity(spec.model_dump(mode="json"), spec_data_files(spec.data) if from_spec else (),
                            data.fingerprint)
    record = join(run_path, RUN_FILE)
    check_resume(read_text(record), _has_checkpoints(run_path), identity, run_path, name)
    write_text(record, identity.to_json())
    return identity


def connect_ray() -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (set inside Ray Jobs), else a running local one, else start one."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    try:
        ray.init(address="auto")
    except ConnectionError:
        ray.init()


def _worker_env() -> dict:
    """Worker env: this interpreter's bin/ first on PATH (DeepSpeed's JIT ops find the same ninja), offline HF."""
    bin_dir = str(Path(sys.executable).parent)
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@dataclass
class TrainRun:
    """A ``TorchTrainer`` built from a spec, with what is needed to turn its ``Result`` into a ``TrainResult``."""

    trainer: object  # ray.train.torch.TorchTrainer
    name: str
    run_path: str
    metric: str
    mode: str
    has_valid: bool
    started: float
    spec: TrainSpec
    identity: RunIdentity
    queue: object = None  # ray.util.queue.Queue fed by progress.EpochFeed (lmrec train's progress), or None
    mlflow_uri: str | None = None

    def _fit(self):
        if self.queue is None:
            return self.trainer.fit()
        from lmrec.training.fingerprint import spec_fields
        from lmrec.training.progress import RunTracker

        tracker = RunTracker(self.name, self.run_path, self.spec.optim.epochs,
                             spec_fields(self.spec.model_dump(mode="json")), experiment=self.spec.name,
                             mlflow_tracking_uri=self.mlflow_uri)
        ok = False
        try:
            result = tracker.follow(self.trainer.fit, self.queue)
            summary = result.return_value or {}
            tracker.finish(summary.get("best_metrics", {}), summary.get("test_metrics", {}))
            ok = True
            return result
        finally:
            tracker.close(ok)
            self.queue.shutdown()

    def fit(self) -> TrainResult:
        result = self._fit()
        summary = result.return_value or {}
        best_ckpt = result.get_best_checkpoint(self.metric, self.mode) if self.has_valid else None
        out = TrainResult(
            name=self.name,
            run_path=self.run_path,
            metrics=dict(result.metrics or {}),
            best_metrics=summary.get("best_metrics", {}),
            history=summary.get("history", []),
            checkpoint_path=result.checkpoint.path if result.checkpoint else None,
            best_checkpoint_path=best_ckpt.path if best_ckpt else None,
            artifact_path=summary.get("artifact_path"),
            seconds=time.perf_counter() - self.started,
            test_metrics=summary.get("test_metrics", {}),
            fingerprint=self.identity.digest,
        )
        write_text(join(self.run_path, METRICS_FILE), json.dumps(
            {"name": out.name, "fingerprint": out.fingerprint, "best": out.best_metrics, "test": out.test_metrics,
             "artifact": out.artifact_path, "history": out.history}, indent=1, default=float))
        log.info("run %r finished in %.0f s: %s; test %s; artifact %s", self.name, out.seconds,
                 " ".join(f"{k}={v:.4f}" for k, v in out.best_metrics.items() if k.startswith("val_")),
                 " ".join(f"{k}={v:.4f}" for k, v in out.test_metrics.items() if k.endswith("@10") or
                          k in ("test_rmse", "test_mae")), out.artifact_path)
        return out


def build_trainer(spec: TrainSpec, *, spec_path: str | Path | None = None, resume: bool = True,
                  callbacks: list | None = None, data=None, init_state: dict | None = None,
                  progress: bool = False) -> TrainRun:
    """Check and prepare everything, then build the ``TorchTrainer`` for ``spec`` (not started).

    ``lmrec train`` fits it directly; a Ray Tune trial (``lmrec.tuning``) builds the same trainer with a
    ``TuneReportCallback`` in ``callbacks`` so every epoch's report reaches the trial. An incremental
    fine-tune (``lmrec.pipelines.incremental``) passes its own ``data`` (a ``PreparedData``) and the starting
    weights ``init_state`` (a state dict) instead of the spec's split and fresh weights. ``progress``: the driver
    shows per-epoch progress and writes TensorBoard / MLflow records while ``fit`` runs (``lmrec train``).
    """
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from lmrec.training.data import prepare_data
    from lmrec.training.worker import train_loop_per_worker

    started = time.perf_counter()
    ds_config = resolve_deepspeed_config(spec, spec_path)
    storage, name = run_location(spec, resume)
    run_path = join(storage, name)
    fault = fault_from_env(run_path)
    if progress:
        from lmrec.training.progress import mlflow_uri

        tracking_uri = mlflow_uri()  # set but mlflow missing: an error now, not after training
    from_spec = data is None
    streamed = data is None and spec.data.streaming
    if streamed:  # Ray Data reads the files: the cluster first
        from lmrec.training.data import prepare_streamed

        connect_ray()
        data = prepare_streamed(spec)
    data = prepare_data(spec) if data is None else data
    identity = claim_run(spec, data, run_path, name, from_spec)
    log.info("prepared %s: %d users, %d items, %d train / %d valid interactions (fingerprint %s)", data.dataset,
             data.n_users, data.n_items, data.n_train(), 0 if data.valid is None else len(data.valid),
             data.fingerprint)
    connect_ray()
    datasets, shuffle_rows = training_datasets(data, spec.seed)
    queue = None
    if progress:
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from lmrec.training.progress import EpochFeed

        # on the driver's node: a worker node lost mid-run (and restarted by Train) must not take the feed with it
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        callbacks = [*(callbacks or []), EpochFeed(queue)]
    scaling = spec.scaling
    use_gpu = bool(ray.cluster_resources().get("GPU", 0)) if scaling.use_gpu == "auto" else scaling.use_gpu
    if scaling.engine == "auto" and use_gpu and ds_config is None:
        raise SpecError(f"engine 'auto' picks DeepSpeed on GPU but {scaling.deepspeed_config!r} was not found")
    has_valid = data.valid is not None and len(data.valid) > 0
    rows_per_worker = max(1, data.n_train() // scaling.num_workers)
    config = {
        "spec": spec.model_dump(mode="json"),
        "data_ref": ray.put(dataclasses.replace(data, train_dataset=None) if streamed else data),
        "deepspeed_config": ds_config,
        "artifact_path": f"{run_path}/artifact",
        "shuffle_buffer": min(rows_per_worker, shuffle_rows * spec.optim.batch_size),
        "fault": fault,
        "init_state_ref": ray.put(init_state) if init_state is not None else None,
        "run_fingerprint": identity.digest,
    }
    metric = spec.early_stopping.metric
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": scaling.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            # keeps the best epoch (for export) and the latest (for resume; Ray never deletes the latest)
            checkpoint_config=CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=metric if has_valid else None,
                checkpoint_score_order=spec.early_stopping.mode,
            ),
            worker_runtime_env={"env_vars": _worker_env()},
            callbacks=list(callbacks or []),
        ),
        datasets=datasets,
        # "seen" (streamed data only) is read whole, by the exporting rank: the artifact's seen-item table
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    log.info("training %r on %d worker(s) (gpu=%s, engine=%s), run folder %s", name, scaling.num_workers, use_gpu,
             scaling.engine, run_path)
    return TrainRun(trainer, name, run_path, metric, spec.early_stopping.mode, has_valid, started, spec, identity,
                    queue, tracking_uri if progress else None)


def training_datasets(data, seed: int) -> tuple[dict, int]:
    """The trainer's Ray Datasets and the local shuffle buffer in batches.

    In memory: the frame shuffled once here (source files are often sorted by user, and workers only shuffle
    within a local buffer). Streamed: the blocks in a seeded random order and a 64-batch buffer (the rows are
    never gathered for a global shuffle), plus the training pairs again as "seen" for the export.
    """
    import ray.data

    from lmrec.training.data import StreamedData

    if isinstance(data, StreamedData):
        return {"train": data.train_dataset.randomize_block_order(seed=seed), "seen": data.train_dataset}, 64
    frame = data.train_frame()
    frame = frame.iloc[np.random.default_rng(seed).permutation(len(frame))].reset_index(drop=True)
    return {"train": ray.data.from_pandas(frame)}, 4


def train(spec: TrainSpec, *, spec_path: str | Path | None = None, resume: bool = True, data=None,
          init_state: dict | None = None, progress: bool = False) -> TrainResult:
    """Run ``spec`` on Ray Train (see the module docstring) and return metrics, checkpoint and artifact paths."""
    return build_trainer(spec, spec_path=spec_path, resume=resume, data=data, init_state=init_state,
                         progress=progress).fit()


def main_train(spec_path: str, overrides: dict | None = None, resume: bool = True) -> int:
    """``lmrec train SPEC``: 0 on success, 2 for an invalid spec (nothing started), 1 when training failed.

    Logging is configured by the caller (the ``lmrec`` CLI); workers configure their own.
    """
    from lmrec.data.schema import DataError

    try:
        spec = load_spec(TrainSpec, spec_path, overrides)
        resolve_deepspeed_config(spec, spec_path)
    except SpecError as e:
        print(f"lmrec train: error: {e}", file=sys.stderr)
        return 2
    from ray.train import TrainingFailedError

    try:
        result = train(spec, spec_path=spec_path, resume=resume, progress=True)
    except (SpecError, DataError) as e:  # raised before the trainer starts (data, DeepSpeed JSON, fault env)
        print(f"lmrec train: error: {e}", file=sys.stderr)
        return 2
    except TrainingFailedError as e:
        print(f"lmrec train: error: training failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"name": result.name, "run_path": result.run_path, "artifact": result.artifact_path,
                      "checkpoint": result.checkpoint_path, "best": result.best_metrics, "test": result.test_metrics,
                      "fingerprint": result.fingerprint, "epochs": len(result.history),
                      "seconds": round(result.seconds, 1)}, default=float))
    return 0

