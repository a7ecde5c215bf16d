"""The operations layer driven directly, without a kernel, over the memory driver."""

from __future__ import annotations

import collections
import dataclasses
import errno
import io
import os
import stat
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import prometheus_client
import pyfuse3
import pytest
import trio
from fakes import CountingDriver

from drivers import errors
from drivers.base import ArtifactInfo, Prefix
from drivers.local import LocalDriver, LocalOptions
from drivers.memory import MemoryDriver
from vaultfs import attrs
from vaultfs.attrindex import INDEX_NAME, AttrIndex
from vaultfs.backend import Backend
from vaultfs.files import Files
from vaultfs.fs import ERRNO, FsOptions, Operations, errno_of
from vaultfs.namespace import ROOT_INODE, Namespace
from vaultfs.reader import Reader
from vaultfs.writebehind import WINDOW

CTX = pyfuse3.RequestContext()


class FailingPuts(MemoryDriver):
    """A memory driver whose puts fail while ``failing`` is set (a backend outage)."""

    failing = False
    #: What a failing put raises: a transient error by default.
    error: type[errors.DriverError] = errors.Unavailable

    def put(
        self, container: str, artifact: str, stream: Any, size: Any = None, metadata: Any = None
    ) -> ArtifactInfo:
        if self.failing:
            raise self.error("backend says no")
        return super().put(container, artifact, stream, size, metadata)


class ListsLikeS3(MemoryDriver):
    """A memory driver whose listings, like S3's, carry no metadata; counts its stats and notes
    which artifacts they asked for."""

    lists_metadata = False
    stats = 0

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def list(self, *args: Any, **kwargs: Any) -> Any:
        for entry in super().list(*args, **kwargs):
            yield dataclasses.replace(entry, metadata=None) if isinstance(entry, ArtifactInfo) else entry

    def stat(self, container: str, artifact: str) -> ArtifactInfo:
        self.stats += 1
        self.asked.append(artifact)
        return super().stat(container, artifact)


#: Every World made in the current test: :func:`run` runs their write-back workers.
WORLDS: list[World] = []


