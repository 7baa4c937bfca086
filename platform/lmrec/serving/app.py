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
items, similar-by-text, predictions and explanations call the member deployments.

The artifact paths become each member's ``user_config`` (``{"artifact_dir": ...}``). Hot swap: point those
``user_config`` entries of the Serve config at the new artifact and deploy it again; Serve calls ``reconfigure``
on the running replicas (no restart). Changing ``args`` instead restarts every replica (also without failed
requests, but slower). ``build_bare_app`` builds the same routes over in-process members, for the benchmark.

``ensemble_artifact`` (written by ``lmrec ensemble``) names the member artifacts and the fusion weights fitted on
validation in one verified artifact; the builders resolve it into the same members and weights (``resolve_ensemble``).
"""

# No "from __future__ import annotations": Serve reads build_app's annotation with inspect.signature to validate
# the args block into ServeAppArgs, which needs the class object, not a string.
import inspect

from pydantic import Field, model_validator

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
    ensemble_artifact: str | None = Field(
        None, description="Ensemble artifact (`lmrec ensemble`): a folder or a storage URI. It names the member "
                          "artifacts and their fusion weights, so it replaces two_tower_artifact, the other members' "
                          "*_artifact and weights; Serve uses its ranking weights for /recommend and /predict alike."
    )
    max_body_bytes: int = Field(65536, ge=1024, le=16 * 2**20, description="Larger request bodies get 413.")
    liked_threshold: float = Field(4.0, description="Ratings at or above this count as liked (explanations).")

    @model_validator(mode="after")
    def _members(self) -> "ServeAppArgs":
        if self.ensemble_artifact is not None:
            named = {"two_tower_artifact", "weights", *map(artifact_arg, COLLABORATIVE)}
            clash = sorted(named & self.model_fields_set)
            if clash:
                raise ValueError(f"ensemble_artifact names the members and their weights: remove {', '.join(clash)} "
                                 f"(or remove ensemble_artifact)")
            return self
        if self.two_tower_artifact is None:
            raise ValueError("two_tower_artifact is required (or set ensemble_artifact)")
        missing = sorted(m for m in COLLABORATIVE if m in self.weights.model_fields_set
                         and getattr(self.weights, m) > 0 and self.artifact(m) is None)
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


def resolve_ensemble(args: ServeAppArgs) -> ServeAppArgs:
    """``args`` with the members and weights of its ``ensemble_artifact`` in place of it; other args unchanged.

    The ensemble artifact's manifest is verified (sha256 of ensemble.json), its member locations must be absolute
    or URIs without traversal, and each member's manifest must be the one the weights were fitted for. Its JSON has
    ranking and rating weights; the ingress has one weights dict, so the ranking weights fuse every route.
    """
    if args.ensemble_artifact is None:
        return args
    from lmrec.artifacts.ensemble import load_ensemble_artifact

    ens = load_ensemble_artifact(args.ensemble_artifact)
    served = list(EnsembleWeights.model_fields)
    if "two_tower" not in ens.members or not set(ens.members) <= set(served):
        raise ValueError(f"{args.ensemble_artifact}: members {sorted(ens.members)}; Serve needs two_tower and "
                         f"fuses only {', '.join(sorted(served))}")
    return ServeAppArgs(
        **{artifact_arg(m): ens.members.get(m) for m in served},
        weights=EnsembleWeights(**{m: ens.weights.get(m, 0.0) for m in served}),
        max_body_bytes=args.max_body_bytes, liked_threshold=args.liked_threshold,
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
    from lmrec.serving.scorers import MEMBER_DEPLOYMENTS, TwoTowerScorer
    from lmrec.storage import normalize

    args = resolve_ensemble(ServeAppArgs.model_validate(args) if not isinstance(args, ServeAppArgs) else args)
    check_artifacts(args)
    tt_config = {"artifact_dir": normalize(args.two_tower_artifact)}
    two_tower = TwoTowerScorer.options(user_config=tt_config).bind()
    encoder = TextEncoderService.options(user_config=tt_config).bind()
    # Serve finds the bound deployments nested in the dict and hands the ingress a DeploymentHandle for each
    members = {m: MEMBER_DEPLOYMENTS[m].options(user_config={"artifact_dir": normalize(args.artifact(m))}).bind()
               for m in COLLABORATIVE if args.artifact(m) is not None}
    return EnsembleIngress.bind(two_tower, members, encoder, ItemCatalog.bind(), args.served_weights(),
                                args.max_body_bytes, args.liked_threshold)


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
    from lmrec.serving.encoder_service import TextEncoderCore
    from lmrec.serving.ensemble import EnsembleRouter
    from lmrec.serving.members import ItemItemMember, MFMember, TwoTowerMember
    from lmrec.serving.auth import Tokens
    from lmrec.serving.catalog import ItemCatalogCore
    from lmrec.serving.metrics import ServiceMetrics

    args = resolve_ensemble(ServeAppArgs.model_validate(args) if not isinstance(args, ServeAppArgs) else args)
    check_artifacts(args)
    member_cls = {"mf": MFMember, "ease": ItemItemMember, "item_knn": ItemItemMember}
    members = {m: LocalHandle(_LocalMember(member_cls[m](args.artifact(m))))
               for m in COLLABORATIVE if args.artifact(m) is not None}
    router = EnsembleRouter(
        LocalHandle(_LocalMember(TwoTowerMember(args.two_tower_artifact))), members,
        LocalHandle(_LocalEncoder(TextEncoderCore(args.two_tower_artifact))), LocalHandle(ItemCatalogCore()),
        args.served_weights(), liked_threshold=args.liked_threshold, metrics=ServiceMetrics(prometheus=False),
    )
    return build_api(router, args.max_body_bytes, title="lmrec recommendation service (bare, single process)",
                     tokens=tokens if tokens is not None else Tokens.from_env())
