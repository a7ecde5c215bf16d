"""Tests specific to the ``local`` driver: path safety, atomic puts, directories, listing, xattrs.

The generic conformance suite lives elsewhere; these cover what only a file-system backend can
get wrong.  Listing semantics are checked differentially against the memory driver.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers._localfs import META_XATTR, TEMP_PREFIX, encode_record, read_record
from drivers.base import ArtifactInfo, Prefix
from drivers.errors import (
    AccessDenied,
    AlreadyExists,
    DriverError,
    InvalidName,
    NameTooLong,
    NotEmpty,
    NotFound,
    QuotaExceeded,
    Unavailable,
)
from drivers.local import LocalDriver, LocalOptions
from drivers.memory import MemoryDriver

C = "c"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere"
    path.mkdir()
    (path / "secret").write_bytes(b"do not touch")
    return path


@pytest.fixture
def driver(root: Path) -> LocalDriver:
    d = LocalDriver(LocalOptions(root=str(root)))
    d.create_container(C)
    return d


def put(d: LocalDriver, name: str, data: bytes = b"", **kw: Any) -> ArtifactInfo:
    return d.put(C, name, io.BytesIO(data), **kw)


def read(d: LocalDriver, name: str, *args: Any) -> bytes:
    with d.get(C, name, *args) as f:
        return f.read()


def names(d: LocalDriver, **kw: Any) -> list[str]:
    return [e.name for e in d.list(C, **kw)]


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path`` (not following symlinks) with file contents."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames:
            out[os.path.relpath(os.path.join(dirpath, n), path)] = None
        for n in filenames:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, path)
            out[rel] = os.readlink(full).encode() if os.path.islink(full) else Path(full).read_bytes()
    return out


def temp_files(path: Path) -> list[str]:
    return [str(p) for p in path.rglob(TEMP_PREFIX + "*")]


class FailingStream(io.RawIOBase):
    """Yields ``good`` bytes, then raises: a client that dies mid-upload."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            raise RuntimeError("client went away")
        n = min(len(buffer), self.left, 1 << 16)
        buffer[:n] = b"x" * n
        self.left -= n
        return n


