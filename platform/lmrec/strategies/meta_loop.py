"""The meta-learning loop (its shape differs from the two-tower recipe: batches are *users*, each split into a
support and a query set) plus the cold-user evaluation, the meta-validation of the inner loop and the
adaptation-latency probe.

setup (item text vectors, per-user rating lists) -> epochs of task batches (sample support/query, ``meta_loss``,
optimizer step) -> pick inner steps / step size on held-out meta-validation users -> evaluate cold users with
k in {1, 3, 5, 10} known ratings.

``train_standard`` is the no-meta-learning control: the same model (item side + history-aggregate user tower)
trained the ordinary way, every rating predicted from the user's whole history minus that rating. A cold user is
then scored by the tower from their k ratings, exactly as a warm user would be.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lmrec.data.splits import cold_start_users
from lmrec.evaluation.metrics import ranking_metrics
from lmrec.models.cold_start import ColdStartModel, TaskBatch, item_scores, predict_ratings
from lmrec.strategies.meta_learning import MetaAlgorithm, adapt, leave_one_out_losses, meta_loss
from lmrec.strategies.transfer.meta_learning import MetaLearningStrategy

log = logging.getLogger(__name__)
_SPEC = {name: field.default for name, field in MetaLearningStrategy.model_fields.items()}


@dataclass
class MetaSettings:
    """Inner/outer loop settings. Defaults: those of the typed config form
    (``lmrec.strategies.transfer.meta_learning.MetaLearningStrategy``, one set), and 30 epochs."""

    algorithm: MetaAlgorithm = _SPEC["algorithm"]
    inner_steps: int = _SPEC["inner_steps"]
    inner_lr: float = _SPEC["inner_lr"]
    click_weight: float = _SPEC["click_weight"]
    l2: float = _SPEC["l2"]
    max_support: int = _SPEC["max_support"]
    query_size: int = _SPEC["query_size"]
    episodes: str = "earliest"
    tasks_per_batch: int = _SPEC["tasks_per_batch"]
    epochs: int = 30
    lr: float = _SPEC["lr"]
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
                 max_support: int, query_size: int, episodes: str = "earliest") -> tuple[TaskBatch, TaskBatch]:
    """Per user: k ~ U{1..max_support} support ratings and up to ``query_size`` random later ones as query.

    ``episodes="earliest"``: the support is the user's first k ratings (rows are in time order), the way a new
    user arrives; ``"random"``: k random ratings. A user's first ratings differ from the rest (sign-up
    pages, older and more popular films), so episodes drawn at random teach a tower that misreads new users.
    """
    if episodes not in ("earliest", "random"):
        raise ValueError(f"episodes must be 'earliest' or 'random', got {episodes!r}")
    s_items, s_ratings, q_items, q_ratings = [], [], [], []
    for u in users:
        items, ratings = rows[int(u)]
        k = int(rng.integers(1, min(max_support, len(items) - 1) + 1)) if len(items) > 1 else 1
        if episodes == "earliest":
            perm = np.concatenate([np.arange(k), k + rng.permutation(len(items) - k)])
        else:
            perm = rng.permutation(len(items))
        s, q = perm[:k], perm[k : k + query_size]
        s_items.append(items[s]), s_ratings.append(ratings[s])
        q_items.append(items[q]), q_ratings.append(ratings[q])
    return TaskBatch.from_lists(s_items, s_ratings), TaskBatch.from_lists(q_items, q_ratings)


def _setup(model: ColdStartModel, train: pd.DataFrame, settings: MetaSettings):
    """Both trainers: seeded RNGs, count-based bias init, Adam over every slow parameter; returns (rows, users,
    rng, optimizer)."""
    rows = {u: v for u, v in user_rows(train).items() if len(v[0]) >= 2}
    torch.manual_seed(settings.seed)
    model.init_item_biases(train["item_idx"].to_numpy(), train["rating"].to_numpy(np.float64))
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    return rows, np.array(sorted(rows)), np.random.default_rng(settings.seed), opt


def train_meta(model: ColdStartModel, train: pd.DataFrame, settings: MetaSettings) -> list[dict]:
    """Meta-train the item side and the aggregate init over the users of ``train`` (warm users); per-epoch logs."""
    s = settings
    rows, users, rng, opt = _setup(model, train, s)
    history = []
    for epoch in range(s.epochs):
        start = time.perf_counter()
        order = rng.permutation(users)
        sums: dict[str, float] = {}
        steps = 0
        for lo in range(0, len(order), s.tasks_per_batch):
            support, query = sample_tasks(rows, order[lo : lo + s.tasks_per_batch], rng, s.max_support, s.query_size,
                                          s.episodes)
            loss, logs = meta_loss(model, support, query, s.algorithm, s.inner_steps, s.inner_lr, s.click_weight,
                                   s.l2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
        out = {k: v / max(steps, 1) for k, v in sums.items()}
        out.update(epoch=epoch, seconds=time.perf_counter() - start)
        history.append(out)
        log.info("meta epoch %d: %s", epoch, {k: round(v, 4) for k, v in out.items()})
    return history


def train_standard(model: ColdStartModel, train: pd.DataFrame, settings: MetaSettings) -> list[dict]:
    """Control: ordinary training of the same model; each user's ``query_size`` sampled ratings per epoch are
    predicted from the rest of their history (no support/query episodes, no inner loop)."""
    s = settings
    rows, users, rng, opt = _setup(model, train, s)
    history = []
    for epoch in range(s.epochs):
        start = time.perf_counter()
        order = rng.permutation(users)
        total, steps = 0.0, 0
        for lo in range(0, len(order), s.tasks_per_batch):
            batch_users = order[lo : lo + s.tasks_per_batch]
            batch = TaskBatch.from_lists([rows[int(u)][0] for u in batch_users], [rows[int(u)][1] for u in batch_users])
            picks = [rng.permutation(len(rows[int(u)][0]))[: s.query_size] for u in batch_users]
            targets = np.full((len(picks), max(len(p) for p in picks)), -1, dtype=np.int64)
            for r, p in enumerate(picks):
                targets[r, : len(p)] = p
            loss = leave_one_out_losses(model, batch, torch.from_numpy(targets), model.item_tables(),
                                        s.click_weight).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        history.append({"epoch": epoch, "loss": total / max(steps, 1), "seconds": time.perf_counter() - start})
        log.info("standard epoch %d: %s", epoch, history[-1])
    return history


def support_by_user(support: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """A cold-start split's support rows per user, earliest first (the order ``cold_start_users`` chose them in)."""
    return user_rows(support)


