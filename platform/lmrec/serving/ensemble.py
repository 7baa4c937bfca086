"""The Serve ingress of the ensemble: FastAPI routes (``api.build_api``) over an ``EnsembleRouter``
(``lmrec.serving.router``: the request logic, Ray-free) of the member deployments' handles."""

from __future__ import annotations

from ray import serve

from lmrec.serving.api import build_api
from lmrec.serving.auth import Tokens
from lmrec.serving.autoscaling import METRIC as CPU_METRIC, CpuClock
from lmrec.serving.metrics import ServiceMetrics
from lmrec.serving.protocol import Member
from lmrec.serving.router import EnsembleRouter
from lmrec.strategies.fusion import fuse_scores  # noqa: F401  (served here of old: tests check it is one function)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress()
class EnsembleIngress:
    """HTTP ingress over an ``EnsembleRouter`` (``members``: name -> ``Member``; Serve finds the bound member
    deployments nested in it and passes a handle in place of each)."""

    def __init__(self, members: dict[str, Member], encoder, catalog, weights: dict[str, float],
                 rating_weights: dict[str, float] | None = None, max_body_bytes: int = 65536,
                 liked_threshold: float = 4.0, retrieval: dict | None = None) -> None:
        # retrieval: ServeAppArgs.retrieval as a dict (exact_below, nprobe)
        self.router = EnsembleRouter(members, encoder, catalog, weights, rating_weights,
                                     liked_threshold=liked_threshold, metrics=ServiceMetrics(), **(retrieval or {}))
        self.max_body_bytes = max_body_bytes
        self._cpu = CpuClock()

    def __serve_build_asgi_app__(self):
        # the tokens of this replica's environment (lmrec serve forwards them: lmrec.serving.auth)
        return build_api(self.router, self.max_body_bytes, tokens=Tokens.from_env())

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metric hook: this replica's CPU use (``lmrec.serving.autoscaling``)."""
        return {CPU_METRIC: self._cpu.fraction()}
