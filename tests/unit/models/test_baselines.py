"""The classic baselines: each learns the structure planted in a small synthetic problem, survives users
and items it never saw, and the closed forms match independent references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from lmrec.data.schema import DataError
from lmrec.models.base import Recommender
from lmrec.models.baselines import (
    BASELINES,
    EASE,
    BiasedMean,
    BiasedMF,
    GlobalMean,
    ItemKNN,
    Popularity,
    TfidfContent,
    make_baseline,
)

@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """BiasedMF's small steps run several times slower with 2 threads on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


N_GROUPS, USERS_PER_GROUP, ITEMS_PER_GROUP = 4, 30, 20
N_USERS, N_ITEMS = N_GROUPS * USERS_PER_GROUP, N_GROUPS * ITEMS_PER_GROUP


def frame(u, i, r) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_idx": np.asarray(u, np.int64),
            "item_idx": np.asarray(i, np.int64),
            "rating": np.asarray(r, np.float32),
            "timestamp": np.zeros(len(u), np.int64),
        }
    )


def rmse(model, test: pd.DataFrame) -> float:
    pred = model.predict(test["user_idx"].to_numpy(), test["item_idx"].to_numpy())
    return float(np.sqrt(np.mean((pred - test["rating"].to_numpy()) ** 2)))


def recall_at(scores: np.ndarray, train: pd.DataFrame, test: pd.DataFrame, k: int = 10) -> float:
    """Share of held-out items found in each user's top k (train items excluded), averaged over users."""
    scores = scores.astype(np.float64).copy()
    scores[train["user_idx"], train["item_idx"]] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    per_user = []
    for user, held in test.groupby("user_idx")["item_idx"]:
        per_user.append(len(set(top[user]) & set(held)) / min(len(held), k))
    return float(np.mean(per_user))


@pytest.fixture(scope="module")
def taste_groups() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users in 4 taste groups, each mostly choosing (and rating high) its own block of 20 items.

    Within a block, popularity falls off (item 0 of a block is chosen most), so popularity is a real but
    weak signal and the group structure is the strong one. Held out: 3 in-group items per user.
    """
    rng = np.random.default_rng(7)
    rows = []
    for user in range(N_USERS):
        group = user // USERS_PER_GROUP
        block = np.arange(ITEMS_PER_GROUP) + group * ITEMS_PER_GROUP
        p = 1.0 / np.arange(1, ITEMS_PER_GROUP + 1)
        own = rng.choice(block, size=10, replace=False, p=p / p.sum())
        other = rng.choice(np.setdiff1d(np.arange(N_ITEMS), block), size=3, replace=False)
        rows += [(user, i, rng.choice([4.0, 5.0]), True) for i in own]
        rows += [(user, i, rng.choice([1.0, 2.0]), False) for i in other]
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "own"])
    held = df[df["own"]].groupby("user_idx").sample(n=3, random_state=0).index
    test, train = df.loc[held], df.drop(index=held)
    return frame(train.user_idx, train.item_idx, train.rating), frame(test.user_idx, test.item_idx, test.rating)


@pytest.fixture(scope="module")
def low_rank_ratings() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ratings = 3 + user bias + item bias + rank-3 interaction + noise, 40% observed, 80/20 split."""
    rng = np.random.default_rng(3)
    n_u, n_i = 150, 120
    b_u, b_i = rng.normal(0, 0.4, n_u), rng.normal(0, 0.4, n_i)
    p, q = rng.normal(0, 0.6, (n_u, 3)), rng.normal(0, 0.6, (n_i, 3))
    full = 3 + b_u[:, None] + b_i[None, :] + p @ q.T + rng.normal(0, 0.3, (n_u, n_i))
    u, i = np.nonzero(rng.random((n_u, n_i)) < 0.4)
    r = np.clip(full[u, i], 1, 5)
    is_test = rng.random(len(u)) < 0.2
    return frame(u[~is_test], i[~is_test], r[~is_test]), frame(u[is_test], i[is_test], r[is_test])


