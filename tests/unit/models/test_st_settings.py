"""``model.pooling: auto``: lmrec encodes as sentence-transformers does for the same folder (pooling mode, Normalize,
query/passage prompts), keeps the settings through the artifact, and a named mode reads nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec.config.train import TrainSpec
from lmrec.models.encoder import (
    DEFAULT_ENCODER,
    build_encoder,
    encode_all,
    encoder_settings,
    load_tokenizer,
    resolve_encoder_path,
    tiny_bert_config,
    tokenize_texts,
    with_prompt,
)
from lmrec.models.st_settings import EncoderSettings, UnsupportedFolderError, read_settings, resolve_settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_two_tower import one_thread, tiny_data  # noqa: E402,F401  (sibling test module; one_thread is autouse)

st = pytest.importorskip("sentence_transformers")

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = [p for p in sorted((ROOT / "jobs" / "examples").glob("*.yaml")) if p.stem != "own-data"]  # hub encoders

TEXTS = ["Toy Story (1995). Animation, comedy.", "a rainy night in the city", "Heat", "space opera with robots"]
PROMPTS = {"query": "query: ", "passage": "passage: "}


def _save_st_folder(hf_dir: Path, out: Path, pooling: str, normalize: bool, prompts: dict | None) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    modules = [Transformer(str(hf_dir)), Pooling(32, pooling_mode=pooling)] + ([Normalize()] if normalize else [])
    SentenceTransformer(modules=modules, prompts=prompts).save(str(out))
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, hidden-32 BERT with the default MiniLM tokenizer, as a plain HF folder."""
    from transformers import BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = load_tokenizer(DEFAULT_ENCODER)
    torch.manual_seed(0)
    BertModel(tiny_bert_config(tokenizer.vocab_size)).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def cls_folder(hf_dir, tmp_path_factory) -> Path:
    """bge/e5-like: CLS pooling, Normalize, e5's prompts."""
    return _save_st_folder(hf_dir, tmp_path_factory.mktemp("st") / "cls-norm", "cls", True, PROMPTS)


@pytest.fixture(scope="module")
def mean_folder(hf_dir, tmp_path_factory) -> Path:
    return _save_st_folder(hf_dir, tmp_path_factory.mktemp("st") / "mean", "mean", False, None)


def _lmrec_vectors(folder: Path, side: str) -> np.ndarray:
    encoder = build_encoder(str(folder), "auto")
    ids, lengths = tokenize_texts(load_tokenizer(str(folder)), TEXTS, 64, encoder.prompt(side))
    return encode_all(encoder, torch.as_tensor(ids), torch.as_tensor(lengths)).numpy()


@pytest.mark.parametrize("side", ["query", "passage"])
def test_cls_normalize_prompts_match_sentence_transformers(cls_folder, side):
    assert read_settings(str(cls_folder)) == EncoderSettings("cls", True, "query: ", "passage: ")
    expected = st.SentenceTransformer(str(cls_folder), device="cpu").encode(TEXTS, prompt_name=side)
    got = _lmrec_vectors(cls_folder, side)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # the prompt matters: without it the vectors differ
    assert not np.allclose(got, st.SentenceTransformer(str(cls_folder), device="cpu").encode(TEXTS), atol=1e-3)


