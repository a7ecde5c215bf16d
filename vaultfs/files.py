"""Open files: reads from the backend, writes to a local staging file, hands it to write-back on flush.

One :class:`OpenFile` per inode is shared by every handle on it, so two
descriptors of one file see each other's writes.  A file is staged (copied to
``staging_dir``) on its first write or truncate; reads of a staged file come
from the staging copy, reads of a clean one from :mod:`vaultfs.reader`.

``flush`` (every ``close(2)``) of a dirty file hands the staging file to
:mod:`vaultfs.writeback`, which makes it durable in its journal and uploads it
in the background; ``close`` succeeding means the data is in that journal.
``fsync`` also waits for the upload and returns its error.  A handed-over file
is *sealed*: it is never written again, and a later write first copies it.

While an upload is pending, its :class:`OpenFile` outlives the last ``release``
(it is *pinned*, and counts as one open of its node), so the namespace keeps
showing the staged size and time and a re-open reads the staged copy.  Once the
newest version is stored, :meth:`Files._stored` lets it go.

Lock order: ``OpenFile.lock`` guards staging and hand-over of one file and is
the only lock here; it is never held while waiting for another file's lock.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import trio

from drivers.base import ArtifactInfo
from drivers.errors import DriverError

from . import attrs, writebehind
from .backend import Backend
from .fileahead import FilesAhead
from .namespace import Entry, Kind, Namespace, Node
from .reader import Reader, ReadState
from .writeback import Upload, WriteBack

log = logging.getLogger(__name__)


@dataclass(eq=False)
class OpenFile:
    """The state of one open inode."""

    node: Node
    handles: int = 0
    staged: Path | None = None
    fd: int = -1
    dirty: bool = False
    #: The staging file belongs to write-back (a pending or stored upload): copy before writing.
    sealed: bool = False
    #: A pending upload keeps this object (and one open of its node) alive after the last release.
    pinned: bool = False
    unlinked: bool = False
    #: The staged bytes before this offset are on their way to the disk (see :mod:`vaultfs.writebehind`).
    behind: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)
    reading: ReadState | None = None


class Files:
    """The open-file table: handles to :class:`OpenFile` objects, staging and upload."""

    def __init__(
        self,
        namespace: Namespace,
        backend: Backend,
        reader: Reader,
        staging_dir: Path,
        upload_workers: int = 8,
        files_ahead: int = 0,
    ) -> None:
        self.ns = namespace
        self.backend = backend
        self.reader = reader
        self.ahead = FilesAhead(namespace, reader, files_ahead)
        self.staging_dir = staging_dir
        # A handed-over staging file is never written again (a later write copies it first), so
        # the driver may adopt it as the stored data (the local driver hard-links it) instead of copying.
        put = functools.partial(backend.put_file, adopt=True)
        self.writeback = WriteBack(staging_dir, backend.name, put, upload_workers, self._stored)
        self._by_ino: dict[int, OpenFile] = {}
        self._handles: dict[int, OpenFile] = {}
        # The open file whose data each pending upload carries.
        self._uploading: dict[tuple[str, str], OpenFile] = {}
        self._next_fh = 1
        self._kernel_etag: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._handles)

    def resume(self) -> int:
        """Queue the uploads a previous run left in the journal, and show their files; return how many."""
        uploads = self.writeback.replay()
        for up in uploads:
            self._adopt(up)
        return len(uploads)

    def _adopt(self, up: Upload) -> None:
        entry = Entry(Kind.FILE, up.size, up.mtime_ns / 1e9, "", up.metadata)
        node = self.ns.adopt(up.container, up.artifact, entry)
        node.local = True
        self.ns.add_unflushed(node)
        of = self._by_ino[node.ino] = OpenFile(node, staged=up.staging, sealed=True)
        of.fd = os.open(up.staging, os.O_RDONLY)
        self._pin(of)

    def start(self, nursery: trio.Nursery) -> None:
        """Start read-ahead, metadata look-ahead, the write-back workers and the attribute index's writer
        in ``nursery``."""
        self.reader.start(nursery)
        self.ns.start(nursery)
        nursery.start_soon(self.writeback.run)
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
                of.behind = 0
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
        """Give ``of`` a writable staging file, with the current content when ``load``.

        A sealed file (handed to write-back) is copied, not downloaded: it is
        newer than the backend's version.
        """
        if of.staged is not None and not of.sealed:
            return
        path = self.staging_dir / f"{of.node.ino:x}-{uuid.uuid4().hex[:8]}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if load and of.sealed:
                await trio.to_thread.run_sync(_copy_fd, of.fd, fd)
            elif load and of.node.size > 0:
                await self.backend.read_into_file(of.node.container, of.node.key, str(path))
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        if of.sealed:
            os.close(of.fd)  # the sealed file is write-back's to delete
        of.staged, of.fd, of.sealed, of.behind = path, fd, False, 0
        of.node.local = True

    def _changed(self, of: OpenFile, size: int) -> None:
        """The staged data changed: new size and mtime, and the file must be handed over again."""
        of.node.size = size
        of.node.mtime_ns = time.time_ns()
        of.dirty = True

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
            if offset == 0:
                self.ahead.reading(node)
        return await self.reader.read(of.reading, offset, size)

    async def write(self, fh: int, offset: int, buf: bytes) -> int:
        """Write ``buf`` at ``offset`` into the staging copy."""
        of = self._handles[fh]
        if of.staged is None or of.sealed or of.lock.locked():
            async with of.lock:
                await self._stage(of, load=True)
                return self._write(of, offset, buf)
        # Staged, writable, and nobody staging or handing it over: _write does not await, so nothing
        # can interleave, and taking the lock (a trip through the scheduler) would only cost time.
        return self._write(of, offset, buf)

    def _write(self, of: OpenFile, offset: int, buf: bytes) -> int:
        written = os.pwrite(of.fd, buf, offset)
        self._changed(of, max(of.node.size, offset + written))
        of.behind = writebehind.advance(of.fd, of.behind, offset + written)
        return written

    async def truncate(self, node: Node, size: int) -> None:
        """Set ``node``'s length; a file no descriptor has open is handed to write-back at once."""
        of = self._by_ino.get(node.ino)
        if of is None or of.handles == 0:
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
            of.behind = min(of.behind, size)

    async def flush(self, fh: int) -> None:
        """Hand the file to write-back if it is dirty (every close(2) lands here)."""
        await self._flush(self._handles[fh])

    async def fsync(self, fh: int) -> None:
        """Hand the file over, then wait for its upload and raise the upload's error."""
        of = self._handles[fh]
        await self._flush(of)
        if not of.unlinked:
            await self.writeback.sync(of.node.container, of.node.key)

    async def _flush(self, of: OpenFile) -> None:
        if not of.dirty or of.unlinked:
            return
        async with of.lock:
            if not of.dirty or of.unlinked or of.staged is None:
                return
            node = of.node
            meta = attrs.encode(node.mode, node.uid, node.gid, node.mtime_ns, node.meta)
            key = (node.container, node.key)
            # All set before the hand-over: the upload may finish, and _stored run, before submit returns.
            self._uploading[key] = of
            self._pin(of)
            of.dirty, of.sealed = False, True
            node.meta = meta
            try:
                await self.writeback.submit(
                    node.container, node.key, of.staged, meta, node.size, node.mtime_ns
                )
            except Exception as exc:
                of.dirty = True  # the next close or fsync hands it over again
                if isinstance(exc, DriverError):
                    of.sealed = False  # refused by the backend: the staging file is ours again
                if self.writeback.pending(*key) is None:
                    del self._uploading[key]
                    of.pinned = False
                    node.opens -= 1  # the pin's; the handle flushing keeps the file open
                if isinstance(exc, OSError):
                    log.error(
                        "cannot journal %s/%s; the data stays in %s", node.container, node.key, of.staged
                    )
                raise

    def _pin(self, of: OpenFile) -> None:
        if not of.pinned:
            of.pinned = True
            of.node.opens += 1

    def _stored(self, up: Upload, info: ArtifactInfo) -> None:
        """Write-back stored the newest version of an artifact: its open file may go."""
        of = self._uploading.pop(up.key, None)
        if of is None:
            return
        node = of.node
        if not of.dirty and not of.unlinked:
            node.etag, node.meta = info.etag, up.metadata
            # Stored as it is here: listings find it in the backend again, and if another
            # client deletes it while it is still open, it is gone, as any stored file.
            self.ns.remove_unflushed(node)
            self.ns.record(node)
            self._kernel_etag[node.ino] = info.etag
        self._unpin(of)

    def _unpin(self, of: OpenFile) -> None:
        if of.pinned:
            of.pinned = False
            of.node.opens -= 1
            if of.handles == 0:
                self._close(of)

    async def release(self, fh: int) -> None:
        """Free handle ``fh``; the last one frees the file unless an upload still needs it."""
        of = self._handles.pop(fh)
        of.handles -= 1
        of.node.opens -= 1
        if of.handles == 0 and not of.pinned:
            self._close(of)

    def _close(self, of: OpenFile) -> None:
        """Drop an open file nobody uses any more; a sealed staging file is write-back's to delete."""
        del self._by_ino[of.node.ino]
        of.node.local = False
        self.ns.remove_unflushed(of.node)
        if of.fd >= 0:
            os.close(of.fd)
        if of.staged is not None and not of.sealed:
            if of.dirty and not of.unlinked:
                log.error(
                    "%s/%s was closed while it could not be journaled; its data is kept in %s",
                    of.node.container,
                    of.node.key,
                    of.staged,
                )
            else:
                of.staged.unlink(missing_ok=True)
        self.ns.release_if_unused(of.node)

    def publish_pending(self) -> None:
        """Refresh the write-back gauges (the age of the oldest upload grows by itself)."""
        self.writeback.publish()

    async def discard(self, node: Node) -> None:
        """``node`` was deleted: its open handles keep working, but nothing of it is uploaded any more."""
        of = self._by_ino.get(node.ino)
        if of is not None:
            of.unlinked = True
        await self.writeback.cancel(node.container, node.key)
        if of is not None and self._uploading.get((node.container, node.key)) is of:
            del self._uploading[(node.container, node.key)]
            self._unpin(of)

    async def amend_metadata(self, node: Node) -> bool:
        """Carry ``node``'s new attributes with its unstored data; False if it has none (store them now)."""
        of = self._by_ino.get(node.ino)
        if of is not None and of.dirty:
            return True  # the next flush carries them
        meta = attrs.encode(node.mode, node.uid, node.gid, node.mtime_ns, node.meta)
        if await self.writeback.amend(node.container, node.key, meta):
            node.meta = meta
            return True
        return False

    def is_open(self, node: Node) -> OpenFile | None:
        """The open state of ``node``, if it is open."""
        return self._by_ino.get(node.ino)

    async def sync_node(self, node: Node) -> None:
        """Put ``node``'s data in the backend now (before a rename copies it)."""
        of = self._by_ino.get(node.ino)
        if of is not None:
            await self._flush(of)
        await self.writeback.sync(node.container, node.key)

    async def sync_tree(self, container: str, prefix: str) -> None:
        """Wait for the pending uploads below directory ``prefix`` (before the directory is renamed)."""
        await self.writeback.sync_prefix(container, prefix)

    async def flush_all(self) -> int:
        """Hand over every dirty file, upload everything pending, write the attribute index;
        return how many files remain unstored (their data stays in the journal)."""
        failed = 0
        for of in list(self._by_ino.values()):
            if of.dirty:
                try:
                    await self._flush(of)
                except Exception:
                    failed += 1
        failed += await self.writeback.drain()
        if self.ns.index is not None:
            await self.ns.index.flush()
        return failed


def _copy_fd(src: int, dst: int) -> None:
    """Copy all of file ``src`` into the empty file ``dst`` (in the kernel where it can)."""
    size = os.fstat(src).st_size
    done = 0
    while done < size:
        n = os.copy_file_range(src, dst, size - done, done, done)
        if n == 0:
            break
        done += n


def is_write_flags(flags: int) -> bool:
    """Whether open(2) flags ask for writing."""
    return flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