# --- rating models ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", [BiasedMean(), BiasedMF(dim=8, epochs=150), ItemKNN(k=30)], ids=lambda m: m.name
)
def test_rating_models_beat_the_global_mean(model, low_rank_ratings):
    train, test = low_rank_ratings
    floor = rmse(GlobalMean().fit(train, 150, 120), test)
    got = rmse(model.fit(train, 150, 120), test)
    assert model.rates is True
    assert got < floor - 0.1, (model.name, got, floor)


def test_biased_mf_learns_the_interaction_biases_cannot(low_rank_ratings):
    train, test = low_rank_ratings
    biases_only = rmse(BiasedMean().fit(train, 150, 120), test)
    assert rmse(BiasedMF(dim=8, epochs=150).fit(train, 150, 120), test) < biases_only - 0.05


def test_biased_mean_recovers_planted_biases():
    rng = np.random.default_rng(0)
    b_u, b_i = rng.normal(0, 0.5, 100), rng.normal(0, 0.5, 80)
    u, i = np.nonzero(rng.random((100, 80)) < 0.5)
    r = 3.5 + b_u[u] + b_i[i] + rng.normal(0, 0.2, len(u))
    model = BiasedMean().fit(frame(u, i, r), 100, 80)
    assert np.corrcoef(model.user_bias_, b_u)[0, 1] > 0.95
    assert np.corrcoef(model.item_bias_, b_i)[0, 1] > 0.95


def test_predictions_are_clamped_to_the_train_range(low_rank_ratings):
    train, _ = low_rank_ratings
    model = BiasedMF(dim=8, epochs=50).fit(train, 150, 120)
    uu, ii = np.meshgrid(np.arange(150), np.arange(120), indexing="ij")
    pred = model.predict(uu.ravel(), ii.ravel())
    assert pred.dtype == np.float32
    assert pred.min() >= train["rating"].min() and pred.max() <= train["rating"].max()


def test_biased_mf_is_deterministic_given_a_seed(low_rank_ratings):
    train, _ = low_rank_ratings
    a = BiasedMF(dim=8, epochs=5, seed=1).fit(train, 150, 120)
    torch.set_num_threads(2)  # multi-threaded backward passes must not change the result
    try:
        b = BiasedMF(dim=8, epochs=5, seed=1).fit(train, 150, 120)
    finally:
        torch.set_num_threads(1)
    c = BiasedMF(dim=8, epochs=5, seed=2).fit(train, 150, 120)
    assert np.array_equal(a.score_items(np.arange(150)), b.score_items(np.arange(150)))
    assert not np.array_equal(a.item_factors_, c.item_factors_)
    mini = [BiasedMF(dim=8, epochs=3, batch_size=512, seed=5).fit(train, 150, 120) for _ in range(2)]
    assert np.array_equal(mini[0].item_factors_, mini[1].item_factors_)


def test_biased_mf_on_movielens_u1_beats_surprise_svd_level(data_dir: Path):
    """Default hyperparameters on the standard u1 split: RMSE ≤ 0.94 (Surprise SVD defaults: 0.951)."""
    cols = ["user_idx", "item_idx", "rating", "timestamp"]
    train = pd.read_csv(data_dir / "ml-100k" / "u1.base", sep="\t", names=cols)
    test = pd.read_csv(data_dir / "ml-100k" / "u1.test", sep="\t", names=cols)
    for df in (train, test):
        df[["user_idx", "item_idx"]] -= 1  # u1 ids are 1-based and contiguous: 943 users, 1,682 items
    model = BiasedMF().fit(train, 943, 1682)
    assert rmse(model, test) <= 0.94
    assert model.loss_history_[-1] < model.loss_history_[0]


# --- ranking models -----------------------------------------------------------------------------


def test_popularity_beats_random_and_knn_ease_beat_popularity(taste_groups):
    train, test = taste_groups
    users = np.arange(N_USERS)
    rng = np.random.default_rng(0)
    random_recall = recall_at(rng.random((N_USERS, N_ITEMS)), train, test)
    pop = recall_at(Popularity().fit(train, N_USERS, N_ITEMS).score_items(users), train, test)
    knn = recall_at(ItemKNN(k=20).fit(train, N_USERS, N_ITEMS).score_items(users), train, test)
    ease = recall_at(EASE(l2=10.0).fit(train, N_USERS, N_ITEMS).score_items(users), train, test)
    assert pop > random_recall + 0.05
    # The planted group structure is what kNN and EASE exploit and popularity cannot.
    assert knn > pop + 0.2 and ease > pop + 0.2, (random_recall, pop, knn, ease)


