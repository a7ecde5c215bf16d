"""The systemd units: ``systemd-analyze verify``, the hardening rules, and the unit's commands for real.

PID 1 is not systemd on the test machines, so the template unit's
ExecStartPre= and ExecStart= lines are run as systemd would run them, with a
datagram socket as ``NOTIFY_SOCKET`` standing in for systemd.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounts import VAULTFS, Mount, is_mounted
from test_http import service_env, wait_until  # noqa: F401 -- service_env is a fixture
from test_sdnotify import NotifySocket, notify_socket  # noqa: F401 -- notify_socket is a fixture

from vaultfs import runtime

UNITS = Path(__file__).resolve().parent.parent / "systemd"
TEMPLATE = UNITS / "vaultfs@.service"
INSTALLED = "/usr/local/bin/vaultfs"
GENERATORS = ("/usr/lib/systemd/system-generators", "/lib/systemd/system-generators")

#: Options that give a service a mount namespace of its own (or a device policy
#: without /dev/fuse): the mount would be invisible to the host, or FUSE unusable.
NAMESPACE_OPTIONS = (
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateMounts",
    "ReadOnlyPaths",
    "ReadWritePaths",
    "InaccessiblePaths",
    "TemporaryFileSystem",
    "BindPaths",
    "BindReadOnlyPaths",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectHostname",
    "ProtectClock",
    "ProtectProc",
    "MountFlags",
    "RootDirectory",
    "RootImage",
    "DynamicUser",
)


def service_section(path: Path) -> dict[str, list[str]]:
    """The ``[Service]`` keys of a unit file, each with every value it is given."""
    keys: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is missing: apt-get install systemd (make test does)")
    return found


def verify(directory: Path, *units: str) -> None:
    """``systemd-analyze verify`` the units in ``directory``; fail on any complaint about them."""
    done = subprocess.run(
        [analyze(), "verify", "--man=no", *(str(directory / u) for u in units)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Lines about the machine (a container, no systemd as PID 1) are not about our units.
    complaints = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if str(directory) in line or any(u.split("@")[0].split(".")[0] in line for u in units)
    ]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def copy_units(tmp_path: Path) -> Path:
    """The unit files in a scratch directory, using this checkout's vaultfs if none is installed."""
    directory = tmp_path / "units"
    directory.mkdir()
    for unit in UNITS.iterdir():
        if unit.suffix in (".service", ".mount", ".automount"):
            text = unit.read_text()
            if not os.access(INSTALLED, os.X_OK):
                # verify checks that ExecStart's program exists; without `make install` use ours.
                text = text.replace(INSTALLED, VAULTFS)
            (directory / unit.name).write_text(text)
    return directory


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    directory = copy_units(tmp_path)
    verify(directory, "vaultfs@photos.service", "mnt-photos.mount", "mnt-photos.automount")


