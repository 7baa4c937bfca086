"""The meta-learning artifact: written with the shared manifest, loaded verified into the same model, refused when
altered; ``load_any`` picks every kind's loader from the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmrec.artifacts import LOADERS, load_any
from lmrec.artifacts.manifest import ArtifactError
from lmrec.artifacts.meta import MetaArtifact, load_meta_artifact, save_meta_artifact
from lmrec.models.cold_start import ColdStartModel, TaskBatch


def _model(item_ids: bool = True) -> ColdStartModel:
    torch.manual_seed(0)
    seen = torch.ones(30, dtype=torch.bool)
    seen[25:] = False
    model = ColdStartModel(torch.randn(30, 12), dim=8, global_mean=3.6, seen_items=seen, item_ids=item_ids)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # not the initial values: the load must carry trained weights
    return model.eval()


@pytest.mark.parametrize("item_ids", [True, False])
def test_round_trip_scores_identically(tmp_path, item_ids):
    model = _model(item_ids)
    root = save_meta_artifact(tmp_path / "meta", model, config={"name": "meta"}, history=[{"epoch": 0, "loss": 1.5}],
                              metrics={"cold_ndcg@10": 0.25, "note": "dropped"}, fit_seconds=2.0,
                              user_ids=np.array([10, 11]), item_ids=np.arange(100, 130))
    art = load_any(root)
    assert isinstance(art, MetaArtifact) and art.metrics == {"cold_ndcg@10": 0.25}
    assert art.history == [{"epoch": 0, "loss": 1.5}] and art.item_ids == list(range(100, 130))
    support = TaskBatch.from_lists([np.array([1, 4, 7]), np.array([2, 26])], [np.array([5.0, 4.0, 1.0]),
                                                                               np.array([3.0, 4.0])])
    with torch.no_grad():
        want_t, got_t = model.item_tables(), art.model.item_tables()
        want = model.init_fast(support, want_t) @ torch.cat([want_t.vec, want_t.rating_bias[:, None]], 1).T
        got = art.model.init_fast(support, got_t) @ torch.cat([got_t.vec, got_t.rating_bias[:, None]], 1).T
    # same weights; the matmul may take another kernel path on the loaded tensors (last-bit differences)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert (art.model.item_id is not None) == item_ids


def test_altered_or_foreign_folders_are_refused(tmp_path):
    root = save_meta_artifact(tmp_path / "meta", _model(), config={}, history=[], metrics={})
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "lmrec.meta_learning/1" and set(manifest["files"]) == {"model.safetensors"}
    weights = root / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF  # one weight's last byte
    weights.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="sha256"):
        load_meta_artifact(root)
    (tmp_path / "none").mkdir()
    with pytest.raises(ArtifactError, match="format None"):
        load_any(tmp_path / "none")


def test_every_artifact_format_has_a_loader():
    from importlib import import_module

    for fmt, where in LOADERS.items():
        module, name = where.split(":")
        assert callable(getattr(import_module(module), name)), fmt