def test_tfidf_ranks_cold_items_by_their_text(taste_groups):
    """Half the items of every block never appear in train; only their text ('group g' words) tells."""
    train, _ = taste_groups
    rng = np.random.default_rng(1)
    cold = np.concatenate([g * ITEMS_PER_GROUP + rng.choice(ITEMS_PER_GROUP, 10, replace=False) for g in range(4)])
    warm_train = train[~train["item_idx"].isin(cold)]
    words = ["western saloon outlaw", "galaxy starship alien", "romance wedding love", "murder detective clue"]
    texts = [f"film {i}. {words[i // ITEMS_PER_GROUP]}" for i in range(N_ITEMS)]
    model = TfidfContent(texts).fit(warm_train, N_USERS, N_ITEMS)
    scores = model.score_items(np.arange(N_USERS))[:, cold]
    group_of_cold = cold // ITEMS_PER_GROUP
    own = group_of_cold[None, :] == (np.arange(N_USERS) // USERS_PER_GROUP)[:, None]
    # Every user scores the cold items of their own group above every other cold item.
    assert (np.where(own, scores, np.inf).min(axis=1) > np.where(own, -np.inf, scores).max(axis=1)).all()
    assert model.rates is False


def test_tfidf_needs_one_text_per_item(taste_groups):
    train, _ = taste_groups
    with pytest.raises(ValueError, match="one per item"):
        TfidfContent(["a", "b"]).fit(train, N_USERS, N_ITEMS)


def test_tfidf_implicit_ratings_still_build_profiles():
    """All ratings 1.0: weights are all zero, so each user falls back to their plain history."""
    texts = ["cat kitten", "cat whiskers", "dog puppy", "dog bark"]
    model = TfidfContent(texts).fit(frame([0, 1], [0, 2], [1.0, 1.0]), 2, 4)
    scores = model.score_items(np.array([0, 1]))
    assert scores[0, 1] > scores[0, 3] and scores[1, 3] > scores[1, 1]


# --- closed forms -------------------------------------------------------------------------------


def test_ease_matches_column_wise_ridge_reference():
    """EASE's constrained problem splits by column: B[:, j] is ridge regression of x_j on the other items."""
    rng = np.random.default_rng(0)
    X = (rng.random((12, 6)) < 0.4).astype(np.float64)
    u, i = np.nonzero(X)
    lam = 2.0
    model = EASE(l2=lam).fit(frame(u, i, np.full(len(u), 3.0)), 12, 6)
    assert np.all(np.diag(model.B_) == 0)
    reference = np.zeros((6, 6))
    for j in range(6):
        others = np.delete(np.arange(6), j)
        Xo = X[:, others]
        reference[others, j] = np.linalg.solve(Xo.T @ Xo + lam * np.eye(5), Xo.T @ X[:, j])
    np.testing.assert_allclose(model.B_, reference, atol=1e-5)
    np.testing.assert_allclose(model.score_items(np.arange(12)), X @ reference, atol=1e-5)


def test_item_knn_similarity_is_top_k_cosine():
    rng = np.random.default_rng(0)
    X = (rng.random((30, 10)) < 0.3).astype(np.float64)
    u, i = np.nonzero(X)
    train = frame(u, i, np.full(len(u), 4.0))
    full = cosine_similarity(X.T)
    np.fill_diagonal(full, 0)
    np.testing.assert_allclose(ItemKNN(k=100).fit(train, 30, 10).neighbours_.toarray(), full, atol=1e-6)
    top3 = ItemKNN(k=3).fit(train, 30, 10).neighbours_.toarray()
    assert ((top3 > 0).sum(axis=1) <= 3).all()
    for row_full, row_top in zip(full, top3):
        kept = row_top > 0
        # Every kept neighbour is at least as similar as every dropped one.
        assert row_full[kept].min(initial=np.inf) >= row_full[~kept].max(initial=-np.inf) - 1e-9


# --- unseen users and items, registry ------------------------------------------------------------


def _models():
    texts = [f"item {i} topic{i % 3}" for i in range(N_ITEMS)]
    return [
        GlobalMean(),
        BiasedMean(),
        Popularity(),
        BiasedMF(dim=4, epochs=5),
        ItemKNN(k=5),
        EASE(l2=10.0),
        TfidfContent(texts),
    ]


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.name)
def test_unseen_users_and_items_get_a_fallback_not_an_error(model, taste_groups):
    train, _ = taste_groups
    # The last user and last item are known by index range but absent from train.
    train = train[(train.user_idx != N_USERS - 1) & (train.item_idx != N_ITEMS - 1)]
    model.fit(train, N_USERS, N_ITEMS)
    assert isinstance(model, Recommender) and isinstance(model.rates, bool)
    users = np.array([0, N_USERS - 1, N_USERS + 5, -1])
    pred = model.predict(users, np.array([N_ITEMS - 1, 0, N_ITEMS + 3, -2]))
    scores = model.score_items(users)
    assert pred.shape == (4,) and pred.dtype == np.float32 and np.isfinite(pred).all()
    assert scores.shape == (4, N_ITEMS) and scores.dtype == np.float32 and np.isfinite(scores).all()
    # Every unseen user (in range, past the range, negative) is treated alike.
    np.testing.assert_array_equal(scores[1], scores[2])
    np.testing.assert_array_equal(scores[1], scores[3])


