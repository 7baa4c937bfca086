"""``TuneSpec``: a hyperparameter search described as data, checked before any trial starts.

A search names a base job spec (``jobs/*.yaml``), fixed overrides applied to every trial, the metric and mode, and
a search space of dotted spec keys with distributions::

    params:
      optim.lr_heads: {type: loguniform, low: 0.003, high: 0.05}
      tasks.click.temperature: {type: choice, values: [0.05, 0.1, 0.2]}
      task_weights:                       # a group name: one simplex over several keys
        type: simplex
        keys: [tasks.rating.weight, tasks.click.weight, tasks.related.weight]

``simplex`` draws weights that sum to ``total`` from a Dirichlet(``concentration``). Searchers such as Optuna's TPE
only model box-shaped spaces, so each key gets a raw coordinate ``u_i ~ Uniform(0, 1)`` in the search space and
the trial maps it to ``g_i = GammaInv(u_i; alpha_i)`` and normalises, ``w_i = total * g_i / sum(g)``: under random
search that is exactly Dirichlet(alpha); TPE models the raw coordinates. The mapping lives in ``resolve_trial``,
which is what both the trial and the exported spec use, so the weights a trial trained with are the ones exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from lmrec.config.base import SpecError, StrictModel, load_spec, load_yaml
from lmrec.config.train import TrainSpec

RAW_SEP = ".raw"  # search-space name of a simplex coordinate: "<group>.raw<i>" (Tune splits names on "/")


class Uniform(StrictModel):
    type: Literal["uniform"]
    low: float = Field(..., description="Lower bound (inclusive).")
    high: float = Field(..., description="Upper bound.")

    @model_validator(mode="after")
    def _ordered(self) -> "Uniform":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def probe(self):
        return self.low


class LogUniform(Uniform):
    type: Literal["loguniform"]

    @model_validator(mode="after")
    def _positive(self) -> "LogUniform":
        if self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


class RandInt(StrictModel):
    type: Literal["randint"]
    low: int = Field(..., description="Lowest integer (inclusive).")
    high: int = Field(..., description="Highest integer (exclusive, as in numpy and Ray Tune).")

    @model_validator(mode="after")
    def _ordered(self) -> "RandInt":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def probe(self):
        return self.low


class Choice(StrictModel):
    type: Literal["choice"]
    values: list[Union[float, int, str, bool, None]] = Field(..., min_length=1, description="Candidate values.")

    def probe(self):
        return self.values[0]


class Simplex(StrictModel):
    type: Literal["simplex"]
    keys: list[str] = Field(..., min_length=2, description="Dotted spec keys whose values sum to `total`.")
    concentration: float | list[float] = Field(1.0, description="Dirichlet alpha > 0 (one, or one per key).")
    total: float = Field(1.0, gt=0, description="What the weights sum to.")

    @model_validator(mode="after")
    def _shape(self) -> "Simplex":
        alphas = self.concentration if isinstance(self.concentration, list) else [self.concentration]
        if min(alphas) <= 0 or len(alphas) not in (1, len(self.keys)):
            raise ValueError("concentration: give one positive alpha, or one per key")
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("simplex keys repeat")
        return self

    def alphas(self) -> list[float]:
        c = self.concentration
        return list(c) if isinstance(c, list) else [c] * len(self.keys)

    def weights(self, raw: list[float]) -> list[float]:
        """Raw coordinates in (0, 1) -> Dirichlet-distributed weights summing to ``total`` (module docstring)."""
        from scipy.stats import gamma

        g = [float(gamma.ppf(min(max(u, 1e-6), 1 - 1e-6), a)) for u, a in zip(raw, self.alphas())]
        s = sum(g)
        return [round(self.total * x / s, 10) for x in g]  # rounded: the exported YAML stays readable


Distribution = Annotated[Union[Uniform, LogUniform, RandInt, Choice, Simplex], Field(discriminator="type")]


class AshaSpec(StrictModel):
    kind: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1, description="Epochs every trial runs before it can be stopped.")
    reduction_factor: float = Field(2, gt=1, description="Keep the top 1/reduction_factor at each rung.")
    max_t: int | None = Field(None, ge=1, description="Epoch cap per trial (default: the trial spec's optim.epochs).")


class FifoSpec(StrictModel):
    kind: Literal["fifo"]


class OptunaSpec(StrictModel):
    kind: Literal["optuna"] = "optuna"
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler.")
    n_startup_trials: int = Field(4, ge=0, description="TPE: random trials before the model kicks in.")
    points_to_evaluate: list[dict] = Field(
        default_factory=list,
        description="Configurations tried first, as {param: value}; a simplex group takes its list of weights.",
    )


class RandomSpec(StrictModel):
    kind: Literal["random"]


class ResourcesSpec(StrictModel):
    trial_cpu: float = Field(0.2, gt=0, description="CPU of each trial's driver (the TorchTrainer controller).")
    num_workers: int | None = Field(None, ge=1, description="Workers per trial (default: the base spec's).")
    cpus_per_worker: float | None = Field(None, gt=0, description="CPU per worker (default: the base spec's).")


class MlflowSpec(StrictModel):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI; none = off).")
    experiment_name: str | None = Field(None, description="MLflow experiment (default: the search name).")


class TuneSpec(StrictModel):
    name: str = Field(..., description="Study name: Tune experiment folder and exported job spec name.")
    base: str = Field(..., description="Job spec every trial starts from (relative paths: to the repository/cwd).")
    overrides: dict[str, object] = Field(
        default_factory=dict, description="Dotted keys set in every trial (e.g. fewer epochs than the job).")
    metric: str = Field(..., description="Metric reported per epoch that the search optimises (a validation one).")
    mode: Literal["min", "max"] = Field(..., description="Whether lower or higher is better.")
    objective: dict[str, float] | None = Field(
        None, description="Optional: `metric` is this weighted sum of reported metrics (e.g. NDCG minus RMSE).")
    params: dict[str, Distribution] = Field(..., min_length=1, description="Dotted key (or simplex group) -> dist.")
    num_samples: int = Field(8, ge=1, description="Trials in the study.")
    max_concurrent: int = Field(2, ge=1, description="Trials running at once.")
    scheduler: Annotated[Union[AshaSpec, FifoSpec], Field(discriminator="kind")] = Field(
        default_factory=AshaSpec, description="Trial scheduler (ASHA early stopping on per-epoch reports).")
    search: Annotated[Union[OptunaSpec, RandomSpec], Field(discriminator="kind")] = Field(
        default_factory=OptunaSpec, description="Search algorithm.")
    seed: int = Field(0, ge=0, description="Seed of the searcher.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Resources per trial.")
    trial_retries: int = Field(1, ge=0, description="Times a failed trial is retried (worker retries: the base "
                                                    "spec's scaling.max_failures).")
    storage_path: str | None = Field(None, description="Where the study lives (default ~/ray_results).")
    export_dir: str = Field("jobs/tuned", description="Folder of the exported best job spec.")
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec, description="MLflow logging (Ray's callback).")

    @model_validator(mode="after")
    def _objective_terms(self) -> "TuneSpec":
        if self.objective is not None and not self.objective:
            raise ValueError("objective: give at least one metric")
        keys = [k for name, d in self.params.items() for k in (d.keys if isinstance(d, Simplex) else [name])]
        if len(set(keys)) != len(keys):
            raise ValueError("params: a key is searched twice (check simplex groups)")
        clash = set(keys) & set(self.overrides)
        if clash:
            raise ValueError(f"params and overrides both set {sorted(clash)}")
        return self


def resolve_trial(spec: TuneSpec, config: dict) -> dict:
    """A trial's Tune config -> the dotted overrides it trains with (fixed overrides + sampled values)."""
    out = dict(spec.overrides)
    for name, dist in spec.params.items():
        if isinstance(dist, Simplex):
            raw = [float(config[f"{name}{RAW_SEP}{i}"]) for i in range(len(dist.keys))]
            out.update(zip(dist.keys, dist.weights(raw)))
        else:
            out[name] = config[name]
    return out