class World:
    """A file system over a memory driver, plus helpers that read like shell commands.

    ``write_file`` waits for the upload that the close queued, so the backend
    holds the data afterwards, as in the tests written before write-back.
    """

    def __init__(
        self,
        tmp_path: Path,
        driver: MemoryDriver | None = None,
        ttl: float = 0.0,
        rename_limit: int = 100,
        files_ahead: int = 0,
    ):
        self.driver = driver or MemoryDriver()
        self.backend = Backend("test", self.driver, retries=0, timeout=10)
        defaults = attrs.Defaults(uid=1000, gid=1000, umask=0o022)
        self.index = None if self.driver.lists_metadata else AttrIndex(self.backend)
        self.ns = Namespace(self.backend, defaults, attr_ttl=ttl, dir_ttl=ttl, index=self.index)
        reader = Reader(self.backend, None, block_size=64 * 1024, read_ahead_max=0, memory=2 << 20)
        self.files = Files(self.ns, self.backend, reader, tmp_path / "staging", files_ahead=files_ahead)
        self.ops = Operations(
            self.backend, self.ns, self.files, FsOptions(attr_ttl=ttl, rename_limit=rename_limit)
        )
        self.staging = tmp_path / "staging"
        WORLDS.append(self)

    async def ino(self, path: str) -> int:
        ino = ROOT_INODE
        for part in filter(None, path.split("/")):
            ino = (await self.ops.lookup(ino, part.encode(), CTX)).st_ino
        return ino

    async def write_file(self, path: str, data: bytes, offset: int = 0) -> None:
        parent, _, name = path.rpartition("/")
        try:
            ino = await self.ino(path)
            info = await self.ops.open(ino, os.O_WRONLY, CTX)
        except pyfuse3.FUSEError as exc:
            assert exc.errno == errno.ENOENT
            info, _ = await self.ops.create(await self.ino(parent), name.encode(), 0o100644, os.O_WRONLY, CTX)
        await self.ops.write(info.fh, offset, data)
        await self.ops.flush(info.fh)
        await self.ops.release(info.fh)
        await self.settle()

    async def settle(self) -> None:
        """Wait until the write-back queue is empty (or each pending upload failed once more)."""
        await self.files.writeback.drain()

    async def read_file(self, path: str) -> bytes:
        info = await self.ops.open(await self.ino(path), os.O_RDONLY, CTX)
        out = b""
        while chunk := await self.ops.read(info.fh, len(out), 1 << 16):
            out += chunk
        await self.ops.release(info.fh)
        return out

    async def truncate(self, path: str, size: int, fh: int | None = None) -> None:
        """``truncate(2)`` of ``path``, or ``ftruncate(2)`` through ``fh``: a SETATTR of the size."""
        attr = pyfuse3.EntryAttributes()
        attr.st_size = size
        await self.ops.setattr(await self.ino(path), attr, setattr_fields(update_size=True), fh, CTX)

    async def mkdir(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        await self.ops.mkdir(await self.ino(parent), name.encode(), 0o755, CTX)

    def stored(self, container: str, key: str) -> bytes:
        with self.driver.get(container, key) as f:
            return f.read()


def setattr_fields(**changed: bool) -> Any:
    """What the kernel's SETATTR says changed (pyfuse3's own class is read-only)."""
    names = ("atime", "mtime", "ctime", "mode", "uid", "gid", "size")
    return SimpleNamespace(**{f"update_{n}": changed.get(f"update_{n}", False) for n in names})


def gauge(name: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name, {"backend": "test"}) or 0.0


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``fn`` with the write-back workers of every World of the test running beside it (their
    journal probe done: staging directories hold only what the test made)."""

    async def main() -> Any:
        async with trio.open_nursery() as nursery:
            for world in WORLDS:
                nursery.start_soon(world.files.writeback.run)
                world.ns.start(nursery)
                world.files.reader.start(nursery)
            for world in WORLDS:
                await world.files.writeback.calibrated.wait()
            result = await fn()
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


@pytest.fixture(autouse=True)
def _forget_worlds() -> Any:
    yield
    WORLDS.clear()


def fails_with(code: int) -> Any:
    return pytest.raises(pyfuse3.FUSEError, match=os.strerror(code).split()[0])


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_errno_table_covers_every_driver_error() -> None:
    expected = {
        errors.NotFound: errno.ENOENT,
        errors.AccessDenied: errno.EACCES,
        errors.QuotaExceeded: errno.EDQUOT,
        errors.AlreadyExists: errno.EEXIST,
        errors.NotEmpty: errno.ENOTEMPTY,
        errors.InvalidName: errno.EINVAL,
        errors.NameTooLong: errno.ENAMETOOLONG,
        errors.Unavailable: errno.EIO,
        errors.DriverError: errno.EIO,
    }
    assert {cls: errno_of(cls("x")) for cls in expected} == expected
    assert set(ERRNO) == set(expected)


def test_containers_files_and_directories(world: World) -> None:
    async def main() -> None:
        await world.mkdir("/bucket")
        assert world.driver.containers() == ["bucket"]
        await world.mkdir("/bucket/dir")
        await world.write_file("/bucket/dir/hello.txt", b"hello world")
        assert world.stored("bucket", "dir/hello.txt") == b"hello world"
        assert world.stored("bucket", "dir/") == b""  # mkdir leaves a marker
        assert await world.read_file("/bucket/dir/hello.txt") == b"hello world"
        attr = await world.ops.getattr(await world.ino("/bucket/dir/hello.txt"), CTX)
        assert attr.st_size == 11
        assert stat.S_ISREG(attr.st_mode)
        with fails_with(errno.EEXIST):
            await world.mkdir("/bucket/dir")

    run(main)


def test_partial_overwrite_and_append(world: World) -> None:
    async def main() -> None:
        await world.mkdir("/b")
        await world.write_file("/b/f", b"0123456789")
        await world.write_file("/b/f", b"AB", offset=3)
        assert world.stored("b", "f") == b"012AB56789"
        await world.write_file("/b/f", b"tail", offset=10)
        assert world.stored("b", "f") == b"012AB56789tail"

    run(main)


def test_truncate_without_open_file(world: World) -> None:
    async def main() -> None:
        await world.mkdir("/b")
        await world.write_file("/b/f", b"0123456789")
        await world.truncate("/b/f", 4)
        await world.settle()
        assert world.stored("b", "f") == b"0123"

    run(main)


def test_chmod_chown_utimens_are_kept_in_metadata(world: World) -> None:
    async def main() -> None:
        await world.mkdir("/b")
        await world.write_file("/b/f", b"x")
        ino = await world.ino("/b/f")
        fields = setattr_fields(update_mode=True, update_uid=True, update_gid=True, update_mtime=True)
        attr = pyfuse3.EntryAttributes()
        attr.st_mode = 0o100751
        attr.st_uid, attr.st_gid = 42, 43
        attr.st_mtime_ns = 1_600_000_000_123_456_789
        await world.ops.setattr(ino, attr, fields, None, CTX)
        meta = world.driver.stat("b", "f").metadata or {}
        assert meta["mode"] == str(0o100751)
        assert (meta["uid"], meta["gid"]) == ("42", "43")
        assert meta["mtime"] == "1600000000"
        assert meta[attrs.MTIME_NS] == "1600000000123456789"
        got = await world.ops.getattr(ino, CTX)
        assert (stat.S_IMODE(got.st_mode), got.st_uid, got.st_mtime_ns) == (
            0o751,
            42,
            1_600_000_000_123_456_789,
        )

    run(main)


def test_other_tools_metadata_is_read(world: World) -> None:
    async def main() -> None:
        world.driver.create_container("b")
        world.driver.put(
            "b", "s3fs", io.BytesIO(b"x"), metadata={"mode": "33261", "uid": "7", "mtime": "1500000000"}
        )
        world.driver.put("b", "rclone", io.BytesIO(b"x"), metadata={"mtime": "2020-01-02T03:04:05.5Z"})
        s3fs = await world.ops.getattr(await world.ino("/b/s3fs"), CTX)
        assert (stat.S_IMODE(s3fs.st_mode), s3fs.st_uid, s3fs.st_mtime_ns) == (
            0o755,
            7,
            1_500_000_000 * 10**9,
        )
        rclone = await world.ops.getattr(await world.ino("/b/rclone"), CTX)
        assert rclone.st_mtime_ns == 1_577_934_245_500_000_000
        assert rclone.st_uid == 1000  # the mount's default

    run(main)


def test_unlink_rmdir(world: World) -> None:
    async def main() -> None:
        await world.mkdir("/b")
        await world.mkdir("/b/d")
        await world.write_file("/b/d/f", b"x")
        with fails_with(errno.ENOTEMPTY):
            await world.ops.rmdir(await world.ino("/b"), b"d", CTX)
        with fails_with(errno.ENOTEMPTY):
            await world.ops.rmdir(ROOT_INODE, b"b", CTX)
        with fails_with(errno.EISDIR):
            await world.ops.unlink(await world.ino("/b"), b"d", CTX)
        await world.ops.unlink(await world.ino("/b/d"), b"f", CTX)
        await world.ops.rmdir(await world.ino("/b"), b"d", CTX)
        assert not list(world.driver.list("b"))
        await world.ops.rmdir(ROOT_INODE, b"b", CTX)
        assert world.driver.containers() == []

    run(main)


def test_rename_file_and_directory(world: World) -> None:
    async def main() -> None:
        await world.mkdir("/b")
        await world.mkdir("/b/src")
        await world.write_file("/b/src/one", b"1")
        await world.write_file("/b/src/two", b"2")
        b = await world.ino("/b")
        await world.ops.rename(b, b"src", b, b"dst", 0, CTX)
        assert sorted(e.name for e in world.driver.list("b")) == ["dst/", "dst/one", "dst/two"]
        dst = await world.ino("/b/dst")
        await world.ops.rename(dst, b"one", b, b"moved", 0, CTX)
        assert world.stored("b", "moved") == b"1"
        assert await world.read_file("/b/moved") == b"1"
        with fails_with(errno.ENOENT):
            await world.ino("/b/dst/one")

    run(main)


def test_directory_rename_over_the_limit_is_exdev(tmp_path: Path) -> None:
    world = World(tmp_path, rename_limit=3)

    async def main() -> None:
        await world.mkdir("/b")
        for i in range(4):
            world.driver.put("b", f"d/{i}", io.BytesIO(b"x"))
        b = await world.ino("/b")
        with fails_with(errno.EXDEV):
            await world.ops.rename(b, b"d", b, b"e", 0, CTX)
        assert len(list(world.driver.list("b", prefix="d/"))) == 4

    run(main)


def test_symlinks_and_unsupported_nodes(world: World) -> None:
    async def main() -> None:
        await world.mkdir("/b")
        b = await world.ino("/b")
        attr = await world.ops.symlink(b, b"link", b"target/file", CTX)
        assert stat.S_ISLNK(attr.st_mode)
        assert await world.ops.readlink(attr.st_ino, CTX) == b"target/file"
        assert world.stored("b", "link") == b"target/file"
        with fails_with(errno.EPERM):
            await world.ops.link(attr.st_ino, b, b"hard", CTX)
        with fails_with(errno.EPERM):
            await world.ops.mknod(b, b"fifo", stat.S_IFIFO | 0o644, 0, CTX)
        with fails_with(errno.EPERM):
            await world.ops.create(ROOT_INODE, b"file-at-root", 0o100644, os.O_WRONLY, CTX)

    run(main)


def test_failed_upload_keeps_the_data_and_fsync_reports_it(tmp_path: Path) -> None:
    driver = FailingPuts()
    world = World(tmp_path, driver)

    async def main() -> None:
        await world.mkdir("/b")
        info, _ = await world.ops.create(await world.ino("/b"), b"f", 0o100644, os.O_WRONLY, CTX)
        await world.ops.write(info.fh, 0, b"precious")
        driver.failing = True
        failures = gauge("vaultfs_writeback_failures_total")
        await world.ops.flush(info.fh)  # close succeeds: the data is in the journal
        with fails_with(errno.EIO):
            await world.ops.fsync(info.fh, False)  # fsync waits for the upload, which fails
        staged = [p for p in world.staging.iterdir() if not p.name.startswith("journal-")]
        assert [p.read_bytes() for p in staged] == [b"precious"]
        assert gauge("vaultfs_writeback_failures_total") >= failures + 1
        assert (gauge("vaultfs_writeback_pending"), gauge("vaultfs_writeback_pending_bytes")) == (1, 8)
        await world.ops.release(info.fh)
        assert await world.read_file("/b/f") == b"precious"  # served from the staged copy meanwhile
        driver.failing = False
        info = await world.ops.open(await world.ino("/b/f"), os.O_RDONLY, CTX)
        await world.ops.fsync(info.fh, False)  # retries now instead of after the backoff
        await world.ops.release(info.fh)
        assert gauge("vaultfs_writeback_pending") == 0
        assert world.stored("b", "f") == b"precious"
        assert list(world.staging.iterdir()) == []

    run(main)


def test_the_local_driver_keeps_the_staged_file_and_later_writes_do_not_reach_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    world = World(tmp_path, LocalDriver(LocalOptions(root=str(root))))  # type: ignore[arg-type]

    async def main() -> None:
        await world.mkdir("/b")
        info, _ = await world.ops.create(await world.ino("/b"), b"f", 0o100644, os.O_WRONLY, CTX)
        await world.ops.write(info.fh, 0, b"version 1")
        staged_ino = os.fstat(world.files.handle(info.fh).fd).st_ino
        await world.ops.flush(info.fh)
        await world.settle()
        assert os.stat(root / "b" / "f").st_ino == staged_ino  # linked, not copied
        # The stored file is the handed-over staging file: writing on must copy it first.
        await world.ops.write(info.fh, 0, b"VERSION")
        await world.truncate("/b/f", 3, info.fh)
        assert world.stored("b", "f") == b"version 1"
        await world.ops.flush(info.fh)
        await world.ops.release(info.fh)
        await world.settle()
        assert world.stored("b", "f") == b"VER"
        assert list(world.staging.iterdir()) == []

    run(main)


def test_write_behind_follows_the_staged_file(world: World) -> None:
    async def main() -> None:
        await world.mkdir("/b")
        info, _ = await world.ops.create(await world.ino("/b"), b"f", 0o100644, os.O_WRONLY, CTX)
        of = world.files.handle(info.fh)
        block = b"x" * (1 << 20)
        for i in range(WINDOW // len(block) + 1):
            await world.ops.write(info.fh, i * len(block), block)
        assert of.behind == WINDOW
        await world.truncate("/b/f", 10, info.fh)
        assert of.behind == 10
        await world.ops.flush(info.fh)
        await world.ops.write(info.fh, 0, block)  # the handed-over file is copied: a new file
        assert of.behind == 0
        await world.ops.release(info.fh)
        await world.settle()

    run(main)


def test_an_upload_refused_outright_fails_close_and_keeps_the_data(tmp_path: Path) -> None:
    driver = FailingPuts()
    driver.error = errors.AccessDenied
    world = World(tmp_path, driver)

    async def main() -> None:
        await world.mkdir("/b")
        info, _ = await world.ops.create(await world.ino("/b"), b"f", 0o100644, os.O_WRONLY, CTX)
        await world.ops.write(info.fh, 0, b"mine")
        driver.failing = True
        with fails_with(errno.EACCES):
            await world.ops.flush(info.fh)  # retrying would not help: close says so, as before write-back
        assert gauge("vaultfs_writeback_pending") == 0
        driver.failing = False
        await world.ops.write(info.fh, 4, b"!")
        await world.ops.flush(info.fh)
        await world.ops.release(info.fh)
        await world.settle()
        assert world.stored("b", "f") == b"mine!"
        assert list(world.staging.iterdir()) == []

    run(main)


def test_other_clients_changes_show_after_the_ttl(world: World) -> None:
    async def main() -> None:
        await world.mkdir("/b")
        await world.write_file("/b/f", b"mine")
        world.driver.put("b", "f", io.BytesIO(b"theirs, longer"))
        world.driver.put("b", "new", io.BytesIO(b"n"))
        assert await world.read_file("/b/f") == b"theirs, longer"
        assert await world.read_file("/b/new") == b"n"
        world.driver.delete("b", "new")
        with fails_with(errno.ENOENT):
            await world.ino("/b/new")

    run(main)


def test_directory_wins_over_file(world: World) -> None:
    async def main() -> None:
        world.driver.create_container("b")
        world.driver.put("b", "a", io.BytesIO(b"file"))
        world.driver.put("b", "a/inside", io.BytesIO(b"x"))
        attr = await world.ops.getattr(await world.ino("/b/a"), CTX)
        assert stat.S_ISDIR(attr.st_mode)
        entries, after = await world.ns.list_page(world.ns.get(await world.ino("/b")), None)
        assert after is None
        assert [(name, e.kind.value) for name, e in entries] == [("a", "dir")]

    run(main)


def test_a_new_file_not_yet_stored_wins_over_a_listed_directory(world: World) -> None:
    """Lookup and listing agree on a file created here while the store lists a prefix of its name
    (another client's, or an emptied folder a store keeps listing): the user's new file shows."""

    async def main() -> None:
        await world.mkdir("/b")
        info, _ = await world.ops.create(await world.ino("/b"), b"a", 0o100644, os.O_WRONLY, CTX)
        await world.ops.write(info.fh, 0, b"mine")
        world.driver.put("b", "a/inside", io.BytesIO(b"x"))
        attr = await world.ops.getattr(await world.ino("/b/a"), CTX)
        assert stat.S_ISREG(attr.st_mode)
        entries, _ = await world.ns.list_page(world.ns.get(await world.ino("/b")), None)
        assert [(name, e.kind.value, e.size) for name, e in entries] == [("a", "file", 4)]
        await world.ops.release(info.fh)

    run(main)


def test_listings_without_metadata_use_the_attribute_index(tmp_path: Path) -> None:
    driver = ListsLikeS3()
    world = World(tmp_path, driver)

    async def write() -> None:
        await world.mkdir("/b")
        await world.mkdir("/b/d")
        await world.write_file("/b/d/f", b"data")
        await world.ops.symlink(await world.ino("/b/d"), b"link", b"f", CTX)
        fields = setattr_fields(update_mode=True, update_mtime=True)
        attr = pyfuse3.EntryAttributes()
        attr.st_mode, attr.st_mtime_ns = 0o100600, 1_500_000_000 * 10**9
        await world.ops.setattr(await world.ino("/b/d/f"), attr, fields, None, CTX)
        attr.st_mode = 0o040700
        await world.ops.setattr(await world.ino("/b/d"), attr, fields, None, CTX)
        await world.index.flush()  # type: ignore[union-attr]

    run(write)
    assert INDEX_NAME in {e.name.rsplit("/", 1)[-1] for e in driver.list("b")}
    fresh = World(tmp_path / "again", driver)  # a new mount of the same bucket
    driver.stats = 0

    async def list_again() -> None:
        top = fresh.ns.get(await fresh.ino("/b"))
        entries, _ = await fresh.ns.list_page(top, None)
        assert [n for n, _ in entries] == ["d"]
        assert stat.S_IMODE(attrs.mode_of(entries[0][1].meta, 0)) == 0o700
        d = fresh.ns.get(await fresh.ino("/b/d"))
        listed = dict((await fresh.ns.list_page(d, None))[0])
        assert set(listed) == {"f", "link"}
        assert listed["link"].kind.value == "link"
        assert stat.S_IMODE(attrs.mode_of(listed["f"].meta, 0)) == 0o600
        assert attrs.mtime_ns_of(listed["f"].meta, 0) == 1_500_000_000 * 10**9

    run(list_again)
    assert driver.stats <= 2  # the lookups of /b and /b/d, never one per listed file


class ListingMeetsIndex(ListsLikeS3):
    """Once armed, a directory's listing and the read of its attribute index each wait (up to a bound)
    for the other to start, and note whether it did: both are in flight at once only if both did."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.started: dict[tuple[str, str], threading.Event] = collections.defaultdict(threading.Event)
        self.met: list[bool] = []

    def _meet(self, mine: str, other: str, directory: str) -> None:
        if self.armed:
            self.started[(mine, directory)].set()
            self.met.append(self.started[(other, directory)].wait(5))

    def get(self, container: str, artifact: str, offset: int = 0, length: int | None = None) -> Any:
        if artifact.endswith(INDEX_NAME):
            self._meet("index", "list", artifact[: -len(INDEX_NAME)])
        return super().get(container, artifact, offset, length)

    def list(self, container: str, prefix: str = "", *args: Any, **kwargs: Any) -> Any:
        self._meet("list", "index", prefix)
        return super().list(container, prefix, *args, **kwargs)


def test_a_cold_listing_reads_the_attribute_index_at_the_same_time(tmp_path: Path) -> None:
    # Both requests in one round trip: a cold `ls` of a directory on S3 waits for the slower, not both.
    driver = ListingMeetsIndex()
    driver.create_container("b")
    driver.put("b", "d/f", io.BytesIO(b"x"))
    world = World(tmp_path, driver)

    async def main() -> None:
        d = world.ns.get(await world.ino("/b/d"))
        driver.armed = True
        entries, _ = await world.ns.list_page(d, None)
        assert [name for name, _ in entries] == ["f"]

    run(main)
    assert driver.met == [True, True]


def test_lookups_one_after_another_fetch_the_next_names_metadata_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Objects another tool uploaded: the directory has no attribute index, the listing no metadata,
    # so each file's lookup needs a HEAD; cp -r or cat * look them up one after another.
    driver = ListsLikeS3()
    driver.create_container("b")
    names = [f"f{i:02d}" for i in range(40)]
    for name in names:
        driver.put("b", f"d/{name}", io.BytesIO(b"x"))
    world = World(tmp_path, driver, ttl=60)
    ahead: list[str] = []
    fetch_ahead = Namespace._fetch_ahead

    async def noted(self: Namespace, where: tuple[str, str, str], *args: Any) -> None:
        ahead.append(where[2])
        await fetch_ahead(self, where, *args)

    monkeypatch.setattr(Namespace, "_fetch_ahead", noted)

    async def main() -> None:
        d = await world.ino("/b/d")
        driver.asked.clear()
        for name in names:
            await world.ops.lookup(d, name.encode(), CTX)
            if name == "f00":
                assert driver.asked == ["d/f00"]  # a lone lookup costs one request

    run(main)
    assert sorted(driver.asked) == [f"d/{n}" for n in names]  # each once, none wasted
    # Not 40 round trips: f00, f01, f03, f06, f11, f20 and f37 ask for their own, in order.
    assert len(names) - len(ahead) <= 8


def test_a_lookup_off_the_order_fetches_nothing_ahead(tmp_path: Path) -> None:
    driver = ListsLikeS3()
    driver.create_container("b")
    for i in range(20):
        driver.put("b", f"d/f{i:02d}", io.BytesIO(b"x"))
    world = World(tmp_path, driver, ttl=60)

    async def main() -> None:
        d = await world.ino("/b/d")
        driver.asked.clear()
        for name in ("f00", "f01", "f15", "f07"):  # f01 follows on from f00; f15 and f07 do not
            await world.ops.lookup(d, name.encode(), CTX)
        await trio.sleep(0.1)  # anything fetched ahead has been asked for by now

    run(main)
    assert sorted(driver.asked) == ["d/f00", "d/f01", "d/f02", "d/f07", "d/f15"]


@pytest.mark.parametrize(
    ("files_ahead", "delay"), [(16, 0.01), (0, 0.01), (16, 0.0)], ids=["slow gets", "off", "quick gets"]
)
def test_files_read_one_after_another_are_fetched_ahead(
    tmp_path: Path, files_ahead: int, delay: float
) -> None:
    # cp -r, cat *, tar: each file read whole, in listing order.  Ahead of each read, the next
    # files' gets are on their way; without, every read waits for its own, one after another.
    # A backend that answers faster than fetching ahead costs (a server on this machine) is
    # not fetched ahead.
    driver = CountingDriver(delay)
    driver.create_container("b")
    names = [f"d/f{i:02d}" for i in range(40)]
    for i, name in enumerate(names):
        driver.put("b", name, io.BytesIO(bytes([i]) * 1000))
    world = World(tmp_path, driver, ttl=60, files_ahead=files_ahead)
    asked_before_read = 0

    async def main() -> None:
        nonlocal asked_before_read
        for i, name in enumerate(names):
            asked_before_read += name in driver.got
            assert await world.read_file(f"/b/{name}") == bytes([i]) * 1000

    run(main)
    assert sorted(driver.got) == names  # each fetched once, nothing past the last
    if files_ahead and delay:
        assert asked_before_read >= 30  # all but the first few, give or take a thread's start
    else:
        assert asked_before_read == 0


@pytest.mark.parametrize(
    ("order", "ahead"),
    [
        # The first three gets time the backend; then only f04 follows on from the read before it.
        (["f39", "f38", "f37", "f00", "f10", "f03", "f04", "f15"], ["f05"]),
        (["f39", "f38", "f37", "f00", "f04", "f08", "f12", "f16", "f20"], []),  # every fourth file
    ],
    ids=["jumps", "every fourth"],
)
def test_reads_off_the_listing_order_fetch_no_other_file(
    tmp_path: Path, order: list[str], ahead: list[str]
) -> None:
    driver = CountingDriver(delay=0.01)
    driver.create_container("b")
    for i in range(40):
        driver.put("b", f"d/f{i:02d}", io.BytesIO(b"x"))
    world = World(tmp_path, driver, ttl=60, files_ahead=16)

    async def main() -> None:
        for name in order:
            await world.read_file(f"/b/d/{name}")
        await trio.sleep(0.1)  # anything fetched ahead has been asked for by now

    run(main)
    assert sorted(driver.got) == sorted(f"d/{n}" for n in order + ahead)


def test_empty_files_and_directories_between_do_not_stop_fetching_ahead(tmp_path: Path) -> None:
    # The kernel reads nothing of an empty file (nor of one whose pages it still holds), so the
    # walk through a directory must go on past them, and past sub-directories.
    driver = CountingDriver(delay=0.01)
    driver.create_container("b")
    files = [f"d/f{i:02d}" for i in range(30)]
    for i, name in enumerate(files):
        driver.put("b", name, io.BytesIO(b"" if i % 3 == 2 else b"x"))
        if i % 5 == 0:
            driver.put("b", f"{name}-sub/inner", io.BytesIO(b"y"))
    world = World(tmp_path, driver, ttl=60, files_ahead=16)
    asked_before_read = 0
    read = [name for i, name in enumerate(files) if i % 3 != 2]

    async def main() -> None:
        nonlocal asked_before_read
        for name in read:
            asked_before_read += name in driver.got
            assert await world.read_file(f"/b/{name}") == b"x"

    run(main)
    assert sorted(driver.got) == read
    assert asked_before_read >= len(read) - 6


class ListingBehindUploads(ListsLikeS3):
    """Once armed, a listing answers with what the store held when it was asked, but only when told
    to; uploads wait while ``uploads`` is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.asked_listing = threading.Event()
        self.answer = threading.Event()
        self.uploads = threading.Event()
        self.uploads.set()

    def put(self, *args: Any, **kwargs: Any) -> Any:
        self.uploads.wait(5)
        return super().put(*args, **kwargs)

    def list(self, *args: Any, **kwargs: Any) -> Any:
        entries = list(super().list(*args, **kwargs))
        if self.armed:
            self.asked_listing.set()
            self.answer.wait(5)
        return iter(entries)


def test_a_file_stored_while_its_directory_is_listed_stays_listed(tmp_path: Path) -> None:
    # A journaled close: the upload ends after the LIST was asked (which therefore lacks the file)
    # and before its answer is merged with the files not stored yet (which no longer hold it).
    driver = ListingBehindUploads()
    world = World(tmp_path, driver)

    async def main() -> list[str]:
        await world.mkdir("/b")
        driver.uploads.clear()
        info, _ = await world.ops.create(await world.ino("/b"), b"f", 0o100644, os.O_WRONLY, CTX)
        await world.ops.write(info.fh, 0, b"data")
        await world.ops.flush(info.fh)  # journaled: the upload is held
        await world.ops.release(info.fh)
        names: list[str] = []

        async def listing() -> None:
            entries, _ = await world.ns.list_page(world.ns.get(await world.ino("/b")), None)
            names.extend(name for name, _ in entries)

        driver.armed = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listing)
            assert await trio.to_thread.run_sync(driver.asked_listing.wait, 5)
            driver.uploads.set()
            await world.files.writeback.sync("b", "f")  # stored: no longer among the unflushed files
            driver.answer.set()
        return names

    assert run(main) == ["f"]


def test_a_file_replaced_by_another_client_does_not_get_stale_attributes(tmp_path: Path) -> None:
    driver = ListsLikeS3()
    world = World(tmp_path, driver)

    async def main() -> None:
        await world.mkdir("/b")
        await world.write_file("/b/f", b"mine")
        await world.index.flush()  # type: ignore[union-attr]
        driver.put("b", "f", io.BytesIO(b"theirs"))
        entries = dict((await world.ns.list_page(world.ns.get(await world.ino("/b")), None))[0])
        assert entries["f"].meta is None  # the index's ETag no longer matches

    run(main)


def test_rmdir_removes_the_attribute_index(tmp_path: Path) -> None:
    driver = ListsLikeS3()
    world = World(tmp_path, driver)

    async def main() -> None:
        await world.mkdir("/b")
        await world.mkdir("/b/d")
        await world.write_file("/b/d/f", b"x")
        await world.index.flush()  # type: ignore[union-attr]
        d = await world.ino("/b/d")
        await world.ops.unlink(d, b"f", CTX)
        await world.index.flush()  # type: ignore[union-attr]
        await world.ops.rmdir(await world.ino("/b"), b"d", CTX)
        await world.index.flush()  # type: ignore[union-attr]
        await world.ops.rmdir(ROOT_INODE, b"b", CTX)
        assert driver.containers() == []

    run(main)


class ListsOddKeys(MemoryDriver):
    """A memory driver whose listing of ``d/`` also shows keys another S3 tool could have
    written (``d//x``, ``d/./x``, ``d/../x``, ``d/.``), which no path can name."""

    def list(
        self, container: str, prefix: str = "", delimiter: str | None = None, start_after: Any = None
    ) -> Any:
        entries = list(super().list(container, prefix, delimiter, start_after))
        if prefix == "d/" and delimiter == "/":
            entries += [Prefix("d//"), Prefix("d/./"), Prefix("d/../"), ArtifactInfo("d/.", 1, 0.0, "e")]
        return iter(sorted(entries, key=lambda e: e.name))


def test_keys_that_cannot_be_paths_are_skipped(tmp_path: Path) -> None:
    world = World(tmp_path, ListsOddKeys())

    async def main() -> None:
        await world.mkdir("/b")
        await world.mkdir("/b/d")
        await world.write_file("/b/d/ok", b"x")
        d = world.ns.get(await world.ino("/b/d"))
        assert d.key == "d/"
        entries, _ = await world.ns.list_page(d, None)
        assert [name for name, _ in entries] == ["ok"]

    run(main)
