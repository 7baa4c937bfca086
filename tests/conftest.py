"""Shared fixtures: the real datasets (from $LMREC_DATA_DIR, else ../shared/data beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding ml-100k/, ml-latest-small/, ... ; tests that need it skip when it is absent."""
    path = Path(os.environ.get("LMREC_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (path / "ml-100k").is_dir():
        pytest.skip(f"real datasets not found in {path} (set LMREC_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def ml100k(data_dir: Path):
    """MovieLens 100K, loaded once per test session (treat it as read-only)."""
    from lmrec.data import load_dataset

    return load_dataset("ml-100k", data_dir=data_dir)
