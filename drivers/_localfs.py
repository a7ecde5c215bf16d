"""File-system primitives of the ``local`` driver: name rules, errno mapping, the metadata attribute.

* Names: which container and artifact names the driver accepts
  (:func:`check_container_name`, :func:`split_artifact`), the prefixes it
  reserves (:data:`TEMP_PREFIX`, :data:`RESERVED_PREFIX`), and :func:`inside`,
  the containment check every resolved path must pass.
* Errors: :func:`map_oserror` and :func:`mapped` turn an ``OSError`` into the
  contract's error hierarchy.
* Metadata: user metadata and a version token live in one extended
  attribute, :data:`META_XATTR`: JSON, deflated against a preset dictionary
  (:func:`read_record`, :func:`encode_record`);
  :func:`etag` and :func:`artifact_info` describe a file from its ``stat`` and
  that record.
* I/O: :func:`write_all` and :class:`RangeReader`, the range-limited reader
  ``get`` returns.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from .base import ArtifactInfo, check_artifact_name
from .errors import (
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

log = logging.getLogger(__name__)

#: Prefix of the temporary siblings ``put`` writes before renaming; never a valid name segment.
TEMP_PREFIX = ".vaultfs-tmp-"
#: Names in the root starting with this are never containers (room for internal state).
RESERVED_PREFIX = ".vaultfs"
#: The extended attribute holding ``{"metadata": {...}, "version": "..."}`` as JSON, deflated.
META_XATTR = "user.vaultfs.meta"
#: First byte of a deflated record; records written by earlier versions are plain JSON and start with ``{``.
_DEFLATED = b"\x01"
#: What records usually hold: the s3fs-fuse attribute keys (``mode``, ``uid``, ``gid``, ``mtime``) with
#: common values, a nanosecond mtime and a version token.  Deflated against it, such a record takes at
#: most about 60 bytes, and ext4 keeps an attribute value that small inside a 256-byte inode: a cold
#: listing then reads no extra disk block per file.  Part of the stored format: never change it; a new
#: dictionary needs a new first byte.
_DICTIONARY = (
    b'"mode":"41471","mode":"16877","mode":"33261","mode":"33204","gid":"65534","uid":"65534","gid":"1001",'
    b'"uid":"1001","gid":"1000","mode":"16893","mtime":"1796121234","uid":"1000","vfs-mtime-ns":"1796121234"}'
    b',"version":"0123456789abcdef"}{"metadata":{"gid":"0","mode":"33188","mtime":"17","uid":"0",'
    b'"vfs-mtime-ns":"17'
)
#: Bounds the memory a crafted value can take; a real record (metadata of at most 2 KiB, JSON-escaped)
#: inflates to far less.
_MAX_RECORD = 64 << 10
#: The usual file-system limit on one path component.
MAX_SEGMENT_BYTES = 255

#: The errnos of an operation the file system does not support (extended attributes, copy_file_range).
NOT_SUPPORTED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})
_NO_XATTR = NOT_SUPPORTED | {errno.ENODATA}
_TRANSIENT = frozenset(
    {errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ESTALE}
    | {errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)


# -- errors ----------------------------------------------------------
def map_oserror(exc: OSError, what: str) -> DriverError:
    """Translate an ``OSError`` about ``what`` into the contract's error hierarchy."""
    code = exc.errno
    msg = f"{what}: {exc.strerror or exc}"
    if code in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(msg)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AccessDenied(msg)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return QuotaExceeded(msg)
    if code == errno.ENAMETOOLONG:
        return NameTooLong(msg)
    if code in (errno.EEXIST, errno.EISDIR):
        return AlreadyExists(msg)
    if code == errno.ENOTEMPTY:
        return NotEmpty(msg)
    if code in (errno.EINVAL, errno.EILSEQ, errno.ELOOP):
        return InvalidName(msg)
    if code in _TRANSIENT:
        return Unavailable(msg)
    return DriverError(msg)


