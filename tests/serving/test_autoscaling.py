"""The ingress's CPU-use autoscaling: the clock it reports and the policy Serve calls with it."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lmrec.serving.autoscaling import METRIC, CpuClock, CpuUtilizationPolicy
from lmrec.serving.cli import load_serve_config

REPO = Path(__file__).resolve().parents[2]


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_cpu_clock_tells_busy_from_idle():
    clock = CpuClock()
    time.sleep(0.3)
    idle = clock.fraction()
    spin(0.3)
    busy = clock.fraction()
    assert idle < 0.3 and busy > max(0.4, idle + 0.3), (idle, busy)


def ctx(values: list[float], current: int, target: int | None = None):
    return SimpleNamespace(aggregated_metrics={METRIC: {f"r{i}": v for i, v in enumerate(values)}},
                           current_num_replicas=current, target_num_replicas=target or current)


@pytest.mark.parametrize("values, want", [
    ([0.05], 1),              # idle: never below one replica
    ([0.5], 1),               # within the target
    ([0.95], 2),              # one saturated core: a second replica
    ([0.9, 0.9], 3),
    ([0.1, 0.2, 0.1], 1),     # load gone: back to one
])
def test_policy_asks_for_the_replicas_the_cpu_use_needs(values, want):
    assert CpuUtilizationPolicy(target_cpu=0.6)(ctx(values, len(values)))[0] == want


def test_policy_waits_until_every_replica_reported():
    assert CpuUtilizationPolicy(0.6)(ctx([0.1], current=2, target=2))[0] == 2
    assert CpuUtilizationPolicy(0.6)(SimpleNamespace(aggregated_metrics=None, current_num_replicas=1,
                                                     target_num_replicas=1))[0] == 1


def test_bad_target_is_refused():
    with pytest.raises(ValueError, match="target_cpu"):
        CpuUtilizationPolicy(target_cpu=1.5)


def test_the_committed_ingress_uses_it():
    config = load_serve_config(yaml.safe_load((REPO / "serve" / "recommender.yaml").read_text()))
    ingress = next(d for d in config.applications[0].deployments if d.name == "EnsembleIngress")
    policy = ingress.autoscaling_config["policy"]
    assert policy["policy_function"] == "lmrec.serving.autoscaling:CpuUtilizationPolicy"
    assert CpuUtilizationPolicy(**policy["policy_kwargs"]).target_cpu == pytest.approx(0.6)
