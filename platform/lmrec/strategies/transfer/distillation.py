"""``strategy: distillation``: loss_student + weight * loss_kd against a teacher artifact, optionally with a student
cut from the teacher's bottom layers (``lmrec.strategies.distillation``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmrec.strategies.components import ExtraTasks, Strategy, StrategyHooks


class DistillationStrategy(Strategy):
    name: Literal["distillation"] = Field(description="loss_student + weight * loss_kd against a teacher artifact.")
    teacher_artifact: str = Field(description="Folder of the teacher's two-tower artifact (same dataset and split).")
    weight: float = Field(1.0, gt=0, description="λ: weight of the distillation term.")
    rating_weight: float = Field(1.0, ge=0, description="MSE to the teacher's ratings inside loss_kd.")
    scores_weight: float = Field(1.0, ge=0, description="T²·KL on item-score softmaxes inside loss_kd.")
    temperature: float = Field(2.0, gt=0, description="Distillation temperature T.")
    student_layers: int | None = Field(
        None, ge=1, description="Student encoder = the teacher's bottom k layers (None = model.encoder as given).")

    @model_validator(mode="after")
    def _some_kd(self) -> "DistillationStrategy":
        if self.rating_weight == 0 and self.scores_weight == 0:
            raise ValueError("distillation needs rating_weight or scores_weight > 0")
        return self

    def student_encoder(self, job):
        if not self.student_layers:
            return None
        from lmrec.strategies.layer_sharing import student_from_artifact

        return student_from_artifact(self.teacher_artifact, self.student_layers)

    def attach(self, job, model, data, *, device, distributed=False) -> StrategyHooks:
        from lmrec.strategies.distillation import DistillationTask, Teacher

        task = DistillationTask(Teacher.from_artifact(self.teacher_artifact, device), self.weight, self.rating_weight,
                                self.scores_weight, self.temperature, job.tasks.click.temperature)
        task.check_compatible(data.n_users, data.n_items)
        return ExtraTasks([task])
