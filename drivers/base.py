"""The storage contract: :class:`Driver`, :class:`ArtifactInfo` and :class:`Prefix`.

Drivers are synchronous and thread-safe.  ``vaultfs.backend`` calls them from
worker threads, so blocking I/O inside a driver is expected.  Data always moves
as streams: ``get`` returns a readable the caller closes, ``put`` reads its
stream exactly once.
"""

from __future__ import annotations

import builtins
import dataclasses
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import IO, Any, ClassVar

from .errors import InvalidName, NameTooLong

#: S3's limit on a key, which we apply everywhere so names move between drivers.
MAX_NAME_BYTES = 1024

#: S3 caps user metadata at 2 KiB (keys plus values); every driver keeps to it.
MAX_METADATA_BYTES = 2048


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    """What a driver knows about one artifact.

    ``metadata`` is the artifact's user metadata (a small ``str -> str`` map), or
    ``None`` when the call that produced this record could not see it (S3's
    list does not return metadata).
    """

    name: str
    size: int
    mtime: float
    etag: str
    metadata: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Prefix:
    """A common prefix (one "directory" level), yielded by ``list`` with a delimiter."""

    name: str


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a driver that takes none."""


def check_artifact_name(name: str) -> None:
    """Refuse names that no driver may store.

    Empty names, NUL bytes, names over :data:`MAX_NAME_BYTES`, and names with an
    empty (``a//b``, ``/a``), ``.`` or ``..`` segment.  A single trailing ``/``
    (a directory marker) is allowed.
    """
    if not name:
        raise InvalidName("empty artifact name")
    if "\x00" in name:
        raise InvalidName("artifact name contains a NUL byte")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise NameTooLong(f"artifact name longer than {MAX_NAME_BYTES} bytes")
    # Such names cannot be shown as a path, and on a file-backed store they would
    # escape or alias other names; refusing them everywhere keeps drivers alike.
    segments = name[:-1].split("/") if name.endswith("/") else name.split("/")
    if any(seg in ("", ".", "..") for seg in segments):
        raise InvalidName(f"artifact name {name!r} has an empty, '.' or '..' segment")


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Validate user metadata and return it as a plain dict with lower-case keys."""
    if not metadata:
        return {}
    out: dict[str, str] = {}
    total = 0
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidName("metadata keys and values must be strings")
        k = key.lower()
        if not k or not k.isascii() or not all(c.isalnum() or c in "-_." for c in k):
            raise InvalidName(f"metadata key {key!r} must be ASCII letters, digits, '-', '_' or '.'")
        if not value.isascii() or any(ord(c) < 32 for c in value):
            raise InvalidName(f"metadata value for {key!r} must be printable ASCII")
        total += len(k) + len(value)
        out[k] = value
    if total > MAX_METADATA_BYTES:
        raise InvalidName(f"metadata larger than {MAX_METADATA_BYTES} bytes")
    return out


class Driver(ABC):
    """A storage backend: containers holding named artifacts.

    Subclasses set ``name`` (the name users put in ``driver:``) and ``Options``
    (a dataclass whose fields are the driver's configuration keys; fields whose
    ``metadata`` has ``secret=True`` are never shown), and take an ``Options``
    instance in ``__init__``.

    ``list`` yields entries in ascending order of name (Unicode code point order,
    which is S3's UTF-8 byte order).  Artifact names use ``/`` as the path
    separator; a name ending in ``/`` is a zero-byte directory marker.
    """

    name: ClassVar[str]
    Options: ClassVar[type[Any]] = NoOptions
    #: Whether a local disk cache in front of this driver can make reads faster.
    #: A driver whose data already sits on a local disk (or in memory) says no.
    cacheable: ClassVar[bool] = True
    #: Whether ``list`` returns each artifact's metadata.  When it does not (S3),
    #: vaultfs keeps a per-directory index of the metadata it wrote, so that a
    #: listing does not need a request per artifact to show modes and times.
    lists_metadata: ClassVar[bool] = False

    # -- artifacts -------------------------------------------------------
    @abstractmethod
    def get(self, container: str, artifact: str, offset: int = 0, length: int | None = None) -> IO[bytes]:
        """Open the artifact's bytes ``[offset, offset+length)`` for reading.

        ``length=None`` reads to the end; a range past the end yields fewer (or
        no) bytes rather than an error.  The caller closes the stream.
        """

    @abstractmethod
    def put(
        self,
        container: str,
        artifact: str,
        stream: IO[bytes],
        size: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ArtifactInfo:
        """Store the stream's bytes as the artifact, replacing it whole, atomically.

        The stream is read once, to its end (or ``size`` bytes when given).  A
        stream that ends before ``size`` bytes is an error and the previous
        artifact, if any, is kept.  A missing container raises ``NotFound``.
        """

    def put_file(
        self,
        container: str,
        artifact: str,
        path: str | os.PathLike[str],
        metadata: Mapping[str, str] | None = None,
        *,
        adopt: bool = False,
    ) -> ArtifactInfo:
        """Store the local file at ``path`` as the artifact, as :meth:`put` stores a stream.

        The file must not change while this runs.  ``adopt=True`` promises more:
        the caller never writes the file again (it may read and unlink it), so
        the driver may make the file itself part of the stored artifact instead
        of copying its bytes (the ``local`` driver hard-links it when the file
        is on the same file system), and may change the file's mode and
        extended attributes.  An adopting put that fails with anything but
        ``Unavailable`` leaves the file out of the store, so that the caller may
        take it back for writing.  The default streams the file through
        :meth:`put`; drivers that can do better override it.
        """
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return self.put(container, artifact, f, size=size, metadata=metadata)

    @abstractmethod
    def delete(self, container: str, artifact: str) -> None:
        """Delete the artifact.  Deleting a missing artifact succeeds (as on S3)."""

    @abstractmethod
    def list(
        self,
        container: str,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
    ) -> Iterator[ArtifactInfo | Prefix]:
        """Yield artifacts whose names start with ``prefix``, in name order.

        With a ``delimiter``, names holding the delimiter after the prefix are
        rolled up into one :class:`Prefix` each (S3's CommonPrefixes).  Only
        entries whose name sorts after ``start_after`` are yielded, so a page
        can be resumed.  A missing container raises ``NotFound``.
        """

    @abstractmethod
    def stat(self, container: str, artifact: str) -> ArtifactInfo:
        """Return the artifact's info, metadata included."""

    @abstractmethod
    def update_metadata(self, container: str, artifact: str, metadata: Mapping[str, str]) -> ArtifactInfo:
        """Replace the artifact's user metadata, keeping its content."""

    def copy(
        self,
        container: str,
        artifact: str,
        dst_container: str,
        dst_artifact: str,
        metadata: Mapping[str, str] | None = None,
    ) -> ArtifactInfo:
        """Copy an artifact (with its metadata unless ``metadata`` is given).

        The default streams it through this process; drivers with a server-side
        copy override it.
        """
        if metadata is None:
            metadata = self.stat(container, artifact).metadata
        with self.get(container, artifact) as src:
            return self.put(dst_container, dst_artifact, src, metadata=metadata)

    # -- containers ------------------------------------------------------
    @abstractmethod
    def containers(self) -> builtins.list[str]:
        """The names of the containers, sorted."""

    @abstractmethod
    def create_container(self, container: str) -> None:
        """Create a container; ``AlreadyExists`` if it exists."""

    @abstractmethod
    def delete_container(self, container: str) -> None:
        """Delete an empty container; ``NotEmpty`` if it holds artifacts."""

    # -- operations ------------------------------------------------------
    @abstractmethod
    def health_check(self) -> None:
        """Return if the backend answers; raise a :class:`DriverError` otherwise."""

    def get_metrics(self) -> dict[str, float]:
        """Driver-specific figures, exported as ``vaultfs_driver_reported_<key>`` gauges."""
        return {}

    def close(self) -> None:
        """Release connections and threads.  The driver is not used afterwards."""


def split_listing(
    names: Iterator[ArtifactInfo], prefix: str, delimiter: str | None, start_after: str | None
) -> Iterator[ArtifactInfo | Prefix]:
    """Apply S3's prefix/delimiter/start-after rules to a name-ordered stream of artifacts.

    For drivers whose store has no native delimiter support.
    """
    last_prefix: str | None = None
    for info in names:
        if not info.name.startswith(prefix):
            continue
        if start_after is not None and info.name <= start_after:
            continue
        if delimiter:
            cut = info.name.find(delimiter, len(prefix))
            if cut >= 0:
                common = info.name[: cut + len(delimiter)]
                if common != last_prefix and (start_after is None or common > start_after):
                    last_prefix = common
                    yield Prefix(common)
                continue
        yield info
