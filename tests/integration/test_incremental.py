"""Continuous fine-tuning end to end: ML-100K grows by a later time slice, ``lmrec train --from-artifact`` fine-tunes
the served artifact on it, promotes the candidate and the running Serve app (127.0.0.1) swaps to it; a candidate
trained with an absurd learning rate is refused and the served version stays.

One Ray cluster and one Serve application for the module; the tests run in file order.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.heavy]
REPO = Path(__file__).resolve().parents[2]
MAX_USERS, MAX_ITEMS = 60, 200
BASE_QUANTILE = 0.6  # the artifact is trained on the oldest 60% of the slice's interactions

SPEC = {
    "name": "tiny-incremental",
    "seed": 0,
    "data": {"dataset": "ml-100k", "split": {"kind": "per_user_random", "test_frac": 0.1, "valid_frac": 0.1, "seed": 0},
             "max_users": MAX_USERS, "max_items": MAX_ITEMS, "valid_from_train": 0.0},
    "model": {"encoder_init": "random-tiny", "dim": 16, "max_length": 16, "max_history": 32},
    "optim": {"epochs": 4, "batch_size": 128, "lr_heads": 0.01, "lr_encoder": 0.0, "items_encoded_per_step": 0,
              "encode_batch_size": 128, "log_every_steps": 50},
    "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 0.5, "engine": "ddp", "max_failures": 0},
    "incremental": {"holdout_frac": 0.3, "replay_ratio": 1.0, "metric": "val_rmse", "tolerance": 0.0},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sha(folder) -> str:
    from lmrec.artifacts.manifest import sha256_file

    return sha256_file(Path(folder) / "manifest.json")


def _run_cli(capsys, *argv: str) -> dict:
    from lmrec.cli import main

    capsys.readouterr()
    assert main(["train", *argv]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith('{"status"')][-1]
    return json.loads(line)


@pytest.fixture(scope="module")
def world(data_dir, tmp_path_factory):
    """A growing copy of ML-100K (oldest slice now, the rest appended later), a base artifact published as v0001
    of a store, and the Serve app from serve/recommender.yaml serving it on a free loopback port."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray import serve

    # 4 logical CPUs: the Serve replicas (1.1 CPU) and the 2 half-CPU training workers fit side by side
    ray.init(num_cpus=4, include_dashboard=False, namespace="serve", log_to_driver=False)
    previous = os.environ.get("LMREC_DATA_DIR")
    try:
        yield _world(data_dir, tmp_path_factory.mktemp("incremental"))
    finally:
        serve.shutdown()
        ray.shutdown()
        if previous is None:
            os.environ.pop("LMREC_DATA_DIR", None)
        else:
            os.environ["LMREC_DATA_DIR"] = previous


def _world(data_dir: Path, root: Path) -> dict:
    from lmrec.config.train import TrainSpec
    from lmrec.serving.cli import main_serve
    from lmrec.pipelines.incremental import ArtifactStore
    from lmrec.training.local import train_local

    data = root / "data" / "ml-100k"
    data.mkdir(parents=True)
    for name in ("u.item", "u.user"):
        shutil.copy(data_dir / "ml-100k" / name, data / name)
    ratings = pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t", names=["u", "i", "r", "t"])
    in_slice = (ratings["u"] <= MAX_USERS) & (ratings["i"] <= MAX_ITEMS)
    cut = int(ratings.loc[in_slice, "t"].quantile(BASE_QUANTILE))
    ratings[ratings["t"] <= cut].to_csv(data / "u.data", sep="\t", header=False, index=False)
    os.environ["LMREC_DATA_DIR"] = str(root / "data")

    base = train_local(TrainSpec.model_validate(SPEC), device="cpu", artifact_dir=root / "base-artifact")
    store = ArtifactStore(str(root / "store"))
    assert store.publish(base.artifact) == "v0001"

    raw = yaml.safe_load((REPO / "serve" / "recommender.yaml").read_text())
    raw["http_options"]["port"] = _free_port()
    app = raw["applications"][0]
    app["args"] = {"two_tower_artifact": store.location("v0001"), "weights": {"two_tower": 1.0, "mf": 0.0}}
    app["deployments"] = [{**d, "autoscaling_config": {**d["autoscaling_config"], "max_replicas": 1}}
                          if "autoscaling_config" in d else d for d in app["deployments"] if d["name"] != "MFScorer"]
    serve_file = root / "serve.yaml"
    serve_file.write_text(yaml.safe_dump(raw))
    spec_file = root / "incremental.yaml"
    spec_file.write_text(yaml.safe_dump({**SPEC, "incremental": {**SPEC["incremental"],
                                                                 "serve_config": str(serve_file)}}))
    assert main_serve(str(serve_file), detach=True) == 0
    # the later interactions arrive: appended to the same file, as a log grows
    with open(data / "u.data", "a") as f:
        ratings[ratings["t"] > cut].to_csv(f, sep="\t", header=False, index=False)
    return {"url": f"http://127.0.0.1:{raw['http_options']['port']}", "store": store, "spec": spec_file,
            "cut": cut, "ratings": ratings[in_slice],
            "base_cutoff": json.loads((Path(base.artifact) / "manifest.json").read_text())["data_cutoff"]}


