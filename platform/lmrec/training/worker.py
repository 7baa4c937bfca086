"""The per-worker loop that Ray Train runs: resume -> epochs (train, validate, checkpoint, report) -> export.

Everything arrives through ``config`` (the spec as a dict, the prepared data as an object-store reference, the
DeepSpeed JSON as a dict, the artifact destination); the loop imports only the installed ``lmrec`` package, never
the driver's ``__main__``, so it runs the same under ``lmrec train``, Ray Jobs and Ray Tune.

Every rank reports once per epoch with the same metrics (validation is rank-identical), so the early-stopping
decision and the number of ``ray.train.report`` calls agree across ranks. Each rank saves into its own temporary
directory and Ray merges them into one checkpoint folder: that is how DeepSpeed's per-rank ZeRO shards end up
side by side, and how every rank of a restarted group finds them again. Each rank seals its part with a
manifest of sha256s, written after its files; a resume loads only a checkpoint that verifies
(``lmrec.training.checkpoint_manifest``) and falls back to the newest older one that does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConsistencyMode

from lmrec.config.train import TrainSpec
from lmrec.training.checkpoint_manifest import CheckpointIntegrityError, verify_checkpoint, write_manifest
from lmrec.training.data import StreamedData
from lmrec.training.fingerprint import CHECKPOINT_FILE, IdentityMismatch
from lmrec.training.recipe import TwoTowerRecipe, run_epochs

log = logging.getLogger(__name__)

HISTORY_FILE = "lmrec_history.json"


def _setup_logging() -> None:
    """Ray forwards worker stdout/stderr to the driver; make ``lmrec`` INFO lines (progress, metrics) reach it."""
    root = logging.getLogger("lmrec")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def _materialise_spec(config: dict, workdir: str) -> TrainSpec:
    """The spec with the DeepSpeed JSON written to a local file (paths on the driver's node mean nothing here)."""
    spec = TrainSpec.model_validate(config["spec"])
    if config.get("deepspeed_config") is not None:
        path = Path(workdir) / "deepspeed.json"
        path.write_text(json.dumps(config["deepspeed_config"]), encoding="utf-8")
        spec.scaling.deepspeed_config = str(path)
    return spec


def _die(fault: dict, rank: int, epoch: int, where: str) -> None:
    """Test-only fault injection: record the kill in the marker file (which disarms it), then SIGKILL this worker."""
    Path(fault["marker"]).write_text(f"killed rank {rank} in epoch {epoch} {where} at {time.time():.3f}\n")
    log.warning("fault injection: SIGKILL rank %d in epoch %d %s", rank, epoch, where)
    os.kill(os.getpid(), signal.SIGKILL)


def _armed(fault: dict | None, point: str, epoch: int, rank: int) -> bool:
    return bool(fault and fault["point"] == point and fault["epoch"] == epoch and fault["rank"] == rank
                and not os.path.exists(fault["marker"]))


def _with_fault(batches, fault: dict | None, epoch: int, rank: int):
    """Test-only: SIGKILL this worker before batch ``fault["batch"]`` of the epoch (once per marker file).

    Before dying it waits until Ray has committed the previous epoch's checkpoint: the controller registers
    reports on its periodic poll, so a crash within that window would (correctly) resume one epoch earlier and
    make a test's expectation timing-dependent.
    """
    for i, batch in enumerate(batches):
        if _armed(fault, "step", epoch, rank) and i == fault["batch"]:
            ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
            _die(fault, rank, epoch, f"before batch {i}")
        yield batch


def _arm_checkpoint_fault(fault: dict | None, epoch: int, rank: int) -> threading.Timer | None:
    """Test-only: SIGKILL this worker ``delay_s`` after its checkpoint write begins (``delay_s=0``: see caller)."""
    if not _armed(fault, "checkpoint", epoch, rank) or fault["delay_s"] == 0:
        return None
    timer = threading.Timer(fault["delay_s"], _die, (fault, rank, epoch, f"{fault['delay_s']:.3f} s into the "
                                                                         "checkpoint write"))
    timer.daemon = True
    timer.start()
    return timer


def _save_sealed(recipe: TwoTowerRecipe, directory: str, history: list[dict], fault: dict | None, epoch: int,
                 rank: int, world_size: int, run_fingerprint: str | None = None) -> None:
    """Every rank's checkpoint files, then (last) its manifest of their sha256s (``checkpoint_manifest``)."""
    recipe.save_checkpoint(directory)
    if rank == 0:
        (Path(directory) / HISTORY_FILE).write_text(json.dumps(history), encoding="utf-8")
        if run_fingerprint:
            (Path(directory) / CHECKPOINT_FILE).write_text(json.dumps({"fingerprint": run_fingerprint}),
                                                           encoding="utf-8")
    if _armed(fault, "checkpoint", epoch, rank) and fault["delay_s"] == 0:
        # as in _with_fault: the previous epoch's checkpoint is committed first, so the resume point is certain
        ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
        _die(fault, rank, epoch, "after writing its checkpoint files, before sealing them")
    # DDP: rank 0 holds the whole state; DeepSpeed: every rank holds its ZeRO shard
    writers = list(range(world_size)) if recipe.engine_name == "deepspeed" else [0]
    write_manifest(directory, rank, writers)


def _check_identity(directory: str, checkpoint_path: str, run_fingerprint: str | None) -> None:
    """Refuse a checkpoint of another run identity (``lmrec.training.fingerprint``); the driver checked the run
    folder's record already, so this only fires when a checkpoint was copied or the record altered."""
    if not run_fingerprint:
        return
    path = Path(directory) / CHECKPOINT_FILE
    found = json.loads(path.read_text(encoding="utf-8")).get("fingerprint") if path.exists() else None
    if found != run_fingerprint:
        raise IdentityMismatch(f"checkpoint {checkpoint_path} was trained on another spec or other data (run "
                               f"fingerprint {found} != {run_fingerprint}): start a fresh run (--no-resume)")


def _resume(recipe: TwoTowerRecipe, rank: int, run_fingerprint: str | None = None) -> tuple[int, list[dict]]:
    """Load the newest checkpoint that verifies: Ray's latest first, then older reported ones; else start fresh.

    A checkpoint whose manifest is missing or whose files do not hash to it is skipped with a warning: it is
    never loaded. Every rank verifies the same shared folders, so all ranks pick the same checkpoint. One of
    another run identity is an error, never skipped for an older one.
    """
    latest = ray.train.get_checkpoint()
    if latest is None:
        return 0, []
    older = sorted(ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED),
                   key=lambda r: -int(r.metrics.get("epoch", -1)))
    seen = set()
    for checkpoint in [latest, *(r.checkpoint for r in older)]:
        if checkpoint.path in seen:
            continue
        seen.add(checkpoint.path)
        with checkpoint.as_directory() as directory:
            try:
                verify_checkpoint(directory)
            except CheckpointIntegrityError as e:
                log.warning("rank %d skips checkpoint %s: %s", rank, checkpoint.path, e)
                continue
            _check_identity(directory, checkpoint.path, run_fingerprint)
            start_epoch = recipe.load_checkpoint(directory)
            history_path = Path(directory) / HISTORY_FILE
            history = json.loads(history_path.read_text(encoding="utf-8")) if history_path.exists() else []
        log.info("rank %d resumed from verified checkpoint %s at epoch %d", rank, checkpoint.path, start_epoch)
        return start_epoch, history
    log.warning("rank %d found no intact checkpoint: starting from scratch", rank)
    return 0, []


