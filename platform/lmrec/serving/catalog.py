"""The run-time item catalog: items added through ``POST /items`` (id + text), shared by every ingress replica."""

from __future__ import annotations

from ray import serve


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
