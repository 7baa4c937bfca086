"""Bearer tokens and item texts on the bare single-process app over real HTTP (same routes as the Serve ingress):
writes refused without a configured token, the read token, tokens from files, and a two-tower-only service that
shows and filters on the texts its artifact carries."""

from __future__ import annotations

import pytest
import requests

from lmrec.serving.auth import Tokens, token_env

WRITE, READ = "test-write-token", "test-read-token"


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def guarded(serving_artifacts, tmp_path_factory, on_loopback, with_item_texts):
    """A two-tower-only service (artifact with item texts) with a write and a read token."""
    from lmrec.serving.app import build_bare_app

    folder = tmp_path_factory.mktemp("tt-texts") / "two-tower"
    with_item_texts(serving_artifacts["v1"], folder, serving_artifacts["data"].item_texts)
    app = build_bare_app({"two_tower_artifact": str(folder)}, tokens=Tokens.of(write=WRITE, read=READ))
    with on_loopback(app) as url:
        yield url


def test_tokens_from_environment_and_files(tmp_path):
    secret = tmp_path / "write-token"
    secret.write_text("from-a-file\n")
    env = {"LMREC_WRITE_TOKEN": "plain", "LMREC_WRITE_TOKEN_FILE": str(secret), "LMREC_READ_TOKEN": "r", "HOME": "/"}
    assert Tokens.from_env(env) == Tokens.of(write="from-a-file", read="r")  # the file wins over the variable
    assert token_env(env) == {k: v for k, v in env.items() if k != "HOME"}
    assert Tokens.from_env({}) == Tokens()
    with pytest.raises(ValueError, match="unreadable"):
        Tokens.from_env({"LMREC_WRITE_TOKEN_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        Tokens.from_env({"LMREC_READ_TOKEN_FILE": str(tmp_path / "empty")})


def test_read_token_guards_every_read_but_health(guarded, serving_artifacts):
    user = int(serving_artifacts["data"].user_ids[0])
    body = {"user_id": user, "k": 3}
    r = requests.post(guarded + "/recommend", json=body, timeout=30)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert requests.post(guarded + "/recommend", json=body, headers=_bearer("nope"), timeout=30).status_code == 403
    for token in (READ, WRITE):  # the write token reads too
        assert requests.post(guarded + "/recommend", json=body, headers=_bearer(token), timeout=30).status_code == 200
    assert requests.get(guarded + "/version", timeout=30).status_code == 401
    assert requests.get(guarded + "/health", timeout=30).json() == {"status": "ok"}  # liveness stays open
    r = requests.post(guarded + "/items", json={"item_id": "n1", "text": "A film"}, headers=_bearer(READ), timeout=30)
    assert r.status_code == 403  # the read token does not write

    spec = requests.get(guarded + "/openapi.json", timeout=30).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <token>` (see lmrec.serving.auth)."}
    assert spec["paths"]["/items"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/health"]["get"]


def test_two_tower_artifact_texts_are_shown_and_filtered(guarded, serving_artifacts):
    data = serving_artifacts["data"]
    text_of = dict(zip(map(str, data.item_ids), data.item_texts))
    user = int(data.user_ids[0])
    r = requests.post(guarded + "/recommend", json={"user_id": user, "k": 5}, headers=_bearer(READ), timeout=30)
    items = r.json()["items"]
    assert len(items) == 5 and all(i["text"] == text_of[str(i["item_id"])] for i in items)
    body = {"user_id": user, "k": 20, "filter": {"field": "text", "contains_any": ["COMEDY"]}}
    items = requests.post(guarded + "/recommend", json=body, headers=_bearer(READ), timeout=30).json()["items"]
    # the service excludes every item the user rated in training, so only the unseen comedies can come back
    seen = set(data.train.loc[data.train["user_idx"] == 0, "item_idx"].tolist())
    comedies = sum("comedy" in t.lower() for i, t in enumerate(data.item_texts) if i not in seen)
    assert len(items) == min(20, comedies) and all("comedy" in i["text"].lower() for i in items)


def test_without_a_write_token_writes_are_refused_and_reads_show_the_trained_texts(serving_artifacts, on_loopback):
    from lmrec.serving.app import build_bare_app

    app = build_bare_app({"two_tower_artifact": str(serving_artifacts["v1"])}, tokens=Tokens())
    with on_loopback(app) as url:
        r = requests.post(url + "/items", json={"item_id": "n1", "text": "A film"}, headers=_bearer("x"), timeout=30)
        assert r.status_code == 403 and "LMREC_WRITE_TOKEN" in r.json()["detail"]
        user = int(serving_artifacts["data"].user_ids[0])
        r = requests.post(url + "/recommend", json={"user_id": user, "k": 3}, timeout=30)
        # reads are open; a two-tower-only service shows the item texts its trainer wrote into the artifact
        assert r.status_code == 200 and all(i["text"] for i in r.json()["items"]), r.json()
        body = {"user_id": user, "k": 5, "filter": {"contains_any": ["Comedy"]}}
        r = requests.post(url + "/recommend", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["items"], r.text
        assert all("comedy" in i["text"].lower() for i in r.json()["items"])
