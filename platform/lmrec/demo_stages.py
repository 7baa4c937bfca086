"""The demo's later stages: the MiniLM ranker fused with EASE and item-kNN, a small Tune search over the task
weights, then the ensemble served and called.

They run the committed files a user would run (``jobs/ml100k-ranking.yaml``, ``tune/ml100k-task-weights.yaml``,
``serve/recommender.yaml``), shrunk where the demo has to stay short; the demo's Ray (started by its training
stage) hosts Tune and Serve.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmrec.plotting import pyplot

RANKING_JOB = "ml100k-ranking.yaml"
TUNE_SPEC = "ml100k-task-weights.yaml"
SERVE_CONFIG = "recommender.yaml"


def find_committed(folder: str, name: str) -> Path:
    """A committed spec: from the working directory (a checkout) or beside the installed package."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / folder / name).exists():
            return root / folder / name
    raise FileNotFoundError(f"{folder}/{name} not found: run the demo from an lmrec checkout")


@dataclass
class TuneOutcome:
    metric: str  # what the search optimised (a validation metric)
    table: list[dict]  # one row per trial: params, status, epochs, metric
    best: dict | None
    spec_path: str | None  # exported job spec
    artifact: str | None  # best trial's artifact
    epochs_used: int
    epochs_possible: int
    seconds: float
    files: list[str] = field(default_factory=list)


@dataclass
class FusedOutcome:
    """The ranker's and the fused ensemble's test metrics (demo record shape), the fusion weights, seconds."""

    records: list[dict]
    weights: dict[str, float]
    seconds: float


def fused_stage(split_name: str = "per-user-80-20") -> FusedOutcome:
    """Train ``jobs/ml100k-ranking.yaml`` in-process (frozen encoder, its split is the demo's per-user 80/20), fuse
    it with EASE and item-kNN through the fusion Serve applies (weights fitted on the job's validation slice, never
    the test rows), refit the collaborative members on train + valid and score the test rows the classic rankers
    are scored on."""
    import pandas as pd

    from lmrec.config.base import load_spec
    from lmrec.config.train import TrainSpec
    from lmrec.evaluation import evaluate_ranking
    from lmrec.models.baselines import EASE, ItemKNN
    from lmrec.strategies.ensemble import FusedEnsemble
    from lmrec.training.data import prepare_data
    from lmrec.training.local import train_local

    t0 = time.perf_counter()
    spec = load_spec(TrainSpec, find_committed("jobs", RANKING_JOB))
    data = prepare_data(spec)
    ranker = train_local(spec, data, device="cpu").recommender()
    n_users, n_items = data.n_users, data.n_items
    ens = FusedEnsemble({"two_tower": ranker, "ease": EASE().fit(data.train, n_users, n_items),
                         "item_knn": ItemKNN().fit(data.train, n_users, n_items)})
    weights = ens.fit_weights(data.train, data.valid, n_items)
    known = pd.concat([data.train, data.valid], ignore_index=True)
    ens.fit(known, n_users, n_items)  # EASE and kNN refitted, the ranker's user vectors re-pooled (no retraining)
    seconds = time.perf_counter() - t0
    records = []
    for name, model in (("two_tower_minilm_ranker", ranker), ("fused (two-tower + ease + item_knn)", ens)):
        metrics = evaluate_ranking(model, known, data.test, n_items, (10,))
        records.append({"model": name, "split": split_name, "fit_seconds": round(seconds, 1),
                        "metrics": {k: v for k, v in metrics.items() if "@" in k}})
    return FusedOutcome(records, {k: round(float(v), 3) for k, v in weights.items()}, seconds)


def tune_stage(out_dir: Path, *, num_samples: int = 4, epochs: int = 8) -> TuneOutcome:
    """Run the task-weight search with ``num_samples`` trials of at most ``epochs`` epochs (ASHA stops the worse)."""
    from lmrec.tuning.report import write_report
    from lmrec.tuning.spec import load_tune_spec
    from lmrec.tuning.study import locate, run_study

    path = find_committed("tune", TUNE_SPEC)
    overrides = {"num_samples": num_samples, "overrides": {"optim.epochs": epochs},
                 "storage_path": str((out_dir / "tune").resolve()), "export_dir": str((out_dir / "tuned").resolve()),
                 "search.n_startup_trials": min(num_samples, 4)}
    t0 = time.perf_counter()
    spec, base = load_tune_spec(path, overrides)
    study = locate(spec, path, base, resume=False)
    grid = run_study(study)
    report = write_report(study, grid, Path(spec.export_dir))
    table = json.loads(report.table.to_json(orient="records"))
    return TuneOutcome(metric=spec.metric, table=table, best=report.best and {k: v for k, v in report.best.items() if k != "artifact"},
                       spec_path=str(report.spec_path) if report.spec_path else None, artifact=report.artifact,
                       epochs_used=report.epochs_used, epochs_possible=len(table) * study.max_epochs,
                       seconds=time.perf_counter() - t0, files=[str(f) for f in report.files])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict | None = None, timeout: float = 30.0,
          token: str | None = None) -> tuple[dict, float]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    req = urllib.request.Request(url, data=data, headers=headers,
                                 method="GET" if body is None else "POST")
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        payload = json.loads(resp.read())
    return payload, (time.perf_counter() - t0) * 1000.0


