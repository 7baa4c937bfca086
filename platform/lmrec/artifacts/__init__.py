"""Artifact formats below training and serving: the MF and item-item (EASE, item-kNN) member artifacts (written
with the sha256 manifest of ``lmrec.artifacts.two_tower``, loaded verified) and the Ray-free score tables that
evaluation, the offline ensemble and Serve all score with."""
