"""Every command the docs show still exists: a renamed flag, subcommand, spec file or make target fails here.

The ``lmrec ...`` lines of the README's and docs/*.md's shell blocks, and the run lines at the top of every spec in
jobs/, tune/ and serve/, are parsed with the CLI's own parser; the spec each names must exist, and train, tune and
ensemble commands must validate with their ``--set`` overrides (nothing is trained). Every ``make X`` in the README's
and docs' code must be a Makefile target.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from lmrec.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SPECS = sorted(p for folder in ("jobs", "tune", "serve") for p in (ROOT / folder).rglob("*.yaml"))
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)?[ \t]*\n(.*?)^```", re.S | re.M)


def _shell_lines(text: str) -> list[str]:
    """The lines of the text's shell code blocks, backslash continuations joined."""
    lines = []
    for block in SHELL_BLOCK.findall(text):
        lines += block.replace("\\\n", " ").splitlines()
    return lines


def _lmrec_args(line: str) -> list[str] | None:
    """The arguments after ``lmrec`` / ``python -m lmrec.cli`` in a shell line (also after ``ray job submit ... --``),
    with the docs' placeholder syntax (``[--set k=v ...]``) made literal; None when the line runs something else."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    if words[:2] == ["ray", "job"] and "--" in words:
        words = words[words.index("--") + 1:]
    if words[:3] == ["python", "-m", "lmrec.cli"]:
        words = ["lmrec", *words[3:]]
    if not words or words[0] != "lmrec" and not words[0].endswith("/lmrec"):
        return None
    return [w.strip("[]") for w in words[1:] if w.strip("[]") not in ("...", "…", "")]


def _header_commands(path: Path) -> list[str]:
    """A spec's leading run lines (``# lmrec ...``, ``# ray job submit ... -- lmrec ...``), up to a remark set off by
    two spaces: ``# lmrec serve serve/recommender.yaml        (on a Ray cluster: ...)``."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines()[:3]:
        text = line.lstrip("#").strip()
        if text.startswith(("lmrec ", "ray job submit")):
            out.append(re.split(r"\s{2,}", text)[0])
    return out


def _documented() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for line in _shell_lines(doc.read_text(encoding="utf-8")):
            args = _lmrec_args(line)
            if args is not None:
                found.append((f"{doc.name}: lmrec {' '.join(args)}", args))
    for spec in SPECS:
        for line in _header_commands(spec):
            args = _lmrec_args(line)
            if args is not None:
                found.append((f"{spec.relative_to(ROOT)}: lmrec {' '.join(args)}", args))
    return found


COMMANDS = list(dict((where, args) for where, args in _documented()).items())  # `ray job submit -- X` is X


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag of the parser and its subcommands, so an abbreviation argparse would accept is still caught."""
    found = set()
    for action in parser._actions:
        found |= {o for o in action.option_strings if o.startswith("--")}
        for sub in (action.choices or {}).values() if isinstance(action, argparse._SubParsersAction) else ():
            found |= _option_strings(sub)
    return found


def test_the_docs_show_commands():
    shown = {args[0] for _, args in COMMANDS if args}
    assert {"train", "tune", "serve", "ensemble", "data", "baselines", "demo", "specs", "validate"} <= shown


@pytest.mark.parametrize("where,args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_parses_and_names_a_real_spec(where, args):
    try:
        ns = build_parser().parse_args(args)
    except SystemExit as e:
        pytest.fail(f"{where}: the lmrec parser rejects it (exit {e.code})")
    unknown = {a.split("=", 1)[0] for a in args if a.startswith("--")} - _option_strings(build_parser())
    assert not unknown, f"{where}: not the full name of any lmrec flag: {sorted(unknown)}"
    command = ns.command
    if command in ("train", "tune", "ensemble", "recommend-batch", "serve"):
        spec = ns.config if command == "serve" else ns.spec
        if spec is None:  # `lmrec serve --artifact DIR`: the artifact is what an earlier command wrote
            assert command == "serve" and ns.artifact, f"{where}: neither a config nor --artifact"
            return
        if "<" in spec:  # a placeholder such as jobs/<spec>.yaml
            return
        path = ROOT / spec
        assert path.is_file(), f"{where}: {spec} does not exist"
        if command != "serve":  # tests/configs/test_specs.py validates every Serve config
            from lmrec.config.shipped import validate_spec
            from lmrec.training.ray_train import parse_overrides

            validate_spec(path, kind=command, overrides=parse_overrides(ns.set or []))
    elif command == "specs" and ns.specs_command == "copy":
        from lmrec.config.shipped import find_spec

        find_spec(ns.name)
    elif command == "validate" and ns.spec and not Path(ns.spec).suffix:
        from lmrec.config.shipped import find_spec

        find_spec(ns.spec)


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m for line in re.findall(r"^([A-Za-z][\w .-]*?)\s*::?(?!=)", text, re.M) for m in line.split()}


def _make_mentions(text: str) -> set[str]:
    """``make X`` in shell blocks (comments included) and in inline code."""
    code = "\n".join(SHELL_BLOCK.findall(text)) + "\n" + "\n".join(re.findall(r"`([^`\n]+)`", text))
    return set(re.findall(r"(?:^|[\s(;&])make ([a-z][\w-]*)", code, re.M))


def test_every_make_target_named_in_the_docs_exists():
    targets = _make_targets()
    named = {(doc.name, t) for doc in DOCS for t in _make_mentions(doc.read_text(encoding="utf-8"))}
    assert {t for _, t in named} >= {"demo", "test", "setup"}
    missing = sorted((doc, t) for doc, t in named if t not in targets)
    assert not missing, f"make targets named in the docs but not in the Makefile: {missing}"
