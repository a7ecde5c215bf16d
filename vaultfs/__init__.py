"""vaultfs: mount storage backends (S3, Lyve Cloud, local directories, plug-ins) as a directory tree."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("vaultfs")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
