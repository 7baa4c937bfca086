"""Item-item members (EASE, item-kNN) as hash-checked artifacts, one fusion offline and in the ingress, and the
ingress over N members: Ray-free (in-process members and the bare app)."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

from lmrec.artifacts.manifest import ArtifactError
from lmrec.models.baselines import EASE, BiasedMF, ItemKNN
from lmrec.artifacts.item_item import load_item_item_artifact, save_item_item_artifact
from lmrec.serving.members import ItemItemMember

WEIGHTS = {"two_tower": 0.3, "mf": 0.2, "ease": 0.5}


@pytest.mark.parametrize("model", [EASE(l2=50.0), ItemKNN(k=20), ItemKNN(k=10, binary=False, shrinkage=2.0)],
                         ids=["ease", "item_knn", "item_knn_ratings"])
def test_artifact_scores_equal_the_fitted_model(serving_artifacts, tmp_path, model):
    data = serving_artifacts["data"]
    model.fit(data.train, data.n_users, data.n_items)
    root = save_item_item_artifact(tmp_path / model.name, model, data.train, user_ids=data.user_ids,
                                   item_ids=data.item_ids, item_texts=data.item_texts, params={"note": "test"})
    art = load_item_item_artifact(root)
    assert art.kind == model.name and art.manifest["params"] == {"note": "test"}
    users = np.concatenate([np.arange(data.n_users), [data.n_users + 5, -1]])  # two users it never saw
    expect = model.score_items(users)
    np.testing.assert_allclose(art.recommender.score_items(users), expect, rtol=1e-6, atol=1e-6)
    member = ItemItemMember(root)  # what a Serve replica and the ingress's table compute, one user at a time
    rows = np.stack([member.table.scores(u) for u in range(data.n_users)])
    np.testing.assert_allclose(rows, expect[: data.n_users], rtol=1e-5, atol=1e-5)
    for u in range(data.n_users):  # same ranking, not just close numbers
        assert list(np.argsort(-rows[u], kind="stable")[:10]) == list(np.argsort(-expect[u], kind="stable")[:10])
    # a cold user who rated exactly what user 0 rated is user 0, to the model
    mine = data.train[data.train["user_idx"] == 0].drop_duplicates(["user_idx", "item_idx"], keep="last")
    got = member.fold_in(mine["item_idx"].to_numpy(), mine["rating"].to_numpy())["scores"]
    np.testing.assert_allclose(got, expect[0], rtol=1e-5, atol=1e-5)
    assert member.fold_in(np.zeros(0, np.int64), np.zeros(0))["scores"] is None
    answer = member.user_scores(data.user_ids[0])
    assert sorted(answer["seen"]) == sorted(mine["item_idx"]) and answer["sha256"] == art.sha256
    np.testing.assert_allclose(answer["seen_ratings"][np.argsort(answer["seen"])],
                               mine.sort_values("item_idx")["rating"].to_numpy())
    assert member.user_scores("no-such-user")["scores"] is None


def test_artifact_refuses_tampering_and_other_models(serving_artifacts, tmp_path):
    data = serving_artifacts["data"]
    bad = tmp_path / "ease"
    shutil.copytree(serving_artifacts["ease"], bad)
    maps = json.loads((bad / "id_maps.json").read_text())
    maps["item_ids"][0] = 999999
    (bad / "id_maps.json").write_text(json.dumps(maps))
    with pytest.raises(ArtifactError, match="sha256"):
        load_item_item_artifact(bad)
    with pytest.raises(ArtifactError, match="unknown artifact format"):
        load_item_item_artifact(serving_artifacts["mf"])
    mf = BiasedMF(dim=4, epochs=1).fit(data.train, data.n_users, data.n_items)
    with pytest.raises(ValueError, match="holds one of"):
        save_item_item_artifact(tmp_path / "mf", mf, data.train, user_ids=data.user_ids, item_ids=data.item_ids)
    other = data.train.iloc[: len(data.train) // 2]
    ease = EASE(l2=50.0).fit(data.train, data.n_users, data.n_items)
    with pytest.raises(ValueError, match="not the table the model was fitted on"):
        save_item_item_artifact(tmp_path / "e", ease, other, user_ids=data.user_ids, item_ids=data.item_ids)


def _router(serving_artifacts, names, weights):
    from lmrec.serving.app import LocalHandle, local_member
    from lmrec.serving.catalog import ItemCatalogCore
    from lmrec.serving.members import MFMember, TwoTowerMember
    from lmrec.serving.router import EnsembleRouter

    cls = {"two_tower": TwoTowerMember, "mf": MFMember, "ease": ItemItemMember, "item_knn": ItemItemMember}
    members = {m: local_member(cls[m](serving_artifacts["v1" if m == "two_tower" else m])) for m in names}
    return EnsembleRouter(members, None, LocalHandle(ItemCatalogCore()), weights)


@pytest.mark.parametrize("names", [("two_tower", "mf", "ease"), ("two_tower", "ease", "item_knn")])
def test_router_and_offline_fusion_give_the_same_top_k(serving_artifacts, offline_ensemble, names):
    """The ingress's /recommend (tables, alignment, seen exclusion, ``fuse_scores``) ranks a user's unseen items
    exactly as ``FusedEnsemble.score_items`` over the same artifacts and weights."""
    from lmrec.serving.api import RecommendRequest
    from lmrec.strategies.fusion import top_k

    weights = dict(zip(names, (0.3, 0.2, 0.5)))
    data = serving_artifacts["data"]
    ens = offline_ensemble(serving_artifacts, names, weights)
    router = _router(serving_artifacts, names, weights)
    users = np.arange(0, data.n_users, 5)
    offline = ens.score_items(users)

    async def ask():
        return [await router.recommend(RecommendRequest(user_id=data.user_ids[u], k=10)) for u in users]

    for u, row, got in zip(users, offline, asyncio.run(ask())):
        want = [data.item_ids[i] for i in top_k(row, 10)]
        assert [i["item_id"] for i in got["items"]] == want, f"user {u}"
        np.testing.assert_allclose([i["score"] for i in got["items"]], np.sort(row)[::-1][:10], rtol=1e-4, atol=1e-5)
        assert set(got["items"][0]["member_scores"]) == set(names) and set(got["versions"]) == set(names)


def test_fusion_is_one_function_offline_and_served():
    from lmrec.serving import router as served
    from lmrec.strategies import ensemble as offline
    from lmrec.strategies import fusion

    assert served.fuse_scores is fusion.fuse_scores is offline.fuse and served.top_k is fusion.top_k
    assert fusion.zscore is offline.zscore_rows
    rng = np.random.default_rng(0)
    scores = {"a": rng.normal(size=(4, 9)), "b": rng.normal(size=(4, 9)) * 100, "c": None}
    mask = rng.random((4, 9)) < 0.7
    batched = fusion.fuse_scores(scores, {"a": 0.4, "b": 0.6, "c": 1.0}, mask)
    for r in range(4):  # a request's row is one row of the batch
        row = fusion.fuse_scores({"a": scores["a"][r], "b": scores["b"][r]}, {"a": 0.4, "b": 0.6}, mask[r])
        np.testing.assert_array_equal(row, batched[r])
    assert np.isneginf(batched[~mask]).all()
    with pytest.raises(ValueError, match="no member can score"):
        fusion.fuse_scores({"a": None, "b": scores["b"]}, {"a": 1.0}, mask)


def test_weights_need_an_artifact_and_the_bare_app_serves_four_members(serving_artifacts):
    import threading
    import time

    import requests
    import uvicorn
    from pydantic import ValidationError

    from lmrec.serving.app import ServeAppArgs, build_bare_app

    with pytest.raises(ValidationError, match="weights for ease but no ease_artifact"):
        ServeAppArgs(two_tower_artifact="tt", weights={"two_tower": 0.5, "ease": 0.5})
    with pytest.raises(ValidationError, match="Extra inputs"):
        ServeAppArgs(two_tower_artifact="tt", weights={"two_tower": 0.5, "eaze": 0.5})
    with pytest.raises(ValidationError, match="every member weight is 0"):
        ServeAppArgs(two_tower_artifact="tt", ease_artifact="e", weights={"two_tower": 0.0, "mf": 0.0})
    weights = {"two_tower": 0.4, "mf": 0.2, "ease": 0.3, "item_knn": 0.1}
    args = {"two_tower_artifact": str(serving_artifacts["v1"]), "weights": weights,
            **{f"{m}_artifact": str(serving_artifacts[m]) for m in ("mf", "ease", "item_knn")}}
    assert ServeAppArgs.model_validate(args).served_weights() == weights
    only_ease = ServeAppArgs(two_tower_artifact="tt", ease_artifact="e", weights={"two_tower": 0.5, "ease": 0.5})
    assert only_ease.served_weights() == {"two_tower": 0.5, "ease": 0.5}  # mf's default weight: no artifact
    server = uvicorn.Server(uvicorn.Config(build_bare_app(args), host="127.0.0.1", port=_free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{server.config.port}"
        version = requests.get(url + "/version", timeout=30).json()
        assert version["weights"] == weights
        assert {m: v["kind"] for m, v in version["members"].items()} == {
            "two_tower": "two_tower", "mf": "mf", "ease": "ease", "item_knn": "item_knn"}
        assert requests.get(url + "/health", timeout=30).json() == {"status": "ok"}
        user = int(serving_artifacts["data"].user_ids[0])
        rec = requests.post(url + "/recommend", json={"user_id": user, "k": 5, "explain": True}, timeout=30).json()
        assert len(rec["items"]) == 5 and set(rec["versions"]) == set(weights)
        for item in rec["items"]:
            assert all(item["member_scores"][m] is not None for m in weights) and item["text"]
            assert all(x["rating"] >= 4 for x in item["because_you_liked"])
        cold = {"ratings": [{"item_id": 1, "rating": 5}, {"item_id": 50, "rating": 4}], "k": 4}
        got = requests.post(url + "/cold-start/recommend", json=cold, timeout=30).json()["items"]
        assert len(got) == 4 and all(i["member_scores"]["ease"] is not None for i in got)
        assert {1, 50}.isdisjoint(i["item_id"] for i in got)
    finally:
        server.should_exit = True
        thread.join(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_router_knows_members_by_capability_not_by_name(serving_artifacts):
    """The router's code names no member, and members under other names (the text member last) answer exactly as
    under the usual ones: /recommend with explanations, /predict and cold start."""
    import ast
    import inspect

    from lmrec.serving import router as router_module
    from lmrec.serving.api import ColdStartRequest, PredictRequest, RecommendRequest
    from lmrec.serving.app import LocalHandle, local_member
    from lmrec.serving.catalog import ItemCatalogCore
    from lmrec.serving.members import MFMember, TwoTowerMember
    from lmrec.serving.router import EnsembleRouter

    tree = ast.parse(inspect.getsource(router_module))
    words = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    words |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    words |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not words & {"two_tower", "TWO_TOWER", "tt", "mf", "ease", "item_knn", "knn"}

    usual = _router(serving_artifacts, tuple(WEIGHTS), WEIGHTS)
    alias = {"two_tower": "tower", "mf": "factors", "ease": "neighbours"}
    members = {"factors": local_member(MFMember(serving_artifacts["mf"])),
               "neighbours": local_member(ItemItemMember(serving_artifacts["ease"])),
               "tower": local_member(TwoTowerMember(serving_artifacts["v1"]))}
    renamed = EnsembleRouter(members, None, LocalHandle(ItemCatalogCore()), {alias[m]: w for m, w in WEIGHTS.items()})
    data = serving_artifacts["data"]
    user, items = data.user_ids[0], list(data.item_ids[:7])
    asks = [("recommend", RecommendRequest(user_id=user, k=6, explain=True)),
            ("predict", PredictRequest(user_id=user, item_ids=items)),
            ("cold_start", ColdStartRequest(ratings=[{"item_id": items[1], "rating": 5},
                                                     {"item_id": items[4], "rating": 2}], k=5))]

    async def ask(router):
        return [await getattr(router, method)(req) for method, req in asks]

    def renamed_back(value):
        if isinstance(value, dict):
            back = {v: k for k, v in alias.items()}
            return {back.get(k, k): renamed_back(v) for k, v in value.items()}
        return [renamed_back(v) for v in value] if isinstance(value, list) else value

    want, got = asyncio.run(ask(usual)), asyncio.run(ask(renamed))
    assert renamed_back(got) == want
    assert set(got[1]["predictions"][0]["member_ratings"]) == {"tower", "factors"}  # EASE rates nothing


def test_per_version_caches_are_bounded():
    from lmrec.serving.spaces import ItemSpaces, Recent

    recent = Recent(2)
    recent.put("a", 1)
    recent.put("b", 2)
    assert recent.get("a") == 1  # "a" is now the most recently used
    recent.put("c", 3)
    assert "b" not in recent and recent.get("a") == 1 and recent.get("c") == 3 and len(recent) == 2
    spaces = ItemSpaces(versions=3)
    for version in range(10):  # ten hot swaps
        spaces.add(f"sha{version}", [1, 2, 3], None)
    assert len(spaces.maps) == 3 and spaces.known(2) and "sha9" in spaces.maps and "sha6" not in spaces.maps
