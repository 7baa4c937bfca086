"""What crosses the wire between the ingress and the members, kept free of torch so the ingress and catalog
replicas start without importing it: the version-skew signal, and what each member can do (``Capabilities``),
which is all the router knows of a member besides its name (raw-id maps: ``lmrec.artifacts.tables.IdMap``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


class VersionSkew(RuntimeError):
    """Encoder outputs came from another artifact than the member's (a hot swap is half done): retry shortly."""


SKEW = "version_skew"


@dataclass(frozen=True)
class Capabilities:
    """What a member kind can answer; the router routes by these, never by a member's name.

    Every member answers ``user_scores`` (ranking scores of a known user over its own items) and ``score_table``.
    ``texts``: the member scores texts. Its item index is the request's id space (its artifact's items, then the
    items added at run time, which only it can score), and it answers ``similar`` (by item or text),
    ``cold_user`` (rated items and a profile text) and ``explain``; its calls carry the run-time items' encoder
    outputs. A member without it is collaborative: it scores only the users it was trained on, in its own item
    index, and folds a cold user in from their ratings (``fold_in``).
    ``rates``: the member predicts ratings (``predict(user_id, item_idx)``), which ``/predict`` blends.
    """

    texts: bool = False
    rates: bool = False


class Member(NamedTuple):
    """One ensemble member as the router sees it: a handle (``await handle.method.remote(...)``: a Serve
    ``DeploymentHandle`` or an in-process stand-in) and what the member can do."""

    handle: Any
    capabilities: Capabilities


def call_member(member, method: str, *args, **kwargs):
    """Run one member method; a ``VersionSkew`` comes back as ``{"version_skew": message}`` rather than as an
    exception, so callers across a Serve handle and in-process see the same plain value."""
    try:
        return getattr(member, method)(*args, **kwargs)
    except VersionSkew as e:
        return {SKEW: str(e)}
