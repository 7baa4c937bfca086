"""Apply the strategy integration to recipe.py, local.py, train.py (run only after encoder.json exists)."""
import sys
root = "/work/main/platform/lmrec/"

def edit(path, pairs):
    p = root + path
    s = open(p).read()
    for old, new in pairs:
        if s.count(old) != 1:
            sys.exit(f"{path}: expected one match of:\n{old}\n(found {s.count(old)})")
        s = s.replace(old, new)
    open(p, "w").write(s)

edit("config/train.py", [
("from lmrec.data.splits import ML100KCanonicalSpec, SplitSpec\n",
 "from lmrec.data.splits import ML100KCanonicalSpec, SplitSpec\nfrom lmrec.strategies.spec import FullStrategy, StrategySpec\n"),
("""    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Workers, resources, engine.")
""", """    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Workers, resources, engine.")
    strategy: StrategySpec = Field(
        default_factory=FullStrategy, description="Transfer strategy (lmrec.strategies.spec; docs/strategies.md).")
"""),
("""            raise ValueError(f"early_stopping.metric {m} needs the rating task (tasks.rating.weight > 0)")
""", """            raise ValueError(f"early_stopping.metric {m} needs the rating task (tasks.rating.weight > 0)")
        if self.strategy.name in ("lora", "progressive_unfreezing") and not self.optim.finetune_encoder:
            raise ValueError(f"strategy {self.strategy.name} trains the encoder: set optim.lr_encoder > 0 and "
                             f"optim.items_encoded_per_step > 0")
"""),
])

edit("training/recipe.py", [
("""from lmrec.models.two_tower import TwoTowerModel, TwoTowerRecommender
""", """from lmrec.models.two_tower import TwoTowerModel, TwoTowerRecommender
from lmrec.strategies.components import StrategyComponents, build_student_encoder
"""),
("""def build_model(spec: TrainSpec, n_users: int, n_items: int) -> TwoTowerModel:
    \"\"\"The inference model described by ``spec.model`` (weights from the encoder, towers freshly initialised).\"\"\"
    m = spec.model
    encoder = build_encoder(m.encoder, m.pooling, m.encoder_init)
""", """def build_model(spec: TrainSpec, n_users: int, n_items: int, encoder=None) -> TwoTowerModel:
    \"\"\"The inference model described by ``spec.model`` (weights from the encoder, towers freshly initialised).

    ``encoder``: a ready encoder to use instead of ``spec.model.encoder`` (a strategy's student).
    \"\"\"
    m = spec.model
    encoder = encoder if encoder is not None else build_encoder(m.encoder, m.pooling, m.encoder_init)
"""),
("""def build_objective(spec: TrainSpec) -> MultiTaskObjective:
    t = spec.tasks
""", """def build_objective(spec: TrainSpec, extra_tasks: Iterable = ()) -> MultiTaskObjective:
    \"\"\"The configured tasks plus a strategy's extra loss terms (distillation, propagated labels).\"\"\"
    t = spec.tasks
"""),
("""        RelatedTask(t.related.weight, t.related.temperature, t.related.max_rows),
    ])""", """        RelatedTask(t.related.weight, t.related.temperature, t.related.max_rows),
        *extra_tasks,
    ])"""),
])
print("ok so far")

edit("training/recipe.py", [
("""    def __init__(self, spec: TrainSpec, data: PreparedData, *, device: torch.device, world_size: int = 1,
                 rank: int = 0) -> None:
        self.spec, self.data, self.device = spec, data, torch.device(device)""",
"""    def __init__(self, spec: TrainSpec, data: PreparedData, *, device: torch.device, world_size: int = 1,
                 rank: int = 0, item_text: torch.Tensor | None = None) -> None:
        \"\"\"``item_text``: the pooled text of every item under the *unmodified* ``spec.model.encoder``, when the
        caller already has it (benchmarks running many strategies on one frozen encoding); ignored when the
        strategy substitutes another encoder.\"\"\"
        self.spec, self.data, self.device = spec, data, torch.device(device)"""),
("""        self.model = build_model(spec, data.n_users, data.n_items).to(self.device)
        self._init_state()
        self.objective = build_objective(spec)
""", """        student = build_student_encoder(spec)
        self.model = build_model(spec, data.n_users, data.n_items, encoder=student).to(self.device)
        self._init_state(item_text if student is None else None)
        self.engine_name = resolve_engine(spec.scaling.engine, self.device)
        # strategy components (scope, unfreezing schedule, sampler, extra losses): lmrec.strategies.components
        self.strategy = StrategyComponents.attach(
            spec, self.model, data, device=self.device, distributed=world_size > 1 or self.engine_name == "deepspeed")
        self.objective = build_objective(spec, self.strategy.extra_tasks)
"""),
("""        optimizer = torch.optim.AdamW(self._param_groups(), lr=o.lr_heads, weight_decay=o.weight_decay)
        self.engine_name = resolve_engine(spec.scaling.engine, self.device)
""", """        groups = self.strategy.param_groups(self._param_groups(), self.model, o.lr_heads)
        optimizer = torch.optim.AdamW(groups, lr=o.lr_heads, weight_decay=o.weight_decay)
"""),
("""        self.history: list[dict] = []
        self._cache_fresh = True
""", """        self.history: list[dict] = []
        self._cache_fresh = True
        self.global_step = 0
"""),
("""    def _init_state(self) -> None:
        \"\"\"Data-derived buffers: global mean, histories, seen gate, and the first (frozen) text encodings.\"\"\"
        m, d = self.model, self.data
        m.global_mean.fill_(float(d.train["rating"].mean()))
        m.set_history(d.train)
        m.set_seen_items(d.train["item_idx"].to_numpy())
        self._refresh_text()
""", """    def _init_state(self, item_text: torch.Tensor | None = None) -> None:
        \"\"\"Data-derived buffers: global mean, histories, seen gate, and the first (frozen) text encodings.\"\"\"
        m, d = self.model, self.data
        m.global_mean.fill_(float(d.train["rating"].mean()))
        m.set_history(d.train)
        m.set_seen_items(d.train["item_idx"].to_numpy())
        if item_text is not None and tuple(item_text.shape) == tuple(m.item_text.shape) and d.user_tokens is None:
            m.item_text.copy_(item_text.to(m.item_text.device, m.item_text.dtype))
        else:
            self._refresh_text()
"""),
])

