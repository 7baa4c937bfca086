"""Dotted overrides of a job spec (``load_spec``) never write into the caller's values."""

from __future__ import annotations

from pathlib import Path

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec

JOB = Path(__file__).resolve().parents[2] / "jobs" / "strategies" / "full.yaml"


def test_nested_override_leaves_the_callers_mapping_alone():
    lora = {"name": "lora", "rank": 8, "targets": ["query", "value"]}
    spec = load_spec(TrainSpec, JOB, {"strategy": lora, "strategy.targets": ["key"]})
    assert spec.strategy.targets == ["key"]
    assert lora["targets"] == ["query", "value"]  # reusable for the next spec
    again = load_spec(TrainSpec, JOB, {"strategy": lora})
    assert again.strategy.targets == ["query", "value"]