def test_fallbacks_have_the_documented_values(taste_groups):
    train, _ = taste_groups
    train = train[(train.user_idx != N_USERS - 1) & (train.item_idx != N_ITEMS - 1)]
    new_user, new_item = N_USERS - 1, N_ITEMS - 1
    pop = Popularity().fit(train, N_USERS, N_ITEMS)
    assert pop.score_items(np.array([0]))[0, new_item] == 0
    for model in (ItemKNN(k=5), EASE(l2=10.0)):
        model.fit(train, N_USERS, N_ITEMS)
        np.testing.assert_array_equal(model.score_items(np.array([new_user]))[0], pop.counts_)
    mf = BiasedMF(dim=4, epochs=5).fit(train, N_USERS, N_ITEMS)
    bm = BiasedMean().fit(train, N_USERS, N_ITEMS)
    assert mf.predict(np.array([new_user]), np.array([new_item]))[0] == pytest.approx(mf.mean_)
    assert bm.predict(np.array([new_user]), np.array([3]))[0] == pytest.approx(bm.mean_ + bm.item_bias_[3])
    assert EASE().fit(train, N_USERS, N_ITEMS).predict(np.array([5]), np.array([7]))[0] == bm.predict(
        np.array([5]), np.array([7])
    )[0]


def test_bad_train_tables_are_rejected():
    with pytest.raises(DataError, match="lacks column"):
        BiasedMean().fit(pd.DataFrame({"user_idx": [0], "item_idx": [0]}), 1, 1)
    with pytest.raises(DataError, match="item_idx must lie"):
        Popularity().fit(frame([0], [5], [1.0]), 1, 3)
    with pytest.raises(ValueError, match="same length"):
        GlobalMean().fit(frame([0], [0], [1.0]), 1, 1).predict(np.array([0, 0]), np.array([0]))


def test_registry_builds_every_baseline_and_rejects_typos():
    assert set(BASELINES) == {"global_mean", "biased_mean", "popularity", "biased_mf", "item_knn", "ease", "tfidf"}
    for name, cls in BASELINES.items():
        params = {"item_texts": ["a", "b"]} if name == "tfidf" else {}
        model = make_baseline(name, **params)
        assert isinstance(model, cls) and model.name == name
    assert make_baseline("ease", l2=100.0).l2 == 100.0
    with pytest.raises(ValueError, match="choose one of"):
        make_baseline("easy")
    with pytest.raises(ValueError, match="has no parameter"):
        make_baseline("item_knn", neighbours=10)
    with pytest.raises(ValueError, match="needs parameter"):
        make_baseline("tfidf")
    with pytest.raises(ValueError, match="must be"):
        make_baseline("ease", l2=0.0)
