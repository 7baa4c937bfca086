"""The Serve application over real HTTP on 127.0.0.1, configured from artifacts (``lmrec serve --artifact``) with a
write token exported the way a user does it: auth on POST /items, batch recommendations, exclusions, filters,
recommendation ids and the Prometheus metrics the ingress replica exports.

One Ray + Serve instance for the module (start-up ~20-30 s on 2 cores), started with the environment ``lmrec
serve`` gives a Ray it starts itself (``local_serving_env``: Serve's high-throughput mode, HAProxy in front of the
ingress replica), so every route and header below is checked on the path users get by default.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.slow
WRITE = "v2-write-token"


@pytest.fixture(scope="module")
def service(serving_artifacts, tmp_path_factory, free_port):
    import ray
    from ray import serve

    from lmrec.serving.cli import artifacts_config, deploy_config, load_serve_config, local_serving_env, main_serve

    raw = artifacts_config([str(serving_artifacts["v1"]), str(serving_artifacts["mf"])], port=free_port())
    for d in raw["applications"][0]["deployments"]:  # one replica each (2 shared cores)
        if "autoscaling_config" in d:
            d["autoscaling_config"] = {**d["autoscaling_config"], "max_replicas": 1}
    path = tmp_path_factory.mktemp("serve") / "app.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "disabled")
        fast, how = local_serving_env()
        assert "high-throughput" in how, how  # ray[serve] brings the HAProxy binary
        for key, value in fast.items():
            env.setenv(key, value)
        ray.init(num_cpus=2, include_dashboard=False, namespace="serve", log_to_driver=False)
        try:
            # exported after the cluster started (as before `lmrec serve --address auto`): Ray's workers do not
            # inherit it, so the replicas know it only if main_serve forwards it (runtime_env)
            env.setenv("LMREC_WRITE_TOKEN", WRITE)
            assert main_serve(str(path), detach=True) == 0
            env.delenv("LMREC_WRITE_TOKEN")
            # a redeploy from a shell without the token (a hot swap, a promotion) keeps the running app's token
            deploy_config(load_serve_config(path))
            yield {"url": f"http://127.0.0.1:{raw['http_options']['port']}", **serving_artifacts}
        finally:
            serve.shutdown()
            ray.shutdown()


def post(service, path: str, body: dict, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return requests.post(service["url"] + path, json=body, headers=headers, timeout=60)


def _user(service, rank: int = 0):
    data = service["data"]
    return int(data.user_ids[int(data.train["user_idx"].value_counts().index[rank])])


def test_item_writes_need_the_write_token_and_new_items_are_recommendable(service):
    text = "Quantum Heist (2031). Genres: Thriller, Sci-Fi."
    item = {"item_id": 910001, "text": text}
    r = post(service, "/items", item)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert post(service, "/items", item, token="wrong").status_code == 403
    r = post(service, "/items", item, token=WRITE)
    assert r.status_code == 201, r.text
    rec = post(service, "/recommend", {"user_id": _user(service), "k": 3, "candidate_item_ids": [910001, 1, 2]})
    assert [i["text"] for i in rec.json()["items"] if i["item_id"] == 910001] == [text]
    spec = requests.get(service["url"] + "/openapi.json", timeout=30).json()
    assert spec["paths"]["/items"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/recommend"]["post"]  # reads are open without a read token


def test_batch_of_100_users_in_one_call(service):
    data = service["data"]
    known = [int(u) for u in data.user_ids]  # the tiny split has fewer users than 100: some come twice
    users = [known[i % len(known)] for i in range(99)] + [987654321]  # the last one is unknown
    body = {"requests": [{"user_id": u, "k": 1 + i % 7, "exclude_seen": i % 2 == 0} for i, u in enumerate(users)]}
    r = post(service, "/recommend/batch", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["results"]) == 100 and uuid.UUID(out["recommendation_id"])
    for i, (u, res) in enumerate(zip(users[:99], out["results"])):
        assert res["user_id"] == u and len(res["items"]) == 1 + i % 7 and res["error"] is None
    assert out["results"][-1]["error"]["status"] == 404 and out["results"][-1]["items"] == []
    ids = {res["recommendation_id"] for res in out["results"]}
    assert len(ids) == 100  # one id per user's answer
    one = post(service, "/recommend", body["requests"][3]).json()
    assert [i["item_id"] for i in one["items"]] == [i["item_id"] for i in out["results"][3]["items"]]
    too_many = {"requests": [{"user_id": users[0]}] * 1001}
    assert post(service, "/recommend/batch", too_many).status_code in (413, 422)


def test_exclusions_filter_and_recommendation_id(service):
    user = _user(service)
    first = post(service, "/recommend", {"user_id": user, "k": 5}).json()
    assert uuid.UUID(first["recommendation_id"])
    top = [i["item_id"] for i in first["items"]]
    again = post(service, "/recommend", {"user_id": user, "k": 5, "exclude_item_ids": top[:3] + ["not-an-item"]})
    assert again.status_code == 200, again.text
    got = [i["item_id"] for i in again.json()["items"]]
    assert not set(top[:3]) & set(got) and got[:2] == top[3:]
    assert again.json()["recommendation_id"] != first["recommendation_id"]
    body = {"user_id": user, "k": 50, "exclude_seen": False,
            "filter": {"field": "text", "contains_any": ["Horror", "Documentary"]}}
    items = post(service, "/recommend", body).json()["items"]
    matching = [t for t in service["data"].item_texts if "horror" in t.lower() or "documentary" in t.lower()]
    assert sorted(i["text"] for i in items) == sorted(matching)  # every matching item, and only those
    assert post(service, "/recommend", {**body, "filter": {"field": "genre", "contains_any": ["x"]}}).status_code == 422
    cold = post(service, "/cold-start/recommend", {"profile_text": "space adventures", "k": 3}).json()
    assert uuid.UUID(cold["recommendation_id"])


def test_metrics_count_requests_cold_starts_and_fusions(service):
    """Counted by the ingress replica (GET /stats shows its in-memory counts) and exported to Prometheus by Ray
    (scraped from the node's metrics port, which Ray refreshes every few seconds)."""
    import ray

    before = requests.get(service["url"] + "/stats", timeout=30).json()["metrics"]
    assert post(service, "/cold-start/recommend", {"profile_text": "robots", "k": 2}).status_code == 200
    assert post(service, "/recommend", {"user_id": 987654321}).status_code == 404
    after = requests.get(service["url"] + "/stats", timeout=30).json()["metrics"]
    assert after["cold_start_requests"] == before["cold_start_requests"] + 1
    assert after["fusions"] > before["fusions"]
    counts = {(r["endpoint"], r["status"]): r["count"] for r in after["requests"]}
    assert counts[("POST /recommend", "404")] >= 1 and counts[("POST /items", "401")] == 1
    assert counts[("POST /recommend/batch", "200")] >= 1

    port = ray._private.worker._global_node.metrics_export_port
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        except requests.RequestException:
            text = ""
        if "lmrec_cold_start_requests_total" in text and "lmrec_fusion_latency_ms_bucket" in text:
            break
        time.sleep(2)
    assert "lmrec_requests_total" in text and 'endpoint="POST /items"' in text and 'status="401"' in text
    assert "lmrec_cold_start_requests_total" in text and "lmrec_fusion_latency_ms_bucket" in text


def test_write_config_from_artifacts_loads(service, tmp_path):
    from lmrec.serving.cli import load_serve_config

    out = tmp_path / "f.yaml"
    args = [sys.executable, "-m", "lmrec.cli", "serve", "--artifact", str(service["v1"]), "--artifact",
            str(service["ease"]), "--artifact", str(service["mf"]), "--weight", "ease=2", "--write-config", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    config = load_serve_config(out)
    app = config.applications[0]
    assert app.args["weights"] == {"two_tower": 1.0, "mf": 1.0, "ease": 2.0, "item_knn": 0.0}
    assert app.args["ease_artifact"] == str(Path(service["ease"]).resolve())
    assert out.read_text().startswith(f"# lmrec serve {out}")
    assert "TOKEN" not in out.read_text()
    bad = subprocess.run(args[:6] + ["--artifact", str(service["v2"]), "--write-config", str(tmp_path / "g.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "two two_tower artifacts" in bad.stderr
