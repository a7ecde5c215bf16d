"""``vaultfs status`` over real mounts, and the clean-up of a dead mount.

Other mounts may exist on the machine (other tests, other users), so each
check names its mountpoint or picks its mounts out of ``--json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mounts import VAULTFS, MountFactory, is_mounted
from test_cli import table
from test_http import LISTEN, listener, service_env, wait_until  # noqa: F401 -- service_env is a fixture

from vaultfs import runtime

pytestmark = pytest.mark.mount


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VAULTFS, "status", *args], capture_output=True, text=True, timeout=60)


def status_json(*args: str) -> list[dict[str, Any]]:
    done = status("--json", *args)
    assert done.stderr == ""
    return json.loads(done.stdout)


def backend_root(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    (root / "c").mkdir(parents=True)
    (root / "c" / "f").write_bytes(b"x" * 100)
    return root


def test_status_of_a_mountpoint_without_a_mount(service_env: Path, tmp_path: Path) -> None:  # noqa: F811
    done = status(str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert f"no vaultfs mount on {tmp_path / 'nowhere'}" in done.stderr
    done = status("--json", str(tmp_path / "nowhere"))
    assert done.returncode == 1 and json.loads(done.stdout) == []


def test_status_table_and_json(
    service_env: Path,  # noqa: F811
    tmp_path: Path,
    mount_factory: MountFactory,
) -> None:
    alpha = mount_factory(
        str(backend_root(tmp_path, "alpha")), "--cache-dir", str(tmp_path / "cache"), *LISTEN, name="mnt-a"
    )
    beta = mount_factory(
        str(backend_root(tmp_path, "beta")), "--cache-dir", str(tmp_path / "cache"), name="mnt-b"
    )
    address = listener(alpha)
    wait_until(lambda: status_json(str(alpha.mountpoint))[0]["health"] == "ok", 10, "alpha healthy")

    with open(alpha.mountpoint / "c" / "f", "rb"):
        done = status(str(alpha.mountpoint))
        assert done.returncode == 0, done.stderr
        rows = table(done.stdout)
        assert list(rows) == ["alpha"]
        row = rows["alpha"]
        assert row["MOUNTPOINT"] == str(alpha.mountpoint)
        assert alpha.proc is not None and row["PID"] == str(alpha.proc.pid)
        assert row["DRIVER"] == "local"
        assert row["HEALTH"] == "ok"
        assert row["PENDING"] == "0"
        assert row["ERRORS"] == "0"
        wait_until(lambda: table(status(str(alpha.mountpoint)).stdout)["alpha"]["OPEN"] == "1", 10, "OPEN 1")

    # Without a listener the health is unknown, which is not a failure.
    done = status(str(beta.mountpoint))
    assert done.returncode == 0
    assert table(done.stdout)["beta"]["HEALTH"] == "unknown"

    # All mounts: both are listed (perhaps among others), JSON carries the details.
    # The file closed above is released (and its upload finished) asynchronously.
    wait_until(lambda: status_json(str(alpha.mountpoint))[0]["open_files"] == 0, 10, "OPEN 0")
    entries = {e["mountpoint"]: e for e in status_json()}
    a, b = entries[str(alpha.mountpoint)], entries[str(beta.mountpoint)]
    assert a["name"] == "alpha" and a["metrics"] == address and a["mounted"] is True
    assert a["report"]["backend"]["healthy"] is True
    assert a["open_files"] == 0 and a["pending_uploads"] == 0 and a["errors"] == 0
    assert b["name"] == "beta" and b["metrics"] is None and b["health"] == "unknown"
    # A backend name works as well as the mountpoint.
    assert [e["mountpoint"] for e in status_json("beta")] == [str(beta.mountpoint)]


def test_status_reports_an_unhealthy_backend(
    service_env: Path,  # noqa: F811
    tmp_path: Path,
    mount_factory: MountFactory,
) -> None:
    root = backend_root(tmp_path, "gamma")
    m = mount_factory(str(root), "--cache-dir", str(tmp_path / "cache"), *LISTEN)
    listener(m)
    wait_until(lambda: status(str(m.mountpoint)).returncode == 0, 10, "healthy")
    away = tmp_path / "gamma.away"
    root.rename(away)
    try:
        done = wait_until(lambda: (d := status(str(m.mountpoint))).returncode == 1 and d, 10, "exit status 1")
        assert table(done.stdout.split("\ngamma:")[0])["gamma"]["HEALTH"] == "backend unavailable"
        assert f"gamma: backend: local root {root} does not exist" in done.stdout
        assert "gamma: last of 1 recent errors" in done.stdout
    finally:
        away.rename(root)
    wait_until(lambda: status(str(m.mountpoint)).returncode == 0, 10, "healthy again")


def test_a_dead_mount_is_shown_and_cleaned_up(
    service_env: Path,  # noqa: F811
    tmp_path: Path,
    mount_factory: MountFactory,
) -> None:
    m = mount_factory(str(backend_root(tmp_path, "delta")), "--cache-dir", str(tmp_path / "cache"))
    assert m.proc is not None
    # --dead-only leaves a live mount alone.
    done = subprocess.run(
        [VAULTFS, "umount", "--dead-only", str(m.mountpoint)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == ""
    assert is_mounted(m.mountpoint) and m.alive()

    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(timeout=30)
    assert is_mounted(m.mountpoint)
    done = status(str(m.mountpoint))
    assert done.returncode == 1
    assert table(done.stdout.split("\ndelta:")[0])["delta"]["HEALTH"] == "dead"
    assert f"clean it up with: fusermount3 -uz {m.mountpoint}" in done.stdout
    assert runtime.find(m.mountpoint) is None

    done = subprocess.run(
        [VAULTFS, "umount", "--dead-only", str(m.mountpoint)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "unmounted the dead mount" in done.stderr
    assert not is_mounted(m.mountpoint)
    assert os.listdir(m.mountpoint) == []
    # Nothing left to do: still success, and silent.
    done = subprocess.run(
        [VAULTFS, "umount", "--dead-only", str(m.mountpoint)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == ""
