"""Reliability and security figures: worker kills in training, replica kills under load, fuzzing, a soak.

Run: `.venv/bin/python benchmarks/reliability.py` (LMREC_DATA_DIR pointing at the datasets; ~45 min on 2 cores),
or one part at a time with `--only training|fuzz-bare|serving|fuzz|soak` (each part updates its own key of the
results; parts may run concurrently).
Writes benchmarks/results/reliability.json. ``tests/reliability/`` runs a fast subset of the same functions.

- training: a clean 2-worker Ray Train run of tests/configs/tiny_two_tower.yaml, then ``--trials`` seeded runs in
  which one worker is SIGKILLed at a random point (a random epoch and rank; before a random batch, or a random
  delay into the checkpoint write and upload). Every run must finish, resume from a checkpoint that verifies
  against its sha256 manifest, keep only intact checkpoints, and end within ``TOLERANCE_RMSE`` of the clean run.
- serving: the Serve app of serve/recommender.yaml (two replicas of the ingress and the two-tower scorer) under
  steady open-loop /recommend load; one replica actor is killed (``ray.kill``) mid-run. Counts failed requests
  with and without the client retry policy of docs/reliability.md, and the time until the deployment is back to
  its replica count with no failures.
- fuzz: schemathesis generates requests for every operation of the service's OpenAPI schema (valid and invalid
  bodies) against the real Serve endpoint: no 5xx, no replica restarted.
- fuzz-bare: the same fuzzing in-process against ``build_bare_app`` (no Ray).
- soak: /recommend at 70% of the highest rate this deployment sustains with p99 <= 50 ms, measured just before
  (closed loop for the ceiling, then an open-loop sweep below it), for ``--soak-seconds``; RSS of every Serve
  process and latency sampled every 10 s. ``--serve-mode high-throughput`` runs Serve behind HAProxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from harness import REPO, RESULTS, write_results

SPEC = REPO / "tests" / "configs" / "tiny_two_tower.yaml"
TOLERANCE_RMSE = 0.03  # |final val RMSE of a killed-and-resumed run - the clean run's|
RECOVERY_TARGET_S = 10.0
FAILED_TARGET = 0.001
SOAK_RSS_BOUND_MIB = 64.0  # allowed growth of the Serve processes' summed RSS, first to last soak minute


def start_ray(tries: int = 3, **kwargs) -> None:
    """``ray.init`` made patient for a saturated shared machine (load average >> cores).

    There the dashboard agent, a Python process, can take longer to start than the raylet's fixed wait for its
    port file (the raylet then exits), and the raylet longer to register than ``ray.init``'s fixed 30 s. So the
    agents get fixed free ports (nothing to wait for), registration is awaited up to 180 s, and the whole start
    is retried.
    """
    import socket

    import ray
    import ray._private.parameter as parameter
    import ray._private.services as services

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    plain_init, get_node = parameter.RayParams.__init__, services.get_node

    def with_ports(self, *a, **k):
        plain_init(self, *a, **k)
        for name in ("metrics_agent_port", "dashboard_agent_listen_port", "runtime_env_agent_port",
                     "metrics_export_port"):
            if not getattr(self, name, None):
                setattr(self, name, free_port())

    def patient_get_node(*a, **k):
        deadline = time.monotonic() + 180
        while True:
            try:
                return get_node(*a, **k)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    parameter.RayParams.__init__, services.get_node = with_ports, patient_get_node
    try:
        for attempt in range(tries):
            try:
                ray.init(**kwargs)
                return
            except Exception:  # noqa: BLE001 - Ray raises a bare Exception for these time-outs
                ray.shutdown()
                _kill_children_of_failed_start()
                if attempt == tries - 1:
                    raise
                time.sleep(5)
    finally:
        parameter.RayParams.__init__, services.get_node = plain_init, get_node


def _kill_children_of_failed_start() -> None:
    """A failed ``ray.init`` leaves the GCS, dashboard and agents it started running: end them (ours only)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            if any("ray" in part for part in child.cmdline()[:3]):
                child.kill()
        except psutil.Error:
            pass


