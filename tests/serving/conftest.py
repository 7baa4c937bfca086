"""Serving tests use the session fixture ``serving_artifacts`` of tests/conftest.py (shared with tests/reliability)."""

from __future__ import annotations

import contextlib

import pytest


@pytest.fixture
def offline_ensemble():
    """``offline_ensemble(serving_artifacts, names, weights)``: a ``FusedEnsemble`` over the recommender views of the
    same artifacts the service loads (``v1`` for the two-tower), knowing the users' training items (as Serve)."""
    return _offline_ensemble


def _offline_ensemble(serving_artifacts, names, weights):
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
    return FusedEnsemble(members, weights=weights).set_seen(data.train, data.n_users, data.n_items)


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
