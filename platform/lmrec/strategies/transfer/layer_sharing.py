"""``strategy: layer_sharing``: the student encoder is a teacher's embeddings + bottom ``layers`` blocks, weights
copied (``lmrec.strategies.layer_sharing``); the loop then trains it like ``full``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmrec.strategies.components import Strategy


class LayerSharingStrategy(Strategy):
    name: Literal["layer_sharing"] = Field(description="Student encoder = embeddings + bottom k layers of a teacher.")
    layers: int = Field(3, ge=1, description="Blocks the student keeps (from the bottom).")
    teacher_artifact: str | None = Field(
        None, description="Two-tower artifact whose fine-tuned encoder is cut; None = model.encoder (pretrained).")

    def student_encoder(self, job):
        """The teacher artifact's encoder cut to ``layers``, or the pretrained ``job.model.encoder`` cut."""
        from lmrec.models.encoder import build_encoder
        from lmrec.strategies.layer_sharing import student_from_artifact, truncate_encoder

        if self.teacher_artifact:
            return student_from_artifact(self.teacher_artifact, self.layers)
        m = job.model
        return truncate_encoder(build_encoder(m.encoder, m.pooling, m.encoder_init), self.layers)