# ---------------------------------------------------------------- training faults

def training_run(storage: Path, name: str, fault: dict | None, epochs: int | None = None) -> dict:
    """One ``lmrec.training.ray_train.train`` of the tiny spec (``fault`` as ``LMREC_FAULT_INJECTION``)."""
    from lmrec.config.base import load_spec
    from lmrec.config.train import TrainSpec
    from lmrec.training.checkpoint_manifest import CheckpointIntegrityError, verify_checkpoint
    from lmrec.training.ray_train import FAULT_ENV, train

    overrides = {"scaling.storage_path": str(storage), "name": name}
    if epochs is not None:
        overrides["optim.epochs"] = epochs
    spec = load_spec(TrainSpec, SPEC, overrides)
    os.environ.pop(FAULT_ENV, None)
    if fault is not None:
        os.environ[FAULT_ENV] = json.dumps(fault)
    start = time.perf_counter()
    try:
        result = train(spec, spec_path=SPEC)
    finally:
        os.environ.pop(FAULT_ENV, None)
    run = Path(result.run_path)
    marker = run / ".fault_injected"
    intact = {}
    for folder in sorted(run.glob("epoch_*")):
        try:
            verify_checkpoint(folder)
            intact[folder.name] = True
        except CheckpointIntegrityError:
            intact[folder.name] = False
    epochs_run = [int(h["epoch"]) for h in result.history]
    return {
        "fault": fault,
        "killed": marker.read_text().strip() if marker.exists() else None,
        "epochs": epochs_run,
        "resumed_at": [int(h["resumed_at_epoch"]) for h in result.history],
        "finished": epochs_run == list(range(spec.optim.epochs)),
        "kept_checkpoints_intact": intact,
        "final_val_rmse": float(result.metrics["val_rmse"]),
        "best_val_rmse": float(result.best_metrics["val_rmse"]),
        "artifact": result.artifact_path is not None and (Path(result.artifact_path) / "manifest.json").exists(),
        "seconds": round(time.perf_counter() - start, 1),
        "run_path": result.run_path,
        "checkpoint_path": result.checkpoint_path,
    }