@dataclass
class ServeOutcome:
    url: str
    samples: dict[str, dict]  # endpoint -> one response (abridged)
    latency_ms: dict[str, list[float]]  # endpoint -> per-request latency
    seconds: float

    def summary(self) -> list[dict]:
        return [{"endpoint": ep, "requests": len(v), "p50_ms": round(float(np.percentile(v, 50)), 1),
                 "p95_ms": round(float(np.percentile(v, 95)), 1), "p99_ms": round(float(np.percentile(v, 99)), 1)}
                for ep, v in self.latency_ms.items() if v]


def serve_stage(two_tower_artifact: str, mf_artifact: str, user_ids: list, item_ids: list, *,
                requests: int = 200, seed: int = 0) -> ServeOutcome:
    """Deploy ``serve/recommender.yaml`` on the demo's artifacts, call every endpoint, time ``/recommend``."""
    from ray import serve

    from lmrec.config.base import load_yaml
    from lmrec.serving.cli import deploy_config, load_serve_config

    raw = load_yaml(find_committed("serve", SERVE_CONFIG))
    port = _free_port()
    raw["http_options"] = {**raw.get("http_options", {}), "host": "127.0.0.1", "port": port}
    raw["applications"][0]["args"].update(two_tower_artifact=str(two_tower_artifact), mf_artifact=str(mf_artifact))
    t0 = time.perf_counter()
    token = secrets.token_urlsafe(24)  # POST /items needs the write token (lmrec.serving.auth): a one-off one
    deploy_config(load_serve_config(raw), env_vars={"LMREC_WRITE_TOKEN": token})
    url = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(seed)
    samples: dict[str, dict] = {}
    latency: dict[str, list[float]] = {"/recommend": [], "/predict": [], "/cold-start/recommend": []}
    try:
        samples["/health"], _ = _post(f"{url}/health")
        samples["/version"], _ = _post(f"{url}/version")
        for _ in range(requests):
            user = user_ids[int(rng.integers(len(user_ids)))]
            resp, ms = _post(f"{url}/recommend", {"user_id": user, "k": 10})
            latency["/recommend"].append(ms)
        samples["/recommend"], _ = _post(f"{url}/recommend", {"user_id": user_ids[0], "k": 5, "explain": True})
        for _ in range(max(requests // 4, 1)):
            user = user_ids[int(rng.integers(len(user_ids)))]
            items = [item_ids[int(i)] for i in rng.choice(len(item_ids), 5, replace=False)]
            _, ms = _post(f"{url}/predict", {"user_id": user, "item_ids": items})
            latency["/predict"].append(ms)
            liked = [item_ids[int(i)] for i in rng.choice(len(item_ids), 5, replace=False)]
            _, ms = _post(f"{url}/cold-start/recommend",
                          {"ratings": [{"item_id": i, "rating": 5.0} for i in liked], "k": 10})
            latency["/cold-start/recommend"].append(ms)
        samples["/cold-start/recommend"], _ = _post(
            f"{url}/cold-start/recommend", {"ratings": [], "profile_text": "I love space adventures and robots", "k": 5})
        samples["/similar-items"], _ = _post(f"{url}/similar-items", {"item_id": item_ids[0], "k": 5})
        new_item = "demo-new-item"
        samples["/items"], _ = _post(f"{url}/items", {"item_id": new_item,
                                                      "text": "Galactic Rescue (2026) | Sci-Fi, Adventure"},
                                    token=token)
        samples["/similar-items (new item)"], _ = _post(f"{url}/similar-items", {"item_id": new_item, "k": 5})
    finally:
        serve.shutdown()
    return ServeOutcome(url=url, samples=samples, latency_ms=latency, seconds=time.perf_counter() - t0)


def latency_chart(outcome: ServeOutcome, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return

    series = {ep: v for ep, v in outcome.latency_ms.items() if v}
    if not series:
        return
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.boxplot(list(series.values()), vert=False, showfliers=False)
    ax.set_yticks(range(1, len(series) + 1), list(series))
    ax.set_xlabel("latency (ms), sequential requests on loopback")
    ax.set_title("Ray Serve ensemble")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tune_chart(outcome: TuneOutcome, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return

    metric = outcome.metric
    rows = [r for r in outcome.table if r.get(metric) is not None]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar([str(i) for i in range(len(rows))], [r[metric] for r in rows],
           color=["#55a868" if r.get("status") == "completed" else "#c44e52" for r in rows])
    ax.set_xlabel("trial (green: ran to the end, red: stopped early by ASHA)")
    ax.set_ylabel(metric)
    ax.set_title("Tune: task weights + head learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
