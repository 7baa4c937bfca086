"""A Tune trial reads a spec's own data files from where ``lmrec tune`` ran, not from the trial's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray.tune")

from lmrec.config.base import load_spec  # noqa: E402
from lmrec.config.train import TrainSpec  # noqa: E402
from lmrec.tuning.trial import _anchor_source_paths  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[3] / "jobs" / "examples" / "own-data.yaml"


def test_relative_source_paths_are_anchored_at_the_driver_directory(tmp_path):
    spec = load_spec(TrainSpec, EXAMPLE, {"data.source.items.path": "/abs/items.parquet"})
    _anchor_source_paths(spec, str(tmp_path))
    assert spec.data.source.interactions.path == str(tmp_path / "data" / "interactions.csv")
    assert spec.data.source.items.path == "/abs/items.parquet"  # absolute: kept
    dumped = TrainSpec.model_validate(spec.model_dump(mode="json"))  # what the trial's workers receive
    assert dumped.data.source.interactions.path == str(tmp_path / "data" / "interactions.csv")


def test_a_named_dataset_is_left_alone(tmp_path):
    spec = load_spec(TrainSpec, EXAMPLE.parent.parent / "ml100k-ranking.yaml")
    _anchor_source_paths(spec, str(tmp_path))
    assert spec.data.source is None and spec.data.dataset == "ml-100k"
