"""Serving tests use the session fixture ``serving_artifacts`` of tests/conftest.py (shared with tests/reliability)."""

from __future__ import annotations

import pytest


@pytest.fixture
def offline_ensemble():
    """``offline_ensemble(serving_artifacts, names, weights)``: a ``FusedEnsemble`` over the recommender views of the
    same artifacts the service loads (``v1`` for the two-tower), knowing the users' training items (as Serve)."""
    return _offline_ensemble


def _offline_ensemble(serving_artifacts, names, weights):
    """``FusedEnsemble`` over the recommender views of the same artifacts the service loads."""
    from lmrec.models.artifact import load_artifact
    from lmrec.serving.item_item_artifact import load_item_item_artifact
    from lmrec.serving.mf_artifact import load_mf_artifact
    from lmrec.strategies.ensemble import FusedEnsemble

    load = {"two_tower": lambda p: load_artifact(p).recommender, "mf": lambda p: load_mf_artifact(p).recommender,
            "ease": lambda p: load_item_item_artifact(p).recommender,
            "item_knn": lambda p: load_item_item_artifact(p).recommender}
    data = serving_artifacts["data"]
    members = {m: load[m](serving_artifacts["v1" if m == "two_tower" else m]) for m in names}
    return FusedEnsemble(members, weights=weights).set_seen(data.train, data.n_users, data.n_items)
