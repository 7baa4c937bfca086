"""The meta-learning loop (its shape differs from the two-tower recipe: batches are *users*, each split into a
support and a query set) plus the cold-user evaluation and adaptation-latency probe.

setup (item text vectors, per-user rating lists) -> epochs of task batches (sample support/query, ``meta_loss``,
optimizer step) -> evaluate on cold users with k in {1, 3, 5, 10} known ratings.

``train_standard`` is the no-meta-learning control: the same model trained the ordinary way (one free vector
per warm user, all of the user's ratings at once); a cold user then starts from the mean warm user and takes the
same adaptation steps. The difference between the two is what meta-learning buys.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lmrec.evaluation.metrics import ranking_metrics
from lmrec.strategies.meta_learning import (
    ColdStartModel, MetaAlgorithm, TaskBatch, adapt, item_scores, meta_loss, predict_ratings, reptile_init_grad,
    task_losses,
)

log = logging.getLogger(__name__)


@dataclass
class MetaSettings:
    """Inner/outer loop settings (the typed config form is ``lmrec.config.train.MetaLearningSpec``)."""

    algorithm: MetaAlgorithm = "fomaml"
    inner_steps: int = 5
    inner_lr: float = 0.5
    click_weight: float = 0.3
    l2: float = 0.01
    max_support: int = 10
    query_size: int = 20
    tasks_per_batch: int = 32
    epochs: int = 10
    lr: float = 3e-3
    seed: int = 0


def user_rows(train: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each user's (items, ratings) in time order (timestamp, then row order)."""
    cols = ["user_idx", "timestamp"] if "timestamp" in train else ["user_idx"]
    df = train.sort_values(cols, kind="stable")
    out = {}
    for u, g in df.groupby("user_idx", sort=True):
        out[int(u)] = (g["item_idx"].to_numpy(np.int64), g["rating"].to_numpy(np.float32))
    return out


def sample_tasks(rows: dict[int, tuple[np.ndarray, np.ndarray]], users: np.ndarray, rng: np.random.Generator,
                 max_support: int, query_size: int) -> tuple[TaskBatch, TaskBatch]:
    """Per user: k ~ U{1..max_support} random support ratings and up to ``query_size`` other ones as query."""
    s_items, s_ratings, q_items, q_ratings = [], [], [], []
    for u in users:
        items, ratings = rows[int(u)]
        perm = rng.permutation(len(items))
        k = int(rng.integers(1, min(max_support, len(items) - 1) + 1)) if len(items) > 1 else 1
        s, q = perm[:k], perm[k : k + query_size]
        s_items.append(items[s]), s_ratings.append(ratings[s])
        q_items.append(items[q]), q_ratings.append(ratings[q])
    return TaskBatch.from_lists(s_items, s_ratings), TaskBatch.from_lists(q_items, q_ratings)


def train_meta(model: ColdStartModel, train: pd.DataFrame, settings: MetaSettings) -> list[dict]:
    """Meta-train the item side and the user init over the users of ``train`` (warm users); per-epoch logs."""
    s = settings
    rows = {u: v for u, v in user_rows(train).items() if len(v[0]) >= 2}
    users = np.array(sorted(rows))
    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)
    slow = [p for n, p in model.named_parameters() if n != "user_init"]
    # Reptile's init update is an interpolation: plain SGD with lr = ε keeps it one (Adam would rescale it)
    groups = [{"params": slow}]
    opt = torch.optim.Adam(groups, lr=s.lr)
    init_opt = torch.optim.SGD([model.user_init], lr=0.5) if s.algorithm == "reptile" else None
    if init_opt is None:
        opt.add_param_group({"params": [model.user_init]})
    history = []
    for epoch in range(s.epochs):
        start = time.perf_counter()
        order = rng.permutation(users)
        sums: dict[str, float] = {}
        steps = 0
        for lo in range(0, len(order), s.tasks_per_batch):
            support, query = sample_tasks(rows, order[lo : lo + s.tasks_per_batch], rng, s.max_support, s.query_size)
            loss, logs = meta_loss(model, support, query, s.algorithm, s.inner_steps, s.inner_lr, s.click_weight,
                                   s.l2)
            opt.zero_grad(set_to_none=True)
            if init_opt is not None:
                init_opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if init_opt is not None:
                reptile_init_grad(model)
                init_opt.step()
            steps += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
        out = {k: v / max(steps, 1) for k, v in sums.items()}
        out.update(epoch=epoch, seconds=time.perf_counter() - start)
        history.append(out)
        log.info("meta epoch %d: %s", epoch, {k: round(v, 4) for k, v in out.items()})
    return history


