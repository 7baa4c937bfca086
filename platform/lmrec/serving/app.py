"""Application builder: typed arguments -> the Serve deployment graph (``import_path: lmrec.serving.app:build_app``).

Graph::

    EnsembleIngress (FastAPI) --> TwoTowerScorer   (two-tower artifact: precomputed item index)
                              --> MFScorer         (MF artifact; optional)
                              --> EaseScorer       (EASE item-item artifact; optional)
                              --> ItemKNNScorer    (item-kNN item-item artifact; optional)
                              --> TextEncoderService (@serve.batch; same two-tower artifact)
                              --> ItemCatalog      (1 replica: items added at run time; polled, not per request)

``/recommend`` for a known user is answered inside the ingress from the members' score tables (``tables.py``,
fetched once per artifact version and re-checked in the background), so it costs one HTTP hop; cold start, new
items, similar-by-text, predictions and explanations call the member deployments. A two-tower served alone with at
least ``retrieval.exact_below`` items is searched there through a faiss IVF index (``lmrec.serving.retrieval``).

The artifact paths become each member's ``user_config`` (``{"artifact_dir": ...}``). Hot swap: point those
``user_config`` entries of the Serve config at the new artifact and deploy it again; Serve calls ``reconfigure``
on the running replicas (no restart). Changing ``args`` instead restarts every replica (also without failed
requests, but slower). ``build_bare_app`` builds the same routes over in-process members, for the benchmark.

``ensemble_artifact`` (written by ``lmrec ensemble``) names the member artifacts and the fusion weights fitted on
validation in one verified artifact; the builders resolve it into the same members and weights (``resolve_ensemble``).

This module is where member names meet member kinds: each name's deployment (or, in the bare app, member class)
carries its kind's ``Capabilities``, and the router (``lmrec.serving.router``) routes by those alone.
"""

# No "from __future__ import annotations": Serve reads build_app's annotation with inspect.signature to validate
# the args block into ServeAppArgs, which needs the class object, not a string.
import inspect

from pydantic import Field, model_validator

from lmrec.artifacts.ann import EXACT_BELOW
from lmrec.config.base import StrictModel


# The members beside the two-tower, by name: each has a ``<name>_artifact`` argument and a weight. A closed set
# (a typo is a validation error), in the order the ingress consults them (``scorers.MEMBER_DEPLOYMENTS``).
COLLABORATIVE = ("mf", "ease", "item_knn")


class EnsembleWeights(StrictModel):
    two_tower: float = Field(0.7, ge=0, description="Weight of the two-tower's z-scored scores.")
    mf: float = Field(0.3, ge=0, description="Weight of the MF member's z-scored scores (ignored without MF).")
    ease: float = Field(0.0, ge=0, description="Weight of the EASE member's z-scored scores (needs ease_artifact).")
    item_knn: float = Field(
        0.0, ge=0, description="Weight of the item-kNN member's z-scored scores (needs item_knn_artifact).")


class RatingWeights(StrictModel):
    """/predict's blend: one weight per member kind that predicts ratings (EASE and item-kNN only rank)."""

    two_tower: float = Field(0.7, ge=0, description="Weight of the two-tower's predicted rating.")
    mf: float = Field(0.3, ge=0, description="Weight of the MF member's predicted rating (ignored without MF).")


class RetrievalArgs(StrictModel):
    """How /recommend finds a known user's top k in a large catalogue (``lmrec.serving.retrieval``)."""

    exact_below: int = Field(
        EXACT_BELOW, ge=0, description="A two-tower served alone (no other member) with at least this many items is "
                                       "searched through a faiss IVF index (approximate: at 10^6 items recall@100 "
                                       "0.997 and 29x faster); smaller catalogues, and every ensemble, score every "
                                       "item. 0 always uses the index.")
    nprobe: int | None = Field(
        None, ge=1, description="IVF cells scored per query. Null: 1/32 of the cells (128 of 4,096 at 10^6 items); "
                                "more cells, higher recall, slower.")


def artifact_arg(member: str) -> str:
    """The ``ServeAppArgs`` field holding ``member``'s artifact location."""
    return f"{member}_artifact"


