"""Real FUSE mounts in a subprocess, for tests.

A :class:`Mount` starts ``vaultfs mount ... --foreground``, waits (bounded)
for the mountpoint while checking that the daemon is alive, and on stop
always unmounts (``fusermount3 -u``, then lazily) and kills the daemon.

``close(2)`` returns once a file is in the write-back journal; a test that
looks at the backend first waits with :meth:`Mount.settle`, which asks the
daemon's ``/healthz`` (the mount needs ``--metrics-listen 127.0.0.1:0``) until
no upload is pending, as a user or a monitoring system would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from vaultfs import runtime, status

VAULTFS = shutil.which("vaultfs", path=os.path.dirname(sys.executable)) or "vaultfs"


def s3_config(path: Path, backend: str, options: Mapping[str, object]) -> Path:
    """Write a config file at ``path`` naming one S3 backend with the suite's server ``options``."""
    lines = ["backends:", f"  - name: {backend}", "    driver: s3", "    config:"]
    lines += [f"      {k}: {json.dumps(v)}" for k, v in options.items()]  # JSON scalars are YAML
    path.write_text("\n".join(lines) + "\n")
    return path


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point right now (via /proc, which never blocks on a dead mount)."""
    target = str(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


class Mount:
    """One vaultfs daemon serving ``mountpoint``."""

    def __init__(self, source: str, mountpoint: Path, args: list[str], log_path: Path) -> None:
        self.source = source
        self.mountpoint = mountpoint
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = [VAULTFS, "mount", self.source, str(self.mountpoint), "--foreground", *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vaultfs exited with {self.proc.returncode} before mounting:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"no mount on {self.mountpoint} after {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def metrics_address(self) -> str:
        """HOST:PORT of the daemon's metrics listener, from its runtime record (written just after
        the mount appears, so it is waited for)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for path in sorted(runtime.runtime_dir().glob("*.json")):
                try:
                    record = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if record.get("mountpoint") == str(self.mountpoint) and record.get("pid") == self.pid:
                    if not record.get("metrics"):
                        raise RuntimeError("no metrics: mount with --metrics-listen 127.0.0.1:0")
                    return str(record["metrics"])
            time.sleep(0.02)
        raise RuntimeError(f"no runtime record for the daemon of {self.mountpoint}")

    def health(self) -> dict[str, object]:
        """The daemon's /healthz report."""
        return status.fetch_health(self.metrics_address(), timeout=10)

    def pending_uploads(self) -> int:
        """Uploads the daemon's write-back queue holds now."""
        writeback = self.health()["writeback"]
        assert isinstance(writeback, dict)
        return int(writeback["pending"])

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until every file closed so far is in the backend."""
        deadline = time.monotonic() + timeout
        while self.pending_uploads():
            if time.monotonic() > deadline:
                raise TimeoutError(f"uploads still pending after {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.02)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """Unmount and wait for the daemon; returns its exit code (None if it had to be killed)."""
        for lazy in (False, False, True):
            if not is_mounted(self.mountpoint):
                break
            flag = "-uz" if lazy else "-u"
            if (
                subprocess.run(["fusermount3", flag, str(self.mountpoint)], capture_output=True).returncode
                == 0
            ):
                break
            time.sleep(0.5)
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            return None
        finally:
            if is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)


class MountFactory:
    """Starts mounts for one test and stops every one of them afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.mounts: list[Mount] = []

    def __call__(self, source: str, *args: str, name: str = "mnt") -> Mount:
        mount = Mount(source, self.tmp_path / name, list(args), self.tmp_path / f"{name}.log")
        self.mounts.append(mount)
        return mount.start()

    def close(self) -> None:
        for mount in self.mounts:
            mount.stop()


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[MountFactory]:
    factory = MountFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