def train_standard(model: ColdStartModel, train: pd.DataFrame, settings: MetaSettings) -> list[dict]:
    """Control: ordinary training with a free (u, b) per user on all their ratings; the init becomes their mean."""
    s = settings
    rows = user_rows(train)
    users = np.array(sorted(rows))
    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)
    table = torch.nn.Parameter(torch.zeros(int(users.max()) + 1, model.dim + 1))
    torch.nn.init.normal_(table, std=0.01)
    slow = [p for n, p in model.named_parameters() if n != "user_init"]
    opt = torch.optim.Adam([{"params": slow}, {"params": [table]}], lr=s.lr)
    history = []
    for epoch in range(s.epochs):
        start = time.perf_counter()
        order = rng.permutation(users)
        total = 0.0
        for lo in range(0, len(order), s.tasks_per_batch):
            batch_users = order[lo : lo + s.tasks_per_batch]
            batch = TaskBatch.from_lists([rows[int(u)][0] for u in batch_users], [rows[int(u)][1] for u in batch_users])
            vec, bias = model.item_tables()
            seen = model.seen if s.click_weight > 0 else None
            fast = table[torch.as_tensor(batch_users)]
            loss = task_losses(fast, batch, vec, bias, model.global_mean, s.click_weight, s.l2, seen).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        history.append({"epoch": epoch, "loss": total, "seconds": time.perf_counter() - start})
    with torch.no_grad():
        model.user_init.copy_(table[torch.as_tensor(users)].mean(0))
    return history


def support_by_user(support: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """A cold-start split's support rows per user, earliest first (the order ``cold_start_users`` chose them in)."""
    return user_rows(support)


@torch.no_grad()
def evaluate_cold_users(model: ColdStartModel, support: pd.DataFrame, test: pd.DataFrame, n_items: int,
                        shots: tuple[int, ...] = (1, 3, 5, 10), steps: int = 5, inner_lr: float = 0.5,
                        click_weight: float = 0.3, l2: float = 0.01, k: int = 10) -> dict[str, float]:
    """NDCG@k / Recall@k / RMSE for cold users adapted on their first ``n`` support ratings, for each n in shots.

    Relevant = the user's test items. Every support item is excluded from the ranking at every n, so the
    candidate set is the same for all n and the numbers are comparable across n.
    """
    sup = support_by_user(support)
    users = np.array(sorted(set(sup) & set(test["user_idx"].unique())))
    tables = model.item_tables()
    vec, bias = tables
    relevant = np.zeros((len(users), n_items), dtype=bool)
    excluded = np.zeros((len(users), n_items), dtype=bool)
    pos = {u: r for r, u in enumerate(users)}
    t = test[test["user_idx"].isin(users)]
    relevant[t["user_idx"].map(pos).to_numpy(), t["item_idx"].to_numpy()] = True
    for u in users:
        excluded[pos[u], sup[u][0]] = True
    test_rows = TaskBatch.from_lists([t.loc[t["user_idx"] == u, "item_idx"].to_numpy() for u in users],
                                     [t.loc[t["user_idx"] == u, "rating"].to_numpy(np.float32) for u in users])
    out: dict[str, float] = {"cold_users": float(len(users))}
    for n in shots:
        batch = TaskBatch.from_lists([sup[u][0][:n] for u in users], [sup[u][1][:n] for u in users])
        fast = adapt(model, batch, steps, inner_lr, click_weight, l2, tables=tables)
        metrics = ranking_metrics(item_scores(fast, vec, bias), relevant, excluded, ks=(k,))
        pred = predict_ratings(fast, test_rows.items, vec, bias, model.global_mean)
        m = test_rows.mask.float()
        rmse = float((((pred - test_rows.ratings) ** 2 * m).sum() / m.sum()).sqrt())
        out[f"ndcg@{k}_k{n}"] = float(metrics[f"ndcg@{k}"])
        out[f"recall@{k}_k{n}"] = float(metrics[f"recall@{k}"])
        out[f"rmse_k{n}"] = rmse
    return out


def adaptation_latency_ms(model: ColdStartModel, items: np.ndarray, ratings: np.ndarray, steps: int = 5,
                          inner_lr: float = 0.5, click_weight: float = 0.3, l2: float = 0.01,
                          repeats: int = 50) -> dict[str, float]:
    """Wall time for one new user: adapt on ``items``/``ratings`` then score every item (precomputed item tables).

    This is the serving path: item tables are computed once per model load, a request only adapts ``dim + 1``
    numbers. Returns median and p95 milliseconds over ``repeats`` runs (after one warm-up).
    """
    with torch.no_grad():
        tables = tuple(t.detach() for t in model.item_tables())
    batch = TaskBatch.from_lists([np.asarray(items)], [np.asarray(ratings, dtype=np.float32)])
    times = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        fast = adapt(model, batch, steps, inner_lr, click_weight, l2, tables=tables)
        with torch.no_grad():
            item_scores(fast, *tables)
        if r:
            times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95))}


