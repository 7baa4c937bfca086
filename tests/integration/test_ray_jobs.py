"""``lmrec train`` submitted through the real Ray Jobs API to a real local cluster (``ray start --head``).

The cluster is private to this module: loopback only, free ports, its own temp dir, and token authentication
disabled (``RAY_AUTH_MODE=disabled``) because nothing outside this machine can reach it and the job client would
otherwise need the token file. It is stopped by signalling its own ``ray start --block`` process, not with
``ray stop``, which would also stop every other Ray instance on a shared machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SPEC = "tests/configs/tiny_two_tower.yaml"  # relative: the job runs in the uploaded working_dir

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """(JobSubmissionClient, storage dir, env) of a 2-CPU head node started for this module."""
    from ray.job_submission import JobSubmissionClient

    data_dir = Path(os.environ.get("LMREC_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (data_dir / "ml-100k" / "u.data").exists():
        pytest.skip(f"ML-100K not found under {data_dir}")
    temp_dir = tempfile.mkdtemp(prefix="lmrec-rj-", dir="/tmp")  # short: Ray's socket paths are length-limited
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "LMREC_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path_factory.mktemp("ray") / "ray-start.log", "w")
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
           "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                client = JobSubmissionClient(address)
                client.list_jobs()
                break
            except Exception:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Ray head did not come up; see {log.name}") from None
                time.sleep(2)
        yield client, tmp_path_factory.mktemp("storage"), env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` tears down its own processes on SIGTERM
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(client, timeout: float = 120, **kwargs) -> str:
    """``submit_job``, retried while the head's dashboard agent (which runs job drivers) is still starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def wait_for_job(client, job_id: str, timeout: float) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status
        time.sleep(3)
    client.stop_job(job_id)
    return JobStatus.PENDING


def test_lmrec_train_as_a_ray_job(ray_cluster):
    from ray.job_submission import JobStatus

    client, storage, env = ray_cluster
    entrypoint = (f"lmrec train {SPEC} --set name=job-run --set optim.epochs=2 "
                  f"--set scaling.storage_path={storage}")
    job_id = submit(
        client,
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(REPO),
                     "env_vars": {k: env[k] for k in ("LMREC_DATA_DIR", "HF_HUB_OFFLINE", "PATH")}},
    )
    status = wait_for_job(client, job_id, timeout=300)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    artifact = storage / "job-run" / "artifact"
    assert (artifact / "manifest.json").is_file() and (artifact / "model.safetensors").is_file()
    assert sorted(p.name for p in (storage / "job-run").glob("epoch_*")) == ["epoch_0000", "epoch_0001"]
    # progress is readable in the job log: epochs, training loss, validation metrics, where the artifact went
    for needle in ("epoch 1/2 loss=", "epoch 2/2 loss=", "val_rmse=", "interactions/s", "artifact written to"):
        assert needle in logs, needle


def test_invalid_spec_job_fails_fast_with_a_clear_message(ray_cluster):
    from ray.job_submission import JobStatus

    client, _, _ = ray_cluster
    job_id = submit(client, entrypoint="lmrec train tests/configs/invalid_two_tower.yaml",
                    runtime_env={"working_dir": str(REPO)})
    assert wait_for_job(client, job_id, timeout=120) == JobStatus.FAILED
    logs = client.get_job_logs(job_id)
    assert "optim.learning_rate" in logs and "scaling.num_workers" in logs and "Traceback" not in logs
    assert "Started training worker group" not in logs
