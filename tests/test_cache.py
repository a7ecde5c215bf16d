"""The block cache and the reader, with a driver that counts its calls."""

from __future__ import annotations

import errno
import io
import os
import threading
from pathlib import Path
from typing import IO, Any

import pytest
import trio
import trio.testing
from fakes import CountingDriver

from vaultfs.backend import Backend
from vaultfs.cache import ALIGN, BlockCache, BlockKey
from vaultfs.reader import Reader, ReadState

BS = 64 * 1024


def key(index: int, version: str = "v1", artifact: str = "a") -> BlockKey:
    return BlockKey("b", "c", artifact, version, index, BS)


def test_put_get_and_miss(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path, budget=10 * BS)
    assert cache.get(key(0)) is None
    cache.put(key(0), b"x" * BS)
    assert cache.get(key(0)) == b"x" * BS
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


def test_other_version_or_artifact_is_a_miss(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path, budget=10 * BS)
    cache.put(key(0), b"old")
    assert cache.get(key(0, version="v2")) is None
    assert cache.get(key(0, artifact="other")) is None
    assert cache.get(key(1)) is None


def test_lru_eviction_keeps_the_budget(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path, budget=3 * (BS + ALIGN))
    for i in range(3):
        cache.put(key(i), bytes([i]) * BS)
    assert cache.get(key(0)) is not None  # 0 is now the most recently used
    cache.put(key(3), b"3" * BS)
    assert cache.get(key(1)) is None  # the least recently used went first
    assert cache.get(key(0)) is not None
    assert cache.stats.evictions == 1
    on_disk = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert on_disk == cache.stats.bytes <= 3 * (BS + ALIGN)


def test_restart_reuses_valid_blocks(tmp_path: Path) -> None:
    first = BlockCache(tmp_path, budget=10 * BS)
    first.put(key(0), b"kept")
    (tmp_path / "ab").mkdir(exist_ok=True)
    (tmp_path / "ab" / "leftover.1234.tmp").write_bytes(b"half")  # an interrupted write
    second = BlockCache(tmp_path, budget=10 * BS)
    assert second.get(key(0)) == b"kept"
    assert not list(tmp_path.rglob("*.tmp"))


def test_corrupt_and_foreign_blocks_are_misses_and_removed(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path, budget=10 * BS)
    cache.put(key(0), b"a" * 1000)
    cache.put(key(1), b"b" * 1000)
    path0 = next(p for p in tmp_path.rglob(key(0).file_name()))
    raw = bytearray(path0.read_bytes())
    raw[-1] ^= 0xFF
    path0.write_bytes(bytes(raw))
    path1 = next(p for p in tmp_path.rglob(key(1).file_name()))
    name2 = key(2).file_name()
    (tmp_path / name2[:2]).mkdir(exist_ok=True)
    os.replace(path1, tmp_path / name2[:2] / name2)
    reopened = BlockCache(tmp_path, budget=10 * BS)
    assert reopened.get(key(0)) is None
    assert not path0.exists()
    assert reopened.get(key(2)) is None  # a file under block 2's name holding block 1's header
    assert reopened.stats.corrupt == 2


def test_a_block_read_into_a_buffer_is_checked_like_any_other(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path, budget=10 * BS)
    whole, odd = os.urandom(BS), os.urandom(1000)
    cache.put(key(0), whole)
    cache.put(key(1), odd)
    into = bytearray(BS)
    assert cache.get(key(0), into) is into and into == whole
    assert cache.get(key(1), bytearray(1000)) == odd  # padded on disk to a whole page, checked with it
    assert cache.get(key(1), bytearray(BS)) is None  # a whole block asked for, a short one found
    path0 = next(tmp_path.rglob(key(0).file_name()))
    raw = bytearray(path0.read_bytes())
    raw[-1] ^= 0xFF
    path0.write_bytes(bytes(raw))
    assert cache.get(key(0), bytearray(BS)) is None
    assert cache.stats.corrupt == 2 and not path0.exists()


