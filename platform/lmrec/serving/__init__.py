"""Serving: the trained recommenders as a Ray Serve application (HTTP API, batching, cold start, hot swap).

Modules: ``app`` (typed builder, the Serve ``import_path``), ``api`` (schemas + FastAPI routes), ``router``
(request logic over N members, Ray-free; with ``spaces``: id maps and alignments, ``added_items``: run-time
items), ``ensemble`` (the Serve ingress around the router), ``protocol`` (what members can do), ``scorers``
(member deployments), ``encoder_service`` (batched text encoder), ``members`` (Ray-free member logic; artifacts
and score tables: ``lmrec.artifacts``), ``cli`` (``lmrec serve``). Importing this package imports nothing heavy;
the submodules import Ray Serve.
"""