edit("training/recipe.py", [
("""        k = o.items_encoded_per_step if o.finetune_encoder else 0
        sums: dict[str, float] = {}
        steps = rows = encoded = 0
        start = time.perf_counter()
        it = iter(batches)
""", """        k_max = o.items_encoded_per_step if o.finetune_encoder else 0
        optimizer = self.engine.optimizer
        self.strategy.on_epoch_start(optimizer, epoch)
        sums: dict[str, float] = {}
        steps = rows = encoded = encoder_steps = 0
        start = time.perf_counter()
        # a curriculum replaces the given batches with its own pool for this rank (every rank holds the data)
        it = iter(self.strategy.batches(epoch, batches, o.batch_size, self.rank, self.world_size))
"""),
("""            uniq = np.unique(np.asarray(batch["item_idx"]))
            pick = rng.choice(uniq, size=min(k, len(uniq)), replace=False) if k else uniq[:0]
""", """            self.strategy.on_step(optimizer, self.global_step)
            # no encoder pass with gradient while the strategy keeps the encoder frozen (frozen, unfreezing stage 0)
            k = k_max if self.strategy.encoder_trains(epoch, self.global_step) else 0
            encoder_steps += bool(k)
            uniq = np.unique(np.asarray(batch["item_idx"]))
            pick = rng.choice(uniq, size=min(k, len(uniq)), replace=False) if k else uniq[:0]
"""),
("""            steps += 1
            rows += len(u)
            encoded += len(enc)
""", """            steps += 1
            self.global_step += 1
            rows += len(u)
            encoded += len(enc)
"""),
("""        if o.finetune_encoder and o.refresh_every_epochs and (epoch + 1) % o.refresh_every_epochs == 0:
            self._refresh_text()
""", """        if encoder_steps and o.refresh_every_epochs and (epoch + 1) % o.refresh_every_epochs == 0:
            self._refresh_text()
"""),
("""        if not self._cache_fresh:
            self._refresh_text()  # precomputed item embeddings must come from the final encoder
        tokenizer = load_tokenizer(self.spec.model.encoder)
""", """        if not self._cache_fresh:
            self._refresh_text()  # precomputed item embeddings must come from the final encoder
        self.strategy.before_export(self.model)  # e.g. merge LoRA adapters: Serve loads a plain encoder
        tokenizer = load_tokenizer(self.spec.model.encoder)
"""),
])

edit("training/local.py", [
("""    checkpoint_dir: str | Path | None = None,
    on_epoch=None,
) -> LocalResult:""", """    checkpoint_dir: str | Path | None = None,
    on_epoch=None,
    item_text: torch.Tensor | None = None,
):"""),
("""    time-to-quality with it). Returns the recipe restored to its best epoch (by ``early_stopping.metric``).
    \"\"\"
    start = time.perf_counter()
    data = data if data is not None else prepare_data(spec)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    recipe = TwoTowerRecipe(spec, data, device=device)
""", """    time-to-quality with it). Returns a ``LocalResult``: the recipe restored to its best epoch (by
    ``early_stopping.metric``). ``item_text``: a precomputed frozen encoding of the item texts (see
    ``TwoTowerRecipe``). A ``meta_learning`` strategy runs its own loop and returns its ``MetaRunResult``
    (``lmrec.strategies.meta_loop``).
    \"\"\"
    start = time.perf_counter()
    data = data if data is not None else prepare_data(spec)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if spec.strategy.name == "meta_learning":
        from lmrec.strategies.meta_loop import run_meta_learning

        return run_meta_learning(spec, data, device)
    recipe = TwoTowerRecipe(spec, data, device=device, item_text=item_text)
"""),
])
print("all applied")
