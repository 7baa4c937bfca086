"""Serving tests use the session fixture ``serving_artifacts`` of tests/conftest.py (shared with tests/reliability)."""

from __future__ import annotations

import contextlib

import pytest


@pytest.fixture
def offline_ensemble():
    """``offline_ensemble(serving_artifacts, names, weights)``: a ``FusedEnsemble`` over the recommender views of the
    same artifacts the service loads (``v1`` for the two-tower), knowing the users' training items (as Serve)."""
    return _offline_ensemble


def _offline_ensemble(serving_artifacts, names, weights, rating_weights=None):
    """``FusedEnsemble`` over the recommender views of the same artifacts the service loads."""
    from lmrec.artifacts.two_tower import load_artifact
    from lmrec.artifacts.item_item import load_item_item_artifact
    from lmrec.artifacts.mf import load_mf_artifact
    from lmrec.strategies.ensemble import FusedEnsemble

    load = {"two_tower": lambda p: load_artifact(p).recommender, "mf": lambda p: load_mf_artifact(p).recommender,
            "ease": lambda p: load_item_item_artifact(p).recommender,
            "item_knn": lambda p: load_item_item_artifact(p).recommender}
    data = serving_artifacts["data"]
    members = {m: load[m](serving_artifacts["v1" if m == "two_tower" else m]) for m in names}
    return FusedEnsemble(members, weights=weights, rating_weights=rating_weights).set_seen(
        data.train, data.n_users, data.n_items)


@pytest.fixture(scope="session")
def free_port():
    """``free_port()``: a free TCP port on 127.0.0.1."""
    return _free_port


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def on_loopback():
    """``with on_loopback(asgi_app) as url:`` the app served by uvicorn on a free 127.0.0.1 port (real HTTP)."""
    return _on_loopback


@contextlib.contextmanager
def _on_loopback(app):
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def with_item_texts():
    """``with_item_texts(src, dst, texts)``: a copy of a two-tower artifact whose id_maps.json carries the item
    texts (what ``save_artifact`` writes when given ``item_texts``), with its manifest hash updated."""
    return _with_item_texts


def _with_item_texts(src, dst, texts) -> None:
    import json
    import shutil

    from lmrec.artifacts.manifest import sha256_file

    shutil.copytree(src, dst)
    ids = json.loads((dst / "id_maps.json").read_text())
    (dst / "id_maps.json").write_text(json.dumps(ids | {"item_texts": list(texts)}))
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["id_maps.json"] = sha256_file(dst / "id_maps.json")
    (dst / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="session")
def narrow_artifacts(serving_artifacts, tmp_path_factory) -> dict:
    """Copies of the two-tower (``v1``) and MF artifacts whose training rating range is narrowed to the middle half
    of their own predictions, so that clamping to it binds for about half of all (user, item) pairs:
    ``{"two_tower": folder, "mf": folder, "range": {"two_tower": (lo, hi), "mf": (lo, hi)}}``."""
    import numpy as np
    import torch

    from lmrec.artifacts.mf import load_mf_artifact, save_mf_artifact
    from lmrec.artifacts.two_tower import load_artifact, save_artifact

    data = serving_artifacts["data"]
    root = tmp_path_factory.mktemp("narrow")
    users = np.repeat(np.arange(data.n_users), data.n_items)
    items = np.tile(np.arange(data.n_items), data.n_users)
    art = load_artifact(serving_artifacts["v1"])
    art.model.rating_range.copy_(torch.as_tensor(np.quantile(art.recommender.predict(users, items), [0.25, 0.75])))
    m = art.manifest
    tt = save_artifact(root / "two-tower", art.model, art.tokenizer, spec=m["config"],
                       fingerprint=m["dataset_fingerprint"], user_ids=art.user_ids, item_ids=art.item_ids,
                       metrics=m.get("metrics"), data_cutoff=m.get("data_cutoff"), lineage=m.get("lineage"),
                       item_texts=art.item_texts,
                       seen=(data.train["user_idx"].to_numpy(), data.train["item_idx"].to_numpy()))
    mf = load_mf_artifact(serving_artifacts["mf"])
    lo, hi = np.quantile(mf.recommender.predict(users, items), [0.25, 0.75])
    mf_dir = save_mf_artifact(
        root / "mf", global_mean=mf.global_mean, user_bias=mf.user_bias, item_bias=mf.item_bias,
        user_factors=mf.user_factors, item_factors=mf.item_factors,
        train=data.train.assign(rating=data.train["rating"].clip(lo, hi)), user_ids=mf.user_ids,
        item_ids=mf.item_ids, item_texts=mf.item_texts, params=mf.manifest.get("params"),
        fingerprint=mf.manifest.get("dataset_fingerprint") or "")
    seen = load_mf_artifact(mf_dir).seen_ratings  # the MF recommender clamps to their range
    ranges = {"two_tower": tuple(load_artifact(tt).model.rating_range.tolist()),
              "mf": (float(seen.min()), float(seen.max()))}
    return {"two_tower": tt, "mf": mf_dir, "range": ranges}
