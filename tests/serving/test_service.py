"""The real Serve application from serve/recommender.yaml on 127.0.0.1: every endpoint, batching, hot swap.

One Ray + Serve instance for the whole module (start-up costs ~20 s on 2 cores); tests run in file order and
the hot swap comes last.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
WRITE_TOKEN = "service-test-write-token"


def _config(raw: dict, port: int, artifacts: dict) -> dict:
    """The committed YAML with a free port, the test artifacts and one replica each (2 shared cores)."""
    raw = dict(raw, http_options={**raw["http_options"], "port": port})
    app = raw["applications"][0]
    app["args"].update(two_tower_artifact=str(artifacts["v1"]), mf_artifact=str(artifacts["mf"]))
    for d in app["deployments"]:
        if "autoscaling_config" in d:
            d["autoscaling_config"] = {**d["autoscaling_config"], "max_replicas": 1}
    return raw


@pytest.fixture(scope="module")
def service(serving_artifacts, tmp_path_factory):
    os.environ["RAY_AUTH_MODE"] = "disabled"  # local test cluster: no token file, no auth prompts
    import ray
    from ray import serve

    from lmrec.serving.cli import main_serve

    raw = _config(yaml.safe_load((REPO / "serve" / "recommender.yaml").read_text()), _free_port(), serving_artifacts)
    path = tmp_path_factory.mktemp("serve") / "app.yaml"
    path.write_text(yaml.safe_dump(raw))
    ray.init(num_cpus=2, include_dashboard=False, namespace="serve", log_to_driver=False)
    # POST /items needs the write token (lmrec.serving.auth). Exported for the whole module, as in a shell: each
    # deploy forwards it, so the hot swap's redeploy changes only user_config (a changed runtime_env would
    # restart every replica instead)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LMREC_WRITE_TOKEN", WRITE_TOKEN)
        try:
            assert main_serve(str(path), detach=True) == 0  # the CLI's own deploy path, returning once running
            yield {"url": f"http://127.0.0.1:{raw['http_options']['port']}", "raw": raw, **serving_artifacts}
        finally:
            serve.shutdown()
            ray.shutdown()


def post(service, path: str, body: dict, timeout: float = 30) -> requests.Response:
    return requests.post(service["url"] + path, json=body, timeout=timeout,
                         headers={"Authorization": f"Bearer {WRITE_TOKEN}"})


def _manifest_sha(folder) -> str:
    from lmrec.artifacts.manifest import sha256_file

    return sha256_file(Path(folder) / "manifest.json")


def test_health_version_and_openapi(service):
    assert requests.get(service["url"] + "/health", timeout=30).json() == {"status": "ok"}
    v = requests.get(service["url"] + "/version", timeout=30).json()
    assert v["members"]["two_tower"]["sha256"] == _manifest_sha(service["v1"])
    assert v["members"]["mf"]["sha256"] == _manifest_sha(service["mf"])
    assert v["members"]["two_tower"]["name"] == "serve-tiny" and v["encoder_sha256"] == _manifest_sha(service["v1"])
    spec = requests.get(service["url"] + "/openapi.json", timeout=30).json()
    assert {"/recommend", "/predict", "/similar-items", "/cold-start/recommend", "/items"} <= set(spec["paths"])
    assert requests.get(service["url"] + "/docs", timeout=30).status_code == 200


def test_recommend_excludes_seen_and_explains(service):
    data = service["data"]
    user_idx = int(data.train["user_idx"].value_counts().idxmax())
    raw_user = int(data.user_ids[user_idx])
    r = post(service, "/recommend", {"user_id": raw_user, "k": 5, "explain": True})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 5 and len({i["item_id"] for i in items}) == 5
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    mine = data.train[data.train["user_idx"] == user_idx]
    seen = {int(data.item_ids[i]) for i in mine["item_idx"]}
    liked = {int(data.item_ids[i]) for i in mine.loc[mine["rating"] >= 4, "item_idx"]}
    assert not seen & {i["item_id"] for i in items}
    for item in items:
        assert item["member_scores"]["two_tower"] is not None and item["member_scores"]["mf"] is not None
        reasons = item["because_you_liked"]
        assert reasons and {x["item_id"] for x in reasons} <= liked and all(x["rating"] >= 4 for x in reasons)
    # candidates restrict the ranking; seen items may be asked back
    cands = sorted(seen)[:3]
    r = post(service, "/recommend", {"user_id": str(raw_user), "k": 10, "exclude_seen": False,
                                     "candidate_item_ids": cands})
    assert sorted(i["item_id"] for i in r.json()["items"]) == cands


def test_predict_matches_the_members(service):
    from lmrec.serving.members import MFMember, TwoTowerMember

    data = service["data"]
    raw_user, raw_items = int(data.user_ids[0]), [int(x) for x in data.item_ids[:4]]
    r = post(service, "/predict", {"user_id": raw_user, "item_ids": raw_items})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    tt = TwoTowerMember(service["v1"]).predict(raw_user, list(range(4)))["ratings"]
    mf = MFMember(service["mf"]).predict(raw_user, list(range(4)))["ratings"]
    for p, a, b in zip(preds, tt, mf):
        assert p["member_ratings"]["two_tower"] == pytest.approx(float(a), rel=1e-5)
        assert p["member_ratings"]["mf"] == pytest.approx(float(b), rel=1e-5)
        assert p["rating"] == pytest.approx(0.7 * float(a) + 0.3 * float(b), rel=1e-5)


def test_similar_items_by_id_and_text(service):
    r = post(service, "/similar-items", {"item_id": 1, "k": 4})
    assert r.status_code == 200 and len(r.json()["items"]) == 4 and 1 not in [i["item_id"] for i in r.json()["items"]]
    r = post(service, "/similar-items", {"text": "A space adventure with robots. Genres: Sci-Fi.", "k": 3})
    sims = [i["score"] for i in r.json()["items"]]
    assert len(sims) == 3 and sims == sorted(sims, reverse=True) and all(-1.0 <= s <= 1.0001 for s in sims)
    assert post(service, "/similar-items", {"item_id": 123456, "k": 3}).status_code == 404


def test_cold_start_user(service):
    body = {"ratings": [{"item_id": 1, "rating": 5}, {"item_id": 50, "rating": 4}, {"item_id": 7, "rating": 1}],
            "profile_text": "I love animated family comedies", "k": 6}
    r = post(service, "/cold-start/recommend", body)
    assert r.status_code == 200, r.text
    got = [i["item_id"] for i in r.json()["items"]]
    assert len(got) == 6 and not {1, 50, 7} & set(got)
    assert all(i["member_scores"]["mf"] is not None for i in r.json()["items"])  # MF folded the user in
    text_only = post(service, "/cold-start/recommend", {"profile_text": "war films", "k": 3}).json()["items"]
    assert len(text_only) == 3 and all(i["member_scores"].get("mf") is None for i in text_only)
    assert post(service, "/cold-start/recommend", {"ratings": [{"item_id": 9999999, "rating": 3}]}).status_code == 404


def test_new_item_is_recommendable_at_once(service):
    text = "Robot Uprising 3000 (2031). Genres: Sci-Fi, Action."
    r = post(service, "/items", {"item_id": 900001, "text": text})
    assert r.status_code == 201, r.text
    assert post(service, "/items", {"item_id": 900001, "text": text}).status_code == 409
    sim = post(service, "/similar-items", {"text": text, "k": 3}).json()["items"]
    assert sim[0]["item_id"] == 900001 and sim[0]["score"] == pytest.approx(1.0, abs=1e-4)
    user = int(service["data"].user_ids[0])
    rec = post(service, "/recommend", {"user_id": user, "k": 5, "candidate_item_ids": [900001, 1, 2]}).json()
    new = [i for i in rec["items"] if i["item_id"] == 900001]
    assert new and new[0]["member_scores"]["mf"] is None and new[0]["text"] == text
    pred = post(service, "/predict", {"user_id": user, "item_ids": [900001]}).json()["predictions"][0]
    assert pred["member_ratings"]["mf"] is None and 0 < pred["rating"] < 10


def test_validation_through_the_proxy(service):
    assert post(service, "/recommend", {"user_id": 1, "k": 1001}).status_code == 422
    big = b'{"user_id": 1, "item_ids": [' + b",".join([b"1"] * 40000) + b"]}"
    r = requests.post(service["url"] + "/predict", data=big, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413


def test_encoder_batches_concurrent_requests(service):
    before = requests.get(service["url"] + "/stats", timeout=30).json()["encoder"]
    bodies = [{"profile_text": f"I like films number {i} with long plots", "k": 3} for i in range(24)]
    with ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(lambda b: post(service, "/cold-start/recommend", b).status_code, bodies))
    assert codes == [200] * 24
    after = requests.get(service["url"] + "/stats", timeout=30).json()["encoder"]
    assert after["texts"] - before["texts"] >= 24
    assert after["max_batch_size"] > 1  # several concurrent texts shared one forward pass
    assert after["batches"] - before["batches"] < after["texts"] - before["texts"]


def test_hot_swap_fails_no_request(service):
    from lmrec.serving.cli import deploy_config, load_serve_config, with_artifacts

    old, new = _manifest_sha(service["v1"]), _manifest_sha(service["v2"])
    users = [int(u) for u in service["data"].user_ids[:20]]
    stop = threading.Event()
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        n = worker
        while not stop.is_set():
            n += 1
            if n % 3:
                body, path = {"user_id": users[n % len(users)], "k": 5}, "/recommend"
            else:
                body, path = {"ratings": [{"item_id": 1, "rating": 5}], "profile_text": f"user {n}", "k": 5}, \
                    "/cold-start/recommend"
            try:
                r = post(service, path, body, timeout=60)
                out = (r.status_code, r.json()["versions"]["two_tower"] if r.status_code == 200 else r.text)
            except requests.RequestException as e:
                out = (-1, repr(e))
            with lock:
                results.append(out)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        deploy_config(load_serve_config(with_artifacts(service["raw"], two_tower_artifact=str(service["v2"]))))
        deadline = time.monotonic() + 90
        while requests.get(service["url"] + "/version", timeout=30).json()["members"]["two_tower"]["sha256"] != new:
            assert time.monotonic() < deadline, "the swap never finished"
            time.sleep(0.5)
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    served = {v for _, v in results}
    assert len(results) > 20 and {old[:12], new[:12]} <= served
    assert requests.get(service["url"] + "/version", timeout=30).json()["encoder_sha256"] == new


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
