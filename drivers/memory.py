"""The ``memory`` driver: everything in this process, for demos and fast tests.

The one driver allowed to hold whole artifacts in memory.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import threading
import time
from collections.abc import Iterator, Mapping
from typing import IO

from .base import ArtifactInfo, Driver, Prefix, check_artifact_name, check_metadata, split_listing
from .errors import AlreadyExists, DriverError, InvalidName, NotEmpty, NotFound


class MemoryDriver(Driver):
    """Containers and artifacts in a dict guarded by one lock."""

    name = "memory"
    cacheable = False
    lists_metadata = True

    def __init__(self, options: object | None = None) -> None:
        self._lock = threading.Lock()
        self._store: dict[str, dict[str, tuple[bytes, ArtifactInfo]]] = {}
        self._ops = 0

    def _container(self, container: str) -> dict[str, tuple[bytes, ArtifactInfo]]:
        try:
            return self._store[container]
        except KeyError:
            raise NotFound(f"container {container!r} does not exist") from None

    def get(self, container: str, artifact: str, offset: int = 0, length: int | None = None) -> IO[bytes]:
        check_artifact_name(artifact)
        with self._lock:
            self._ops += 1
            try:
                data, _ = self._container(container)[artifact]
            except KeyError:
                raise NotFound(f"{container}/{artifact} does not exist") from None
        end = len(data) if length is None else offset + length
        return io.BytesIO(data[offset:end])

    def put(
        self,
        container: str,
        artifact: str,
        stream: IO[bytes],
        size: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ArtifactInfo:
        check_artifact_name(artifact)
        meta = check_metadata(metadata)
        data = stream.read() if size is None else stream.read(size)
        if size is not None and len(data) < size:
            raise DriverError(f"{container}/{artifact}: stream ended after {len(data)} of {size} bytes")
        info = ArtifactInfo(artifact, len(data), time.time(), hashlib.md5(data).hexdigest(), meta)
        with self._lock:
            self._ops += 1
            self._container(container)[artifact] = (data, info)
        return info

    def delete(self, container: str, artifact: str) -> None:
        check_artifact_name(artifact)
        with self._lock:
            self._ops += 1
            self._container(container).pop(artifact, None)

    def list(
        self,
        container: str,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
    ) -> Iterator[ArtifactInfo | Prefix]:
        with self._lock:
            self._ops += 1
            infos = sorted((info for _, info in self._container(container).values()), key=lambda i: i.name)
        return split_listing(iter(infos), prefix, delimiter, start_after)

    def stat(self, container: str, artifact: str) -> ArtifactInfo:
        check_artifact_name(artifact)
        with self._lock:
            self._ops += 1
            try:
                return self._container(container)[artifact][1]
            except KeyError:
                raise NotFound(f"{container}/{artifact} does not exist") from None

    def update_metadata(self, container: str, artifact: str, metadata: Mapping[str, str]) -> ArtifactInfo:
        check_artifact_name(artifact)
        meta = check_metadata(metadata)
        with self._lock:
            self._ops += 1
            objects = self._container(container)
            try:
                data, info = objects[artifact]
            except KeyError:
                raise NotFound(f"{container}/{artifact} does not exist") from None
            new = ArtifactInfo(artifact, info.size, time.time(), info.etag, meta)
            objects[artifact] = (data, new)
        return new

    def containers(self) -> builtins.list[str]:
        with self._lock:
            return sorted(self._store)

    def create_container(self, container: str) -> None:
        if not container or "/" in container or container in (".", ".."):
            raise InvalidName(f"invalid container name {container!r}")
        with self._lock:
            if container in self._store:
                raise AlreadyExists(f"container {container!r} already exists")
            self._store[container] = {}

    def delete_container(self, container: str) -> None:
        with self._lock:
            if self._container(container):
                raise NotEmpty(f"container {container!r} is not empty")
            del self._store[container]

    def health_check(self) -> None:
        return None

    def get_metrics(self) -> dict[str, float]:
        with self._lock:
            return {
                "operations": float(self._ops),
                "artifacts": float(sum(len(c) for c in self._store.values())),
                "bytes": float(sum(len(d) for c in self._store.values() for d, _ in c.values())),
            }
