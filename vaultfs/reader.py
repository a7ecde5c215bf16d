"""The read path of clean files: blocks from memory, the disk cache or ranged gets, with read-ahead.

A read is split into fixed-size blocks keyed by the artifact's version at open.
Each block comes from, in order: a small in-memory LRU of recent blocks, the
on-disk :class:`~vaultfs.cache.BlockCache` (if the backend uses one), a fetch
already in flight for the same block, or a new ranged get.

A reader that keeps asking for the next block is sequential: its read-ahead
window doubles on each such read, up to ``read_ahead_max``, and the blocks in
the window are fetched in the background, at most ``concurrency`` at a time for
the whole mount.  A read elsewhere resets the window, so random access costs no
extra requests.  Memory is bounded by the in-memory LRU plus ``concurrency``
blocks in flight.

Await points: fetching a block awaits a worker thread (disk) or the backend;
other reads of the same file may run meanwhile and share the fetch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cachetools
import trio

from . import metrics
from .backend import Backend
from .cache import BlockCache, BlockKey

log = logging.getLogger(__name__)


@dataclass
class ReadState:
    """One open file's read position and read-ahead window."""

    container: str
    artifact: str
    version: str
    size: int
    next_block: int = 0
    window: int = 0
    ahead_until: int = 0
    tasks: set[int] = field(default_factory=set)


class Reader:
    """Reads blocks for every open clean file of one backend."""

    def __init__(
        self,
        backend: Backend,
        cache: BlockCache | None,
        block_size: int,
        read_ahead_max: int,
        concurrency: int = 8,
        memory_blocks: int = 32,
    ) -> None:
        self.backend = backend
        self.cache = cache
        self.block_size = block_size
        window = read_ahead_max // block_size
        if cache is None:
            # Without a disk cache, read-ahead lands only in memory: a window
            # larger than what memory keeps would evict blocks before their read.
            window = min(window, memory_blocks // 2)
        self.max_window = max(0, window)
        self._evictions_seen = 0
        self._limiter = trio.CapacityLimiter(concurrency)
        self._memory: cachetools.LRUCache[BlockKey, bytes] = cachetools.LRUCache(maxsize=memory_blocks)
        self._inflight: dict[BlockKey, trio.Event] = {}
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Run read-ahead in ``nursery``; without it, reads still work but nothing is fetched ahead."""
        self._nursery = nursery

    def _key(self, state: ReadState, index: int) -> BlockKey:
        return BlockKey(
            self.backend.name, state.container, state.artifact, state.version, index, self.block_size
        )

    async def read(self, state: ReadState, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of the version ``state`` was opened at."""
        end = min(offset + size, state.size)
        if offset >= end:
            return b""
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        self._advance(state, first, last)
        parts = [await self.block(state, i) for i in range(first, last + 1)]
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        start = offset - first * bs
        return data[start : start + end - offset]

    def _advance(self, state: ReadState, first: int, last: int) -> None:
        """Grow or reset the read-ahead window, and fetch the blocks it now covers."""
        if first == state.next_block - 1:
            pass  # another read inside the block just read: neither a step forward nor a jump
        elif first == state.next_block:
            state.window = min(max(1, state.window * 2), self.max_window)
        else:
            state.window = 0
            state.ahead_until = last + 1
        state.next_block = last + 1
        if self._nursery is None or state.window == 0:
            return
        blocks = -(-state.size // self.block_size)
        upto = min(last + 1 + state.window, blocks)
        for index in range(max(state.ahead_until, last + 1), upto):
            if index not in state.tasks:
                state.tasks.add(index)
                self._nursery.start_soon(self._prefetch, state, index)
        state.ahead_until = max(state.ahead_until, upto)

    async def _prefetch(self, state: ReadState, index: int) -> None:
        try:
            async with self._limiter:
                await self.block(state, index)
        except Exception as exc:
            log.debug("read-ahead of %s/%s block %d failed: %s", state.container, state.artifact, index, exc)
        finally:
            state.tasks.discard(index)

    async def block(self, state: ReadState, index: int) -> bytes:
        """Block ``index`` of the file, fetched at most once at a time."""
        key = self._key(state, index)
        while True:
            data = self._memory.get(key)
            if data is not None:
                return data
            pending = self._inflight.get(key)
            if pending is None:
                break
            await pending.wait()
            if key not in self._memory:
                break  # that fetch failed: try again here, so this reader sees the error itself
        done = self._inflight[key] = trio.Event()
        try:
            data = await self._load(key)
            self._memory[key] = data
            return data
        finally:
            if self._inflight.get(key) is done:
                del self._inflight[key]
            done.set()

    async def _load(self, key: BlockKey) -> bytes:
        name = self.backend.name
        if self.cache is not None:
            cached = await trio.to_thread.run_sync(self.cache.get, key)
            if cached is not None:
                metrics.CACHE_HITS.labels(name).inc()
                return cached
        metrics.CACHE_MISSES.labels(name).inc()
        data = await self.backend.read(
            key.container, key.artifact, key.index * key.block_size, key.block_size
        )
        if self.cache is not None:
            await trio.to_thread.run_sync(self.cache.put, key, data)
            stats = self.cache.stats
            metrics.CACHE_BYTES.labels(name).set(stats.bytes)
            metrics.CACHE_EVICTIONS.labels(name).inc(stats.evictions - self._evictions_seen)
            self._evictions_seen = stats.evictions
        return data