class GeneratedStream:
    """A readable over a generator of chunks, never holding more than one chunk."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = b""

    def read(self, n: int = -1) -> bytes:
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return b""
            self.pending = chunk
        if n < 0:
            n = len(self.pending)
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


# -- names and path safety ------------------------------------------------------

ESCAPES = ["../x", "a/../../x", "/etc/passwd", "..", "../", "a/../b", "./a", "a/./b", "a//b", "a/b//"]
BAD_NAMES = [*ESCAPES, "", "x\x00y", TEMP_PREFIX + "abc", f"a/{TEMP_PREFIX}x/b", "\ud800"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_refused_and_nothing_written(driver: LocalDriver, tmp_path: Path, name: str) -> None:
    put(driver, "a/b", b"keep")
    before = snapshot(tmp_path)
    with pytest.raises(InvalidName):
        put(driver, name, b"evil")
    for call in (
        lambda: driver.get(C, name),
        lambda: driver.stat(C, name),
        lambda: driver.delete(C, name),
        lambda: driver.update_metadata(C, name, {"k": "v"}),
    ):
        with pytest.raises(InvalidName):
            call()
    assert snapshot(tmp_path) == before


def test_name_length_limits(driver: LocalDriver) -> None:
    put(driver, "s" * 255, b"ok")
    assert read(driver, "s" * 255) == b"ok"
    for name in ("s" * 256, "é" * 128, "d/" + "s" * 256, "/".join(["s" * 250] * 5)):
        with pytest.raises(NameTooLong):
            put(driver, name, b"x")
    assert names(driver) == ["s" * 255]


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", ".vaultfs", ".vaultfs-state", "x\x00"])
def test_bad_container_names(driver: LocalDriver, name: str) -> None:
    with pytest.raises(InvalidName):
        driver.create_container(name)
    with pytest.raises(InvalidName):
        driver.list(name)


def test_long_container_name(driver: LocalDriver) -> None:
    with pytest.raises(NameTooLong):
        driver.create_container("k" * 256)


def test_symlinked_directory_out_of_container(driver: LocalDriver, root: Path, outside: Path) -> None:
    (root / C / "link").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    for name in ("link/x", "link/sub/y", "link/", "link/sub/"):
        with pytest.raises(InvalidName):
            put(driver, name)
    for call in (
        lambda: driver.get(C, "link/secret"),
        lambda: driver.stat(C, "link/secret"),
        lambda: driver.delete(C, "link/secret"),
        lambda: driver.delete(C, "link/"),
        lambda: driver.update_metadata(C, "link/secret", {"k": "v"}),
        lambda: driver.copy(C, "link/secret", C, "stolen"),
    ):
        with pytest.raises(InvalidName):
            call()
    assert names(driver) == []
    assert names(driver, prefix="link/") == []
    assert list(driver.list(C, delimiter="/")) == []
    assert snapshot(outside) == before


def test_symlinked_file_out_of_container(driver: LocalDriver, root: Path, outside: Path) -> None:
    (root / C / "f").symlink_to(outside / "secret")
    (root / C / "d").mkdir()
    (root / C / "d" / "g").symlink_to("../../../elsewhere/secret")
    before = snapshot(outside)
    for name in ("f", "d/g"):
        for call in (
            lambda n=name: put(driver, n, b"overwrite"),
            lambda n=name: driver.get(C, n),
            lambda n=name: driver.stat(C, n),
            lambda n=name: driver.delete(C, n),
            lambda n=name: driver.update_metadata(C, n, {"k": "v"}),
        ):
            with pytest.raises(InvalidName):
                call()
    assert names(driver) == []  # "d" holds something, so it is no empty marker
    assert snapshot(outside) == before


def test_symlink_chain_back_inside_cannot_unlink_outside(
    driver: LocalDriver, root: Path, outside: Path
) -> None:
    # out -> elsewhere, elsewhere/back -> container/real: the full path resolves inside, but the
    # entry a delete would unlink (elsewhere/back) is outside.
    put(driver, "real", b"data")
    (root / C / "out").symlink_to(outside, target_is_directory=True)
    (outside / "back").symlink_to(root / C / "real")
    with pytest.raises(InvalidName):
        driver.delete(C, "out/back")
    assert (outside / "back").is_symlink()


def test_container_symlinked_out_of_root(driver: LocalDriver, root: Path, outside: Path) -> None:
    (root / "evil").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    assert driver.containers() == [C]
    for container in ("evil", "loop"):
        with pytest.raises(InvalidName):
            driver.put(container, "x", io.BytesIO(b"evil"))
        with pytest.raises(InvalidName):
            driver.list(container)
        with pytest.raises(InvalidName):
            driver.delete_container(container)
    assert snapshot(outside) == {"secret": b"do not touch"}


def test_siblings_sharing_a_path_prefix_are_outside(driver: LocalDriver, root: Path, tmp_path: Path) -> None:
    # ".../root/c-other" starts with ".../root/c", and ".../root-evil" with ".../root": a string
    # prefix check would let both through.
    driver.create_container("c-other")
    driver.put("c-other", "private", io.BytesIO(b"other container"))
    (root / C / "sib").symlink_to(root / "c-other", target_is_directory=True)
    (tmp_path / "root-evil").mkdir()
    (root / "evil").symlink_to(tmp_path / "root-evil", target_is_directory=True)
    before = snapshot(tmp_path / "root-evil"), snapshot(root / "c-other")
    with pytest.raises(InvalidName):
        put(driver, "sib/x", b"evil")
    with pytest.raises(InvalidName):
        driver.get(C, "sib/private")
    with pytest.raises(InvalidName):
        driver.put("evil", "x", io.BytesIO(b"evil"))
    assert names(driver) == []
    assert "evil" not in driver.containers()
    assert (snapshot(tmp_path / "root-evil"), snapshot(root / "c-other")) == before


def test_symlinks_inside_container_are_followed(driver: LocalDriver, root: Path) -> None:
    (root / C / "real").mkdir()
    (root / C / "alias").symlink_to("real", target_is_directory=True)
    put(driver, "alias/x", b"via alias")
    assert (root / C / "real" / "x").read_bytes() == b"via alias"
    put(driver, "target", b"t")
    (root / C / "lnk").symlink_to("target")
    assert read(driver, "lnk") == b"t"
    assert driver.stat(C, "lnk").size == 1
    assert names(driver) == ["alias/x", "lnk", "real/x", "target"]
    # Deleting a link removes the link, never the data it points at.
    driver.delete(C, "lnk")
    assert read(driver, "target") == b"t"
    assert names(driver) == ["alias/x", "real/x", "target"]


def test_symlink_loop_does_not_hang_listing(driver: LocalDriver, root: Path) -> None:
    put(driver, "d/x", b"1")
    (root / C / "d" / "up").symlink_to("..", target_is_directory=True)
    (root / C / "self").symlink_to("self")
    assert names(driver) == ["d/x"]
    with pytest.raises((InvalidName, NotFound)):
        driver.get(C, "self")


# -- put: temp files, atomicity, failures ----------------------------------------


def test_temp_files_hidden_and_reserved(driver: LocalDriver, root: Path) -> None:
    put(driver, "d/x", b"1")
    (root / C / (TEMP_PREFIX + "stale")).write_bytes(b"junk")
    (root / C / "d" / (TEMP_PREFIX + "stale")).write_bytes(b"junk")
    assert names(driver) == ["d/x"]
    assert list(driver.list(C, delimiter="/")) == [Prefix("d/")]
    with pytest.raises(InvalidName):
        driver.stat(C, TEMP_PREFIX + "stale")
    driver.delete(C, "d/x")
    # A directory holding only a temp file looks like a put in progress: S3 would show nothing.
    assert names(driver) == []
    driver.delete(C, "d/")  # and a marker delete clears the leftover
    assert os.listdir(root / C) == [TEMP_PREFIX + "stale"]


def test_directory_with_a_put_in_progress_is_not_removed(driver: LocalDriver, root: Path) -> None:
    put(driver, "d/")
    started, release = threading.Event(), threading.Event()

    def slow() -> Iterator[bytes]:
        yield b"first half, "
        started.set()
        release.wait(10)
        yield b"second half"

    result: list[Any] = []
    writer = threading.Thread(
        target=lambda: result.append(driver.put(C, "d/f", cast(IO[bytes], GeneratedStream(slow()))))
    )
    writer.start()
    try:
        assert started.wait(10)
        assert names(driver) == ["d/"]  # the temp file is invisible
        with pytest.raises(NotEmpty, match="in progress"):
            driver.delete(C, "d/")
        with pytest.raises(NotEmpty):
            driver.delete_container(C)
    finally:
        release.set()
        writer.join()
    assert result and read(driver, "d/f") == b"first half, second half"


def test_failed_put_keeps_old_artifact_and_removes_temp(driver: LocalDriver, root: Path) -> None:
    old = put(driver, "doc", b"old contents", metadata={"v": "1"})
    with pytest.raises(RuntimeError):
        driver.put(C, "doc", cast(IO[bytes], FailingStream(3 << 20)), metadata={"v": "2"})
    assert read(driver, "doc") == b"old contents"
    assert driver.stat(C, "doc") == old
    assert temp_files(root) == []
    with pytest.raises(RuntimeError):
        driver.put(C, "new/deep/file", cast(IO[bytes], FailingStream(100)))
    assert temp_files(root) == []
    assert not (root / C / "new").exists(), "directories created for a failed put are removed"
    assert names(driver) == ["doc"]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (errno.EIO, Unavailable),
        (errno.ENOSPC, QuotaExceeded),
        (errno.EDQUOT, QuotaExceeded),
        (errno.EACCES, AccessDenied),
        (errno.EPERM, AccessDenied),
        (errno.ENAMETOOLONG, NameTooLong),
        (errno.EXFULL, DriverError),
    ],
)
def test_os_errors_are_mapped(
    driver: LocalDriver, root: Path, monkeypatch: pytest.MonkeyPatch, code: int, error: type[Exception]
) -> None:
    put(driver, "doc", b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(error) as info:
        put(driver, "doc", b"new")
    assert "c/doc" in str(info.value)
    monkeypatch.undo()
    assert read(driver, "doc") == b"old"
    assert temp_files(root) == []


def test_short_stream_with_size_fails(driver: LocalDriver) -> None:
    put(driver, "doc", b"old")
    with pytest.raises(DriverError, match="ended after 3 of 10"):
        put(driver, "doc", b"abc", size=10)
    assert read(driver, "doc") == b"old"


def test_size_bounds_the_read(driver: LocalDriver) -> None:
    stream = io.BytesIO(b"0123456789")
    info = driver.put(C, "doc", stream, size=4)
    assert info.size == 4
    assert stream.tell() == 4
    assert read(driver, "doc") == b"0123"


@pytest.fixture
def tiny_root(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_enospc_is_quota_exceeded(tiny_root: Path) -> None:
    d = LocalDriver(LocalOptions(root=str(tiny_root)))
    d.create_container(C)
    put(d, "small", b"keep me", metadata={"k": "v"})
    with pytest.raises(QuotaExceeded):
        put(d, "big", b"z" * (3 << 20))
    with pytest.raises(QuotaExceeded):
        put(d, "small", b"z" * (3 << 20))
    assert read(d, "small") == b"keep me"
    assert d.stat(C, "small").metadata == {"k": "v"}
    assert temp_files(tiny_root) == []
    assert names(d) == ["small"]


def test_readers_never_see_half_an_artifact(driver: LocalDriver) -> None:
    versions = (b"A" * 300_000, b"B" * 200_000 + b"b" * 50_000)
    put(driver, "hot", versions[0])
    stop = threading.Event()
    bad: list[int] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            data = read(driver, "hot")
            reads += 1
            if data not in versions:
                bad.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(150):
            put(driver, "hot", versions[i % 2])
    finally:
        stop.set()
        thread.join()
    assert not bad
    assert reads > 0


def test_concurrent_puts_and_deletes_in_shared_directories(driver: LocalDriver, root: Path) -> None:
    # Deletes prune now-empty directories while other threads create files in them.
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(60):
                name = f"shared/{i % 3}/w{n}"
                put(driver, name, b"x")
                assert read(driver, name) == b"x"
                driver.delete(C, name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert names(driver) == []
    assert os.listdir(root / C) == []


def test_large_artifact_streams_with_flat_memory(driver: LocalDriver) -> None:
    size, chunk = 64 << 20, 1 << 20
    peak = baseline = rss()
    digest = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        nonlocal peak
        for i in range(size // chunk):
            block = bytes([i % 251]) * chunk
            digest.update(block)
            peak = max(peak, rss())
            yield block

    info = driver.put(C, "big", cast(IO[bytes], GeneratedStream(chunks())))
    assert info.size == size
    back = hashlib.sha256()
    with driver.get(C, "big") as f:
        while block := f.read(chunk):
            back.update(block)
            peak = max(peak, rss())
    assert back.digest() == digest.digest()
    assert peak - baseline < 32 << 20


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no VmRSS in /proc/self/status")


# -- get -------------------------------------------------------------------------


def test_ranged_get(driver: LocalDriver) -> None:
    put(driver, "r", b"0123456789")
    assert read(driver, "r", 2, 3) == b"234"
    assert read(driver, "r", 7) == b"789"
    assert read(driver, "r", 8, 100) == b"89"
    assert read(driver, "r", 10) == b""
    assert read(driver, "r", 50, 5) == b""
    assert read(driver, "r", 3, 0) == b""
    f = driver.get(C, "r", 1, 4)
    assert f.read(2) == b"12"
    assert f.read() == b"34"
    assert f.read(1) == b""
    f.close()
    with pytest.raises(ValueError):
        f.read(1)
    with pytest.raises(ValueError):
        driver.get(C, "r", -1)


def test_get_missing_and_non_files(driver: LocalDriver, root: Path) -> None:
    put(driver, "d/x", b"1")
    os.mkfifo(root / C / "fifo")
    for name in ("nope", "d", "d/x/y", "fifo"):
        with pytest.raises(NotFound):
            driver.get(C, name)
        with pytest.raises(NotFound):
            driver.stat(C, name)
    assert names(driver) == ["d/x"]
    driver.delete(C, "fifo")  # not an artifact: nothing to delete
    assert (root / C / "fifo").exists()


# -- directories -----------------------------------------------------------------


def test_directory_markers(driver: LocalDriver, root: Path) -> None:
    info = put(driver, "a/b/")
    assert (root / C / "a" / "b").is_dir()
    assert info.name == "a/b/" and info.size == 0
    assert driver.stat(C, "a/b/").size == 0
    assert read(driver, "a/b/") == b""
    with pytest.raises(NotFound):
        driver.stat(C, "a/b")
    assert driver.stat(C, "a/").size == 0  # the directory exists, so its marker answers
    assert names(driver) == ["a/b/"]
    assert list(driver.list(C, delimiter="/")) == [Prefix("a/")]
    assert list(driver.list(C, prefix="a/", delimiter="/")) == [Prefix("a/b/")]
    assert names(driver, prefix="a/b/", delimiter="/") == ["a/b/"]

    put(driver, "a/b/f", b"1")
    assert names(driver) == ["a/b/", "a/b/f"]  # an explicit marker stays listed, like S3
    with pytest.raises(NotEmpty):
        driver.delete(C, "a/b/")
    driver.delete(C, "a/b/f")
    assert names(driver) == ["a/b/"]  # the marked directory survives its last child
    driver.delete(C, "a/b/")
    assert names(driver) == []
    assert os.listdir(root / C) == []  # the implied parent went with it
    driver.delete(C, "a/b/")  # deleting a missing marker succeeds


def test_implied_and_external_directories(driver: LocalDriver, root: Path) -> None:
    put(driver, "p/q/r", b"1")
    assert names(driver) == ["p/q/r"]
    assert driver.stat(C, "p/q/").size == 0  # the directory exists, so the marker answers
    with pytest.raises(NotEmpty):
        driver.delete(C, "p/")
    assert names(driver) == ["p/q/r"]
    driver.delete(C, "p/q/r")
    assert os.listdir(root / C) == []  # implied directories are pruned like S3 prefixes
    (root / C / "made" / "by" / "hand").mkdir(parents=True)
    assert names(driver) == ["made/by/hand/"]
    assert list(driver.list(C, prefix="made/by/", delimiter="/")) == [Prefix("made/by/hand/")]
    driver.delete(C, "made")  # a directory is not the artifact "made"
    assert (root / C / "made").is_dir()


def test_marker_cannot_hold_data(driver: LocalDriver) -> None:
    with pytest.raises(InvalidName):
        put(driver, "m/", b"data")
    with pytest.raises(InvalidName):
        put(driver, "m/", size=3)
    assert names(driver) == []


def test_file_directory_conflicts(driver: LocalDriver, root: Path) -> None:
    put(driver, "a/b", b"1")
    with pytest.raises(AlreadyExists, match="directory"):
        put(driver, "a", b"2")
    put(driver, "f", b"file")
    with pytest.raises(AlreadyExists, match="'f' is a file"):
        put(driver, "f/x", b"2")
    with pytest.raises(AlreadyExists, match="is a file"):
        put(driver, "f/x/y/z", b"2")
    with pytest.raises(AlreadyExists):
        put(driver, "f/")
    with pytest.raises(AlreadyExists):
        put(driver, "a/b/")
    assert names(driver) == ["a/b", "f"]
    assert read(driver, "f") == b"file"
    assert not (root / C / "f.tmp").exists() and temp_files(root) == []


# -- listing ---------------------------------------------------------------------

TRICKY = ["a-c", "a/b", "a/b-c/d", "a/b0", "a0", "a.x", "é", "éé/x", "日本/語", "\U0001f600", "z/", "a/b-c/"]


def test_list_order_with_tricky_names(driver: LocalDriver) -> None:
    for n in TRICKY[:2]:
        put(driver, n, n.encode())
    with pytest.raises(AlreadyExists):
        put(driver, "a", b"a")  # "a" and "a/b" cannot both exist on a file system
    for n in TRICKY[2:]:
        put(driver, n, b"" if n.endswith("/") else n.encode())
    expected = sorted(TRICKY)
    assert names(driver) == expected
    assert names(driver, prefix="a") == [n for n in expected if n.startswith("a")]
    assert names(driver, prefix="a/b") == ["a/b", "a/b-c/", "a/b-c/d", "a/b0"]
    assert names(driver, start_after="a/b") == expected[expected.index("a/b") + 1 :]
    assert names(driver, start_after="a/b-c/") == expected[expected.index("a/b-c/") + 1 :]
    assert names(driver, prefix="a/", start_after="a/b-c") == ["a/b-c/", "a/b-c/d", "a/b0"]
    level = [(type(e).__name__, e.name) for e in driver.list(C, delimiter="/")]
    assert level == sorted(
        [("ArtifactInfo", n) for n in ("a-c", "a.x", "a0", "é", "\U0001f600")]
        + [("Prefix", p) for p in ("a/", "z/", "éé/", "日本/")],
        key=lambda x: x[1],
    )
    assert names(driver, prefix="a/", delimiter="/", start_after="a/b") == ["a/b-c/", "a/b0"]
    for kw in (
        {"delimiter": "b"},
        {"delimiter": "-", "prefix": "a"},
        {"delimiter": "/", "start_after": "a/"},
    ):
        assert names(driver, **kw) == _memory_names(TRICKY, **kw), kw


def _memory_names(keys: list[str], **kw: Any) -> list[str]:
    m = MemoryDriver()
    m.create_container(C)
    for k in keys:
        m.put(C, k, io.BytesIO(b"" if k.endswith("/") else k.encode()))
    return [e.name for e in m.list(C, **kw)]


def test_list_starts_at_the_prefix_directory(
    driver: LocalDriver, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in ("a/x/1", "a/x/2", "b/deep/1", "b/deep/2", "b/other/1", "c/1"):
        put(driver, n, b"1")
    scanned: list[str] = []
    real_scandir = os.scandir

    def recording(path: Any) -> Any:
        scanned.append(os.path.relpath(path, root / C))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording)
    assert names(driver, prefix="b/deep/") == ["b/deep/1", "b/deep/2"]
    assert scanned == ["b/deep"]
    scanned.clear()
    assert names(driver, prefix="b/d") == ["b/deep/1", "b/deep/2"]
    assert scanned == ["b", "b/deep"]
    scanned.clear()
    assert names(driver, start_after="b/deep/2") == ["b/other/1", "c/1"]
    assert "a/x" not in scanned and "b/deep" in scanned
    scanned.clear()
    assert list(driver.list(C, prefix="b/", delimiter="/")) == [Prefix("b/deep/"), Prefix("b/other/")]
    assert scanned == ["b"]


def test_list_prefixes_that_name_nothing(driver: LocalDriver) -> None:
    put(driver, "f", b"1")
    for prefix in ("f/", "f/x", "../", "missing/", "a//", "x\x00/", "\ud800/"):
        assert names(driver, prefix=prefix) == []
        assert names(driver, prefix=prefix, delimiter="/") == []
    with pytest.raises(NotFound):
        driver.list("no-such-container")


SEGMENTS = st.sampled_from(["a", "a-c", "a0", "b", "é", "日本", "\U0001f600"])
NAMES = st.builds(
    lambda segs, marker: "/".join(segs) + ("/" if marker else ""),
    st.lists(SEGMENTS, min_size=1, max_size=3),
    st.booleans(),
)
OPS = st.lists(st.tuples(st.sampled_from(["put", "put", "delete"]), NAMES), max_size=25)


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=OPS,
    queries=st.lists(
        st.tuples(
            st.sampled_from(["", "a", "a/", "a-", "é/", "b/a"]),
            st.sampled_from([None, "/", "-", "a"]),
            st.one_of(st.none(), NAMES),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_listing_matches_memory_driver(ops: list[tuple[str, str]], queries: list[Any]) -> None:
    model = MemoryDriver()
    model.create_container(C)
    with tempfile.TemporaryDirectory() as tmp:
        d = LocalDriver(LocalOptions(root=tmp, fsync=False))
        d.create_container(C)
        for i, (op, name) in enumerate(ops):
            keys = {e.name for e in model.list(C)}
            path = name.rstrip("/")
            if op == "put":
                clash = any(a in keys for a in _ancestors(path))
                clash |= (path in keys) if name.endswith("/") else any(k.startswith(path + "/") for k in keys)
                data = b"" if name.endswith("/") else f"{name}{i}".encode()
                try:
                    d.put(C, name, io.BytesIO(data), metadata={"i": str(i)})
                except AlreadyExists:
                    assert clash, name
                    continue
                assert not clash, name
                model.put(C, name, io.BytesIO(data), metadata={"i": str(i)})
            else:
                try:
                    d.delete(C, name)
                except NotEmpty:
                    assert name.endswith("/") and any(k.startswith(name) and k != name for k in keys)
                    continue
                model.delete(C, name)
        for prefix, delimiter, start_after in queries:
            kw = {"prefix": prefix, "delimiter": delimiter, "start_after": start_after}
            got = [(e.name, getattr(e, "size", None), getattr(e, "metadata", None)) for e in d.list(C, **kw)]
            want = [
                (e.name, getattr(e, "size", None), getattr(e, "metadata", None)) for e in model.list(C, **kw)
            ]
            assert got == want, kw
        for info in model.list(C):
            assert isinstance(info, ArtifactInfo)
            assert read(d, info.name) == read(model, info.name)  # type: ignore[arg-type]


# -- metadata --------------------------------------------------------------------


def test_metadata_round_trip_through_xattr(driver: LocalDriver, root: Path) -> None:
    info = put(driver, "m", b"data", metadata={"Mode": "0644", "uid": "1000"})
    assert info.metadata == {"mode": "0644", "uid": "1000"}
    assert read_record(str(root / C / "m")).metadata == {"mode": "0644", "uid": "1000"}
    assert driver.stat(C, "m") == info
    assert list(driver.list(C)) == [info]

    updated = driver.update_metadata(C, "m", {"mode": "0600"})
    assert updated.metadata == {"mode": "0600"}
    assert updated.etag == info.etag  # the data did not change
    assert updated.mtime == info.mtime
    assert driver.stat(C, "m") == updated
    assert read(driver, "m") == b"data"
    assert driver.update_metadata(C, "m", {}).metadata == {}
    assert driver.stat(C, "m").metadata == {}

    put(driver, "dir/", metadata={"mode": "0755"})
    assert driver.stat(C, "dir/").metadata == {"mode": "0755"}
    assert driver.update_metadata(C, "dir/", {"mode": "0700"}).metadata == {"mode": "0700"}
    assert list(driver.list(C, prefix="dir/")) == [driver.stat(C, "dir/")]
    with pytest.raises(NotFound):
        driver.update_metadata(C, "missing", {})


def test_etag_changes_with_every_put(driver: LocalDriver) -> None:
    # Same size, often the same recycled inode and timestamp: the stored version keeps them apart.
    tags = {put(driver, "e", bytes([i]) * 8).etag for i in range(30)}
    assert len(tags) == 30


def test_etag_survives_recycled_inode_and_coarse_clock(driver: LocalDriver, root: Path) -> None:
    path = root / C / "e"
    first = put(driver, "e", b"first!!!")
    first_st = path.stat()
    for i in range(20):
        put(driver, "e", f"other{i:03d}".encode())
        if path.stat().st_ino == first_st.st_ino:
            break
    else:
        pytest.skip("this file system did not recycle the inode")
    # What a clock with millisecond ticks would produce: same inode, size and mtime.
    os.utime(path, ns=(first_st.st_atime_ns, first_st.st_mtime_ns))
    assert driver.stat(C, "e").etag != first.etag


def test_a_typical_record_fits_inside_an_ext4_inode(driver: LocalDriver, root: Path) -> None:
    # ext4 keeps a value of up to 60 bytes inside a 256-byte inode; a larger one costs a disk block per
    # file, read on every cold listing.
    now = time.time_ns()
    for uid in ("0", "1000", "1001", "65534"):
        for mode in ("33188", "33261", "16877", "41471"):
            meta = {
                "gid": uid,
                "mode": mode,
                "mtime": str(now // 10**9),
                "uid": uid,
                "vfs-mtime-ns": str(now),
            }
            put(driver, "typical", b"x", metadata=meta)
            assert len(os.getxattr(root / C / "typical", META_XATTR)) <= 60, (uid, mode)
            assert driver.stat(C, "typical").metadata == meta
    # Where an attribute of the old record's size costs a block of its own (ext4 with 256-byte inodes,
    # as here), a record costs none.
    bare, old = root / "bare", root / "old"
    for path in (bare, old):
        path.write_bytes(b"x")
    os.setxattr(old, META_XATTR, b"{" + b"x" * 135)
    if old.stat().st_blocks == bare.stat().st_blocks:
        pytest.skip("this file system keeps a 136-byte attribute without a block of its own")
    assert (root / C / "typical").stat().st_blocks == bare.stat().st_blocks


def test_the_stored_record_format_is_stable(driver: LocalDriver, root: Path) -> None:
    # Written by this version's encoder; its dictionary must never change, or such records become unreadable.
    stored = (
        b"\x01\xc3f\x1c\xaa\x9f0M$\xd9O`\x0f\x80\xbc\x82\xe69\x03CC##c\xe3\xc4\xc4\xa4\xa4\xe4\xe4"
        b"\x94\x14\xa5Z\x00"
    )
    (root / C / "stored").write_bytes(b"kept")
    os.setxattr(root / C / "stored", META_XATTR, stored)
    info = driver.stat(C, "stored")
    assert info.metadata == {
        "gid": "1000",
        "mode": "33188",
        "mtime": "1796121234",
        "uid": "1000",
        "vfs-mtime-ns": "1796121234567890123",
    }
    assert info.etag.endswith("-00112233aabbccdd")


def test_records_written_as_plain_json_are_still_read(driver: LocalDriver, root: Path) -> None:
    (root / C / "older").write_bytes(b"kept")
    os.setxattr(root / C / "older", META_XATTR, b'{"metadata":{"mode":"33188"},"version":"00ff"}')
    info = driver.stat(C, "older")
    assert info.metadata == {"mode": "33188"} and info.etag.endswith("-00ff")
    assert list(driver.list(C, prefix="older")) == [info]


def test_foreign_files_and_damaged_xattr(driver: LocalDriver, root: Path) -> None:
    (root / C / "foreign").write_bytes(b"made outside")
    info = driver.stat(C, "foreign")
    assert info.metadata == {} and info.size == 12
    bomb = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    too_large = b"\x01" + bomb.compress(b'{"metadata":{"k":"' + b"v" * (1 << 20) + b'"}}') + bomb.flush()
    whole = encode_record({"k": "v"}, "")
    damaged_values = (b"{not json", b"\x01not deflated", b"\x01" + zlib.compress(b"{}"), too_large)
    for damaged in (*damaged_values, whole[:-1], whole + b"\x00"):
        os.setxattr(root / C / "foreign", META_XATTR, damaged)
        assert driver.stat(C, "foreign").metadata == {}
    assert read(driver, "foreign") == b"made outside"


def test_no_xattr_support(driver: LocalDriver, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*args: Any, **kw: Any) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    with pytest.raises(DriverError, match=str(root)) as info:
        put(driver, "m", b"x", metadata={"k": "v"})
    assert type(info.value) is DriverError
    assert temp_files(root) == [] and names(driver) == []
    assert put(driver, "plain", b"x").metadata == {}
    assert put(driver, "d/").name == "d/"
    assert driver.update_metadata(C, "plain", {}).metadata == {}
    with pytest.raises(DriverError, match="extended attributes"):
        driver.update_metadata(C, "plain", {"k": "v"})


# -- copy ------------------------------------------------------------------------


def test_copy_keeps_metadata_and_is_independent(driver: LocalDriver) -> None:
    put(driver, "src", b"payload" * 1000, metadata={"k": "v"})
    info = driver.copy(C, "src", C, "dst/copy")
    assert info.metadata == {"k": "v"} and info.size == 7000
    assert read(driver, "dst/copy") == b"payload" * 1000
    put(driver, "src", b"changed")
    assert read(driver, "dst/copy") == b"payload" * 1000
    assert driver.copy(C, "src", C, "other", metadata={"x": "y"}).metadata == {"x": "y"}
    assert driver.copy(C, "src", C, "src").size == 7  # onto itself: unchanged
    assert read(driver, "src") == b"changed"
    driver.create_container("c2")
    driver.copy(C, "src", "c2", "x")
    assert driver.stat("c2", "x").size == 7
    with pytest.raises(NotFound):
        driver.copy(C, "missing", C, "x")


# -- containers and operations ---------------------------------------------------


def test_containers(driver: LocalDriver, root: Path) -> None:
    (root / "file-in-root").write_bytes(b"ignored")
    (root / ".vaultfs-state").mkdir()
    driver.create_container("b")
    driver.create_container("é")
    assert driver.containers() == ["b", C, "é"]
    with pytest.raises(AlreadyExists):
        driver.create_container("b")
    with pytest.raises(AlreadyExists):
        driver.create_container("file-in-root")
    put(driver, "x", b"1")
    with pytest.raises(NotEmpty):
        driver.delete_container(C)
    driver.delete(C, "x")
    (root / C / (TEMP_PREFIX + "crashed")).write_bytes(b"junk")
    driver.delete_container(C)
    assert driver.containers() == ["b", "é"]
    with pytest.raises(NotFound):
        driver.delete_container(C)
    with pytest.raises(NotFound):
        driver.put(C, "x", io.BytesIO(b"1"))
    with pytest.raises(NotFound):
        driver.list("file-in-root")


def test_missing_root(tmp_path: Path) -> None:
    d = LocalDriver(LocalOptions(root=str(tmp_path / "absent")))
    with pytest.raises(NotFound, match="absent"):
        d.health_check()
    for call in (
        d.containers,
        lambda: d.create_container(C),
        lambda: d.list(C),
        lambda: d.put(C, "x", io.BytesIO(b"")),
        lambda: d.get(C, "x"),
        lambda: d.stat(C, "x"),
    ):
        with pytest.raises(NotFound, match="absent"):
            call()
    (tmp_path / "absent").write_bytes(b"a file")
    with pytest.raises(NotFound, match="not a directory"):
        d.health_check()
    assert "disk_free_bytes" in d.get_metrics()


def test_health_check_and_metrics(driver: LocalDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    driver.health_check()
    before = driver.get_metrics()
    put(driver, "m", b"12345")
    assert read(driver, "m", 1, 2) == b"23"
    after = driver.get_metrics()
    assert after["operations"] == before["operations"] + 2
    assert after["bytes_written"] == before["bytes_written"] + 5
    assert after["bytes_read"] == before["bytes_read"] + 2
    assert after["disk_free_bytes"] > 0 and after["disk_total_bytes"] >= after["disk_free_bytes"]
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(AccessDenied, match="not writable"):
        driver.health_check()


def test_options() -> None:
    assert LocalDriver.name == "local"
    assert LocalDriver.Options is LocalOptions
    opts = LocalOptions(root="/srv/data")
    assert opts.fsync is True
    with pytest.raises(AttributeError):
        opts.root = "/elsewhere"  # type: ignore[misc]


# -- put_file ----------------------------------------------------------------------


def staged(tmp_path: Path, data: bytes, name: str = "staged") -> Path:
    """A private file outside the root, as write-back's staging files are."""
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_an_adopted_file_is_linked_not_copied(driver: LocalDriver, root: Path, tmp_path: Path) -> None:
    src = staged(tmp_path, b"data" * 1000)
    info = driver.put_file(C, "dir/doc", src, metadata={"k": "v"}, adopt=True)
    stored = os.stat(root / C / "dir" / "doc")
    assert stored.st_ino == os.stat(src).st_ino
    assert info.etag == driver.stat(C, "dir/doc").etag
    umask = os.umask(0)
    os.umask(umask)
    assert stored.st_mode & 0o777 == 0o666 & ~umask, "the mode a put of a stream gives, not the source's"
    assert temp_files(root) == []
    # Adopting the file that already is the artifact only changes its metadata.
    driver.put_file(C, "dir/doc", src, metadata={"k": "w"}, adopt=True)
    assert driver.stat(C, "dir/doc").metadata == {"k": "w"}
    assert temp_files(root) == []