@dataclass
class MetaRunResult:
    """What ``run_meta_learning`` returns: the meta-trained model, per-epoch logs, cold-user metrics, timings."""

    model: ColdStartModel
    history: list[dict]
    metrics: dict[str, float]
    fit_seconds: float
    encode_seconds: float


def settings_from_spec(spec) -> MetaSettings:
    """``MetaSettings`` from a ``TrainSpec`` whose strategy is meta_learning (epochs come from ``optim``)."""
    s = spec.strategy
    return MetaSettings(algorithm=s.algorithm, inner_steps=s.inner_steps, inner_lr=s.inner_lr,
                        click_weight=s.click_weight, l2=s.l2, max_support=s.max_support, query_size=s.query_size,
                        tasks_per_batch=s.tasks_per_batch, epochs=spec.optim.epochs, lr=s.lr, seed=spec.seed)


def run_meta_learning(spec, data, device: str | torch.device = "cpu") -> MetaRunResult:
    """The meta-learning job: encode item texts once (frozen encoder), meta-train on warm users, evaluate cold users.

    Cold users are the users of ``data.test`` (a ``cold_start_users`` split): their train rows are their support
    sets, earliest first, and they take no part in meta-training.
    """
    from lmrec.models.encoder import build_encoder, encode_all

    start = time.perf_counter()
    m = spec.model
    encoder = build_encoder(m.encoder, m.pooling, m.encoder_init).to(device)
    features = encode_all(encoder, torch.as_tensor(data.item_tokens), torch.as_tensor(data.item_lengths),
                          spec.optim.encode_batch_size).cpu()
    encode_seconds = time.perf_counter() - start
    del encoder
    cold = np.unique(data.test["user_idx"].to_numpy()) if data.test is not None else np.zeros(0, dtype=np.int64)
    is_cold = data.train["user_idx"].isin(cold)
    warm, support = data.train[~is_cold], data.train[is_cold]
    seen = torch.zeros(data.n_items, dtype=torch.bool)
    seen[torch.as_tensor(warm["item_idx"].to_numpy())] = True
    model = ColdStartModel(features, spec.strategy.dim, float(warm["rating"].mean()), seen_items=seen)
    settings = settings_from_spec(spec)
    history = train_meta(model, warm, settings)
    metrics: dict[str, float] = {}
    if len(cold) and len(support):
        metrics = evaluate_cold_users(model, support, data.test, data.n_items, tuple(spec.strategy.shots),
                                      settings.inner_steps, settings.inner_lr, settings.click_weight, settings.l2)
    return MetaRunResult(model, history, metrics, time.perf_counter() - start, encode_seconds)
