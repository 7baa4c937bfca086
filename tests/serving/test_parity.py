"""Offline = served, for every artifact kind: the numbers evaluation computes from an artifact (its recommender; the
offline ``FusedEnsemble`` for an ensemble artifact) are the service's answers for the same user and items,
``/predict``'s clamping to the training ratings' range included.

Served here: the bare app on a loopback port (the routes and router the Serve ingress runs, members in-process),
one service per kind: the two-tower alone, or the two-tower (the text member every service has) at weight 0
beside the kind under test at weight 1, so that ``/recommend`` ranks by that kind alone. Through real Ray Serve:
``test_three_members.py::test_predict_equals_the_offline_members`` (it reuses that module's Serve instance).
The two-tower and MF artifacts are ``narrow_artifacts``: their rating range narrowed to the middle half of their
predictions, so clamping binds for about half of the pairs and a missing clamp shows.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from lmrec.strategies.fusion import top_k, zscore

KINDS = ("two_tower", "mf", "ease", "item_knn")
WRITE_TOKEN = "parity-test-write-token"


def _plain(v):
    return v.item() if hasattr(v, "item") else v


@pytest.fixture(scope="module")
def kind_artifacts(serving_artifacts, narrow_artifacts) -> dict:
    return {"two_tower": narrow_artifacts["two_tower"], "mf": narrow_artifacts["mf"],
            "ease": serving_artifacts["ease"], "item_knn": serving_artifacts["item_knn"]}


def _offline(kind: str, folder):
    """The artifact's recommender, as evaluation and the ensemble job load it."""
    from lmrec.artifacts.item_item import load_item_item_artifact
    from lmrec.artifacts.mf import load_mf_artifact
    from lmrec.artifacts.two_tower import load_artifact

    load = {"two_tower": load_artifact, "mf": load_mf_artifact, "ease": load_item_item_artifact,
            "item_knn": load_item_item_artifact}[kind]
    return load(folder).recommender


@pytest.fixture(scope="module")
def served(kind_artifacts, on_loopback):
    """``served(kind)``: the URL of a bare app that ranks by ``kind`` alone (opened once per kind)."""
    import contextlib

    from lmrec.serving.app import build_bare_app
    from lmrec.serving.auth import Tokens

    urls, stack = {}, contextlib.ExitStack()

    def url(kind: str) -> str:
        if kind not in urls:
            args = {"two_tower_artifact": str(kind_artifacts["two_tower"]),
                    "weights": {"two_tower": 1.0 if kind == "two_tower" else 0.0, "mf": 0.0}}
            if kind != "two_tower":
                args |= {f"{kind}_artifact": str(kind_artifacts[kind]), "weights": {"two_tower": 0.0, kind: 1.0}}
            app = build_bare_app(args, tokens=Tokens.of(write=WRITE_TOKEN))
            urls[kind] = stack.enter_context(on_loopback(app))
        return urls[kind]

    with stack:
        yield url


def _seen(data, users: np.ndarray) -> np.ndarray:
    """[len(users), n_items] True where the user has a training row (what evaluation excludes)."""
    seen = np.zeros((len(users), data.n_items), dtype=bool)
    rows = data.train[data.train["user_idx"].isin(users)]
    seen[np.searchsorted(users, rows["user_idx"].to_numpy()), rows["item_idx"].to_numpy()] = True
    return seen


def _history_fits(data, users: np.ndarray, kind_artifacts) -> np.ndarray:
    """Users whose whole training history fits the two-tower's ``max_history`` (see the xfail test below)."""
    from lmrec.artifacts.two_tower import load_artifact

    width = load_artifact(kind_artifacts["two_tower"]).model.max_history
    counts = np.bincount(data.train["user_idx"].to_numpy(), minlength=data.n_users)
    return counts[users] <= width


