"""Ray-free serving pieces: score fusion, the MF artifact, id maps and the HTTP API on the bare in-process app."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmrec.artifacts.manifest import ArtifactError
from lmrec.strategies.fusion import fuse_scores, top_k, zscore
from lmrec.serving.members import MFMember
from lmrec.artifacts.tables import IdMap


def test_zscore_ignores_masked_and_missing_entries():
    s = np.array([1.0, 2.0, 3.0, np.nan, 100.0])
    mask = np.array([True, True, True, True, False])
    z = zscore(s, mask)
    np.testing.assert_allclose(z[:3], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
    assert z[3] == 0 and z[4] == 0  # NaN = no opinion; outside the mask = untouched


def test_fusion_is_scale_free_and_weighted():
    mask = np.ones(4, dtype=bool)
    a = np.array([0.1, 0.2, 0.3, 0.4])  # cosine-like
    b = np.array([4.0, 3.0, 2.0, 1.0]) * 1000  # rating-like, opposite order, huge scale
    even = fuse_scores({"a": a, "b": b}, {"a": 1, "b": 1}, mask)
    np.testing.assert_allclose(even, 0.0, atol=1e-12)  # equal weights cancel exactly despite the scales
    tilted = fuse_scores({"a": a, "b": b}, {"a": 0.7, "b": 0.3}, mask)
    assert list(top_k(tilted, 4)) == [3, 2, 1, 0]
    only_a = fuse_scores({"a": a, "b": None}, {"a": 0.7, "b": 0.3}, mask)
    np.testing.assert_allclose(only_a, zscore(a, mask))


def test_top_k_skips_excluded_and_breaks_ties_by_index():
    s = np.array([1.0, -np.inf, 3.0, 3.0, 0.5])
    assert list(top_k(s, 10)) == [2, 3, 0, 4]
    assert list(top_k(s, 2)) == [2, 3]


def test_id_map_accepts_int_and_string_spellings():
    m = IdMap([10, 20, "B00X"])
    assert m.index(20) == 1 and m.index("20") == 1 and m.index("B00X") == 2
    assert m.index(30) is None and "10" in m


def test_mf_artifact_roundtrip_and_tamper(serving_artifacts, tmp_path):
    import shutil

    data = serving_artifacts["data"]
    mf = MFMember(serving_artifacts["mf"])
    per_user = data.train.groupby("user_idx")["rating"].agg(["min", "max", "size"])
    user_idx = int(per_user[(per_user["min"] <= 2) & (per_user["max"] >= 5)]["size"].idxmax())
    user = data.train[data.train["user_idx"] == user_idx].iloc[0]
    raw_user = data.user_ids[int(user["user_idx"])]
    items, ratings = mf.art.seen(int(user["user_idx"]))
    truth = data.train[data.train["user_idx"] == user["user_idx"]].sort_values("item_idx")
    assert list(items) == truth["item_idx"].tolist()
    np.testing.assert_allclose(ratings, truth["rating"].to_numpy())
    pred = mf.predict(raw_user, items)["ratings"]
    assert pred.shape == (len(items),) and np.isfinite(pred).all()
    assert mf.predict("no-such-user", items)["ratings"] is None
    # a new user's fold-in from this user's own ratings ranks their loved items above their disliked ones
    cold = mf.fold_in(items, ratings)["scores"]
    assert cold.shape == (len(mf.item_ids),)
    assert cold[items[ratings >= 5]].mean() > cold[items[ratings <= 2]].mean()
    bad = tmp_path / "mf"
    shutil.copytree(serving_artifacts["mf"], bad)
    maps = json.loads((bad / "id_maps.json").read_text())
    maps["item_ids"][0] = 999999
    (bad / "id_maps.json").write_text(json.dumps(maps))
    with pytest.raises(ArtifactError, match="sha256"):
        MFMember(bad)


WRITE_TOKEN = "fusion-test-write-token"


@pytest.fixture(scope="module")
def bare(serving_artifacts, on_loopback):
    """The bare single-process app (same routes and computation as the Serve app) on a loopback port."""
    from lmrec.serving.app import build_bare_app
    from lmrec.serving.auth import Tokens

    app = build_bare_app({"two_tower_artifact": str(serving_artifacts["v1"]),
                          "mf_artifact": str(serving_artifacts["mf"]), "max_body_bytes": 4096},
                         tokens=Tokens.of(write=WRITE_TOKEN))
    with on_loopback(app) as url:
        yield url


@pytest.mark.parametrize("path, body, status, needle", [
    ("/recommend", {"user_id": 1, "k": 0}, 422, "greater than or equal to 1"),
    ("/recommend", {"user_id": 1, "k": 1001}, 422, "less than or equal to 1000"),
    ("/recommend", {"user_id": 1, "kk": 3}, 422, "Extra inputs"),
    ("/recommend", {"user_id": 999999}, 404, "unknown user_id"),
    ("/recommend", {"user_id": 1, "candidate_item_ids": []}, 422, "at least 1"),
    ("/recommend", {"user_id": 1, "candidate_item_ids": [1, 424242]}, 404, "424242"),
    ("/predict", {"user_id": 1, "item_ids": [1] * 1001}, 422, "at most 1000"),
    ("/similar-items", {"k": 3}, 422, "exactly one of item_id or text"),
    ("/similar-items", {"text": "   ", "k": 3}, 422, "at least 1 character"),
    ("/cold-start/recommend", {"ratings": []}, 422, "at least one rating or a profile_text"),
    ("/cold-start/recommend", {"ratings": [{"item_id": 1, "rating": 5}, {"item_id": 1, "rating": 4}]}, 422, "twice"),
    ("/items", {"item_id": 1, "text": "Toy Story again"}, 409, "already exists"),
])
def test_bad_requests_are_4xx_with_a_message(bare, path, body, status, needle):
    import requests

    auth = {"Authorization": f"Bearer {WRITE_TOKEN}"} if path == "/items" else None  # writes need the token
    r = requests.post(bare + path, json=body, headers=auth, timeout=30)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_oversized_body_is_413(bare):
    import requests

    body = json.dumps({"user_id": 1, "item_ids": [1] * 2000}).encode()
    r = requests.post(bare + "/predict", data=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "larger than 4096 bytes" in r.text


class _CountingCatalog:
    """The real catalog core, counting how often ingress replicas ask it for news."""

    def __init__(self) -> None:
        from lmrec.serving.catalog import ItemCatalogCore

        self.core, self.since_calls = ItemCatalogCore(), 0

    def add(self, item_id, text):
        return self.core.add(item_id, text)

    def since(self, version):
        self.since_calls += 1
        return self.core.since(version)


def test_catalog_is_polled_not_called_per_request(serving_artifacts):
    """Two ingress routers share one catalog: /recommend does not ask it on every request; a request that names an
    item this router has not seen yet makes it look at once (no stale 404 for an item another router added)."""
    import asyncio

    from lmrec.serving.api import AddItemRequest, RecommendRequest, ServingError
    from lmrec.serving.app import LocalHandle, _LocalEncoder, local_member
    from lmrec.serving.encoder_service import TextEncoderCore
    from lmrec.serving.members import MFMember, TwoTowerMember
    from lmrec.serving.router import EnsembleRouter

    v1 = serving_artifacts["v1"]
    members = {"two_tower": local_member(TwoTowerMember(v1)), "mf": local_member(MFMember(serving_artifacts["mf"]))}
    enc = LocalHandle(_LocalEncoder(TextEncoderCore(v1)))
    catalog = _CountingCatalog()
    a, b = (EnsembleRouter(members, enc, LocalHandle(catalog), {"two_tower": 0.7, "mf": 0.3}, catalog_poll_s=1.0)
            for _ in range(2))
    user = int(serving_artifacts["data"].user_ids[0])

    async def scenario():
        for _ in range(20):
            await b.recommend(RecommendRequest(user_id=user, k=5))
        calls_for_20 = catalog.since_calls
        await asyncio.sleep(1.05)
        await b.recommend(RecommendRequest(user_id=user, k=5))  # b starts a look in the background ...
        await asyncio.sleep(0.05)  # ... which ends before the item exists
        await a.add_item(AddItemRequest(item_id=900002, text="A heist comedy set on a space station. Genres: Comedy."))
        before = catalog.since_calls
        b_new_before = len(b.added)
        only_new = RecommendRequest(user_id=user, k=1, candidate_item_ids=[900002])
        got_a = await a.recommend(only_new)
        got_b = await b.recommend(only_new)  # b had not seen the item: it looks once, then answers
        looks_for_new = catalog.since_calls - before
        with pytest.raises(ServingError) as unknown:  # an id nobody added is still a 404
            await b.recommend(RecommendRequest(user_id=user, k=1, candidate_item_ids=[900003]))
        return calls_for_20, got_a, got_b, b_new_before, looks_for_new, unknown.value.status

    calls_for_20, got_a, got_b, b_new_before, looks_for_new, status = asyncio.run(scenario())
    assert calls_for_20 <= 2  # was one call per request (20) before polling
    assert b_new_before == 0  # b's background look ended before the item existed
    assert [i["item_id"] for i in got_a["items"]] == [900002]
    assert [i["item_id"] for i in got_b["items"]] == [900002]
    assert looks_for_new <= 2 and status == 404


class _CountingMember:
    """A member's in-process surface that counts its calls; ``member`` can be replaced (a hot swap)."""

    def __init__(self, member) -> None:
        from lmrec.serving.app import _LocalMember

        self.local, self.calls = _LocalMember(member), 0

    def __getattr__(self, name):
        fn = getattr(self.local, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)

        return counted


