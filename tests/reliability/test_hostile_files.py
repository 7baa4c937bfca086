"""Hostile files: malformed, truncated and oversized data files, specs and artifacts fail with a clear error
that names the file; nothing lmrec loads is executed (safe YAML, no eval/exec, no pickle on the serving path);
artifacts are sha256-checked before any weight is read and cannot reach outside their folder."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from lmrec.config.base import SpecError, load_spec
from lmrec.config.train import TrainSpec
from lmrec.data.generic import load_custom
from lmrec.data.schema import DataError
from lmrec.artifacts.manifest import ArtifactError, sha256_file, verify_artifact
from lmrec.artifacts.two_tower import FORMAT as TWO_TOWER_FORMAT
from lmrec.artifacts.two_tower import load_artifact

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "platform" / "lmrec"


# ---- data files ----

GOOD = b"user_id,item_id,rating\n1,10,4\n2,11,5\n"


@pytest.mark.parametrize("content, message", [
    (b"", "line 1: the file is empty"),
    (b"user_id,item_id,rating\n", "no data rows"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "not valid"),
    (b"user_id,item_id,rating\n1,10,4\n2,11", "line 3 has 2 (truncated file?)"),
    (b"user_id;item_id;rating\n1;10;4\n", "lacks column"),
    (b"user_id,item_id,rating\n1,10,nan\n", "line 2"),
    (b"user_id,item_id,rating\n1,10,1e999\n", "line 2"),
])
def test_malformed_interaction_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "ratings.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_custom(path)
    assert "ratings.csv" in str(e.value) and message in str(e.value), str(e.value)


def test_truncated_parquet_and_jsonl(tmp_path):
    import pandas as pd

    good = tmp_path / "good.parquet"
    pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "rating": [4.0, 5.0]}).to_parquet(good)
    bad = tmp_path / "cut.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.parquet: not a readable Parquet file"):
        load_custom(bad)
    lines = tmp_path / "r.jsonl"
    lines.write_text('{"user_id": 1, "item_id": 2, "rating": 4}\n{"user_id": 1, "item_')
    with pytest.raises(DataError, match="r.jsonl"):
        load_custom(lines)


def test_oversized_text_field_loads_and_is_bounded_by_the_tokenizer(tmp_path):
    """A 2 MB item title is data, not an attack on memory: it loads, and encoders see max_length tokens."""
    (tmp_path / "r.csv").write_bytes(GOOD)
    (tmp_path / "items.csv").write_text("item_id,title\n10," + "word " * 400_000 + "\n11,short\n")
    ds = load_custom(tmp_path / "r.csv", tmp_path / "items.csv")
    assert len(ds.items) == 2
    from lmrec.models.encoder import load_tokenizer

    tok = load_tokenizer()
    enc = tok([ds.items.loc[ds.items["item_id"] == 10, "title"].iloc[0][:200_000]], truncation=True, max_length=32)
    assert len(enc["input_ids"][0]) == 32


# ---- specs ----

@pytest.mark.parametrize("text, message", [
    ("name: x\nseed: !!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
    ("!!python/name:os.system\n", "invalid YAML"),
    ("- a\n- b\n", "must be a YAML mapping"),
    ("name: [unclosed\n", "invalid YAML"),
    ("\xff\xfe binary", "cannot read spec"),
    ("name: x\nbogus_key: 1\n", "bogus_key"),
    ("name: x\noptim: {epochs: 1e400}\n", "optim.epochs"),
])
def test_hostile_specs_are_spec_errors(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises(SpecError) as e:
        load_spec(TrainSpec, path)
    assert str(path) in str(e.value) and message in str(e.value), str(e.value)
    assert not (tmp_path / "pwned").exists()


def test_alias_bomb_spec_is_rejected_quickly(tmp_path):
    """'Billion laughs': the safe loader shares aliased nodes, and the schema refuses the shape."""
    import time

    rows = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    rows += [f'{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]' for p, c in zip("abcdefgh", "bcdefghi")]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(rows) + "\n")
    start = time.perf_counter()
    with pytest.raises(SpecError):
        load_spec(TrainSpec, path)
    assert time.perf_counter() - start < 5


# ---- artifacts ----

@pytest.fixture()
def artifact_copy(serving_artifacts, tmp_path) -> Path:
    root = tmp_path / "art"
    shutil.copytree(serving_artifacts["v1"], root)
    return root


def _rewrite_manifest(root: Path, edit) -> None:
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_truncated_weights_are_refused_before_loading(artifact_copy):
    weights = artifact_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    with pytest.raises(ArtifactError, match="model.safetensors: sha256 .* does not match"):
        load_artifact(artifact_copy)


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink", "pickle_added", "manifest_garbage",
                                    "manifest_not_mapping", "format"])
def test_artifact_attacks_are_refused(artifact_copy, tmp_path, attack):
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    if attack == "dotdot":
        _rewrite_manifest(artifact_copy, lambda m: m["files"].update({"../secret.txt": sha256_file(outside)}))
    elif attack == "absolute":
        _rewrite_manifest(artifact_copy, lambda m: m["files"].update({str(outside): sha256_file(outside)}))
    elif attack == "symlink":  # the link's target hashes fine: it is the link itself that is refused
        (artifact_copy / "id_maps.json").unlink()
        shutil.copy(artifact_copy.parent / "art" / "encoder_config.json", outside)
        (artifact_copy / "id_maps.json").symlink_to(outside)
    elif attack == "pickle_added":
        import pickle

        (artifact_copy / "extra.pkl").write_bytes(pickle.dumps({"x": 1}))
    elif attack == "manifest_garbage":
        (artifact_copy / "manifest.json").write_bytes(b"\x00\x01garbage")
    elif attack == "manifest_not_mapping":
        _rewrite_manifest(artifact_copy, lambda m: m.update(files=["model.safetensors"]))
    elif attack == "format":
        _rewrite_manifest(artifact_copy, lambda m: m.update(format="torch.save/pickle"))
    with pytest.raises(ArtifactError) as e:
        verify_artifact(artifact_copy, TWO_TOWER_FORMAT)
    assert str(artifact_copy) in str(e.value)


def test_serving_refuses_a_tampered_mf_artifact(serving_artifacts, tmp_path):
    from lmrec.serving.app import check_artifacts, ServeAppArgs
    from lmrec.serving.members import MFMember

    mf = tmp_path / "mf"
    shutil.copytree(serving_artifacts["mf"], mf)
    ids = json.loads((mf / "id_maps.json").read_text())
    ids["item_texts"][0] = "tampered"
    (mf / "id_maps.json").write_text(json.dumps(ids))
    with pytest.raises(ArtifactError, match="id_maps.json: sha256"):
        MFMember(mf)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        check_artifacts(ServeAppArgs(two_tower_artifact=str(tmp_path / "nowhere")))


# ---- nothing loaded is executed ----

def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f"{ast.unparse(f.value)}.{f.attr}" if isinstance(
                f, ast.Attribute) else ""
            yield node, name


def test_package_never_evals_execs_or_unpickles():
    offences = []
    serving_path = {"serving", "models"}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for mod in mods:
                    if mod.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"):
                        offences.append(f"{rel}:{node.lineno} imports {mod}")
        for node, name in _calls(tree):
            where = f"{rel}:{node.lineno} {name}"
            kwargs = {k.arg: k.value for k in node.keywords}
            if name in ("eval", "exec", "compile", "__import__"):
                offences.append(where)
            elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                offences.append(where)
            elif name.endswith("torch.load"):
                ok = isinstance(kwargs.get("weights_only"), ast.Constant) and kwargs["weights_only"].value is True
                if not ok or rel.split("/")[0] in serving_path:
                    offences.append(where + " (torch.load on the serving path or without weights_only=True)")
            elif name.endswith("np.load") or name.endswith("numpy.load"):
                offences.append(where)
            elif "trust_remote_code" in kwargs and not (
                    isinstance(kwargs["trust_remote_code"], ast.Constant) and kwargs["trust_remote_code"].value is False):
                offences.append(where + " trust_remote_code")
    assert not offences, offences


def test_serving_loads_only_safetensors_and_json(serving_artifacts, monkeypatch):
    """Open every file the serving members read while they load: safetensors, JSON, and tokenizer text files."""
    import builtins

    from lmrec.serving.members import MFMember, TwoTowerMember

    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    TwoTowerMember(serving_artifacts["v1"])
    MFMember(serving_artifacts["mf"])
    ours = [Path(p) for p in opened if str(serving_artifacts["v1"].parent) in p]
    assert ours, opened
    allowed = {".safetensors", ".json", ".txt"}  # tokenizer: tokenizer.json, vocab.txt, special tokens JSON
    assert {p.suffix for p in ours} <= allowed, sorted({p.name for p in ours})
