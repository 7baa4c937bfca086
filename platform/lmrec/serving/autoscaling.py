"""Ingress autoscaling on CPU use, for Serve's high-throughput mode (HAProxy in front of the ingress replicas).

Serve's default policy scales on ongoing requests, which an ingress replica counts itself. Behind HAProxy the
queue is in HAProxy, and a replica that runs its synchronous ``/recommend`` handler and its own metrics sampling
on one event loop never samples a running request: under a 16-client load step it stayed at one replica even
with ``target_ongoing_requests: 0.6`` (``benchmarks/results/serve.json`` of commit 7f0fd94). CPU time does not
depend on where the queue is: each ingress replica reports the fraction of one core its process used since the
last report (``record_autoscaling_stats``), and ``CpuUtilizationPolicy`` asks for as many replicas as the summed
fractions need at ``target_cpu`` each. Serve still applies min/max replicas and the up/down-scale delays.

Configured per deployment in the Serve YAML::

    autoscaling_config:
      min_replicas: 1
      max_replicas: 4
      policy:
        policy_function: lmrec.serving.autoscaling:CpuUtilizationPolicy
        policy_kwargs: {target_cpu: 0.6}
"""

from __future__ import annotations

import math
import time
from typing import Any

METRIC = "cpu_fraction"


class CpuClock:
    """The fraction of one core this process used between two calls of ``fraction`` (all its threads)."""

    def __init__(self) -> None:
        self._last = (time.perf_counter(), time.process_time())

    def fraction(self) -> float:
        wall, cpu = time.perf_counter(), time.process_time()
        last_wall, last_cpu = self._last
        self._last = (wall, cpu)
        return max(0.0, cpu - last_cpu) / max(wall - last_wall, 1e-6)


class CpuUtilizationPolicy:
    """Desired replicas = ceil(sum of the replicas' CPU fractions / ``target_cpu``), at least 1.

    Reads the ``cpu_fraction`` custom metric (averaged by Serve over ``look_back_period_s``); until every running
    replica has reported, it keeps the current target, so a replica that is still starting does not count as idle.
    """

    def __init__(self, target_cpu: float = 0.6) -> None:
        if not 0 < target_cpu <= 1:
            raise ValueError(f"target_cpu must be in (0, 1], got {target_cpu}")
        self.target_cpu = target_cpu

    def __call__(self, ctx: Any) -> tuple[int, dict]:
        per_replica = (ctx.aggregated_metrics or {}).get(METRIC) or {}
        if len(per_replica) < ctx.current_num_replicas:
            return ctx.target_num_replicas, {}
        total = float(sum(per_replica.values()))
        return max(1, math.ceil(total / self.target_cpu)), {}
