"""Run identity: which spec fields and data files make a checkpoint resumable (``lmrec.training.fingerprint``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmrec.config.base import load_spec
from lmrec.config.train import TrainSpec
from lmrec.training.fingerprint import (
    RUN_FILE,
    IdentityMismatch,
    RunIdentity,
    check_resume,
    differences,
    run_identity,
    spec_data_files,
)

SPEC = Path(__file__).resolve().parents[2] / "configs" / "tiny_two_tower.yaml"


def identity(files=(), fingerprint="f0", **overrides) -> RunIdentity:
    return run_identity(load_spec(TrainSpec, SPEC, overrides).model_dump(mode="json"), files, fingerprint)


def test_safe_fields_keep_the_identity():
    base = identity()
    same = identity(**{"optim.epochs": 9, "optim.log_every_steps": 1, "scaling.max_failures": 3,
                       "scaling.storage_path": "/elsewhere", "early_stopping.patience": 5, "optim.lr_heads": 0.1})
    assert same.digest == base.digest and not differences(base, same)


@pytest.mark.parametrize("key,value", [("data.split.test_frac", 0.3), ("data.item_template", "{title}"),
                                       ("model.encoder_init", "pretrained"), ("model.dim", 32), ("seed", 1),
                                       ("data.max_users", 50), ("tasks.click.weight", 0.0)])
def test_model_and_data_fields_change_it(key, value):
    base, other = identity(), identity(**{key: value})
    assert other.digest != base.digest
    assert [d.split(":")[0] for d in differences(base, other)] == [key]


def test_a_changed_data_file_changes_it_by_name_not_by_path(tmp_path):
    a, b = tmp_path / "a" / "u.data", tmp_path / "b" / "u.data"
    for path in (a, b):
        path.parent.mkdir()
        path.write_text("1\t2\t3\t4\n")
    assert identity([a]).digest == identity([b]).digest  # the same content under another folder resumes
    b.write_text("1\t2\t5\t4\n")
    diffs = differences(identity([a]), identity([b]))
    assert len(diffs) == 1 and diffs[0].startswith("data_file.u.data: 8 bytes sha256 ")
    assert identity(fingerprint="f1").digest != identity().digest  # the prepared rows / texts count too


def test_check_resume_names_the_fields_and_the_ways_out(tmp_path):
    old = identity(**{"data.split.test_frac": 0.3})
    new = identity()
    check_resume(None, False, new, str(tmp_path), "run")  # a new run
    check_resume(old.to_json(), False, new, str(tmp_path), "run")  # a run that never checkpointed: a fresh start
    check_resume(new.to_json(), True, new, str(tmp_path), "run")  # a genuine resume
    with pytest.raises(IdentityMismatch) as err:
        check_resume(old.to_json(), True, new, str(tmp_path), "run")
    message = str(err.value)
    assert "data.split.test_frac: 0.3 -> 0.2" in message
    assert "--no-resume" in message and "--set name=" in message and "scaling.storage_path" in message
    with pytest.raises(IdentityMismatch, match=RUN_FILE):  # checkpoints without a record: cannot be verified
        check_resume(None, True, new, str(tmp_path), "run")


def test_named_dataset_files(data_dir):
    spec = load_spec(TrainSpec, SPEC)
    assert sorted(p.name for p in spec_data_files(spec.data)) == ["u.data", "u.item", "u.user"]
