"""Serving faults on the real Serve app (serve/recommender.yaml, two replicas of the ingress and the two-tower
scorer): a replica actor killed under steady load, then schema-driven fuzzing of the live endpoint.

The fast subset of ``benchmarks/reliability.py`` (longer load, both deployments, >= 1,000 fuzzed requests).
"""

from __future__ import annotations

import random
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(serving_artifacts):
    from ray import serve

    import ray
    from lmrec.serving.cli import deploy_config, load_serve_config
    from reliability import start_ray
    from serve_load import serve_config

    port = _free_port()
    args = {"two_tower_artifact": str(serving_artifacts["v1"]), "mf_artifact": str(serving_artifacts["mf"])}
    temp_dir = tempfile.mkdtemp(prefix="lmrec-rs-", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        start_ray(num_cpus=2, include_dashboard=False, namespace="serve", log_to_driver=False, _temp_dir=temp_dir)
        try:
            deploy_config(load_serve_config(serve_config(port, args, replicas=2, health_check_period_s=2)))
            yield {"url": f"http://127.0.0.1:{port}", **serving_artifacts}
        finally:
            serve.shutdown()
            ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_replica_killed_under_load_no_failed_request(service):
    from reliability import kill_replica_under_load, replica_actors, running_replicas

    data = service["data"]
    users = [int(u) for u in data.user_ids]
    rng = random.Random(0)
    bodies = iter(lambda: {"user_id": rng.choice(users), "k": 10}, None)
    out = kill_replica_under_load(service["url"] + "/recommend", bodies, "TwoTowerScorer", rate=8, seconds=20,
                                  kill_at_s=4)
    assert out["killed_at_s"] is not None and out["requests"] > 100
    assert out["failed_requests"] == 0, out  # the client's retries absorb what the dead replica dropped
    assert out["replacement_running_after_s"] is not None and out["replacement_running_after_s"] < 60, out
    assert out["victim"] not in replica_actors()["TwoTowerScorer"]
    # a replica starved of CPU on a small machine can fail a health check and be replaced once more: the
    # deployment must come back to two running replicas, not hold two at one sampled instant
    deadline = time.monotonic() + 60
    while running_replicas()["TwoTowerScorer"] != 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert running_replicas()["TwoTowerScorer"] == 2


def test_fuzz_live_endpoint_no_5xx_no_crashed_replica(service):
    import schemathesis
    from reliability import fuzz_schema, replica_actors

    before = replica_actors()
    result = fuzz_schema(schemathesis.openapi.from_url(service["url"] + "/openapi.json"), examples_per_operation=15)
    assert result["requests"] >= 5 * 15 + 3
    assert result["server_errors"] == 0, result["server_error_examples"]
    assert replica_actors() == before  # no replica died or was replaced
