"""The job specs, search spaces, Serve configs and DeepSpeed JSONs that ship inside the package (``lmrec specs``).

The repository's ``jobs/``, ``tune/`` and ``serve/`` are linked into the package as ``lmrec/specs/{jobs,tune,serve}``
(symlinks in git, regular files in a wheel), so ``pip install lmrec`` gives the same files as a clone. A shipped
spec is named by its path under those folders without the extension, ``jobs/`` left out: ``ml100k-ranking``,
``strategies/lora``, ``tuned/ml100k-task-weights``, ``deepspeed/zero2``, ``tune/ml100k-task-weights``,
``serve/recommender``. Its repository path (``jobs/strategies/lora.yaml``) is accepted too.

Paths inside a spec (``scaling.deepspeed_config``, a tune spec's ``base``, ``incremental.serve_config``) are
written from the repository root: the loaders look them up in the directory ``lmrec`` runs in (a Ray job's
``--working-dir``), some also beside the spec. A copy keeps working when the files it names sit at the same
relative paths; ``missing_references`` says which do not, and which ``lmrec specs copy`` puts them there.

Validation uses each command's own loader, imported when used (Serve's schema comes with Ray).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, get_args

from lmrec.config.base import SpecError, load_spec, load_yaml

Kind = Literal["train", "tune", "ensemble", "recommend-batch", "serve", "deepspeed"]
KINDS: tuple[str, ...] = get_args(Kind)
FOLDERS = ("jobs", "tune", "serve")  # the repository folders linked into lmrec/specs/
SUFFIXES = (".yaml", ".json")
# header lines that say how to run a spec rather than what it is
_COMMAND_PREFIXES = ("lmrec ", "ray job submit", "serve ", "ray up", "python ")


@dataclass(frozen=True)
class ShippedSpec:
    name: str  # "strategies/lora": what `lmrec specs copy` and `lmrec validate` take
    path: Path  # the file inside the installed package
    relpath: str  # "jobs/strategies/lora.yaml": its repository path, the one other specs name it by

    @property
    def kind(self) -> Kind:
        return spec_kind(self.path)

    @property
    def description(self) -> str:
        return describe(self.path)


def specs_root() -> Path:
    """``lmrec/specs`` of the imported package (the source tree's symlinks in an editable install)."""
    return Path(str(resources.files("lmrec").joinpath("specs")))


def shipped_specs() -> list[ShippedSpec]:
    """Every shipped spec, in name order."""
    root = specs_root()
    found: dict[str, ShippedSpec] = {}
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in SUFFIXES or not path.is_file():
                continue
            relpath = path.relative_to(root).as_posix()
            name = _name_of(relpath)
            if name in found:  # e.g. jobs/tune/x.yaml beside tune/x.yaml
                raise SpecError(f"shipped specs {found[name].relpath} and {relpath} share the name {name!r}")
            found[name] = ShippedSpec(name, path, relpath)
    return [found[n] for n in sorted(found)]


def _name_of(relpath: str) -> str:
    stem = relpath.rsplit(".", 1)[0]
    return stem.removeprefix("jobs/")


def find_spec(name: str) -> ShippedSpec:
    """The shipped spec called ``name`` (or at repository path ``name``); ``SpecError`` with close matches if none."""
    specs = {s.name: s for s in shipped_specs()}
    key = name.strip().removeprefix("./")
    key = _name_of(key) if key.endswith(SUFFIXES) else key.removeprefix("jobs/")
    if key in specs:
        return specs[key]
    same_leaf = [n for n in specs if n.rsplit("/", 1)[-1] == key.rsplit("/", 1)[-1]]
    close = same_leaf + [n for n in difflib.get_close_matches(key, specs, n=3, cutoff=0.5) if n not in same_leaf]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise SpecError(f"no shipped spec named {name!r}{hint} (`lmrec specs list` shows them all)")


def locate(spec: str) -> tuple[Path, ShippedSpec | None]:
    """A spec argument: a file (it has a suffix: it must exist), else a shipped name."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path, None
    if path.suffix:  # a missing file is an error, not silently the shipped spec of the same path
        try:
            hint = f" (the shipped one is `{find_spec(spec).name}`)"
        except SpecError:
            hint = ""
        raise SpecError(f"{spec}: no such file{hint}")
    shipped = find_spec(spec)
    return shipped.path, shipped


def spec_kind(path: str | Path) -> Kind:
    """Which command runs the file: its first line (``# lmrec tune ...``), else its keys."""
    path = Path(path)
    if path.suffix == ".json":
        return "deepspeed"
    try:
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        first = ""  # load_yaml reports it below
    words = first.split()
    if words[:2] == ["#", "lmrec"] and len(words) > 2 and words[2] in KINDS:
        return words[2]  # type: ignore[return-value]
    data = load_yaml(path)
    if "applications" in data:
        return "serve"
    if "params" in data or "base" in data:
        return "tune"
    if "members" in data:
        return "ensemble"
    if "artifact" in data and "output" in data:
        return "recommend-batch"
    return "train"


def describe(path: Path) -> str:
    """One line on what the spec is: its first header comment that is not a command or a lead-in to one."""
    if path.suffix == ".json":
        return _describe_deepspeed(path)
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line[1:])
    for text, following in zip(header, header[1:] + [""]):
        if text.startswith("  ") or not text.strip():  # an indented continuation (a cron line, a command)
            continue
        lead_in = text.endswith(":") and following.startswith("  ")
        if not lead_in and not text.strip().startswith(_COMMAND_PREFIXES):
            return text.strip()
    return ""


def _describe_deepspeed(path: Path) -> str:
    try:
        zero = json.loads(path.read_text(encoding="utf-8")).get("zero_optimization", {})
    except (OSError, ValueError, AttributeError):
        return "DeepSpeed config"
    offload = [part.removeprefix("offload_") for part in ("offload_optimizer", "offload_param")
               if isinstance(zero.get(part), dict) and zero[part].get("device", "none") != "none"]
    return f"DeepSpeed ZeRO stage {zero.get('stage', '?')}" + (f", {' and '.join(offload)} offloaded" if offload
                                                                 else "")


# --- validation: each command's own loader ---------------------------------------------------------------------

def _check_train(path: Path, overrides: dict) -> None:
    from lmrec.config.train import TrainSpec
    from lmrec.training.ray_train import resolve_deepspeed_config

    resolve_deepspeed_config(load_spec(TrainSpec, path, overrides), path)  # what `lmrec train` checks first


def _check_tune(path: Path, overrides: dict) -> None:
    from lmrec.tuning.spec import load_tune_spec

    load_tune_spec(path, overrides)  # also the base job spec with every searched key at a probe value


def _check_ensemble(path: Path, overrides: dict) -> None:
    from lmrec.config.ensemble import EnsembleSpec

    load_spec(EnsembleSpec, path, overrides)


def _check_recommend_batch(path: Path, overrides: dict) -> None:
    from lmrec.config.recommend_batch import RecommendBatchSpec

    load_spec(RecommendBatchSpec, path, overrides)  # the artifact is checked when the job starts, before Ray


def _check_serve(path: Path, overrides: dict) -> None:
    from lmrec.serving.cli import load_serve_config

    if overrides:
        raise SpecError(f"{path}: a Serve config takes no --set (lmrec serve has none): edit the file")
    load_serve_config(path)


def _check_deepspeed(path: Path, overrides: dict) -> None:
    if overrides:
        raise SpecError(f"{path}: a DeepSpeed JSON takes no --set")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SpecError(f"{path}: not a readable DeepSpeed JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise SpecError(f"{path}: a DeepSpeed config must be a JSON object, got {type(cfg).__name__}")


_CHECKS = {"train": _check_train, "tune": _check_tune, "ensemble": _check_ensemble,
           "recommend-batch": _check_recommend_batch, "serve": _check_serve, "deepspeed": _check_deepspeed}


def validate_spec(path: str | Path, kind: Kind | None = None, overrides: dict | None = None) -> Kind:
    """Load ``path`` as its command would, before any data is read; ``SpecError`` (file, keys) if it does not load.

    Returns the kind it was checked as (``kind``, else ``spec_kind``).
    """
    path = Path(path)
    kind = kind or spec_kind(path)
    _CHECKS[kind](path, dict(overrides or {}))
    return kind


# --- references between specs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    key: str  # "scaling.deepspeed_config"
    value: str  # "jobs/deepspeed/zero2.json", as written in the spec

    def note(self) -> str:
        """What to tell the user: it is not found from here, and the command that copies it if it ships."""
        text = (f"{self.key} names {self.value}, not found from here (a spec's paths are looked up from the "
                f"directory lmrec runs in)")
        try:
            shipped = find_spec(self.value)
        except SpecError:
            return text
        if shipped.relpath != Path(self.value).as_posix():
            return text
        return f"{text}; to put it there: lmrec specs copy {shipped.name} {self.value}"


def missing_references(path: str | Path, kind: Kind | None = None) -> list[Reference]:
    """Files the spec at ``path`` names that its loaders would not find from here (the current directory)."""
    path = Path(path)
    kind = kind or spec_kind(path)
    if kind == "train":
        return _missing_in_train(path)
    if kind == "tune":
        from lmrec.tuning.spec import TuneSpec, base_path

        spec = load_spec(TuneSpec, path)
        try:
            base_path(spec, path)
        except SpecError:
            return [Reference("base", spec.base)]
    return []


def _missing_in_train(path: Path) -> list[Reference]:
    from lmrec.config.train import TrainSpec
    from lmrec.training.ray_train import resolve_deepspeed_config

    spec = load_spec(TrainSpec, path)
    missing = []
    if spec.scaling.engine != "ddp":  # auto reads it on a GPU, deepspeed always
        try:
            found = resolve_deepspeed_config(spec, path) is not None
        except SpecError:  # engine deepspeed and not found
            found = False
        if not found:
            missing.append(Reference("scaling.deepspeed_config", spec.scaling.deepspeed_config))
    serve_config = spec.incremental.serve_config
    if serve_config is not None and not Path(serve_config).expanduser().is_file():  # hot_swap opens it as given
        missing.append(Reference("incremental.serve_config", serve_config))
    for table, source in (spec.data.source.tables() if spec.data.source is not None else {}).items():
        if not Path(source.path).is_file():  # your own data: read from the directory lmrec runs in
            missing.append(Reference(f"data.source.{table}.path", source.path))
    return missing


def copy_spec(name: str, dest: str | Path, force: bool = False) -> tuple[Path, list[Reference]]:
    """Write the shipped spec ``name`` to ``dest`` (a file, or a folder to put it in); refuse to overwrite unless
    ``force``. The header's own path becomes ``dest``, so the first line still runs the file.

    Returns the written path and the files it names that are not found from here (see ``Reference.note``).
    """
    shipped = find_spec(name)
    target = Path(dest).expanduser()
    if target.is_dir() or str(dest).endswith(("/", "\\")):
        target = target / shipped.path.name
    if target.exists() and not force:
        raise SpecError(f"{target} exists (--force overwrites it)")
    text = shipped.path.read_text(encoding="utf-8")
    if shipped.path.suffix == ".yaml":
        text = _retarget_header(text, shipped.relpath, target.as_posix())
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target, missing_references(target, shipped.kind)


def _retarget_header(text: str, old: str, new: str) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break
        lines[i] = " ".join(new if word == old else word for word in line.split(" "))
    return "\n".join(lines)
