"""sd_notify against a real AF_UNIX datagram socket standing in for systemd.

PID 1 is not systemd here, so the tests bind the socket themselves, pass it
as ``NOTIFY_SOCKET`` and read what the daemon sends: READY=1 once mounted,
STATUS lines, WATCHDOG=1 at half of ``WATCHDOG_USEC``, and STOPPING=1 with
EXTEND_TIMEOUT_USEC on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounts import VAULTFS, MountFactory, is_mounted
from test_http import service_env, wait_until  # noqa: F401 -- service_env is a fixture

from vaultfs import runtime, sdnotify


class NotifySocket:
    """A datagram socket that collects notifications, each parsed into a dict."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def poll(self) -> list[dict[str, str]]:
        """Read every datagram waiting; return all messages so far."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def with_key(self, key: str) -> list[dict[str, str]]:
        return [m for m in self.poll() if key in m]

    def wait_for(self, key: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, str]]:
        """The messages carrying ``key``, once there are at least ``count`` of them."""
        return wait_until(
            lambda: len(found := self.with_key(key)) >= count and found, timeout, f"{count}x {key}"
        )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, NotifySocket]]:
    """A socket path short enough for AF_UNIX (108 bytes), and its reader."""
    directory = tempfile.mkdtemp(prefix="vfs-notify-")
    path = os.path.join(directory, "notify")
    receiver = NotifySocket(path)
    try:
        yield path, receiver
    finally:
        receiver.close()
        shutil.rmtree(directory, ignore_errors=True)


# -- the sender alone -------------------------------------------------------------
def test_sends_to_a_path_socket(notify_socket: tuple[str, NotifySocket]) -> None:
    path, receiver = notify_socket
    notifier = sdnotify.Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready(status="mounted x")
    assert notifier.status("line one\nline two")
    assert notifier.extend_timeout(2.5)
    notifier.close()
    messages = receiver.poll()
    assert messages == [
        {"READY": "1", "STATUS": "mounted x"},
        {"STATUS": "line one line two"},
        {"EXTEND_TIMEOUT_USEC": "2500000"},
    ]


def test_sends_to_an_abstract_socket() -> None:
    name = f"vaultfs-test-{uuid.uuid4().hex}"
    receiver = NotifySocket(b"\0" + name.encode())
    try:
        notifier = sdnotify.Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.stopping()
        assert receiver.poll() == [{"STOPPING": "1"}]
    finally:
        receiver.close()


def test_without_a_socket_nothing_is_sent() -> None:
    notifier = sdnotify.Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval is None


def test_a_vanished_socket_is_not_an_error(tmp_path: Path) -> None:
    notifier = sdnotify.Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not notifier.watchdog()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert sdnotify.Notifier(env).watchdog_interval == 15.0
    # Meant for another process: no pings from this one.
    assert sdnotify.Notifier({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval is None
    assert sdnotify.Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 15.0


def test_forget_environment() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "OTHER": "3"}
    sdnotify.forget_environment(env)
    assert env == {"OTHER": "3"}


# -- a real mount ------------------------------------------------------------------
@pytest.mark.mount
def test_mount_notifies_ready_status_watchdog_and_stopping(
    service_env: Path,  # noqa: F811
    tmp_path: Path,
    mount_factory: MountFactory,
    notify_socket: tuple[str, NotifySocket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, receiver = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    data = tmp_path / "data"
    (data / "c").mkdir(parents=True)
    m = mount_factory(str(data), "--cache-dir", str(tmp_path / "cache"))
    assert m.proc is not None

    ready = receiver.wait_for("READY")
    assert ready[0]["READY"] == "1"
    assert is_mounted(m.mountpoint)
    # READY came before any watchdog ping or status update from the loop.
    first = receiver.poll()[0]
    assert first.get("READY") == "1", receiver.messages

    statuses = receiver.wait_for("STATUS", count=3)
    healthy = wait_until(
        lambda: [s for s in receiver.with_key("STATUS") if "backend healthy" in s["STATUS"]],
        10,
        "a healthy STATUS",
    )
    assert "open files" in healthy[-1]["STATUS"] and "inodes" in healthy[-1]["STATUS"]
    assert str(m.mountpoint) in statuses[-1]["STATUS"]

    # Pings every 0.2 s: at least 5 within two seconds.
    start = len(receiver.with_key("WATCHDOG"))
    time.sleep(2)
    assert len(receiver.with_key("WATCHDOG")) - start >= 5

    # A file with unsaved writes when SIGTERM arrives is uploaded before the daemon exits.
    fd = os.open(m.mountpoint / "c" / "pending", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"saved on stop")
        m.proc.send_signal(signal.SIGTERM)
        stopping = receiver.wait_for("STOPPING")
        assert stopping[0]["STOPPING"] == "1"
        assert int(receiver.wait_for("EXTEND_TIMEOUT_USEC")[0]["EXTEND_TIMEOUT_USEC"]) >= 1_000_000
        assert m.proc.wait(timeout=30) == 0
    finally:
        # The daemon is gone: closing reports "Transport endpoint is not connected" (see the README).
        with contextlib.suppress(OSError):
            os.close(fd)
    assert (data / "c" / "pending").read_bytes() == b"saved on stop"
    assert not is_mounted(m.mountpoint)
    # STOPPING is sent once, and nothing but READY precedes the first STATUS.
    assert len(receiver.with_key("STOPPING")) == 1


@pytest.mark.mount
def test_a_detached_daemon_does_not_notify(
    service_env: Path,  # noqa: F811
    tmp_path: Path,
    notify_socket: tuple[str, NotifySocket],
) -> None:
    path, receiver = notify_socket
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    data.mkdir()
    mnt.mkdir()
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    done = subprocess.run(
        [VAULTFS, "mount", str(data), str(mnt)], env=env, capture_output=True, text=True, timeout=60
    )
    try:
        assert done.returncode == 0, done.stderr
        assert is_mounted(mnt)
        time.sleep(1)
        # systemd accepts READY only from the main process, which has exited by now.
        assert receiver.poll() == []
    finally:
        record = runtime.find(mnt)
        subprocess.run([VAULTFS, "umount", str(mnt)], capture_output=True, timeout=60)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, timeout=30)
        if record is not None and not runtime.wait_for_exit(int(record["pid"]), 30):
            os.kill(int(record["pid"]), signal.SIGKILL)
