"""The README's own-data quick start, run as written: files the test writes (1,000 users, 500 items with text,
about 20,000 interactions) → ``lmrec data validate`` → ``lmrec train`` (Ray Train, 2 workers) → ``lmrec serve
--artifact`` → real HTTP on loopback: ``/recommend`` with item texts, ``/recommend/batch`` for 100 users, ``POST
/items`` refused without the token (401) and accepted with it (201), the new item then recommended.

Each README line runs in a shell from a folder holding ``jobs/`` and ``data/`` (the user's checkout). The only
changes: the Ray address of a private instance (a user's commands start their own), and ``--port`` on the serve
line and the curl URL (port 8000 may be taken on a test machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def quickstart_lines() -> list[str]:
    """The README block that starts from your own files: its command lines, comments dropped."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    block = next(b for b in blocks if "lmrec data validate jobs/examples/own-data.yaml" in b)
    lines = []
    for line in block.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(re.sub(r"\s+#\s.*$", "", line))  # a trailing "   # comment"
    return lines


def write_own_data(folder: Path, users: int = 1000, items: int = 500, interactions: int = 22500, seed: int = 0):
    """A catalogue with signal: each user prefers one of ten topics, items belong to one, ratings follow."""
    rng = np.random.default_rng(seed)
    topics = ["space opera", "kitchen garden", "jazz piano", "mountain hiking", "crime noir", "baking bread",
              "chess openings", "ocean sailing", "urban sketching", "vintage cars"]
    item_topic = rng.integers(len(topics), size=items)
    catalogue = pd.DataFrame({
        "item_id": [f"i{j}" for j in range(items)],
        "title": [f"{topics[t].title()} vol. {j}" for j, t in enumerate(item_topic)],
        "description": [f"A guide to {topics[t]} in {3 + j % 20} chapters." for j, t in enumerate(item_topic)]})
    user_topic = rng.integers(len(topics), size=users)
    by_topic = [np.flatnonzero(item_topic == t) for t in range(len(topics))]
    u = rng.integers(users, size=interactions)
    liked = np.array([rng.choice(by_topic[user_topic[x]]) for x in u])
    i = np.where(rng.random(interactions) < 0.7, liked, rng.integers(items, size=interactions))
    match = item_topic[i] == user_topic[u]
    rating = np.where(match, rng.integers(4, 6, size=interactions), rng.integers(1, 4, size=interactions))
    frame = pd.DataFrame({"user_id": [f"u{x}" for x in u], "item_id": [f"i{x}" for x in i], "rating": rating,
                          "timestamp": 1_700_000_000 + rng.integers(0, 10**7, size=interactions)})
    frame = frame.drop_duplicates(["user_id", "item_id"])
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "interactions.csv", index=False)
    catalogue.to_csv(folder / "items.csv", index=False)
    return frame, catalogue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address():
    """A private Ray instance the commands join (``lmrec`` would otherwise join any local cluster it finds)."""
    ray = pytest.importorskip("ray")
    temp_dir = tempfile.mkdtemp(prefix="lmrec-qs-", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.delenv("RAY_ADDRESS", raising=False)
        info = ray.init(num_cpus=4, include_dashboard=False, _temp_dir=temp_dir)
        yield info.address_info["gcs_address"]
        ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _shell(line: str, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_readme_own_data_quickstart(tmp_path, ray_address):
    lines = quickstart_lines()
    assert [line.split()[:3] for line in lines] == [
        ["lmrec", "data", "validate"], ["lmrec", "train", "jobs/examples/own-data.yaml"],
        ["export", "LMREC_WRITE_TOKEN=$(python3", "-c"], ["lmrec", "serve", "--artifact"], ["curl", "-s", "127.0.0.1:8000/recommend"]]
    validate, train, export, serve, curl = lines

    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    inter, catalogue = write_own_data(tmp_path / "data")
    assert len(inter) >= 19_000 and inter["user_id"].nunique() == 1000
    bin_dir = str(Path(sys.executable).parent)  # the venv's lmrec and python first, as after `source .venv/bin/activate`
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_ADDRESS": ray_address,
           "PYTHONUNBUFFERED": "1"}
    env.pop("LMREC_WRITE_TOKEN", None)

    out = _shell(validate, tmp_path, env, 300).stdout
    assert re.search(r"users\s+1,000", out) and re.search(r"items\s+500", out) and "OK jobs/examples" in out

    result = json.loads([x for x in _shell(train, tmp_path, env, 900).stdout.splitlines() if x.startswith("{")][-1])
    artifact = tmp_path / "runs" / "own-data" / "artifact"
    assert Path(result["artifact"]) == artifact and (artifact / "manifest.json").is_file()
    assert result["test"]["test_users"] > 0 and 0 < result["test"]["test_ndcg@10"] <= 1

    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    # the export and serve lines in one shell, as a user types them; the token is echoed for the test to use
    server = subprocess.Popen(["bash", "-c", f'{export} && echo "token=$LMREC_WRITE_TOKEN" && exec {serve} --port {port}'],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-5000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-5000:]
            try:
                if requests.get(url + "/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or the proxy holds it while apps deploy
                pass
            time.sleep(1)
        token = re.search(r"^token=([0-9a-f]{32})$", (tmp_path / "serve.log").read_text(), flags=re.M).group(1)

        # the README's curl, on this port
        answer = json.loads(_shell(curl.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), tmp_path, env, 60).stdout)
        rows = catalogue.set_index("item_id")
        assert len(answer["items"]) == 5 and answer["recommendation_id"]
        for item in answer["items"]:  # the item text the spec's text_columns made: title, then description
            row = rows.loc[str(item["item_id"])]
            assert row["title"] in item["text"] and row["description"] in item["text"], item

        users = sorted(inter["user_id"].unique())[:100]
        batch = requests.post(url + "/recommend/batch", timeout=120,
                              json={"requests": [{"user_id": u, "k": 10} for u in users]})
        assert batch.status_code == 200, batch.text
        results = batch.json()["results"]
        assert [r["user_id"] for r in results] == users and all(len(r["items"]) == 10 for r in results)

        new = {"item_id": "i-new", "text": "Space Opera vol. 999. A guide to space opera in 12 chapters."}
        assert requests.post(url + "/items", json=new, timeout=60).status_code == 401
        created = requests.post(url + "/items", json=new, timeout=60, headers={"Authorization": f"Bearer {token}"})
        assert created.status_code == 201, created.text
        rec = requests.post(url + "/recommend", timeout=60,
                            json={"user_id": users[0], "k": 3, "candidate_item_ids": ["i-new", "i1", "i2"]})
        assert rec.status_code == 200, rec.text
        assert "i-new" in [i["item_id"] for i in rec.json()["items"]]
    finally:
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C, as the README says
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
