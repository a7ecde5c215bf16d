"""``vaultfs mount`` and ``vaultfs umount`` as a user sees them: exit status and the message on stderr.

Exit status (vaultfs/cli.py): 0 success, 1 a mount or backend failure, 2 a usage or configuration
error.  Mountpoint problems count as mount failures (1); anything wrong with what to mount (the
configuration, the backend's name, the SOURCE directory, an ``-o`` value) is a usage error (2).

Every test cleans up what it started, even when it fails: foreground daemons through
tests/mounts.py's ``mount_factory``, detached daemons through the ``site`` fixture, which unmounts
(``fusermount3 -u``, then ``-uz``) and kills any daemon still serving one of the test's mountpoints.
All waits are bounded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mounts import VAULTFS, Mount, MountFactory, is_mounted

from vaultfs import config, kernel, runtime

pytestmark = pytest.mark.mount

#: Environment variables that would change what the command does (systemd, a configuration file).
_SCRUBBED = ("VAULTFS_CONFIG", "NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID")


def vaultfs(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``vaultfs ARGS`` as a user would, capturing stdout and stderr (bounded)."""
    environ = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    environ.update(env or {})
    return subprocess.run(
        [VAULTFS, *args],
        env=environ,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def record_for(mountpoint: Path) -> dict[str, Any] | None:
    """The runtime record (``/run/vaultfs/*.json`` for root) of the daemon serving ``mountpoint``."""
    directory = runtime.runtime_dir()
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            body = json.loads(path.read_text())
            if body.get("mountpoint") == str(mountpoint):
                return body
    return None


def daemon_pids(mountpoint: Path) -> set[int]:
    """Processes whose command line names ``mountpoint`` (a test's own, unique path) as an argument."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if b"mount" in args and str(mountpoint).encode() in args:
                pids.add(int(entry.name))
    record = record_for(mountpoint)
    if record is not None:
        pids.add(int(record["pid"]))
    return {pid for pid in pids if alive(pid)}


def tidy(mountpoint: Path) -> None:
    """Unmount ``mountpoint`` (normally, then lazily) and end every daemon serving it, in bounded time."""
    pids = daemon_pids(mountpoint)
    for flag in ("-u", "-u", "-uz"):
        if not is_mounted(mountpoint):
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(["fusermount3", flag, str(mountpoint)], capture_output=True, timeout=10)
        time.sleep(0.2)
    pids |= daemon_pids(mountpoint)
    if not wait_until(lambda: not any(alive(p) for p in pids), 10):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(alive(p) for p in pids), 10)


@dataclass
class Site:
    """A test's directories: DATA (a local backend with container ``c``), a cache, mountpoints."""

    tmp: Path
    data: Path
    cache: Path
    mnt: Path
    mountpoints: list[Path] = field(default_factory=list)

    def mountpoint(self, name: str) -> Path:
        path = self.tmp / name
        self.mountpoints.append(path)
        return path

    def mount(self, source: str, mountpoint: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """``vaultfs mount SOURCE MOUNTPOINT --cache-dir CACHE ARGS`` (detached unless ARGS say otherwise)."""
        if mountpoint not in self.mountpoints:
            self.mountpoints.append(mountpoint)
        kw.setdefault("cwd", self.tmp)
        return vaultfs("mount", source, str(mountpoint), "--cache-dir", str(self.cache), *args, **kw)

    def config(self, body: str, name: str = "config.yaml") -> Path:
        path = self.tmp / name
        path.write_text(body)
        return path


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    data = tmp_path / "data"
    (data / "c").mkdir(parents=True)
    (data / "c" / "hello.txt").write_text("hello\n")
    s = Site(tmp_path, data, tmp_path / "cache", tmp_path / "mnt")
    s.mnt.mkdir()
    s.mountpoints.append(s.mnt)
    try:
        yield s
    finally:
        for mountpoint in s.mountpoints:
            tidy(mountpoint)


def foreground(factory: MountFactory, site: Site, *args: str) -> Mount:
    """A ``--foreground`` daemon of DATA on ``site.mnt``, stopped by the factory after the test."""
    return factory(str(site.data), "--cache-dir", str(site.cache), *args, name="mnt")


def run_foreground(
    site: Site, source: str, *args: str, timeout: float = 15
) -> subprocess.CompletedProcess[str]:
    """``vaultfs mount --foreground`` expected to fail: its result, or a test failure once it mounts."""
    cmd = [VAULTFS, "mount", source, str(site.mnt), "--cache-dir", str(site.cache), "--foreground", *args]
    environ = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    log = site.tmp / "foreground.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=environ, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        if not wait_until(lambda: proc.poll() is not None or is_mounted(site.mnt), timeout):
            pytest.fail(f"vaultfs mount --foreground neither mounted nor exited in {timeout}s")
        if proc.poll() is None:
            pytest.fail(f"vaultfs mount --foreground mounted:\n{log.read_text()}")
        return subprocess.CompletedProcess(cmd, proc.returncode, "", log.read_text())
    finally:
        if proc.poll() is None:
            tidy(site.mnt)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def assert_nothing_mounted(mountpoint: Path) -> None:
    assert not is_mounted(mountpoint)
    assert wait_until(lambda: not daemon_pids(mountpoint), 5), "a daemon is left running"


def local_config(root: Path | str, name: str = "alpha", extra: str = "") -> str:
    return f"backends:\n  - name: {name}\n    driver: local\n    config: {{root: {root}}}\n{extra}"


# -- 1. bad inputs ----------------------------------------------------------------------------
def test_missing_mountpoint_says_how_to_create_it(site: Site) -> None:
    missing = site.tmp / "no" / "such"
    done = site.mount(str(site.data), missing)
    assert done.returncode == 1
    assert f"mountpoint {missing} does not exist" in done.stderr
    assert f"mkdir -p {missing}" in done.stderr
    assert not missing.exists()


def test_mountpoint_that_is_a_file(site: Site) -> None:
    afile = site.tmp / "afile"
    afile.write_text("x")
    done = site.mount(str(site.data), afile)
    assert done.returncode == 1
    assert f"mountpoint {afile} is not a directory" in done.stderr
    assert_nothing_mounted(afile)


def test_nonempty_mountpoint_is_refused_unless_o_nonempty(site: Site) -> None:
    (site.mnt / "mine").write_text("under the mount")
    done = site.mount(str(site.data), site.mnt)
    assert done.returncode == 1
    assert f"mountpoint {site.mnt} is not empty" in done.stderr
    assert "-o nonempty" in done.stderr
    assert_nothing_mounted(site.mnt)

    done = site.mount(str(site.data), site.mnt, "-o", "nonempty")
    assert (done.returncode, done.stderr) == (0, "")
    assert os.path.ismount(site.mnt)
    assert os.listdir(site.mnt) == ["c"]
    assert vaultfs("umount", str(site.mnt)).returncode == 0
    assert (site.mnt / "mine").read_text() == "under the mount"


def test_already_mounted_mountpoint(site: Site, mount_factory: MountFactory) -> None:
    foreground(mount_factory, site)
    done = site.mount(str(site.data), site.mnt)
    assert done.returncode == 1
    assert f"{site.mnt} is already a mount point" in done.stderr
    assert f"vaultfs umount {site.mnt}" in done.stderr
    assert (site.mnt / "c" / "hello.txt").read_text() == "hello\n"  # the first mount is unharmed


def kill_daemon(mount: Mount) -> None:
    assert mount.proc is not None
    mount.proc.send_signal(signal.SIGKILL)
    mount.proc.wait(timeout=10)
    with pytest.raises(OSError) as dead:
        os.statvfs(mount.mountpoint)
    assert dead.value.errno == errno.ENOTCONN  # "Transport endpoint is not connected"


def test_dead_mount_names_the_exact_fix_and_the_fix_works(site: Site, mount_factory: MountFactory) -> None:
    kill_daemon(foreground(mount_factory, site))
    done = site.mount(str(site.data), site.mnt)
    assert done.returncode == 1
    assert "dead FUSE mount" in done.stderr
    fix = f"fusermount3 -uz {site.mnt}"
    assert done.stderr.rstrip().endswith(fix), done.stderr

    ran = subprocess.run(shlex.split(fix), capture_output=True, text=True, timeout=10)
    assert ran.returncode == 0, ran.stderr
    assert not is_mounted(site.mnt)
    done = site.mount(str(site.data), site.mnt)
    assert (done.returncode, done.stderr) == (0, "")
    assert (site.mnt / "c" / "hello.txt").read_text() == "hello\n"
    assert vaultfs("umount", str(site.mnt)).returncode == 0


def test_dead_mount_is_recognised_while_the_kernel_still_caches_its_attributes(
    site: Site, mount_factory: MountFactory
) -> None:
    mount = foreground(mount_factory, site, "--attr-ttl", "60", "--dir-ttl", "60")
    os.stat(
        site.mnt
    )  # what `ls -la` does; the kernel keeps the answer for the TTL, even after the daemon dies
    kill_daemon(mount)
    done = site.mount(str(site.data), site.mnt)
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith(f"fusermount3 -uz {site.mnt}"), done.stderr


def test_unknown_backend_lists_the_configured_ones(site: Site) -> None:
    cfg = site.config(local_config(site.data, "alpha") + local_config(site.data, "beta").split("\n", 1)[1])
    done = site.mount("gamma", site.mnt, "--config", str(cfg))
    assert done.returncode == 2
    assert f"vaultfs: {cfg}: no backend named 'gamma'; defined: alpha, beta" in done.stderr
    assert "Traceback" not in done.stderr
    assert_nothing_mounted(site.mnt)


@pytest.mark.parametrize("how", ["--config", "$VAULTFS_CONFIG", "default"])
def test_missing_config_file_names_it_and_how_to_override(site: Site, how: str) -> None:
    missing = site.tmp / "nowhere.yaml"
    if how == "--config":
        done = site.mount("alpha", site.mnt, "--config", str(missing))
        expected = [f"{missing}: no such file (given with --config)"]
    elif how == "$VAULTFS_CONFIG":
        done = site.mount("alpha", site.mnt, env={"VAULTFS_CONFIG": str(missing)})
        expected = [f"{missing}: no such file (from $VAULTFS_CONFIG)"]
    else:
        if os.path.exists(config.DEFAULT_PATH):
            pytest.skip(f"{config.DEFAULT_PATH} exists on this machine")
        done = site.mount("alpha", site.mnt)
        expected = [f"{config.DEFAULT_PATH}: no such file", "$VAULTFS_CONFIG", "--config PATH"]
    assert done.returncode == 2
    for text in expected:
        assert text in done.stderr
    assert_nothing_mounted(site.mnt)


def test_unknown_driver_lists_the_installed_ones(site: Site) -> None:
    cfg = site.config("backends:\n  - name: alpha\n    driver: lokal\n    config: {root: /tmp}\n")
    done = site.mount("alpha", site.mnt, "--config", str(cfg))
    assert done.returncode == 2
    assert f"{cfg}: backends[0].driver: unknown driver 'lokal' (did you mean 'local'?)" in done.stderr
    installed = done.stderr.split("installed drivers: ", 1)[1].strip().split(", ")
    assert {"local", "memory", "s3", "lyve"} <= set(installed)
    assert_nothing_mounted(site.mnt)


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_source_directory_that_does_not_exist(site: Site, relative: bool) -> None:
    source = "./no-such-dir" if relative else str(site.tmp / "no-such-dir")
    done = site.mount(source, site.mnt)
    assert done.returncode == 2
    assert f"{source} does not exist" in done.stderr
    assert_nothing_mounted(site.mnt)


def test_source_that_is_a_file_is_refused(site: Site) -> None:
    afile = site.tmp / "afile"
    afile.write_text("x")
    done = site.mount(str(afile), site.mnt)
    assert done.returncode != 0
    assert f"{afile} is not a directory" in done.stderr
    assert_nothing_mounted(site.mnt)


@pytest.mark.parametrize("root", ["missing", "a file"])
@pytest.mark.parametrize("mode", ["detached", "--foreground"])
def test_local_root_that_is_not_a_directory_fails_the_mount(site: Site, root: str, mode: str) -> None:
    path = site.tmp / "root"
    if root == "a file":
        path.write_text("not a directory")
    cfg = site.config(local_config(path))
    if mode == "--foreground":
        done = run_foreground(site, "alpha", "--config", str(cfg))
    else:
        done = site.mount("alpha", site.mnt, "--config", str(cfg))
    assert done.returncode == 1
    assert f"local root {path}" in done.stderr
    assert_nothing_mounted(site.mnt)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (
            "attr_ttl=abc",
            "-o attr_ttl: expected a duration in seconds such as 5, 2.5 or \"500ms\", got 'abc'",
        ),
        ("umask=999", "-o umask: expected an octal mode such as \"022\", got '999'"),
        ("uid=-1", "-o uid: expected at least 0, got '-1'"),
        ("attr_ttl", "-o attr_ttl: needs a value, e.g. -o attr_ttl=..."),
    ],
)
def test_bad_o_value_is_a_usage_error(site: Site, option: str, expected: str) -> None:
    done = site.mount(str(site.data), site.mnt, "-o", f"ro,{option}")
    assert done.returncode == 2
    assert f"vaultfs: command line: {expected}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert_nothing_mounted(site.mnt)


