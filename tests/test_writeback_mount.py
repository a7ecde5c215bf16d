"""Write-back on real mounts: close returns before the upload, and nothing closed is ever lost.

A stalled backend is the session's SeaweedFS server stopped with SIGSTOP (and
always continued): requests to it hang, as over a dead network, until SIGCONT.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mounts import VAULTFS, Mount, MountFactory, is_mounted, s3_config
from s3server import SeaweedServer

from drivers.base import Driver
from drivers.local import LocalDriver
from drivers.s3 import S3Driver

pytestmark = pytest.mark.mount

LISTEN = ("--metrics-listen", "127.0.0.1:0")


@dataclass
class Site:
    """How to (re)mount one container, and the container seen through its driver."""

    start: Callable[[str], Mount]
    driver: Driver
    container: str

    def stored(self, name: str) -> bytes:
        with self.driver.get(self.container, name) as f:
            return f.read()

    def exists(self, name: str) -> bool:
        return any(i.name == name for i in self.driver.list(self.container, prefix=name))


def local_site(tmp_path: Path, mount_factory: MountFactory) -> Site:
    data = tmp_path / "data"
    (data / "c").mkdir(parents=True)

    def start(name: str) -> Mount:
        return mount_factory(str(data), "--cache-dir", str(tmp_path / "cache"), *LISTEN, name=name)

    return Site(start, LocalDriver(LocalDriver.Options(root=str(data))), "c")


def s3_site(tmp_path: Path, mount_factory: MountFactory, s3_options: dict[str, Any]) -> Site:
    bucket = f"wb-{uuid.uuid4().hex[:10]}"
    driver = S3Driver(S3Driver.Options(**s3_options))
    driver.create_container(bucket)
    config = s3_config(tmp_path / "config.yaml", "wbtest", s3_options)

    def start(name: str) -> Mount:
        args = ["--config", str(config), "--cache-dir", str(tmp_path / "cache"), *LISTEN]
        return mount_factory("wbtest", *args, name=name)

    return Site(start, driver, bucket)


@pytest.fixture(params=["local", "s3"])
def site(request: pytest.FixtureRequest, tmp_path: Path, mount_factory: MountFactory) -> Site:
    if request.param == "local":
        return local_site(tmp_path, mount_factory)
    return s3_site(tmp_path, mount_factory, request.getfixturevalue("s3_options"))


@pytest.fixture
def s3(tmp_path: Path, mount_factory: MountFactory, s3_options: dict[str, Any]) -> Site:
    return s3_site(tmp_path, mount_factory, s3_options)


@contextlib.contextmanager
def stalled(server: SeaweedServer) -> Iterator[Callable[[], None]]:
    """SeaweedFS stopped (every request hangs) until the yielded function or the block's end resumes it."""
    assert server.process is not None
    group = os.getpgid(server.process.pid)
    resumed = False

    def resume() -> None:
        nonlocal resumed
        if not resumed:
            resumed = True
            os.killpg(group, signal.SIGCONT)

    os.killpg(group, signal.SIGSTOP)
    try:
        yield resume
    finally:
        resume()


