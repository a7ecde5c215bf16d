"""The pyfuse3 operations: translate kernel requests into namespace and file calls.

This module holds no storage logic.  It decodes names, checks the request
against the kind of node, calls :mod:`vaultfs.namespace` and
:mod:`vaultfs.files`, and turns errors into errno through the one table below.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import trio

from drivers.base import ArtifactInfo
from drivers.errors import (
    AccessDenied,
    AlreadyExists,
    DriverError,
    InvalidName,
    NameTooLong,
    NotEmpty,
    NotFound,
    QuotaExceeded,
    Unavailable,
)

from . import attrs, kernel, metrics
from .attrindex import INDEX_NAME
from .backend import Backend
from .files import Files, is_write_flags
from .namespace import Entry, Kind, Namespace, Node
from .tasks import run_all

log = logging.getLogger(__name__)

#: The one table from driver errors to errno.  Subclasses are found through the MRO.
ERRNO: dict[type[BaseException], int] = {
    NotFound: errno.ENOENT,
    AccessDenied: errno.EACCES,
    QuotaExceeded: errno.EDQUOT,
    AlreadyExists: errno.EEXIST,
    NotEmpty: errno.ENOTEMPTY,
    NameTooLong: errno.ENAMETOOLONG,
    InvalidName: errno.EINVAL,
    Unavailable: errno.EIO,
    DriverError: errno.EIO,
}


def errno_of(exc: BaseException) -> int:
    """The errno a driver error becomes (EIO for anything unexpected)."""
    for cls in type(exc).__mro__:
        if cls in ERRNO:
            return ERRNO[cls]
    return errno.EIO


class Fail(Exception):
    """A refusal decided by this layer, carrying its errno."""

    def __init__(self, code: int) -> None:
        super().__init__(os.strerror(code))
        self.code = code


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def operation(fn: F) -> F:
    """Count and time one FUSE operation and map its errors to errno."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        start = time.perf_counter()
        outcome = "ok"
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError as exc:
            outcome = errno.errorcode.get(exc.errno, "error").lower()
            raise
        except Fail as exc:
            outcome = errno.errorcode.get(exc.code, "error").lower()
            raise pyfuse3.FUSEError(exc.code) from None
        except DriverError as exc:
            code = errno_of(exc)
            outcome = metrics.outcome_of(exc)
            if code == errno.EIO:
                log.error("%s failed: %s", name, exc)
            else:
                log.debug("%s: %s", name, exc)
            raise pyfuse3.FUSEError(code) from None
        except OSError as exc:
            outcome = "error"
            log.error("%s failed: %s", name, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            outcome = "error"
            log.exception("%s failed unexpectedly", name)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            metrics.fuse_operation(self.backend.name, name, outcome).inc()
            metrics.fuse_duration(self.backend.name, name).observe(time.perf_counter() - start)

    return wrapper  # type: ignore[return-value]


@dataclass
class DirHandle:
    """One open directory: the entries read so far and where the backend listing resumes."""

    node: Node
    entries: list[tuple[str, Entry]] = field(default_factory=list)
    after: str | None = None
    done: bool = False


@dataclass(frozen=True)
class FsOptions:
    """What the operations layer needs from the mount's settings."""

    attr_ttl: float
    rename_limit: int
    read_only: bool = False
    #: Where the kernel mounted us, for tuning the mount's read-ahead; None without a kernel (tests).
    mountpoint: Path | None = None


class Operations(pyfuse3.Operations):
    """vaultfs's pyfuse3 request handlers."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, backend: Backend, namespace: Namespace, files: Files, options: FsOptions) -> None:
        super().__init__()
        self.backend = backend
        self.ns = namespace
        self.files = files
        self.options = options
        self._dirs: dict[int, DirHandle] = {}
        self._next_dir = 1
        self._read_ahead_pending = options.mountpoint is not None
        self.initialized = trio.Event()
        self._bytes_written = metrics.BYTES_WRITTEN.labels(backend.name)

    def init(self) -> None:
        self.initialized.set()

    # -- helpers ---------------------------------------------------------
    def attr(self, node: Node) -> pyfuse3.EntryAttributes:
        """The kernel's view of ``node``."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.st_mode = node.mode
        a.st_nlink = 2 if node.kind is Kind.DIR else 1
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_size = node.size
        a.st_blksize = 1 << 20
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        a.entry_timeout = a.attr_timeout = self.options.attr_ttl
        a.generation = 0
        return a

    def _dir(self, ino: int) -> Node:
        node = self.ns.get(ino)
        if node.kind is not Kind.DIR:
            raise Fail(errno.ENOTDIR)
        return node

    def _writable(self) -> None:
        if self.options.read_only:
            raise Fail(errno.EROFS)

    async def _child(self, parent: Node, name: bytes) -> Node:
        return await self.ns.lookup(parent, os.fsdecode(name))

    async def _maybe_child(self, parent: Node, name: bytes) -> Node | None:
        try:
            return await self._child(parent, name)
        except NotFound:
            return None

    # -- lookups and attributes -------------------------------------------
    @operation
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await self._child(self._dir(parent_inode), name)
        self.ns.lookup_ref(node)
        return self.attr(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.ns.forget(ino, count)
        metrics.INODES.labels(self.backend.name).set(len(self.ns))

    @operation
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.ns.get(inode)
        if not node.local:
            await self.ns.refresh(node)
        return self.attr(node)

    @operation
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.ns.get(inode)
        if fields.update_size:
            self._writable()
            if node.kind is not Kind.FILE:
                raise Fail(errno.EISDIR if node.kind is Kind.DIR else errno.EINVAL)
            await self.files.truncate(node, attr.st_size)
        changed = False
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
            changed = True
        if fields.update_uid:
            node.uid = attr.st_uid
            changed = True
        if fields.update_gid:
            node.gid = attr.st_gid
            changed = True
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
            changed = True
        if changed:
            self._writable()
            await self._store_attributes(node)
        return self.attr(node)

    async def _store_attributes(self, node: Node) -> None:
        """Persist mode, owner and mtime in the artifact's metadata."""
        if node.is_root or node.is_container:
            return  # nowhere to keep them
        if await self.files.amend_metadata(node):
            return  # they go with the file's pending upload
        meta = attrs.encode(node.mode, node.uid, node.gid, node.mtime_ns, node.meta)
        if node.kind is Kind.DIR:
            # Rewriting the empty marker is cheaper than a copy in place, creates
            # it for a directory implied only by its children, and works on
            # servers that cannot copy keys ending in "/" (SeaweedFS).
            info = await self.backend.put_bytes(node.container, node.key, b"", metadata=meta)
            node.marker = True
        else:
            info = await self.backend.update_metadata(node.container, node.key, meta)
        node.meta = meta
        node.etag = info.etag or node.etag
        self.ns.record(node)

    @operation
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.ns.get(inode)
        if node.kind is not Kind.LINK:
            raise Fail(errno.EINVAL)
        return await self.backend.read(node.container, node.key, 0, max(node.size, 1) + 4096)

    @operation
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # Object stores have no fixed size; report a large, never-full volume so
        # tools that check free space before writing do not refuse.
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 40
        s.f_files = s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = 255
        return s

    # -- directories -----------------------------------------------------
    @operation
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._dir(inode)
        fh = self._next_dir
        self._next_dir += 1
        handle = DirHandle(node)
        if node.children is not None and node.children_expires > time.monotonic():
            handle.entries = sorted(node.children.items())
            handle.done = True
        self._dirs[fh] = handle
        return fh

    @operation
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        h = self._dirs[fh]
        i = start_id
        while True:
            while i < len(h.entries):
                name, entry = h.entries[i]
                node = self.ns.remember(h.node, name, entry)
                if not pyfuse3.readdir_reply(token, os.fsencode(name), self.attr(node), i + 1):
                    return
                self.ns.lookup_ref(node)
                i += 1
            if h.done:
                break
            page, h.after = await self.ns.list_page(h.node, h.after)
            h.entries.extend(page)
            h.done = h.after is None
        if start_id == 0 or i >= len(h.entries):
            self.ns.cache_listing(h.node, dict(h.entries))

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @operation
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        parent = self._dir(parent_inode)
        if await self._maybe_child(parent, name) is not None:
            raise Fail(errno.EEXIST)
        sname = os.fsdecode(name)
        if parent.is_root:
            await self.backend.create_container(sname)
            node = self.ns.remember(parent, sname, Entry(Kind.DIR, mtime=time.time()))
        else:
            key = parent.child_key(sname, Kind.DIR)
            meta = attrs.encode(stat.S_IFDIR | stat.S_IMODE(mode), ctx.uid, ctx.gid, time.time_ns())
            info = await self.backend.put_bytes(parent.container, key, b"", metadata=meta)
            node = self.ns.remember(
                parent, sname, Entry(Kind.DIR, 0, info.mtime, info.etag, meta, marker=True)
            )
            self.ns.record(node)
        # It was just made, so it is empty: lookups of new names in it (every create) need no request.
        self.ns.cache_listing(node, {})
        self.ns.lookup_ref(node)
        return self.attr(node)

    @operation
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        parent = self._dir(parent_inode)
        node = await self._child(parent, name)
        if node.kind is not Kind.DIR:
            raise Fail(errno.ENOTDIR)
        if not await self.ns.is_empty(node):
            raise Fail(errno.ENOTEMPTY)
        await self.backend.delete(node.container, node.key + INDEX_NAME)
        if parent.is_root:
            await self.backend.delete_container(node.container)
        else:
            await self.backend.delete(node.container, node.key)
            self.ns.record_gone(node.container, node.key)
        self.ns.forget_name(parent, os.fsdecode(name))
        self.ns.invalidate(node)
        self.ns.detach(node)

    # -- files -----------------------------------------------------------
    @operation
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._writable()
        parent = self._dir(parent_inode)
        if parent.is_root:
            raise Fail(errno.EPERM)  # only containers (directories) live at the root
        fh, node = await self.files.create(
            parent, os.fsdecode(name), stat.S_IFREG | stat.S_IMODE(mode), ctx.uid, ctx.gid
        )
        self.ns.lookup_ref(node)
        metrics.OPEN_FILES.labels(self.backend.name).set(len(self.files))
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self.attr(node)

    @operation
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise Fail(errno.EPERM)  # device files, FIFOs and sockets cannot be stored

    @operation
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise Fail(errno.EPERM)  # hard links cannot be represented in an object store

    @operation
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        parent = self._dir(parent_inode)
        if parent.is_root:
            raise Fail(errno.EPERM)
        sname = os.fsdecode(name)
        key = parent.child_key(sname, Kind.LINK)
        meta = attrs.encode(stat.S_IFLNK | 0o777, ctx.uid, ctx.gid, time.time_ns())
        info = await self.backend.put_bytes(parent.container, key, target, metadata=meta)
        node = self.ns.remember(parent, sname, Entry(Kind.LINK, info.size, info.mtime, info.etag, meta))
        self.ns.record(node)
        self.ns.lookup_ref(node)
        return self.attr(node)

    @operation
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.ns.get(inode)
        if node.kind is Kind.DIR:
            raise Fail(errno.EISDIR)
        if is_write_flags(flags):
            self._writable()
        if not node.local:
            await self.ns.refresh(node)
        fh, keep = await self.files.open(node, truncate=bool(flags & os.O_TRUNC))
        metrics.OPEN_FILES.labels(self.backend.name).set(len(self.files))
        self._raise_read_ahead()
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    def _raise_read_ahead(self) -> None:
        # The kernel copies the mount's read-ahead into each file when open(2)
        # returns from us, and the mount's value can only be raised once FUSE
        # INIT has been answered.  Any open comes after that answer, so the first
        # one is the moment: tuning later (a task after INIT) loses the race with
        # a program that opens a file as soon as the mount appears, and that
        # file then reads in 128 KiB requests for as long as it stays open.
        if self._read_ahead_pending:
            self._read_ahead_pending = False
            assert self.options.mountpoint is not None
            kernel.raise_read_ahead(self.options.mountpoint)

    @operation
    # pyfuse3 replies from any buffer (PyObject_GetBuffer), so a view of a cached
    # block goes to the kernel without a copy; its stub only says bytes.
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        data = await self.files.read(fh, off, size)
        metrics.BYTES_READ.labels(self.backend.name).inc(len(data))
        return data

    @operation
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        n = await self.files.write(fh, off, buf)
        self._bytes_written.inc(n)
        return n

    @operation
    async def flush(self, fh: int) -> None:
        await self.files.flush(fh)

    @operation
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.files.fsync(fh)

    async def release(self, fh: int) -> None:
        await self.files.release(fh)
        metrics.OPEN_FILES.labels(self.backend.name).set(len(self.files))

    @operation
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        parent = self._dir(parent_inode)
        node = await self._child(parent, name)
        if node.kind is Kind.DIR:
            raise Fail(errno.EISDIR)
        await self.files.discard(node)
        await self.backend.delete(node.container, node.key)
        self.ns.record_gone(node.container, node.key)
        self.ns.detach(node)
        self.ns.forget_name(parent, os.fsdecode(name))

    # -- rename ----------------------------------------------------------
    @operation
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._writable()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise Fail(errno.EINVAL)
        old_parent, new_parent = self._dir(parent_inode_old), self._dir(parent_inode_new)
        if old_parent.is_root or new_parent.is_root:
            raise Fail(errno.EXDEV)  # containers cannot be renamed; mv falls back to copy + delete
        src = await self._child(old_parent, name_old)
        dst = await self._maybe_child(new_parent, name_new)
        new_name = os.fsdecode(name_new)
        if dst is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise Fail(errno.EEXIST)
            if dst.kind is Kind.DIR and src.kind is not Kind.DIR:
                raise Fail(errno.EISDIR)
            if src.kind is Kind.DIR and dst.kind is not Kind.DIR:
                raise Fail(errno.ENOTDIR)
            if dst.kind is Kind.DIR and not await self.ns.is_empty(dst):
                raise Fail(errno.ENOTEMPTY)
        old_container, old_key = src.container, src.key
        if src.kind is Kind.DIR:
            await self._rename_dir(src, new_parent, new_name)
        else:
            await self.files.sync_node(src)
            new_key = new_parent.child_key(new_name, src.kind)
            if dst is not None and dst.kind is Kind.DIR:
                await self.backend.delete(dst.container, dst.key)
            if dst is not None:
                # Open descriptors of the replaced file keep writing to it, not to its successor.
                await self.files.discard(dst)
                self.ns.detach(dst)
            info = await self.backend.copy(src.container, src.key, new_parent.container, new_key)
            await self.backend.delete(src.container, src.key)
            src.etag = info.etag
        self.ns.record_gone(old_container, old_key)
        self.ns.moved(src, new_parent.container, new_parent.child_key(new_name, src.kind))
        self.ns.forget_name(old_parent, os.fsdecode(name_old))
        self.ns.remember(
            new_parent,
            new_name,
            Entry(src.kind, src.size, src.mtime_ns / 1e9, src.etag, src.meta, marker=src.marker),
        )
        self.ns.record(src)

    async def _rename_dir(self, src: Node, new_parent: Node, new_name: str) -> None:
        """Copy every artifact below ``src`` to the new prefix, then delete the old ones."""
        limit = self.options.rename_limit
        await self.files.sync_tree(src.container, src.key)  # files not uploaded yet are not in the listing
        items = await self.backend.list_page(src.container, prefix=src.key, limit=limit + 1)
        if len(items) > limit:
            log.info("refusing to rename %s/%s: more than %d artifacts", src.container, src.key, limit)
            raise Fail(errno.EXDEV)  # mv then copies and deletes file by file
        new_key = new_parent.child_key(new_name, Kind.DIR)
        names = [i.name for i in items if isinstance(i, ArtifactInfo)]
        for name in names:
            open_node = self.ns.find(src.container, name)
            if open_node is not None:
                await self.files.sync_node(open_node)
        container = new_parent.container
        await run_all(
            functools.partial(self._copy_entry, src.container, n, container, new_key + n[len(src.key) :])
            for n in names
        )
        # Files first, then directories deepest first: a file-backed store cannot
        # remove a directory before its contents.  Every directory key is deleted,
        # marker or not: a store that keeps an emptied prefix listed (SeaweedFS)
        # drops it then, and deleting a missing key costs nothing elsewhere.
        dirs = {src.key}
        for n in names:
            parts = n[len(src.key) :].split("/")[:-1]
            dirs.update(src.key + "/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1))
        await run_all(
            functools.partial(self.backend.delete, src.container, n) for n in names if not n.endswith("/")
        )
        for key in sorted(dirs, key=lambda k: (-k.count("/"), k)):
            await self.backend.delete(src.container, key)
        self.ns.move_tree(src.container, src.key, container, new_key)
        self.ns.invalidate(src)

    async def _copy_entry(self, container: str, key: str, new_container: str, new_key: str) -> None:
        if not key.endswith("/"):
            await self.backend.copy(container, key, new_container, new_key)
            return
        # A directory marker is rewritten rather than copied: it is empty, and some
        # servers (SeaweedFS) cannot copy keys ending in "/".
        try:
            meta = (await self.backend.stat(container, key)).metadata
        except NotFound:
            meta = None
        await self.backend.put_bytes(new_container, new_key, b"", metadata=meta)

    # -- extended attributes -----------------------------------------------
    # Not supported, and said so with ENOSYS: the kernel then stops asking and
    # answers EOPNOTSUPP itself.  Any other answer costs a round trip here for
    # the security.capability check before every write(2), and two per file of
    # an `ls -l`.
    @operation
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @operation
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @operation
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @operation
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)