@dataclass
class ColdUsers:
    """Cold users ready for evaluation: support lists (earliest first), relevance/exclusion masks, test rows."""

    users: np.ndarray
    support: dict[int, tuple[np.ndarray, np.ndarray]]
    relevant: np.ndarray  # [U, n_items] the user's test items
    excluded: np.ndarray  # [U, n_items] every support item (the same candidates at every k)
    test_rows: TaskBatch

    @classmethod
    def from_frames(cls, support: pd.DataFrame, test: pd.DataFrame, n_items: int) -> "ColdUsers":
        sup = support_by_user(support)
        users = np.array(sorted(set(sup) & set(test["user_idx"].unique())), dtype=np.int64)
        pos = {u: r for r, u in enumerate(users)}
        relevant = np.zeros((len(users), n_items), dtype=bool)
        excluded = np.zeros_like(relevant)
        t = test[test["user_idx"].isin(users)]
        relevant[t["user_idx"].map(pos).to_numpy(), t["item_idx"].to_numpy()] = True
        for u in users:
            excluded[pos[u], sup[u][0]] = True
        by_user = {int(u): g for u, g in t.groupby("user_idx")}
        test_rows = TaskBatch.from_lists([by_user[int(u)]["item_idx"].to_numpy() for u in users],
                                         [by_user[int(u)]["rating"].to_numpy(np.float32) for u in users])
        return cls(users, sup, relevant, excluded, test_rows)

    def shots(self, n: int) -> TaskBatch:
        """Each user's first ``n`` support ratings."""
        return TaskBatch.from_lists([self.support[int(u)][0][:n] for u in self.users],
                                    [self.support[int(u)][1][:n] for u in self.users])

    def ranking(self, scores: np.ndarray | torch.Tensor, k: int = 10) -> dict[str, float]:
        return ranking_metrics(scores, self.relevant, self.excluded, ks=(k,))


