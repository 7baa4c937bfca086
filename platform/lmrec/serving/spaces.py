"""The members' item id spaces as the router sees them: per artifact version (sha256) its raw item ids and texts,
per pair of versions how the text member's items line up with another member's, and the lower-case texts the
``filter`` of ``/recommend`` reads. Every cache keeps only the most recently used versions (``Recent``), so hot
swaps do not grow a replica's memory; requests still in flight on the previous version find theirs.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd

from lmrec.artifacts.tables import IdMap


class Recent:
    """A mapping that keeps its ``size`` most recently used entries (least recently used evicted first)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def get(self, key, default=None):
        if key not in self._entries:
            return default
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key, value) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def values(self):
        return list(self._entries.values())

    def __contains__(self, key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class ItemSpaces:
    """Raw item ids and texts per artifact version, and alignments between versions, fetched from the members'
    handles on first use (``item_ids`` / ``item_texts``) and kept for the ``versions`` most recent keys."""

    def __init__(self, versions: int) -> None:
        self.maps = Recent(versions)  # sha256 -> (IdMap of its items, their texts or None each)
        self.aligned = Recent(versions)  # (text member sha256, member sha256) -> index arrays both ways
        self.lowered = Recent(versions)  # (text member sha256, text source sha256) -> lower-case texts

    def add(self, sha: str, ids: list, texts: list | None) -> None:
        """Record a version's items (a score table carries them: no extra call)."""
        if sha not in self.maps:
            self.maps.put(sha, (IdMap(ids), list(texts) if texts is not None else [None] * len(ids)))

    async def of(self, handle, sha: str) -> tuple[IdMap, list]:
        """(item ids, item texts) of version ``sha`` of the member behind ``handle``."""
        got = self.maps.get(sha)
        if got is None:
            got_sha, ids = await handle.item_ids.remote()
            _, texts = await handle.item_texts.remote()  # None: the artifact carries no item texts
            self.add(got_sha, ids, texts)
            got = self.maps.get(got_sha)  # swapped between two calls: the newest map is the best guess
        return got

    def known(self, raw) -> bool:
        """Whether any cached version has the item ``raw``."""
        return any(m.index(raw) is not None for m, _ in self.maps.values())

    async def alignment(self, text_handle, text_sha: str, handle, sha: str) -> tuple[np.ndarray, np.ndarray]:
        """(member index of each text-member item or -1, text-member index of each member item or -1)."""
        key = (text_sha, sha)
        got = self.aligned.get(key)
        if got is None:
            text_map, _ = await self.of(text_handle, text_sha)
            m_map, _ = await self.of(handle, sha)
            text_ids = pd.Index([str(v) for v in text_map.ids])
            m_ids = pd.Index([str(v) for v in m_map.ids])
            got = (m_ids.get_indexer(text_ids), text_ids.get_indexer(m_ids))
            self.aligned.put(key, got)
        return got

    async def lowered_texts(self, text_handle, text_sha: str, src_handle, src_sha: str) -> list[str] | None:
        """Each of the text member's artifact items' text from the source version, lower case, in the text
        member's order ("" where the source has none); None when the source carries no texts at all."""
        key = (text_sha, src_sha)
        got = self.lowered.get(key)
        if got is None:
            text_map, _ = await self.of(text_handle, text_sha)
            m_map, texts = await self.of(src_handle, src_sha)
            if all(t is None for t in texts):
                return None
            where = [m_map.index(raw) for raw in text_map.ids]
            got = [texts[j].lower() if j is not None and texts[j] else "" for j in where]
            self.lowered.put(key, got)
        return got
