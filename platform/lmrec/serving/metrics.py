"""Prometheus metrics of the ingress through ``ray.serve.metrics`` (Ray exports them on each node's metrics port,
``ray_``-prefixed, with Serve's deployment/replica/application tags added).

    lmrec_requests_total{endpoint, status}   every HTTP request the API answered
    lmrec_cold_start_requests_total          POST /cold-start/recommend calls (cold-start share = this / requests)
    lmrec_fusion_latency_ms                  time to fuse member scores and pick the top k, per user

The replica also keeps the same counts in memory (``snapshot``, shown by ``GET /stats``): a check that needs no
Prometheus scrape, and what the bare single-process app (no Ray) reports.
"""

from __future__ import annotations

import threading
from collections import Counter as _Tally

FUSION_BOUNDARIES_MS = [0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250]


class ServiceMetrics:
    """Request, cold-start and fusion-latency metrics; ``prometheus=False`` keeps only the in-memory counts."""

    def __init__(self, prometheus: bool = True) -> None:
        self._lock = threading.Lock()
        self.requests: _Tally = _Tally()
        self.cold_starts = 0
        self.fusions = 0
        self._prom = None
        if prometheus:
            from ray.serve import metrics

            self._prom = (
                metrics.Counter("lmrec_requests_total", "HTTP requests by endpoint and status.",
                                tag_keys=("endpoint", "status")),
                metrics.Counter("lmrec_cold_start_requests_total", "Cold-start recommendation requests."),
                metrics.Histogram("lmrec_fusion_latency_ms", "Score fusion + top-k time per user (ms).",
                                  boundaries=FUSION_BOUNDARIES_MS),
            )

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, str(status))] += 1
        if self._prom:
            self._prom[0].inc(tags={"endpoint": endpoint, "status": str(status)})

    def cold_start(self) -> None:
        with self._lock:
            self.cold_starts += 1
        if self._prom:
            self._prom[1].inc()

    def fusion(self, ms: float) -> None:
        with self._lock:
            self.fusions += 1
        if self._prom:
            self._prom[2].observe(ms)

    def snapshot(self) -> dict:
        """This replica's counts (JSON-ready)."""
        with self._lock:
            counts = sorted(self.requests.items())
            return {"requests": [{"endpoint": e, "status": s, "count": n} for (e, s), n in counts],
                    "cold_start_requests": self.cold_starts, "fusions": self.fusions}
