"""``cluster.yaml`` passes the checks ``ray up`` runs before it contacts a cloud: Ray's own config preparation
(defaults of the provider merged in, per-type worker bounds) and its JSON-schema validation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def prepared(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    out = prepare_config(copy.deepcopy(config))
    validate_config(out)
    return out


def test_first_line_is_the_command_that_runs_it():
    assert (ROOT / "cluster.yaml").read_text().startswith("# ray up cluster.yaml")


def test_cluster_yaml_passes_ray_validation(raw):
    cfg = prepared(raw)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no training or replicas on the head
    gpu = [t for name, t in types.items() if t["resources"].get("GPU", 0) > 0]
    assert len(gpu) == 1 and gpu[0]["min_workers"] < gpu[0]["max_workers"]  # autoscaling GPU group
    setup = " ".join(cfg["setup_commands"])
    assert "torch" in setup and "-e ~/lmrec" in setup
    assert cfg["file_mounts"]["~/lmrec"] == "."
    assert all("RAY_AUTH_MODE=token" in " ".join(cfg[k]) for k in ("head_start_ray_commands",
                                                                   "worker_start_ray_commands"))
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in " ".join(cfg["head_start_ray_commands"])


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["available_node_types"]["gpu-worker"].update(max_worker=8), "max_worker"),
    (lambda c: c["available_node_types"]["gpu-worker"].pop("resources"), "resources"),
    (lambda c: c.update(head_node_type="no-such-type"), "head_node_type"),
    (lambda c: c["available_node_types"]["cpu-worker"].update(min_workers=20), "max_workers"),
], ids=["typo", "missing-resources", "unknown-head-type", "min-over-max"])
def test_ray_validation_rejects_broken_variants(raw, mutate, message):
    """The validation is real: the same file with one mistake fails in Ray's own checks."""
    import jsonschema

    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)) as e:
        prepared(broken)
    assert message in str(e.value)
