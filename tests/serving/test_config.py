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