def batches_per_worker() -> int:
    """Batches each of the 2 workers sees per epoch of the tiny spec (kill points are drawn below it)."""
    from lmrec.config.base import load_spec
    from lmrec.config.train import TrainSpec
    from lmrec.training.data import prepare_data

    spec = load_spec(TrainSpec, SPEC)
    rows = len(prepare_data(spec).train_frame()) // spec.scaling.num_workers
    return max(1, rows // spec.optim.batch_size)  # floor: Ray's split may leave a worker one batch short


def fault_plan(rng: random.Random, epochs: int, n_batches: int) -> dict:
    """A random kill point: epoch, rank, and either a batch or a delay into the checkpoint write."""
    fault = {"epoch": rng.randrange(epochs), "rank": rng.randrange(2), "point": rng.choice(["step", "checkpoint"])}
    if fault["point"] == "step":
        fault["batch"] = rng.randrange(n_batches)
    else:  # 0: files written, not sealed; otherwise somewhere in sealing, the upload, or just after it
        fault["delay_s"] = 0.0 if rng.random() < 0.3 else round(rng.uniform(0.01, 1.5), 3)
    return fault


def check_trial(trial: dict, clean_rmse: float) -> dict:
    """The acceptance checks of one killed run."""
    checks = {
        "fault_fired": trial["killed"] is not None,
        "finished": trial["finished"],
        "resumed_from_a_checkpoint_or_start": all(r <= e for r, e in zip(trial["resumed_at"], trial["epochs"])),
        "kept_checkpoints_intact": all(trial["kept_checkpoints_intact"].values()),
        "artifact_written": trial["artifact"],
        "rmse_within_tolerance": abs(trial["final_val_rmse"] - clean_rmse) <= TOLERANCE_RMSE,
    }
    return checks | {"survived": all(checks.values())}


def training_campaign(trials: int, seed: int) -> dict:
    import ray

    epochs = 3
    n_batches = batches_per_worker()
    storage = Path(tempfile.mkdtemp(prefix="lmrec-rel-train-"))
    start_ray(num_cpus=2, include_dashboard=False, log_to_driver=False,
              _temp_dir=tempfile.mkdtemp(prefix="lmrec-rb-", dir="/tmp"))
    try:
        clean = [training_run(storage, f"clean-{i}", None) for i in range(2)]
        clean_rmse = clean[0]["final_val_rmse"]
        rng = random.Random(seed)
        runs = []
        head = {"spec": str(SPEC.relative_to(REPO)), "epochs": epochs, "workers": 2, "batches_per_worker": n_batches,
                "seed": seed, "tolerance_rmse": TOLERANCE_RMSE, "clean_runs": clean,
                "clean_rmse_spread": round(abs(clean[0]["final_val_rmse"] - clean[1]["final_val_rmse"]), 5)}
        for i in range(trials):
            fault = fault_plan(rng, epochs, n_batches)
            trial = training_run(storage, f"trial-{i:02d}", fault)
            trial["checks"] = check_trial(trial, clean_rmse)
            trial["delta_rmse"] = round(trial["final_val_rmse"] - clean_rmse, 5)
            runs.append(trial)
            print("trial", i, json.dumps({k: trial[k] for k in ("fault", "killed", "resumed_at", "delta_rmse",
                                                                "seconds")}), trial["checks"]["survived"],
                  flush=True)
            merge_results({"training": _campaign(head, runs, None) | {"complete": False}})  # progress so far
        torn = torn_latest_checkpoint(storage)
    finally:
        ray.shutdown()
    return _campaign(head, runs, torn) | {"complete": True}


def _campaign(head: dict, runs: list[dict], torn: dict | None) -> dict:
    return head | {
        "trials": runs, "n_trials": len(runs),
        "faults_fired": sum(t["checks"]["fault_fired"] for t in runs),
        "faults_survived": sum(t["checks"]["survived"] for t in runs),
        "max_abs_delta_rmse": max((abs(t["delta_rmse"]) for t in runs), default=None),
        "torn_latest_checkpoint": torn,
    }


def torn_latest_checkpoint(storage: Path) -> dict:
    """A committed checkpoint damaged on storage (truncated) is skipped on resume for the newest intact one."""
    first = training_run(storage, "torn", None)
    latest = Path(first["checkpoint_path"])
    victim = latest / "checkpoint.pt"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    intact = [int(p.name.split("_")[1]) for p in Path(first["run_path"]).glob("epoch_*") if p != latest]
    again = training_run(storage, "torn", None, epochs=first["epochs"][-1] + 2)
    return {"truncated": str(victim.relative_to(storage)), "newest_intact_epoch": max(intact),
            "resumed_at_epoch": again["resumed_at"][-1], "finished": again["finished"],
            "skipped_torn": again["resumed_at"][-1] == max(intact) + 1}


# ---------------------------------------------------------------- serving: client, load, replica kills

class RetryPolicy:
    """The client policy of docs/reliability.md: retry transport errors and 500/502/503/504 with capped,
    jittered exponential backoff, honouring Retry-After, within a total deadline."""

    RETRY_STATUS = frozenset({500, 502, 503, 504})

    def __init__(self, attempts: int = 4, base_s: float = 0.1, cap_s: float = 2.0, deadline_s: float = 10.0,
                 attempt_timeout_s: float = 5.0) -> None:
        self.attempts, self.base_s, self.cap_s = attempts, base_s, cap_s
        self.deadline_s, self.attempt_timeout_s = deadline_s, attempt_timeout_s

    def backoff(self, attempt: int, rng: random.Random, retry_after: str | None) -> float:
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            return min(float(retry_after), self.cap_s)
        return rng.uniform(0, min(self.cap_s, self.base_s * 2 ** attempt))  # "full jitter"


async def post_with_retry(session, url: str, body: dict, policy: RetryPolicy, rng: random.Random) -> dict:
    """One logical request: {"ok", "attempts", "first_error", "latency_s"} (latency over every attempt)."""
    import aiohttp

    start = time.perf_counter()
    first_error = None
    for attempt in range(policy.attempts):
        retry_after = None
        try:
            async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=policy.attempt_timeout_s)) as r:
                await r.read()
                if r.status < 500:
                    return {"ok": r.status == 200, "status": r.status, "attempts": attempt + 1,
                            "first_error": first_error, "latency_s": time.perf_counter() - start}
                error, retry_after = f"HTTP {r.status}", r.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            error = type(e).__name__
        first_error = first_error or error
        wait = policy.backoff(attempt, rng, retry_after)
        if attempt + 1 == policy.attempts or time.perf_counter() - start + wait > policy.deadline_s:
            break
        await asyncio.sleep(wait)
    return {"ok": False, "status": None, "attempts": attempt + 1, "first_error": first_error,
            "latency_s": time.perf_counter() - start}


