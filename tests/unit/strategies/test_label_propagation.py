"""Label propagation: convergence to the closed form, graphs, and the recommender built on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lmrec.strategies.label_propagation import (
    LabelPropagation, co_rating_graph, knn_graph, normalise_graph, propagate, propagation_closed_form,
)


@pytest.mark.parametrize("kind", ["symmetric", "row"])
@pytest.mark.parametrize("alpha", [0.5, 0.9])
def test_iteration_converges_to_closed_form(kind, alpha):
    rng = np.random.default_rng(0)
    w = sp.random(12, 12, density=0.4, random_state=1, data_rvs=rng.random)
    w = (w + w.T).tocsr()
    s = normalise_graph(w, kind)
    y0 = (rng.random((12, 5)) < 0.3).astype(float)
    y, iters = propagate(s, sp.csr_matrix(y0), alpha, tol=1e-12, max_iter=2000)
    np.testing.assert_allclose(y, propagation_closed_form(s, y0, alpha), atol=1e-9)
    assert 1 < iters < 2000
    # alpha = 0: nothing propagates
    np.testing.assert_allclose(propagate(s, y0, 0.0)[0], y0)


def test_normalisations():
    w = sp.csr_matrix(np.array([[0, 2, 0], [2, 0, 1], [0, 1, 0]], dtype=float))
    row = normalise_graph(w, "row").toarray()
    np.testing.assert_allclose(row.sum(1), 1.0)
    sym = normalise_graph(w, "symmetric").toarray()
    np.testing.assert_allclose(sym, sym.T)
    assert np.abs(np.linalg.eigvalsh(sym)).max() <= 1 + 1e-12
    with pytest.raises(ValueError):
        propagate(sp.csr_matrix(row), np.eye(3), 1.0)


def test_knn_graph_links_similar_embeddings():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], dtype=float)
    g = knn_graph(emb, k=1).toarray()
    np.testing.assert_allclose(g, g.T)
    assert np.all(np.diag(g) == 0)
    assert g[0, 1] > 0 and g[2, 3] > 0 and g[0, 2] == 0
    assert g[4].sum() == 0  # its only neighbours are opposite: negative similarity is no edge


def _two_taste_groups() -> pd.DataFrame:
    """Users 0-9 love items 0-4 and dislike 5-9; users 10-19 the reverse. As in real data, users mostly rate
    what they like: 3 random liked items (5 stars) and 2 random others (1 star) each."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(20):
        liked, other = (np.arange(5), np.arange(5, 10)) if u < 10 else (np.arange(5, 10), np.arange(5))
        rows += [(u, int(i), 5.0) for i in rng.choice(liked, 3, replace=False)]
        rows += [(u, int(i), 1.0) for i in rng.choice(other, 2, replace=False)]
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating"]).astype({"rating": np.float32})


def test_propagated_ratings_follow_the_users_group():
    train = _two_taste_groups()
    g = co_rating_graph(train, 20, 10, k=5).toarray()
    # neighbours come from the user's own taste group
    assert g[:10, :10].sum() > 5 * g[:10, 10:].sum()
    model = LabelPropagation(k=5, alpha=0.8).fit(train, 20, 10)
    rated = set(zip(train["user_idx"], train["item_idx"]))
    unrated = [(u, i) for u in range(20) for i in range(10) if (u, i) not in rated]
    u, i = np.array(unrated).T
    pred = model.predict(u, i)
    likes = np.where(u < 10, i < 5, i >= 5)
    assert pred[likes].mean() > pred[~likes].mean() + 1.0
    ext_u, ext_i, target, conf = model.targets(np.arange(20), per_user=3)
    assert not any((a, b) in rated for a, b in zip(ext_u, ext_i))  # extra targets never override real ones
    assert np.all(conf > 0) and np.all((target >= 1) & (target <= 5))


def test_cold_user_is_scored_from_neighbours():
    train = _two_taste_groups()
    model = LabelPropagation(k=5, alpha=0.8).fit(train, 20, 10)
    # a new user who liked items 0 and 1: items 2-4 (their group's favourites) outrank 5-9
    scores = model.cold_user_scores(np.array([0, 1]), np.array([5.0, 5.0]), by="rating")
    assert scores.shape == (10,)
    assert scores[2:5].min() > scores[5:].max()
    # the same items rated 1 star point the other way
    scores = model.cold_user_scores(np.array([0, 1]), np.array([1.0, 1.0]), by="rating")
    assert scores[5:].min() > scores[2:5].max()
    # evidence: what the taste neighbours consumed (their 3 liked items each, vs 2 disliked)
    evidence = model.cold_user_scores(np.array([0, 1]), np.array([5.0, 5.0]))
    assert evidence[:5].mean() > evidence[5:].mean()