def test_bad_flag_value_is_a_usage_error(site: Site) -> None:
    done = site.mount(str(site.data), site.mnt, "--attr-ttl", "abc")
    assert done.returncode == 2
    assert "argument --attr-ttl: expected a duration" in done.stderr
    assert_nothing_mounted(site.mnt)


def test_unknown_libfuse_option_is_named_in_daemon_mode(site: Site) -> None:
    done = site.mount(str(site.data), site.mnt, "-o", "bogus_opt")
    assert done.returncode != 0
    assert "bogus_opt" in done.stderr, done.stderr
    assert_nothing_mounted(site.mnt)


def test_unknown_libfuse_option_is_named_in_the_foreground(site: Site) -> None:
    done = site.mount(str(site.data), site.mnt, "-o", "bogus_opt", "--foreground", timeout=15)
    assert done.returncode == 1
    assert "unknown option(s): `-o bogus_opt'" in done.stderr
    assert f"vaultfs: cannot mount {site.mnt}: " in done.stderr
    assert_nothing_mounted(site.mnt)


# -- 2. daemon mode ---------------------------------------------------------------------------
def test_detached_mount_is_live_on_return_and_umount_waits_for_the_daemon(site: Site) -> None:
    done = site.mount(str(site.data), site.mnt)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    # Live the moment the command returns: no polling.
    assert os.path.ismount(site.mnt)
    (site.mnt / "c" / "new.txt").write_text("through the mount\n")
    assert (site.mnt / "c" / "new.txt").read_text() == "through the mount\n"

    record = record_for(site.mnt)
    assert record is not None, f"no runtime record for {site.mnt} in {runtime.runtime_dir()}"
    pid = int(record["pid"])
    assert alive(pid)
    assert os.getsid(pid) == pid  # detached: its own session, no controlling terminal
    time.sleep(0.3)
    assert alive(pid)
    assert (site.mnt / "c" / "hello.txt").read_text() == "hello\n"

    done = vaultfs("umount", str(site.mnt))
    assert (done.returncode, done.stderr) == (0, "")
    # Returned only once the daemon was gone.
    assert not alive(pid)
    assert not is_mounted(site.mnt)
    assert record_for(site.mnt) is None
    assert os.listdir(site.mnt) == []
    # ... and once the upload of what was written had finished.
    assert (site.data / "c" / "new.txt").read_text() == "through the mount\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a mount's read-ahead needs root")