def test_a_file_system_refusing_direct_io_gets_the_same_blocks_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No file system on these machines refuses O_DIRECT (tmpfs and FUSE accept it now), so the
    # refusal older tmpfs and some network file systems give is made here.
    real_open, tried = os.open, []

    def open_(path: Any, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            tried.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", open_)
    cache = BlockCache(tmp_path, budget=10 * BS)
    cache.put(key(0), b"a" * BS)
    cache.put(key(1), b"b" * 100)
    assert len(tried) == 1  # asked once, then remembered
    monkeypatch.undo()
    assert BlockCache(tmp_path, budget=10 * BS).get(key(0)) == b"a" * BS
    assert cache.get(key(1), bytearray(100)) == b"b" * 100


def run_reader(
    driver: CountingDriver, cache: BlockCache | None, fn: Any, read_ahead: int = 0, memory: int = 64 << 20
) -> Any:
    backend = Backend("b", driver, retries=0)
    reader = Reader(backend, cache, BS, read_ahead, concurrency=4, memory=memory)

    async def main() -> Any:
        async with trio.open_nursery() as nursery:
            reader.start(nursery)
            result = await fn(reader)
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


def stored(driver: CountingDriver, data: bytes) -> ReadState:
    if "c" not in driver.containers():
        driver.create_container("c")
    info = driver.put("c", "a", io.BytesIO(data))
    return ReadState("c", "a", info.etag, info.size)


def test_second_read_is_served_without_driver_calls(tmp_path: Path) -> None:
    driver = CountingDriver()
    data = os.urandom(5 * BS + 10)
    state = stored(driver, data)
    cache = BlockCache(tmp_path, budget=100 * BS)

    async def twice(reader: Reader) -> None:
        assert await reader.read(state, 0, len(data)) == data
        calls = len(driver.gets)
        await reader.writes_done()
        reader._memory.clear()
        fresh = ReadState(state.container, state.artifact, state.version, state.size)
        assert await reader.read(fresh, 0, len(data)) == data
        assert len(driver.gets) == calls

    run_reader(driver, cache, twice)
    assert len(driver.gets) == 6
    assert cache.stats.hits == 6


class ReadsNoFile(BlockCache):
    """A cache that fails the test if a read looks for a block file the index does not list."""

    def get(self, key: BlockKey, into: bytearray | None = None) -> Any:
        assert self.may_hold(key), f"looked on disk for block {key.index}, which the index does not list"
        return super().get(key, into)


def test_a_cold_read_does_not_look_on_disk_for_blocks_the_index_lacks(tmp_path: Path) -> None:
    driver = CountingDriver()
    data = os.urandom(3 * BS)
    state = stored(driver, data)
    cache = ReadsNoFile(tmp_path, budget=100 * BS)

    async def cold_then_warm(reader: Reader) -> None:
        assert await reader.read(state, 0, 100) == data[:100]  # a small read: a ranged get
        assert await reader.read(state, 2 * BS, BS) == data[2 * BS :]  # a block: fetched and kept
        await reader.writes_done()
        reader._memory.clear()
        assert await reader.read(state, 2 * BS, BS) == data[2 * BS :]  # from disk now

    run_reader(driver, cache, cold_then_warm)
    assert len(driver.gets) == 2
    assert cache.stats.hits == 1 and cache.stats.misses == 2


def test_concurrent_misses_of_one_block_share_one_get(tmp_path: Path) -> None:
    driver = CountingDriver()
    driver.delay = 0.05
    data = os.urandom(BS)
    state = stored(driver, data)

    async def many(reader: Reader) -> None:
        results: list[bytes] = []

        async def one(offset: int) -> None:
            results.append(bytes(await reader.read(state, offset, 4096)))

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(one, i * 4096)
        assert sorted(results) == sorted(data[i * 4096 : (i + 1) * 4096] for i in range(8))

    run_reader(driver, None, many)
    assert len(driver.gets) == 1


def test_sequential_reads_fetch_ahead_random_reads_do_not(tmp_path: Path) -> None:
    driver = CountingDriver()
    data = os.urandom(32 * BS)
    state = stored(driver, data)

    async def sequential(reader: Reader) -> None:
        for i in range(4):
            assert await reader.read(state, i * BS, BS) == data[i * BS : (i + 1) * BS]
        await trio.sleep(0.2)

    run_reader(driver, BlockCache(tmp_path / "s", 100 * BS), sequential, read_ahead=8 * BS)
    fetched_until = max(offset + (length or 0) for _, offset, length in driver.gets)
    assert fetched_until > 4 * BS, "read-ahead fetched nothing past what was read"
    assert len(driver.gets) < 8, "read-ahead should fetch consecutive blocks in one get"

    driver.gets.clear()
    state2 = ReadState(state.container, state.artifact, state.version, state.size)

    async def scattered(reader: Reader) -> None:
        for i in (20, 3, 27, 9):
            await reader.read(state2, i * BS + 5, 100)
        await trio.sleep(0.2)

    run_reader(driver, BlockCache(tmp_path / "r", 100 * BS), scattered, read_ahead=8 * BS)
    assert sorted(offset // BS for _, offset, _ in driver.gets) == [3, 9, 20, 27]


def test_a_new_version_does_not_use_old_blocks(tmp_path: Path) -> None:
    driver = CountingDriver()
    cache = BlockCache(tmp_path, budget=100 * BS)
    old = stored(driver, b"1" * BS)

    async def read_old(reader: Reader) -> None:
        assert await reader.read(old, 0, BS) == b"1" * BS

    run_reader(driver, cache, read_old)
    new = stored(driver, b"2" * BS)
    assert new.version != old.version

    async def read_new(reader: Reader) -> None:
        assert await reader.read(new, 0, BS) == b"2" * BS

    run_reader(driver, cache, read_new)
    assert len(driver.gets) == 2


def test_reused_memory_never_changes_data_a_read_still_holds(tmp_path: Path) -> None:
    # Memory for 4 blocks while several readers stream a 48-block file: blocks are
    # evicted and their buffers refilled all the time, including while a read that
    # spans two blocks holds the first and waits for the second.
    driver = CountingDriver()
    driver.delay = 0.002
    data = os.urandom(48 * BS)
    state = stored(driver, data)
    kept: list[tuple[int, bytes | memoryview]] = []

    async def stream(reader: Reader, step: int, skew: int) -> None:
        mine = ReadState(state.container, state.artifact, state.version, state.size)
        for offset in range(skew, len(data), step):
            got = await reader.read(mine, offset, step)
            kept.append((offset, got))
            assert got == data[offset : offset + step]

    async def many(reader: Reader) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, reader, BS, 0)
            nursery.start_soon(stream, reader, BS, BS // 2)  # every read spans two blocks
            nursery.start_soon(stream, reader, 3 * BS, 7)

    run_reader(driver, BlockCache(tmp_path, 100 * BS), many, read_ahead=8 * BS, memory=4 * BS)
    # Views returned long ago still show what they showed then.
    assert all(got == data[offset : offset + len(got)] for offset, got in kept)


def test_scattered_small_reads_fetch_only_their_bytes(tmp_path: Path) -> None:
    driver = CountingDriver()
    data = os.urandom(32 * BS)
    state = stored(driver, data)

    async def scattered(reader: Reader) -> None:
        assert await reader.read(state, 0, BS) == data[:BS]  # the start: a whole block
        for offset in (20 * BS + 4096, 3 * BS, 27 * BS + 100):
            assert await reader.read(state, offset, 4096) == data[offset : offset + 4096]
        assert await reader.read(state, 9 * BS, BS) == data[9 * BS : 10 * BS]  # a large read: its block

    run_reader(driver, BlockCache(tmp_path, 100 * BS), scattered, read_ahead=8 * BS)
    assert sorted((offset, length) for _, offset, length in driver.gets) == [
        (0, BS),
        (BS, BS),  # read-ahead after the first read
        (3 * BS, 4096),
        (9 * BS, BS),
        (20 * BS + 4096, 4096),
        (27 * BS + 100, 4096),
    ]


class HeldStream(io.RawIOBase):
    """Gives ``first`` bytes, then waits for ``release`` before giving the rest."""

    def __init__(self, data: bytes, first: int, release: threading.Event) -> None:
        self._data, self._pos, self._first, self._release = data, 0, first, release

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._pos >= self._first:
            self._release.wait(10)
        end = self._first if self._pos < self._first else len(self._data)
        n = min(len(buf), end - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class HoldingDriver(CountingDriver):
    """Read-ahead gets (those of more than one block) stall after their first block."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def get(self, container: str, artifact: str, offset: int = 0, length: int | None = None) -> IO[bytes]:
        stream = super().get(container, artifact, offset, length)
        if length is None or length <= BS:
            return stream
        return HeldStream(stream.read(), BS, self.release)  # type: ignore[return-value]


def test_a_block_is_served_as_soon_as_it_arrives_not_when_its_whole_get_ends() -> None:
    driver = HoldingDriver()
    data = os.urandom(32 * BS)
    state = stored(driver, data)

    async def sequential(reader: Reader) -> None:
        try:
            for i in range(8):
                with trio.fail_after(5):  # block i would otherwise wait for the rest of its get
                    assert await reader.read(state, i * BS, BS) == data[i * BS : (i + 1) * BS]
                if any(length and length > BS for _, _, length in driver.gets):
                    break
            else:
                raise AssertionError("no read-ahead get of several blocks was made")
            # The first block of the stalled multi-block get is readable now.
            _, offset, _ = next(g for g in driver.gets if g[2] and g[2] > BS)
            with trio.fail_after(5):
                assert await reader.read(state, offset, BS) == data[offset : offset + BS]
        finally:
            driver.release.set()

    run_reader(driver, None, sequential, read_ahead=8 * BS)


def test_blocks_fetched_ahead_of_other_files_wait_unread_within_a_bound(tmp_path: Path) -> None:
    # Read-ahead across files (vaultfs/fileahead.py) asks for the first block of files about to be
    # read; for all directories together, no more than memory can keep beside the largest window
    # wait unread, so none is evicted before its read and fetched twice.
    driver = CountingDriver()
    driver.create_container("c")
    names = [f"f{i}" for i in range(10)]
    versions = {name: driver.put("c", name, io.BytesIO(name.encode() * 100)).etag for name in names}

    async def fn(reader: Reader) -> tuple[int, list[bool], bool, bool]:
        started = [reader.fetch_first_block("c", n, versions[n], 200) for n in names]
        again = reader.fetch_first_block("c", "f0", versions["f0"], 200)  # on its way: not asked twice
        for name in names[:4]:
            assert await reader.read(ReadState("c", name, versions[name], 200), 0, 200) == name.encode() * 100
        return reader.spare_blocks, started, again, reader.fetch_first_block("c", "f9", versions["f9"], 200)

    spare, started, again, after_reads = run_reader(driver, None, fn, memory=4 * BS)
    assert spare == 4 and started == [True] * 4 + [False] * 6
    assert again and after_reads  # reading them made room for more
    asked = [g[0] for g in driver.gets if g[0] != "f9"]
    assert sorted(asked) == names[:4]  # each fetched once: ahead, or by its read if that came first
