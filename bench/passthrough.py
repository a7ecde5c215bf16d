"""A bare pyfuse3 passthrough file system: the floor of what a Python FUSE daemon costs.

``python bench/passthrough.py SOURCE MOUNTPOINT`` mirrors SOURCE with plain
system calls on the trio loop, no caches of its own, the kernel's defaults
(pyfuse3 opens files with ``keep_cache``), 5-second entry and attribute
timeouts like vaultfs. It serves the benchmark's workloads (read, write,
create, stat, readdir, unlink, mkdir, rmdir, truncate) and nothing more.
Unmount with ``fusermount3 -u MOUNTPOINT``.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Any

import pyfuse3
import trio

TIMEOUT = 5.0


def _error(exc: OSError) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(exc.errno or errno.EIO)


class Passthrough(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = os.path.abspath(source)
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: self.source}
        self.root_ino = os.lstat(self.source).st_ino
        self.dirs: dict[int, list[tuple[bytes, os.stat_result]]] = {}
        self.next_dir = 1

    # inodes: the underlying inode number, except the root
    def _ino(self, st: os.stat_result) -> int:
        return pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino

    def _path(self, inode: int) -> str:
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attrs(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = self._ino(st)
        a.generation = 0
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        a.st_mode = st.st_mode
        a.st_nlink = st.st_nlink
        a.st_uid = st.st_uid
        a.st_gid = st.st_gid
        a.st_rdev = st.st_rdev
        a.st_size = st.st_size
        a.st_blksize = 131072
        a.st_blocks = st.st_blocks
        a.st_atime_ns = st.st_atime_ns
        a.st_mtime_ns = st.st_mtime_ns
        a.st_ctime_ns = st.st_ctime_ns
        return a

    def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise _error(exc) from None
        self.paths[self._ino(st)] = path
        return self._attrs(st)

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(self._child(parent_inode, name))

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(self._path(inode))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> Any:
        path = self._path(inode)
        try:
            if fields.update_size:
                if fh is not None:
                    os.ftruncate(fh, attr.st_size)
                else:
                    os.truncate(path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.chown(path, attr.st_uid if fields.update_uid else -1,
                         attr.st_gid if fields.update_gid else -1)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(path)
                os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                   attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        except OSError as exc:
            raise _error(exc) from None
        return self._entry(path)

    async def forget(self, inode_list: Any) -> None:
        pass

    async def opendir(self, inode: int, ctx: Any) -> int:
        path = self._path(inode)
        try:
            with os.scandir(path) as it:
                entries = sorted((os.fsencode(e.name), e.stat(follow_symlinks=False)) for e in it)
        except OSError as exc:
            raise _error(exc) from None
        fh = self.next_dir
        self.next_dir += 1
        self.dirs[fh] = [(name, st) for name, st in entries]
        for name, st in entries:
            self.paths[self._ino(st)] = os.path.join(path, os.fsdecode(name))
        return fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = self.dirs[fh]
        for i in range(start_id, len(entries)):
            name, st = entries[i]
            if not pyfuse3.readdir_reply(token, name, self._attrs(st), i + 1):
                return

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        try:
            fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        except OSError as exc:
            raise _error(exc) from None
        return pyfuse3.FileInfo(fh=fd)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        path = self._child(parent_inode, name)
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_TRUNC, stat.S_IMODE(mode))
        except OSError as exc:
            raise _error(exc) from None
        return pyfuse3.FileInfo(fh=fd), self._entry(path)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(fh, buf, off)

    async def flush(self, fh: int) -> None:
        pass

    async def fsync(self, fh: int, datasync: bool) -> None:
        (os.fdatasync if datasync else os.fsync)(fh)

    async def release(self, fh: int) -> None:
        os.close(fh)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            os.mkdir(path, stat.S_IMODE(mode))
        except OSError as exc:
            raise _error(exc) from None
        return self._entry(path)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        try:
            os.unlink(self._child(parent_inode, name))
        except OSError as exc:
            raise _error(exc) from None

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        try:
            os.rmdir(self._child(parent_inode, name))
        except OSError as exc:
            raise _error(exc) from None

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.source)
        d = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                      "f_favail", "f_namemax"):
            setattr(d, field, getattr(sv, field))
        return d


def main() -> None:
    source, mountpoint = sys.argv[1], sys.argv[2]
    ops = Passthrough(source)
    options = set(pyfuse3.default_options)
    options.add("fsname=bench-passthrough")
    pyfuse3.init(ops, mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
