"""``/recommend`` through the item index (``lmrec.serving.retrieval``): a two-tower served alone above
``exact_below`` answers what scoring every item answers (items, fused and member scores), with exclusions,
candidates and filters honoured, items added at run time retrievable, and a new index after a hot swap."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lmrec.artifacts.tables import ScoreTable
from lmrec.data.synthetic import clustered_vectors
from lmrec.serving.retrieval import TableIndex
from lmrec.strategies.fusion import fuse_scores, top_k

pytest.importorskip("faiss")


def test_table_index_gives_the_fused_top_k_of_exact_scoring():
    """5,000 clustered items in 128 IVF cells, 16 probed: the top 50 of every user, with 40 seen items and with a
    30% filter, holds ≥ 98% of the exact top 50 (0.998), and every fused score is the exact z-score."""
    items, users = clustered_vectors(5_000, 20, 16, seed=0)
    rng = np.random.default_rng(0)
    bias = rng.normal(0, 0.3, len(items)).astype(np.float32)
    seen = [rng.choice(len(items), 40, replace=False) for _ in users]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seen])])
    table = ScoreTable("sha", list(range(len(users))), list(range(len(items))), users, items, bias, None, indptr,
                       np.concatenate(seen))
    index = TableIndex(table, exact_below=0, nprobe=16)
    assert index.kind == "ivf"
    passes = rng.random(len(items)) < 0.3
    hits = []
    for u in range(len(users)):
        for allowed in (None, passes):
            mask = np.ones(len(items), dtype=bool) if allowed is None else allowed.copy()
            mask[seen[u]] = False
            fused = fuse_scores({"two_tower": table.scores(u)}, {"two_tower": 1.0}, mask)
            truth = top_k(fused, 50)
            ids, member, got = index.recommend(u, 50, seen[u], None if allowed is None else np.flatnonzero(allowed))
            assert mask[ids].all() and len(ids) == 50
            np.testing.assert_allclose(member, table.scores(u)[ids], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got, fused[ids], rtol=1e-5, atol=1e-5)
            hits.append(len(np.intersect1d(ids, truth)) / 50)
    assert np.mean(hits) >= 0.98


def _swappable(member):
    """A member's in-process handle whose member can be replaced (what ``reconfigure`` does in a replica)."""
    from lmrec.serving.app import LocalHandle, _LocalMember
    from lmrec.serving.protocol import Member

    local = _LocalMember(member)
    return local, Member(LocalHandle(local), member.capabilities)


@pytest.fixture(scope="module")
def texted(serving_artifacts, tmp_path_factory, with_item_texts):
    """Both two-tower versions with the item texts in the artifact (so that ``filter`` works on a two-tower alone)."""
    root = tmp_path_factory.mktemp("retrieval")
    for v in ("v1", "v2"):
        with_item_texts(serving_artifacts[v], root / v, serving_artifacts["data"].item_texts)
    return {v: root / v for v in ("v1", "v2")}


