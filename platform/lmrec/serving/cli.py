"""``lmrec serve serve/<app>.yaml``: run a Serve config file locally (the same file ``serve deploy`` takes).

Locally this starts Ray if none is running (or joins ``--address``), starts Serve with the file's
``http_options`` (bind 127.0.0.1 unless the file says otherwise), deploys the file's applications exactly as the
Serve controller deploys them from ``serve deploy`` (per-deployment overrides, ``user_config``, autoscaling), waits
until they run, and blocks until SIGINT/SIGTERM. On a cluster use ``serve deploy serve/<app>.yaml``.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from lmrec.config.base import SpecError, load_yaml
from lmrec.storage import is_uri, normalize

log = logging.getLogger(__name__)

OUR_BUILDERS = ("lmrec.serving.app:build_app",)


def load_serve_config(source: str | Path | dict, resolve_from: str | Path | None = None):
    """A Serve config file (or dict) validated by Serve's own schema, with lmrec ``args`` validated too.

    ``resolve_from``: make relative artifact paths absolute against this folder (Serve builds the app in
    another process, whose working directory is not the caller's).
    """
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from lmrec.serving.app import ServeAppArgs

    raw = load_yaml(source) if not isinstance(source, dict) else source
    if resolve_from is not None:
        raw = _absolute_artifacts(raw, Path(resolve_from))
    try:
        config = ServeDeploySchema.model_validate(raw)
        for app in config.applications:
            if app.import_path in OUR_BUILDERS:
                ServeAppArgs.model_validate(app.args or {})
    except ValidationError as e:
        raise SpecError(f"{source if not isinstance(source, dict) else 'serve config'}: {e}") from None
    return config


def _absolute_artifacts(raw: dict, base: Path) -> dict:
    import copy

    out = copy.deepcopy(raw)
    for app in out.get("applications", []):
        args = app.get("args") or {}
        for key in ("two_tower_artifact", "mf_artifact", "ease_artifact", "item_knn_artifact", "ensemble_artifact"):
            if isinstance(args.get(key), str) and not is_uri(args[key]):
                args[key] = str((base / args[key]).resolve())
        for d in app.get("deployments", []):
            uc = d.get("user_config")
            if isinstance(uc, dict) and isinstance(uc.get("artifact_dir"), str) and not is_uri(uc["artifact_dir"]):
                uc["artifact_dir"] = str((base / uc["artifact_dir"]).resolve())
    return out


def with_artifacts(raw: dict, two_tower_artifact: str | None = None, mf_artifact: str | None = None,
                   ease_artifact: str | None = None, item_knn_artifact: str | None = None) -> dict:
    """A copy of a Serve config dict whose member ``user_config``s point at new artifacts (a hot swap).

    Only ``user_config`` changes, so Serve reconfigures the running replicas instead of restarting them.
    """
    import copy

    out = copy.deepcopy(raw)
    targets = {"TwoTowerScorer": two_tower_artifact, "TextEncoderService": two_tower_artifact,
               "MFScorer": mf_artifact, "EaseScorer": ease_artifact, "ItemKNNScorer": item_knn_artifact}
    for app in out["applications"]:
        deployments = {d["name"]: d for d in app.setdefault("deployments", [])}
        for name, path in targets.items():
            if path is None:
                continue
            if name not in deployments:
                deployments[name] = {"name": name}
                app["deployments"].append(deployments[name])
            deployments[name]["user_config"] = {"artifact_dir": normalize(path)}
    return out


def high_throughput_env(state_dir: str | Path, nbthread: int = 1) -> dict[str, str]:
    """Environment for Ray Serve's high-throughput mode on a node (Ray >= 2.56; set it before Ray starts).

    ``RAY_SERVE_ENABLE_HA_PROXY``: HAProxy (C, bundled with ``ray[serve]``) listens on ``http_options.port`` in
    place of the Python proxy actor and forwards each request straight to an ingress replica's own HTTP server
    ("direct ingress"), so a request costs one Python process instead of two plus an actor call between them.
    ``RAY_SERVE_THROUGHPUT_OPTIMIZED``: user code and router on the replica's event loop, gRPC between
    deployments. HAProxy's state files and ports default to fixed places (``/tmp/haproxy-serve``, 8404, 9101);
    they are moved under ``state_dir`` and to free ports so that several Serve instances can share a machine.
    Ray adds a 56-character node id below ``state_dir`` and HAProxy takes socket paths of at most 97 characters:
    keep ``state_dir`` short (``tempfile.mkdtemp(prefix="hap", dir="/tmp")``).
    """
    import socket

    def free_port() -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return str(s.getsockname()[1])

    d = Path(state_dir).resolve()
    if len(str(d)) > 97 - len("/metrics.sock") - 57:
        raise ValueError(f"{d}: too long for HAProxy's socket paths (see high_throughput_env)")
    d.mkdir(parents=True, exist_ok=True)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_NBTHREAD": str(nbthread),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(d / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(d / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(d),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(d / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(d / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": free_port(), "RAY_SERVE_HAPROXY_METRICS_PORT": free_port(),
    }


def deploy_config(config, timeout_s: float = 300.0) -> None:
    """Deploy a validated Serve config in the connected Ray cluster and wait until every application runs.

    Uses the controller's declarative path (what ``serve run config.yaml`` and ``serve deploy`` do), so the
    file's per-deployment settings apply exactly as they would on a cluster.
    """
    from ray import serve
    from ray.serve.context import _get_global_client

    # the file's global logging_config reaches the proxy only through serve.start (its per-request access log
    # is a measurable share of a cheap request's CPU on a small machine)
    logging = config.logging_config.model_dump() if config.logging_config is not None else None
    serve.start(http_options=config.http_options.model_dump(), proxy_location=config.proxy_location,
                logging_config=logging)
    _get_global_client().deploy_apps(config, _blocking=False)
    wait_until_running([a.name for a in config.applications], timeout_s)


def wait_until_running(app_names: list[str], timeout_s: float = 300.0) -> None:
    """Poll ``serve.status()`` until every named application is RUNNING; raise on failure or timeout."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {n: (apps[n].status if n in apps else "NOT_STARTED") for n in app_names}
        failed = {n: apps[n].message for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError(f"Serve application(s) failed: {failed}")
        if all(s == "RUNNING" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve applications not running after {timeout_s:.0f} s: {states}")
        time.sleep(0.5)


def main_serve(config_path: str, *, address: str | None = None, detach: bool = False,
               timeout_s: float = 300.0) -> int:
    """Run ``config_path`` and block until interrupted (``detach``: return once running; needs a Ray cluster
    that outlives this process, e.g. ``ray start --head`` then ``--address auto``). Returns an exit code."""
    import ray
    from ray import serve

    try:
        config = load_serve_config(config_path, resolve_from=Path.cwd())
    except SpecError as e:
        log.error("%s", e)
        return 2
    if not ray.is_initialized():
        ray.init(address=address, namespace="serve")
    start = time.perf_counter()
    try:
        deploy_config(config, timeout_s)
    except (RuntimeError, TimeoutError) as e:
        log.error("%s", e)
        return 1
    http = config.http_options
    for app in config.applications:
        print(f"{app.name}: http://{http.host}:{http.port}{app.route_prefix or ''} "
              f"(OpenAPI at /docs) ready in {time.perf_counter() - start:.1f} s", flush=True)
    if detach:
        return 0
    stop = {"flag": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    try:
        while not stop["flag"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("shutting down Serve", flush=True)
    serve.shutdown()
    return 0
