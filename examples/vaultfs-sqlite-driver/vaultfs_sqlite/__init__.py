"""The ``sqlite`` driver: vaultfs containers and artifacts in one SQLite database file.

A worked example of a third-party driver (see ``docs/drivers.md`` in vaultfs).  An
artifact is stored as rows of at most ``chunk_size`` bytes, so ``get`` and ``put``
hold one chunk in memory at a time, never a whole artifact.  Each thread gets its
own connection; the database runs in WAL mode, so readers never wait for a writer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO

from drivers.base import ArtifactInfo, Driver, Prefix, check_artifact_name, check_metadata, split_listing
from drivers.errors import (
    AccessDenied,
    AlreadyExists,
    DriverError,
    InvalidName,
    NotEmpty,
    NotFound,
    QuotaExceeded,
    Unavailable,
)

MiB = 1 << 20
#: Seconds a statement waits for another writer's lock.  Kept well below the backend's
#: per-call timeout, so a busy database surfaces as ``Unavailable`` and is retried with backoff.
BUSY_TIMEOUT = 5.0
#: Rows per listing query.
LIST_PAGE = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS artifacts (
    container TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL,
    etag TEXT NOT NULL, chunk_size INTEGER NOT NULL, metadata TEXT NOT NULL,
    PRIMARY KEY (container, name));
CREATE TABLE IF NOT EXISTS chunks (
    container TEXT NOT NULL, name TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (container, name, idx));
"""

#: SQLite's primary result codes onto the contract; anything else is a plain DriverError.
#: CANTOPEN counts as transient: the database was opened once at start-up, so later it means a
#: new thread could not open it just now (out of file descriptors, say).
_ERRORS: dict[int, type[DriverError]] = {
    sqlite3.SQLITE_BUSY: Unavailable,
    sqlite3.SQLITE_LOCKED: Unavailable,
    sqlite3.SQLITE_IOERR: Unavailable,
    sqlite3.SQLITE_NOMEM: Unavailable,
    sqlite3.SQLITE_CANTOPEN: Unavailable,
    sqlite3.SQLITE_PROTOCOL: Unavailable,
    sqlite3.SQLITE_FULL: QuotaExceeded,
    sqlite3.SQLITE_PERM: AccessDenied,
    sqlite3.SQLITE_READONLY: AccessDenied,
    sqlite3.SQLITE_AUTH: AccessDenied,
}


@contextmanager
def _mapped_errors(what: str) -> Iterator[None]:
    """Raise sqlite3's failures as the contract's errors, chosen by SQLite's result code."""
    try:
        yield
    except UnicodeEncodeError:
        # Names are stored as UTF-8 text; a lone surrogate (an undecodable byte in a
        # file name) has no UTF-8 form, so the backend cannot accept that name.
        raise InvalidName(f"{what}: name is not valid UTF-8") from None
    except sqlite3.Error as exc:
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # extended codes add high bits
        raise _ERRORS.get(code, DriverError)(f"{what}: {exc}") from exc


class _Connection(sqlite3.Connection):
    """A connection ``weakref`` can track, so ``close`` reaches every thread's connection."""


def _chunks(stream: IO[bytes], chunk_size: int, size: int | None) -> Iterator[bytearray]:
    """Cut ``stream`` into chunks of exactly ``chunk_size`` bytes, the last one shorter.

    Streams may return short reads, so each chunk is filled by looping: ``get`` relies on
    every chunk but the last being full to find offset ``n`` in chunk ``n // chunk_size``.
    """
    remaining = size
    while remaining is None or remaining > 0:
        want = chunk_size if remaining is None else min(chunk_size, remaining)
        buf = bytearray()
        while len(buf) < want and (piece := stream.read(want - len(buf))):
            buf += piece
        if buf:
            yield buf
        if len(buf) < want:
            if remaining is not None:
                raise DriverError(f"stream ended {remaining - len(buf)} bytes short of its size")
            return
        if remaining is not None:
            remaining -= want


class _ChunkReader(io.RawIOBase):
    """Bytes ``[pos, end)`` of one artifact, fetched one chunk row at a time as they are read.

    It owns a connection holding a read transaction: WAL gives that transaction a
    snapshot, so a ``put`` replacing the artifact meanwhile does not change what this
    stream returns (as an S3 GET keeps streaming the version it started with).
    """

    def __init__(self, conn: sqlite3.Connection, key: tuple[str, str], pos: int, end: int, chunk: int):
        super().__init__()
        self._conn, self._key, self._pos, self._end, self._chunk_size = conn, key, pos, end, chunk
        self._idx, self._data = -1, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._end:
            return 0
        idx, skip = divmod(self._pos, self._chunk_size)
        if idx != self._idx:
            with _mapped_errors(f"get {'/'.join(self._key)}"):
                row = self._conn.execute(
                    "SELECT data FROM chunks WHERE container = ? AND name = ? AND idx = ?", (*self._key, idx)
                ).fetchone()
            if row is None or len(row[0]) <= skip:
                raise DriverError(f"{'/'.join(self._key)}: chunk {idx} is missing or short")
            self._idx, self._data = idx, row[0]
        n = min(len(buf), self._end - self._pos, len(self._data) - skip)
        buf[:n] = memoryview(self._data)[skip : skip + n]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._conn.close()  # ends the read transaction, letting WAL checkpoints proceed
        super().close()


