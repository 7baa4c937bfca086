"""The README's first screen is the contract with a new user: two set-up commands, and CI runs the test one."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_code_block(text: str) -> list[str]:
    body = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in body.strip().splitlines() if line.strip()]


def test_first_screen_gives_exactly_demo_and_test():
    readme = (ROOT / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:25])
    assert "```bash" in first_screen
    assert first_code_block(readme) == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "set -euo pipefail" in ci


def test_makefile_has_the_targets_and_pins_cpu_torch():
    mk = (ROOT / "Makefile").read_text()
    for target in ("demo:", "test:", "setup:", "bench:"):
        assert target in mk
    assert "torch==2.13.0" in mk


def test_no_platform_package_shadowing_stdlib():
    assert not (ROOT / "platform" / "__init__.py").exists()
    import platform

    assert callable(platform.system)
