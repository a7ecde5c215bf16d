"""Open files: reads from the backend, writes to a local staging file, uploads on flush.

One :class:`OpenFile` per inode is shared by every handle on it, so two
descriptors of one file see each other's writes.  A file is staged (copied to
``staging_dir``) on its first write or truncate; reads of a staged file come
from the staging copy, reads of a clean one from :mod:`vaultfs.reader`.

``flush`` (every ``close(2)``) and ``fsync`` upload a dirty file and return the
upload's error, so ``close`` succeeding means the data is in the backend.  A
failed upload keeps the staging file and the file stays dirty: the next flush
retries.  ``release`` only frees.

Lock order: ``OpenFile.lock`` guards staging and upload of one file and is the
only lock here; it is never held while waiting for another file's lock.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import trio

from . import attrs, metrics
from .backend import Backend
from .namespace import Entry, Kind, Namespace, Node
from .reader import Reader, ReadState

log = logging.getLogger(__name__)


@dataclass(eq=False)
class OpenFile:
    """The state of one open inode."""

    node: Node
    handles: int = 0
    staged: Path | None = None
    fd: int = -1
    dirty: bool = False
    dirty_since: float = 0.0
    unlinked: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)
    reading: ReadState | None = None


class Files:
    """The open-file table: handles to :class:`OpenFile` objects, staging and upload."""

    def __init__(self, namespace: Namespace, backend: Backend, reader: Reader, staging_dir: Path) -> None:
        self.ns = namespace
        self.backend = backend
        self.reader = reader
        self.staging_dir = staging_dir
        staging_dir.mkdir(parents=True, exist_ok=True)
        self._by_ino: dict[int, OpenFile] = {}
        self._handles: dict[int, OpenFile] = {}
        self._next_fh = 1
        self._kernel_etag: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._handles)

    def start(self, nursery: trio.Nursery) -> None:
        """Start read-ahead and the attribute index's writer in ``nursery``."""
        self.reader.start(nursery)
        if self.ns.index is not None:
            nursery.start_soon(self.ns.index.run)

    # -- opening ---------------------------------------------------------
    def _attach(self, node: Node) -> int:
        of = self._by_ino.get(node.ino)
        if of is None:
            of = self._by_ino[node.ino] = OpenFile(node)
        of.handles += 1
        node.opens += 1
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = of
        return fh

    def handle(self, fh: int) -> OpenFile:
        """The open file behind handle ``fh``."""
        return self._handles[fh]

    async def open(self, node: Node, truncate: bool) -> tuple[int, bool]:
        """Open ``node``; return the handle and whether the kernel may keep its page cache."""
        fh = self._attach(node)
        of = self._handles[fh]
        if truncate:
            async with of.lock:
                await self._stage(of, load=False)
                os.ftruncate(of.fd, 0)
                self._changed(of, 0)
        keep = of.staged is None and self._kernel_etag.get(node.ino) == node.etag
        self._kernel_etag[node.ino] = node.etag
        return fh, keep

    async def create(self, parent: Node, name: str, mode: int, uid: int, gid: int) -> tuple[int, Node]:
        """Create an empty file (uploaded on the first flush) and open it."""
        now = time.time()
        meta = attrs.encode(mode, uid, gid, time.time_ns())
        node = self.ns.remember(parent, name, Entry(Kind.FILE, 0, now, "", meta))
        self.ns.add_unflushed(node)
        fh = self._attach(node)
        of = self._handles[fh]
        await self._stage(of, load=False)
        self._changed(of, 0)
        return fh, node

    # -- staging ---------------------------------------------------------
    async def _stage(self, of: OpenFile, load: bool) -> None:
        """Give ``of`` a staging file, with the artifact's content when ``load``."""
        if of.staged is not None:
            return
        path = self.staging_dir / f"{of.node.ino:x}-{uuid.uuid4().hex[:8]}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if load and of.node.size > 0:
                await self.backend.read_into_file(of.node.container, of.node.key, str(path))
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        of.staged, of.fd = path, fd
        of.node.local = True

    def _changed(self, of: OpenFile, size: int) -> None:
        """The staged data changed: new size and mtime, and the file now waits for upload."""
        of.node.size = size
        of.node.mtime_ns = time.time_ns()
        if not of.dirty:
            of.dirty, of.dirty_since = True, time.monotonic()
            self.publish_pending()

    # -- data ------------------------------------------------------------
    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` bytes at ``offset``."""
        of = self._handles[fh]
        if of.staged is not None:
            return os.pread(of.fd, size, offset)
        if of.reading is None:
            # Pinned at the first read for as long as the file stays open: one version per open.
            node = of.node
            of.reading = ReadState(node.container, node.key, node.etag, node.size)
        return await self.reader.read(of.reading, offset, size)

    async def write(self, fh: int, offset: int, buf: bytes) -> int:
        """Write ``buf`` at ``offset`` into the staging copy."""
        of = self._handles[fh]
        async with of.lock:
            await self._stage(of, load=True)
            written = os.pwrite(of.fd, buf, offset)
            self._changed(of, max(of.node.size, offset + written))
        return written

    async def truncate(self, node: Node, size: int) -> None:
        """Set ``node``'s length; an unopened file is uploaded at once."""
        of = self._by_ino.get(node.ino)
        if of is None:
            fh = self._attach(node)
            try:
                await self.truncate(node, size)
                await self.flush(fh)
            finally:
                await self.release(fh)
            return
        async with of.lock:
            await self._stage(of, load=size > 0)
            os.ftruncate(of.fd, size)
            self._changed(of, size)

    async def flush(self, fh: int) -> None:
        """Upload the file if it is dirty (every close(2) and fsync(2) land here)."""
        of = self._handles[fh]
        if not of.dirty or of.unlinked:
            return
        async with of.lock:
            if not of.dirty or of.unlinked or of.staged is None:
                return
            node = of.node
            meta = attrs.encode(node.mode, node.uid, node.gid, node.mtime_ns, node.meta)
            try:
                info = await self.backend.put_file(node.container, node.key, str(of.staged), metadata=meta)
            except Exception:
                metrics.WRITEBACK_FAILURES.labels(self.backend.name).inc()
                self.publish_pending()
                log.error("upload of %s/%s failed; the data stays in %s", node.container, node.key, of.staged)
                raise
            of.dirty = False
            self.ns.remove_unflushed(node)
            self.publish_pending()
            node.etag, node.size, node.meta = info.etag, info.size, meta
            self.ns.record(node)
            self._kernel_etag[node.ino] = info.etag

    async def release(self, fh: int) -> None:
        """Free handle ``fh``; the last handle of a clean file drops its staging copy."""
        of = self._handles.pop(fh)
        of.handles -= 1
        of.node.opens -= 1
        if of.handles > 0:
            return
        del self._by_ino[of.node.ino]
        of.node.local = False
        self.ns.remove_unflushed(of.node)
        if of.fd >= 0:
            os.close(of.fd)
        if of.staged is not None:
            if of.dirty and not of.unlinked:
                log.error(
                    "%s/%s was closed with an upload still failing; its data is kept in %s",
                    of.node.container,
                    of.node.key,
                    of.staged,
                )
            else:
                of.staged.unlink(missing_ok=True)
        self.ns.release_if_unused(of.node)

    def publish_pending(self) -> None:
        """Export the files waiting for upload (dirty, staged data) as the write-back gauges."""
        waiting = [of for of in self._by_ino.values() if of.dirty and not of.unlinked]
        name = self.backend.name
        metrics.WRITEBACK_PENDING.labels(name).set(len(waiting))
        metrics.WRITEBACK_PENDING_BYTES.labels(name).set(sum(of.node.size for of in waiting))
        oldest = min((of.dirty_since for of in waiting), default=None)
        metrics.WRITEBACK_OLDEST_AGE.labels(name).set(0 if oldest is None else time.monotonic() - oldest)

    def discard(self, node: Node) -> None:
        """``node`` was deleted: its open handles keep working but never upload again."""
        of = self._by_ino.get(node.ino)
        if of is not None:
            of.unlinked = True

    def dirty_metadata(self, node: Node) -> bool:
        """Whether ``node`` has unflushed data, so new attributes ride along with its upload."""
        of = self._by_ino.get(node.ino)
        return of is not None and of.dirty

    def is_open(self, node: Node) -> OpenFile | None:
        """The open state of ``node``, if it is open."""
        return self._by_ino.get(node.ino)

    async def flush_node(self, node: Node) -> None:
        """Upload ``node`` now if it is open and dirty (before a rename copies it)."""
        of = self._by_ino.get(node.ino)
        if of is not None and of.dirty:
            fh = next(h for h, o in self._handles.items() if o is of)
            await self.flush(fh)

    async def flush_all(self) -> int:
        """Upload every dirty file and the pending attribute index; return how many files failed."""
        failed = 0
        for fh, of in list(self._handles.items()):
            if of.dirty:
                try:
                    await self.flush(fh)
                except Exception:
                    failed += 1
        if self.ns.index is not None:
            await self.ns.index.flush()
        return failed


def is_write_flags(flags: int) -> bool:
    """Whether open(2) flags ask for writing."""
    return flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