def test_a_file_opened_as_soon_as_the_mount_appears_reads_with_the_raised_read_ahead(site: Site) -> None:
    done = site.mount(str(site.data), site.mnt)
    assert done.returncode == 0, done.stderr
    entry = kernel.mount_entry(site.mnt)
    assert entry is not None
    bdi = Path("/sys/class/bdi") / entry.device / "read_ahead_kb"
    # The kernel gives a file the mount's read-ahead when it opens; it must already be raised then.
    with open(site.mnt / "c" / "hello.txt", "rb") as f:
        assert int(bdi.read_text()) == kernel.READ_AHEAD_KB
        assert f.read() == b"hello\n"


def test_failing_daemon_reports_its_reason_and_leaves_nothing_mounted(site: Site) -> None:
    # The child fails after the fork: its HTTP listener cannot bind a port that is taken.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = site.mount(str(site.data), site.mnt, "--metrics-listen", address)
    assert done.returncode == 1
    assert (
        f"vaultfs: cannot mount {site.mnt}: cannot listen on {address}: Address already in use" in done.stderr
    )
    assert_nothing_mounted(site.mnt)
    assert record_for(site.mnt) is None


def test_failing_daemon_with_an_unusable_cache_dir(site: Site) -> None:
    blocker = site.tmp / "blocker"
    blocker.write_text("a file where the cache directory should be")
    done = vaultfs("mount", str(site.data), str(site.mnt), "--cache-dir", str(blocker / "cache"))
    assert done.returncode == 1
    assert f"vaultfs: cannot mount {site.mnt}: " in done.stderr
    assert "Not a directory" in done.stderr
    assert_nothing_mounted(site.mnt)


