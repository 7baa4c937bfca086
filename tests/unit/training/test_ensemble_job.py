"""``lmrec ensemble`` without Ray: the spec's checks, the job on tiny real members, and the artifact's checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pydantic import ValidationError

from lmrec.config.base import SpecError
from lmrec.config.ensemble import EnsembleSpec
from lmrec.artifacts.manifest import ArtifactError, sha256_file, verify_artifact
from lmrec.artifacts.ensemble import (
    ENSEMBLE_FORMAT, check_member_location, load_ensemble_artifact, member_manifest_sha256,
)
from lmrec.training.ensemble_job import main_ensemble, member_locations, run_ensemble


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _spec(serving_artifacts, out, **over) -> EnsembleSpec:
    """The members' own data section and seed, read from the two-tower's manifest (what a user copies)."""
    config = json.loads((serving_artifacts["v1"] / "manifest.json").read_text())["config"]
    raw = {"name": "tiny-ensemble", "seed": config["seed"], "data": config["data"],
           "members": {"two_tower": str(serving_artifacts["v1"]), "mf": str(serving_artifacts["mf"])},
           "fit": {"steps": 40}, "output_dir": str(out)}
    return EnsembleSpec.model_validate({**raw, **over})


def test_spec_names_bad_members():
    base = {"output_dir": "out"}
    with pytest.raises(ValidationError,
                       match=r"unknown member\(s\) \['popularity'\]: Serve fuses two_tower, mf, ease, item_knn"):
        EnsembleSpec.model_validate({**base, "members": {"two_tower": "a", "popularity": "b"}})
    with pytest.raises(ValidationError, match=r"needs a two_tower member, got \['ease', 'mf'\]"):
        EnsembleSpec.model_validate({**base, "members": {"mf": "a", "ease": "b"}})
    with pytest.raises(ValidationError, match=r"at least 2 members, got \['two_tower'\]"):
        EnsembleSpec.model_validate({**base, "members": {"two_tower": "a"}})
    with pytest.raises(ValidationError, match="at least 2 members, got none"):
        EnsembleSpec.model_validate({**base, "members": {}})
    with pytest.raises(ValidationError, match=r"\['mf'\] have an empty artifact location"):
        EnsembleSpec.model_validate({**base, "members": {"two_tower": "a", "mf": " "}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        EnsembleSpec.model_validate({**base, "members": {"two_tower": "a", "mf": "b"}, "fit": {"stpes": 3}})
    with pytest.raises(ValidationError, match="fits its weights on the data in memory"):
        EnsembleSpec.model_validate({**base, "members": {"two_tower": "a", "mf": "b"},
                                     "data": {"dataset": "ml-100k", "split": "random-80-20", "streaming": True}})


def test_missing_member_artifact_is_a_spec_error(tmp_path):
    (tmp_path / "tt").mkdir()
    (tmp_path / "tt" / "manifest.json").write_text("{}")
    spec = EnsembleSpec(members={"two_tower": str(tmp_path / "tt"), "mf": str(tmp_path / "no-mf")},
                        output_dir=str(tmp_path / "out"))
    with pytest.raises(SpecError, match=r"members\.mf: no artifact at .*no-mf \(no manifest\.json\)"):
        member_locations(spec)
    bad = spec.model_copy(update={"members": {"two_tower": "s3://bucket/../tt", "mf": str(tmp_path / "tt")}})
    with pytest.raises(SpecError, match=r"members\.two_tower: .*path traversal"):
        member_locations(bad)


def test_member_locations_in_an_artifact_must_be_absolute_without_traversal():
    assert check_member_location("/srv/artifacts/mf") == "/srv/artifacts/mf"
    assert check_member_location("s3://bucket/artifacts/mf") == "s3://bucket/artifacts/mf"
    for bad in ("artifacts/mf", "/srv/artifacts/../../etc", "/srv/./mf", "s3://bucket/a/../b", "C:\\mf"):
        with pytest.raises(ArtifactError):
            check_member_location(bad)


def test_job_fits_scores_and_writes_a_verified_artifact(serving_artifacts, tmp_path):
    out = tmp_path / "ensemble"
    result = run_ensemble(_spec(serving_artifacts, out))
    assert sorted(p.name for p in out.iterdir()) == ["ensemble.json", "manifest.json"]
    manifest = verify_artifact(out, ENSEMBLE_FORMAT)
    assert manifest["files"] == {"ensemble.json": sha256_file(out / "ensemble.json")}
    assert manifest["dataset_fingerprint"] == serving_artifacts["data"].fingerprint
    assert set(result.weights) == {"two_tower", "mf"} and sum(result.weights.values()) == pytest.approx(1.0)
    assert sum(result.rating_weights.values()) == pytest.approx(1.0)
    assert np.isfinite([result.metrics["test_rmse"], result.metrics["test_ndcg@10"]]).all()
    assert set(result.member_metrics) == {"two_tower", "mf"}
    art = load_ensemble_artifact(out)
    assert art.weights == pytest.approx(result.weights)
    assert art.members == {"two_tower": str(serving_artifacts["v1"].resolve()),
                           "mf": str(serving_artifacts["mf"].resolve())}
    assert art.member_sha256["mf"] == member_manifest_sha256(art.members["mf"])
    assert art.metrics["test_ndcg@10"] == pytest.approx(result.metrics["test_ndcg@10"])

    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    doc = json.loads((tampered / "ensemble.json").read_text())
    doc["weights"] = {"two_tower": 0.01, "mf": 0.99}
    (tampered / "ensemble.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="sha256"):
        load_ensemble_artifact(tampered)
    # rewritten with a matching manifest hash, a traversing member location is still refused
    doc["artifacts"]["mf"] = "/tmp/../etc/mf"
    (tampered / "ensemble.json").write_text(json.dumps(doc))
    manifest["files"]["ensemble.json"] = sha256_file(tampered / "ensemble.json")
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="'..'"):
        load_ensemble_artifact(tampered)


def test_a_member_changed_after_the_fit_is_refused(serving_artifacts, tmp_path):
    mf = tmp_path / "mf"
    shutil.copytree(serving_artifacts["mf"], mf)
    spec = _spec(serving_artifacts, tmp_path / "ensemble", fit={"steps": 5})
    spec = spec.model_copy(update={"members": {**spec.members, "mf": str(mf)}})
    run_ensemble(spec)
    with open(mf / "manifest.json", "a") as f:  # a retrained member: same folder, another manifest
        f.write("\n")
    with pytest.raises(ArtifactError, match="member mf .* changed since the ensemble was fitted"):
        load_ensemble_artifact(tmp_path / "ensemble")
    assert load_ensemble_artifact(tmp_path / "ensemble", check_members=False).members["mf"] == str(mf)


def test_members_from_another_split_are_refused(serving_artifacts, tmp_path):
    spec = _spec(serving_artifacts, tmp_path / "ensemble")
    other = spec.model_copy(update={"data": spec.data.model_copy(update={"max_users": 50})})
    with pytest.raises(SpecError, match=r"members\.\w+: trained on data"):
        run_ensemble(other)
    assert not (tmp_path / "ensemble").exists()


def test_cli_entry_takes_overrides_and_prints_one_json_line(serving_artifacts, tmp_path, capsys):
    import yaml

    spec = _spec(serving_artifacts, tmp_path / "ensemble")
    path = tmp_path / "ensemble.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    assert main_ensemble(str(path), {"fit.steps": 10, "name": "from-cli"}) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["name"] == "from-cli" and line["artifact"] == str((tmp_path / "ensemble").resolve())
    assert set(line["weights"]) == {"two_tower", "mf"} and "test_ndcg@10" in line["test"]
    (tmp_path / "ensemble" / "notes.txt").write_text("not an ensemble file")
    assert main_ensemble(str(path)) == 2
    assert "holds other files (notes.txt)" in capsys.readouterr().err


def test_members_and_output_may_be_storage_uris(serving_artifacts, tmp_path, monkeypatch):
    """``file://`` stands in for an object store: members are fetched into the cache, the artifact is uploaded."""
    monkeypatch.setenv("LMREC_CACHE_DIR", str(tmp_path / "cache"))
    members = {m: f"file://{serving_artifacts[key].resolve()}" for m, key in (("two_tower", "v1"), ("mf", "mf"))}
    spec = _spec(serving_artifacts, f"file://{tmp_path}/remote/ensemble", members=members, fit={"steps": 5})
    result = run_ensemble(spec)
    assert result.artifact_path == f"file://{tmp_path}/remote/ensemble"
    assert sorted(p.name for p in (tmp_path / "remote" / "ensemble").iterdir()) == ["ensemble.json", "manifest.json"]
    art = load_ensemble_artifact(result.artifact_path)
    assert art.members == members and art.weights == pytest.approx(result.weights)


