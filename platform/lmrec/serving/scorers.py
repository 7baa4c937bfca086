"""Serve deployments of the ensemble members and of the run-time item catalog.

Each member deployment holds one loaded artifact (``members.py``) and swaps it through ``reconfigure``: Serve
calls it with a changed ``user_config`` without restarting the replica and keeps routing requests meanwhile, so
the new artifact is loaded off the event loop beside the old one and replaces it by one reference assignment.
Requests that started on the old model finish on it: a hot swap fails no request.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ray import serve

from lmrec.serving.members import MFMember, TwoTowerMember, call_member


class _MemberDeployment:
    """Shared swap logic: ``user_config = {"artifact_dir": path}``."""

    member_cls: type = TwoTowerMember

    def __init__(self) -> None:
        self.member: Any = None
        self._dir: Path | None = None

    async def reconfigure(self, config: dict) -> None:
        target = Path(config["artifact_dir"]).resolve()
        if self.member is None or target != self._dir:
            member = await asyncio.to_thread(self.member_cls, target)
            self.member, self._dir = member, target

    def info(self) -> dict:
        return self.member.info

    def item_ids(self) -> tuple[str, list]:
        m = self.member
        return m.sha256, m.item_ids

    def call(self, method: str, *args, **kwargs):
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

    def item_texts(self) -> tuple[str, list[str]]:
        return self.member.sha256, self.member.art.item_texts


class ItemCatalogCore:
    """Items added at run time (id + text), in order, with a version counter that bumps on every add.

    Held by exactly one replica so every ingress replica sees the same catalog; it keeps only texts, because
    encoder outputs and vectors belong to an artifact version and are re-derived after a swap.
    """

    def __init__(self) -> None:
        self.item_ids: list = []
        self.texts: list[str] = []

    def add(self, item_id, text: str) -> int:
        """Append an item; returns the new version, or -1 when the id was already added."""
        if str(item_id) in {str(i) for i in self.item_ids}:
            return -1
        self.item_ids.append(item_id)
        self.texts.append(text)
        return len(self.item_ids)

    def since(self, version: int) -> tuple[int, list, list[str]]:
        """The items added after ``version`` (the catalog's length when the caller last looked)."""
        return len(self.item_ids), self.item_ids[version:], self.texts[version:]


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class ItemCatalog(ItemCatalogCore):
    """Single-replica store of run-time items (see ``ItemCatalogCore``); lost on restart by design: new items
    belong in the next trained artifact."""
