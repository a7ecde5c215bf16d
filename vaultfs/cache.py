"""The on-disk block cache.

Artifacts are read in fixed-size blocks.  A block is stored as one file named by
a hash of its key (backend, container, artifact, version, index); the file
starts with a header holding the cache format, the key itself and a checksum of
the payload.  A block is served only if its header names exactly the key asked
for and the payload matches the checksum: a corrupt, foreign or stale block is a
miss, never data.  Because the version (ETag) is part of the key, a changed
artifact simply stops finding its old blocks, which age out.

The in-memory index is a ``cachetools.LRUCache`` weighted by bytes; it is
rebuilt from the directory at start-up (oldest access first), so a remounted
vaultfs reuses what is still valid.  Inserting past the budget evicts least
recently used blocks and deletes their files.  The cache may exceed its budget
only by the blocks being written at that moment.

A block file is laid out for direct I/O: the header is padded to a whole page
and so is the payload, and the checksum covers the padded payload.  Blocks are
written with ``O_DIRECT`` where the file system allows it: on this project's
machines a buffered write of a fresh 1 MiB file ran at about 300 MiB/s of CPU
time (page-cache allocation and copying), a direct one at 1.6-2 GB/s with the
thread waiting on the device instead, and a cold read writes every block it
fetches.  The page cache would only have held a second copy of blocks the
reader already has in memory.

All file I/O here is blocking; callers run these methods in worker threads.
A ``threading.Lock`` guards the index; block data is read and written outside
it (eviction unlinks files under it, which touches no data).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import mmap
import os
import shutil
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cachetools
import xxhash

log = logging.getLogger(__name__)

MAGIC = b"VFSB"
FORMAT = 3
# magic, format, key length, payload length, XXH3-64 of the padded payload (which
# catches torn and corrupted blocks at about 60 GB/s here, where zlib's CRC-32
# ran at 2.5-4 and was most of the cache's CPU time in a cold read; the key in
# the header catches foreign ones)
_HEAD = struct.Struct(">4sHIQQ")
#: Header and payload each start on this boundary, as O_DIRECT wants of offsets, lengths and memory.
ALIGN = 4096


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _digest(*parts: bytes | bytearray | memoryview) -> int:
    state = xxhash.xxh3_64()
    for part in parts:
        state.update(part)
    return state.intdigest()


@dataclass(frozen=True)
class BlockKey:
    """Which bytes a block holds."""

    backend: str
    container: str
    artifact: str
    version: str
    index: int
    block_size: int

    def encoded(self) -> bytes:
        return json.dumps(
            [self.backend, self.container, self.artifact, self.version, self.index, self.block_size],
            ensure_ascii=False,
        ).encode("utf-8", "surrogateescape")

    def file_name(self) -> str:
        return hashlib.sha256(self.encoded()).hexdigest()


@dataclass
class CacheStats:
    """Counters since start-up, and the current size."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    corrupt: int = 0
    bytes: int = 0
    blocks: int = 0


class _Index(cachetools.LRUCache[str, int]):
    """LRU of block file names weighted by file size; evicting deletes the file."""

    def __init__(self, budget: int, on_evict: Any) -> None:
        super().__init__(maxsize=max(budget, 1), getsizeof=lambda size: size)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, int]:
        name, size = super().popitem()
        self._on_evict(name, size)
        return name, size


