"""Curriculum: difficulty scores, pacing, easy-to-hard pools and disjoint distributed shards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lmrec.strategies.curriculum import CurriculumSampler, competence, difficulty_scores


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({"user_idx": [0, 0, 0, 1, 1, 2], "item_idx": [0, 1, 2, 0, 1, 0],
                         "rating": np.array([4, 4, 1, 5, 3, 2], dtype=np.float32)})


def test_difficulty_scores(frame):
    dev = difficulty_scores(frame, "rating_deviation", 3, 3)
    np.testing.assert_allclose(dev, [1, 1, 2, 1, 1, 0])
    pop = difficulty_scores(frame, "item_popularity", 3, 3)
    assert pop[0] < pop[1] < pop[2]  # item 0 rated 3 times (easy), item 2 once (hard)
    length = difficulty_scores(frame, "text_length", 3, 3, item_lengths=np.array([5, 9, 2]))
    np.testing.assert_array_equal(length, [5, 9, 2, 5, 9, 5])
    loss = difficulty_scores(frame, "baseline_loss", 3, 3)
    assert loss.shape == (6,) and loss[2] == loss.max()  # user 0's 1-star among 4s is the surprise
    with pytest.raises(ValueError, match="item_lengths"):
        difficulty_scores(frame, "text_length", 3, 3)
    with pytest.raises(ValueError, match="unknown difficulty"):
        difficulty_scores(frame, "entropy", 3, 3)


@pytest.mark.parametrize("pacing", ["linear", "root", "step"])
def test_competence_grows_from_start_to_one(pacing):
    c = [competence(e, pacing, 0.2, 5) for e in range(8)]
    assert c[0] == pytest.approx(0.2) and c[5:] == [1.0, 1.0, 1.0]
    assert all(a <= b for a, b in zip(c, c[1:]))


def test_pool_grows_easy_to_hard():
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame({"user_idx": rng.integers(0, 10, n), "item_idx": rng.integers(0, 20, n),
                          "rating": rng.integers(1, 6, n).astype(np.float32)})
    difficulty = rng.random(n)
    sampler = CurriculumSampler(frame, difficulty, pacing="linear", start=0.25, full_at=3, seed=1)
    sizes = [len(sampler.pool(e)) for e in range(5)]
    assert sizes == [50, 100, 150, 200, 200]
    for e in range(4):
        pool = sampler.pool(e)
        outside = np.setdiff1d(np.arange(n), pool)
        if len(outside):
            assert difficulty[pool].max() <= difficulty[outside].min()  # the pool is exactly the easiest rows
        assert set(sampler.pool(e)) <= set(sampler.pool(e + 1))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_get_disjoint_equal_shards_every_epoch(world_size):
    n = 101
    frame = pd.DataFrame({"user_idx": np.arange(n) % 7, "item_idx": np.arange(n) % 11,
                          "rating": np.ones(n, dtype=np.float32)})
    sampler = CurriculumSampler(frame, np.arange(n, dtype=float), pacing="root", start=0.3, full_at=2, seed=3)
    for epoch in range(4):
        shards = [sampler.shard(epoch, r, world_size) for r in range(world_size)]
        assert len({len(s) for s in shards}) == 1  # same step count on every rank
        union = np.concatenate(shards)
        assert len(union) == len(set(union.tolist()))  # disjoint
        pool = sampler.pool(epoch)
        assert set(union.tolist()) <= set(pool.tolist())
        assert len(pool) - len(union) < world_size  # at most the remainder is dropped
        # the batches carry exactly the shard's rows
        rows = np.concatenate([b["item_idx"] for b in sampler.iter_batches(epoch, 8, 0, world_size)])
        np.testing.assert_array_equal(rows, frame["item_idx"].to_numpy()[shards[0]])
    # a new epoch reshuffles: the same pool gives a different order
    assert not np.array_equal(sampler.shard(2, 0, world_size), sampler.shard(3, 0, world_size))


def test_sampler_checks_its_inputs():
    frame = pd.DataFrame({"user_idx": [0], "item_idx": [0], "rating": [1.0]})
    with pytest.raises(ValueError, match="difficulties"):
        CurriculumSampler(frame, np.zeros(2))
    with pytest.raises(ValueError, match="start"):
        CurriculumSampler(frame, np.zeros(1), start=0.0)
    with pytest.raises(ValueError, match="rank"):
        CurriculumSampler(frame, np.zeros(1)).shard(0, 2, 2)
