"""Tests of vaultfs.backend: threads, timeouts, retries, paging, metrics.

The fakes are small real drivers (subclasses of the memory driver) that fail,
stall or count; nothing of ours is mocked.  Each test runs its own
``trio.run`` and uses a fresh backend name, so metric series never mix.
"""

from __future__ import annotations

import io
import itertools
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import pytest
import trio
from prometheus_client import REGISTRY, generate_latest

from drivers.base import ArtifactInfo, Prefix
from drivers.errors import (
    AccessDenied,
    DriverError,
    InvalidName,
    NameTooLong,
    NotFound,
    QuotaExceeded,
    Unavailable,
)
from drivers.memory import MemoryDriver
from vaultfs.backend import Backend
from vaultfs.metrics import outcome_of

# How long a stalled fake waits at most, so a broken test cannot hang the run.
STALL_LIMIT = 10.0


def fresh_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def memory_with(artifacts: Mapping[str, bytes], container: str = "c") -> MemoryDriver:
    driver = MemoryDriver()
    driver.create_container(container)
    for name, data in artifacts.items():
        driver.put(container, name, io.BytesIO(data))
    return driver


class FlakyDriver(MemoryDriver):
    """Fails the first ``failures`` calls of stat/get/put with ``error``; records each call's time."""

    name = "flaky"

    def __init__(self, failures: int, error: DriverError | None = None) -> None:
        super().__init__()
        self.failures = failures
        self.error = error if error is not None else Unavailable("service unavailable")
        self.calls: list[float] = []
        self._flaky_lock = threading.Lock()

    def _maybe_fail(self) -> None:
        with self._flaky_lock:
            self.calls.append(time.monotonic())
            if len(self.calls) <= self.failures:
                raise self.error

    def stat(self, container: str, artifact: str) -> ArtifactInfo:
        self._maybe_fail()
        return super().stat(container, artifact)

    def get(self, container: str, artifact: str, offset: int = 0, length: int | None = None) -> IO[bytes]:
        self._maybe_fail()
        return super().get(container, artifact, offset, length)


class StallingDriver(MemoryDriver):
    """``stat`` blocks until ``release`` is set (or STALL_LIMIT passes)."""

    name = "stalling"

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.calls = 0

    def stat(self, container: str, artifact: str) -> ArtifactInfo:
        self.calls += 1
        self.release.wait(STALL_LIMIT)
        return super().stat(container, artifact)


class ConcurrencyDriver(MemoryDriver):
    """``stat`` takes a while and records the most calls ever in flight at once."""

    name = "concurrency"

    def __init__(self) -> None:
        super().__init__()
        self._count_lock = threading.Lock()
        self.current = 0
        self.most = 0

    def stat(self, container: str, artifact: str) -> ArtifactInfo:
        with self._count_lock:
            self.current += 1
            self.most = max(self.most, self.current)
        try:
            time.sleep(0.03)
            return super().stat(container, artifact)
        finally:
            with self._count_lock:
                self.current -= 1


class CountingListDriver(MemoryDriver):
    """Counts the entries its listings hand out and whether each listing was closed."""

    name = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.yielded: list[int] = []
        self.closed: list[bool] = []

    def list(
        self,
        container: str,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
    ) -> Iterator[ArtifactInfo | Prefix]:
        inner = super().list(container, prefix, delimiter, start_after)
        index = len(self.yielded)
        self.yielded.append(0)
        self.closed.append(False)

        def entries() -> Iterator[ArtifactInfo | Prefix]:
            try:
                for entry in inner:
                    self.yielded[index] += 1
                    yield entry
            finally:
                self.closed[index] = True

        return entries()


