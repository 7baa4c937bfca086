"""Serve args from an ensemble artifact (``lmrec ensemble``): members and weights resolved and used, no Ray."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from pydantic import ValidationError

from lmrec.serving.app import EnsembleWeights, ServeAppArgs, build_bare_app, resolve_ensemble
from lmrec.strategies.fusion import fuse_scores
from lmrec.strategies.ensemble import FusedEnsemble
from lmrec.artifacts.ensemble import member_manifest_sha256, save_ensemble_artifact

WEIGHTS = {"two_tower": 0.25, "mf": 0.75}  # not Serve's defaults (0.7 / 0.3): the answers show which were used


@pytest.fixture(scope="module")
def ensemble_dir(serving_artifacts, tmp_path_factory):
    members = {"two_tower": str(serving_artifacts["v1"].resolve()), "mf": str(serving_artifacts["mf"].resolve())}
    ens = FusedEnsemble(dict.fromkeys(members), weights=WEIGHTS, rating_weights={"two_tower": 0.4, "mf": 0.6})
    return save_ensemble_artifact(tmp_path_factory.mktemp("ens") / "ensemble", ens, members=members,
                                  member_sha256={m: member_manifest_sha256(p) for m, p in members.items()},
                                  name="tiny-ensemble")


def test_args_take_members_and_weights_from_the_artifact(ensemble_dir, serving_artifacts):
    args = ServeAppArgs(ensemble_artifact=str(ensemble_dir), max_body_bytes=4096)
    resolved = resolve_ensemble(args)
    assert resolved.two_tower_artifact == str(serving_artifacts["v1"].resolve())
    assert resolved.mf_artifact == str(serving_artifacts["mf"].resolve())
    assert resolved.weights == EnsembleWeights(**WEIGHTS)  # the ranking weights
    assert resolved.served_rating_weights() == {"two_tower": 0.4, "mf": 0.6}  # /predict's: the fitted ones
    assert resolved.ensemble_artifact is None and resolved.max_body_bytes == 4096
    plain = ServeAppArgs(two_tower_artifact="tt")
    assert resolve_ensemble(plain) is plain


@pytest.mark.parametrize("extra, clash", [
    ({"weights": {"two_tower": 1.0, "mf": 0.0}}, "weights"),
    ({"two_tower_artifact": "tt", "mf_artifact": "mf"}, "mf_artifact, two_tower_artifact"),
    ({"rating_weights": {"two_tower": 1.0}}, "rating_weights"),
])
def test_explicit_members_or_weights_conflict_with_an_ensemble(extra, clash):
    with pytest.raises(ValidationError, match=f"ensemble_artifact names the members and their weights: remove {clash}"):
        ServeAppArgs(ensemble_artifact="ens", **extra)
    with pytest.raises(ValidationError, match=r"two_tower_artifact is required \(or set ensemble_artifact\)"):
        ServeAppArgs()


def test_bare_app_serves_recommend_with_the_fitted_weights(ensemble_dir, serving_artifacts):
    """/recommend on the in-process app fuses the members' scores with the artifact's weights (loopback HTTP:
    the same routes as the Serve ingress)."""
    import requests
    import uvicorn

    app = build_bare_app({"ensemble_artifact": str(ensemble_dir)})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{server.config.port}"
        assert requests.get(url + "/version", timeout=30).json()["weights"] == WEIGHTS
        data = serving_artifacts["data"]
        user, items = int(data.user_ids[0]), [int(i) for i in data.item_ids[:12]]
        body = {"user_id": user, "k": len(items), "candidate_item_ids": items, "exclude_seen": False}
        r = requests.post(url + "/recommend", json=body, timeout=30)
        assert r.status_code == 200, r.text
        got = r.json()["items"]
    finally:
        server.should_exit = True
        thread.join(10)
    assert sorted(i["item_id"] for i in got) == sorted(items)
    members = {m: np.array([i["member_scores"][m] for i in got]) for m in ("two_tower", "mf")}
    mask = np.ones(len(got), dtype=bool)
    np.testing.assert_allclose([i["score"] for i in got], fuse_scores(members, WEIGHTS, mask), rtol=1e-6, atol=1e-9)
    assert not np.allclose([i["score"] for i in got], fuse_scores(members, {"two_tower": 0.7, "mf": 0.3}, mask))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_config_resolves_a_relative_ensemble_artifact_and_reports_conflicts(tmp_path):
    from lmrec.config.base import SpecError
    from lmrec.serving.cli import load_serve_config

    app = {"name": "recommender", "route_prefix": "/", "import_path": "lmrec.serving.app:build_app",
           "args": {"ensemble_artifact": "artifacts/ml100k-ensemble"}}
    config = load_serve_config({"applications": [app]}, resolve_from=tmp_path)
    assert config.applications[0].args["ensemble_artifact"] == str(tmp_path / "artifacts" / "ml100k-ensemble")
    app["args"]["weights"] = {"two_tower": 0.5, "mf": 0.5}
    with pytest.raises(SpecError, match="remove weights"):
        load_serve_config({"applications": [app]})