def test_a_file_not_adopted_is_copied(driver: LocalDriver, root: Path, tmp_path: Path) -> None:
    src = staged(tmp_path, b"data" * 1000)
    driver.put_file(C, "doc", src)
    assert os.stat(root / C / "doc").st_ino != os.stat(src).st_ino
    assert read(driver, "doc") == b"data" * 1000


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP])
def test_a_file_that_cannot_be_linked_is_copied(
    driver: LocalDriver, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    src = staged(tmp_path, b"elsewhere" * 100)

    def no_link(*args: Any, **kwargs: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_link)
    driver.put_file(C, "doc", src, metadata={"k": "v"}, adopt=True)
    assert os.stat(root / C / "doc").st_ino != os.stat(src).st_ino
    assert read(driver, "doc") == b"elsewhere" * 100
    assert driver.stat(C, "doc").metadata == {"k": "v"}
    assert temp_files(root) == []


def test_a_file_another_put_holds_is_copied(driver: LocalDriver, root: Path, tmp_path: Path) -> None:
    # An abandoned attempt of the same upload still holds the lock on the file's inode.
    src = staged(tmp_path, b"busy" * 100)
    with open(src, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        driver.put_file(C, "doc", src, adopt=True)
    assert os.stat(root / C / "doc").st_ino != os.stat(src).st_ino
    assert read(driver, "doc") == b"busy" * 100
    assert temp_files(root) == []


def test_a_failed_adopting_put_keeps_the_old_artifact_and_the_file(
    driver: LocalDriver, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(driver, "doc", b"old")
    src = staged(tmp_path, b"new")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(Unavailable):
        driver.put_file(C, "doc", src, adopt=True)
    monkeypatch.undo()
    assert read(driver, "doc") == b"old"
    assert temp_files(root) == []
    assert src.read_bytes() == b"new" and os.stat(src).st_nlink == 1


def test_an_adopted_file_stored_but_not_synced_is_not_a_refusal(
    driver: LocalDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once renamed into place the file is the artifact: the caller must not take it back for
    # writing, so a failed directory sync is transient (retried), never a refusal.
    def no_sync(path: str) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(driver, "_sync_dir", no_sync)
    with pytest.raises(Unavailable, match="not yet synced"):
        driver.put_file(C, "doc", staged(tmp_path, b"linked"), adopt=True)
    with pytest.raises(AccessDenied):
        driver.put_file(C, "other", staged(tmp_path, b"copied", "another"))
    monkeypatch.undo()
    assert read(driver, "doc") == b"linked"
