"""A served three-member ensemble (two-tower + MF + EASE) through real Ray Serve on 127.0.0.1: /recommend ranks as
the offline fusion of the same member artifacts and weights, /predict rates as the offline members and ensemble
(clamped: the two-tower and MF are ``narrow_artifacts``), and the EASE member hot-swaps like the others.

Its own Ray + Serve instance (the config of serve/recommender.yaml with an EASE member added); ~40 s on 2 cores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
WEIGHTS = {"two_tower": 0.3, "mf": 0.2, "ease": 0.5}


@pytest.fixture(scope="module")
def service(serving_artifacts, narrow_artifacts, tmp_path_factory):
    os.environ["RAY_AUTH_MODE"] = "disabled"  # local test cluster: no token file, no auth prompts
    import ray
    from ray import serve

    from lmrec.serving.cli import main_serve

    raw = yaml.safe_load((REPO / "serve" / "recommender.yaml").read_text())
    port = _free_port()
    raw["http_options"] = {**raw["http_options"], "port": port}
    app = raw["applications"][0]
    members = {**serving_artifacts, "v1": narrow_artifacts["two_tower"], "mf": narrow_artifacts["mf"]}
    app["args"].update(two_tower_artifact=str(members["v1"]), mf_artifact=str(members["mf"]),
                       ease_artifact=str(members["ease"]), weights=WEIGHTS)
    for d in app["deployments"]:
        if "autoscaling_config" in d:
            d["autoscaling_config"] = {**d["autoscaling_config"], "max_replicas": 1}
    path = tmp_path_factory.mktemp("serve3") / "app.yaml"
    path.write_text(yaml.safe_dump(raw))
    ray.init(num_cpus=2, include_dashboard=False, namespace="serve3", log_to_driver=False)
    try:
        assert main_serve(str(path), detach=True) == 0
        yield {"url": f"http://127.0.0.1:{port}", "raw": raw, "range": narrow_artifacts["range"], **members}
    finally:
        serve.shutdown()
        ray.shutdown()


def test_recommend_equals_the_offline_fusion_of_the_same_artifacts(service, offline_ensemble):
    from lmrec.strategies.fusion import top_k

    version = requests.get(service["url"] + "/version", timeout=30).json()
    assert version["weights"] == WEIGHTS and set(version["members"]) == set(WEIGHTS)
    assert version["members"]["ease"]["kind"] == "ease"
    data = service["data"]
    ens = offline_ensemble(service, tuple(WEIGHTS), WEIGHTS)
    users = np.arange(0, data.n_users, 7)
    offline = ens.score_items(users)
    for u, row in zip(users, offline):
        r = requests.post(service["url"] + "/recommend", json={"user_id": int(data.user_ids[u]), "k": 10}, timeout=30)
        assert r.status_code == 200, r.text
        got = r.json()["items"]
        assert [i["item_id"] for i in got] == [int(data.item_ids[i]) for i in top_k(row, 10)], f"user {u}"
        np.testing.assert_allclose([i["score"] for i in got], np.sort(row)[::-1][:10], rtol=1e-4, atol=1e-5)
        assert all(i["member_scores"]["ease"] is not None for i in got)


def test_predict_equals_the_offline_members(service, offline_ensemble):
    """Offline = served through real Serve (``test_parity.py`` checks every kind in-process): each rating member's
    /predict rating is its offline recommender's clamped ``predict``, the blend the offline ensemble's with the
    same weights (Serve's default rating weights are the fusion weights); EASE only ranks."""
    data = service["data"]
    raters = {m: WEIGHTS[m] for m in ("two_tower", "mf")}
    ens = offline_ensemble(service, tuple(raters), raters, rating_weights=raters)
    items = np.arange(data.n_items)
    at_bounds = 0
    for u in range(0, data.n_users, 6):
        body = {"user_id": int(data.user_ids[u]), "item_ids": [int(data.item_ids[i]) for i in items]}
        r = requests.post(service["url"] + "/predict", json=body, timeout=30)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert set(preds[0]["member_ratings"]) == set(raters)
        users = np.full(len(items), u)
        for m, rec in ens.members.items():
            offline = rec.predict(users, items)
            # replicas compute their tables with one torch thread, this process with more: float32 rounding apart
            np.testing.assert_allclose([p["member_ratings"][m] for p in preds], offline, rtol=1e-6, atol=1e-6)
            lo, hi = service["range"][m]
            at_bounds += int(((offline == np.float32(lo)) | (offline == np.float32(hi))).sum())
        np.testing.assert_allclose([p["rating"] for p in preds], ens.predict(users, items), rtol=1e-6, atol=1e-6)
    assert at_bounds > data.n_items  # the clamp binds for many pairs, offline and served


def test_cold_start_folds_the_user_into_ease(service):
    body = {"ratings": [{"item_id": 1, "rating": 5}, {"item_id": 50, "rating": 4}], "k": 5}
    r = requests.post(service["url"] + "/cold-start/recommend", json=body, timeout=60)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 5 and {1, 50}.isdisjoint(i["item_id"] for i in items)
    assert all(i["member_scores"]["ease"] is not None and i["member_scores"]["mf"] is not None for i in items)
    assert set(r.json()["versions"]) == set(WEIGHTS)


def test_ease_member_hot_swaps(service, tmp_path):
    from lmrec.serving.cli import deploy_config, load_serve_config, with_artifacts
    from lmrec.artifacts.item_item import load_item_item_artifact, train_item_item_artifact

    new = train_item_item_artifact(service["data"], tmp_path / "ease-v2", "ease", l2=400.0)
    new_sha = load_item_item_artifact(new).sha256
    deploy_config(load_serve_config(with_artifacts(service["raw"], ease_artifact=str(new))))
    deadline = time.monotonic() + 90
    while requests.get(service["url"] + "/version", timeout=30).json()["members"]["ease"]["sha256"] != new_sha:
        assert time.monotonic() < deadline, "the EASE swap never finished"
        time.sleep(0.5)
    user = int(service["data"].user_ids[0])
    deadline = time.monotonic() + 10  # the ingress re-checks its tables every catalog_poll_s
    while True:
        r = requests.post(service["url"] + "/recommend", json={"user_id": user, "k": 5}, timeout=30)
        assert r.status_code == 200, r.text
        if r.json()["versions"]["ease"] == new_sha[:12]:
            break
        assert time.monotonic() < deadline, "the ingress never fused the swapped EASE member"
        time.sleep(0.3)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
