"""``lmrec.serving.batch`` (what each actor of ``lmrec recommend-batch`` runs), without Ray: a user's rows are the
artifact's own top k with the user's training items excluded, for every kind (the offline recommender, as
evaluation loads it; the offline ``FusedEnsemble`` for an ensemble artifact)."""

from __future__ import annotations

import numpy as np
import pytest

from lmrec.artifacts.manifest import ArtifactError
from lmrec.serving.batch import BatchRecommender
from lmrec.strategies.fusion import top_k

K = 10


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _offline(kind: str, folder):
    from lmrec.artifacts import load_any

    return load_any(folder).recommender


def _seen(data, users: np.ndarray) -> np.ndarray:
    """[len(users), n_items] True where the user has a training row (what evaluation excludes)."""
    seen = np.zeros((len(users), data.n_items), dtype=bool)
    rows = data.train[data.train["user_idx"].isin(users)]
    seen[np.searchsorted(users, rows["user_idx"].to_numpy()), rows["item_idx"].to_numpy()] = True
    return seen


def _by_user(columns: dict) -> dict:
    out: dict = {}
    for user, rank, item, score in zip(*(columns[c] for c in ("user_id", "rank", "item_id", "score"))):
        out.setdefault(_plain(user), []).append((int(rank), _plain(item), float(score)))
    return out


def _assert_top_k(got: dict, data, users: np.ndarray, scores: np.ndarray, seen: np.ndarray, label: str) -> None:
    for u, row, seen_row in zip(users, scores, seen):
        want = top_k(np.where(seen_row, -np.inf, row), K)
        rows = got[_plain(data.user_ids[u])]
        assert [r for r, _, _ in rows] == list(range(1, len(want) + 1)), f"{label}, user {u}"
        assert [i for _, i, _ in rows] == [_plain(data.item_ids[i]) for i in want], f"{label}, user {u}"
        np.testing.assert_allclose([s for _, _, s in rows], row[want], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,key", [("two_tower", "v1"), ("mf", "mf"), ("ease", "ease"), ("item_knn", "item_knn")])
def test_batch_top_k_is_the_artifacts_own_ranking_without_seen_items(serving_artifacts, kind, key):
    data = serving_artifacts["data"]
    rec = BatchRecommender(serving_artifacts[key], k=K)
    assert rec.kind == kind and len(rec.user_ids) == data.n_users
    users = np.arange(0, data.n_users, 2)
    got = _by_user(rec.recommend(users))
    assert set(got) == {_plain(data.user_ids[u]) for u in users}
    raw = np.asarray(_offline(kind, serving_artifacts[key]).score_items(users), dtype=np.float64)
    _assert_top_k(got, data, users, raw, _seen(data, users), kind)


def test_ensemble_artifact_rows_are_the_offline_fused_ensembles(serving_artifacts, tmp_path):
    from lmrec.artifacts.ensemble import member_manifest_sha256, save_ensemble_artifact
    from lmrec.strategies.ensemble import FusedEnsemble

    data = serving_artifacts["data"]
    members = {"two_tower": str(serving_artifacts["v1"].resolve()), "mf": str(serving_artifacts["mf"].resolve()),
               "ease": str(serving_artifacts["ease"].resolve())}
    weights = {"two_tower": 0.3, "mf": 0.2, "ease": 0.5}
    folder = save_ensemble_artifact(tmp_path / "ens", FusedEnsemble(dict.fromkeys(members), weights=weights,
                                                                    rating_weights={"two_tower": 0.5, "mf": 0.5}),
                                    members=members, name="batch-ensemble",
                                    member_sha256={m: member_manifest_sha256(p) for m, p in members.items()})
    rec = BatchRecommender(folder, k=K)
    assert rec.kind == "ensemble"
    offline = FusedEnsemble({m: _offline(m, loc) for m, loc in members.items()}, weights=weights).set_seen(
        data.train, data.n_users, data.n_items)
    users = np.arange(0, data.n_users, 3)
    fused = offline.score_items(users).astype(np.float64)  # seen items are -inf already
    _assert_top_k(_by_user(rec.recommend(users)), data, users, fused, np.zeros_like(fused, dtype=bool), "ensemble")


def test_without_exclusion_seen_items_may_rank_and_fewer_items_give_fewer_rows(serving_artifacts):
    data = serving_artifacts["data"]
    users = np.arange(data.n_users)
    kept = BatchRecommender(serving_artifacts["ease"], k=data.n_items, exclude_seen=True).recommend(users)
    # every user gets exactly their unseen items: fewer than k rows
    counts = _by_user(kept)
    unseen = data.n_items - _seen(data, users).sum(1)
    assert [len(counts[_plain(data.user_ids[u])]) for u in users] == unseen.tolist()
    everything = BatchRecommender(serving_artifacts["ease"], k=5, exclude_seen=False).recommend(users)
    assert len(everything["user_id"]) == 5 * data.n_users
    seen_pairs = set(zip(data.train["user_idx"].map(lambda u: _plain(data.user_ids[u])),
                         data.train["item_idx"].map(lambda i: _plain(data.item_ids[i]))))
    assert any((_plain(u), _plain(i)) in seen_pairs for u, i in zip(everything["user_id"], everything["item_id"]))


def test_user_ids_bad_k_and_folders_that_are_no_ranking_artifact(serving_artifacts, tmp_path):
    rec = BatchRecommender(serving_artifacts["mf"], k=3)
    data = serving_artifacts["data"]
    assert rec.user_index([_plain(data.user_ids[4]), str(_plain(data.user_ids[0]))]).tolist() == [4, 0]
    with pytest.raises(ValueError, match="not in the artifact"):
        rec.user_index(["no-such-user"])
    with pytest.raises(ValueError, match="k must be >= 1"):
        BatchRecommender(serving_artifacts["mf"], k=0)
    with pytest.raises(ArtifactError, match="not an artifact folder"):
        BatchRecommender(tmp_path / "missing")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "manifest.json").write_text('{"format": "lmrec.meta_learning/1"}')
    with pytest.raises(ArtifactError, match="does not rank known users"):
        BatchRecommender(tmp_path / "meta")