def test_fstab_example_generates_valid_units(tmp_path: Path) -> None:
    analyze()
    generator = next(
        (
            Path(d) / "systemd-fstab-generator"
            for d in GENERATORS
            if (Path(d) / "systemd-fstab-generator").exists()
        ),
        None,
    )
    if generator is None:
        pytest.skip("systemd-fstab-generator is not installed")
    out = tmp_path / "generated"
    for sub in ("normal", "early", "late"):
        (out / sub).mkdir(parents=True)
    env = dict(os.environ, SYSTEMD_FSTAB=str(UNITS / "fstab.example"), SYSTEMD_LOG_LEVEL="warning")
    done = subprocess.run(
        [str(generator), str(out / "normal"), str(out / "early"), str(out / "late")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    mount = (out / "normal" / "mnt-photos.mount").read_text()
    assert "Type=fuse.vaultfs" in mount and "What=photos" in mount
    assert "config=/etc/vaultfs/config.yaml" in mount
    # x-systemd.automount: an automount pulled in by remote-fs.target (_netdev), so boot never waits.
    assert (out / "normal" / "mnt-photos.automount").exists()
    assert (out / "normal" / "remote-fs.target.wants" / "mnt-photos.automount").exists()
    assert not (out / "normal" / "local-fs.target.wants" / "mnt-photos.mount").exists()
    verify(out / "normal", "mnt-photos.mount", "mnt-photos.automount")


def test_template_unit_settings() -> None:
    keys = service_section(TEMPLATE)
    assert keys["Type"] == ["notify"]
    assert keys["NotifyAccess"] == ["main"]
    assert keys["Restart"] == ["on-failure"]
    assert "WatchdogSec" in keys and "TimeoutStopSec" in keys
    assert keys["ExecStart"] == [f"{INSTALLED} mount %i --foreground"]
    assert keys["ExecStartPre"] == [f"{INSTALLED} umount --dead-only %i"]
    assert keys["NoNewPrivileges"] == ["yes"]
    assert "/dev/fuse rw" in keys["DeviceAllow"]
    present = [k for k in NAMESPACE_OPTIONS if k in keys]
    assert not present, f"these give the service its own mount namespace: {present}"
    for syscall_filter in keys.get("SystemCallFilter", []):
        # An allow-list must not leave out mount(2); only a deny-list of unrelated groups is used.
        assert syscall_filter.startswith("~"), syscall_filter
        assert "@mount" not in syscall_filter and "@privileged" not in syscall_filter


def unit_command(key: str, instance: str) -> list[str]:
    """One Exec*= line of the template as systemd runs it for ``instance``, with this checkout's vaultfs."""
    (line,) = service_section(TEMPLATE)[key]
    argv = shlex.split(line.lstrip("-@:+!"))
    return [VAULTFS if a == INSTALLED else a.replace("%i", instance) for a in argv]


@pytest.fixture
def dead_mount(tmp_path: Path, service_env: Path) -> Iterator[Path]:  # noqa: F811
    """A mountpoint holding a dead mount: its daemon was killed, as in a crash."""
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    (data / "c").mkdir(parents=True)
    (data / "c" / "f").write_bytes(b"photo")
    crashed = Mount(
        str(data), mnt, ["--cache-dir", str(tmp_path / "cache")], tmp_path / "crashed.log"
    ).start()
    try:
        assert crashed.proc is not None
        crashed.proc.send_signal(signal.SIGKILL)
        crashed.proc.wait(timeout=30)
        assert is_mounted(mnt)
        yield mnt
    finally:
        crashed.stop()


@pytest.mark.mount
def test_the_unit_restarts_over_a_dead_mount_and_notifies(
    tmp_path: Path,
    dead_mount: Path,
    notify_socket: tuple[str, NotifySocket],  # noqa: F811
) -> None:
    path, receiver = notify_socket
    config = tmp_path / "config.yaml"
    config.write_text(
        "backends:\n"
        "  - name: photos\n"
        "    driver: local\n"
        f"    config: {{root: {tmp_path / 'data'}}}\n"
        f"    mountpoint: {dead_mount}\n"
        f"cache: {{dir: {tmp_path / 'cache'}}}\n"
    )
    env = dict(os.environ, VAULTFS_CONFIG=str(config))

    pre = subprocess.run(
        unit_command("ExecStartPre", "photos"), env=env, capture_output=True, text=True, timeout=60
    )
    assert pre.returncode == 0, pre.stderr
    assert not is_mounted(dead_mount)

    env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 -- closed below
    service = subprocess.Popen(
        unit_command("ExecStart", "photos"),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    try:
        receiver.wait_for("READY")
        assert is_mounted(dead_mount)
        assert (dead_mount / "c" / "f").read_bytes() == b"photo"
        receiver.wait_for("WATCHDOG", count=2)
        assert runtime.find(dead_mount)["pid"] == service.pid  # type: ignore[index]
        service.send_signal(signal.SIGTERM)  # KillSignal=, to the main process (KillMode=mixed)
        receiver.wait_for("STOPPING")
        assert service.wait(timeout=60) == 0
        assert not is_mounted(dead_mount)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(timeout=30)
        if is_mounted(dead_mount):
            subprocess.run(["fusermount3", "-uz", str(dead_mount)], capture_output=True, timeout=30)
        with contextlib.suppress(OSError):
            print((tmp_path / "service.log").read_text())


def test_mount_without_mountpoint_needs_one_configured(tmp_path: Path, service_env: Path) -> None:  # noqa: F811
    config = tmp_path / "config.yaml"
    config.write_text(f"backends:\n  - name: photos\n    driver: local\n    config: {{root: {tmp_path}}}\n")
    done = subprocess.run(
        [VAULTFS, "mount", "photos", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "backend 'photos' has no mountpoint" in done.stderr


# -- logging under systemd ------------------------------------------------------------
def _journal_env(stream: Path) -> dict[str, str]:
    st = os.stat(stream)
    return dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")


@pytest.mark.mount
@pytest.mark.parametrize("journal", [True, False], ids=["journal", "terminal"])
def test_log_format_under_journald_and_elsewhere(
    tmp_path: Path,
    service_env: Path,  # noqa: F811
    journal: bool,
) -> None:
    data, mnt, stream = tmp_path / "data", tmp_path / "mnt", tmp_path / "stderr"
    data.mkdir()
    mnt.mkdir()
    stream.touch()
    # JOURNAL_STREAM names stderr's device and inode; a mismatch means "not the journal".
    env = _journal_env(stream) if journal else _journal_env(tmp_path)
    with open(stream, "ab") as err:
        proc = subprocess.Popen(
            [VAULTFS, "mount", str(data), str(mnt), "--foreground"],
            env=env,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, 30, "the mount")
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, timeout=30)
    lines = stream.read_text().splitlines()
    mounted = next(line for line in lines if "vaultfs.mount: mounted" in line)
    if journal:
        # journald adds the time; the <6> prefix becomes the entry's priority (info).
        assert mounted.startswith("<6>INFO vaultfs.mount: mounted data (local) on ")
    else:
        date, clock, level = mounted.split()[:3]
        assert len(date) == 10 and date[4] == "-" and ":" in clock and level == "INFO"


@pytest.mark.mount
def test_a_detached_daemon_keeps_logging_to_the_journal(tmp_path: Path, service_env: Path) -> None:  # noqa: F811
    data, mnt, stream = tmp_path / "data", tmp_path / "mnt", tmp_path / "stderr"
    data.mkdir()
    mnt.mkdir()
    stream.touch()
    with open(stream, "ab") as err:
        done = subprocess.run(
            [VAULTFS, "mount", str(data), str(mnt)], env=_journal_env(stream), stderr=err, timeout=60
        )
    record = runtime.find(mnt)
    try:
        assert done.returncode == 0
        assert record is not None
    finally:
        subprocess.run([VAULTFS, "umount", str(mnt)], capture_output=True, timeout=60)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, timeout=30)
        if record is not None and not runtime.wait_for_exit(int(record["pid"]), 30):
            os.kill(int(record["pid"]), signal.SIGKILL)
    # Logged by the daemon after it detached, so through the kept journal stream.
    assert f"<6>INFO vaultfs.mount: unmounted {mnt}" in stream.read_text().splitlines()


@pytest.mark.mount
def test_mount_and_umount_by_backend_name(tmp_path: Path, service_env: Path) -> None:  # noqa: F811
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    (data / "c").mkdir(parents=True)
    mnt.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"backends:\n  - name: photos\n    driver: local\n    config: {{root: {data}}}\n"
        f"    mountpoint: {mnt}\ncache: {{dir: {tmp_path / 'cache'}}}\n"
    )
    done = subprocess.run(
        [VAULTFS, "mount", "photos", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    record = runtime.find(mnt)
    try:
        assert done.returncode == 0, done.stderr
        assert is_mounted(mnt) and record is not None
        done = subprocess.run(
            [VAULTFS, "umount", "photos", "--config", str(config)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mnt)
        assert not runtime.find(mnt)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, timeout=30)
        if record is not None and not runtime.wait_for_exit(int(record["pid"]), 30):
            os.kill(int(record["pid"]), signal.SIGKILL)