# -- 3. signals -------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_uploads_unflushed_data_then_unmounts(
    site: Site, mount_factory: MountFactory, signum: signal.Signals
) -> None:
    mount = foreground(mount_factory, site)
    assert mount.proc is not None
    payload = b"written, never closed\n" * 1000
    fd = os.open(site.mnt / "c" / "open.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert os.write(fd, payload) == len(payload)
        mount.proc.send_signal(signum)
        assert mount.proc.wait(timeout=20) == 0, mount.log()
        assert not is_mounted(site.mnt)
        assert (site.data / "c" / "open.bin").read_bytes() == payload
    finally:
        if mount.alive():
            mount.proc.kill()  # never close an fd on a hung daemon's mount: close(2) would wait for it
            mount.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(fd)


# -- 4. -o options on a real mount -------------------------------------------------------------
def test_o_ro_refuses_writes_and_serves_reads(site: Site) -> None:
    done = site.mount(str(site.data), site.mnt, "-o", "ro")
    assert done.returncode == 0, done.stderr
    assert (site.mnt / "c" / "hello.txt").read_text() == "hello\n"
    attempts = [
        lambda: (site.mnt / "c" / "new.txt").write_text("x"),
        lambda: open(site.mnt / "c" / "hello.txt", "a").close(),
        lambda: (site.mnt / "c" / "d").mkdir(),
        lambda: (site.mnt / "c" / "hello.txt").unlink(),
        lambda: os.chmod(site.mnt / "c" / "hello.txt", 0o600),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as refused:
            attempt()
        assert refused.value.errno == errno.EROFS
    assert sorted(os.listdir(site.data / "c")) == ["hello.txt"]
    assert (site.data / "c" / "hello.txt").read_text() == "hello\n"
    assert vaultfs("umount", str(site.mnt)).returncode == 0


def test_o_uid_gid_umask_apply_to_another_clients_files(site: Site) -> None:
    (site.data / "c" / "theirs.txt").write_text("x")
    (site.data / "c" / "theirs.txt").chmod(0o644)
    (site.data / "c" / "dir").mkdir()
    done = site.mount(str(site.data), site.mnt, "-o", "uid=1234,gid=2345,umask=077")
    assert done.returncode == 0, done.stderr
    for name, kind, mode in [("theirs.txt", stat.S_IFREG, 0o600), ("dir", stat.S_IFDIR, 0o700)]:
        st = os.stat(site.mnt / "c" / name)
        assert (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (
            kind,
            mode,
            1234,
            2345,
        ), name
    st = os.stat(site.mnt / "c")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 1234, 2345)
    assert vaultfs("umount", str(site.mnt)).returncode == 0


def test_findmnt_df_and_umount_t_know_the_mount(site: Site, mount_factory: MountFactory) -> None:
    mount = foreground(mount_factory, site)
    found = subprocess.run(
        ["findmnt", "-n", "-o", "TARGET,SOURCE,FSTYPE", "-t", "fuse.vaultfs", str(site.mnt)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [str(site.mnt), "vaultfs:data", "fuse.vaultfs"]

    df = subprocess.run(
        ["df", "-B1", "--output=size,avail", str(site.mnt)], capture_output=True, text=True, timeout=10
    )
    assert df.returncode == 0, df.stderr
    size, avail = (int(n) for n in df.stdout.splitlines()[1].split())
    assert size > 0 and avail > 0
    vfs = os.statvfs(site.mnt)
    assert vfs.f_bfree > 0 and vfs.f_bavail > 0 and vfs.f_ffree > 0 and vfs.f_favail > 0
    (site.mnt / "c" / "big").write_bytes(b"\0" * (1 << 20))
    assert os.statvfs(site.mnt).f_bavail > 0

    done = subprocess.run(
        ["umount", "-t", "fuse.vaultfs", str(site.mnt)], capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stderr
    assert not is_mounted(site.mnt)
    assert mount.proc is not None and mount.proc.wait(timeout=20) == 0


def findmnt_field(mountpoint: Path, column: str) -> str:
    found = subprocess.run(
        ["findmnt", "-n", "-o", column, str(mountpoint)], capture_output=True, text=True, timeout=10
    )
    return found.stdout.strip()


@pytest.mark.parametrize(("option", "column"), [("fsname=mydata", "SOURCE"), ("subtype=other", "FSTYPE")])
def test_user_fsname_and_subtype_are_deterministic(site: Site, option: str, column: str) -> None:
    outcomes = set()
    for seed in ("1", "2", "3", "4"):
        done = site.mount(str(site.data), site.mnt, "-o", option, env={"PYTHONHASHSEED": seed})
        outcomes.add((done.returncode, findmnt_field(site.mnt, column) if done.returncode == 0 else ""))
        tidy(site.mnt)
    assert len(outcomes) == 1, f"-o {option} gave {sorted(outcomes)} under different hash seeds"
    if option.startswith("fsname="):
        assert outcomes == {(0, "mydata")}


# -- 5. vaultfs umount of something not mounted --------------------------------------------------
@pytest.mark.parametrize("target", ["empty dir", "missing"])
def test_umount_of_something_not_mounted_fails(site: Site, target: str) -> None:
    path = site.mnt if target == "empty dir" else site.tmp / "missing"
    done = vaultfs("umount", str(path))
    assert done.returncode == 1
    # One line naming the path (today: "cannot unmount PATH: <fusermount3's reason>").
    assert done.stderr.startswith("vaultfs: ") and done.stderr.count("\n") == 1, done.stderr
    assert str(path) in done.stderr
    assert "Traceback" not in done.stderr


def test_umount_of_something_not_mounted_says_so(site: Site) -> None:
    done = vaultfs("umount", str(site.mnt))
    assert done.returncode == 1
    assert done.stderr == f"vaultfs: {site.mnt} is not mounted\n"