async def open_loop_with_events(url: str, bodies, rate: float, seconds: float, policy: RetryPolicy,
                                events: dict[float, callable] | None = None) -> list[dict]:
    """Poisson arrivals at ``rate`` for ``seconds``; ``events`` maps a second offset to a callable run then
    (in a thread). Returns one record per logical request with its send time ``t`` (seconds from start)."""
    import aiohttp

    rng, jitter = np.random.default_rng(0), random.Random(1)
    records: list[dict] = []
    pending_events = sorted((events or {}).items())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        async def one(t: float, body: dict):
            rec = await post_with_retry(session, url, body, policy, jitter)
            rec["t"] = t
            records.append(rec)

        start = time.perf_counter()
        tasks, t = [], 0.0
        event_tasks = []
        while t < seconds:
            t += rng.exponential(1.0 / rate)
            while pending_events and pending_events[0][0] <= t:
                _, fn = pending_events.pop(0)
                event_tasks.append(asyncio.create_task(asyncio.to_thread(fn)))
            await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
            tasks.append(asyncio.create_task(one(t, next(bodies))))
        await asyncio.gather(*tasks, *event_tasks)
    return records


def replica_actors(app: str = "recommender") -> dict[str, list[str]]:
    """Live Serve replica actor names by deployment (namespace "serve")."""
    import ray

    out: dict[str, list[str]] = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        name = a["name"] if isinstance(a, dict) else a
        if name.startswith("SERVE_REPLICA::") and f"::{app}#" in name:
            deployment = name.split("#")[1]
            out.setdefault(deployment, []).append(name)
    return out


def running_replicas(app: str = "recommender") -> dict[str, int]:
    from ray import serve

    deps = serve.status().applications[app].deployments
    return {n: int(sum(c for s, c in d.replica_states.items() if str(s).endswith("RUNNING"))) for n, d in deps.items()}


