"""Typed, self-checking configuration: every spec is a pydantic model that forbids unknown keys."""

from __future__ import annotations

import copy

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class SpecError(ValueError):
    """A spec file is unreadable or does not validate. The message names the file and the offending keys."""


class StrictModel(BaseModel):
    """Base of every spec: a typo in a key is an error, not a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with the safe loader (no object construction from tags)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read spec ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: cannot read spec (not UTF-8 text: byte {e.object[e.start:e.end]!r} at "
                        f"offset {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec must be a YAML mapping, got {type(data).__name__}")
    return data


def load_spec(model: type[M], path: str | Path, overrides: dict | None = None) -> M:
    """Load ``path`` into ``model``; ``overrides`` maps dotted keys to values (``{"optim.lr": 1e-3}``)."""
    data = load_yaml(path)
    for dotted, value in (overrides or {}).items():
        # a copy: a later dotted key ("strategy.targets") must not write into the caller's mapping ("strategy")
        set_dotted(data, dotted, copy.deepcopy(value))
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"{path}: invalid {model.__name__}:"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            lines.append(f"  {loc}: {err['msg']}")
        raise SpecError("\n".join(lines)) from None


def set_dotted(data: dict, dotted: str, value) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted = "a.b"``, creating intermediate mappings."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SpecError(f"cannot set {dotted!r}: {key!r} is not a mapping")
    node[keys[-1]] = value
