"""Items added at run time (``POST /items``) as one ingress replica knows them.

The catalog deployment holds every added item's id and text; a replica asks it for news at most once per
``poll_s``, in the background, so no request waits for the look (that bounds how late another replica learns of
an added item; the replica that served ``POST /items`` looks at once, so "recommendable at once" holds). Encoder
outputs belong to one artifact version: they are computed once per item and recomputed after a swap.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from lmrec.artifacts.tables import IdMap


class EncoderSwapped(Exception):
    """The encoder answered from another artifact version than the items encoded so far: start over."""


class SharedLook:
    """At most one ``fn()`` running at a time: concurrent callers share the running one."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self._task: asyncio.Task | None = None

    def start(self) -> asyncio.Task:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.fn())
        return self._task


class AddedItems:
    """Run-time items known to this replica: ``ids``, ``texts`` (in the catalog's order), ``map`` (raw id ->
    position) and the encoder outputs of the first ``len(hidden)`` items, all from encoder version ``sha``."""

    def __init__(self, catalog, encoder, poll_s: float) -> None:
        self.catalog, self.encoder, self.poll_s = catalog, encoder, poll_s
        self.ids: list = []
        self.texts: list[str] = []
        self.map = IdMap([])
        self.hidden: list[np.ndarray] = []
        self.sha: str | None = None
        self._checked = -float("inf")
        self.look = SharedLook(self._fetch)
        self._lock = asyncio.Lock()
        self._encode_lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    async def sync(self, force: bool = False) -> None:
        """Fetch the items added since the last look; without ``force`` at most once per ``poll_s``, in the
        background (the request goes on with what this replica knows)."""
        if force:
            return await self._fetch()
        if time.monotonic() - self._checked >= self.poll_s:
            self._checked = time.monotonic()
            self.look.start()

    async def _fetch(self) -> None:
        self._checked = time.monotonic()
        version, ids, texts = await self.catalog.since.remote(len(self.ids))
        async with self._lock:
            if ids and version == len(self.ids) + len(ids):
                self.ids.extend(ids)
                self.texts.extend(texts)
                self.map = IdMap(self.ids)

    def forget_encodings(self) -> None:
        """Drop the encoder outputs (they came from another artifact version than the member's)."""
        self.hidden, self.sha = [], None

    async def encoded(self) -> tuple[np.ndarray | None, str | None]:
        """Encoder outputs of every known item [n, hidden] and their artifact sha256 (None, None: no items);
        ``EncoderSwapped`` when the encoder changed version part-way."""
        n = len(self.ids)
        if n == 0:
            return None, None
        async with self._encode_lock:  # concurrent requests must not append the same rows twice
            if len(self.hidden) < n:
                texts = self.texts[len(self.hidden):n]
                got = await asyncio.gather(*[self.encoder.encode.remote(t) for t in texts])
                shas = {sha for sha, _ in got}
                if len(shas) > 1 or (self.hidden and self.sha not in shas):
                    self.forget_encodings()
                    raise EncoderSwapped
                self.hidden.extend(vec for _, vec in got)
                self.sha = shas.pop()
            return np.stack(self.hidden[:n]), self.sha
