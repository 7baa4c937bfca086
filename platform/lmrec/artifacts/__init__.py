"""Artifacts: what training writes and evaluation, the offline ensemble and Serve read, below all three.

One manifest for every kind (``manifest``: format and version, the kind's fields, sha256 of every file; verified
before any weights are read) and a typed loader per kind:

======================  ==========================  =====================================================
format                  module                      loader
======================  ==========================  =====================================================
``lmrec.two_tower/1``   ``artifacts.two_tower``     ``load_artifact``: model, recommender, tokenizer
``lmrec.mf/1``          ``artifacts.mf``            ``load_mf_artifact``: factors, biases, score table
``lmrec.item_item/1``   ``artifacts.item_item``     ``load_item_item_artifact``: EASE / item-kNN matrix
``lmrec.ensemble/1``    ``artifacts.ensemble``      ``load_ensemble_artifact``: fusion weights, members
``lmrec.meta_learning/1`` ``artifacts.meta``        ``load_meta_artifact``: the cold-start user model
======================  ==========================  =====================================================

``load_any`` picks the loader from the manifest's format. ``tables`` holds the Ray-free id maps and score tables
the members score with.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

LOADERS = {
    "lmrec.two_tower/1": "lmrec.artifacts.two_tower:load_artifact",
    "lmrec.mf/1": "lmrec.artifacts.mf:load_mf_artifact",
    "lmrec.item_item/1": "lmrec.artifacts.item_item:load_item_item_artifact",
    "lmrec.ensemble/1": "lmrec.artifacts.ensemble:load_ensemble_artifact",
    "lmrec.meta_learning/1": "lmrec.artifacts.meta:load_meta_artifact",
}


def load_any(directory: str | Path):
    """Load the artifact at ``directory`` with its kind's loader (chosen by the manifest's format, then verified by
    that loader); ``ArtifactError`` for a folder with no manifest or a format lmrec does not know."""
    from lmrec.artifacts.manifest import ArtifactError, artifact_format

    fmt = artifact_format(directory)
    if fmt not in LOADERS:
        raise ArtifactError(f"{directory}: artifact format {fmt!r} is none of {', '.join(LOADERS)}")
    module, name = LOADERS[fmt].split(":")
    return getattr(import_module(module), name)(directory)
