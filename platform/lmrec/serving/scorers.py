"""Serve deployments of the ensemble members.

Each member deployment holds one loaded artifact (``members.py``) and swaps it through ``reconfigure``: Serve
calls it with a changed ``user_config`` without restarting the replica and keeps routing requests meanwhile, so
the new artifact is loaded off the event loop beside the old one and replaces it by one reference assignment.
Requests that started on the old model finish on it: a hot swap fails no request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from ray import serve

from lmrec.serving.members import ItemItemMember, MFMember, TwoTowerMember
from lmrec.serving.protocol import Member, call_member
from lmrec.storage import normalize


class _MemberDeployment:
    """Shared swap logic: ``user_config = {"artifact_dir": path}``."""

    member_cls: type = TwoTowerMember

    def __init__(self) -> None:
        # a replica holds a fraction of a core: more intra-op threads would only spin against the other replicas
        torch.set_num_threads(1)
        self.member: Any = None
        self._dir: str | None = None

    async def reconfigure(self, config: dict) -> None:
        target = normalize(config["artifact_dir"])  # local path or URI (fetched by the member)
        if self.member is None or target != self._dir:
            member = await asyncio.to_thread(self.member_cls, target)
            self.member, self._dir = member, target

    # async on purpose: each of these takes well under a millisecond, and Serve runs a *sync* method through a
    # thread pool, whose hand-off costs more CPU than the call itself on the hot path.
    async def info(self) -> dict:
        return self.member.info

    async def item_ids(self) -> tuple[str, list]:
        m = self.member
        return m.sha256, m.item_ids

    async def sha256(self) -> str:
        return self.member.sha256

    async def item_texts(self) -> tuple[str, list | None]:
        """The item texts the artifact carries (in its item order), or None."""
        return self.member.sha256, self.member.table.item_texts

    async def score_table(self):
        """The member's ``ScoreTable`` (the ingress answers ``/recommend`` from it: ``tables.py``)."""
        return self.member.table

    async def call(self, method: str, *args, **kwargs):
        """Run one member method on the current artifact (one reference read: a swap cannot split a request)."""
        return call_member(self.member, method, *args, **kwargs)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class TwoTowerScorer(_MemberDeployment):
    """The encoder two-tower member (precomputed item-embedding index)."""

    member_cls = TwoTowerMember


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class MFScorer(_MemberDeployment):
    """The biased-MF member."""

    member_cls = MFMember


class _ItemItemDeployment(_MemberDeployment):
    member_cls = ItemItemMember


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class EaseScorer(_ItemItemDeployment):
    """The EASE member (item-item artifact, ``lmrec.artifacts.item_item``)."""


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class ItemKNNScorer(_ItemItemDeployment):
    """The item-kNN member (item-item artifact, ``lmrec.artifacts.item_item``)."""


# The collaborative members by name (the ``<name>_artifact`` / ``weights.<name>`` of ``ServeAppArgs``), in the order
# the ingress consults them (the first that knows a user's ratings explains, the first that answers gives texts).
MEMBER_DEPLOYMENTS = {"mf": MFScorer, "ease": EaseScorer, "item_knn": ItemKNNScorer}


def bound_member(deployment, artifact_dir: str) -> Member:
    """``deployment`` bound to serve ``artifact_dir`` (its ``user_config``: a hot swap changes only that), with
    the capabilities of the member kind it serves: what the ingress's router needs to know of it."""
    bound = deployment.options(user_config={"artifact_dir": artifact_dir}).bind()
    return Member(bound, deployment.func_or_class.member_cls.capabilities)