class HalfReadPutDriver(MemoryDriver):
    """The first put reads half its stream and fails; keeps each put's stream and its position."""

    name = "halfput"

    def __init__(self) -> None:
        super().__init__()
        # The streams themselves, not their ids: a closed stream's id may be reused.
        self.puts: list[tuple[IO[bytes], int]] = []

    def put(
        self,
        container: str,
        artifact: str,
        stream: IO[bytes],
        size: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ArtifactInfo:
        self.puts.append((stream, stream.tell()))
        if len(self.puts) == 1:
            stream.read((size or 0) // 2)
            raise Unavailable("connection reset during upload")
        return super().put(container, artifact, stream, size, metadata)


class ShortReads(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, as a socket may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        n = self._step if size is None or size < 0 else min(size, self._step)
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk


class ShortReadDriver(MemoryDriver):
    """``get`` streams return three bytes per read."""

    name = "shortread"

    def get(self, container: str, artifact: str, offset: int = 0, length: int | None = None) -> IO[bytes]:
        with super().get(container, artifact, offset, length) as inner:
            return ShortReads(inner.read(), 3)  # type: ignore[return-value]


class StallingStream(io.RawIOBase):
    """Returns ``head``, then blocks until released, then returns ``tail`` (a newer version's bytes)."""

    def __init__(self, head: bytes, tail: bytes, release: threading.Event, done: threading.Event) -> None:
        self._parts = [head, tail]
        self._release = release
        self._done = done

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if not self._parts:
            return b""
        if len(self._parts) == 1:
            self._release.wait(STALL_LIMIT)
        return self._parts.pop(0)

    def close(self) -> None:
        super().close()
        self._done.set()


class StallingGetDriver(MemoryDriver):
    """The first ``get`` stalls after four bytes and, once released, would write other bytes."""

    name = "stallingget"

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.first_done = threading.Event()
        self.gets = 0

    def get(self, container: str, artifact: str, offset: int = 0, length: int | None = None) -> IO[bytes]:
        self.gets += 1
        if self.gets == 1:
            return StallingStream(b"0123", b"XXXXXXXX", self.release, self.first_done)  # type: ignore[return-value]
        return super().get(container, artifact, offset, length)


class BrokenMetricsDriver(MemoryDriver):
    """A driver whose get_metrics fails."""

    name = "brokenmetrics"

    def get_metrics(self) -> dict[str, float]:
        raise RuntimeError("metrics exploded")


# -- retries -----------------------------------------------------------------


def test_retries_unavailable_then_succeeds() -> None:
    driver = FlakyDriver(failures=2)
    driver.create_container("c")
    driver.put("c", "a", io.BytesIO(b"x"))
    name = fresh_name()

    async def main() -> ArtifactInfo:
        async with Backend(name, driver, retries=3, backoff_base=0.001) as backend:
            return await backend.stat("c", "a")

    assert trio.run(main).size == 1
    assert len(driver.calls) == 3
    labels = {"backend": name, "driver": "flaky", "operation": "stat"}
    assert sample("vaultfs_driver_retries_total", **labels) == 2
    assert sample("vaultfs_driver_operations_total", outcome="unavailable", **labels) == 2
    assert sample("vaultfs_driver_operations_total", outcome="ok", **labels) == 1


def test_retries_are_bounded_then_unavailable_is_raised() -> None:
    driver = FlakyDriver(failures=1000)
    name = fresh_name()

    async def main() -> None:
        async with Backend(name, driver, retries=3, backoff_base=0.001) as backend:
            await backend.stat("c", "a")

    with pytest.raises(Unavailable, match="service unavailable"):
        trio.run(main)
    assert len(driver.calls) == 4
    labels = {"backend": name, "driver": "flaky", "operation": "stat"}
    assert sample("vaultfs_driver_retries_total", **labels) == 3
    assert sample("vaultfs_driver_operations_total", outcome="unavailable", **labels) == 4


@pytest.mark.parametrize("error", [NotFound("gone"), AccessDenied("no"), QuotaExceeded("full")])
def test_other_errors_are_not_retried(error: DriverError) -> None:
    driver = FlakyDriver(failures=1000, error=error)
    name = fresh_name()

    async def main() -> None:
        async with Backend(name, driver, retries=5, backoff_base=0.001) as backend:
            await backend.stat("c", "a")

    with pytest.raises(type(error)):
        trio.run(main)
    assert len(driver.calls) == 1
    labels = {"backend": name, "driver": "flaky", "operation": "stat"}
    assert sample("vaultfs_driver_retries_total", **labels) == 0
    assert sample("vaultfs_driver_operations_total", outcome=outcome_of(error), **labels) == 1


def test_zero_retries_means_one_attempt() -> None:
    driver = FlakyDriver(failures=1)

    async def main() -> None:
        async with Backend(fresh_name(), driver, retries=0) as backend:
            await backend.stat("c", "a")

    with pytest.raises(Unavailable):
        trio.run(main)
    assert len(driver.calls) == 1


def test_backoff_grows_between_attempts() -> None:
    base = 0.02
    driver = FlakyDriver(failures=4)
    driver.create_container("c")
    driver.put("c", "a", io.BytesIO(b"x"))

    async def main() -> None:
        async with Backend(fresh_name(), driver, retries=4, backoff_base=base, backoff_max=1.0) as backend:
            await backend.stat("c", "a")

    trio.run(main)
    gaps = [b - a for a, b in itertools.pairwise(driver.calls)]
    assert len(gaps) == 4
    for attempt, gap in enumerate(gaps, start=1):
        ceiling = base * 2 ** (attempt - 1)
        assert gap >= ceiling / 2, (attempt, gaps)  # the fixed half of the wait
        assert gap < ceiling + 0.5, (attempt, gaps)  # the jitter never exceeds the ceiling
    # The fourth wait's floor (0.08 s) is well above the first's ceiling (0.02 s).
    assert gaps[3] > gaps[0] + 0.03, gaps


def test_backoff_is_capped() -> None:
    driver = FlakyDriver(failures=3)
    driver.create_container("c")
    driver.put("c", "a", io.BytesIO(b"x"))

    async def main() -> None:
        async with Backend(fresh_name(), driver, retries=3, backoff_base=0.02, backoff_max=0.02) as backend:
            await backend.stat("c", "a")

    trio.run(main)
    gaps = [b - a for a, b in itertools.pairwise(driver.calls)]
    assert all(0.01 <= gap < 0.2 for gap in gaps), gaps


class SlowDown(Unavailable):
    """A throttling error that carries the server's Retry-After."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


def test_retry_after_is_honoured_up_to_backoff_max() -> None:
    driver = FlakyDriver(failures=1, error=SlowDown(0.15))
    driver.create_container("c")
    driver.put("c", "a", io.BytesIO(b"x"))

    async def main() -> None:
        async with Backend(fresh_name(), driver, retries=1, backoff_base=0.001, backoff_max=1.0) as backend:
            await backend.stat("c", "a")

    trio.run(main)
    assert driver.calls[1] - driver.calls[0] >= 0.15

    driver = FlakyDriver(failures=1, error=SlowDown(100.0))
    driver.create_container("c")
    driver.put("c", "a", io.BytesIO(b"x"))

    async def capped() -> None:
        async with Backend(fresh_name(), driver, retries=1, backoff_base=0.001, backoff_max=0.05) as backend:
            await backend.stat("c", "a")

    trio.run(capped)
    assert driver.calls[1] - driver.calls[0] < 1.0


# -- timeouts, cancellation, concurrency -----------------------------------------


def test_blocking_call_times_out_as_unavailable_and_loop_stays_responsive() -> None:
    driver = StallingDriver()
    name = fresh_name()
    ticks = 0
    outcome: list[BaseException] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async def main() -> float:
        backend = Backend(name, driver, timeout=0.2, retries=1, backoff_base=0.01)
        started = time.monotonic()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                try:
                    await backend.stat("c", "a")
                except Unavailable as exc:
                    outcome.append(exc)
                nursery.cancel_scope.cancel()
            return time.monotonic() - started
        finally:
            driver.release.set()
            await backend.aclose()

    elapsed = trio.run(main)
    assert outcome and "timed out after 0.2s" in str(outcome[0])
    assert driver.calls == 2
    assert elapsed < 1.5
    # A loop blocked by the driver would not have ticked at all; about 40 ticks fit
    # into two 0.2 s attempts, and a loaded machine still manages a few.
    assert ticks >= 5
    labels = {"backend": name, "driver": "stalling", "operation": "stat"}
    assert sample("vaultfs_driver_operations_total", outcome="unavailable", **labels) == 2


def test_outer_cancellation_is_not_retried_or_wrapped() -> None:
    driver = StallingDriver()
    name = fresh_name()

    async def main() -> bool:
        backend = Backend(name, driver, timeout=5.0, retries=5)
        try:
            with trio.move_on_after(0.1) as scope:
                await backend.stat("c", "a")
            return scope.cancelled_caught
        finally:
            driver.release.set()
            await backend.aclose()

    started = time.monotonic()
    assert trio.run(main)
    assert time.monotonic() - started < 2.0
    assert driver.calls == 1
    labels = {"backend": name, "driver": "stalling", "operation": "stat"}
    assert sample("vaultfs_driver_operations_total", outcome="cancelled", **labels) == 1
    assert sample("vaultfs_driver_retries_total", **labels) == 0


def test_workers_bound_concurrent_driver_calls() -> None:
    driver = ConcurrencyDriver()
    driver.create_container("c")
    driver.put("c", "a", io.BytesIO(b"x"))

    async def main() -> None:
        async with Backend(fresh_name(), driver, workers=3) as backend, trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(backend.stat, "c", "a")

    trio.run(main)
    assert driver.most == 3


# -- data paths --------------------------------------------------------------------


def test_read_returns_exact_bytes_at_the_edges() -> None:
    data = bytes(range(10))
    driver = ShortReadDriver()
    driver.create_container("c")
    driver.put("c", "a", io.BytesIO(data))

    async def main() -> list[bytes]:
        async with Backend(fresh_name(), driver) as backend:
            return [
                await backend.read("c", "a", offset, length)
                for offset, length in [(0, 10), (0, 100), (0, 1), (9, 5), (10, 5), (20, 5), (3, 0), (2, 7)]
            ]

    assert trio.run(main) == [data, data, data[:1], data[9:], b"", b"", b"", data[2:9]]


def test_read_blocks_splits_the_range_and_stops_at_the_end() -> None:
    data = bytes(range(250))
    driver = ShortReadDriver()  # three bytes per read: blocks are filled across many reads
    driver.create_container("c")
    driver.put("c", "a", io.BytesIO(data))

    async def main() -> list[list[bytes]]:
        async with Backend(fresh_name(), driver) as backend:
            return [
                [bytes(b) for b in await backend.read_blocks("c", "a", offset, length, 100)]
                for offset, length in [(0, 250), (0, 1000), (100, 100), (240, 100), (250, 100), (0, 0)]
            ]

    assert trio.run(main) == [
        [data[:100], data[100:200], data[200:]],
        [data[:100], data[100:200], data[200:]],
        [data[100:200]],
        [data[240:]],
        [],
        [],
    ]


def test_read_blocks_fills_the_callers_buffers() -> None:
    data = b"x" * 30
    given: list[bytearray] = []

    def new_block() -> bytearray:
        given.append(bytearray(b"?" * 10))
        return given[-1]

    async def main() -> list[bytearray]:
        async with Backend(fresh_name(), memory_with({"a": data})) as backend:
            return await backend.read_blocks("c", "a", 5, 25, 10, new_block)

    blocks = trio.run(main)
    assert [bytes(b) for b in blocks] == [b"x" * 10, b"x" * 10, b"x" * 5]
    # Whole blocks fill the caller's buffers; the short last one (a small file) one of its size.
    assert all(b is g for b, g in zip(blocks[:2], given, strict=True))
    assert len(given) == 2


def test_read_of_missing_artifact_raises_not_found() -> None:
    async def main() -> None:
        async with Backend(fresh_name(), memory_with({})) as backend:
            await backend.read("c", "missing", 0, 10)

    with pytest.raises(NotFound):
        trio.run(main)


def test_read_into_file_path_and_fileobj(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    driver = memory_with({"a": data})
    target = tmp_path / "staged"

    async def main() -> tuple[int, int, bytes]:
        async with Backend(fresh_name(), driver) as backend:
            whole = await backend.read_into_file("c", "a", target)
            buffer = io.BytesIO(b"head:")
            buffer.seek(5)
            part = await backend.read_into_file("c", "a", buffer, offset=100, length=50)
            return whole, part, buffer.getvalue()

    whole, part, buffered = trio.run(main)
    assert whole == len(data) and target.read_bytes() == data
    assert part == 50 and buffered == b"head:" + data[100:150]


def test_read_into_file_missing_artifact_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "staged"

    async def main() -> None:
        async with Backend(fresh_name(), memory_with({})) as backend:
            await backend.read_into_file("c", "missing", target)

    with pytest.raises(NotFound):
        trio.run(main)
    assert not target.exists()


def test_abandoned_read_into_file_attempt_never_writes_after_the_retry(tmp_path: Path) -> None:
    data = b"0123456789abcdef"
    driver = StallingGetDriver()
    driver.create_container("c")
    driver.put("c", "a", io.BytesIO(data))
    target = tmp_path / "staged"

    async def main() -> int:
        async with Backend(fresh_name(), driver, timeout=0.2, retries=2, backoff_base=0.001) as backend:
            written = await backend.read_into_file("c", "a", target)
            # Let the abandoned first attempt go on; it must stop before writing.
            driver.release.set()
            assert await trio.to_thread.run_sync(driver.first_done.wait, STALL_LIMIT)
            return written

    assert trio.run(main) == len(data)
    assert driver.gets >= 2
    assert target.read_bytes() == data


def test_put_file_retry_sends_the_file_from_its_start(tmp_path: Path) -> None:
    data = b"staged content " * 1000
    path = tmp_path / "staging"
    path.write_bytes(data)
    driver = HalfReadPutDriver()
    driver.create_container("c")
    name = fresh_name()

    async def main() -> ArtifactInfo:
        async with Backend(name, driver, backoff_base=0.001) as backend:
            return await backend.put_file("c", "a", path, metadata={"mode": "644"})

    info = trio.run(main)
    assert len(driver.puts) == 2
    (first_stream, _), (second_stream, second_position) = driver.puts
    assert second_stream is not first_stream and first_stream.closed
    assert second_position == 0
    with driver.get("c", "a") as stored:
        assert stored.read() == data
    assert info.size == len(data) and driver.stat("c", "a").metadata == {"mode": "644"}
    assert sample("vaultfs_driver_bytes_total", backend=name, driver="halfput", direction="written") == len(
        data
    )


def test_list_page_pages_through_a_large_listing() -> None:
    driver = CountingListDriver()
    driver.create_container("c")
    names = [f"obj-{i:05d}" for i in range(2500)]
    for n in names:
        driver.put("c", n, io.BytesIO(b""))

    async def main() -> list[list[ArtifactInfo | Prefix]]:
        pages: list[list[ArtifactInfo | Prefix]] = []
        async with Backend(fresh_name(), driver) as backend:
            start_after = None
            while True:
                page = await backend.list_page("c", start_after=start_after, limit=1000)
                pages.append(page)
                if len(page) < 1000:
                    return pages
                start_after = page[-1].name

    pages = trio.run(main)
    assert [len(p) for p in pages] == [1000, 1000, 500]
    assert [e.name for p in pages for e in p] == names
    # Each call took no more than a page from the driver, and closed the listing.
    assert driver.yielded == [1000, 1000, 500]
    assert all(driver.closed)


def test_list_page_with_delimiter() -> None:
    driver = memory_with({"a/1": b"", "a/2": b"", "b": b"", "c/1": b""})

    async def main() -> tuple[list[ArtifactInfo | Prefix], list[ArtifactInfo | Prefix]]:
        async with Backend(fresh_name(), driver) as backend:
            first = await backend.list_page("c", delimiter="/", limit=2)
            rest = await backend.list_page("c", delimiter="/", start_after=first[-1].name)
            return first, rest

    first, rest = trio.run(main)
    assert [e.name for e in first] == ["a/", "b"] and isinstance(first[0], Prefix)
    assert [e.name for e in rest] == ["c/"]


def test_other_operations_round_trip() -> None:
    driver = MemoryDriver()
    name = fresh_name()

    async def main() -> None:
        async with Backend(name, driver) as backend:
            await backend.create_container("c")
            assert await backend.containers() == ["c"]
            info = await backend.put_bytes("c", "a", b"hello", metadata={"k": "v"})
            assert info.size == 5
            copied = await backend.copy("c", "a", "c", "b")
            assert copied.metadata == {"k": "v"}
            updated = await backend.update_metadata("c", "b", {"k": "w"})
            assert updated.metadata == {"k": "w"}
            assert (await backend.stat("c", "b")).metadata == {"k": "w"}
            assert await backend.read("c", "b", 1, 3) == b"ell"
            await backend.delete("c", "a")
            await backend.delete("c", "b")
            await backend.delete_container("c")
            assert await backend.containers() == []

    trio.run(main)
    labels = {"backend": name, "driver": "memory"}
    assert sample("vaultfs_driver_bytes_total", direction="written", **labels) == 5
    assert sample("vaultfs_driver_bytes_total", direction="read", **labels) == 3
    assert sample("vaultfs_driver_operations_total", operation="delete", outcome="ok", **labels) == 2
    assert sample("vaultfs_driver_operation_duration_seconds_count", operation="put", **labels) == 1


def test_closed_backend_refuses_calls() -> None:
    async def main() -> None:
        backend = Backend(fresh_name(), MemoryDriver())
        await backend.aclose()
        await backend.aclose()
        await backend.containers()

    with pytest.raises(RuntimeError, match="closed"):
        trio.run(main)


def test_backend_serves_sequential_trio_runs() -> None:
    backend = Backend(fresh_name(), memory_with({"a": b"abc"}))
    assert trio.run(backend.read, "c", "a", 0, 3) == b"abc"
    assert trio.run(backend.containers) == ["c"]
    trio.run(backend.aclose)


# -- health and metrics ------------------------------------------------------------


class FailingHealthDriver(MemoryDriver):
    """A driver whose health check fails while ``down`` is set."""

    name = "failinghealth"

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def health_check(self) -> None:
        if self.down:
            raise Unavailable("endpoint unreachable")


def test_health_check_updates_state_and_gauge() -> None:
    driver = FailingHealthDriver()
    name = fresh_name()

    async def main() -> None:
        async with Backend(name, driver, retries=5) as backend:
            assert not backend.healthy and backend.healthy.checked_at is None
            assert sample("vaultfs_backend_healthy", backend=name) == 0
            latency = await backend.health_check()
            assert latency >= 0 and backend.healthy and backend.healthy.latency == latency
            assert sample("vaultfs_backend_healthy", backend=name) == 1
            driver.down = True
            with pytest.raises(Unavailable):
                await backend.health_check()
            assert not backend.healthy
            assert backend.healthy.error == "endpoint unreachable"
            assert backend.healthy.checked_at is not None
            assert sample("vaultfs_backend_healthy", backend=name) == 0

    trio.run(main)
    # A health check is never retried.
    labels = {"backend": name, "driver": "failinghealth", "operation": "health_check"}
    assert sample("vaultfs_driver_retries_total", **labels) == 0


def test_driver_metrics_collector_exposes_get_metrics() -> None:
    name = fresh_name()
    broken = fresh_name()
    driver = memory_with({"a": b"12345", "b": b"678"})

    async def main() -> None:
        async with Backend(name, driver), Backend(broken, BrokenMetricsDriver()):
            labels = {"backend": name, "driver": "memory"}
            assert sample("vaultfs_driver_reported_artifacts", **labels) == 2
            assert sample("vaultfs_driver_reported_bytes", **labels) == 8
            assert REGISTRY.get_sample_value("vaultfs_driver_reported_operations", labels) is not None
            # A failing driver is left out; the scrape still works.
            assert b"vaultfs_driver_reported_artifacts" in generate_latest(REGISTRY)
        assert REGISTRY.get_sample_value("vaultfs_driver_reported_artifacts", labels) is None

    trio.run(main)


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        (None, "ok"),
        (NotFound("x"), "not_found"),
        (AccessDenied("x"), "access_denied"),
        (QuotaExceeded("x"), "quota_exceeded"),
        (NameTooLong("x"), "name_too_long"),
        (InvalidName("x"), "invalid_name"),
        (Unavailable("x"), "unavailable"),
        (SlowDown(1.0), "unavailable"),
        (DriverError("x"), "error"),
        (ValueError("x"), "error"),
    ],
)
def test_outcome_of(exc: BaseException | None, label: str) -> None:
    assert outcome_of(exc) == label
