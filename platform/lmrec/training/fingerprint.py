"""A run's identity: the spec fields and the data its weights were trained on, so a resume never continues
another run's checkpoint.

Resuming is by name: ``lmrec train`` with the same ``name`` and ``scaling.storage_path`` continues the latest
checkpoint. Without a check, a run on split ``ub`` leaves weights that a ``u1`` run of the same name picks up,
and the ``u1`` test part was trained on. So the driver records a ``RunIdentity`` in the run folder
(``lmrec_run.json``) when the run starts and, when it resumes, compares the new one with it field by field: any
difference stops the run (``IdentityMismatch``) before the cluster is touched. Every checkpoint carries the
identity's digest too, and a worker refuses to load a checkpoint of another identity (``lmrec.training.worker``).

What is in it: every spec field that defines the model or the data (``data.*``, ``model.*``, ``tasks.*``,
``strategy.*``, ``seed``), the content (size + sha256) of each data file, and the prepared data's own
fingerprint (train rows, item texts, split parameters). What is not: the fields that are safe to change when
continuing (``SAFE_TO_CHANGE``: more epochs, another learning rate, log frequency, workers, failures, storage).
Data files are keyed by name, not by path, so the same files under another mount resume; a changed file does not.
This module imports no ``ray``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from lmrec.config.base import SpecError

RUN_FILE = "lmrec_run.json"
CHECKPOINT_FILE = "lmrec_fingerprint.json"
FORMAT = "lmrec.run/1"
# Top-level spec sections that may change between a run and its resume: they steer training, not what is learned
# from. Everything else is identity, so a field added to ``data`` or ``model`` later is covered without a change here.
SAFE_TO_CHANGE = ("name", "optim", "early_stopping", "scaling", "incremental")


class IdentityMismatch(SpecError):
    """A resume would continue a checkpoint trained on another spec or other data."""


def _flatten(value, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for key in sorted(value):
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = json.dumps(value, sort_keys=True, default=str)


def spec_fields(spec_dict: dict) -> dict[str, str]:
    """Dotted key -> JSON value of every identity field of a spec (``TrainSpec.model_dump(mode="json")``)."""
    out: dict[str, str] = {}
    _flatten({k: v for k, v in spec_dict.items() if k not in SAFE_TO_CHANGE}, "", out)
    return out


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_fields(paths: Iterable[Path]) -> dict[str, str]:
    """``data_file.<name>`` -> ``"<size> bytes sha256 <hex>"`` for each file (full path when names collide)."""
    paths = sorted({Path(p) for p in paths})
    names = [p.name for p in paths]
    return {f"data_file.{p.name if names.count(p.name) == 1 else p}": f"{p.stat().st_size} bytes sha256 {sha256_of(p)}"
            for p in paths}


def spec_data_files(data_spec) -> list[Path]:
    """The files a ``DataSpec`` reads: your own files (``data.source``), else the named dataset's files in the
    folder ``load_dataset`` finds (call after the data was prepared: nothing is downloaded). Whatever else a loader
    reads still counts through the prepared data's fingerprint (train rows, item texts)."""
    from lmrec.data.fetch import dataset_source, resolve_dataset_dir
    from lmrec.data.parsing import find_file

    source = getattr(data_spec, "source", None)
    if source is not None:
        return [Path(table.path) for table in source.tables().values()]
    folder = resolve_dataset_dir(data_spec.dataset, download=False)
    return [find_file(folder, name) for name in dataset_source(data_spec.dataset).required_files]


@dataclass(frozen=True)
class RunIdentity:
    """The identity fields (dotted key -> JSON value) and their digest."""

    fields: dict[str, str]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "fingerprint": self.digest, "fields": self.fields}, indent=1,
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> "RunIdentity":
        try:
            record = json.loads(text)
            if record.get("format") != FORMAT or not isinstance(record.get("fields"), dict):
                raise ValueError(f"not a {FORMAT} record")
        except (ValueError, AttributeError) as e:
            raise IdentityMismatch(f"{where}: unreadable run record ({e})") from None
        return cls({str(k): str(v) for k, v in record["fields"].items()})


def run_identity(spec_dict: dict, data_files: Iterable[Path] = (), data_fingerprint: str | None = None) -> RunIdentity:
    """The identity of a run of ``spec_dict`` on ``data_files`` whose prepared data has ``data_fingerprint``."""
    fields = spec_fields(spec_dict)
    fields.update(file_fields(data_files))
    if data_fingerprint:
        fields["data.prepared_fingerprint"] = json.dumps(data_fingerprint)
    return RunIdentity(fields)


def differences(recorded: RunIdentity, current: RunIdentity, limit: int = 8) -> list[str]:
    """``key: old -> new`` for each field that differs (at most ``limit``, then a count)."""
    keys = sorted(set(recorded.fields) | set(current.fields))
    lines = [f"{k}: {recorded.fields.get(k, '(absent)')} -> {current.fields.get(k, '(absent)')}"
             for k in keys if recorded.fields.get(k) != current.fields.get(k)]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def mismatch_message(run_path: str, name: str, diffs: list[str]) -> str:
    return (f"run {name!r} at {run_path} was trained on another spec or other data, so its checkpoints cannot be "
            "resumed:\n  " + "\n  ".join(diffs) + "\nStart a fresh run instead: `lmrec train --no-resume` (a new "
            "timestamped run beside this one), or give the run another name or storage "
            "(--set name=... / --set scaling.storage_path=...).")


def check_resume(recorded_text: str | None, has_checkpoints: bool, current: RunIdentity, run_path: str,
                 name: str) -> None:
    """Raise ``IdentityMismatch`` unless resuming ``run_path`` (its record text, if any) with ``current`` is safe.
    Without checkpoints there is nothing to resume: any identity may (re)start there."""
    if not has_checkpoints:
        return
    if recorded_text is None:
        raise IdentityMismatch(mismatch_message(run_path, name, [
            f"{RUN_FILE}: absent (the checkpoints were written before lmrec recorded what a run trained on)"]))
    diffs = differences(RunIdentity.from_json(recorded_text, f"{run_path}/{RUN_FILE}"), current)
    if diffs:
        raise IdentityMismatch(mismatch_message(run_path, name, diffs))
