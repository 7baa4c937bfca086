"""What crosses the wire between the ingress and the members, kept free of torch so the ingress and catalog
replicas start without importing it: the version-skew signal (raw-id maps: ``lmrec.artifacts.tables.IdMap``)."""

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