class SQLiteDriver(Driver):
    """Containers and artifacts in one SQLite file, safe to call from many threads."""

    name = "sqlite"

    @dataclasses.dataclass(frozen=True)
    class Options:
        """The ``config:`` keys of a ``driver: sqlite`` backend."""

        path: str  #: the database file, created on first use
        chunk_size: int = MiB  #: bytes per chunk row for new artifacts

        def __post_init__(self) -> None:
            # Checked here rather than in the driver, so `vaultfs check-config` reports it.
            if self.chunk_size < 1:
                raise ValueError("chunk_size must be at least 1")

    def __init__(self, options: Options) -> None:
        self._path, self._chunk_size = options.path, options.chunk_size
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[_Connection] = weakref.WeakSet()
        with _mapped_errors(f"open {self._path}"):
            db = self._db()
            db.execute("PRAGMA journal_mode=WAL")  # stored in the file; later connections inherit it
            db.executescript(SCHEMA)

    # -- connections -------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every one below is explicit.
        # check_same_thread=False only so close() and a reader's close may run on any thread.
        conn = sqlite3.connect(
            self._path,
            timeout=BUSY_TIMEOUT,
            isolation_level=None,
            check_same_thread=False,
            factory=_Connection,
        )
        # FULL, not the NORMAL often paired with WAL: NORMAL can lose the last commits on power
        # loss, and vaultfs treats an upload as durable once put returns.
        conn.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._open.add(conn)
        return conn

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared between threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on this thread's connection, rolled back on any error.

        IMMEDIATE takes the write lock at BEGIN, so a busy database fails before any work.
        """
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite rolls back by itself after some errors (disk full)
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _require_container(db: sqlite3.Connection, container: str) -> None:
        if db.execute("SELECT 1 FROM containers WHERE name = ?", (container,)).fetchone() is None:
            raise NotFound(f"container {container!r} does not exist")

    # -- containers --------------------------------------------------------
    # (Before the artifact methods: below them, `list` in an annotation would mean the method.)
    def containers(self) -> list[str]:
        with _mapped_errors("containers"):
            return [r[0] for r in self._db().execute("SELECT name FROM containers ORDER BY name")]

    def create_container(self, container: str) -> None:
        if not container or "/" in container or "\x00" in container or container in (".", ".."):
            raise InvalidName(f"invalid container name {container!r}")
        with _mapped_errors(f"create_container {container}"):
            cur = self._db().execute("INSERT OR IGNORE INTO containers VALUES (?)", (container,))
        if cur.rowcount == 0:
            raise AlreadyExists(f"container {container!r} already exists")

    def delete_container(self, container: str) -> None:
        with _mapped_errors(f"delete_container {container}"), self._write() as db:
            self._require_container(db, container)
            if db.execute("SELECT 1 FROM artifacts WHERE container = ? LIMIT 1", (container,)).fetchone():
                raise NotEmpty(f"container {container!r} is not empty")
            db.execute("DELETE FROM containers WHERE name = ?", (container,))

    # -- artifacts ---------------------------------------------------------
    def get(self, container: str, artifact: str, offset: int = 0, length: int | None = None) -> IO[bytes]:
        check_artifact_name(artifact)
        with _mapped_errors(f"get {container}/{artifact}"):
            conn = self._connect()
            try:
                conn.execute("BEGIN")
                row = conn.execute(
                    "SELECT size, chunk_size FROM artifacts WHERE container = ? AND name = ?",
                    (container, artifact),
                ).fetchone()
                if row is None:
                    raise NotFound(f"{container}/{artifact} does not exist")
            except BaseException:
                conn.close()
                raise
        size, chunk_size = row
        end = size if length is None else min(size, offset + length)
        return io.BufferedReader(_ChunkReader(conn, (container, artifact), offset, end, chunk_size))

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
        digest, total = hashlib.sha256(), 0
        # One transaction: readers see the old artifact or the new one, never a mix, and a
        # failure anywhere (including in the caller's stream) leaves the old one in place.
        with _mapped_errors(f"put {container}/{artifact}"), self._write() as db:
            self._require_container(db, container)
            db.execute("DELETE FROM chunks WHERE container = ? AND name = ?", (container, artifact))
            for idx, chunk in enumerate(_chunks(stream, self._chunk_size, size)):
                digest.update(chunk)
                total += len(chunk)
                db.execute("INSERT INTO chunks VALUES (?, ?, ?, ?)", (container, artifact, idx, chunk))
            info = ArtifactInfo(artifact, total, time.time(), digest.hexdigest(), meta)
            db.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (container, artifact, total, info.mtime, info.etag, self._chunk_size, json.dumps(meta)),
            )
        return info

    def delete(self, container: str, artifact: str) -> None:
        check_artifact_name(artifact)
        with _mapped_errors(f"delete {container}/{artifact}"), self._write() as db:
            self._require_container(db, container)
            db.execute("DELETE FROM chunks WHERE container = ? AND name = ?", (container, artifact))
            db.execute("DELETE FROM artifacts WHERE container = ? AND name = ?", (container, artifact))

    def list(
        self, container: str, prefix: str = "", delimiter: str | None = None, start_after: str | None = None
    ) -> Iterator[ArtifactInfo | Prefix]:
        # Checked now rather than at the first next(), so the error comes from this call.
        with _mapped_errors(f"list {container}"):
            self._require_container(self._db(), container)
        return split_listing(self._scan(container, prefix, start_after), prefix, delimiter, start_after)

    def _scan(self, container: str, prefix: str, start_after: str | None) -> Iterator[ArtifactInfo]:
        """Artifacts from ``prefix`` on, in name order, one query per page.

        Each page is a short query resuming after the last name (``name > ?`` on the
        primary key), so no cursor or read transaction stays open between pages, and
        a page may be fetched on whichever thread is iterating.  SQLite compares TEXT
        as UTF-8 bytes, which is the code point order the contract asks for.
        """
        # One lower bound, not two: given `name >= ? AND name > ?`, SQLite seeks the index
        # with only one of them and filters the rest, which can scan most of the container.
        op, bound = (
            (">", start_after) if start_after is not None and start_after >= prefix else (">=", prefix)
        )
        while True:
            with _mapped_errors(f"list {container}"):
                db = self._db()
                rows = db.execute(
                    "SELECT name, size, mtime, etag, metadata FROM artifacts"
                    f" WHERE container = ? AND name {op} ? ORDER BY name LIMIT ?",
                    (container, bound, LIST_PAGE),
                ).fetchall()
            for name, size, mtime, etag, meta in rows:
                if not name.startswith(prefix):
                    return  # past the prefix's range: no later name can match
                yield ArtifactInfo(name, size, mtime, etag, json.loads(meta))
            if len(rows) < LIST_PAGE:
                return
            op, bound = ">", rows[-1][0]

    def stat(self, container: str, artifact: str) -> ArtifactInfo:
        check_artifact_name(artifact)
        with _mapped_errors(f"stat {container}/{artifact}"):
            row = (
                self._db()
                .execute(
                    "SELECT size, mtime, etag, metadata FROM artifacts WHERE container = ? AND name = ?",
                    (container, artifact),
                )
                .fetchone()
            )
        if row is None:
            raise NotFound(f"{container}/{artifact} does not exist")
        return ArtifactInfo(artifact, row[0], row[1], row[2], json.loads(row[3]))

    def update_metadata(self, container: str, artifact: str, metadata: Mapping[str, str]) -> ArtifactInfo:
        check_artifact_name(artifact)
        meta, now = check_metadata(metadata), time.time()
        with _mapped_errors(f"update_metadata {container}/{artifact}"), self._write() as db:
            # fetchall, not fetchone: the UPDATE only completes once RETURNING is drained.
            rows = db.execute(
                "UPDATE artifacts SET metadata = ?, mtime = ? WHERE container = ? AND name = ?"
                " RETURNING size, etag",
                (json.dumps(meta), now, container, artifact),
            ).fetchall()
        if not rows:
            raise NotFound(f"{container}/{artifact} does not exist")
        return ArtifactInfo(artifact, rows[0][0], now, rows[0][1], meta)

    # -- operations --------------------------------------------------------
    def health_check(self) -> None:
        with _mapped_errors("health_check"):
            self._db().execute("SELECT count(*) FROM containers").fetchone()

    def get_metrics(self) -> dict[str, float]:
        # Page counts are O(1); summing artifact sizes would scan a table on every scrape.
        with _mapped_errors("get_metrics"):
            db = self._db()
            page = db.execute("PRAGMA page_size").fetchone()[0]
            return {
                "database_bytes": float(db.execute("PRAGMA page_count").fetchone()[0] * page),
                "free_bytes": float(db.execute("PRAGMA freelist_count").fetchone()[0] * page),
            }

    def close(self) -> None:
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            conn.close()