def test_recommend_scores_from_local_tables_and_follows_a_swap(serving_artifacts):
    """/recommend scores a known user from the members' score tables (no member call per request), with the same
    numbers as the members' own answers, and picks up a swapped artifact within ``catalog_poll_s``."""
    import asyncio

    from lmrec.artifacts.two_tower import load_artifact
    from lmrec.serving.api import RecommendRequest
    from lmrec.serving.app import LocalHandle
    from lmrec.serving.catalog import ItemCatalogCore
    from lmrec.serving.members import TwoTowerMember
    from lmrec.serving.protocol import Member
    from lmrec.serving.router import EnsembleRouter

    tt = _CountingMember(TwoTowerMember(serving_artifacts["v1"]))
    mf = _CountingMember(MFMember(serving_artifacts["mf"]))
    members = {"two_tower": Member(LocalHandle(tt), TwoTowerMember.capabilities),
               "mf": Member(LocalHandle(mf), MFMember.capabilities)}
    router = EnsembleRouter(members, None, LocalHandle(ItemCatalogCore()), {"two_tower": 0.7, "mf": 0.3},
                            catalog_poll_s=0.3)
    users = [int(u) for u in serving_artifacts["data"].user_ids[:30]]
    # the tables hold the members' arithmetic: MF's global mean + biases + factors, the two-tower's index
    art = load_artifact(serving_artifacts["v1"])
    emb = art.embeddings
    u = 3
    head = art.model.ranking_head == "interest"
    expect_tt = (emb["item_interest"].numpy() @ emb["user_interest"].numpy()[u] if head else
                 emb["item_vectors"].numpy() @ emb["user_vectors"].numpy()[u] + emb["item_bias"].numpy())
    np.testing.assert_allclose(tt.local.member.table.scores(u), expect_tt, rtol=1e-5, atol=1e-6)
    a = mf.local.member.art
    np.testing.assert_allclose(mf.local.member.table.scores(u), mf.local.member._scores(a.user_bias[u], a.user_factors[u]))

    async def scenario():
        first = [await router.recommend(RecommendRequest(user_id=x, k=5)) for x in users]
        calls = tt.calls + mf.calls
        tt.local.member = TwoTowerMember(serving_artifacts["v2"])  # what reconfigure does in a replica
        before = await router.recommend(RecommendRequest(user_id=users[0], k=5))
        await asyncio.sleep(0.35)
        await router.recommend(RecommendRequest(user_id=users[0], k=5))  # starts the look in the background
        await asyncio.sleep(0.05)
        after = await router.recommend(RecommendRequest(user_id=users[0], k=5))
        return first, calls, before, after

    first, calls, before, after = asyncio.run(scenario())
    assert calls <= 8  # one table fetch per member (+ sha and id look-ups), not a call per request (60)
    old, new = (TwoTowerMember(serving_artifacts[v]).sha256[:12] for v in ("v1", "v2"))
    assert {r["versions"]["two_tower"] for r in first} == {old} and before["versions"]["two_tower"] == old
    assert after["versions"]["two_tower"] == new
    # the answer from local tables equals fusing the members' own answers
    for r, x in zip(first[:5], users):
        assert [i["member_scores"]["mf"] for i in r["items"]] == pytest.approx(
            [float(mf.local.member.predict(x, [mf.local.member.item_ids.index(i["item_id"])])["ratings"][0])
             for i in r["items"]], rel=1e-6)
