"""Serving tests use the session fixture ``serving_artifacts`` of tests/conftest.py (shared with tests/reliability)."""