def _recommend_parity(kind, users, serving_artifacts, kind_artifacts, served):
    data = serving_artifacts["data"]
    raw = np.asarray(_offline(kind, kind_artifacts[kind]).score_items(users), dtype=np.float64)
    seen = _seen(data, users)
    url = served(kind)
    for u, row, seen_row in zip(users, raw, seen):
        r = requests.post(url + "/recommend", json={"user_id": _plain(data.user_ids[u]), "k": 10}, timeout=30)
        assert r.status_code == 200, r.text
        got = r.json()["items"]
        want = top_k(np.where(seen_row, -np.inf, row), 10)
        assert [i["item_id"] for i in got] == [_plain(data.item_ids[i]) for i in want], f"{kind}, user {u}"
        np.testing.assert_allclose([i["member_scores"][kind] for i in got], row[want], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([i["score"] for i in got], zscore(row, ~seen_row)[want], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_recommend_ranks_as_the_offline_recommender(kind, serving_artifacts, kind_artifacts, served):
    """/recommend's top 10 of a user's unseen items, their raw member scores and fused scores are the offline
    recommender's (the fused score of one member is its z-score over the unseen items)."""
    data = serving_artifacts["data"]
    users = np.arange(0, data.n_users, 3)
    if kind == "two_tower":  # alone, it knows a user's training items only as far as its history holds them
        users = users[_history_fits(data, users, kind_artifacts)]
        assert len(users) >= 5
    _recommend_parity(kind, users, serving_artifacts, kind_artifacts, served)


def test_two_tower_alone_excludes_every_training_item(serving_artifacts, kind_artifacts, served):
    data = serving_artifacts["data"]
    users = np.arange(data.n_users)
    users = users[~_history_fits(data, users, kind_artifacts)]
    if not len(users):
        pytest.skip("no user's history is longer than max_history: nothing to show")
    _recommend_parity("two_tower", users, serving_artifacts, kind_artifacts, served)


@pytest.mark.parametrize("kind", ["two_tower", "mf"])
def test_predict_equals_the_offline_ratings_clamped(kind, serving_artifacts, kind_artifacts, narrow_artifacts,
                                                    served):
    """/predict's member rating and blended rating for every item are the offline recommender's ``predict``,
    clamped to the training ratings' range; the clamp binds for many pairs (the range is narrowed)."""
    data = serving_artifacts["data"]
    lo, hi = narrow_artifacts["range"][kind]
    rec = _offline(kind, kind_artifacts[kind])
    items = np.arange(data.n_items)
    at_bounds = 0
    for u in range(0, data.n_users, 4):
        offline = rec.predict(np.full(len(items), u), items)
        at_bounds += int(((offline == np.float32(lo)) | (offline == np.float32(hi))).sum())
        body = {"user_id": _plain(data.user_ids[u]), "item_ids": [_plain(data.item_ids[i]) for i in items]}
        r = requests.post(served(kind) + "/predict", json=body, timeout=30)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert [p["item_id"] for p in preds] == body["item_ids"]
        member = np.array([p["member_ratings"][kind] for p in preds], dtype=np.float32)
        np.testing.assert_array_equal(member, offline)
        rating = np.array([p["rating"] for p in preds])
        np.testing.assert_array_equal(rating.astype(np.float32), offline)
        assert (rating >= np.float32(lo)).all() and (rating <= np.float32(hi)).all()
    assert at_bounds > data.n_items  # clamping really happened, offline and so served


def test_predict_clamps_items_added_at_run_time(serving_artifacts, narrow_artifacts, served):
    """A run-time item's text-only rating is clamped to the same range as the artifact's items."""
    lo, hi = narrow_artifacts["range"]["two_tower"]
    url = served("two_tower")
    auth = {"Authorization": f"Bearer {WRITE_TOKEN}"}
    texts = ["A feel-good family comedy. Genres: Comedy, Children's.", "A bleak war epic. Genres: War, Drama.",
             "Robots in space, again. Genres: Sci-Fi, Action."]
    ids = [910001 + n for n in range(len(texts))]
    for item_id, text in zip(ids, texts):
        assert requests.post(url + "/items", json={"item_id": item_id, "text": text}, headers=auth,
                             timeout=60).status_code == 201
    data = serving_artifacts["data"]
    ratings = []
    for u in range(0, data.n_users, 6):
        r = requests.post(url + "/predict", json={"user_id": _plain(data.user_ids[u]), "item_ids": ids}, timeout=30)
        assert r.status_code == 200, r.text
        ratings += [p["rating"] for p in r.json()["predictions"]]
    assert all(np.float32(lo) <= x <= np.float32(hi) for x in ratings)


@pytest.fixture(scope="module")
def ensemble_dir(serving_artifacts, kind_artifacts, tmp_path_factory):
    """An ensemble artifact over the narrowed two-tower and MF and EASE, with rating weights of its own."""
    from lmrec.artifacts.ensemble import member_manifest_sha256, save_ensemble_artifact
    from lmrec.strategies.ensemble import FusedEnsemble

    members = {m: str(kind_artifacts[m].resolve()) for m in ("two_tower", "mf", "ease")}
    ens = FusedEnsemble(dict.fromkeys(members), weights={"two_tower": 0.3, "mf": 0.2, "ease": 0.5},
                        rating_weights={"two_tower": 0.35, "mf": 0.65})
    return save_ensemble_artifact(tmp_path_factory.mktemp("parity-ens") / "ensemble", ens, members=members,
                                  member_sha256={m: member_manifest_sha256(p) for m, p in members.items()},
                                  name="parity-ensemble")


def test_ensemble_artifact_served_equals_offline(serving_artifacts, ensemble_dir, narrow_artifacts, on_loopback):
    """The ensemble kind: the bare app built from the artifact answers /recommend and /predict as the offline
    ``FusedEnsemble`` of the same members, ranking weights and fitted rating weights (Serve once dropped the
    rating weights)."""
    from lmrec.artifacts.ensemble import load_ensemble_artifact
    from lmrec.serving.app import build_bare_app
    from lmrec.strategies.ensemble import FusedEnsemble

    data = serving_artifacts["data"]
    art = load_ensemble_artifact(ensemble_dir)
    offline = FusedEnsemble({m: _offline(m, loc) for m, loc in art.members.items()}, weights=art.weights,
                            rating_weights=art.rating_weights).set_seen(data.train, data.n_users, data.n_items)
    users = np.arange(0, data.n_users, 4)
    fused = offline.score_items(users)
    items = np.arange(data.n_items)
    bounds = np.array(list(narrow_artifacts["range"].values()), dtype=np.float32)
    with on_loopback(build_bare_app({"ensemble_artifact": str(ensemble_dir)})) as url:
        version = requests.get(url + "/version", timeout=30).json()
        assert version["weights"] == art.weights
        for u, row in zip(users, fused):
            user = _plain(data.user_ids[u])
            got = requests.post(url + "/recommend", json={"user_id": user, "k": 10}, timeout=30).json()["items"]
            want = top_k(row, 10)
            assert [i["item_id"] for i in got] == [_plain(data.item_ids[i]) for i in want], f"user {u}"
            np.testing.assert_allclose([i["score"] for i in got], row[want], rtol=1e-4, atol=1e-5)
            body = {"user_id": user, "item_ids": [_plain(data.item_ids[i]) for i in items]}
            preds = requests.post(url + "/predict", json=body, timeout=30).json()["predictions"]
            rating = np.array([p["rating"] for p in preds])
            np.testing.assert_array_equal(rating.astype(np.float32), offline.predict(np.full(len(items), u), items))
            assert set(preds[0]["member_ratings"]) == {"two_tower", "mf"}  # EASE ranks only
            # a weighted mean of clamped ratings: inside the members' ranges (to the last bit of the weights' sum)
            assert (rating >= bounds[:, 0].min() - 1e-6).all() and (rating <= bounds[:, 1].max() + 1e-6).all()
