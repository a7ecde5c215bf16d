"""Per-directory attribute index, for backends whose listings carry no metadata (S3).

S3's LIST returns names, sizes, times and ETags but no user metadata, so modes,
owners, preserved mtimes and "this is a symlink" would each cost a HEAD per
file.  vaultfs therefore also keeps, in each directory it writes to, one small
JSON artifact named :data:`INDEX_NAME` mapping entry names to the ETag and the
metadata it wrote.  A listing reads it with one GET and applies an entry only if
its ETag still matches the listed artifact (directories have no ETag and always
match), so a file another client replaced falls back to defaults, never to
stale attributes.  Each artifact's own metadata stays authoritative; the index
is a cache of it, and losing an update (a crash, two mounts racing) only costs
accuracy until the file is looked up by name.

Updates are collected per directory and written in the background at most once
per :data:`FLUSH_DELAY` seconds (read, merge, write), and on unmount.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import trio

from drivers.errors import DriverError, NotFound

from .backend import Backend

log = logging.getLogger(__name__)

INDEX_NAME = ".vaultfs-attrs"
FLUSH_DELAY = 1.0
FORMAT = 1

#: name -> (etag, metadata); a name ending in "/" is a sub-directory.
Index = dict[str, tuple[str, dict[str, str]]]


def split_key(key: str) -> tuple[str, str]:
    """(directory prefix, name in it) of an artifact key or a directory key ending in '/'."""
    stripped = key[:-1] if key.endswith("/") else key
    parent, _, name = stripped.rpartition("/")
    return (parent + "/" if parent else ""), name + ("/" if key.endswith("/") else "")


class AttrIndex:
    """Reads and writes the per-directory indexes of one backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._pending: dict[tuple[str, str], dict[str, tuple[str, dict[str, str]] | None]] = {}
        # Updates being written now: still not in the stored index until the write ends.
        self._writing: dict[tuple[str, str], dict[str, tuple[str, dict[str, str]] | None]] = {}
        self._wakeup = trio.Event()

    async def load(self, container: str, directory: str) -> Index:
        """The index of ``directory`` (a prefix ending in '/', or '' for the container's top)."""
        try:
            raw = await self.backend.read(container, directory + INDEX_NAME, 0, 1 << 26)
        except NotFound:
            return {}
        except DriverError as exc:
            log.debug("cannot read the attribute index of %s/%s: %s", container, directory, exc)
            return {}
        try:
            body = json.loads(raw)
            return {name: (str(etag), dict(meta)) for name, (etag, meta) in body["entries"].items()}
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed attribute index in %s/%s", container, directory)
            return {}

    def with_pending(self, container: str, directory: str, index: Index) -> Index:
        """``index`` with the updates this mount has made but not written yet."""
        merged = index
        for source in (self._writing, self._pending):  # older first
            changes = source.get((container, directory))
            if changes:
                merged = dict(merged)
                for name, entry in changes.items():
                    if entry is None:
                        merged.pop(name, None)
                    else:
                        merged[name] = entry
        return merged

    def record(self, container: str, key: str, etag: str, meta: Mapping[str, str] | None) -> None:
        """Note that ``key`` now has ``meta`` at version ``etag`` (``None``: it is gone)."""
        directory, name = split_key(key)
        entry = None if meta is None else (etag, dict(meta))
        self._pending.setdefault((container, directory), {})[name] = entry
        self._wakeup.set()

    async def run(self) -> None:
        """Write pending updates every :data:`FLUSH_DELAY` seconds, for ever."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await trio.sleep(FLUSH_DELAY)
            await self.flush()

    async def flush(self) -> None:
        """Write every pending update now."""
        pending, self._pending = self._pending, {}
        self._writing = pending
        for (container, directory), changes in pending.items():
            try:
                index = await self.load(container, directory)
                for name, entry in changes.items():
                    if entry is None:
                        index.pop(name, None)
                    else:
                        index[name] = entry
                await self._store(container, directory, index)
            except DriverError as exc:
                log.warning("cannot update the attribute index of %s/%s: %s", container, directory, exc)
        self._writing = {}

    async def _store(self, container: str, directory: str, index: Index) -> None:
        key = directory + INDEX_NAME
        if not index:
            await self.backend.delete(container, key)
            return
        body = {"format": FORMAT, "entries": {n: [etag, meta] for n, (etag, meta) in sorted(index.items())}}
        await self.backend.put_bytes(container, key, json.dumps(body, separators=(",", ":")).encode())
