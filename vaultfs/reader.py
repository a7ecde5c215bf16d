"""The read path of clean files: blocks from memory, the disk cache or ranged gets, with read-ahead.

A read is split into fixed-size blocks keyed by the artifact's version at open.
Each block comes from, in order: a small in-memory LRU of recent blocks, the
on-disk :class:`~vaultfs.cache.BlockCache` (if the backend uses one), a fetch
already in flight for the same block, or a new ranged get.

A reader that keeps asking for the next block is sequential: its read-ahead
window doubles on each such read, up to ``read_ahead_max``, and the blocks in
the window are fetched in the background, at most ``concurrency`` at a time for
the whole mount.  A read elsewhere resets the window, so random access costs no
extra requests; and a small read there (a quarter of a block or less) whose
block is neither in memory nor on disk nor on its way fetches only its own
bytes, which it does not keep: a 4 KiB read then waits for 4 KiB, not for a
whole block, and the kernel's page cache keeps what it read.

Memory is bounded by the in-memory LRU (``memory`` bytes, by default twice
``read_ahead_max``: read-ahead lands there before it is read) plus
``concurrency`` gets of up to :data:`FETCH_SIZE` in flight, plus two such runs
of spare buffers, plus :data:`WRITES_BEHIND` blocks waiting for the disk cache.

Buffers are reused: a block evicted from memory goes back to a pool of spare
buffers that the next get fills, unless something still holds a view of it.
Fresh memory costs a page fault and a zeroing per 4 KiB, under the GIL, which
halved the throughput of local reads.  Reads return views of the blocks, not
copies; pyfuse3 hands them to the kernel before the next await.

Await points: fetching a block awaits a worker thread (disk) or the backend;
other reads of the same file may run meanwhile and share the fetch.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

import cachetools
import trio

from . import metrics
from .backend import Backend
from .cache import BlockCache, BlockKey

log = logging.getLogger(__name__)

#: Blocks fetched for a waiting read whose disk-cache write may still run after
#: the read is answered: a small file's read then waits for the network only, not
#: also for the disk (a direct write waits for the device).  Read-ahead needs no
#: such thing, its blocks are served as they arrive, before their write.
WRITES_BEHIND = 4
#: Read-ahead fetches consecutive blocks with one ranged get of up to this many
#: bytes: object stores pay a round trip per request, so larger gets go faster.
FETCH_SIZE = 8 << 20


class _Pool:
    """Spare block buffers, taken by worker threads and given back by the trio loop."""

    def __init__(self, block_size: int, limit: int) -> None:
        self.block_size = block_size
        self.limit = limit
        # list.pop and list.append are atomic: no lock between threads and the loop.
        self._free: list[bytearray] = []

    def take(self) -> bytearray:
        try:
            return self._free.pop()
        except IndexError:
            return bytearray(self.block_size)

    def give(self, block: bytearray | memoryview) -> None:
        """Keep ``block`` for reuse if it is a whole buffer that nothing else refers to."""
        # Three references: the caller's, our argument and getrefcount's own.  Any
        # view of the buffer (a read still joining blocks, a write to the disk
        # cache) holds one more, and such a buffer must never be overwritten.
        if (
            isinstance(block, bytearray)
            and len(block) == self.block_size
            and len(self._free) < self.limit
            and sys.getrefcount(block) <= 3
        ):
            self._free.append(block)


class _Blocks(cachetools.LRUCache[BlockKey, "bytearray | memoryview"]):
    """The in-memory LRU of blocks; evicted buffers go back to the pool."""

    def __init__(self, maxsize: int, pool: _Pool, evicted: Callable[[BlockKey], None]) -> None:
        super().__init__(maxsize=maxsize)
        self._pool = pool
        self._evicted = evicted

    def popitem(self) -> tuple[BlockKey, bytearray | memoryview]:
        key, block = super().popitem()
        self._pool.give(block)
        self._evicted(key)
        return key, block


def _contiguous(keys: list[BlockKey]) -> list[list[BlockKey]]:
    """``keys`` (in index order) split where the block indices stop being consecutive."""
    runs: list[list[BlockKey]] = []
    for key in keys:
        if runs and runs[-1][-1].index + 1 == key.index:
            runs[-1].append(key)
        else:
            runs.append([key])
    return runs


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


class Reader:
    """Reads blocks for every open clean file of one backend."""

    def __init__(
        self,
        backend: Backend,
        cache: BlockCache | None,
        block_size: int,
        read_ahead_max: int,
        concurrency: int = 8,
        memory: int | None = None,
    ) -> None:
        self.backend = backend
        self.cache = cache
        self.block_size = block_size
        # Recent and read-ahead blocks, shared by all open files.
        memory_blocks = max(4, (2 * read_ahead_max if memory is None else memory) // block_size)
        # Read-ahead lands in memory first: a window larger than half of what
        # memory keeps would evict blocks before their read.
        self.max_window = max(0, min(read_ahead_max // block_size, memory_blocks // 2))
        self.run_blocks = max(1, min(FETCH_SIZE // block_size, self.max_window))
        self._evictions_seen = 0
        self._limiter = trio.CapacityLimiter(concurrency)
        # Spares only bridge an eviction and the next get: two runs are plenty.
        self._pool = _Pool(block_size, 2 * self.run_blocks)
        self._ahead: set[BlockKey] = set()  # first blocks fetched ahead (fetch_first_block), not read yet
        self._memory = _Blocks(memory_blocks, self._pool, self._ahead.discard)
        self._inflight: dict[BlockKey, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._writes = trio.Semaphore(WRITES_BEHIND)

    def start(self, nursery: trio.Nursery) -> None:
        """Run read-ahead in ``nursery``; without it, reads still work but nothing is fetched ahead."""
        self._nursery = nursery

    @property
    def spare_blocks(self) -> int:
        """Blocks memory can take beside the largest read-ahead window without evicting it."""
        return int(self._memory.maxsize) - self.max_window

    def fetch_first_block(self, container: str, artifact: str, version: str, size: int) -> bool:
        """Start fetching, in the background, block 0 of another artifact that is about to be read.

        It lands in memory (and the disk cache) like read-ahead; a read that asks
        for it meanwhile waits for this get instead of sending its own.  At most
        :attr:`spare_blocks` such blocks wait unread in memory at a time, for all
        directories together: False, and nothing fetched, when that many do.
        """
        state = ReadState(container, artifact, version, size)
        key = self._key(state, 0)
        if self._nursery is None or size <= 0 or key in self._ahead:
            return True  # nothing to fetch, or on its way already
        if len(self._ahead) >= self.spare_blocks:
            return False
        self._ahead.add(key)  # until read, evicted, or its get failed
        self._nursery.start_soon(self._prefetch, state, 0, 1)
        return True

    def _key(self, state: ReadState, index: int) -> BlockKey:
        return BlockKey(
            self.backend.name, state.container, state.artifact, state.version, index, self.block_size
        )

    async def read(self, state: ReadState, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` bytes at ``offset`` of the version ``state`` was opened at.

        A read inside one block is a view of that block, not a copy: the kernel
        copies it straight from the buffer the driver filled.
        """
        end = min(offset + size, state.size)
        if offset >= end:
            return b""
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        jumped = self._advance(state, first, last)
        if jumped and first == last and end - offset <= bs // 4:
            small = await self._read_small(state, first, offset, end)
            if small is not None:
                return small
        parts = []
        for index in range(first, last + 1):
            data = await self.block(state, index)
            base = index * bs
            parts.append(memoryview(data)[max(offset, base) - base : end - base])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_small(self, state: ReadState, index: int, offset: int, end: int) -> bytes | None:
        """``[offset, end)`` by a ranged get of just those bytes, or None if block ``index`` is at hand."""
        key = self._key(state, index)
        if key in self._memory or key in self._inflight:
            return None
        cached = await self._cached(key, state.size)
        if cached is not None:
            self._memory[key] = cached
            return None
        metrics.CACHE_MISSES.labels(self.backend.name).inc()
        return await self.backend.read(state.container, state.artifact, offset, end - offset)

    def _advance(self, state: ReadState, first: int, last: int) -> bool:
        """Grow or reset the read-ahead window, and fetch the blocks it now covers; True on a jump."""
        jumped = False
        if first == state.next_block - 1:
            pass  # another read inside the block just read: neither a step forward nor a jump
        elif first == state.next_block:
            state.window = min(max(1, state.window * 2), self.max_window)
        else:
            jumped = True
            state.window = 0
            state.ahead_until = last + 1
        state.next_block = last + 1
        if self._nursery is None or state.window == 0:
            return jumped
        blocks = -(-state.size // self.block_size)
        start = max(state.ahead_until, last + 1)
        upto = min(last + 1 + state.window, blocks)
        # Whole runs only, except at the end of the file: a window that moves on
        # by one block per read must still be fetched in large gets.  While the
        # window is small (a read that may not stay sequential) runs are small too.
        step = min(self.run_blocks, state.window)
        if upto < blocks:
            upto = start + (upto - start) // step * step
        for begin in range(start, upto, step):
            self._nursery.start_soon(self._prefetch, state, begin, min(begin + step, upto))
        state.ahead_until = max(state.ahead_until, upto)
        return jumped

    async def _prefetch(self, state: ReadState, start: int, end: int) -> None:
        """Fetch blocks ``start`` to ``end`` that nobody has or is fetching, in as few gets as possible."""
        async with self._limiter:
            claimed: dict[BlockKey, trio.Event] = {}
            for index in range(start, end):
                key = self._key(state, index)
                if key not in self._memory and key not in self._inflight:
                    claimed[key] = self._inflight[key] = trio.Event()
            try:
                missing = list(claimed)
                # Asking the index first spares a task per block the disk cache lacks (all, when cold).
                on_disk = [key for key in missing if self.cache is not None and self.cache.may_hold(key)]
                if on_disk:
                    found = await self._from_disk(on_disk, state.size, claimed)
                    missing = [key for key in missing if key not in found]
                for run in _contiguous(missing):
                    await self._fetch(run, state.size, claimed)
            except Exception as exc:
                log.debug("read-ahead of %s/%s failed: %s", state.container, state.artifact, exc)
            finally:
                for key, done in claimed.items():
                    if self._inflight.get(key) is done:
                        del self._inflight[key]
                    done.set()
                    if key not in self._memory:
                        self._ahead.discard(key)  # failed: nothing waits unread

    async def _from_disk(
        self, keys: list[BlockKey], size: int, waiting: dict[BlockKey, trio.Event]
    ) -> set[BlockKey]:
        """Those of ``keys`` the disk cache holds, read in parallel, each in memory as soon as it is read.

        One worker thread per block: the disk serves several reads at once, and a
        reader waiting for the first block does not wait for the others.
        """
        found: set[BlockKey] = set()

        async def one(key: BlockKey) -> None:
            data = await self._cached(key, size)
            if data is not None:
                self._memory[key] = data
                found.add(key)
                waiting[key].set()

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(one, key)
        return found

    async def _cached(self, key: BlockKey, size: int) -> bytearray | None:
        """Block ``key`` of a ``size``-byte file from the disk cache, or None.

        The index is asked on the loop first: a block it lacks (every block of a
        cold read) costs no worker thread.
        """
        if self.cache is None or not self.cache.may_hold(key):
            return None
        data = await trio.to_thread.run_sync(self._from_cache, key, size)
        if data is not None:
            metrics.CACHE_HITS.labels(self.backend.name).inc()
        return data

    def _from_cache(self, key: BlockKey, size: int) -> bytearray | None:
        """In a worker thread: :meth:`_cached`'s read, whole blocks into spare buffers."""
        assert self.cache is not None
        if (key.index + 1) * self.block_size > size:
            return self.cache.get(key)
        buffer = self._pool.take()
        data = self.cache.get(key, buffer)
        if data is None:
            self._pool.give(buffer)
        return data

    async def _fetch(
        self,
        run: list[BlockKey],
        size: int,
        waiting: dict[BlockKey, trio.Event] | None = None,
        behind: bool = False,
    ) -> list[bytearray]:
        """One ranged get for consecutive blocks, kept in memory and on disk; returns the blocks.

        Each block is in memory, and its event in ``waiting`` set, as soon as it
        has arrived: a reader waiting for the first block of an 8 MiB get does
        not wait for the other seven.  With ``behind``, the disk-cache write may
        still run after this returns (see :data:`WRITES_BEHIND`).
        """
        first, bs = run[0], self.block_size
        offset = first.index * bs
        length = min(len(run) * bs, size - offset)
        token = trio.lowlevel.current_trio_token()

        def landed(i: int, block: bytearray) -> None:
            key = run[i]
            self._memory[key] = block
            done = (waiting or {}).get(key)
            if done is not None:
                done.set()

        def arrived(i: int, block: bytearray) -> None:  # in the worker thread
            # An abandoned attempt may deliver after the loop has ended.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(landed, i, block)

        data = await self.backend.read_blocks(
            first.container, first.artifact, offset, length, bs, self._pool.take, arrived
        )
        metrics.CACHE_MISSES.labels(self.backend.name).inc(len(run))
        if self.cache is not None:
            # Fewer blocks than asked for only if the artifact changed behind our back.
            blocks = list(zip(run, data, strict=False))
            if behind and self._nursery is not None:
                await self._writes.acquire()  # the disk is that far behind: keep pace with it
                self._nursery.start_soon(self._write_behind, blocks)
            else:
                await trio.to_thread.run_sync(self._to_disk, blocks)
        return data

    async def _write_behind(self, blocks: list[tuple[BlockKey, bytearray]]) -> None:
        try:
            await trio.to_thread.run_sync(self._to_disk, blocks)
        finally:
            self._writes.release()

    async def writes_done(self) -> None:
        """Return once every block fetched so far is in the disk cache."""
        for _ in range(WRITES_BEHIND):
            await self._writes.acquire()
        for _ in range(WRITES_BEHIND):
            self._writes.release()

    def _to_disk(self, blocks: list[tuple[BlockKey, bytearray]]) -> None:
        assert self.cache is not None
        for key, data in blocks:
            self.cache.put(key, data)
        self._publish_cache_figures()

    async def block(self, state: ReadState, index: int) -> bytearray | memoryview:
        """Block ``index`` of the file, fetched at most once at a time."""
        key = self._key(state, index)
        self._ahead.discard(key)
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
            data = await self._load(key, state.size)
            self._memory[key] = data
            return data
        finally:
            if self._inflight.get(key) is done:
                del self._inflight[key]
            done.set()

    async def _load(self, key: BlockKey, size: int) -> bytearray | memoryview:
        cached = await self._cached(key, size)
        if cached is not None:
            return cached
        fetched = await self._fetch([key], size, behind=True)
        return fetched[0] if fetched else bytearray()

    def _publish_cache_figures(self) -> None:
        assert self.cache is not None
        stats, name = self.cache.stats, self.backend.name
        metrics.CACHE_BYTES.labels(name).set(stats.bytes)
        metrics.CACHE_EVICTIONS.labels(name).inc(stats.evictions - self._evictions_seen)
        self._evictions_seen = stats.evictions
