"""``data.source``: your own files in a job spec, ``lmrec data validate``, and split names in specs and ``--set``.

Every bad-input case runs the real CLI and checks the exit code (2) and that the one-line error names the file, the
line as a user sees it (header = line 1) and the column.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from lmrec.cli import main
from lmrec.config.base import SpecError, load_spec
from lmrec.config.train import DataSpec, TrainSpec
from lmrec.data import DataError
from lmrec.data.source import DataSource, load_source
from lmrec.data.splits import ML100KCanonicalSpec, PerUserRandomSplitSpec

INTERACTIONS = "user,movie,stars,ts\nu1,m1,4,100\nu1,m2,3,101\nu2,m1,5,102\nu2,m3,2,103\nu3,m2,4,104\nu3,m3,1,105\n"
ITEMS = 'id,title,description\nm1,Alpha,A film about letters.\nm2,Beta,"Second, with a comma"\nm3,Gamma,\n'
SOURCE = {
    "interactions": {"path": "data/interactions.csv",
                     "columns": {"user_id": "user", "item_id": "movie", "rating": "stars", "timestamp": "ts"}},
    "items": {"path": "data/items.csv", "columns": {"item_id": "id"}, "text_columns": ["title", "description"]},
}


def _write_spec(folder: Path, interactions: str | bytes = INTERACTIONS, items: str | bytes = ITEMS, **data) -> Path:
    """data/interactions.csv, data/items.csv and spec.yaml (relative paths) in ``folder``."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for name, content in (("interactions.csv", interactions), ("items.csv", items)):
        target = folder / "data" / name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    spec = {"name": "own", "data": {"source": SOURCE, "split": "per-user-80-20", **data}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _validate(capsys, spec: Path, *more: str) -> tuple[int, str, str]:
    code = main(["data", "validate", str(spec), *more])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- the spec and the loader ------------------------------------------------------------------------------------

def test_spec_with_source_loads_mapped_columns_from_the_working_directory(tmp_path, monkeypatch):
    spec_path = _write_spec(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths: from the directory lmrec runs in
    spec = load_spec(TrainSpec, spec_path)
    assert spec.data.dataset is None and spec.data.item_template == "[{title}.] [{description}.]"
    assert isinstance(spec.data.split, PerUserRandomSplitSpec) and spec.data.split.seed == 42
    ds = load_source(spec.data.source)
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (3, 3, 6)
    assert ds.interactions["rating"].tolist() == [4, 3, 5, 2, 4, 1]
    assert ds.interactions["timestamp"].tolist() == [100, 101, 102, 103, 104, 105]
    assert list(ds.item_ids) == ["m1", "m2", "m3"]
    # a worker re-validates the dumped spec: it must round-trip
    assert TrainSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_training_prepares_source_data_with_the_default_item_text(tmp_path, monkeypatch):
    from lmrec.training.data import prepare_data

    spec_path = _write_spec(tmp_path)
    monkeypatch.chdir(tmp_path)
    data = prepare_data(load_spec(TrainSpec, spec_path, {"model.encoder_init": "random-tiny"}))
    assert data.dataset == "custom" and data.n_items == 3
    assert data.item_texts == ["Alpha. A film about letters.", "Beta. Second, with a comma.", "Gamma."]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_parquet_and_json_lines_by_extension(tmp_path, suffix):
    inter = pd.DataFrame({"u": ["a", "a", "b"], "i": [1, 2, 1]})
    items = pd.DataFrame({"item_id": [1, 2], "title": ["One", "Two"]})
    for name, frame in (("inter", inter), ("items", items)):
        path = tmp_path / f"{name}{suffix}"
        frame.to_parquet(path) if suffix == ".parquet" else frame.to_json(path, orient="records", lines=True)
    source = DataSource(
        interactions={"path": str(tmp_path / f"inter{suffix}"), "columns": {"user_id": "u", "item_id": "i"}},
        items={"path": str(tmp_path / f"items{suffix}"), "text_columns": ["title"]},
    )
    ds = load_source(source)
    assert ds.meta["implicit"] and ds.interactions["rating"].tolist() == [1.0, 1.0, 1.0]
    assert list(ds.item_ids) == [1, 2] and ds.items["title"].tolist() == ["One", "Two"]


def test_format_given_overrides_the_extension(tmp_path):
    (tmp_path / "inter.txt").write_text("user_id,item_id\n1,1\n")
    (tmp_path / "items.txt").write_text("item_id,title\n1,One\n")
    source = DataSource(interactions={"path": str(tmp_path / "inter.txt"), "format": "csv"},
                        items={"path": str(tmp_path / "items.txt"), "format": "csv", "text_columns": ["title"]})
    assert load_source(source).n_items == 1


def test_source_and_dataset_are_mutually_exclusive():
    with pytest.raises(ValueError, match="data.dataset .* or data.source .*not both"):
        DataSpec(dataset="ml-100k", source=SOURCE, split="per-user-80-20")
    with pytest.raises(ValueError, match="data.source needs a data.split"):
        DataSpec(source=SOURCE)
    with pytest.raises(ValueError, match=r"interactions.columns.movie.*\n.*Input should be 'user_id', 'item_id'"):
        DataSpec(source={**SOURCE, "interactions": {"path": "x.csv", "columns": {"movie": "m"}}}, split="random-80-20")
    assert DataSpec().dataset == "ml-100k"


def test_shipped_example_validates_without_its_files(tmp_path, monkeypatch, capsys):
    example = Path(__file__).resolve().parents[3] / "jobs" / "examples" / "own-data.yaml"
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(example)]) == 0
    assert "data.source.interactions.path names data/interactions.csv" in capsys.readouterr().out
    assert main(["data", "validate", str(example)]) == 2
    assert "data/interactions.csv: file not found" in capsys.readouterr().err