@torch.no_grad()
def evaluate_cold_users(model: ColdStartModel, support: pd.DataFrame | ColdUsers, test: pd.DataFrame | None = None,
                        n_items: int | None = None, shots: tuple[int, ...] = (1, 3, 5, 10), steps: int = 3,
                        inner_lr: float = 0.5, click_weight: float = 3.0, l2: float = 1.0,
                        k: int = 10) -> dict[str, float]:
    """NDCG@k / Recall@k / RMSE for cold users adapted on their first ``n`` support ratings, for each n in shots.

    Relevant = the user's test items. Every support item is excluded from the ranking at every n, so the
    candidate set is the same for all n and the numbers are comparable across n. ``steps = 0`` scores the
    aggregate tower's output as is (no adaptation).
    """
    cold = support if isinstance(support, ColdUsers) else ColdUsers.from_frames(support, test, n_items)
    tables = model.item_tables().detach()
    out: dict[str, float] = {"cold_users": float(len(cold.users))}
    rows = cold.test_rows
    m = rows.mask.float()
    for n in shots:
        fast = adapt(model, cold.shots(n), steps, inner_lr, click_weight, l2, tables=tables)
        metrics = cold.ranking(item_scores(fast, tables), k)
        pred = predict_ratings(fast, rows.items, tables, model.global_mean).clamp(1.0, 5.0)
        out[f"ndcg@{k}_k{n}"] = float(metrics[f"ndcg@{k}"])
        out[f"recall@{k}_k{n}"] = float(metrics[f"recall@{k}"])
        out[f"rmse_k{n}"] = float((((pred - rows.ratings) ** 2 * m).sum() / m.sum()).sqrt())
    return out


def meta_validation_split(train: pd.DataFrame, n_items: int, user_frac: float = 0.1, k_support: int = 10,
                          seed: int = 1) -> tuple[pd.DataFrame, ColdUsers]:
    """Hold out warm users as meta-validation cold users (same protocol as the test's cold users):
    returns (meta-training rows, the held-out users with their earliest ``k_support`` ratings as support)."""
    split = cold_start_users(train, user_frac=user_frac, k_support=k_support, seed=seed)
    return split.train_without_support(), ColdUsers.from_frames(split.support, split.test, n_items)


def select_inner_loop(model: ColdStartModel, val: ColdUsers, click_weight: float, shots: tuple[int, ...] = (3, 5),
                      steps_grid: tuple[int, ...] = (0, 1, 3, 5), lr_grid: tuple[float, ...] = (0.3, 0.5, 1.0),
                      l2_grid: tuple[float, ...] = (0.3, 1.0)) -> dict:
    """Meta-validation: the inner steps / step size / proximal weight with the best mean NDCG@10 over ``shots``
    on held-out users. Every grid point is scored (``steps = 0`` = no adaptation); returns the best and all."""
    grid = [(0, lr_grid[0], l2_grid[0])] + [
        (s, lr, l2) for s, lr, l2 in itertools.product(steps_grid, lr_grid, l2_grid) if s > 0]
    scored = []
    for steps, lr, l2 in grid:
        m = evaluate_cold_users(model, val, shots=shots, steps=steps, inner_lr=lr, click_weight=click_weight, l2=l2)
        scored.append({"steps": steps, "inner_lr": lr, "l2": l2,
                       "val_ndcg@10": float(np.mean([m[f"ndcg@10_k{n}"] for n in shots]))})
    best = max(scored, key=lambda r: r["val_ndcg@10"])
    return {**best, "grid": scored}


def adaptation_latency_ms(model: ColdStartModel, items: np.ndarray, ratings: np.ndarray, steps: int = 3,
                          inner_lr: float = 0.5, click_weight: float = 3.0, l2: float = 1.0,
                          repeats: int = 50) -> dict[str, float]:
    """Time for one new user: aggregate + adapt on ``items``/``ratings`` then score every item.

    This is the serving path: item tables are computed once per model load, a request only adapts ``dim + 1``
    numbers. Returns median / p95 wall milliseconds and the median CPU milliseconds of the calling thread over
    ``repeats`` runs (after one warm-up). On a shared machine the wall figures include waiting for a core; with
    one torch thread (a serving replica's setting) the CPU figure is the work itself.
    """
    with torch.no_grad():
        tables = model.item_tables().detach()
    batch = TaskBatch.from_lists([np.asarray(items)], [np.asarray(ratings, dtype=np.float32)])
    wall, cpu = [], []
    for r in range(repeats + 1):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fast = adapt(model, batch, steps, inner_lr, click_weight, l2, tables=tables)
        with torch.no_grad():
            item_scores(fast, tables)
        if r:
            wall.append((time.perf_counter() - start) * 1000)
            cpu.append((time.thread_time() - start_cpu) * 1000)
    return {"median_ms": float(np.median(wall)), "p95_ms": float(np.percentile(wall, 95)),
            "cpu_median_ms": float(np.median(cpu))}


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
