"""What every benchmark script shares: the machine record, the result file's schema and the figure set-up.

A result file (``benchmarks/results/<name>.json``) always opens with the same five keys, then the script's own:

- ``benchmark``: the script's result name;
- ``command``: how the run that last wrote the file was started (``python benchmarks/x.py --flag ...``);
- ``machine``: what it ran on (``machine()``), with the commit and the load average at start and at writing;
- ``seconds``: wall seconds from the script's start to this write;
- ``summary``: the headline figures and ratios (empty in a write made before the run has them).

Scripts may merge into an existing file (re-running some rows keeps the others); the five keys then describe the
latest run. Figures go through ``figure`` / ``save_figure`` (matplotlib's file-only Agg backend, results/ beside
the JSON).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts import each other by module name
_STARTED = time.perf_counter()  # the harness is imported as a script starts
_LOAD_AT_START = round(os.getloadavg()[0], 2)
SCHEMA_KEYS = ("benchmark", "command", "machine", "seconds", "summary")


def commit() -> str:
    """The checkout's short commit; a copy of the tree without git (a GPU machine) names it in LMREC_COMMIT."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
    except OSError:
        out = ""
    return out or os.environ.get("LMREC_COMMIT", "")


def machine() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit(),
        # other work on the machine inflates wall-clock figures; ratios measured in one run stay comparable
        "load_average_1m_at_start": _LOAD_AT_START,
        "load_average_1m_at_write": round(os.getloadavg()[0], 2),
    }


def command() -> str:
    """This process's command line as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else Path(sys.argv[0])
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def _plain(value):
    """JSON for the numpy scalars and paths that results carry."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_results(name: str, result: dict, *, summary: dict, path: Path | None = None) -> Path:
    """Write ``result`` under the shared schema to ``path`` (default results/<name>.json).

    ``result``'s own copies of the schema keys (e.g. read back from the file it merges into) are replaced."""
    path = Path(path) if path is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {"benchmark": name, "command": command(), "machine": machine(),
            "seconds": round(time.perf_counter() - _STARTED, 1), "summary": summary}
    detail = {k: v for k, v in result.items() if k not in SCHEMA_KEYS}
    path.write_text(json.dumps({**head, **detail}, indent=1, default=_plain))
    print(f"wrote {path}", flush=True)
    return path


def figure(*args, **kwargs):
    """``plt.subplots(*args, **kwargs)`` on the Agg backend (no display needed): (fig, axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, name: str | Path, dpi: int = 120) -> Path:
    """Lay out, save as results/<name>.png (or at ``name`` when it is a path) and close the figure."""
    import matplotlib.pyplot as plt

    path = Path(name) if isinstance(name, Path) else RESULTS / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    print(f"wrote {path}", flush=True)
    return path
