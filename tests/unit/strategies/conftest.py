"""Tiny encoders and rating frames for the strategy tests (random weights: milliseconds, no downloads)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lmrec.models.encoder import TextEncoder


def _tiny_encoder(layers: int = 4, hidden: int = 32, vocab: int = 120, seed: int = 0) -> TextEncoder:
    """A random BERT with ``layers`` blocks; seeded so two calls give the same weights."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    return TextEncoder(BertModel(config).eval(), "mean")


@pytest.fixture
def tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """A block of 6 token rows of different lengths (ids in the tiny vocabulary)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 120, (6, 12), generator=gen)
    lengths = torch.tensor([12, 3, 7, 12, 1, 9])
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def _synthetic_ratings(n_users: int = 60, n_items: int = 40, per_user: int = 15, dim: int = 3,
                      seed: int = 0) -> pd.DataFrame:
    """Ratings from a low-rank model + noise, clipped to 1..5, with timestamps (a learnable, known structure)."""
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(n_users, dim)), rng.normal(size=(n_items, dim))
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, per_user, replace=False)
        r = np.clip(np.round(3.5 + p[u] @ q[items].T + rng.normal(scale=0.3, size=per_user)), 1, 5)
        rows += [(u, i, float(x), 1000 + t) for t, (i, x) in enumerate(zip(items, r))]
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"]).astype(
        {"user_idx": np.int64, "item_idx": np.int64, "rating": np.float32, "timestamp": np.int64})


@pytest.fixture
def tiny_encoder():
    """Factory: ``tiny_encoder(layers=4, hidden=32, vocab=120, seed=0) -> TextEncoder``."""
    return _tiny_encoder


@pytest.fixture
def synthetic_ratings():
    """Factory: ``synthetic_ratings(n_users, n_items, per_user, dim, seed) -> DataFrame``."""
    return _synthetic_ratings


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """These tests move tiny tensors (see ``one_torch_thread`` in tests/conftest.py)."""
    yield
