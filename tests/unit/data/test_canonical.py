"""The regenerated ML-100K split files must be the GroupLens files, byte for byte."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmrec.data.canonical import ML100K_SPLIT_NAMES, format_ml100k_lines, ml100k_test_mask, write_ml100k_splits
from lmrec.data.schema import DataError, Dataset
from lmrec.data.splits import ml100k_canonical

ML100K_DIR = Path(os.environ.get("LMREC_DATA_DIR", "/work/shared/data")) / "ml-100k"
COLUMNS = ["user_id", "item_id", "rating", "timestamp"]

# sha256 of the published split files, as listed in shared/data/README.md.
PUBLISHED_SHA256 = {
    "u1.base": "ce253ec86c448b44fb3ba9a30d12dcfc2e9210cbde71efada3730c22e9ac212a",
    "u2.base": "6c06f0b5df4b256da1a994f3ac66edc8da4d3f09bc9282df6b14d893366d703e",
    "u3.base": "afdc155c291c6edc41c0407e39d7462eb98d341e064f0b0a12175b80b3c4af5d",
    "u4.base": "219f0f4d40dfe9c5141d425f53fa91ee23ed275f14e280bbf1b50117afb064ca",
    "u5.base": "a9574e59ce961eec2121627760b6e9b0974ce1637b3fe69ac32cb14a4bfab485",
    "ua.base": "67b5bcdb380c29f85d56a012ecd88612ae020f30a6730d117a334ee8203b91f2",
    "ub.base": "237254d253b6ad7de84f919d041055428646254f34ed8f562703c899430cd881",
    "u1.test": "18c6014a4b2c7324f250a63f8904a7b16b2b19f911129e346141507b0cbac950",
    "u2.test": "4de658d1e04ed9104629509a2e2528fce833ac8e048280183f1df167632038c3",
    "u3.test": "0f548b51c78327de4c156461d3e430b7e5579fe2b5681586a59416e48fd35f6d",
    "u4.test": "7c02ad0a1e7ab1083c8b9d4b627203a051dd7b5eab46d99fa44de33470de8db9",
    "u5.test": "351cc52e0d15b6c721466276fc24671d40936899e3d01fadeaf312915b8c5634",
    "ua.test": "d0497e202417720f57a184ec8c66be2d1afa4ff41bb53787c57b28d6bf79bc42",
    "ub.test": "d54a72d05730d5892062734b2bec73e976f9b713d18c828a18b968d6cce442da",
}

pytestmark = pytest.mark.skipif(not (ML100K_DIR / "u.data").exists(), reason=f"no ML-100K at {ML100K_DIR}")


@pytest.fixture(scope="module")
def ml100k() -> Dataset:
    return Dataset.build("ml-100k", pd.read_csv(ML100K_DIR / "u.data", sep="\t", names=COLUMNS))


@pytest.fixture(scope="module")
def written(ml100k: Dataset, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_ml100k_splits(ml100k.interactions, tmp_path_factory.mktemp("ml100k_splits"))


def test_writes_the_fourteen_files_in_order(written: list[Path]) -> None:
    expected = [f"{name}.{suffix}" for name in ML100K_SPLIT_NAMES for suffix in ("base", "test")]
    assert [p.name for p in written] == expected


@pytest.mark.parametrize("filename", sorted(PUBLISHED_SHA256))
def test_generated_file_equals_published(written: list[Path], filename: str) -> None:
    generated = next(p for p in written if p.name == filename).read_bytes()
    assert hashlib.sha256(generated).hexdigest() == PUBLISHED_SHA256[filename]
    published = ML100K_DIR / filename
    if published.exists():
        assert generated == published.read_bytes()


def test_ua_ub_hold_ten_different_ratings_per_user(ml100k: Dataset) -> None:
    inter = ml100k.interactions
    ua, ub = ml100k_test_mask(inter, "ua"), ml100k_test_mask(inter, "ub")
    assert not (ua & ub).any()
    for mask in (ua, ub):
        per_user = inter.loc[mask].groupby("user_id").size()
        assert len(per_user) == ml100k.n_users and (per_user == 10).all()
    # allbut.pl takes each user's ratings in u.data order: ua = the first ten a user has in the file.
    first_rows = inter.groupby("user_id", sort=False).head(10).index
    assert set(first_rows) == set(inter.index[ua])


def test_five_folds_partition_the_ratings(ml100k: Dataset) -> None:
    masks = np.stack([ml100k_test_mask(ml100k.interactions, f"u{i}") for i in range(1, 6)])
    assert (masks.sum(axis=0) == 1).all()
    assert (masks.sum(axis=1) == 20_000).all()
    # u1.test is the first 20,000 lines of u.data
    assert masks[0, :20_000].all()


def test_canonical_split_matches_the_files(ml100k: Dataset, written: list[Path]) -> None:
    split = ml100k_canonical(ml100k.interactions, "u3")
    for part, suffix in ((split.train, "base"), (split.test, "test")):
        on_disk = pd.read_csv(next(p for p in written if p.name == f"u3.{suffix}"), sep="\t", names=COLUMNS)
        assert format_ml100k_lines(part) == format_ml100k_lines(on_disk)
    assert list(split.train.columns) == list(ml100k.interactions.columns)
    assert split.params == {"kind": "ml100k_canonical", "name": "u3"} and split.seed is None


def test_rejects_what_is_not_ml100k_in_file_order(ml100k: Dataset) -> None:
    with pytest.raises(DataError, match="100,000"):
        ml100k_test_mask(ml100k.interactions.iloc[:-1], "u1")
    with pytest.raises(ValueError, match="unknown ML-100K split"):
        ml100k_test_mask(ml100k.interactions, "u6")
    fractional = ml100k.interactions.head(3).assign(rating=[1.0, 2.5, 3.0])
    with pytest.raises(DataError, match="fractional"):
        format_ml100k_lines(fractional)
