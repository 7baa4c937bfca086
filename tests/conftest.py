"""Shared fixtures: the real datasets (from $LMREC_DATA_DIR, else ../shared/data beside the repo) and tiny real
serving artifacts (random 2-layer BERT, ML-100K slice), built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START_DIR = Path.cwd()


def _back_to_start_dir() -> None:
    try:
        here = Path.cwd()
    except FileNotFoundError:  # the folder we were in was deleted
        here = None
    if here != START_DIR:
        os.chdir(START_DIR)


@pytest.fixture(autouse=True)
def _every_test_starts_in_the_start_dir():
    """Every test runs from the folder pytest started in. Code a test drives (Ray's run-folder handling among it)
    can leave the process in a temporary folder that a teardown then deletes; without this, every later test
    that resolves a relative path or starts a subprocess fails with FileNotFoundError."""
    _back_to_start_dir()
    yield
    _back_to_start_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding ml-100k/, ml-latest-small/, ... ; tests that need it skip when it is absent."""
    path = Path(os.environ.get("LMREC_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (path / "ml-100k").is_dir():
        pytest.skip(f"real datasets not found in {path} (set LMREC_DATA_DIR)")
    return path


@pytest.fixture(scope="module")
def ray_local(data_dir: Path):
    """One local 2-CPU Ray instance for the module, in its own short temp dir (Ray's socket paths are
    length-limited; no other cluster's ``auto`` finds it), started patiently (``benchmarks/reliability.start_ray``)."""
    import shutil
    import sys
    import tempfile

    ray = pytest.importorskip("ray")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from reliability import start_ray

    temp_dir = tempfile.mkdtemp(prefix="lmrec-rt-", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        # token auth would need a token file shared with every CLI call; this instance is private to the test
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("LMREC_DATA_DIR", str(data_dir))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        start_ray(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one torch thread avoids thread hand-off costs that dominate on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ml100k(data_dir: Path):
    """MovieLens 100K, loaded once per test session (treat it as read-only)."""
    from lmrec.data import load_dataset

    return load_dataset("ml-100k", data_dir=data_dir)


TINY_SPEC = {
    "name": "serve-tiny",
    "seed": 0,
    "data": {"dataset": "ml-100k", "split": {"kind": "per_user_random", "test_frac": 0.2, "valid_frac": 0.1, "seed": 0},
             "max_users": 60, "max_items": 120},
    "model": {"encoder_init": "random-tiny", "dim": 16, "max_length": 16, "max_history": 32},
    "optim": {"epochs": 1, "batch_size": 256, "lr_heads": 0.01, "lr_encoder": 0.0, "items_encoded_per_step": 0,
              "encode_batch_size": 128},
}


@pytest.fixture(scope="session")
def serving_artifacts(data_dir: Path, tmp_path_factory) -> dict:
    """Two two-tower artifact versions (seeds 0 and 1), an MF, an EASE and an item-kNN artifact, all on the same
    split."""
    from lmrec.config.train import TrainSpec
    from lmrec.artifacts.item_item import train_item_item_artifact
    from lmrec.artifacts.mf import train_mf_artifact
    from lmrec.training.data import prepare_data
    from lmrec.training.local import train_local

    os.environ.setdefault("LMREC_DATA_DIR", str(data_dir))  # prepare_data finds datasets through it
    root = tmp_path_factory.mktemp("artifacts")
    spec = TrainSpec.model_validate(TINY_SPEC)
    data = prepare_data(spec)
    train_local(spec, data, device="cpu", artifact_dir=root / "two-tower-v1")
    train_local(spec.model_copy(update={"seed": 1}), data, device="cpu", artifact_dir=root / "two-tower-v2")
    train_mf_artifact(data, root / "mf", factors=8, epochs=10)
    train_item_item_artifact(data, root / "ease", "ease", l2=50.0)
    train_item_item_artifact(data, root / "item_knn", "item_knn", k=20)
    return {"v1": root / "two-tower-v1", "v2": root / "two-tower-v2", "mf": root / "mf", "ease": root / "ease",
            "item_knn": root / "item_knn", "data": data}

