"""``EnsembleSpec``: a fused ensemble of trained members, its weights fitted on validation (``lmrec ensemble``).

The job loads the members' artifacts (hash-checked), rebuilds the split from ``data`` and ``seed`` (the members'
own, so validation and test are the parts they never trained on; the members' dataset fingerprints are checked
against it), fits the fusion weights on the validation part, scores the ensemble on test and writes an ensemble
artifact that Serve loads (``ensemble_artifact`` in the app args).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from lmrec.config.base import StrictModel
from lmrec.config.train import DataSpec

# The members Serve's ingress fuses (``lmrec.serving.app.EnsembleWeights``); two_tower also serves texts. Each name
# takes its own artifact kind: two_tower a two-tower artifact, mf an MF artifact, ease / item_knn an item-item
# artifact of that kind (``lmrec.artifacts.item_item``).
MEMBERS = ("two_tower", "mf", "ease", "item_knn")


class EnsembleFitSpec(StrictModel):
    """How the ranking weights are fitted (``FusedEnsemble.fit_weights``); rating weights are NNLS, no settings."""

    steps: int = Field(300, ge=1, description="Adam steps of the listwise loss over the fused validation scores.")
    lr: float = Field(0.05, gt=0, description="Adam learning rate of the weight logits.")
    max_users: int = Field(2048, ge=1, description="Validation users sampled (seeded) for the ranking loss.")
    relevance_threshold: float | None = Field(
        None, description="Validation rows rated at or above this are the relevant items; None = every row.")


class EnsembleSpec(StrictModel):
    name: str = Field("ensemble", description="Ensemble name (in the artifact's manifest and the summary line).")
    seed: int = Field(
        0, ge=0, description="The members' job seed: it picks the valid_from_train slice, so the split is theirs.")
    data: DataSpec = Field(
        default_factory=DataSpec, description="Dataset, split and texts: the members' job spec's data section.")
    members: dict[str, str] = Field(
        description=f"Member name ({', '.join(MEMBERS)}) -> its artifact: a folder or a storage URI.")
    fit: EnsembleFitSpec = Field(default_factory=EnsembleFitSpec, description="Fitting the fusion weights.")
    output_dir: str = Field(description="Where the ensemble artifact goes: a folder or a storage URI.")

    @field_validator("members")
    @classmethod
    def _known_members(cls, members: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(members) - set(MEMBERS))
        if unknown:
            raise ValueError(f"unknown member(s) {unknown}: Serve fuses {', '.join(MEMBERS)}")
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {sorted(members) or 'none'}")
        if "two_tower" not in members:  # Serve's ingress ranks in the two-tower's item space
            raise ValueError(f"an ensemble needs a two_tower member, got {sorted(members)}")
        empty = sorted(m for m, location in members.items() if not location.strip())
        if empty:
            raise ValueError(f"member(s) {empty} have an empty artifact location")
        return members

    @field_validator("data")
    @classmethod
    def _in_memory_data(cls, data: DataSpec) -> DataSpec:
        if data.streaming:  # the fit reads every member's scores on the whole validation split, in memory
            raise ValueError("data.streaming: an ensemble fits its weights on the data in memory; drop streaming "
                             "(members trained on streamed data split rows by a hash the in-memory split does not "
                             "reproduce)")
        return data

    @field_validator("output_dir")
    @classmethod
    def _some_output(cls, output_dir: str) -> str:
        if not output_dir.strip():
            raise ValueError("output_dir is empty")
        return output_dir
