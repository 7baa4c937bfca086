"""A real two-node Ray cluster on one machine: a training job survives losing a node (``make cluster-smoke``).

The head and a worker node are separate ``ray start --block`` processes on loopback, each with its own temp dir,
its own ports and one CPU. A train worker asks for 0.75 CPU, so the two workers of a job can only run one per
node (checked through the State API: the two ``RayTrainWorker`` actors sit on the head and on the worker node).
Both nodes write checkpoints to one local folder, the shared storage of this cluster; the reference run names
it by path, the interrupted run by a ``file://`` URI (the pyarrow URI path that object stores take), and its
artifact is then loaded from that URI the way Serve loads it.

The test submits the same ``lmrec train`` job twice through the Ray Jobs API, with the runtime environment of
docs/cluster.md (lmrec uploaded as a ``py_modules`` entry and run as ``python -m lmrec.cli``; the job checks that it
imported that copy):

1. uninterrupted: the reference metrics;
2. interrupted: once the first epoch's checkpoint is committed (Ray Train's checkpoint-manager snapshot names
   it), the worker node is SIGKILLed with every process it started (raylet, object store, the train worker);
   the rank on the head then fails in its collective, Ray Train tears the worker group down, and a new worker
   node (new node id and address, same settings) is started. The restarted group must land on the new node,
   resume from the committed checkpoint (not epoch 0) and finish.

A resumed run reloads the model and optimizer state, but it is not bit-identical to the reference: which rows
each rank gets from Ray Data's streaming split depends on the placement (the restarted group sits on another
node). The stated tolerance is the training-fault campaign's (benchmarks/reliability.py): the final validation
RMSE and MAE within 0.03 of the uninterrupted run's. Measured here: RMSE 1.1275 vs 1.1262. Ranking metrics on
this tiny validation slice move by up to ~0.06 NDCG@10 between such runs; they are printed, not asserted.

A third job streams a synthetic file (``data.streaming``) and checks that each node's Train worker trained on its
own half of the training rows (within ±20%), not the whole file.

Nothing here touches other Ray instances on the machine: no ``ray stop``; each node is stopped by signalling
its own process tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_ray_jobs import free_port, submit  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SPEC = "tests/configs/tiny_two_tower.yaml"  # relative: the job runs in the uploaded working_dir
EPOCHS = 6
TOLERANCE = 0.03  # |final val RMSE or MAE, interrupted - uninterrupted|
# Two loopback addresses, so the nodes look like two hosts. Not 127.0.0.1: Ray swaps that (and "localhost") for
# the machine's outward-facing address, and this cluster must stay on loopback.
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
# The replacement node comes up on an address of its own, as a re-provisioned cloud node does (started again on
# the killed node's address, it did not register within 600 s in earlier runs on this machine).
REPLACEMENT_IP = "127.0.0.4"
# The `ray` CLI, except that it waits up to 300 s (not Ray's fixed 30 s) for its raylet to register with the GCS:
# on a busy 2-core machine the raylet first waits for its dashboard agent, a Python process slow to import.
PATIENT_RAY_START = """
import sys, time
import ray._private.services as services
get_node = services.get_node
def patient_get_node(*args, **kwargs):
    deadline = time.monotonic() + 300
    while True:
        try:
            return get_node(*args, **kwargs)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