def test_mf_member_view_gives_the_numbers_of_the_model_it_was_exported_from(serving_artifacts):
    from lmrec.models.baselines import BiasedMF
    from lmrec.artifacts.mf import load_mf_artifact

    data = serving_artifacts["data"]
    params = load_mf_artifact(serving_artifacts["mf"]).manifest["params"]
    rec = load_mf_artifact(serving_artifacts["mf"]).recommender
    mf = BiasedMF(dim=params["factors"], l2=params["l2"], lr=params["lr"], epochs=params["epochs"],
                  seed=params["seed"]).fit(data.train, data.n_users, data.n_items)
    users, items = data.valid["user_idx"].to_numpy(), data.valid["item_idx"].to_numpy()
    np.testing.assert_allclose(rec.predict(users, items), mf.predict(users, items), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rec.score_items(users[:5]), mf.score_items(users[:5]), rtol=1e-5, atol=1e-5)
    assert rec.fit(data.train, data.n_users, data.n_items) is rec
    with pytest.raises(ValueError, match="MF artifact has"):
        rec.fit(data.train, data.n_users + 1, data.n_items)


def test_item_item_members_get_ranking_weights_and_serve(serving_artifacts, tmp_path):
    """EASE and item-kNN artifacts are members like MF: ranking weights for all four, rating weights only for the
    members that rate, and Serve's args resolve every member's artifact from the ensemble."""
    from lmrec.serving.app import resolve_ensemble, ServeAppArgs

    members = {m: str(serving_artifacts["v1" if m == "two_tower" else m]) for m in
               ("two_tower", "mf", "ease", "item_knn")}
    out = tmp_path / "ensemble"
    result = run_ensemble(_spec(serving_artifacts, out, members=members, fit={"steps": 20}))
    assert set(result.weights) == set(members) and sum(result.weights.values()) == pytest.approx(1.0)
    assert set(result.rating_weights) == {"two_tower", "mf"}
    assert set(result.member_metrics["ease"]) == {"test_ndcg@10"}  # ranks only: no RMSE
    assert np.isfinite(result.metrics["test_rmse"])
    args = resolve_ensemble(ServeAppArgs(ensemble_artifact=str(out)))
    assert args.ease_artifact == str(serving_artifacts["ease"].resolve())
    assert args.item_knn_artifact == str(serving_artifacts["item_knn"].resolve())
    assert args.served_weights() == pytest.approx(result.weights)
    swapped = {**members, "ease": members["item_knn"]}
    with pytest.raises(ArtifactError, match=r"members\.ease: .* of kind item_knn"):
        run_ensemble(_spec(serving_artifacts, tmp_path / "bad", members=swapped, fit={"steps": 5}))
