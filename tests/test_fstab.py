"""``mount -t fuse.vaultfs``, /etc/fstab and ``umount``, for real.

mount(8) runs /sbin/mount.fuse3, which runs ``vaultfs SOURCE MOUNTPOINT -o
OPTIONS`` through /bin/sh with a fixed PATH, so it finds the installed
``/usr/local/bin/vaultfs``, not this checkout.  Each test therefore works in
a private mount namespace where a directory holding a link to this
checkout's ``vaultfs`` is bind-mounted over /usr/local/bin (and a test fstab
over /etc/fstab); the mounts it makes stay invisible to the rest of the
machine and vanish with the namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounts import VAULTFS, is_mounted
from test_http import service_env, wait_until  # noqa: F401 -- service_env is a fixture

from vaultfs import runtime
from vaultfs.cli import SUBCOMMANDS
from vaultfs.mountcmd import mount8_argv, take_config_option

pytestmark = pytest.mark.mount


# -- the command line mount.fuse3 builds ----------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["photos", "/mnt/p", "-o", "rw,config=/etc/v.yaml,allow_other,dev,suid"],
            ["mount", "photos", "/mnt/p", "-o", "rw,config=/etc/v.yaml,allow_other,dev,suid"],
        ),
        (["photos", "/mnt/p"], ["mount", "photos", "/mnt/p"]),
        # Subcommands and options are left alone.
        (["mount", "photos", "/mnt/p", "-o", "config=x"], ["mount", "photos", "/mnt/p", "-o", "config=x"]),
        (["status"], ["status"]),
        # One word, or a near-miss of a subcommand without -o, is a typo for argparse to report.
        (["frobnicate"], ["frobnicate"]),
        (["stauts", "/mnt/p"], ["stauts", "/mnt/p"]),
        (["mounts", "/mnt/p", "-o", "rw"], ["mount", "mounts", "/mnt/p", "-o", "rw"]),
        (["--version"], ["--version"]),
        ([], []),
    ],
)
def test_mount8_argv(argv: list[str], expected: list[str]) -> None:
    assert mount8_argv(argv, list(SUBCOMMANDS)) == expected


@pytest.mark.parametrize(
    ("values", "kept", "path"),
    [
        (["rw,config=/etc/v.yaml,allow_other"], ["rw,allow_other"], "/etc/v.yaml"),
        (["config=/a\\,b.yaml"], [], "/a,b.yaml"),
        (["ro", "umask=077"], ["ro", "umask=077"], None),
    ],
)
def test_config_option_is_taken_out_of_o(values: list[str], kept: list[str], path: str | None) -> None:
    assert take_config_option(values) == (kept, path)


# -- a private mount namespace --------------------------------------------------------
class Namespace:
    """A private mount namespace, kept alive by a sleeping process; commands enter it with nsenter."""

    def __init__(self) -> None:
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            pytest.skip("unshare and nsenter (util-linux) are needed")
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sleep", "600"], stdin=subprocess.DEVNULL
        )
        own = os.readlink("/proc/self/ns/mnt")

        def entered() -> bool:
            try:
                return os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != own
            except OSError:
                return False

        deadline = time.monotonic() + 10
        while not entered():
            if self.holder.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.skip("cannot create a mount namespace here (unshare --mount failed)")
            time.sleep(0.02)

    def run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace (environment inherited, PATH included)."""
        return subprocess.run(
            ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def check(self, *cmd: str) -> str:
        done = self.run(*cmd)
        assert done.returncode == 0, f"{cmd} exited {done.returncode}: {done.stdout}{done.stderr}"
        return done.stdout

    def mounted(self, path: Path) -> bool:
        """Whether ``path`` is a mount point inside the namespace."""
        with open(f"/proc/{self.holder.pid}/mounts") as mounts:
            return any(line.split()[1] == str(path) for line in mounts)

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait(timeout=30)


@pytest.fixture
def ns(tmp_path: Path, service_env: Path) -> Iterator[Namespace]:  # noqa: F811
    """A namespace whose /usr/local/bin/vaultfs is this checkout's; every daemon started in it is stopped."""
    namespace = Namespace()
    try:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "vaultfs").symlink_to(VAULTFS)
        namespace.check("mount", "--bind", str(bin_dir), "/usr/local/bin")
        yield namespace
    finally:
        for record in runtime.records():
            mountpoint = str(record["mountpoint"])
            if namespace.holder.poll() is None and namespace.mounted(Path(mountpoint)):
                namespace.run("umount", "-l", mountpoint)
            pid = int(record["pid"])
            if not runtime.wait_for_exit(pid, 10):
                os.kill(pid, signal.SIGKILL)
        namespace.close()


