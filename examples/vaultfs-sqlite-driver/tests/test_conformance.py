"""Run vaultfs's driver conformance suite against the sqlite driver.

This is all a third-party driver needs: subclass ``DriverConformance`` and provide
a ``driver`` fixture.  Every test of the suite then runs against this driver.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from vaultfs_sqlite import SQLiteDriver

from drivers.conformance import DriverConformance, put_bytes, read_all
from drivers.errors import DriverError, InvalidName, Unavailable


class TestSQLiteDriver(DriverConformance):
    """The whole suite, on a fresh database file per test."""

    @pytest.fixture
    def driver(self, tmp_path: Path) -> Iterator[SQLiteDriver]:
        drv = SQLiteDriver(SQLiteDriver.Options(path=str(tmp_path / "store.db")))
        yield drv
        drv.close()


class TestSmallChunks(TestSQLiteDriver):
    """The suite again with tiny chunks, so ranged reads cross chunk boundaries.

    Class attributes of the suite are the knobs for what a backend legitimately
    does differently; here only the large round trip shrinks, to keep row counts sane.
    """

    large_size = 4 << 20

    @pytest.fixture
    def driver(self, tmp_path: Path) -> Iterator[SQLiteDriver]:
        drv = SQLiteDriver(SQLiteDriver.Options(path=str(tmp_path / "store.db"), chunk_size=97))
        yield drv
        drv.close()


# -- behaviour particular to this driver -------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteDriver]:
    drv = SQLiteDriver(SQLiteDriver.Options(path=str(tmp_path / "store.db"), chunk_size=10))
    drv.create_container("c")
    yield drv
    drv.close()


def test_open_stream_keeps_its_version(store: SQLiteDriver) -> None:
    put_bytes(store, "c", "a", b"old " * 10)
    stream = store.get("c", "a")
    assert stream.read(4) == b"old "
    put_bytes(store, "c", "a", b"new " * 10)
    assert stream.read() == b"old " * 9
    stream.close()
    assert read_all(store.get("c", "a")) == b"new " * 10


def test_artifacts_keep_the_chunk_size_they_were_written_with(store: SQLiteDriver, tmp_path: Path) -> None:
    put_bytes(store, "c", "a", bytes(range(100)))
    other = SQLiteDriver(SQLiteDriver.Options(path=str(tmp_path / "store.db"), chunk_size=7))
    try:
        assert read_all(other.get("c", "a", 15, 30)) == bytes(range(15, 45))
    finally:
        other.close()


def test_short_stream_is_refused_and_keeps_the_old_artifact(store: SQLiteDriver) -> None:
    put_bytes(store, "c", "a", b"kept")
    with pytest.raises(DriverError, match="short"):
        store.put("c", "a", io.BytesIO(b"12345"), size=50)
    assert read_all(store.get("c", "a")) == b"kept"


def test_undecodable_name_is_invalid(store: SQLiteDriver) -> None:
    with pytest.raises(InvalidName):
        put_bytes(store, "c", "bad\udcffname", b"x")


def test_locked_database_is_unavailable(
    store: SQLiteDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vaultfs_sqlite.BUSY_TIMEOUT", 0.05)
    other = SQLiteDriver(SQLiteDriver.Options(path=str(tmp_path / "store.db")))
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(Unavailable):
            put_bytes(other, "c", "a", b"x")
        holder.execute("ROLLBACK")
        put_bytes(other, "c", "a", b"x")
    finally:
        holder.close()
        other.close()


def test_copy_onto_itself_keeps_the_content(store: SQLiteDriver) -> None:
    put_bytes(store, "c", "a", b"0123456789" * 5, metadata={"mode": "100644"})
    store.copy("c", "a", "c", "a", metadata={"mode": "100600"})
    assert read_all(store.get("c", "a")) == b"0123456789" * 5
    assert dict(store.stat("c", "a").metadata or {}) == {"mode": "100600"}


def test_list_resumes_after_a_prefix(store: SQLiteDriver) -> None:
    for name in ["a", "a/b", "a/c/d", "a0", "b/e"]:
        put_bytes(store, "c", name, b"")
    page = [e.name for e in store.list("c", delimiter="/", start_after="a/")]
    assert page == ["a0", "b/"]


def test_concurrent_writers_and_readers(store: SQLiteDriver) -> None:
    versions = {bytes([i]) * 95 for i in range(8)}

    def work(data: bytes) -> bytes:
        put_bytes(store, "c", "shared", data)
        return read_all(store.get("c", "shared"))

    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(work, sorted(versions) * 4))
    assert set(seen) <= versions
    assert read_all(store.get("c", "shared")) in versions