def test_mean_folder_without_normalize_matches(mean_folder):
    assert read_settings(str(mean_folder)) == EncoderSettings("mean", False)
    expected = st.SentenceTransformer(str(mean_folder), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(_lmrec_vectors(mean_folder, "passage"), expected, atol=1e-5)


def test_named_mode_reads_nothing(cls_folder):
    assert resolve_settings(str(cls_folder), "mean") == EncoderSettings("mean")
    assert build_encoder(str(cls_folder), "cls").settings == EncoderSettings("cls")


def test_default_encoder_declares_mean_and_normalize():
    """The bundled MiniLM folder (sentence-transformers 2.0 format: one boolean per pooling mode)."""
    assert encoder_settings(DEFAULT_ENCODER, "auto") == EncoderSettings("mean", True)
    assert encoder_settings(DEFAULT_ENCODER, "mean") == EncoderSettings("mean", False)


def test_plain_hf_folder_declares_nothing(hf_dir):
    assert read_settings(str(hf_dir)) == EncoderSettings()


def test_prompt_names_follow_sentence_transformers(tmp_path):
    def settings(prompts, default=None):
        folder = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        mods = [{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        (folder / "modules.json").write_text(json.dumps(mods))
        (folder / "config_sentence_transformers.json").write_text(
            json.dumps({"prompts": prompts, "default_prompt_name": default}))
        return read_settings(str(folder))

    # sentence-transformers >= 6 saves "document": "" beside a model's own "passage" prompt
    assert settings({"query": "q: ", "document": "", "passage": "p: "}).passage_prompt == "p: "
    assert settings({"query": "q: ", "document": "d: ", "passage": "p: "}).passage_prompt == "d: "
    # no query/document name: the default prompt on both sides; a name declared empty stops that fall-back
    s = settings({"retrieval": "r: "}, default="retrieval")
    assert (s.query_prompt, s.passage_prompt) == ("r: ", "r: ")
    s = settings({"retrieval": "r: ", "query": ""}, default="retrieval")
    assert (s.query_prompt, s.passage_prompt) == ("", "r: ")


def test_unsupported_pipeline_raises(tmp_path):
    mods = [{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
    (tmp_path / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(UnsupportedFolderError, match="Dense"):
        read_settings(str(tmp_path))
    mods[2]["type"] = "sentence_transformers.models.Normalize"
    (tmp_path / "modules.json").write_text(json.dumps(mods))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "weightedmean"}))
    with pytest.raises(UnsupportedFolderError, match="weightedmean"):
        read_settings(str(tmp_path))
    assert resolve_settings(str(tmp_path), "mean") == EncoderSettings("mean")  # a named mode still works


def test_hub_name_offline_falls_back(monkeypatch, tmp_path):
    """A hub name that is neither cached nor reachable: defaults, no crash."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert resolve_encoder_path("intfloat/e5-base-v2") == "intfloat/e5-base-v2"
    assert encoder_settings("intfloat/e5-base-v2", "auto") == EncoderSettings()


def test_prompts_and_settings_survive_training_and_the_artifact(cls_folder, tmp_path):
    """Item texts are tokenised with the passage prompt, user texts with the query prompt; the artifact records
    the settings and the reloaded encoder reproduces the trained item vectors from the raw texts."""
    from lmrec.artifacts.two_tower import load_artifact
    from lmrec.training.recipe import TwoTowerRecipe

    spec = TrainSpec.model_validate({
        "data": {"dataset": "tiny", "valid_from_train": 0.0,
                 "user_template": "A viewer.[ Recently rated: {recent_titles}.]"},
        "model": {"encoder": str(cls_folder), "pooling": "auto", "max_length": 24, "dim": 8, "user_text": True},
        "optim": {"epochs": 1, "batch_size": 64, "items_encoded_per_step": 6, "lr_encoder": 1e-3},
        "scaling": {"engine": "ddp"},
    })
    data = tiny_data(spec)
    tokenizer = load_tokenizer(str(cls_folder))
    assert tokenizer.decode(data.item_tokens[0][: data.item_lengths[0]]).startswith("[CLS] passage :")
    assert tokenizer.decode(data.user_tokens[0][: data.user_lengths[0]]).startswith("[CLS] query :")

    recipe = TwoTowerRecipe(spec, data, device=torch.device("cpu"))
    recipe.train_epoch(0, data.iter_train_batches(0, 64, 0))
    art = load_artifact(recipe.export_artifact(str(tmp_path / "art")))
    assert art.manifest["encoder"] == EncoderSettings("cls", True, "query: ", "passage: ").to_dict()
    assert art.model.encoder.settings == recipe.model.encoder.settings

    enc = art.tokenizer(with_prompt(data.item_texts[:3], art.model.encoder.prompt("passage")), padding=True,
                        truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        again = art.model.encoder(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(again, art.model.item_text[:3], atol=1e-5, rtol=1e-5)


def test_manifest_without_encoder_entry_loads_as_before(cls_folder, tmp_path):
    """Artifacts written before the settings existed carry only ``model_args.pooling``."""
    from lmrec.artifacts.manifest import MANIFEST
    from lmrec.artifacts.two_tower import load_artifact
    from lmrec.training.recipe import TwoTowerRecipe

    spec = TrainSpec.model_validate({
        "data": {"dataset": "tiny", "valid_from_train": 0.0},
        "model": {"encoder": str(cls_folder), "pooling": "cls", "max_length": 16, "dim": 8},
        "optim": {"epochs": 1, "items_encoded_per_step": 0, "lr_encoder": 0.0}, "scaling": {"engine": "ddp"},
    })
    recipe = TwoTowerRecipe(spec, tiny_data(spec), device=torch.device("cpu"))
    path = Path(recipe.export_artifact(str(tmp_path / "art")))
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["encoder"]
    (path / MANIFEST).write_text(json.dumps(manifest))
    assert load_artifact(path).model.encoder.settings == EncoderSettings("cls")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_specs_validate(path):
    """jobs/examples/ (hub encoders for GPU users): the first line runs it, the spec validates, pooling is auto."""
    from lmrec.config.base import load_spec

    lines = path.read_text().splitlines()
    assert lines[0] == f"# lmrec train jobs/examples/{path.name}"
    assert any("GPU" in line and "hub" in line for line in lines[:4])
    spec = load_spec(TrainSpec, path)
    assert spec.model.pooling == "auto" and spec.scaling.use_gpu is True
    assert (ROOT / spec.scaling.deepspeed_config).is_file()


def test_there_are_example_specs():
    assert {p.name for p in EXAMPLES} >= {"bge-base.yaml", "e5-base.yaml"}