@pytest.fixture
def backend(tmp_path: Path) -> tuple[Path, Path]:
    """A configuration with a local backend ``fstabtest`` (root holding ``c/f``), and an empty mountpoint."""
    data = tmp_path / "data"
    (data / "c").mkdir(parents=True)
    (data / "c" / "f").write_bytes(b"from fstab")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"backends:\n  - name: fstabtest\n    driver: local\n    config: {{root: {data}}}\n"
        f"cache: {{dir: {tmp_path / 'cache'}}}\n"
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    return config, mnt


def umount_and_wait(ns: Namespace, mnt: Path) -> None:
    record = runtime.find(mnt)
    assert record is not None
    ns.check("umount", str(mnt))
    assert not ns.mounted(mnt)
    assert runtime.wait_for_exit(int(record["pid"]), 30), "the daemon did not exit after umount"


# -- mount(8) ---------------------------------------------------------------------------
def test_mount_t_fuse_vaultfs_then_umount(ns: Namespace, backend: tuple[Path, Path]) -> None:
    config, mnt = backend
    done = ns.run("mount", "-t", "fuse.vaultfs", "fstabtest", str(mnt), "-o", f"config={config},allow_other")
    assert done.returncode == 0, done.stderr
    # mount returned once the mount was live.
    assert ns.mounted(mnt)
    assert ns.check("cat", str(mnt / "c" / "f")) == "from fstab"
    assert ns.check("findmnt", "-n", "-o", "FSTYPE,SOURCE", str(mnt)).split() == [
        "fuse.vaultfs",
        "vaultfs:fstabtest",
    ]
    options = ns.check("findmnt", "-n", "-o", "OPTIONS", str(mnt))
    assert "allow_other" in options
    # Invisible outside the namespace.
    assert not is_mounted(mnt)
    umount_and_wait(ns, mnt)


def test_an_fstab_line(ns: Namespace, backend: tuple[Path, Path], tmp_path: Path) -> None:
    config, mnt = backend
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"fstabtest {mnt} fuse.vaultfs _netdev,nofail,x-systemd.automount,config={config},attr_ttl=1 0 0\n"
    )
    ns.check("mount", "--bind", str(fstab), "/etc/fstab")
    done = ns.run("mount", str(mnt))
    assert done.returncode == 0, done.stderr
    assert ns.mounted(mnt)
    assert ns.check("cat", str(mnt / "c" / "f")) == "from fstab"
    umount_and_wait(ns, mnt)


def test_a_bad_configuration_fails_with_the_reason(
    ns: Namespace, backend: tuple[Path, Path], tmp_path: Path
) -> None:
    config, mnt = backend
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text() + "colour: blue\n")
    done = ns.run("mount", "-t", "fuse.vaultfs", "fstabtest", str(mnt), "-o", f"config={bad}")
    assert done.returncode != 0
    assert f"vaultfs: {bad}: colour: unknown key" in done.stderr
    assert not ns.mounted(mnt)

    done = ns.run("mount", "-t", "fuse.vaultfs", "nosuchbackend", str(mnt), "-o", f"config={config}")
    assert done.returncode != 0
    assert "no backend named 'nosuchbackend'" in done.stderr
    assert not ns.mounted(mnt)
    assert runtime.records() == []


def test_a_failure_in_the_daemon_comes_back_to_mount(ns: Namespace, backend: tuple[Path, Path]) -> None:
    config, mnt = backend
    (mnt / "stray").write_text("not empty")
    done = ns.run("mount", "-t", "fuse.vaultfs", "fstabtest", str(mnt), "-o", f"config={config}")
    assert done.returncode != 0
    assert f"mountpoint {mnt} is not empty" in done.stderr
    (mnt / "stray").unlink()

    # This one fails after the fork, in the daemon: its reason travels back through the pipe.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = ns.run(
            "mount",
            "-t",
            "fuse.vaultfs",
            "fstabtest",
            str(mnt),
            "-o",
            f"config={config},metrics_listen=127.0.0.1:{port}",
        )
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert not ns.mounted(mnt)
    assert runtime.records() == []


# -- the same command line, without mount(8) ------------------------------------------------
@pytest.mark.parametrize("subcommand", [[], ["mount"]], ids=["mount8", "mount-subcommand"])
def test_vaultfs_accepts_the_mount8_command_line(
    service_env: Path,  # noqa: F811
    backend: tuple[Path, Path],
    subcommand: list[str],
) -> None:
    config, mnt = backend
    done = subprocess.run(
        [VAULTFS, *subcommand, "fstabtest", str(mnt), "-o", f"rw,config={config},dev,suid"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        assert done.returncode == 0, done.stderr
        assert is_mounted(mnt)
        assert (mnt / "c" / "f").read_bytes() == b"from fstab"
    finally:
        record = runtime.find(mnt)
        subprocess.run([VAULTFS, "umount", str(mnt)], capture_output=True, timeout=60)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, timeout=30)
        if record is not None and not runtime.wait_for_exit(int(record["pid"]), 30):
            os.kill(int(record["pid"]), signal.SIGKILL)
    assert not is_mounted(mnt)