def test_indexed_recommend_equals_exact_through_adds_and_a_swap(serving_artifacts, texted):
    """Two routers over one two-tower: one scores every item, one searches an IVF index (exact_below=0, every cell
    probed). Same items, fused and member scores for plain requests, exclusions, candidates, filters and
    explanations; an item added through the indexed router enters its index and ranks as the exact router ranks
    it; after a hot swap the index is the new artifact's, the added item in it again."""
    from lmrec.serving.api import AddItemRequest, ItemFilter, RecommendRequest
    from lmrec.serving.app import LocalHandle, _LocalEncoder
    from lmrec.serving.catalog import ItemCatalogCore
    from lmrec.serving.encoder_service import TextEncoderCore
    from lmrec.serving.members import TwoTowerMember
    from lmrec.serving.router import EnsembleRouter

    local, member = _swappable(TwoTowerMember(texted["v1"]))
    encoder = _LocalEncoder(TextEncoderCore(texted["v1"]))
    catalog = LocalHandle(ItemCatalogCore())
    routers = [EnsembleRouter({"two_tower": member}, LocalHandle(encoder), catalog, {"two_tower": 0.7},
                              catalog_poll_s=0.2, **kw) for kw in ({}, {"exact_below": 0, "nprobe": 64})]
    exact, indexed = routers
    data = serving_artifacts["data"]
    users = [int(u) for u in data.user_ids[:8]]
    items = [int(i) for i in data.item_ids]
    requests = [dict(k=10), dict(k=15, exclude_seen=False), dict(k=10, exclude_item_ids=items[:30] + [10**9]),
                dict(k=5, candidate_item_ids=items[::7]), dict(k=10, filter=ItemFilter(contains_any=["drama"])),
                dict(k=3, explain=True)]

    async def both(**req) -> list[dict]:
        """The exact router's answer and the indexed router's, checked to come from its index."""
        want, got = [await r.recommend(RecommendRequest(**req)) for r in routers]
        direct = await indexed._recommend_indexed(RecommendRequest(**req), indexed._index)
        assert direct is not None  # the index answered, not the exact fallback
        same(direct, got)
        return want, got

    def same(a: dict, b: dict) -> None:
        assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
        assert [i["score"] for i in a["items"]] == pytest.approx([i["score"] for i in b["items"]], rel=1e-4, abs=1e-5)
        for x, y in zip(a["items"], b["items"]):
            assert x["member_scores"]["two_tower"] == pytest.approx(y["member_scores"]["two_tower"], rel=1e-5,
                                                                    abs=1e-6)
            assert x["text"] == y["text"] and x.get("because_you_liked") == y.get("because_you_liked")
        assert a["versions"] == b["versions"]

    async def scenario():
        for user in users:
            for req in requests:
                want, got = await both(user_id=user, **req)
                same(want, got)
                assert len(got["items"]) == req["k"]
        kinds = exact._index, indexed._index.kind
        new = "a heist comedy set on a space station"
        await indexed.add_item(AddItemRequest(item_id="new-1", text=new.title() + ". Genres: Comedy."))
        await exact.added.sync(force=True)
        found = await indexed.recommend(RecommendRequest(user_id=users[0], k=3, candidate_item_ids=["new-1", 1]))
        added_rows = indexed._index.n_added
        for user in users:
            same(*await both(user_id=user, k=len(items)))  # every item ranked: the added one among them
            want, got = await both(user_id=user, k=5, filter=ItemFilter(contains_any=["heist"]))
            same(want, got)
            assert "new-1" in [i["item_id"] for i in got["items"]]
        local.member = TwoTowerMember(texted["v2"])  # the hot swap, member and encoder
        encoder.core = TextEncoderCore(texted["v2"])
        await asyncio.sleep(0.25)
        for r in routers:  # a request after poll_s starts the look; waiting for it makes the test deterministic
            await r.recommend(RecommendRequest(user_id=users[0]))
            await r._tables_look.start()
        swapped = await both(user_id=users[1], k=len(items))
        same(*swapped)
        return kinds, found, added_rows, swapped[1], indexed._index

    kinds, found, added_rows, after, index = asyncio.run(scenario())
    assert kinds == (None, "ivf")
    assert "new-1" in [i["item_id"] for i in found["items"]] and added_rows == 1
    v2 = TwoTowerMember(texted["v2"]).sha256
    assert index.sha256 == v2 and after["versions"]["two_tower"] == v2[:12]
    assert index.n_added == 1 and "new-1" in [i["item_id"] for i in after["items"]]


def test_retrieval_args_reach_the_bare_app(serving_artifacts, on_loopback):
    """``retrieval`` in the app args is validated and reaches the router: a forced index answers as exact scoring."""
    import requests

    from lmrec.serving.app import ServeAppArgs, build_bare_app
    from lmrec.serving.auth import Tokens

    v1 = str(serving_artifacts["v1"])
    with pytest.raises(ValueError, match="exact_below"):
        ServeAppArgs(two_tower_artifact=v1, retrieval={"exact_below": -1})
    with pytest.raises(ValueError, match="nprob"):
        ServeAppArgs(two_tower_artifact=v1, retrieval={"nprobe": 64, "nprob": 3})
    body = {"user_id": int(serving_artifacts["data"].user_ids[0]), "k": 10}
    answers = []
    for retrieval in ({}, {"exact_below": 0, "nprobe": 64}):
        with on_loopback(build_bare_app({"two_tower_artifact": v1, "retrieval": retrieval}, tokens=Tokens())) as url:
            answers.append(requests.post(url + "/recommend", json=body, timeout=30).json()["items"])
    assert [i["item_id"] for i in answers[0]] == [i["item_id"] for i in answers[1]]
    assert [i["score"] for i in answers[0]] == pytest.approx([i["score"] for i in answers[1]], rel=1e-4, abs=1e-5)
