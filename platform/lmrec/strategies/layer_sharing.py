"""Layer sharing: start a smaller student encoder from the embeddings and bottom ``k`` layers of a larger one.

The bottom of a pretrained transformer holds its most general features, so a student made of them starts far
better than a random one and runs ``n_layers / k`` times faster. The teacher may be a pretrained encoder or the
encoder of a fine-tuned two-tower artifact (``student_from_artifact``).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch

from lmrec.models.encoder import TextEncoder

_LAYER_KEY = re.compile(r"(^|\.)layers?\.(\d+)\.")


def layer_stack(backbone: torch.nn.Module) -> torch.nn.ModuleList:
    """The backbone's list of transformer blocks (BERT/RoBERTa ``encoder.layer``, DistilBERT ``transformer.layer``)."""
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        node = backbone
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, torch.nn.ModuleList):
            return node
    raise ValueError(f"cannot find the transformer layers of {type(backbone).__name__}")


def num_layers(encoder: TextEncoder) -> int:
    return len(layer_stack(encoder.backbone))


def truncate_encoder(teacher: TextEncoder, n_layers: int) -> TextEncoder:
    """A new encoder with the teacher's embeddings and its bottom ``n_layers`` blocks (weights copied, not shared).

    The student's config is the teacher's with ``num_hidden_layers = n_layers``; loading is strict, so any weight
    the copy misses is an error rather than a silently random tensor.
    """
    from transformers import AutoModel

    total = num_layers(teacher)
    if not 1 <= n_layers <= total:
        raise ValueError(f"n_layers must be in 1..{total} for this teacher, got {n_layers}")
    config = copy.deepcopy(teacher.backbone.config)
    config.num_hidden_layers = n_layers
    student = AutoModel.from_config(config)
    state = {}
    for key, value in teacher.backbone.state_dict().items():
        match = _LAYER_KEY.search(key)
        if match is None or int(match.group(2)) < n_layers:
            state[key] = value.detach().clone()
    student.load_state_dict(state, strict=True)
    return TextEncoder.with_settings(student, teacher.settings)  # pooling, normalisation and prompts kept


def student_from_artifact(artifact_dir: str | Path, n_layers: int) -> TextEncoder:
    """A student from the (fine-tuned) encoder inside a two-tower artifact, checked and loaded without pickle."""
    from lmrec.artifacts.two_tower import load_artifact

    teacher = load_artifact(artifact_dir).model.encoder
    return truncate_encoder(teacher, n_layers)
