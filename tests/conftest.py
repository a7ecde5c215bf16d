"""Shared fixtures: the SeaweedFS S3 server (tests/s3server.py) and driver factories."""

from __future__ import annotations

pytest_plugins = ["s3server", "mounts"]
