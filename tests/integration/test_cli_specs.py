"""`lmrec specs list|copy` and `lmrec validate` run as a user would (a subprocess; the quick variations call the
console script's ``main``), from a folder outside the checkout, and the wheel really carrying the shipped specs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lmrec.cli import main

ROOT = Path(__file__).resolve().parents[2]
LMREC = [sys.executable, "-m", "lmrec.cli"]
REPO_SPECS = sorted(p.relative_to(ROOT).as_posix() for folder in ("jobs", "tune", "serve")
                    for p in (ROOT / folder).rglob("*") if p.suffix in (".yaml", ".json"))


def run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(LMREC + args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=300)


def test_list_names_every_shipped_file(tmp_path):
    res = run(["specs", "list"], tmp_path)
    assert res.returncode == 0, res.stderr
    rows = [line.split()[:2] for line in res.stdout.splitlines()[1:]]
    names = {name: kind for name, kind in rows}
    assert len(names) == len(REPO_SPECS)
    assert names["ml100k-ranking"] == "train" and names["strategies/lora"] == "train"
    assert names["tune/ml100k-task-weights"] == "tune" and names["serve/recommender"] == "serve"
    assert names["ensemble"] == "ensemble" and names["deepspeed/zero2"] == "deepspeed"
    assert "LoRA" in res.stdout  # the description, not the run line


def test_copy_writes_refuses_to_overwrite_and_forces(tmp_path):
    res = run(["specs", "copy", "strategies/lora", "mine.yaml"], tmp_path)
    assert res.returncode == 0, res.stderr
    copied = (tmp_path / "mine.yaml").read_text()
    original = (ROOT / "jobs" / "strategies" / "lora.yaml").read_text()
    assert copied == original.replace("jobs/strategies/lora.yaml", "mine.yaml")  # the header runs the copy
    assert copied.splitlines()[0] == "# lmrec train mine.yaml"

    (tmp_path / "mine.yaml").write_text("edited\n")
    res = run(["specs", "copy", "strategies/lora", "mine.yaml"], tmp_path)
    assert res.returncode == 2 and "exists" in res.stderr and "--force" in res.stderr
    assert (tmp_path / "mine.yaml").read_text() == "edited\n"
    res = run(["specs", "copy", "jobs/strategies/lora.yaml", "mine.yaml", "--force"], tmp_path)  # a repo path works
    assert res.returncode == 0 and (tmp_path / "mine.yaml").read_text() == copied


def test_copy_into_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["specs", "copy", "deepspeed/zero3", "conf/"]) == 0
    assert (tmp_path / "conf" / "zero3.json").read_bytes() == (ROOT / "jobs" / "deepspeed" / "zero3.json").read_bytes()
    assert capsys.readouterr().out == f"wrote {Path('conf') / 'zero3.json'}\n"


def test_unknown_name_is_one_line_with_close_matches(tmp_path):
    res = run(["specs", "copy", "lora", "x.yaml"], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "'lora'" in lines[0] and "strategies/lora" in lines[0]
    assert not (tmp_path / "x.yaml").exists()


def test_a_copied_tune_spec_says_what_it_needs_and_then_validates(tmp_path, monkeypatch, capsys):
    res = run(["specs", "copy", "tune/ml100k-task-weights", "tune/"], tmp_path)
    assert res.returncode == 0, res.stderr
    fix = "lmrec specs copy ml100k-minilm-multitask jobs/ml100k-minilm-multitask.yaml"
    assert "base names jobs/ml100k-minilm-multitask.yaml" in res.stdout and fix in res.stdout

    monkeypatch.chdir(tmp_path)
    assert main(["validate", "tune/ml100k-task-weights.yaml"]) == 1
    assert "base job spec" in capsys.readouterr().err
    assert main(fix.split()[1:]) == 0  # the note's own command
    assert "lmrec specs copy deepspeed/zero2 jobs/deepspeed/zero2.json" in capsys.readouterr().out
    assert main(["specs", "copy", "deepspeed/zero2", "jobs/deepspeed/zero2.json"]) == 0
    assert main(["validate", "jobs/ml100k-minilm-multitask.yaml"]) == 0
    assert "note" not in capsys.readouterr().out

    res = run(["validate", "tune/ml100k-task-weights.yaml"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "OK tune/ml100k-task-weights.yaml (tune)\n"


@pytest.mark.parametrize("name,kind", [("strategies/meta_learning", "train"), ("ensemble", "ensemble"),
                                       ("tune/ml100k-task-weights", "tune"), ("serve/recommender", "serve"),
                                       ("deepspeed/zero3_offload", "deepspeed")])
def test_validate_shipped_names(tmp_path, monkeypatch, capsys, name, kind):
    monkeypatch.chdir(tmp_path)  # not the checkout: the package's own copies
    assert main(["validate", name]) == 0
    assert capsys.readouterr().out.strip() == f"OK {name} ({kind})"


def test_validate_wrong_kind_missing_file_and_unknown_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "strategies/lora", "--kind", "serve"]) == 1
    assert "Field required" in capsys.readouterr().err
    assert main(["validate", "missing.yaml"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["validate", "ml100k-rankng"]) == 2
    assert "did you mean ml100k-ranking" in capsys.readouterr().err


def test_validate_all_checks_every_shipped_spec_and_fails_on_a_bad_override(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(REPO_SPECS) and all(line.startswith("OK ") for line in lines)
    assert "OK strategies/lora (train)" in lines and "OK deepspeed/zero2 (deepspeed)" in lines
    # a bad override fails each spec it reaches, named with the reason, and the run exits 1
    assert main(["validate", "--all", "--set", "optim.epochs=abc"]) == 1
    out = capsys.readouterr()
    lora = out.out.split("FAILED strategies/lora:")[1].split("\nFAILED ")[0].split("\nOK ")[0]
    assert "optim.epochs" in lora and "shipped spec(s) failed" in out.err
    assert main(["validate"]) == 2 and "give a SPEC or --all" in capsys.readouterr().err


def test_validate_a_broken_spec_names_the_field_and_exits_1(tmp_path):
    assert run(["specs", "copy", "strategies/lora", "lora.yaml"], tmp_path).returncode == 0
    spec = tmp_path / "lora.yaml"
    spec.write_text(spec.read_text().replace("lr_heads: 0.003", "lr_hedas: 0.003").replace("rank: 8", "rank: many"))
    res = run(["validate", "lora.yaml"], tmp_path)
    assert res.returncode == 1 and "OK" not in res.stdout
    assert "optim.lr_hedas" in res.stderr and "Extra inputs are not permitted" in res.stderr
    assert "strategy.lora.rank" in res.stderr and "Traceback" not in res.stderr

    from lmrec.config.shipped import copy_spec

    copy_spec("strategies/lora", tmp_path / "ok.yaml")
    res = run(["validate", "ok.yaml", "--set", "optim.epochs=abc"], tmp_path)
    assert res.returncode == 1 and "optim.epochs" in res.stderr


def test_every_path_a_shipped_spec_names_is_shipped(monkeypatch):
    """The shipped tree is one working directory: from its root, nothing any spec names is missing."""
    from lmrec.config.shipped import missing_references, shipped_specs, specs_root

    monkeypatch.chdir(specs_root())
    for spec in shipped_specs():
        missing = [r for r in missing_references(spec.path, spec.kind) if not r.key.startswith("data.source.")]
        assert missing == [], spec.name  # data.source names the user's own files: never shipped


@pytest.mark.slow
def test_the_wheel_carries_the_specs_as_files(tmp_path):
    """pip builds a wheel from the source tree (symlinks followed) and the installed copy lists every spec."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in ("jobs", "tune", "serve"):
        shutil.copytree(ROOT / folder, src / folder)
    shutil.copytree(ROOT / "platform", src / "platform", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    assert (src / "platform" / "lmrec" / "specs" / "jobs").is_symlink()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("lmrec-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        entries = {i.filename: i for i in zf.infolist()}
    for rel in REPO_SPECS:
        info = entries.get(f"lmrec/specs/{rel}")
        assert info is not None, f"{rel} is not in the wheel (package-data globs)"
        assert (info.external_attr >> 16) & 0o170000 != 0o120000, f"{rel} is a symlink in the wheel"

    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-3000:]
    res = run(["specs", "list"], tmp_path, env={"PYTHONPATH": str(target)})
    assert res.returncode == 0 and len(res.stdout.splitlines()) == len(REPO_SPECS) + 1, res.stderr
    res = run(["validate", "tune/ml100k-task-weights"], tmp_path, env={"PYTHONPATH": str(target)})
    assert res.returncode == 0, res.stderr
    probe = subprocess.run([sys.executable, "-c", "import lmrec; print(lmrec.__file__)"], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert probe.stdout.startswith(str(target))