@contextlib.contextmanager
def mapped(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise map_oserror(exc, what) from exc


# -- names -----------------------------------------------------------
def encoded(name: str, what: str) -> bytes:
    try:
        return os.fsencode(name)
    except UnicodeEncodeError:
        raise InvalidName(f"{what} {name!r} cannot be encoded as a file name") from None


def check_container_name(name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "\x00" in name or name in (".", ".."):
        raise InvalidName(f"invalid container name {name!r}")
    if name.startswith(RESERVED_PREFIX):
        raise InvalidName(f"container names starting with {RESERVED_PREFIX!r} are reserved")
    if len(encoded(name, "container name")) > MAX_SEGMENT_BYTES:
        raise NameTooLong(f"container name longer than {MAX_SEGMENT_BYTES} bytes")


def bad_segment(seg: str) -> bool:
    return seg in ("", ".", "..") or seg.startswith(TEMP_PREFIX)


def split_artifact(name: str) -> list[str]:
    """Validate an artifact name and return its path segments (a marker's trailing '/' dropped)."""
    encoded(name, "artifact name")
    check_artifact_name(name)
    if name.startswith("/"):
        raise InvalidName(f"artifact name {name!r} is absolute")
    segments = (name[:-1] if name.endswith("/") else name).split("/")
    for seg in segments:
        if bad_segment(seg):
            raise InvalidName(
                f"artifact name {name!r} has an empty, '.' or '..' segment or uses the reserved prefix"
                f" {TEMP_PREFIX!r}"
            )
        if len(os.fsencode(seg)) > MAX_SEGMENT_BYTES:
            raise NameTooLong(f"a segment of artifact name {name!r} is longer than {MAX_SEGMENT_BYTES} bytes")
    return segments


def inside(base: str, path: str) -> bool:
    return os.path.commonpath([base, path]) == base


# -- the metadata attribute --------------------------------------------
class Record(NamedTuple):
    present: bool
    metadata: dict[str, str]
    version: str


NO_RECORD = Record(False, {}, "")


def read_record(target: str | int) -> Record:
    """The metadata attribute of a path or descriptor; an absent one reads as empty."""
    try:
        raw = os.getxattr(target, META_XATTR)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return NO_RECORD
        raise
    try:
        if raw.startswith(_DEFLATED):
            inflate = zlib.decompressobj(-zlib.MAX_WBITS, zdict=_DICTIONARY)
            raw = inflate.decompress(raw[1:], _MAX_RECORD)
            if inflate.unconsumed_tail or not inflate.eof or inflate.unused_data:
                raise ValueError("deflated record truncated, padded or too large")
        record = json.loads(raw)
        metadata = record.get("metadata", {})
        version = record.get("version", "")
        if not (
            isinstance(metadata, dict)
            and isinstance(version, str)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            raise ValueError("unexpected structure")
    except (ValueError, AttributeError, zlib.error) as exc:
        # A damaged attribute must not make the data unreadable; the metadata is lost either way.
        log.warning("ignoring unreadable %s attribute (%s)", META_XATTR, exc)
        return Record(True, {}, "")
    return Record(True, metadata, version)


def encode_record(metadata: Mapping[str, str], version: str) -> bytes:
    record: dict[str, Any] = {"metadata": dict(metadata)}
    if version:
        record["version"] = version
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=_DICTIONARY)
    text = json.dumps(record, sort_keys=True, separators=(",", ":")).encode("ascii")
    return _DEFLATED + deflate.compress(text) + deflate.flush()


def etag(st: os.stat_result, version: str, size: int | None = None) -> str:
    tag = f"{st.st_mtime_ns:x}-{st.st_size if size is None else size:x}-{st.st_ino:x}"
    return f"{tag}-{version}" if version else tag


def artifact_info(name: str, st: os.stat_result, record: Record) -> ArtifactInfo:
    """The listing or stat entry of a file, or of a directory marker (``name`` ending in ``/``, size 0)."""
    size = 0 if name.endswith("/") else st.st_size
    return ArtifactInfo(name, size, st.st_mtime, etag(st, record.version, size), dict(record.metadata))


# -- I/O -------------------------------------------------------------
def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class RangeReader(io.RawIOBase):
    """A read-only view of ``[offset, offset+length)`` of an open file; never reads past the limit."""

    def __init__(self, file: io.FileIO, length: int | None, label: str, on_close: Callable[[int], None]):
        super().__init__()
        self._file = file
        self._remaining = length
        self._label = label
        self._on_close = on_close
        self._done = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        view = memoryview(buffer).cast("B")
        if self._remaining is not None:
            view = view[: self._remaining]
        if not view:
            return 0
        with mapped(self._label):
            n = self._file.readinto(view) or 0
        self._done += n
        if self._remaining is not None:
            self._remaining -= n
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._file.close()
        finally:
            super().close()
            self._on_close(self._done)
