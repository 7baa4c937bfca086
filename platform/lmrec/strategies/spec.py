"""The ``strategy`` section of ``TrainSpec``: a built-in transfer strategy by name, or any strategy by import path.

The built-ins are listed once, here (``BUILTIN_STRATEGIES``: name -> "module:Class"); each is a module of
``lmrec.strategies.transfer`` holding its spec and how it attaches to the recipe (``lmrec.strategies.components``).
A strategy outside lmrec is named by import path, ``strategy: {name: "my_pkg.my_module:MyStrategy", ...}``: that
class (a ``Strategy`` subclass) validates the rest of the section. Either way unknown keys fail, so
``strategy: {name: lora, rnak: 8}`` fails before any compute is spent, and so does any other name: nothing is
registered at run time, a typo never becomes a name.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Union

from pydantic import BaseModel, Field
from pydantic_core import core_schema

from lmrec.strategies.components import Strategy

BUILTIN_STRATEGIES = {
    "full": "lmrec.strategies.transfer.full:FullStrategy",
    "frozen": "lmrec.strategies.transfer.frozen:FrozenStrategy",
    "lora": "lmrec.strategies.transfer.lora:LoraStrategy",
    "layer_sharing": "lmrec.strategies.transfer.layer_sharing:LayerSharingStrategy",
    "progressive_unfreezing": "lmrec.strategies.transfer.progressive_unfreezing:ProgressiveUnfreezingStrategy",
    "curriculum": "lmrec.strategies.transfer.curriculum:CurriculumStrategy",
    "distillation": "lmrec.strategies.transfer.distillation:DistillationStrategy",
    "label_propagation": "lmrec.strategies.transfer.label_propagation:LabelPropagationStrategy",
    "meta_learning": "lmrec.strategies.transfer.meta_learning:MetaLearningStrategy",
}

IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"  # package.module:Class (JSON schema; the import decides)


def strategy_class(name: str) -> type[Strategy]:
    """The spec class of a built-in ``name`` or of an import path ``package.module:Class``; ``ValueError`` else."""
    path = BUILTIN_STRATEGIES.get(name, name)
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"unknown strategy {name!r}: the built-in strategies are {', '.join(BUILTIN_STRATEGIES)}; "
                         f"a strategy outside lmrec is named by import path, 'package.module:Class'")
    try:
        obj = importlib.import_module(module)
    except (ImportError, ValueError) as e:
        raise ValueError(f"strategy {name!r}: cannot import module {module!r} ({e}); is its package installed or "
                         f"on PYTHONPATH (of the Ray workers too)?") from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if obj is None:
        raise ValueError(f"strategy {name!r}: module {module} has no {attr!r}")
    if not (isinstance(obj, type) and issubclass(obj, Strategy)):
        raise ValueError(f"strategy {name!r}: {attr!r} in {module} is not a subclass of "
                         f"lmrec.strategies.components.Strategy")
    return obj


def _validate_section(value, handler):
    """A built-in name goes to the tagged union (its error messages); any other name to the class it imports."""
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    if not isinstance(name, str) or name in BUILTIN_STRATEGIES:
        return handler(value)
    cls = strategy_class(name)
    if isinstance(value, cls):
        return value
    return cls.model_validate(value.model_dump() if isinstance(value, BaseModel) else value)


class _ImportPathNames:
    """Pydantic annotation on the built-in union: names by import path validate through their own class, and the
    section serialises as whichever class it holds (a strategy outside lmrec round-trips through a JSON dump)."""

    def __get_pydantic_core_schema__(self, source, handler):
        return core_schema.no_info_wrap_validator_function(
            _validate_section, handler(source),
            serialization=core_schema.wrap_serializer_function_ser_schema(lambda v, h: h(v),
                                                                          schema=core_schema.any_schema()))

    def __get_pydantic_json_schema__(self, schema, handler):
        builtin = handler(schema)
        by_path = {"type": "object", "required": ["name"], "properties": {"name": {
            "type": "string", "pattern": IMPORT_PATH,
            "description": "A strategy outside lmrec: its Strategy subclass validates the other keys."}}}
        return {"anyOf": [builtin, by_path]}


StrategySpec = Annotated[
    Union[tuple(strategy_class(name) for name in BUILTIN_STRATEGIES)],
    Field(discriminator="name"),
    _ImportPathNames(),
]
"""The ``strategy`` field's type: the built-ins as a tagged union (schema, docs), import-path names besides."""
