"""Hostile HTTP input against the service's routes (the bare single-process app: same FastAPI routes and members
as the Serve ingress): schema-driven fuzzing of every operation, body-size and ``k`` limits.

The fast subset of ``benchmarks/reliability.py``, whose fuzz part sends >= 1,000 generated requests to the real
Serve endpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

MAX_BODY = 4096
WRITE, READ = "fuzz-write-token", "fuzz-read-token"
# each generated request goes out with the next of these: no token, a wrong one, the read token, the write token
AUTH_TURNS = [None, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {READ}"},
              {"Authorization": f"Bearer {WRITE}"}]


@pytest.fixture(scope="module")
def app(serving_artifacts):
    from lmrec.serving.app import build_bare_app
    from lmrec.serving.auth import Tokens

    return build_bare_app({"two_tower_artifact": str(serving_artifacts["v1"]),
                           "mf_artifact": str(serving_artifacts["mf"]), "max_body_bytes": MAX_BODY},
                          tokens=Tokens.of(write=WRITE, read=READ))


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    # the app has a read token (for the fuzz test's auth paths): the other tests read with it
    with TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {READ}"}) as c:
        yield c


def test_fuzz_every_operation_no_5xx(app, client):
    import schemathesis
    from reliability import fuzz_schema

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    result = fuzz_schema(schema, examples_per_operation=170, headers=AUTH_TURNS)
    assert {"POST /recommend", "POST /recommend/batch", "POST /predict", "POST /similar-items",
            "POST /cold-start/recommend", "POST /items", "GET /health", "GET /version",
            "GET /stats"} <= set(result["by_operation"])
    assert result["requests"] >= 1000
    assert result["server_errors"] == 0, result["server_error_examples"]
    statuses = {s for c in result["by_operation"].values() for s in c}
    assert {"200", "401", "403", "422"} <= statuses  # rejected, unauthenticated, forbidden and accepted requests
    assert {"201", "401", "403"} <= set(result["by_operation"]["POST /items"])  # writes with each kind of token
    print(f"fuzz: {result['requests']} requests, {result['server_errors']} 5xx, {result['by_operation']}")
    assert client.get("/health").json() == {"status": "ok"}  # and the members still answer


def test_k_limits(client, serving_artifacts):
    from lmrec.serving.api import MAX_K

    user = int(serving_artifacts["data"].user_ids[0])
    ok = client.post("/recommend", json={"user_id": user, "k": MAX_K})
    assert ok.status_code == 200 and len(ok.json()["items"]) <= MAX_K
    for bad in (0, -1, MAX_K + 1, 10**18, 1.5, "ten", None, True):
        r = client.post("/recommend", json={"user_id": user, "k": bad})
        assert r.status_code == 422, (bad, r.status_code)
        assert any(e["loc"][-1] == "k" for e in r.json()["detail"])
    r = client.post("/similar-items", json={"item_id": int(serving_artifacts["data"].item_ids[0]), "k": MAX_K + 1})
    assert r.status_code == 422


def test_oversized_and_malformed_bodies(client, serving_artifacts):
    user = int(serving_artifacts["data"].user_ids[0])
    big = {"user_id": user, "item_ids": list(range(2000))}  # > MAX_BODY bytes of JSON
    r = client.post("/predict", json=big)
    assert r.status_code == 413 and str(MAX_BODY) in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield b'{"user_id": %d, "item_ids": [' % user
        for _ in range(1000):
            yield b"1,2,3,4,5,6,7,8,9,10,"
        yield b"1]}"

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    for body in (b"{", b"\xff\xfe\x00", b"[]", b"null", b'{"user_id": 1e999}', b'{"user_id": {"$gt": ""}}'):
        r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (body, r.status_code)
    r = client.post("/recommend", json={"user_id": user, "k": 5, "unexpected": 1})
    assert r.status_code == 422  # extra keys are refused, not ignored
    r = client.post("/cold-start/recommend", json={"profile_text": "x" * 3000})
    assert r.status_code == 422  # text over MAX_TEXT_CHARS
