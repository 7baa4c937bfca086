"""ASHA's rungs after ``Tuner.restore``: the restored scheduler reads them back from the trials' ``result.json``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")

from ray.tune.schedulers import TrialScheduler  # noqa: E402

from lmrec.tuning.trial import ASHA_CLOCK, ResumableASHA  # noqa: E402


def _trial(folder: Path, trial_id: str, val_rmse: list[float] | None = None):
    """What the scheduler reads of a Tune trial: its id and folders; ``val_rmse`` is logged one line per epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    if val_rmse is not None:
        lines = [json.dumps({ASHA_CLOCK: e + 1, "val_rmse": v, "training_iteration": e + 1})
                 for e, v in enumerate(val_rmse)]
        (folder / "result.json").write_text("\n".join(lines) + "\n{\"asha_epoch\": 4, \"val_r")  # a cut-off line
    return SimpleNamespace(trial_id=trial_id, local_path=str(folder), path=str(folder))


def _scheduler() -> ResumableASHA:
    s = ResumableASHA(time_attr=ASHA_CLOCK, max_t=6, grace_period=1, reduction_factor=2)
    s.set_search_properties("val_rmse", "min")
    return s


def test_restored_rungs_stop_a_bad_trial_that_empty_rungs_let_through(tmp_path):
    finished = [_trial(tmp_path / "a", "a", [1.00, 0.95, 0.93, 0.92, 0.91, 0.90]),
                _trial(tmp_path / "b", "b", [1.02, 0.97, 0.94, 0.93, 0.92, 0.91])]
    bad = {"val_rmse": 1.40, ASHA_CLOCK: 1}

    restored = _scheduler()
    for t in finished:
        restored.on_trial_add(None, t)
    rungs = restored.rung_records()
    assert sorted(rungs[1.0]) == ["a", "b"] and sorted(rungs[4.0]) == ["a", "b"]
    assert rungs[1.0]["a"] == pytest.approx(-1.00)  # min mode: recorded as the negated metric
    new = _trial(tmp_path / "c", "c")  # no log yet: a fresh trial adds nothing
    restored.on_trial_add(None, new)
    assert "c" not in restored.rung_records()[1.0]
    assert restored.on_trial_result(None, new, bad) == TrialScheduler.STOP

    # the same scheduler without the restored records (Ray's ASHA after Tuner.restore) lets it through
    plain = _scheduler()
    plain_new = _trial(tmp_path / "d", "d")
    plain.on_trial_add(None, plain_new)
    assert plain.on_trial_result(None, plain_new, bad) == TrialScheduler.CONTINUE


def test_a_restored_unfinished_trial_keeps_its_rungs_and_continues(tmp_path):
    s = _scheduler()
    s.on_trial_add(None, _trial(tmp_path / "a", "a", [1.0, 0.95, 0.93, 0.92, 0.91, 0.90]))
    half = _trial(tmp_path / "h", "h", [0.99, 0.94])  # interrupted after 2 epochs, better than "a"
    s.on_trial_add(None, half)
    assert s.rung_records()[2.0]["h"] == pytest.approx(-0.94)
    # its next epoch (3) reaches no new rung; epoch 4 is compared with "a"'s record and continues
    assert s.on_trial_result(None, half, {"val_rmse": 0.92, ASHA_CLOCK: 3}) == TrialScheduler.CONTINUE
    assert s.on_trial_result(None, half, {"val_rmse": 0.90, ASHA_CLOCK: 4}) == TrialScheduler.CONTINUE
