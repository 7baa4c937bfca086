"""Every Serve config in serve/ validates (Serve's schema + lmrec's typed args) and follows the house rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmrec.serving.cli import load_serve_config, main_serve, with_artifacts

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "serve").glob("*.yaml"))


def test_there_is_a_config():
    assert CONFIGS, "serve/ holds no Serve config"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_and_binds_loopback(path: Path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and f"lmrec serve serve/{path.name}" in first
    config = load_serve_config(path)
    assert config.http_options.host == "127.0.0.1"
    for app in config.applications:
        assert app.import_path.startswith("lmrec.serving.")
        for d in app.deployments:
            assert d.name == "ItemCatalog" or d.autoscaling_config, f"{d.name} has no autoscaling_config"


def test_hot_swap_edit_touches_only_user_config():
    raw = yaml.safe_load(CONFIGS[0].read_text())
    swapped = with_artifacts(raw, two_tower_artifact="/models/tt-v2", mf_artifact="/models/mf-v2")
    deps = {d["name"]: d for d in swapped["applications"][0]["deployments"]}
    assert deps["TwoTowerScorer"]["user_config"] == {"artifact_dir": "/models/tt-v2"}
    assert deps["TextEncoderService"]["user_config"] == {"artifact_dir": "/models/tt-v2"}
    assert deps["MFScorer"]["user_config"] == {"artifact_dir": "/models/mf-v2"}
    assert swapped["applications"][0]["args"] == raw["applications"][0]["args"]  # args unchanged: no restart
    assert "user_config" not in raw["applications"][0]["deployments"][0]  # the input is not modified


def test_bad_args_are_caught_before_ray_starts(tmp_path: Path):
    raw = yaml.safe_load(CONFIGS[0].read_text())
    raw["applications"][0]["args"]["weights"] = {"two_tower": 1.0, "mf": 0.5, "popularity": 1.0}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main_serve(str(bad)) == 2


def test_lmrec_serve_starts_its_own_ray_only_when_none_is_named_or_running(monkeypatch, tmp_path: Path):
    from lmrec.serving.cli import starts_own_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no `ray start` cluster recorded there
    import ray._private.services as services

    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir=None: None)
    assert starts_own_ray(None) and starts_own_ray("local")
    assert not starts_own_ray("10.0.0.5:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # a shell pointed at a cluster joins it
    assert not starts_own_ray(None)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir=None: "127.0.0.1:6379")
    assert not starts_own_ray(None)  # a `ray start --head` on this machine is joined, not shadowed


def test_local_serving_env_is_the_high_throughput_mode_unless_told(monkeypatch):
    from lmrec.serving.cli import local_serving_env

    for key in ("RAY_worker_niceness", "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED"):
        monkeypatch.delenv(key, raising=False)
    env, how = local_serving_env()
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_worker_niceness"] == "0", how
    state = Path(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    assert state.is_dir() and str(state).startswith("/tmp/hap")  # short: HAProxy's socket paths are bounded
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != env["RAY_SERVE_HAPROXY_METRICS_PORT"]
    state.rmdir()
    env, how = local_serving_env(python_proxy=True)
    assert env == {"RAY_worker_niceness": "0"} and "Python proxy" in how
    monkeypatch.setenv("RAY_worker_niceness", "5")  # what the user set wins
    assert "RAY_worker_niceness" not in local_serving_env(python_proxy=True)[0]
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/nonexistent/haproxy")
    import ray.serve._private.haproxy as haproxy

    monkeypatch.setattr(haproxy, "RAY_SERVE_HAPROXY_BINARY_PATH", "/nonexistent/haproxy")
    env, how = local_serving_env()  # no usable binary: the Python proxy, and the reason is said
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in env and "unavailable" in how and "/nonexistent/haproxy" in how
