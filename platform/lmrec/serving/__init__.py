"""Serving: the trained recommenders as a Ray Serve application (HTTP API, batching, cold start, hot swap).

Modules: ``app`` (typed builder, the Serve ``import_path``), ``api`` (schemas + FastAPI routes), ``ensemble``
(fusion + ingress), ``scorers`` (member deployments), ``encoder_service`` (batched text encoder), ``members``
(Ray-free member logic; artifacts and score tables: ``lmrec.artifacts``), ``cli`` (``lmrec serve``). Importing this package
imports nothing heavy; the submodules import Ray Serve.
"""