class ServeAppArgs(StrictModel):
    """Arguments of ``build_app`` (the ``args:`` block of a Serve config file)."""

    two_tower_artifact: str | None = Field(
        None, description="Two-tower artifact (lmrec.artifacts.two_tower): a folder or a storage URI (s3://, file://, "
                          "...). Required unless ensemble_artifact is set."
    )
    mf_artifact: str | None = Field(
        None, description="MF artifact (lmrec.artifacts.mf): a folder or a storage URI."
    )
    ease_artifact: str | None = Field(
        None, description="EASE artifact (lmrec.artifacts.item_item, kind ease): a folder or a storage URI."
    )
    item_knn_artifact: str | None = Field(
        None, description="Item-kNN artifact (lmrec.artifacts.item_item, kind item_knn): a folder or a "
                          "storage URI."
    )
    weights: EnsembleWeights = Field(default_factory=EnsembleWeights, description="Fusion weights per member.")
    rating_weights: RatingWeights | None = Field(
        None, description="Weights of /predict's blend of the members' predicted ratings. Null: the fusion weights "
                          "of the members that predict ratings. An ensemble_artifact sets its fitted ones."
    )
    ensemble_artifact: str | None = Field(
        None, description="Ensemble artifact (`lmrec ensemble`): a folder or a storage URI. It names the member "
                          "artifacts and their fusion weights, so it replaces two_tower_artifact, the other members' "
                          "*_artifact, weights and rating_weights; Serve fuses /recommend with its ranking weights "
                          "and blends /predict with its rating weights."
    )
    max_body_bytes: int = Field(65536, ge=1024, le=16 * 2**20, description="Larger request bodies get 413.")
    liked_threshold: float = Field(4.0, description="Ratings at or above this count as liked (explanations).")
    retrieval: RetrievalArgs = Field(default_factory=RetrievalArgs,
                                     description="Approximate top-k retrieval for large catalogues.")

    @model_validator(mode="after")
    def _members(self) -> "ServeAppArgs":
        if self.ensemble_artifact is not None:
            named = {"two_tower_artifact", "weights", "rating_weights", *map(artifact_arg, COLLABORATIVE)}
            clash = sorted(named & self.model_fields_set)
            if clash:
                raise ValueError(f"ensemble_artifact names the members and their weights: remove {', '.join(clash)} "
                                 f"(or remove ensemble_artifact)")
            return self
        if self.two_tower_artifact is None:
            raise ValueError("two_tower_artifact is required (or set ensemble_artifact)")
        given = [w for w in (self.weights, self.rating_weights) if w is not None]
        missing = sorted({m for m in COLLABORATIVE for w in given
                          if m in w.model_fields_set and getattr(w, m) > 0 and self.artifact(m) is None})
        if missing:
            raise ValueError(f"weights for {', '.join(missing)} but no {', '.join(map(artifact_arg, missing))}: a "
                             f"member is weighted only when it has an artifact")
        if not any(w > 0 for w in self.served_weights().values()):
            raise ValueError("every member weight is 0")
        return self

    def artifact(self, member: str) -> str | None:
        """The artifact location of ``member`` (``two_tower`` or one of ``COLLABORATIVE``), or None."""
        return getattr(self, artifact_arg(member))

    def served_weights(self) -> dict[str, float]:
        """The weights of the members that have an artifact (what the ingress fuses), two_tower first."""
        return {m: w for m, w in self.weights.model_dump().items() if self.artifact(m) is not None}

    def served_rating_weights(self) -> dict[str, float]:
        """``rating_weights`` (default: the fusion weights) of the members that have an artifact."""
        weights = self.rating_weights if self.rating_weights is not None else self.weights
        return {m: w for m, w in weights.model_dump().items() if self.artifact(m) is not None}


def resolve_ensemble(args: ServeAppArgs) -> ServeAppArgs:
    """``args`` with the members and weights of its ``ensemble_artifact`` in place of it; other args unchanged.

    The ensemble artifact's manifest is verified (sha256 of ensemble.json), its member locations must be absolute
    or URIs without traversal, and each member's manifest must be the one the weights were fitted for. Its ranking
    weights fuse /recommend and cold start, its rating weights blend /predict (members it gives none: 0).
    """
    if args.ensemble_artifact is None:
        return args
    from lmrec.artifacts.ensemble import load_ensemble_artifact

    ens = load_ensemble_artifact(args.ensemble_artifact)
    served = list(EnsembleWeights.model_fields)
    if "two_tower" not in ens.members or not set(ens.members) <= set(served):
        raise ValueError(f"{args.ensemble_artifact}: members {sorted(ens.members)}; Serve needs two_tower and "
                         f"fuses only {', '.join(sorted(served))}")
    unrated = sorted(m for m, w in ens.rating_weights.items() if w > 0 and m not in RatingWeights.model_fields)
    if unrated:
        raise ValueError(f"{args.ensemble_artifact}: rating weights for {', '.join(unrated)}, which Serve cannot "
                         f"rate with (it blends {', '.join(RatingWeights.model_fields)})")
    return ServeAppArgs(
        **{artifact_arg(m): ens.members.get(m) for m in served},
        weights=EnsembleWeights(**{m: ens.weights.get(m, 0.0) for m in served}),
        rating_weights=RatingWeights(**{m: ens.rating_weights.get(m, 0.0) for m in RatingWeights.model_fields}),
        max_body_bytes=args.max_body_bytes, liked_threshold=args.liked_threshold, retrieval=args.retrieval,
    )