# --- lmrec data validate ------------------------------------------------------------------------------------------

def test_data_validate_prints_counts(tmp_path, monkeypatch, capsys):
    spec = _write_spec(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, err = _validate(capsys, spec)
    assert code == 0, err
    assert "users               3" in out and "interactions        6" in out and "ratings             1 .. 5" in out
    assert "items without text  0" in out and out.rstrip().endswith("would read it")


@pytest.mark.parametrize(
    "interactions,items,expected",
    [
        pytest.param("user,movie,ts\nu1,m1,100\n", ITEMS,
                     "interactions.csv line 1: header 'user,movie,ts' lacks column(s) ['stars']", id="missing-column"),
        pytest.param(INTERACTIONS + "u4,m1,abc,106\n", ITEMS,
                     "interactions.csv line 8, column 3 (stars): 'abc' is not a number", id="non-numeric-rating"),
        pytest.param(INTERACTIONS, ITEMS + "m2,Beta again,dup\n",
                     "items.csv line 5, column 1 (id): item_id 'm2' appears 2 times", id="duplicate-item-ids"),
        pytest.param(INTERACTIONS, ITEMS + "m4,,\n",
                     "items.csv line 5, column 1 (id): item 'm4' has no text", id="item-with-empty-text"),
        pytest.param(INTERACTIONS + "u4,m9,3,106\nu5,m9,2,107\n", ITEMS,
                     "interactions.csv line 8, column 2 (movie): item 'm9' is not in items.csv", id="unknown-item"),
        pytest.param(INTERACTIONS, ITEMS.encode() + "m4,Caf\u00e9,latin-1\n".encode("latin-1"),
                     "items.csv line 5, column 2 (title): byte(s) b'\\xe9' are not valid utf-8", id="latin-1-byte"),
        pytest.param("", ITEMS, "interactions.csv line 1: the file is empty", id="empty-file"),
    ],
)
def test_bad_input_exits_2_naming_file_line_and_column(tmp_path, monkeypatch, capsys, interactions, items, expected):
    spec = _write_spec(tmp_path, interactions, items)
    monkeypatch.chdir(tmp_path)
    code, out, err = _validate(capsys, spec)
    assert code == 2
    assert err.startswith(f"lmrec: error: {expected}"), err
    assert len(err.strip().splitlines()) == 1 and out == ""


def test_bad_data_stops_lmrec_train_before_any_run_folder(tmp_path, monkeypatch, capsys):
    spec = _write_spec(tmp_path, INTERACTIONS + "u4,m1,abc,106\n")
    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "runs"
    assert main(["train", str(spec), "--set", f"scaling.storage_path={storage}"]) == 2
    assert "interactions.csv line 8, column 3 (stars)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "spec.yaml"]


def test_load_custom_without_the_checks_keeps_unknown_items_textless(tmp_path):
    from lmrec.data import load_custom

    (tmp_path / "i.csv").write_text("user_id,item_id\n1,1\n1,2\n")
    (tmp_path / "items.csv").write_text("item_id,title\n1,One\n")
    assert load_custom(tmp_path / "i.csv", tmp_path / "items.csv").meta["items_without_text"] == 1
    with pytest.raises(DataError, match=r"i.csv line 3, column 2 \(item_id\): item 2 is not in items.csv"):
        load_custom(tmp_path / "i.csv", tmp_path / "items.csv", require_item_text=True)


# --- split names ----------------------------------------------------------------------------------------------

def test_set_split_name_builds_the_baselines_split(data_dir, tmp_path):
    from lmrec.data.registry import load_dataset
    from lmrec.data.splits import make_split
    from lmrec.experiments import load_split
    from lmrec.training.ray_train import parse_overrides

    path = tmp_path / "spec.yaml"
    path.write_text("name: x\n")
    spec = load_spec(TrainSpec, path, parse_overrides(["data.split=ub"]))
    assert spec.data.split == ML100KCanonicalSpec(name="ub")
    ds = load_dataset("ml-100k", data_dir=data_dir)
    ours, baselines = make_split(ds, spec.data.split), load_split(ds, "ub")
    assert ours.train.index.equals(baselines.train.index) and ours.test.index.equals(baselines.test.index)
    per_user = load_spec(TrainSpec, path, parse_overrides(["data.split=per-user-80-20"])).data.split
    assert per_user == PerUserRandomSplitSpec(test_frac=0.2, seed=42)


def test_canonical_split_on_another_dataset_fails_validation(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\ndata: {dataset: ml-latest-small}\n")
    with pytest.raises(SpecError, match="split u1 is one of ML-100K's canonical splits .* dataset 'ml-latest-small'"):
        load_spec(TrainSpec, path, {"data.split": "u1"})
    with pytest.raises(SpecError, match="unknown split 'u9'"):
        load_spec(TrainSpec, path, {"data.split": "u9"})
    spec = _write_spec(tmp_path / "own")
    with pytest.raises(SpecError, match=r"split ub .* does not apply to data.source \(custom\)"):
        load_spec(TrainSpec, spec, {"data.split": "ub"})


def test_data_validate_takes_set(tmp_path, monkeypatch, capsys):
    spec = _write_spec(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, _, err = _validate(capsys, spec, "--set", "data.split=u1")
    assert code == 2 and "does not apply to data.source" in err
    code, out, _ = _validate(capsys, spec, "--set", "data.split=leave-last-1")
    assert code == 0 and "split               train 3, test 3" in out


def test_users_file_is_optional_and_its_columns_are_mapped(tmp_path):
    (tmp_path / "inter.csv").write_text("user_id,item_id\n7,1\n8,1\n")
    (tmp_path / "items.csv").write_text("item_id,title\n1,One\n")
    (tmp_path / "users.tsv").write_text("uid\tcity\n7\tOslo\n9\tLima\n")
    source = DataSource(interactions={"path": str(tmp_path / "inter.csv")},
                        items={"path": str(tmp_path / "items.csv"), "text_columns": ["title"]},
                        users={"path": str(tmp_path / "users.tsv"), "columns": {"user_id": "uid"}})
    ds = load_source(source)
    assert list(ds.user_ids) == [7, 8, 9] and ds.users["city"].fillna("").tolist() == ["Oslo", "", "Lima"]