def _registered_names() -> set[str]:
    """Folder names of the checkpoints Ray has registered for this run (a resumed run sees its earlier ones)."""
    reported = ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
    return {Path(r.checkpoint.path).name for r in reported}


def _dir_name(epoch: int, taken: set[str]) -> str:
    """``epoch_NNNN``; when a resume skipped a damaged checkpoint of that epoch, which Ray still registers,
    ``epoch_NNNN-2`` (and so on): reusing the folder would let Ray's pruning of the damaged one delete the new one."""
    name, n = f"epoch_{epoch:04d}", 1
    while name in taken:
        n += 1
        name = f"epoch_{epoch:04d}-{n}"
    return name


def _export(recipe: TwoTowerRecipe, destination: str, metrics: dict, rank: int) -> str | None:
    """Write the serving artifact to ``destination`` (a local path or a URI) from rank 0.

    Under DeepSpeed every rank enters: ZeRO-3 gathers the partitioned weights collectively.
    """
    import pyarrow.fs

    if rank != 0 and recipe.engine_name != "deepspeed":
        return None
    with tempfile.TemporaryDirectory() as tmp:
        if "://" not in destination:
            path = recipe.export_artifact(destination if rank == 0 else tmp, metrics)
            return path if rank == 0 else None
        local = recipe.export_artifact(os.path.join(tmp, "artifact"), metrics)
        if rank != 0:
            return None
        fs, fs_path = pyarrow.fs.FileSystem.from_uri(destination)
        pyarrow.fs.copy_files(local, fs_path, destination_filesystem=fs)
        return destination


def _restore_best(recipe: TwoTowerRecipe, best_epoch: int) -> dict | None:
    """Load the best epoch's checkpoint (kept by ``CheckpointConfig``'s score attribute) before exporting."""
    for reported in ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED):
        if int(reported.metrics.get("epoch", -1)) == best_epoch:
            with reported.checkpoint.as_directory() as directory:
                recipe.load_checkpoint(directory)
            return dict(reported.metrics)
    return None