def raw_point(spec: TuneSpec, point: dict) -> dict:
    """A user-facing point (simplex groups as weights) -> search-space coordinates (inverse of ``resolve_trial``)."""
    from scipy.stats import gamma

    out = {}
    for name, value in point.items():
        dist = spec.params.get(name)
        if dist is None:
            raise SpecError(f"points_to_evaluate: {name!r} is not a searched parameter")
        if isinstance(dist, Simplex):
            if not isinstance(value, list) or len(value) != len(dist.keys) or min(value) <= 0:
                raise SpecError(f"points_to_evaluate: {name!r} needs {len(dist.keys)} positive weights")
            # Any g proportional to the weights normalises back to them; scale so the mean g is the mean alpha.
            alphas = dist.alphas()
            scale = sum(alphas) / sum(value)
            out.update({f"{name}{RAW_SEP}{i}": float(gamma.cdf(w * scale, a))
                        for i, (w, a) in enumerate(zip(value, alphas))})
        else:
            out[name] = value
    return out


def base_path(spec: TuneSpec, spec_path: str | Path | None) -> Path:
    """The base job spec: as given if absolute or found from the cwd, else beside the tune spec's folder parent."""
    raw = Path(spec.base).expanduser()
    candidates = [raw] if raw.is_absolute() else [Path.cwd() / raw] + (
        [Path(spec_path).resolve().parent.parent / raw, Path(spec_path).resolve().parent / raw] if spec_path else [])
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise SpecError(f"base job spec {spec.base!r} not found (tried {', '.join(map(str, candidates))})")