def check_artifacts(args: ServeAppArgs) -> None:
    """Fail at build time, with the location, when an artifact folder is missing (hashes are checked at load).

    Locations are local folders or URIs (``lmrec.storage``); a URI with a traversal segment is refused here.
    """
    from lmrec.storage import exists, join, normalize

    for path in (args.artifact(m) for m in EnsembleWeights.model_fields):
        if path is not None and not exists(join(path, "manifest.json")):
            raise FileNotFoundError(f"{normalize(path)}: no manifest.json (not an artifact folder)")


def build_app(args: ServeAppArgs):
    """The Serve application for ``args`` (Serve validates a dict ``args:`` block into ``ServeAppArgs``)."""
    from lmrec.serving.encoder_service import TextEncoderService
    from lmrec.serving.ensemble import EnsembleIngress
    from lmrec.serving.catalog import ItemCatalog
    from lmrec.serving.scorers import MEMBER_DEPLOYMENTS, TwoTowerScorer, bound_member
    from lmrec.storage import normalize

    args = resolve_ensemble(ServeAppArgs.model_validate(args) if not isinstance(args, ServeAppArgs) else args)
    check_artifacts(args)
    deployments = {"two_tower": TwoTowerScorer, **MEMBER_DEPLOYMENTS}
    # Serve finds the bound deployments nested in the members and hands the ingress a DeploymentHandle for each
    members = {m: bound_member(deployments[m], normalize(args.artifact(m)))
               for m in ("two_tower", *COLLABORATIVE) if args.artifact(m) is not None}
    encoder = TextEncoderService.options(user_config={"artifact_dir": normalize(args.two_tower_artifact)}).bind()
    return EnsembleIngress.bind(members, encoder, ItemCatalog.bind(), args.served_weights(),
                                args.served_rating_weights(), args.max_body_bytes, args.liked_threshold,
                                args.retrieval.model_dump())


class LocalHandle:
    """In-process stand-in for a ``DeploymentHandle``: ``await h.method.remote(*args)`` calls ``obj.method``."""

    def __init__(self, obj) -> None:
        self._obj = obj

    def __getattr__(self, name: str):
        fn = getattr(self._obj, name)

        class _Method:
            @staticmethod
            async def remote(*a, **k):
                out = fn(*a, **k)
                return await out if inspect.isawaitable(out) else out

        return _Method


class _LocalMember:
    """The member-deployment surface (``call``, ``info``, ``item_ids``, ``item_texts``) over a plain member."""

    def __init__(self, member) -> None:
        self.member = member

    def call(self, method: str, *args, **kwargs):
        from lmrec.serving.protocol import call_member

        return call_member(self.member, method, *args, **kwargs)

    def info(self) -> dict:
        return self.member.info

    def item_ids(self):
        return self.member.sha256, self.member.item_ids

    def sha256(self) -> str:
        return self.member.sha256

    def score_table(self):
        return self.member.table

    def item_texts(self):
        return self.member.sha256, self.member.table.item_texts


def local_member(member):
    """A ``Member`` of the router over an in-process member object (``lmrec.serving.members``)."""
    from lmrec.serving.protocol import Member

    return Member(LocalHandle(_LocalMember(member)), member.capabilities)


class _LocalEncoder:
    """The encoder-service surface without micro-batching: one forward pass per text."""

    def __init__(self, core) -> None:
        self.core = core

    def encode(self, text: str):
        return self.core.sha256, self.core.encode([text])[0]

    def stats(self) -> dict:
        return {"sha256": self.core.sha256, "batches": None}


def build_bare_app(args: ServeAppArgs, tokens=None):
    """The same FastAPI routes and computation in one process (no Ray): the benchmark's overhead baseline.

    ``tokens``: ``lmrec.serving.auth.Tokens`` (default: from this process's environment, as a replica does)."""
    from lmrec.serving.api import build_api
    from lmrec.serving.auth import Tokens
    from lmrec.serving.catalog import ItemCatalogCore
    from lmrec.serving.encoder_service import TextEncoderCore
    from lmrec.serving.members import MEMBER_CLASSES
    from lmrec.serving.metrics import ServiceMetrics
    from lmrec.serving.router import EnsembleRouter

    args = resolve_ensemble(ServeAppArgs.model_validate(args) if not isinstance(args, ServeAppArgs) else args)
    check_artifacts(args)
    members = {m: local_member(MEMBER_CLASSES[m](args.artifact(m)))
               for m in ("two_tower", *COLLABORATIVE) if args.artifact(m) is not None}
    router = EnsembleRouter(
        members, LocalHandle(_LocalEncoder(TextEncoderCore(args.two_tower_artifact))), LocalHandle(ItemCatalogCore()),
        args.served_weights(), args.served_rating_weights(), liked_threshold=args.liked_threshold,
        metrics=ServiceMetrics(prometheus=False), **args.retrieval.model_dump(),
    )
    return build_api(router, args.max_body_bytes, title="lmrec recommendation service (bare, single process)",
                     tokens=tokens if tokens is not None else Tokens.from_env())