def in_thread(fn: Callable[[], Any]) -> Callable[[float], Any]:
    """Start ``fn`` in a thread; the returned function joins it (bounded) and gives its outcome."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float) -> Any:
        thread.join(timeout)
        assert outcome, f"still running after {timeout}s"
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    return join


def test_many_small_files_created_quickly_all_land_with_their_content(site: Site) -> None:
    m = site.start("mnt")
    top = m.mountpoint / site.container
    files = {f"d{i % 3}/f{i:04d}": os.urandom(i % 7 * 1000 + 1) for i in range(300)}
    for d in ("d0", "d1", "d2"):
        (top / d).mkdir()
    for name, data in files.items():
        (top / name).write_bytes(data)
    m.settle()
    assert {name: site.stored(name) for name in files} == files
    assert {name: (top / name).read_bytes() for name in files} == files


def test_closed_file_survives_sigkill_before_its_upload(
    s3: Site, s3_server: SeaweedServer, tmp_path: Path
) -> None:
    m = s3.start("mnt")
    top = m.mountpoint / s3.container
    (top / "dir").mkdir()
    fd = os.open(top / "dir" / "precious.txt", os.O_WRONLY | os.O_CREAT, 0o640)
    with stalled(s3_server):
        os.write(fd, b"closed before the crash\n")
        began = time.monotonic()
        os.close(fd)  # the journal has it: close does not wait for the stalled backend
        assert time.monotonic() - began < 5
        assert m.pending_uploads() == 1
        assert (top / "dir" / "precious.txt").read_bytes() == b"closed before the crash\n"
        assert m.proc is not None
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(10)
        m.stop()  # lazily unmounts the dead mount
    # The stalled server may still take the request it already had in its socket buffer once it
    # continues; either way the journal has the file, and the next mount uploads it again.
    m2 = s3.start("mnt2")
    # Shown (from the journal's copy, or the backend once uploaded) as soon as the mount is up.
    assert (
        m2.mountpoint / s3.container / "dir" / "precious.txt"
    ).read_bytes() == b"closed before the crash\n"
    m2.settle()
    assert s3.stored("dir/precious.txt") == b"closed before the crash\n"
    assert s3.driver.stat(s3.container, "dir/precious.txt").metadata["mode"] == str(0o100640)
    assert "queued again" in m2.log()


def test_rewriting_a_pending_file_ends_with_the_newest_content(s3: Site, s3_server: SeaweedServer) -> None:
    m = s3.start("mnt")
    path = m.mountpoint / s3.container / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    with stalled(s3_server):
        os.write(fd, b"version one")
        os.close(fd)
        path.write_bytes(b"version two, longer")  # O_TRUNC of a pending file: no backend needed
        with open(path, "ab") as f:
            f.write(b" and three")
        assert path.read_bytes() == b"version two, longer and three"
        assert path.stat().st_size == len(b"version two, longer and three")
    m.settle()
    assert s3.stored("f") == b"version two, longer and three"
    assert path.read_bytes() == b"version two, longer and three"


def test_unlink_and_rename_of_pending_files(s3: Site, s3_server: SeaweedServer) -> None:
    m = s3.start("mnt")
    top = m.mountpoint / s3.container
    fds = {name: os.open(top / name, os.O_WRONLY | os.O_CREAT, 0o644) for name in ("gone", "moved", "kept")}
    with stalled(s3_server) as resume:
        for name, fd in fds.items():
            os.write(fd, name.encode())
            os.close(fd)
        unlink = in_thread(lambda: os.unlink(top / "gone"))
        rename = in_thread(lambda: os.rename(top / "moved", top / "renamed"))
        time.sleep(0.5)
        resume()
        unlink(60)
        rename(60)
    m.settle()
    assert sorted(os.listdir(top)) == ["kept", "renamed"]
    assert not s3.exists("gone") and not s3.exists("moved")
    assert (s3.stored("renamed"), s3.stored("kept")) == (b"moved", b"kept")
    assert (top / "renamed").read_bytes() == b"moved"


def test_umount_waits_for_pending_uploads(s3: Site, s3_server: SeaweedServer) -> None:
    m = s3.start("mnt")
    top = m.mountpoint / s3.container
    names = [f"f{i}" for i in range(20)]
    fds = {name: os.open(top / name, os.O_WRONLY | os.O_CREAT, 0o644) for name in names}
    with stalled(s3_server) as resume:
        for name, fd in fds.items():
            os.write(fd, name.encode() * 100)
            os.close(fd)
        umount = subprocess.Popen([VAULTFS, "umount", str(m.mountpoint)], stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert umount.poll() is None, "umount returned while uploads were pending"
        resume()
        _, stderr = umount.communicate(timeout=120)
    assert umount.returncode == 0, stderr
    assert not is_mounted(m.mountpoint)
    assert {name: s3.stored(name) for name in names} == {name: name.encode() * 100 for name in names}


def test_another_clients_change_after_the_upload_is_kept(site: Site) -> None:
    m = site.start("mnt")
    path = m.mountpoint / site.container / "shared"
    path.write_bytes(b"mine")
    with open(path, "rb+") as f:
        os.fsync(f.fileno())  # fsync returns once the upload is done
    assert m.pending_uploads() == 0
    site.driver.put(site.container, "shared", io.BytesIO(b"theirs"), size=6)
    time.sleep(0.5)
    assert site.stored("shared") == b"theirs"