def kill_replica_under_load(url: str, bodies, deployment: str, rate: float, seconds: float, kill_at_s: float,
                            policy: RetryPolicy | None = None) -> dict:
    """Steady /recommend load; one ``deployment`` replica actor is killed at ``kill_at_s``. Failures counted per
    logical request (after retries) and per first attempt; recovery = the replica count is back and no
    request sent since has needed a retry."""
    import ray

    policy = policy or RetryPolicy()
    target = running_replicas()[deployment]
    victims = replica_actors()[deployment]
    state = {"killed_at": None, "victim": victims[0], "restored_at": None}
    t0 = {"v": None}

    def kill():
        ray.kill(ray.get_actor(state["victim"], namespace="serve"), no_restart=True)
        state["killed_at"] = time.perf_counter() - t0["v"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the controller notices the dead actor and starts a replacement
            names = replica_actors().get(deployment, [])
            if state["victim"] not in names and running_replicas().get(deployment, 0) >= target:
                state["restored_at"] = time.perf_counter() - t0["v"]
                return
            time.sleep(0.2)

    async def go():
        t0["v"] = time.perf_counter()
        return await open_loop_with_events(url, bodies, rate, seconds, policy, {kill_at_s: kill})

    records = asyncio.run(go())
    killed = state["killed_at"]
    bad = [r for r in records if r["attempts"] > 1 or not r["ok"]]
    last_bad = max((r["t"] for r in bad), default=None)
    lat = np.asarray([r["latency_s"] for r in records if r["ok"]]) * 1000
    failed = sum(not r["ok"] for r in records)
    recovery = None
    if killed is not None:
        ends = [x for x in (state["restored_at"], last_bad) if x is not None]
        recovery = round(max(ends) - killed, 2) if ends and state["restored_at"] is not None else None
    return {
        "deployment": deployment, "replicas": target, "offered_rps": rate, "seconds": seconds,
        "killed_at_s": round(killed, 2) if killed is not None else None, "victim": state["victim"],
        "requests": len(records), "failed_requests": failed,
        "failed_fraction": round(failed / max(len(records), 1), 6),
        "first_attempt_failures": sum(r["first_error"] is not None for r in records),
        "retried_requests": sum(r["attempts"] > 1 for r in records),
        "errors_seen": sorted({r["first_error"] for r in records if r["first_error"]}),
        "replacement_running_after_s": round(state["restored_at"] - killed, 2) if state["restored_at"] else None,
        "last_retry_needed_after_s": round(last_bad - killed, 2) if last_bad is not None and killed else None,
        "recovery_s": recovery,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "retry_policy": vars(policy),
    }


# ---------------------------------------------------------------- hostile HTTP input

def fuzz_schema(schema, examples_per_operation: int, seed: int = 0, headers: list[dict | None] | None = None) -> dict:
    """Generated requests (schemathesis: valid and schema-violating) for every operation; counts by status.

    ``headers``: extra headers sent in turn, one set per generated request (e.g. no token, a wrong one, the right
    one: so that the auth paths are fuzzed too)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings

    counts: dict[str, dict[str, int]] = {}
    server_errors: list[dict] = []
    turns = headers or [None]
    sent = [0]
    for result in schema.get_all_operations():
        op = result.ok()
        key = f"{op.method.upper()} {op.path}"
        by_status = counts.setdefault(key, {})
        strategy = (op.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE)
                    | op.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE))

        @settings(max_examples=examples_per_operation, deadline=None, database=None, derandomize=True,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case):
            extra = turns[sent[0] % len(turns)]
            sent[0] += 1
            response = case.call(timeout=30, headers=extra)
            by_status[str(response.status_code)] = by_status.get(str(response.status_code), 0) + 1
            if response.status_code >= 500:
                server_errors.append({"operation": key, "body": repr(case.body)[:300],
                                      "status": response.status_code, "response": response.text[:300]})

        run()
    total = sum(sum(c.values()) for c in counts.values())
    return {"requests": total, "by_operation": counts, "server_errors": len(server_errors),
            "server_error_examples": server_errors[:5]}


# ---------------------------------------------------------------- soak

def serve_processes() -> dict[int, str]:
    """pid -> process title of this cluster's Serve processes (controller, proxy, replicas): the workers under
    this session's raylet (other Ray clusters on the machine have their own)."""
    import psutil
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    out = {}
    for proc in psutil.process_iter(["pid", "cmdline", "name"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "raylet" in (proc.info["name"] or "") and session in cmd:
            for child in proc.children(recursive=True):
                try:
                    title = " ".join(child.cmdline())
                except psutil.Error:
                    continue
                if title.startswith(("ray::Serve", "ray::ProxyActor")):
                    out[child.pid] = title.split(" ")[0]
    return out


def rss_mib(pids) -> float:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def soak(url: str, bodies, rate: float, seconds: float, sample_every_s: float = 10.0) -> dict:
    """Open loop at ``rate`` for ``seconds``; RSS of the Serve processes and latency per ``sample_every_s``."""
    policy = RetryPolicy(attempts=1)  # no retries: every error counts
    samples: list[dict] = []
    procs = serve_processes()
    stop = {"flag": False}

    async def sampler(t0: float):
        while not stop["flag"]:
            samples.append({"t": round(time.perf_counter() - t0, 1), "rss_mib": round(rss_mib(procs), 1),
                            "load_1m": round(os.getloadavg()[0], 2)})
            await asyncio.sleep(sample_every_s)

    async def go():
        t0 = time.perf_counter()
        task = asyncio.create_task(sampler(t0))
        records = await open_loop_with_events(url, bodies, rate, seconds, policy)
        stop["flag"] = True
        await task
        return records

    records = asyncio.run(go())
    windows = []
    for lo in np.arange(0, seconds, 60.0):
        w = [r for r in records if lo <= r["t"] < lo + 60]
        lat = np.asarray([r["latency_s"] for r in w if r["ok"]]) * 1000
        windows.append({"minute": int(lo // 60), "requests": len(w), "errors": sum(not r["ok"] for r in w),
                        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
                        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None})
    first = [s["rss_mib"] for s in samples if s["t"] < 60] or [samples[0]["rss_mib"]]
    last = [s["rss_mib"] for s in samples if s["t"] >= seconds - 60] or [samples[-1]["rss_mib"]]
    drift = float(np.mean(last) - np.mean(first))
    errors = sum(not r["ok"] for r in records)
    return {"offered_rps": round(rate, 2), "seconds": seconds, "requests": len(records), "errors": errors,
            "processes": sorted(procs.values()), "rss_first_minute_mib": round(float(np.mean(first)), 1),
            "rss_last_minute_mib": round(float(np.mean(last)), 1), "rss_drift_mib": round(drift, 1),
            "rss_bound_mib": SOAK_RSS_BOUND_MIB, "rss_max_mib": max(s["rss_mib"] for s in samples),
            "within_bound": drift <= SOAK_RSS_BOUND_MIB and errors == 0,
            "per_minute": windows, "samples": samples}


# ---------------------------------------------------------------- the Serve app of the benchmark

SOAK_SWEEP_FRACTIONS = (0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0)  # of the closed-loop throughput of this deployment


def sustained_rate(url: str, users: list, items: list) -> dict:
    """The highest rate *this* deployment (its replica counts and proxy mode) sustains on /recommend: a closed
    loop (8 clients, 10 s) for the ceiling, then serve_load's open-loop sweep below it (8 s a rate). Sustained
    means nothing fails, the backlog drains within 1 s and p99 stays within the service's 50 ms target: a rate
    that merely drains an 8 s step with a p99 of 0.5-1 s is at saturation, and held for minutes its backlog
    grows into timeouts (a soak at 70% of such a rate failed half its requests after minute 2)."""
    from serve_load import closed_loop, rate_sweep, request_bodies

    bodies = request_bodies("/recommend", users, items, random.Random(4))
    ceiling = asyncio.run(closed_loop(url, "/recommend", bodies, 8, 10, 100000))["throughput_rps"]
    sweep = rate_sweep({"serve": url}, users, items, [round(f * ceiling, 1) for f in SOAK_SWEEP_FRACTIONS], 8)["serve"]
    return {"closed_loop_rps": ceiling, "max_sustained_rps": sweep["max_sustained_rps"],
            "p99_target_ms": sweep["p99_target_ms"], "p99_ms_at_max": sweep["p99_ms_at_max"],
            "max_draining_rps": sweep["max_draining_rps_tried"], "sweep": sweep["points"]}


def serving_parts(parts: set[str], args) -> dict:
    import ray
    import schemathesis
    from ray import serve

    from lmrec.serving.cli import deploy_config, load_serve_config
    from serve_load import build_artifacts, request_bodies, serve_config

    arts = build_artifacts(args.encoder)
    ids = json.loads((arts["mf"] / "id_maps.json").read_text())
    users, items = ids["user_ids"], ids["item_ids"]
    app_args = {"two_tower_artifact": str(arts["two_tower"]), "mf_artifact": str(arts["mf"])}
    port = 8331
    url = f"http://127.0.0.1:{port}"
    os.environ.setdefault("RAY_worker_niceness", "0")  # as serve_load.py: Serve replicas at the driver's priority
    if args.serve_mode == "high-throughput":  # HAProxy in front of the ingress replicas, as serve_load.py's default
        from lmrec.serving.cli import high_throughput_env

        os.environ.update(high_throughput_env(tempfile.mkdtemp(prefix="hap", dir="/tmp")))
    out = {}
    start_ray(num_cpus=os.cpu_count(), include_dashboard=False, namespace="serve", log_to_driver=False,
              _temp_dir=tempfile.mkdtemp(prefix="lmrec-rs-", dir="/tmp"))
    try:
        raw = serve_config(port, app_args, replicas=2, health_check_period_s=args.health_check_period_s)
        start = time.perf_counter()
        deploy_config(load_serve_config(raw), timeout_s=1200)
        out["serve_start_s"] = round(time.perf_counter() - start, 1)
        out["encoder"] = args.encoder
        out["health_check_period_s"] = args.health_check_period_s
        out["serve_mode"] = args.serve_mode
        bodies = request_bodies("/recommend", users, items, random.Random(0))
        asyncio.run(open_loop_with_events(url + "/recommend", bodies, 5, 3, RetryPolicy()))  # warm-up
        if "serving" in parts:
            rate = args.kill_rps
            out["replica_kills"] = [
                kill_replica_under_load(url + "/recommend", bodies, dep, rate, args.kill_seconds, args.kill_at_s)
                for dep in ("TwoTowerScorer", "EnsembleIngress")]
            for k in out["replica_kills"]:
                print("kill", json.dumps({x: k[x] for x in ("deployment", "requests", "failed_requests",
                                                          "first_attempt_failures", "recovery_s")}), flush=True)
        if "fuzz" in parts:
            before = replica_actors()
            schema = schemathesis.openapi.from_url(url + "/openapi.json")
            fuzz = fuzz_schema(schema, args.fuzz_examples)
            after = replica_actors()
            lost = sorted(set(sum(before.values(), [])) - set(sum(after.values(), [])))
            fuzz |= {"target": "Ray Serve (serve/recommender.yaml)", "replicas_lost": lost,
                     "crashed_replicas": len(lost), "health_after": _health(url)}
            out["fuzz"] = fuzz
            print("fuzz", fuzz["requests"], "requests,", fuzz["server_errors"], "5xx,", len(lost), "replicas lost",
                  flush=True)
        if "soak" in parts:
            measured = sustained_rate(url, users, items)
            rate = 0.7 * measured["max_sustained_rps"]
            soak_bodies = request_bodies("/recommend", users, items, random.Random(3))
            out["soak"] = soak(url + "/recommend", soak_bodies, rate, args.soak_seconds) | {
                "rate_fraction": 0.7, "max_sustained_rps": measured["max_sustained_rps"],
                "rate_source": "measured on this deployment just before the soak", "rate_measurement": measured}
            print("soak", json.dumps({k: v for k, v in out["soak"].items() if k not in ("samples", "per_minute")}),
                  flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def fuzz_bare_app(args) -> dict:
    """The same fuzzing in-process against ``build_bare_app`` (same routes and members, no Ray)."""
    import schemathesis
    from fastapi.testclient import TestClient

    from lmrec.serving.app import build_bare_app
    from lmrec.serving.auth import Tokens
    from serve_load import build_artifacts

    arts = build_artifacts(args.encoder)
    # a write and a read token configured; requests go out with no token, a wrong one, the read one, the write one
    write, read = "fuzz-write-token", "fuzz-read-token"
    app = build_bare_app({"two_tower_artifact": str(arts["two_tower"]), "mf_artifact": str(arts["mf"])},
                         tokens=Tokens.of(write=write, read=read))
    turns = [None, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {read}"},
             {"Authorization": f"Bearer {write}"}]
    start = time.perf_counter()
    result = fuzz_schema(schemathesis.openapi.from_asgi("/openapi.json", app), args.fuzz_examples, headers=turns)
    with TestClient(app) as client:
        health = client.get("/health").status_code
    return result | {"target": f"build_bare_app in-process ({args.encoder} artifacts)", "health_after": health,
                     "seconds": round(time.perf_counter() - start, 1)}


def _health(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url + "/health", timeout=30) as r:
        return r.status


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="training,fuzz-bare,serving,fuzz,soak", help="comma-separated parts to run")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kill-rps", type=float, default=20.0, help="offered /recommend load during replica kills")
    p.add_argument("--kill-seconds", type=float, default=40.0)
    p.add_argument("--kill-at-s", type=float, default=10.0)
    p.add_argument("--health-check-period-s", type=float, default=None,
                   help="override Serve's replica health-check period (default: the config's, Serve's 10 s)")
    p.add_argument("--fuzz-examples", type=int, default=200, help="generated requests per operation and mode")
    p.add_argument("--soak-seconds", type=float, default=600.0)
    p.add_argument("--serve-mode", choices=["default", "high-throughput"], default="default",
                   help="Serve's Python proxy (default) or its high-throughput mode (HAProxy; serve_load.py)")
    p.add_argument("--encoder", choices=["minilm", "tiny"], default="minilm",
                   help="artifacts of serve_load.py (/recommend reads precomputed tables either way)")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    parts = set(args.only.split(","))
    load_start = [round(x, 2) for x in os.getloadavg()]
    if "training" in parts:
        merge_results({"training": training_campaign(args.trials, args.seed) | {
            "loadavg_start": load_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()]}})
    if "fuzz-bare" in parts:
        merge_results({"fuzz_bare_app": fuzz_bare_app(args) | {
            "loadavg_start": load_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()]}})
    if parts & {"serving", "fuzz", "soak"}:
        served = serving_parts(parts, args)
        load = {"loadavg_start": load_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
        # each part keeps the set-up it ran on (parts may run in separate invocations, e.g. in different modes)
        setup = {k: served[k] for k in ("serve_start_s", "health_check_period_s", "encoder", "serve_mode")}
        updates = {}
        if "replica_kills" in served:
            updates["serve_setup"] = setup | load
            updates["replica_kills"] = served["replica_kills"]
        for key in ("fuzz", "soak"):
            if key in served:
                updates[key] = served[key] | {"serve_setup": setup} | load
        merge_results(updates)
    return 0


def merge_results(updates: dict) -> None:
    """Update this run's keys of reliability.json (parts may run separately, even concurrently) and the summary."""
    path = RESULTS / "reliability.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update(updates)
    result["summary"] = summary(result)
    write_results("reliability", result, summary=result["summary"])
    print(json.dumps(result["summary"], indent=1), flush=True)


def summary(result: dict) -> dict:
    out = {}
    t = result.get("training")
    if t:
        out["training"] = {"trials": t["n_trials"], "faults_fired": t["faults_fired"],
                           "faults_survived": t["faults_survived"], "max_abs_delta_rmse": t["max_abs_delta_rmse"],
                           "tolerance_rmse": t["tolerance_rmse"],
                           "torn_checkpoint_skipped": (t["torn_latest_checkpoint"] or {}).get("skipped_torn")}
    kills = result.get("replica_kills")
    if kills:
        out["replica_kills"] = [{k: x[k] for k in ("deployment", "requests", "failed_requests", "failed_fraction",
                                                   "first_attempt_failures", "recovery_s")} for x in kills]
        out["replica_kills_meet_targets"] = all(
            x["failed_fraction"] <= FAILED_TARGET and x["recovery_s"] is not None
            and x["recovery_s"] <= RECOVERY_TARGET_S for x in kills)
    f = result.get("fuzz")
    if f:
        out["fuzz"] = {"requests": f["requests"], "server_errors_5xx": f["server_errors"],
                       "crashed_replicas": f["crashed_replicas"]}
    f = result.get("fuzz_bare_app")
    if f:
        out["fuzz_bare_app"] = {"requests": f["requests"], "server_errors_5xx": f["server_errors"]}
    s = result.get("soak")
    if s:
        out["soak"] = {k: s[k] for k in ("seconds", "offered_rps", "requests", "errors", "rss_drift_mib",
                                         "rss_bound_mib", "within_bound")}
    return out


if __name__ == "__main__":
    sys.exit(main())