class BlockCache:
    """Blocks of artifacts in ``directory`` within ``budget`` bytes, keeping ``min_free`` of the disk free."""

    def __init__(self, directory: Path, budget: int, min_free: int = 0) -> None:
        self.directory = directory
        self.budget = budget
        self.min_free = min_free
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._puts = 0
        self._direct = True
        # list.pop and list.append are atomic: worker threads share these without a lock.
        self._images: list[mmap.mmap] = []
        directory.mkdir(parents=True, exist_ok=True)
        found = self._scan()
        # Our own blocks are reclaimable: only other data on the disk shrinks the budget.
        room = shutil.disk_usage(directory).free + sum(size for _, _, size in found) - min_free
        self._index = _Index(max(0, min(budget, room)), self._evicted)
        for _, name, size in sorted(found):
            self._insert(name, size)
        if found:
            log.info(
                "block cache: reusing %d blocks (%d bytes) in %s",
                self.stats.blocks,
                self.stats.bytes,
                directory,
            )

    def _scan(self) -> list[tuple[float, str, int]]:
        """(access time, name, size) of every block file, oldest first; removes crash leftovers."""
        found = []
        for sub in os.scandir(self.directory):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                if entry.name.endswith(".tmp"):
                    os.unlink(entry.path)  # a write interrupted by a crash
                    continue
                st = entry.stat()
                found.append((st.st_atime, entry.name, st.st_size))
        return found

    def _keep_disk_free(self) -> None:
        """Evict until ``min_free`` bytes of the disk are free again (other data may have grown)."""
        while shutil.disk_usage(self.directory).free < self.min_free:
            with self._lock:
                if not self._index:
                    return
                self._index.popitem()

    # -- paths and index -------------------------------------------------
    def _path(self, name: str) -> Path:
        return self.directory / name[:2] / name

    def _evicted(self, name: str, size: int) -> None:
        self.stats.evictions += 1
        self.stats.bytes -= size
        self.stats.blocks -= 1
        self._path(name).unlink(missing_ok=True)

    def _insert(self, name: str, size: int) -> None:
        if size > self._index.maxsize:
            os.unlink(self._path(name))
            return
        with self._lock:
            old = self._index.pop(name, None)
            if old is not None:
                self.stats.bytes -= old
                self.stats.blocks -= 1
            self._index[name] = size
            self.stats.bytes += size
            self.stats.blocks += 1

    def _forget(self, name: str) -> None:
        with self._lock:
            size = self._index.pop(name, None)
            if size is not None:
                self.stats.bytes -= size
                self.stats.blocks -= 1

    # -- the interface ---------------------------------------------------
    def may_hold(self, key: BlockKey) -> bool:
        """Whether the index lists the block: False is a sure miss, True needs :meth:`get`.

        Touches no file and takes no lock (eviction unlinks files under it), so
        the trio loop may ask: a cold read then skips a worker thread that would
        only find nothing.  A block inserted or evicted meanwhile at worst costs
        a fetch from the backend, or a ``get`` that misses.  A sure miss counts
        as one.
        """
        if key.file_name() in self._index:
            return True
        self.stats.misses += 1
        return False

    def get(self, key: BlockKey, into: bytearray | None = None) -> bytearray | None:
        """The block's bytes, or ``None`` on a miss (including a corrupt, foreign or stale file).

        ``into`` is a buffer as long as the block's payload: the payload is then
        read straight into it and ``into`` returned, so a hit costs no fresh
        memory (a page fault and zeroing per 4 KiB, which halved warm reads).
        """
        name = key.file_name()
        with self._lock:
            known = self._index.get(name) is not None  # also marks it recently used
        if not known:
            self.stats.misses += 1
            return None
        try:
            with open(self._path(name), "rb", buffering=0) as f:
                payload = self._read(f.fileno(), key, into)
        except FileNotFoundError:
            self._forget(name)
            self.stats.misses += 1
            return None
        if payload is None:
            self.stats.corrupt += 1
            self.stats.misses += 1
            self._forget(name)
            self._path(name).unlink(missing_ok=True)
            return None
        self.stats.hits += 1
        return payload

    def put(self, key: BlockKey, data: bytes | bytearray | memoryview) -> None:
        """Store a block, evicting least recently used ones past the budget."""
        encoded = key.encoded()
        start = _aligned(_HEAD.size + len(encoded))
        total = start + _aligned(len(data))
        image = self._take_image(total)
        try:
            view = memoryview(image)[:total]
            view[start : start + len(data)] = data
            view[start + len(data) :] = bytes(total - start - len(data))
            digest = _digest(view[start:])
            header = _HEAD.pack(MAGIC, FORMAT, len(encoded), len(data), digest) + encoded
            view[: len(header)] = header
            view[len(header) : start] = bytes(start - len(header))
            name = key.file_name()
            stored = self._write(name, view)
            view.release()
        finally:
            self._images.append(image)
        if not stored:
            return
        self._insert(name, total)
        self._puts += 1
        if self.min_free and self._puts % 64 == 0:
            self._keep_disk_free()

    def _take_image(self, size: int) -> mmap.mmap:
        """A page-aligned scratch buffer of at least ``size`` bytes, one per concurrent put."""
        try:
            image = self._images.pop()
        except IndexError:
            return mmap.mmap(-1, size)
        if len(image) >= size:
            return image
        image.close()
        return mmap.mmap(-1, size)

    def _write(self, name: str, image: memoryview) -> bool:
        """Write the block file ``name`` atomically (a temporary file renamed into place)."""
        path = self._path(name)
        # One writer per thread at a time: the thread's id makes the name unique.
        tmp = path.with_name(f"{name}.{threading.get_ident():x}.tmp")
        try:
            try:
                fd = self._create(tmp)
            except FileNotFoundError:
                path.parent.mkdir(exist_ok=True)  # first block under this prefix, or cleared meanwhile
                fd = self._create(tmp)
            try:
                written = os.write(fd, image)
                if written != len(image):
                    raise OSError(errno.ENOSPC, "short write")
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("block cache: cannot store a block in %s: %s", self.directory, exc.strerror)
            return False
        return True

    def _create(self, path: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        if self._direct:
            try:
                return os.open(path, flags | os.O_DIRECT, 0o600)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # tmpfs and some others refuse O_DIRECT: buffered writes of the same layout.
                log.info("block cache: %s refuses direct I/O; writing through the page cache", self.directory)
                self._direct = False
        return os.open(path, flags, 0o600)

    def clear(self) -> None:
        """Drop every block."""
        with self._lock:
            names = list(self._index)
            self._index.clear()
            self.stats.bytes = self.stats.blocks = 0
        for name in names:
            self._path(name).unlink(missing_ok=True)

    @staticmethod
    def _read(fd: int, key: BlockKey, into: bytearray | None) -> bytearray | None:
        """The payload of block file ``fd`` if its header names ``key``, its length is right and it
        matches its checksum; read into ``into`` (which must be as long as it) or a new buffer."""
        encoded = key.encoded()
        start = _aligned(_HEAD.size + len(encoded))
        head = os.pread(fd, start, 0)
        if len(head) != start:
            return None
        magic, fmt, key_len, payload_len, digest = _HEAD.unpack_from(head)
        named = head[_HEAD.size : _HEAD.size + key_len]
        if (magic, fmt, named) != (MAGIC, FORMAT, encoded):
            return None
        padded = _aligned(payload_len)
        if os.fstat(fd).st_size != start + padded or (into is not None and len(into) != payload_len):
            return None
        payload = bytearray(payload_len) if into is None else into
        padding = bytearray(padded - payload_len)
        if os.preadv(fd, [payload, padding], start) != padded or _digest(payload, padding) != digest:
            return None
        return payload