services.get_node = patient_get_node
from ray.scripts.scripts import main
sys.exit(main())
"""

pytestmark = [
    pytest.mark.slow,
    # Two `ray start` nodes, a node killed and replaced: 5-6 min on this 2-core machine (passed in 334 s). Kept out
    # of `make test`; `make cluster-smoke` runs it, and so does CI (.ci/run).
    pytest.mark.skipif(os.environ.get("LMREC_MULTINODE") != "1",
                       reason="multi-node kill-and-resume runs with LMREC_MULTINODE=1 (make cluster-smoke)"),
]


class RayNode:
    """One ``ray start --block`` process (head or worker) and the process tree it owns."""

    def __init__(self, ip: str, args: list[str], env: dict, log_path: Path) -> None:
        self.ip = ip
        self.temp_dir = tempfile.mkdtemp(prefix="lmrec-mn-", dir="/tmp")  # short: socket paths are length-limited
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-c", PATIENT_RAY_START, "start", "--block", f"--node-ip-address={ip}", "--num-cpus=1",
               f"--temp-dir={self.temp_dir}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats", *args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the node: ``ray start`` and every process of the node (raylet, plasma store, agents, workers)."""
        import psutil

        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        procs = {p.pid: p for p in [*tree, *self.leftovers()]}
        for p in procs.values():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.kill()
        psutil.wait_procs(list(procs.values()), timeout=60)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a machine this busy reaps slowly; stop() checks for leftovers again
            pass

    def leftovers(self) -> list:
        """This node's processes still running: every Ray process names the node's own temp dir in its
        command line (a ``ray start`` that failed half-way can leave its GCS or dashboard behind)."""
        import psutil

        out = []
        for p in psutil.process_iter(["cmdline"]):
            if any(self.temp_dir in arg for arg in (p.info["cmdline"] or [])):
                out.append(p)
        return out

    def stop(self) -> None:
        """Graceful: ``ray start --block`` tears its own processes down on SIGTERM; SIGKILL what remains."""
        import psutil

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        deadline = time.monotonic() + 60  # re-scan: a half-started node may still be spawning processes
        while (rest := self.leftovers()) and time.monotonic() < deadline:
            for p in rest:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(rest, timeout=5)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class Cluster:
    """The head plus worker nodes. Starting a node is retried when its ``ray start`` exits (its raylet did not
    come up in time); a node that is merely slow to start is waited for (a busy 2-core machine takes minutes)."""

    def __init__(self, tmp: Path, env: dict, tries: int = 3) -> None:
        self.tmp, self.env = tmp, env
        self.workers: list[RayNode] = []
        for attempt in range(tries):
            self.gcs_port, self.dashboard_port = free_port(), free_port()
            self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
            self.head = RayNode(HEAD_IP, ["--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                                          "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                                          f"--ray-client-server-port={free_port()}"], env, tmp / f"head-{attempt}.log")
            try:
                self.wait_for_nodes(1, until_exit=self.head.proc)
                return
            except (RuntimeError, TimeoutError):
                self.head.stop()
        raise RuntimeError(f"head node did not start after {tries} tries; logs in {tmp}")

    def add_worker(self, ip: str = WORKER_IP, tries: int = 3) -> list[dict]:
        """Start a worker node and wait until it is alive; returns the alive nodes."""
        for attempt in range(tries):
            node = RayNode(ip, [f"--address={HEAD_IP}:{self.gcs_port}"], self.env,
                           self.tmp / f"worker{len(self.workers)}-{attempt}.log")
            self.workers.append(node)
            try:
                return self.wait_for_nodes(2, until_exit=node.proc)
            except (RuntimeError, TimeoutError):
                node.stop()
        raise RuntimeError(f"worker node did not join after {tries} tries; logs in {self.tmp}")

    def alive_nodes(self) -> list[dict]:
        from ray.util.state import list_nodes

        # filtered in Python: a server-side filter that drops nodes makes the State API report "data truncation"
        nodes = list_nodes(address=self.dashboard, raise_on_missing_output=False)
        return [n.__dict__ for n in nodes if n.state == "ALIVE"]

    def wait_for_nodes(self, n: int, timeout: float = 600, until_exit=None) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            if until_exit is not None and until_exit.poll() is not None:
                raise RuntimeError("the node's `ray start` exited")
            try:
                nodes = self.alive_nodes()
                if len(nodes) == n:
                    return nodes
            except Exception:  # dashboard still starting
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} alive Ray nodes not seen in {timeout:.0f} s; logs in {self.tmp}")
            time.sleep(1)

    def train_worker_nodes(self) -> list[str]:
        """Node ids of the alive Ray Train worker actors."""
        from ray.util.state import list_actors

        actors = list_actors(address=self.dashboard, limit=10_000, raise_on_missing_output=False)
        return sorted(a.node_id for a in actors if a.class_name == "RayTrainWorker" and a.state == "ALIVE")

    def stop(self) -> None:
        for node in self.workers:
            node.stop()
        self.head.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.job_submission import JobSubmissionClient

    data_dir = Path(os.environ.get("LMREC_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (data_dir / "ml-100k" / "u.data").exists():
        pytest.skip(f"ML-100K not found under {data_dir}")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "LMREC_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           # a raylet aborts when its agents (Python processes, slow to import on a busy 2-core machine) have not
           # written their ports within raylet_start_wait_time_s; the default is too short there
           "RAY_raylet_start_wait_time_s": "300", "RAY_agent_register_timeout_ms": "300000"}
    env.pop("RAY_ADDRESS", None)
    c = Cluster(tmp_path_factory.mktemp("cluster"), env)
    try:
        nodes = c.add_worker()
        c.head_id = next(n["node_id"] for n in nodes if n["is_head_node"])
        c.client = JobSubmissionClient(c.dashboard)
        c.storage = tmp_path_factory.mktemp("shared-storage")
        yield c
    finally:
        c.stop()


def documented_runtime_env() -> dict:
    """The runtime environment of docs/cluster.md's `ray job submit --runtime-env-json` recipe, paths resolved
    against the checkout. Its `pip` list is left out here: these loopback nodes run this venv, which has the
    packages, and a per-job virtualenv would fetch them from the index again."""
    text = (REPO / "docs" / "cluster.md").read_text(encoding="utf-8")
    env = json.loads(re.search(r"--runtime-env-json '([^']+)'", text).group(1))
    assert env["py_modules"] == ["platform/lmrec"], env
    return {"py_modules": [str(REPO / p) for p in env["py_modules"]]}


def submit_train(c: Cluster, name: str, storage: str) -> str:
    # the documented recipe: `python -m lmrec.cli` with lmrec uploaded as a py_module, not the installed script
    entrypoint = ("python -c 'import lmrec; print(\"lmrec loaded from\", lmrec.__file__)' && "
                  f"python -m lmrec.cli train {SPEC} --set name={name} --set optim.epochs={EPOCHS} "
                  f"--set early_stopping.patience={EPOCHS} --set scaling.cpus_per_worker=0.75 "
                  f"--set scaling.max_failures=3 --set scaling.storage_path={storage}")
    env_vars = {k: c.env[k] for k in ("LMREC_DATA_DIR", "HF_HUB_OFFLINE", "PATH", "TOKENIZERS_PARALLELISM")}
    # the restarted group waits for the replacement node to join
    env_vars["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "180"
    return submit(c.client, entrypoint=entrypoint,
                  runtime_env={"working_dir": str(REPO), "env_vars": env_vars, **documented_runtime_env()})


def loaded_from_upload(logs: str) -> bool:
    """The job's lmrec is the uploaded copy (Ray's runtime resources), not the checkout the venv points at."""
    line = next(row for row in logs.splitlines() if row.startswith("lmrec loaded from"))
    return "runtime_resources" in line and "py_modules_files" in line and str(REPO / "platform") not in line


def wait_until(predicate, timeout: float, what: str, c: Cluster, job_id: str, period: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if c.client.get_job_status(job_id).is_terminal():
            raise AssertionError(f"job ended while waiting for {what}:\n{c.client.get_job_logs(job_id)[-4000:]}")
        time.sleep(period)
    raise TimeoutError(f"{what} not seen in {timeout:.0f} s")


def finish(c: Cluster, job_id: str, timeout: float = 300) -> dict:
    """Wait for the job; return the JSON summary ``lmrec train`` prints last, plus the run's history."""
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while not c.client.get_job_status(job_id).is_terminal():
        if time.monotonic() > deadline:
            c.client.stop_job(job_id)
            raise TimeoutError(f"job {job_id} still running after {timeout:.0f} s")
        time.sleep(2)
    logs = c.client.get_job_logs(job_id)
    assert c.client.get_job_status(job_id) == JobStatus.SUCCEEDED, logs[-5000:]
    summary = json.loads(next(line for line in reversed(logs.splitlines()) if line.startswith('{"name"')))
    ckpt = Path(summary["checkpoint"])
    summary["history"] = json.loads((ckpt / "lmrec_history.json").read_text())
    summary["logs"] = logs
    return summary


def committed_epochs(run: Path) -> list[str]:
    snapshot = run / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return []
    try:
        text = snapshot.read_text()
    except OSError:
        return []
    return sorted({f"epoch_{i:04d}" for i in range(EPOCHS) if f"epoch_{i:04d}" in text})


def val_metrics(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k.startswith("val_")} for h in history]


def test_job_survives_losing_a_node_and_matches_an_uninterrupted_run(cluster, tmp_path, monkeypatch):
    c = cluster
    monkeypatch.setenv("LMREC_CACHE_DIR", str(tmp_path / "cache"))
    timings = {}

    # 1. uninterrupted reference, with the two workers on two nodes
    t0 = time.perf_counter()
    job = submit_train(c, "mn-reference", str(c.storage))
    placement = wait_until(lambda: (lambda ids: ids if len(ids) == 2 else None)(c.train_worker_nodes()),
                           180, "two train workers", c, job)
    worker_id = next(n["node_id"] for n in c.alive_nodes() if not n["is_head_node"])
    assert placement == sorted([c.head_id, worker_id]), "the two train workers must run on different nodes"
    reference = finish(c, job)
    timings["reference_s"] = time.perf_counter() - t0
    assert [int(h["epoch"]) for h in reference["history"]] == list(range(EPOCHS))
    assert all(int(h["resumed_at_epoch"]) == 0 for h in reference["history"])
    assert loaded_from_upload(reference["logs"]), "the job must run the lmrec uploaded by its runtime env"

    # 2. the same job; the worker node dies after the first committed checkpoint and is replaced
    t0 = time.perf_counter()
    run = c.storage / "mn-interrupted"
    job = submit_train(c, "mn-interrupted", f"file://{c.storage}")  # the same folder, addressed as a URI
    wait_until(lambda: committed_epochs(run), 240, "the first committed checkpoint", c, job, period=0.2)
    killed_at = committed_epochs(run)
    c.workers[-1].kill()
    timings["killed_after_s"] = time.perf_counter() - t0
    c.wait_for_nodes(1)  # the GCS has noticed: the killed node is no longer alive
    timings["node_marked_dead_after_s"] = time.perf_counter() - t0
    nodes = c.add_worker(REPLACEMENT_IP)
    new_worker_id = next(n["node_id"] for n in nodes if not n["is_head_node"])
    assert new_worker_id != worker_id
    placement = wait_until(lambda: (lambda ids: ids if new_worker_id in ids and len(ids) == 2 else None)(
        c.train_worker_nodes()), 240, "the restarted group on the new node", c, job)
    assert placement == sorted([c.head_id, new_worker_id])
    resumed = finish(c, job)
    timings["interrupted_s"] = time.perf_counter() - t0

    history = resumed["history"]
    assert [int(h["epoch"]) for h in history] == list(range(EPOCHS))
    resumed_at = {int(h["resumed_at_epoch"]) for h in history}
    assert max(resumed_at) >= 1, f"the run restarted from scratch instead of a checkpoint: {history}"
    # the resume point is a checkpoint that was committed when the node died, or a later one
    assert max(resumed_at) >= len(killed_at)
    assert "resumed from" in resumed["logs"]

    # the interrupted run stored everything through the URI; Serve's member loads the artifact from there
    from lmrec.artifacts.manifest import verify_artifact
    from lmrec.artifacts.two_tower import FORMAT as TWO_TOWER_FORMAT
    from lmrec.serving.members import TwoTowerMember
    from lmrec.storage import local_artifact

    assert resumed["artifact"] == f"file://{run}/artifact"
    manifest = verify_artifact(local_artifact(resumed["artifact"]), TWO_TOWER_FORMAT)
    assert manifest["metrics"]["val_rmse"] == pytest.approx(resumed["best"]["val_rmse"], abs=1e-6)
    assert TwoTowerMember(resumed["artifact"]).info["n_items"] > 0

    ref_val, got_val = val_metrics(reference["history"]), val_metrics(history)
    worst = max(abs(r[k] - g[k]) for r, g in zip(ref_val, got_val) for k in r)
    print(f"\nmultinode: killed after {killed_at} at {timings['killed_after_s']:.1f} s; resumed at epoch "
          f"{max(resumed_at)}; reference {reference['best']}; interrupted {resumed['best']}; "
          f"max |diff| over {EPOCHS} epochs {worst:.2e}; timings {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    for key in ("val_rmse", "val_mae"):
        assert resumed["best"][key] == pytest.approx(reference["best"][key], abs=TOLERANCE), (key, ref_val, got_val)


def test_streamed_job_gives_each_node_its_share_of_the_rows(cluster, tmp_path):
    """``data.streaming`` on two nodes: Ray Data reads the file on the cluster, and each Train worker (one per
    node) trains on its own shard of the training rows, within ±20% of half of them, never the whole file."""
    import yaml

    from lmrec.data.stream import TRAIN, row_fold
    from lmrec.data.synthetic import data_source, scaled_shape, write_parquet

    c = cluster
    files = write_parquet(tmp_path / "data", scaled_shape(20_000), chunk_rows=2_500)
    spec = {"name": "mn-streamed", "data": {"source": data_source(files), "streaming": True, "eval_users": 50,
                                            "split": {"kind": "random", "test_frac": 0.1}},
            "model": {"max_history": 40, "dim": 16}, "tasks": {"related": {"weight": 0}},
            "optim": {"epochs": 1, "lr_encoder": 0, "batch_size": 512},
            "scaling": {"num_workers": 2, "cpus_per_worker": 0.75, "storage_path": str(c.storage)}}
    spec_path = tmp_path / "streamed.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    env_vars = {k: c.env[k] for k in ("LMREC_DATA_DIR", "HF_HUB_OFFLINE", "PATH", "TOKENIZERS_PARALLELISM")}
    job = submit(c.client, entrypoint=f"python -m lmrec.cli train {spec_path}",
                 runtime_env={"working_dir": str(REPO), "env_vars": env_vars, **documented_runtime_env()})
    placement = wait_until(lambda: (lambda ids: ids if len(ids) == 2 else None)(c.train_worker_nodes()),
                           300, "two train workers", c, job)
    assert len(set(placement)) == 2, "the two train workers must run on different nodes"
    done = finish(c, job, timeout=600)
    epoch = done["history"][-1]
    rows = [epoch["interactions_rank0"], epoch["interactions_rank1"]]
    raw = pd.read_parquet(files.interactions)
    users = np.searchsorted(np.unique(raw["user_id"]), raw["user_id"])
    items = np.searchsorted(np.sort(pd.read_parquet(files.items)["item_id"]), raw["item_id"])
    expected = int((row_fold(users, items, 0, 0.1, 0.0, 0.05) == TRAIN).sum())
    print(f"\nmultinode streamed: rows by rank {rows} of {expected} training rows ({len(raw)} in the file)")
    assert expected - 2 <= sum(rows) <= expected
    for got in rows:
        assert abs(got - expected / 2) <= 0.2 * expected / 2