def trial_spec(spec: TuneSpec, base: Path, overrides: dict) -> TrainSpec:
    """The ``TrainSpec`` a trial runs: the base job spec + ``overrides`` + the per-trial resources."""
    res = spec.resources
    extra = {k: v for k, v in (("scaling.num_workers", res.num_workers),
                               ("scaling.cpus_per_worker", res.cpus_per_worker)) if v is not None}
    return load_spec(TrainSpec, base, {**extra, **overrides})


def load_tune_spec(path: str | Path, overrides: dict | None = None) -> tuple[TuneSpec, Path]:
    """Load and check a tune spec: the base job spec must validate with every parameter at a probe value.

    Returns the spec and the resolved base job spec path. Raises ``SpecError`` naming the file and key.
    """
    spec = load_spec(TuneSpec, path, overrides)
    base = base_path(spec, path)
    probe = {}
    for name, dist in spec.params.items():
        if isinstance(dist, Simplex):
            probe.update({f"{name}{RAW_SEP}{i}": 0.5 for i in range(len(dist.keys))})
        else:
            probe[name] = dist.probe()
    resolved = resolve_trial(spec, probe)
    for point in getattr(spec.search, "points_to_evaluate", []):
        missing = sorted(set(spec.params) - set(point))
        if missing:
            raise SpecError(f"{path}: points_to_evaluate: {point} lacks {missing}")
        trial_spec(spec, base, resolve_trial(spec, raw_point(spec, point)))
    known = load_yaml(base)
    for key in resolved:
        _check_key(key, known, path)
    train = trial_spec(spec, base, resolved)
    if spec.objective is None:
        _check_metric(spec.metric, train, path)
    else:
        for term in spec.objective:
            _check_metric(term, train, path)
    return spec, base


def _check_key(dotted: str, base: dict, path) -> None:
    """A searched key must name a field of ``TrainSpec`` (typos fail here, not as 8 identical trials)."""
    from pydantic import BaseModel

    model: type[BaseModel] | None = TrainSpec
    for part in dotted.split("."):
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            if model is None and isinstance(base, dict):
                return  # free-form mapping (e.g. a split spec given as a dict)
            raise SpecError(f"{path}: {dotted!r} is not a job spec key ({part!r} unknown)")
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _check_metric(metric: str, train: TrainSpec, path) -> None:
    from typing import get_args

    from lmrec.config.train import ValMetric

    known = set(get_args(ValMetric)) | {"loss"}
    if metric not in known:
        raise SpecError(f"{path}: metric {metric!r} is not reported per epoch (e.g. {sorted(known)})")
    if metric in ("val_rmse", "val_mae") and train.tasks.rating.weight == 0:
        raise SpecError(f"{path}: {metric} needs the rating task")
