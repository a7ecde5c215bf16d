"""The ``local`` driver: containers are the sub-directories of one root directory.

Artifact names map to nested paths (``/`` separates directories); a name ending
in ``/`` is a directory marker.  User metadata, and a random version token that
keeps ETags unique when the file system reuses an inode, live in one (deflated JSON)
extended attribute (``user.vaultfs.meta``) written on the temporary file before
it is renamed over the target, so data and metadata change together.

Every path is resolved with ``realpath`` and must stay inside its container
directory; symlinks inside the container are followed.  The checks resolve the
path and then use it, so a process that swaps directories for symlinks in
between can still win the race: the root must not be writable by untrusted
users.

Directory lifecycle follows S3's rules as closely as a file system allows.  A
directory made by ``put("a/b/")`` is *marked* (it carries the attribute) and is
listed as the marker ``a/b/`` even when not empty; directories created only to
hold a file are implicit and are removed again when a delete leaves them empty.

A put of a file the caller hands over (``put_file(adopt=True)``: write-back's
staging files) hard-links that file as the temporary sibling instead of copying
it, when it is on the same file system; the mode, attribute, lock, fsync and
rename then follow as for a copy, and the artifact keeps the file's inode.

A put holds an exclusive ``flock`` on its temporary file until the rename, so
removing a directory can tell a crashed put's leftover (removed) from a live one
(the directory is reported not empty), across processes too.

Name rules, errno mapping, the metadata attribute and the range-limited reader
are in :mod:`drivers._localfs`; the listing walk is in :mod:`drivers._locallisting`.

Locks: ``_tree_lock`` (directory creation, marking, pruning) and ``_stats_lock``
(counters) are leaf locks; no code holds one while taking the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import io
import logging
import os
import secrets
import stat as st_mode
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, ClassVar, NamedTuple, cast

from ._localfs import (
    META_XATTR,
    NOT_SUPPORTED,
    RESERVED_PREFIX,
    TEMP_PREFIX,
    RangeReader,
    Record,
    artifact_info,
    bad_segment,
    check_container_name,
    encode_record,
    encoded,
    etag,
    inside,
    map_oserror,
    mapped,
    read_record,
    split_artifact,
    write_all,
)
from ._locallisting import walk_level, walk_tree
from .base import ArtifactInfo, Driver, Prefix, check_metadata, split_listing
from .errors import AccessDenied, AlreadyExists, DriverError, InvalidName, NotEmpty, NotFound, Unavailable

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_COPY_RANGE_CHUNK = 1 << 26
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Why a hard link of an adopted file can fail where a copy would work: another file system, a
# file system without hard links (or a protected_hardlinks refusal), too many links.
_NO_LINK = NOT_SUPPORTED | {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOSYS}
# An alias, because ``list`` inside the class body names the method.
_Names = list[str]


@dataclasses.dataclass(frozen=True)
class LocalOptions:
    """Configuration of the ``local`` driver.

    ``root`` is the directory whose sub-directories are the containers.
    ``fsync`` makes every write durable (file and directory) before it returns.
    """

    root: str
    fsync: bool = True


class _NotLinked(Exception):
    """A hard link named another file than the one opened."""


def _creation_mode() -> int:
    """The mode ``os.open(path, O_CREAT, 0o666)`` gives a new file in this process: 0o666 less the umask."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    # Without /proc (or before Linux 4.7): the usual umask.
    return 0o644


class _Target(NamedTuple):
    container: str
    artifact: str
    cdir: str  # the container directory, resolved
    lexical: str  # cdir joined with the name's segments, symlinks not resolved
    real: str  # lexical, resolved
    marker: bool

    @property
    def label(self) -> str:
        return f"{self.container}/{self.artifact}"


