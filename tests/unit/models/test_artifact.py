"""Serving artifact: round trip gives identical predictions; any altered, missing or extra file is rejected."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec.artifacts.manifest import ArtifactError, verify_artifact

from lmrec.artifacts.two_tower import FORMAT as TWO_TOWER_FORMAT

from lmrec.artifacts.two_tower import load_artifact
from lmrec.training.recipe import TwoTowerRecipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_two_tower import data_for, one_thread, tiny_spec  # noqa: E402,F401  (sibling test module: shared tiny data; one_thread is autouse)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    spec = tiny_spec()
    data = data_for(spec)
    recipe = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    recipe.train_epoch(0, data.iter_train_batches(0, 64, 0))
    path = recipe.export_artifact(str(tmp_path_factory.mktemp("art") / "a"), metrics={"val_rmse": 1.0})
    return recipe, path


def test_round_trip_identical_predictions(exported):
    recipe, path = exported
    art = load_artifact(path)
    users = np.arange(recipe.data.n_users)
    items = np.arange(recipe.data.n_items)[: len(users)] % recipe.data.n_items
    live = recipe.as_recommender()
    np.testing.assert_array_equal(art.recommender.predict(users, items), live.predict(users, items))
    np.testing.assert_array_equal(art.recommender.score_items(users[:7]), live.score_items(users[:7]))
    assert art.manifest["dataset_fingerprint"] == recipe.data.fingerprint
    assert art.manifest["metrics"] == {"val_rmse": 1.0}
    # the token limit serving truncates with is the spec's, recorded at export (not a reader's own default)
    assert art.max_length == recipe.spec.model.max_length == art.manifest["text"]["max_length"]
    # every training row (not only the model's last max_history items), what a service excludes per user
    train = recipe.data.train
    assert art.seen_indptr[-1] == len(train) and len(art.seen_indptr) == recipe.data.n_users + 1
    u = int(train["user_idx"].value_counts().index[0])
    assert sorted(art.seen_items[art.seen_indptr[u]:art.seen_indptr[u + 1]].tolist()) == sorted(
        train.loc[train["user_idx"] == u, "item_idx"].tolist())
    assert art.item_ids == recipe.data.item_ids.tolist()
    assert art.embeddings["item_vectors"].shape == (recipe.data.n_items, 8)
    # the reloaded encoder reproduces the cached item text (same weights, same tokenizer)
    enc = art.tokenizer(recipe.data.item_texts[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        again = art.model.encoder(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(again, art.model.item_text[:3], atol=1e-4, rtol=1e-4)
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in Path(path).rglob("*"))


def test_tampered_file_rejected(exported, tmp_path):
    _, path = exported
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    verify_artifact(copy, TWO_TOWER_FORMAT)
    blob = bytearray((copy / "model.safetensors").read_bytes())
    blob[-1] ^= 0x01
    (copy / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(copy)


def test_extra_or_missing_file_rejected(exported, tmp_path):
    _, path = exported
    extra = tmp_path / "extra"
    shutil.copytree(path, extra)
    (extra / "payload.pkl").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="unlisted"):
        verify_artifact(extra, TWO_TOWER_FORMAT)
    missing = tmp_path / "missing"
    shutil.copytree(path, missing)
    (missing / "id_maps.json").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        verify_artifact(missing, TWO_TOWER_FORMAT)
    manifest = json.loads((missing / "manifest.json").read_text())
    manifest["format"] = "other/9"
    (missing / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format"):
        verify_artifact(missing, TWO_TOWER_FORMAT)
