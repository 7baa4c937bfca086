"""What crosses the wire between the ingress and the members, kept free of torch so the ingress and catalog
replicas start without importing it: raw-id maps and the version-skew signal."""

from __future__ import annotations


class VersionSkew(RuntimeError):
    """Encoder outputs came from another artifact than the member's (a hot swap is half done): retry shortly."""


SKEW = "version_skew"


def call_member(member, method: str, *args, **kwargs):
    """Run one member method; a ``VersionSkew`` comes back as ``{"version_skew": message}`` rather than as an
    exception, so callers across a Serve handle and in-process see the same plain value."""
    try:
        return getattr(member, method)(*args, **kwargs)
    except VersionSkew as e:
        return {SKEW: str(e)}


class IdMap:
    """Raw id <-> contiguous index. Accepts ints and their string spelling alike (JSON clients send either)."""

    def __init__(self, ids: list) -> None:
        self.ids = list(ids)
        self._index = {self._key(v): i for i, v in enumerate(self.ids)}

    @staticmethod
    def _key(raw) -> str:
        return str(raw)

    def index(self, raw) -> int | None:
        return self._index.get(self._key(raw))

    def __contains__(self, raw) -> bool:
        return self._key(raw) in self._index

    def __len__(self) -> int:
        return len(self.ids)
