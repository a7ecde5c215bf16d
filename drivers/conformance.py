"""The driver conformance suite: one set of tests every driver must pass.

A driver package uses it with one fixture::

    from drivers.conformance import DriverConformance

    class TestMyDriver(DriverConformance):
        @pytest.fixture
        def driver(self):
            d = MyDriver(MyDriver.Options(...))
            yield d
            d.close()

Each test works in a fresh container made by the ``container`` fixture, which it
empties and deletes afterwards.  Override the class attributes below where a
backend legitimately differs.
"""

from __future__ import annotations

import hashlib
import io
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import pytest

from .base import ArtifactInfo, Driver
from .errors import AlreadyExists, DriverError, InvalidName, NameTooLong, NotEmpty, NotFound

MiB = 1 << 20


class PatternStream(io.RawIOBase):
    """A readable of ``size`` deterministic bytes made on the fly, so a test can
    stream a large artifact without holding it."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.pos = 0
        self.block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        out = memoryview(buf)
        done = 0
        while done < n:
            start = (self.pos + done) % len(self.block)
            piece = self.block[start : start + n - done]
            out[done : done + len(piece)] = piece
            done += len(piece)
        self.pos += n
        return n

    @staticmethod
    def digest(size: int, seed: int = 0) -> str:
        """sha256 of the bytes a ``PatternStream(size, seed)`` yields."""
        h = hashlib.sha256()
        s = PatternStream(size, seed)
        while chunk := s.read(MiB):
            h.update(chunk)
        return h.hexdigest()


def read_all(stream: IO[bytes]) -> bytes:
    """Read and close a stream returned by ``Driver.get``."""
    with stream:
        chunks = []
        while chunk := stream.read(MiB):
            chunks.append(chunk)
        return b"".join(chunks)


def sha256_of(stream: IO[bytes]) -> str:
    """Hash a stream in bounded chunks and close it."""
    h = hashlib.sha256()
    with stream:
        while chunk := stream.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def put_bytes(driver: Driver, container: str, name: str, data: bytes, **kw: object) -> ArtifactInfo:
    """Store ``data`` under ``name``."""
    return driver.put(container, name, io.BytesIO(data), size=len(data), **kw)  # type: ignore[arg-type]


class DriverConformance:
    """Behaviour every vaultfs driver shares.  Subclass and provide ``driver``."""

    #: Size of the "large" round trip (multipart on S3).
    large_size = 64 * MiB
    #: The memory driver holds data in memory by design.
    streams_data = True
    #: Python heap growth allowed while streaming ``large_size`` in and out.
    stream_memory_limit = 24 * MiB

    @pytest.fixture
    def driver(self) -> Iterator[Driver]:
        raise NotImplementedError("provide a `driver` fixture")

    @pytest.fixture
    def container(self, driver: Driver) -> Iterator[str]:
        name = f"conf-{uuid.uuid4().hex[:12]}"
        driver.create_container(name)
        yield name
        with ThreadPoolExecutor(8) as pool:
            names = [e.name for e in driver.list(name) if isinstance(e, ArtifactInfo)]
            list(pool.map(lambda n: driver.delete(name, n), names))
        driver.delete_container(name)

    # -- round trips -----------------------------------------------------
    @pytest.mark.parametrize("size", [0, 1, 4096, 1 * MiB + 17])
    def test_round_trip(self, driver: Driver, container: str, size: int) -> None:
        data = bytes(PatternStream(size, seed=size).read(size)) if size else b""
        info = put_bytes(driver, container, "dir/file.bin", data)
        assert info.size == size
        assert info.etag
        assert read_all(driver.get(container, "dir/file.bin")) == data

    def test_large_round_trip_streams(self, driver: Driver, container: str) -> None:
        size = self.large_size
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            info = driver.put(container, "big", PatternStream(size, seed=7), size=size)  # type: ignore[arg-type]
            assert info.size == size
            assert sha256_of(driver.get(container, "big")) == PatternStream.digest(size, seed=7)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        if self.streams_data:
            assert peak < self.stream_memory_limit, f"peak Python heap {peak / MiB:.1f} MiB while streaming"

    def test_put_replaces_whole_artifact(self, driver: Driver, container: str) -> None:
        put_bytes(driver, container, "a", b"x" * 5000)
        put_bytes(driver, container, "a", b"short")
        assert read_all(driver.get(container, "a")) == b"short"
        assert driver.stat(container, "a").size == 5

    def test_put_reads_at_most_size_bytes(self, driver: Driver, container: str) -> None:
        driver.put(container, "a", io.BytesIO(b"0123456789"), size=4)
        assert read_all(driver.get(container, "a")) == b"0123"

    def test_put_without_size(self, driver: Driver, container: str) -> None:
        driver.put(container, "a", io.BytesIO(b"no size given"))
        assert read_all(driver.get(container, "a")) == b"no size given"

    # -- put_file ---------------------------------------------------------
    def test_put_file_copies_the_file(self, driver: Driver, container: str, tmp_path: Path) -> None:
        src = tmp_path / "src"
        src.write_bytes(b"first" * 1000)
        info = driver.put_file(container, "f/copied", src, metadata={"mode": "100644"})
        assert (info.size, dict(info.metadata or {})) == (5000, {"mode": "100644"})
        src.write_bytes(b"changed later")  # not adopted: the caller may go on using its file
        assert read_all(driver.get(container, "f/copied")) == b"first" * 1000
        assert dict(driver.stat(container, "f/copied").metadata or {}) == {"mode": "100644"}

    def test_put_file_adopting_the_file(self, driver: Driver, container: str, tmp_path: Path) -> None:
        src = tmp_path / "src"
        data = bytes(PatternStream(MiB + 3, seed=3).read(MiB + 3))
        src.write_bytes(data)
        info = driver.put_file(container, "f/adopted", src, metadata={"mode": "100600"}, adopt=True)
        assert info.size == len(data)
        # Adopted again (new metadata for the same data, a replayed upload), then unlinked: the
        # artifact keeps its data and takes the newest metadata, and no other name appears.
        again = driver.put_file(container, "f/adopted", src, metadata={"mode": "100644"}, adopt=True)
        assert again.etag
        src.unlink()
        assert read_all(driver.get(container, "f/adopted")) == data
        assert dict(driver.stat(container, "f/adopted").metadata or {}) == {"mode": "100644"}
        assert [e.name for e in driver.list(container)] == ["f/adopted"]

    def test_put_file_into_missing_container(self, driver: Driver, tmp_path: Path) -> None:
        src = tmp_path / "src"
        src.write_bytes(b"x")
        with pytest.raises(NotFound):
            driver.put_file(f"missing-{uuid.uuid4().hex[:10]}", "a", src, adopt=True)

    def test_unicode_and_odd_names(self, driver: Driver, container: str) -> None:
        names = ["ünïcødé/文件.txt", "with space", "semi;colon", "percent%20", "plus+sign", "tilde~"]
        for n in names:
            put_bytes(driver, container, n, n.encode())
        for n in names:
            assert read_all(driver.get(container, n)) == n.encode()
        listed = {e.name for e in driver.list(container)}
        assert set(names) <= listed

    # -- ranges ----------------------------------------------------------
    @pytest.mark.parametrize(
        ("offset", "length", "expect"),
        [
            (0, 1, slice(0, 1)),
            (999, 1, slice(999, 1000)),
            (0, None, slice(0, 1000)),
            (500, None, slice(500, 1000)),
            (10, 20, slice(10, 30)),
            (990, 100, slice(990, 1000)),
            (1000, 10, slice(1000, 1000)),
            (5000, None, slice(1000, 1000)),
            (10, 0, slice(0, 0)),
        ],
    )
    def test_ranged_get(
        self, driver: Driver, container: str, offset: int, length: int | None, expect: slice
    ) -> None:
        data = bytes(range(256)) * 3 + bytes(range(232))
        assert len(data) == 1000
        put_bytes(driver, container, "r", data)
        assert read_all(driver.get(container, "r", offset, length)) == data[expect]

    # -- metadata --------------------------------------------------------
    def test_metadata_put_stat_list_update(self, driver: Driver, container: str) -> None:
        meta = {"mode": "100644", "uid": "1000", "mtime": "1700000000.5"}
        put_bytes(driver, container, "m/file", b"content", metadata=meta)
        assert dict(driver.stat(container, "m/file").metadata or {}) == meta
        listed = [e for e in driver.list(container) if e.name == "m/file"]
        assert len(listed) == 1
        assert isinstance(listed[0], ArtifactInfo)
        assert listed[0].metadata is None or dict(listed[0].metadata) == meta
        new = {"mode": "100755", "uid": "0"}
        driver.update_metadata(container, "m/file", new)
        assert dict(driver.stat(container, "m/file").metadata or {}) == new
        assert read_all(driver.get(container, "m/file")) == b"content"

    def test_update_metadata_of_missing_artifact(self, driver: Driver, container: str) -> None:
        with pytest.raises(NotFound):
            driver.update_metadata(container, "nope", {"a": "b"})

    def test_copy_keeps_content_and_metadata(self, driver: Driver, container: str) -> None:
        put_bytes(driver, container, "src", b"payload", metadata={"mode": "100600"})
        driver.copy(container, "src", container, "dst/copy")
        assert read_all(driver.get(container, "dst/copy")) == b"payload"
        assert dict(driver.stat(container, "dst/copy").metadata or {}) == {"mode": "100600"}
        assert read_all(driver.get(container, "src")) == b"payload"

    # -- listing ---------------------------------------------------------
    def _fill(self, driver: Driver, container: str, names: list[str]) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: put_bytes(driver, container, n, n.encode()), names))

    def test_list_order_prefix_delimiter_start_after(self, driver: Driver, container: str) -> None:
        # '-' and '.' sort before '/', so a flat sort and a directory walk disagree here.
        names = ["a-c", "a.d", "a/b", "a/d/c", "a/e", "a0", "b", "z/y/x"]
        self._fill(driver, container, names)
        assert [e.name for e in driver.list(container)] == sorted(names)
        assert [e.name for e in driver.list(container, prefix="a/")] == ["a/b", "a/d/c", "a/e"]
        top = list(driver.list(container, delimiter="/"))
        assert [(type(e).__name__, e.name) for e in top] == [
            ("ArtifactInfo", "a-c"),
            ("ArtifactInfo", "a.d"),
            ("Prefix", "a/"),
            ("ArtifactInfo", "a0"),
            ("ArtifactInfo", "b"),
            ("Prefix", "z/"),
        ]
        level = list(driver.list(container, prefix="a/", delimiter="/"))
        assert [(type(e).__name__, e.name) for e in level] == [
            ("ArtifactInfo", "a/b"),
            ("Prefix", "a/d/"),
            ("ArtifactInfo", "a/e"),
        ]
        assert [e.name for e in driver.list(container, start_after="a/b")] == [
            "a/d/c",
            "a/e",
            "a0",
            "b",
            "z/y/x",
        ]
        sizes = {e.name: e.size for e in driver.list(container) if isinstance(e, ArtifactInfo)}
        assert sizes == {n: len(n.encode()) for n in names}

    def test_list_resumes_after_a_prefix(self, driver: Driver, container: str) -> None:
        self._fill(driver, container, ["d/a", "d/b/1", "d/b/2", "d/c"])
        after_prefix = "d/b/\U0010ffff"  # how a pager skips a whole common prefix
        rest = list(driver.list(container, prefix="d/", delimiter="/", start_after=after_prefix))
        assert [e.name for e in rest] == ["d/c"]

    def test_directory_marker(self, driver: Driver, container: str) -> None:
        put_bytes(driver, container, "dir/", b"")
        assert driver.stat(container, "dir/").size == 0
        assert [e.name for e in driver.list(container, delimiter="/")] == ["dir/"]

    def test_short_stream_is_refused_and_keeps_the_old_artifact(self, driver: Driver, container: str) -> None:
        put_bytes(driver, container, "a", b"old")
        with pytest.raises(DriverError):
            driver.put(container, "a", io.BytesIO(b"12"), size=10)
        assert read_all(driver.get(container, "a")) == b"old"

    def test_put_into_missing_container(self, driver: Driver) -> None:
        with pytest.raises(NotFound):
            put_bytes(driver, f"missing-{uuid.uuid4().hex[:10]}", "a", b"x")

    def test_list_more_than_1000(self, driver: Driver, container: str) -> None:
        names = [f"many/{i:05d}" for i in range(1100)]
        self._fill(driver, container, names)
        listed = [e.name for e in driver.list(container, prefix="many/")]
        assert listed == names
        resumed = [e.name for e in driver.list(container, prefix="many/", start_after="many/01049")]
        assert resumed == names[1050:]

    def test_list_entries_have_size_mtime_etag(self, driver: Driver, container: str) -> None:
        before = time.time()
        put_bytes(driver, container, "f", b"12345")
        (entry,) = list(driver.list(container))
        assert isinstance(entry, ArtifactInfo)
        assert entry.size == 5
        assert entry.etag
        assert before - 5 <= entry.mtime <= time.time() + 5

    def test_list_missing_container(self, driver: Driver) -> None:
        with pytest.raises(NotFound):
            list(driver.list(f"missing-{uuid.uuid4().hex[:10]}"))

    # -- stat / delete / errors ------------------------------------------
    def test_stat(self, driver: Driver, container: str) -> None:
        info = put_bytes(driver, container, "s", b"abc")
        st = driver.stat(container, "s")
        assert (st.name, st.size, st.etag) == ("s", 3, info.etag)

    def test_etag_changes_with_content(self, driver: Driver, container: str) -> None:
        one = put_bytes(driver, container, "e", b"one").etag
        two = put_bytes(driver, container, "e", b"two").etag
        assert one != two

    def test_missing_artifact(self, driver: Driver, container: str) -> None:
        with pytest.raises(NotFound):
            driver.stat(container, "missing")
        with pytest.raises(NotFound):
            read_all(driver.get(container, "missing"))

    def test_delete(self, driver: Driver, container: str) -> None:
        put_bytes(driver, container, "d/x", b"1")
        driver.delete(container, "d/x")
        with pytest.raises(NotFound):
            driver.stat(container, "d/x")
        assert not [e for e in driver.list(container) if isinstance(e, ArtifactInfo)]
        driver.delete(container, "d/x")  # missing: succeeds, as on S3

    def test_bad_names(self, driver: Driver, container: str) -> None:
        for bad in ["", "../escape", "a/../../b", "/absolute", "a//b", "./x", "nul\x00byte"]:
            with pytest.raises(InvalidName):
                put_bytes(driver, container, bad, b"x")
        with pytest.raises(NameTooLong):
            put_bytes(driver, container, "n" * 1025, b"x")
        assert not [e for e in driver.list(container) if isinstance(e, ArtifactInfo)]

    # -- containers ------------------------------------------------------
    def test_containers(self, driver: Driver, container: str) -> None:
        assert container in driver.containers()
        with pytest.raises(AlreadyExists):
            driver.create_container(container)

    def test_delete_non_empty_container(self, driver: Driver, container: str) -> None:
        put_bytes(driver, container, "keep", b"1")
        with pytest.raises(NotEmpty):
            driver.delete_container(container)
        assert read_all(driver.get(container, "keep")) == b"1"

    def test_delete_missing_container(self, driver: Driver) -> None:
        with pytest.raises(NotFound):
            driver.delete_container(f"missing-{uuid.uuid4().hex[:10]}")

    # -- operations ------------------------------------------------------
    def test_health_check_and_metrics(self, driver: Driver, container: str) -> None:
        driver.health_check()
        metrics = driver.get_metrics()
        assert isinstance(metrics, dict)
        assert all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in metrics.items())

    def test_errors_are_driver_errors(self, driver: Driver) -> None:
        with pytest.raises(DriverError):
            driver.stat(f"missing-{uuid.uuid4().hex[:10]}", "x")