def _served_sha(world) -> str:
    return requests.get(world["url"] + "/version", timeout=30).json()["members"]["two_tower"]["sha256"]


def _new_user(world) -> int:
    """A user of the slice whose first interaction arrived after the base artifact was trained."""
    r = world["ratings"]
    first = r.groupby("u")["t"].min()
    return int(first[first > world["cut"]].index[0])


def test_promoted_candidate_is_served(world, capsys):
    store = world["store"]
    v1 = store.location("v0001")
    assert world["base_cutoff"] <= world["cut"]
    assert _served_sha(world) == _sha(v1)
    new_user = _new_user(world)
    assert requests.post(world["url"] + "/recommend", json={"user_id": new_user, "k": 5}, timeout=30).status_code == 404

    started = time.perf_counter()
    out = _run_cli(capsys, str(world["spec"]), "--from-artifact", store.uri)
    seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"\npromoted run: {seconds:.1f} s (training {out['candidate']['train_seconds']} s); "
              f"deployed {out['deployed']['metrics']}; candidate {out['candidate']['metrics']}; "
              f"selection {out['selection']}; {out['new_users']} new users, {out['new_items']} new items")
    assert out["status"] == "promoted", out["reason"]
    assert out["candidate"]["metrics"]["val_rmse"] <= out["deployed"]["metrics"]["val_rmse"]
    assert out["selection"]["old"] > 0 and out["selection"]["new_fit"] > 0 and out["selection"]["replay"] > 0
    assert out["selection"]["holdout_from"] > out["selection"]["cutoff"] == world["base_cutoff"]
    assert out["new_users"] > 0 and out["serve_swapped"]

    v2 = store.location("v0002")
    assert store.current() == "v0002" and out["promoted_location"] == v2
    manifest = json.loads((Path(v2) / "manifest.json").read_text())
    assert manifest["lineage"]["parent"]["sha256"] == _sha(v1)
    assert world["cut"] < manifest["data_cutoff"] < out["selection"]["holdout_from"]
    assert _served_sha(world) == _sha(v2)
    # the user who arrived with the new data is now known to the served model; the ingress picks the new
    # artifact's score tables up within its poll interval (0.5 s), so /recommend may answer from v1 briefly
    deadline = time.monotonic() + 15
    while True:
        r = requests.post(world["url"] + "/recommend", json={"user_id": new_user, "k": 5}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["versions"]["two_tower"] == _sha(v2)[:12] or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert len(body["items"]) == 5 and body["versions"]["two_tower"] == _sha(v2)[:12]
    report = json.loads((Path(out["candidate"]["run_path"]) / "incremental.json").read_text())
    assert report["status"] == "promoted" and report["promoted_version"] == "v0002"


def test_worse_candidate_is_refused(world, capsys):
    store = world["store"]
    served = _served_sha(world)
    # same new slice as the first round, an absurd head learning rate: the candidate must lose and be refused
    out = _run_cli(capsys, str(world["spec"]), "--from-artifact", store.uri,
                   "--set", f"incremental.after_timestamp={world['base_cutoff']}", "--set", "optim.lr_heads=1000")
    with capsys.disabled():
        print(f"\nrefused run: {out['seconds']:.1f} s; deployed {out['deployed']['metrics']}; "
              f"candidate {out['candidate']['metrics']}")
    assert out["status"] == "refused", out["reason"]
    cand = out["candidate"]["metrics"]["val_rmse"]
    assert not np.isfinite(cand) or cand > out["deployed"]["metrics"]["val_rmse"]
    assert out["promoted_version"] is None and not out["serve_swapped"]
    assert store.current() == "v0002" and store.versions() == ["v0001", "v0002"]
    assert _served_sha(world) == served
    user = int(world["ratings"]["u"].iloc[0])
    assert requests.post(world["url"] + "/recommend", json={"user_id": user, "k": 3}, timeout=30).status_code == 200
