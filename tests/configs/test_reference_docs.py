"""docs/reference.md is generated from the pydantic schemas: the committed file has no drift, and the generator
renders types, defaults, constraints and tagged-union variants with links that resolve."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field

from lmrec.config.base import StrictModel
from lmrec.config.reference import OUT, Document, main, render, render_document

ROOT = Path(__file__).resolve().parents[2]


def test_committed_reference_has_no_drift(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert (ROOT / OUT).read_text(encoding="utf-8") == render(), (
        "docs/reference.md is out of date: run `python -m lmrec.config.reference`")
    assert main(["--check"]) == 0


def test_check_flags_a_stale_file(tmp_path):
    stale = tmp_path / "reference.md"
    stale.write_text(render().replace("| `scaling.storage_path` |", "| `scaling.storage` |"))
    assert main(["--check", "--out", str(stale)]) == 1
    assert main(["--out", str(stale)]) == 0 and main(["--check", "--out", str(stale)]) == 0


def test_every_link_resolves_and_every_job_key_is_documented():
    from lmrec.config.train import TrainSpec

    text = render()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= anchors, sorted(links - anchors)

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            yield f"{prefix}{name}"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, StrictModel):
                yield from keys(ann, f"{prefix}{name}.")

    for key in keys(TrainSpec):
        assert f"| `{key}` |" in text, key
    assert "| `two_tower_artifact` |" in text  # the Serve args


class _A(StrictModel):
    kind: Literal["a"] = "a"
    size: int = Field(3, ge=1, le=9, description="How big | really.")


class _B(StrictModel):
    kind: Literal["b"] = "b"
    names: list[str] = Field(default_factory=lambda: ["x"], description="Some names.")


class _Inner(StrictModel):
    """An inner section."""

    rate: float = Field(..., gt=0, description="Required rate.")


class _Spec(StrictModel):
    inner: _Inner = Field(..., description="Nested.")
    pick: Annotated[Union[_A, _B], Field(discriminator="kind")] = Field(default_factory=_A, description="A or B.")
    table: dict[str, _A] = Field(default_factory=dict, description="Map of A.")
    mode: Literal["min", "max"] | None = Field(None, description="Optional mode.")


def test_renderer_on_a_small_schema():
    text = "\n".join(render_document(Document("t", "Test", "x:_Spec", "Intro."), _Spec))
    assert "| `inner` | [section](#t-inner) | **required** |" in text
    assert "| `inner.rate` | float | **required** | > 0 | Required rate. |" in text
    assert "An inner section." in text
    assert '[kind: "a"](#t-pick-kind-a)' in text and '[kind: "b"](#t-pick-kind-b)' in text
    assert "| `pick.size` | int | `3` | ≥ 1, ≤ 9 | How big \\| really. |" in text
    assert '| `pick.names` | list of str | `["x"]` |' in text
    assert "| `table` | map of [section](#t-table-key) | `{}` |" in text
    assert '| `mode` | `"min"` \\| `"max"` \\| `null` | `null` |' in text