def _meta_learning_loop(spec: TrainSpec, data, destination: str, rank: int) -> dict | None:
    """``strategy: meta_learning``: its own single-process loop on rank 0 (``lmrec.training.meta_job``); every
    rank reports the same metrics once, so the ranks' ``ray.train.report`` calls line up."""
    import pyarrow.fs
    import torch.distributed as dist

    from lmrec.training.engines import distributed_world
    from lmrec.training.meta_job import run_meta_job

    summary = None
    if rank == 0:
        with tempfile.TemporaryDirectory(prefix="lmrec-meta-") as tmp:
            local = destination if "://" not in destination else os.path.join(tmp, "artifact")
            res = run_meta_job(spec, data, ray.train.torch.get_device(), local)
            if local != destination:
                fs, fs_path = pyarrow.fs.FileSystem.from_uri(destination)
                pyarrow.fs.copy_files(local, fs_path, destination_filesystem=fs)
        last = {**res.history[-1], **res.metrics} if res.history else dict(res.metrics)
        summary = {"artifact_path": destination, "history": res.history, "best_epoch": len(res.history) - 1,
                   "best_metrics": last, "start_epoch": 0}
    initialised, world, _ = distributed_world()
    if initialised and world > 1:
        box = [summary]
        dist.broadcast_object_list(box, src=0)
        summary = box[0]
    ray.train.report(summary["best_metrics"])
    return summary if rank == 0 else None


def train_loop_per_worker(config: dict) -> dict | None:
    """Ray Train entry point; see the module docstring. Rank 0 returns the run summary (``Result.return_value``)."""
    _setup_logging()
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    data = ray.get(config["data_ref"])
    if isinstance(data, StreamedData):  # the training pairs, read whole by the exporting rank (seen_pairs)
        data.train_dataset = ray.train.get_dataset_shard("seen")
    with tempfile.TemporaryDirectory(prefix="lmrec-worker-") as workdir:  # DeepSpeed reads its JSON at init
        spec = _materialise_spec(config, workdir)
        if spec.strategy.name == "meta_learning":
            return _meta_learning_loop(spec, data, config["artifact_path"], rank)
        init_ref = config.get("init_state_ref")  # an incremental fine-tune's starting weights
        recipe = TwoTowerRecipe(spec, data, device=ray.train.torch.get_device(), world_size=world_size, rank=rank,
                                init_state=ray.get(init_ref) if init_ref is not None else None)

    start_epoch, history = _resume(recipe, rank, config.get("run_fingerprint"))
    taken = _registered_names()

    shard = ray.train.get_dataset_shard("train")
    epochs, fault = spec.optim.epochs, config.get("fault")
    metric = spec.early_stopping.metric
    last: dict = history[-1] if history else {}

    def shard_batches(epoch: int):
        return shard.iter_batches(
            batch_size=recipe.batch_size, batch_format="numpy", local_shuffle_buffer_size=config["shuffle_buffer"],
            local_shuffle_seed=spec.seed * 100_003 + epoch * 101 + rank,
        )

    def after_epoch(epoch: int, train_metrics: dict, val_metrics: dict) -> None:
        nonlocal last
        last = {**train_metrics, **val_metrics, "epoch": epoch, "resumed_at_epoch": start_epoch}
        history.append(last)
        if rank == 0:
            shown = " ".join(f"{k}={v:.4f}" for k, v in val_metrics.items() if k.startswith("val_"))
            log.info("epoch %d/%d loss=%.4f %s best %s=%.4f (epoch %d)%s", epoch + 1, epochs,
                     train_metrics.get("loss", math.nan), shown, metric, val_metrics.get("best", math.nan),
                     int(val_metrics.get("best_epoch", -1)) + 1, " [resumed run]" if start_epoch else "")
        with tempfile.TemporaryDirectory(prefix="lmrec-ckpt-") as tmp:
            _arm_checkpoint_fault(fault, epoch, rank)
            _save_sealed(recipe, tmp, history, fault, epoch, rank, world_size, config.get("run_fingerprint"))
            ray.train.report(
                last,
                checkpoint=Checkpoint.from_directory(tmp) if os.listdir(tmp) else None,
                checkpoint_dir_name=_dir_name(epoch, taken),
            )

    # a curriculum replaces the shard with its own sampler; the fault (tests only) wraps what is trained on
    run_epochs(recipe, start_epoch, shard_batches, after_epoch,
               wrap=lambda epoch, batches: _with_fault(batches, fault, epoch, rank))

    export_metrics = last
    best_epoch = recipe.best_epoch
    if history and best_epoch >= 0 and best_epoch != int(history[-1]["epoch"]):
        restored = _restore_best(recipe, best_epoch)
        if restored is not None:
            export_metrics = restored
            log.info("rank %d restored the best epoch (%d) before export", rank, best_epoch + 1)
    # the test part, once, on the selected weights (never reported to Ray: nothing may select on it)
    test = recipe.test() if history else {}
    if rank == 0 and test:
        log.info("test (epoch %d): %s", int(export_metrics.get("epoch", -1)) + 1,
                 " ".join(f"{k}={v:.4f}" for k, v in test.items() if not k.endswith(("_n", "_users"))))
    artifact = _export(recipe, config["artifact_path"], {**export_metrics, **test}, rank)
    if rank != 0:
        return None
    log.info("artifact written to %s", artifact)
    return {"artifact_path": artifact, "history": history, "best_epoch": best_epoch,
            "best_metrics": export_metrics, "test_metrics": test, "start_epoch": start_epoch}
