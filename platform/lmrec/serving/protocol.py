"""What crosses the wire between the ingress and the members, kept free of torch so the ingress and catalog
replicas start without importing it: raw-id maps and the version-skew signal."""

from __future__ import annotations

from lmrec.artifacts.tables import IdMap  # noqa: F401  (re-exported: members and the router use it)


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
