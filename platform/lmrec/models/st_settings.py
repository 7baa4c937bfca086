"""What a sentence-transformers model folder declares about turning token states into one text vector.

A sentence-transformers folder lists its modules in ``modules.json``: a ``Transformer``, a ``Pooling`` whose
``1_Pooling/config.json`` names the pooling mode, and often a ``Normalize`` (L2). Its
``config_sentence_transformers.json`` may name ``prompts`` put before the text, e.g. e5's
``{"query": "query: ", "passage": "passage: "}``. A model is only as good as its model card says when it is used
that way: bge-base-en-v1.5 is CLS-pooled and normalised, e5 expects its prompts.

``model.pooling: auto`` reads these files (``resolve_settings``); a named mode (``mean``, ``cls``, ``max``) is
lmrec's own pooling of the raw text and reads nothing, which is how every run before ``auto`` behaved. In lmrec
user-tower texts are queries and item texts are passages (``Side``); the prompt names are mapped as
sentence-transformers' own ``encode_query`` / ``encode_document`` map them (see ``_side_prompt``).

The resolved settings are stored in the artifact manifest, so serving applies exactly what training applied and
never reads the folder or the hub again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

PoolingMode = Literal["mean", "cls", "max"]
PoolingChoice = Literal["auto", "mean", "cls", "max"]
Side = Literal["query", "passage"]
POOLING_MODES = ("mean", "cls", "max")

# prompt names tried per side, in sentence-transformers' order (SentenceTransformer.encode_query/encode_document)
PROMPT_NAMES = {"query": ("query",), "passage": ("document", "passage", "corpus")}
# sentence-transformers < 6 wrote one boolean per mode; newer versions write ``pooling_mode``
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class UnsupportedFolderError(ValueError):
    """The folder declares a pipeline lmrec cannot reproduce exactly (extra modules, other pooling modes)."""


@dataclass(frozen=True)
class EncoderSettings:
    """How the encoder turns texts into vectors, beyond the backbone weights: recorded in the artifact."""

    pooling: PoolingMode = "mean"
    normalize: bool = False  # L2-normalise the pooled vector
    query_prompt: str = ""  # put before user-tower texts
    passage_prompt: str = ""  # put before item texts

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")

    def prompt(self, side: Side) -> str:
        if side not in PROMPT_NAMES:
            raise ValueError(f"side must be 'query' or 'passage', got {side!r}")
        return self.query_prompt if side == "query" else self.passage_prompt

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderSettings":
        """Missing keys take the defaults: manifests written before these settings existed only had ``pooling``."""
        return cls(**{k: d[k] for k in ("pooling", "normalize", "query_prompt", "passage_prompt") if k in d})


def resolve_settings(path: str, pooling: PoolingChoice) -> EncoderSettings:
    """``pooling="auto"``: what the folder or hub repository ``path`` declares, defaults where it declares
    nothing; a named mode: that mode, no normalisation, no prompts. ``lmrec.models.encoder.encoder_settings``
    takes lmrec's encoder names (``default``, packaged encoders) instead of a path."""
    return read_settings(path) if pooling == "auto" else EncoderSettings(pooling)


def read_settings(path: str) -> EncoderSettings:
    """The settings declared by a local folder, or by a hub repository when ``huggingface_hub`` can fetch its
    files (cached or online); a file it cannot get counts as not declared."""
    modules = _read_json(path, "modules.json")
    if modules is None:  # not a sentence-transformers folder: nothing declared
        return EncoderSettings()
    pooling, normalize = _pipeline(path, modules)
    st_config = _read_json(path, "config_sentence_transformers.json") or {}
    prompts = st_config.get("prompts") or {}
    default_name = st_config.get("default_prompt_name")
    return EncoderSettings(pooling, normalize, _side_prompt(prompts, default_name, "query"),
                           _side_prompt(prompts, default_name, "passage"))


def _pipeline(path: str, modules: list[dict]) -> tuple[PoolingMode, bool]:
    """(pooling mode, normalise) of a ``Transformer -> Pooling [-> Normalize]`` pipeline; anything else raises."""
    ordered = sorted(modules, key=lambda m: m.get("idx", 0))
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in ordered]  # class name: module paths moved in v6
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise UnsupportedFolderError(
            f"{path}: modules.json declares {kinds}; lmrec reproduces Transformer -> Pooling [-> Normalize] only. "
            "Set model.pooling to a named mode to use lmrec's own pooling instead.")
    config = _read_json(path, f"{ordered[1].get('path', '1_Pooling')}/config.json") or {}
    return _pooling_mode(path, config), kinds[-1] == "Normalize"


def _pooling_mode(path: str, config: dict) -> PoolingMode:
    mode = config.get("pooling_mode")
    if mode is None:
        modes = [name for key, name in LEGACY_POOLING_KEYS.items() if config.get(key)] or ["mean"]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise UnsupportedFolderError(f"{path}: pooling {modes} is not one of {POOLING_MODES}; set model.pooling "
                                     "to a named mode to use lmrec's own pooling instead.")
    if config.get("include_prompt", True) is False:  # instructor-style: prompt tokens left out of the pool
        raise UnsupportedFolderError(f"{path}: pooling excludes prompt tokens (include_prompt: false), which lmrec "
                                     "does not reproduce; set model.pooling to a named mode.")
    return modes[0]


def _side_prompt(prompts: dict, default_name: str | None, side: Side) -> str:
    """The first non-empty prompt among the side's names; a name declared empty means no prompt (as in
    sentence-transformers, it stops the fall-back); no name at all falls back to ``default_prompt_name``.

    Non-empty first because sentence-transformers >= 6 saves ``"document": ""`` beside a model's own
    ``"passage"`` prompt."""
    names = PROMPT_NAMES[side]
    for name in names:
        if prompts.get(name):
            return str(prompts[name])
    if any(name in prompts for name in names):
        return ""
    return str(prompts.get(default_name) or "") if default_name else ""


def _read_json(path: str, rel: str):
    """``rel`` inside the folder ``path``, or inside hub repository ``path``; None when not available."""
    folder = Path(path)
    if folder.is_dir():
        file = folder / rel
        return json.loads(file.read_text()) if file.is_file() else None
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        return None
    try:
        local = hf_hub_download(path, rel)
    except (EntryNotFoundError, OSError, ValueError) as e:
        # the repository has no such file: nothing declared. Anything else (offline and not in the cache,
        # unreachable, not a repository id) is logged: a model whose weights are cached but whose modules.json
        # never was would otherwise be pooled the default way without a word
        if not (isinstance(e, EntryNotFoundError) and not isinstance(e, FileNotFoundError)):
            log.warning("%s: could not read %s (%s); treated as not declared", path, rel, type(e).__name__)
        return None
    return json.loads(Path(local).read_text())