class LocalDriver(Driver):
    """Artifacts as files under ``root/<container>/``; see the module docstring for the layout."""

    name = "local"
    cacheable = False
    lists_metadata = True
    Options: ClassVar[type[Any]] = LocalOptions

    def __init__(self, options: LocalOptions) -> None:
        self.options = options
        self._root = os.path.abspath(os.path.expanduser(options.root))
        self._fsync = options.fsync
        self._file_mode = _creation_mode()
        # Serialises creating, marking and pruning directories, so a prune never removes a
        # directory another thread has just created a temp file in or marked.
        self._tree_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._counters = {"operations": 0.0, "bytes_read": 0.0, "bytes_written": 0.0}

    # -- resolution ------------------------------------------------------
    def _root_dir(self) -> str:
        real = os.path.realpath(self._root)
        if not os.path.isdir(real):
            raise NotFound(f"local root {self._root} does not exist or is not a directory")
        return real

    def _container_dir(self, container: str) -> str:
        check_container_name(container)
        root = self._root_dir()
        real = os.path.realpath(os.path.join(root, container))
        if real == root or not inside(root, real):
            raise InvalidName(f"container {container!r} resolves outside the root")
        if not os.path.isdir(real):
            raise NotFound(f"container {container!r} does not exist")
        return real

    def _locate(self, container: str, artifact: str) -> _Target:
        segments = split_artifact(artifact)
        cdir = self._container_dir(container)
        lexical = os.path.join(cdir, *segments)
        real = os.path.realpath(lexical)
        if real == cdir or not inside(cdir, real):
            raise InvalidName(f"{container}/{artifact} resolves outside its container")
        return _Target(container, artifact, cdir, lexical, real, artifact.endswith("/"))

    def _open_checked(self, t: _Target) -> tuple[int, os.stat_result]:
        """Open and fstat the artifact's file (a marker's directory); NotFound if it is the other kind."""
        want = st_mode.S_ISDIR if t.marker else st_mode.S_ISREG
        with mapped(t.label):
            # Checked before opening so a device or FIFO is never opened.
            if not want(os.stat(t.real).st_mode):
                raise NotFound(f"{t.label} does not exist")
            fd = os.open(t.real, _OPEN_FLAGS)
            try:
                st = os.fstat(fd)
                if not want(st.st_mode):
                    raise NotFound(f"{t.label} does not exist")
            except BaseException:
                os.close(fd)
                raise
        return fd, st

    def _no_xattr(self) -> DriverError:
        return DriverError(
            f"the file system under {self._root} does not support user extended attributes, so artifact"
            " metadata cannot be stored (ext4: mount with user_xattr)"
        )

    def _set_record(self, target: str | int, metadata: dict[str, str], version: str) -> str:
        """Write the attribute; return the version stored ("" where attributes are unsupported)."""
        try:
            os.setxattr(target, META_XATTR, encode_record(metadata, version))
        except OSError as exc:
            if exc.errno not in NOT_SUPPORTED:
                raise
            if metadata:
                raise self._no_xattr() from exc
            return ""
        return version

    def _count(self, read: int = 0, written: int = 0, ops: int = 1) -> None:
        with self._stats_lock:
            self._counters["operations"] += ops
            self._counters["bytes_read"] += read
            self._counters["bytes_written"] += written

    def _sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- directories -----------------------------------------------------
    def _make_dirs(self, t: _Target, path: str, created: _Names) -> None:
        """Create ``path`` and missing parents below the container; record each new one in ``created``."""
        rel = os.path.relpath(path, t.cdir)
        if rel == ".":
            return
        current = t.cdir
        for seg in rel.split(os.sep):
            current = os.path.join(current, seg)
            try:
                os.mkdir(current)
            except FileExistsError:
                if not os.path.isdir(current):
                    clash = os.path.relpath(current, t.cdir)
                    raise AlreadyExists(f"{t.label}: {clash!r} is a file, not a directory") from None
                continue
            except OSError as exc:
                raise map_oserror(exc, t.label) from exc
            created.append(current)

    def _sync_created(self, created: list[str]) -> None:
        if self._fsync:
            for parent in dict.fromkeys(os.path.dirname(path) for path in created):
                self._sync_dir(parent)

    def _remove_created(self, created: list[str]) -> None:
        """Undo ``_make_dirs`` after a failure; directories someone else filled meanwhile stay."""
        for path in reversed(created):
            try:
                os.rmdir(path)
            except OSError:
                break

    def _prune(self, cdir: str, path: str) -> None:
        """Remove empty, unmarked directories from ``path`` upwards, as S3 forgets implied prefixes."""
        with self._tree_lock:
            while path != cdir and inside(cdir, path):
                try:
                    if read_record(path).present:
                        break
                    os.rmdir(path)
                except OSError:
                    break
                path = os.path.dirname(path)

    def _remove_dir(self, path: str, label: str) -> None:
        """Remove an empty directory (a symlink to one: the link); crashed puts' temp files do not count."""
        with self._tree_lock:
            try:
                names = os.listdir(path)
            except (FileNotFoundError, NotADirectoryError):
                return  # removed meanwhile
            if any(not n.startswith(TEMP_PREFIX) for n in names):
                raise NotEmpty(f"{label} is not empty")
            if os.path.islink(path):
                os.unlink(path)
                return
            for n in names:
                if not self._remove_stale_temp(os.path.join(path, n)):
                    raise NotEmpty(f"{label} is receiving an artifact (a put is in progress)")
            try:
                os.rmdir(path)
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise NotEmpty(f"{label} is not empty") from None
                raise

    @staticmethod
    def _remove_stale_temp(path: str) -> bool:
        """Unlink a temp file unless a live put holds its lock; True if it is gone."""
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return True
        finally:
            os.close(fd)

    # -- artifacts -------------------------------------------------------
    def get(self, container: str, artifact: str, offset: int = 0, length: int | None = None) -> IO[bytes]:
        """Open a range of the artifact; a marker reads as empty."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        t = self._locate(container, artifact)
        self._count()
        fd, _ = self._open_checked(t)
        if t.marker:
            os.close(fd)
            return io.BytesIO(b"")
        file = io.FileIO(fd, "rb", closefd=True)
        try:
            with mapped(t.label):
                file.seek(offset)
        except BaseException:
            file.close()
            raise
        reader = RangeReader(file, length, t.label, lambda n: self._count(read=n, ops=0))
        return cast(IO[bytes], reader)

    def put(
        self,
        container: str,
        artifact: str,
        stream: IO[bytes],
        size: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ArtifactInfo:
        """Write to a temp sibling, set the metadata attribute, fsync, rename over the target."""
        if size is not None and size < 0:
            raise ValueError("size must not be negative")
        meta = check_metadata(metadata)
        t = self._locate(container, artifact)
        self._count()
        if t.marker:
            return self._put_marker(t, stream, size, meta)
        return self._put_file(t, meta, lambda fd: self._fill_from_stream(fd, stream, size, t))

    def put_file(
        self,
        container: str,
        artifact: str,
        path: str | os.PathLike[str],
        metadata: Mapping[str, str] | None = None,
        *,
        adopt: bool = False,
    ) -> ArtifactInfo:
        """Copy the file in the kernel; with ``adopt``, hard-link it instead where the file system allows.

        An adopted file becomes the stored artifact's inode (its mode and the
        metadata attribute are set on it), so it is written to the disk once,
        and the fsync the put needs anyway is its only cost.
        """
        if artifact.endswith("/"):
            return super().put_file(container, artifact, path, metadata)
        meta = check_metadata(metadata)
        t = self._locate(container, artifact)
        self._count()
        # An error opening the caller's file is the caller's, as from a stream: not mapped.
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(src).st_size
            fill = functools.partial(self._fill_from_fd, src, size=size, t=t)
            return self._put_file(t, meta, fill, adopt=(path, src) if adopt else None)
        finally:
            os.close(src)

    def _fill_from_stream(self, fd: int, stream: IO[bytes], size: int | None, t: _Target) -> int:
        total = 0
        while size is None or total < size:
            want = _CHUNK if size is None else min(_CHUNK, size - total)
            chunk = stream.read(want)
            if not chunk:
                break
            chunk = chunk[:want]
            with mapped(t.label):
                write_all(fd, chunk)
            total += len(chunk)
        if size is not None and total < size:
            # Storing a truncated artifact silently would be worse than failing the put.
            raise DriverError(f"{t.label}: the stream ended after {total} of {size} bytes")
        return total

    def _fill_from_fd(self, src: int, dst: int, *, size: int, t: _Target) -> int:
        total = 0
        with mapped(t.label):
            try:
                # In-kernel copy (a reflink on file systems that share extents).
                while total < size:
                    n = os.copy_file_range(src, dst, min(_COPY_RANGE_CHUNK, size - total))
                    if not n:
                        break
                    total += n
            except OSError as exc:
                if exc.errno not in NOT_SUPPORTED | {errno.EXDEV, errno.ENOSYS, errno.EINVAL}:
                    raise
            while total < size:
                chunk = os.read(src, min(_CHUNK, size - total))
                if not chunk:
                    break
                write_all(dst, chunk)
                total += len(chunk)
        if total < size:
            raise DriverError(f"{t.label}: the source shrank while it was copied")
        return total

    def _put_file(
        self,
        t: _Target,
        meta: dict[str, str],
        fill: Callable[[int], int],
        adopt: tuple[str | os.PathLike[str], int] | None = None,
    ) -> ArtifactInfo:
        """Store through a temp sibling: filled by ``fill(fd)``, or ``adopt`` (a path, and the file
        opened from it) linked there."""
        if os.path.isdir(t.real):
            raise AlreadyExists(f"{t.label}: a directory of that name exists")
        parent = os.path.dirname(t.real)
        created: list[str] = []
        tmp: str | None = None
        fd = -1
        try:
            with self._tree_lock:
                self._make_dirs(t, parent, created)
                tmp = os.path.join(parent, TEMP_PREFIX + secrets.token_hex(8))
                with mapped(t.label):
                    if adopt is not None:
                        fd = self._link_temp(*adopt, tmp)
                    linked = fd >= 0
                    if not linked:
                        fd = os.open(tmp, _CREATE_FLAGS, 0o666)
                        # Held until the rename: a temp file nobody holds locked is a crashed put's.
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with mapped(t.label):
                self._sync_created(created)
            if linked:
                with mapped(t.label):
                    written = os.fstat(fd).st_size
                    # As if this put had created the file (the caller's may be private).
                    os.fchmod(fd, self._file_mode)
            else:
                written = fill(fd)
            with mapped(t.label):
                version = self._set_record(fd, meta, secrets.token_hex(8))
                if self._fsync:
                    os.fsync(fd)
                st = os.fstat(fd)
            try:
                os.rename(tmp, t.real)
            except IsADirectoryError:
                raise AlreadyExists(f"{t.label}: a directory of that name exists") from None
            except OSError as exc:
                raise map_oserror(exc, t.label) from exc
            renamed, tmp = tmp, None
            try:
                with mapped(t.label):
                    if linked:
                        # rename(2) does nothing when both names are links to one inode: the artifact
                        # already was this file (a replayed upload, new metadata), now with the new attribute.
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(renamed)
                    fd, closing = -1, fd
                    os.close(closing)
                    if self._fsync:
                        self._sync_dir(parent)
            except DriverError as exc:
                if linked and not isinstance(exc, Unavailable):
                    # The adopted file is the artifact now: not a refusal after which the caller could
                    # take its file back for writing. Only the sync is missing, which a retry completes.
                    raise Unavailable(f"{exc} (stored, but not yet synced)") from exc
                raise
        except BaseException:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if created:
                with self._tree_lock:
                    self._remove_created(created)
            raise
        self._count(written=written, ops=0)
        log.debug("stored %s (%d bytes)", t.label, written)
        return ArtifactInfo(t.artifact, st.st_size, st.st_mtime, etag(st, version), meta)

    @staticmethod
    def _link_temp(path: str | os.PathLike[str], src: int, tmp: str) -> int:
        """Hard-link ``path`` (open as ``src``) as ``tmp``; return it opened and locked, or -1 to copy."""
        try:
            os.link(path, tmp, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_LINK:
                return -1
            raise
        fd = -1
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            linked, opened = os.fstat(fd), os.fstat(src)
            if (linked.st_dev, linked.st_ino) != (opened.st_dev, opened.st_ino):
                raise _NotLinked  # the name now holds another file: copy the one that was opened
            # The lock is the inode's, so it also marks this temp name as a live put's.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, _NotLinked):
            # BlockingIOError: another put holds this inode, an abandoned attempt of the same upload.
            os.close(fd)
            os.unlink(tmp)
            return -1
        except BaseException:
            if fd >= 0:
                os.close(fd)
            os.unlink(tmp)
            raise
        return fd

    def _put_marker(
        self, t: _Target, stream: IO[bytes], size: int | None, meta: dict[str, str]
    ) -> ArtifactInfo:
        if size or (size is None and stream.read(1)):
            raise InvalidName(f"{t.label}: a directory marker cannot hold data")
        created: list[str] = []
        with self._tree_lock:
            try:
                self._make_dirs(t, t.real, created)
                with mapped(t.label):
                    self._set_record(t.real, meta, "")
                    st = os.stat(t.real)
            except BaseException:
                self._remove_created(created)
                raise
        with mapped(t.label):
            self._sync_created(created)
        return ArtifactInfo(t.artifact, 0, st.st_mtime, etag(st, "", 0), meta)

    def delete(self, container: str, artifact: str) -> None:
        """Unlink the file (a symlink itself, not its target) or remove an empty marked directory."""
        t = self._locate(container, artifact)
        self._count()
        parent = os.path.realpath(os.path.dirname(t.lexical))
        if not inside(t.cdir, parent):
            raise InvalidName(f"{t.label} resolves outside its container")
        entry = os.path.join(parent, os.path.basename(t.lexical))
        with mapped(t.label):
            try:
                st = os.stat(entry)
            except (FileNotFoundError, NotADirectoryError):
                return
            if t.marker:
                if not st_mode.S_ISDIR(st.st_mode):
                    return
                self._remove_dir(entry, t.label)
            else:
                # A directory or special file of that name is not this artifact: nothing to delete.
                if not st_mode.S_ISREG(st.st_mode):
                    return
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry)
            if self._fsync:
                # Another delete may have pruned the emptied directory meanwhile.
                with contextlib.suppress(FileNotFoundError):
                    self._sync_dir(parent)
        if parent == os.path.dirname(t.lexical):
            # Pruning through a symlinked directory could leave the link dangling.
            self._prune(t.cdir, parent)

    def stat(self, container: str, artifact: str) -> ArtifactInfo:
        """The artifact's size, mtime, ETag and metadata; a directory only answers as a marker."""
        t = self._locate(container, artifact)
        self._count()
        fd, st = self._open_checked(t)
        try:
            with mapped(t.label):
                record = read_record(fd)
        finally:
            os.close(fd)
        return artifact_info(t.artifact, st, record)

    def update_metadata(self, container: str, artifact: str, metadata: Mapping[str, str]) -> ArtifactInfo:
        """Rewrite the attribute in place; the data, mtime and ETag stay."""
        meta = check_metadata(metadata)
        t = self._locate(container, artifact)
        self._count()
        fd, _ = self._open_checked(t)
        try:
            with mapped(t.label):
                if t.marker:
                    with self._tree_lock:
                        version = self._set_record(fd, meta, "")
                else:
                    version = self._set_record(fd, meta, read_record(fd).version)
                st = os.fstat(fd)
        finally:
            os.close(fd)
        return artifact_info(t.artifact, st, Record(True, meta, version))

    def copy(
        self,
        container: str,
        artifact: str,
        dst_container: str,
        dst_artifact: str,
        metadata: Mapping[str, str] | None = None,
    ) -> ArtifactInfo:
        """Copy from one open descriptor, so data and metadata come from the same version."""
        if artifact.endswith("/") or dst_artifact.endswith("/"):
            return super().copy(container, artifact, dst_container, dst_artifact, metadata)
        src = self._locate(container, artifact)
        self._count()
        fd, st = self._open_checked(src)
        try:
            if metadata is None:
                with mapped(src.label):
                    metadata = read_record(fd).metadata
            meta = check_metadata(metadata)
            dst = self._locate(dst_container, dst_artifact)
            fill = functools.partial(self._fill_from_fd, fd, size=st.st_size, t=dst)
            return self._put_file(dst, meta, fill)
        finally:
            os.close(fd)

    # -- listing ---------------------------------------------------------
    def list(
        self,
        container: str,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
    ) -> Iterator[ArtifactInfo | Prefix]:
        """Walk from the deepest directory the prefix names, yielding keys in code-point order."""
        cdir = self._container_dir(container)
        self._count()
        cut = prefix.rfind("/") + 1
        dir_key, leaf = prefix[:cut], prefix[cut:]
        start = cdir
        if dir_key:
            # A prefix whose directory part no artifact name could have matches nothing.
            segments = dir_key[:-1].split("/")
            try:
                if any(bad_segment(s) or "\x00" in s or not encoded(s, "prefix") for s in segments):
                    return iter(())
            except InvalidName:
                return iter(())
            start = os.path.realpath(os.path.join(cdir, *segments))
            if start == cdir or not inside(cdir, start):
                return iter(())
        label = f"{container}/{prefix}"
        if delimiter == "/":
            return walk_level(cdir, start, dir_key, leaf, start_after, label)
        flat = walk_tree(cdir, start, dir_key, leaf, start_after, label)
        if delimiter:
            return split_listing(flat, prefix, delimiter, start_after)
        return cast(Iterator[ArtifactInfo | Prefix], flat)

    # -- containers ------------------------------------------------------
    def containers(self) -> _Names:
        """The sub-directories of the root, sorted; files and reserved names are skipped."""
        root = self._root_dir()
        self._count()
        names: _Names = []
        with mapped(f"local root {self._root}"), os.scandir(root) as it:
            for entry in it:
                if entry.name.startswith(RESERVED_PREFIX):
                    continue
                try:
                    if not entry.is_dir():
                        continue
                    if entry.is_symlink():
                        real = os.path.realpath(entry.path)
                        if real == root or not inside(root, real):
                            continue
                except OSError:
                    continue
                names.append(entry.name)
        return sorted(names)

    def create_container(self, container: str) -> None:
        """Create the container's directory."""
        check_container_name(container)
        root = self._root_dir()
        self._count()
        try:
            os.mkdir(os.path.join(root, container))
        except FileExistsError:
            raise AlreadyExists(f"container {container!r} already exists") from None
        except OSError as exc:
            raise map_oserror(exc, f"container {container!r}") from exc
        if self._fsync:
            with mapped(f"container {container!r}"):
                self._sync_dir(root)

    def delete_container(self, container: str) -> None:
        """Remove the container's directory if nothing visible is left in it."""
        self._container_dir(container)
        root = self._root_dir()
        self._count()
        label = f"container {container!r}"
        with mapped(label):
            self._remove_dir(os.path.join(root, container), label)
            if self._fsync:
                self._sync_dir(root)

    # -- operations ------------------------------------------------------
    def health_check(self) -> None:
        """Raise unless the root is an existing, writable directory."""
        if not os.path.exists(self._root):
            raise NotFound(f"local root {self._root} does not exist")
        if not os.path.isdir(self._root):
            raise NotFound(f"local root {self._root} is not a directory")
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise AccessDenied(f"local root {self._root} is not writable")

    def get_metrics(self) -> dict[str, float]:
        """Operation and byte counters, plus the free and total space under the root."""
        with self._stats_lock:
            metrics = dict(self._counters)
        try:
            vfs = os.statvfs(self._root)
        except OSError:
            return metrics
        metrics["disk_free_bytes"] = float(vfs.f_bavail * vfs.f_frsize)
        metrics["disk_total_bytes"] = float(vfs.f_blocks * vfs.f_frsize)
        return metrics
