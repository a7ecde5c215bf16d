"""Processes the benchmark starts: FUSE daemons, page-cache drops, memory figures.

Every daemon runs in its own session with ``PR_SET_PDEATHSIG`` so it dies with
the benchmark, and :meth:`Daemon.stop` always leaves the mountpoint unmounted
(``fusermount3 -u``, then lazily) and the process gone, within bounded waits.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

log = logging.getLogger("bench")

MOUNT_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1
_warned_drop = False


def mounted_paths() -> list[str]:
    """Mountpoints of FUSE file systems right now (from /proc, which never blocks on a dead mount)."""
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2].startswith("fuse"):
                found.append(fields[1].replace("\\040", " "))
    return found


def is_mounted(path: Path) -> bool:
    return str(path) in mounted_paths()


def fusermount(path: Path, lazy: bool = False) -> bool:
    """Unmount ``path``; True when it is no longer mounted."""
    subprocess.run(
        ["fusermount3", "-uz" if lazy else "-u", str(path)], capture_output=True, timeout=30, check=False
    )
    return not is_mounted(path)


def remove_stale_mounts(marker: str) -> None:
    """Lazily unmount FUSE mounts a killed earlier run left under a path containing ``marker``."""
    for path in mounted_paths():
        if marker in path:
            log.warning("removing a mount left by an earlier run: %s", path)
            fusermount(Path(path), lazy=True)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(cmd: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session, output appended to ``log_path``, killed if we die."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (VmHWM, VmRSS), 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of a process and its descendants so far (0 for None or a gone process)."""
    if pid is None:
        return 0.0
    ticks = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_peak_rss(pid: int) -> int:
    """Peak resident set (VmHWM) of a process and its descendants, in bytes."""
    return sum(status_kib(p, "VmHWM") for p in descendants(pid)) * 1024


def drop_caches() -> bool:
    """Write dirty pages back and drop the page, dentry and inode caches; False if not permitted."""
    global _warned_drop
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as exc:
        if not _warned_drop:
            log.warning("cannot drop the page cache (%s): cold figures are not cold", exc)
            _warned_drop = True
        return False


class Daemon:
    """One FUSE daemon serving ``mountpoint``: started, waited for, stopped for sure."""

    def __init__(self, name: str, cmd: Sequence[str], mountpoint: Path, log_path: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 stop_timeout: float = 120.0) -> None:
        self.name = name
        self.cwd = cwd
        self.cmd = list(cmd)
        self.mountpoint = mountpoint
        self.log_path = log_path
        self.env = env
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = MOUNT_TIMEOUT) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as out:
            out.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(self.cmd)}\n")
        self.proc = spawn(self.cmd, self.log_path, self.env, self.cwd)
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"{self.name} exited with {code} before mounting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name}: no mount after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def peak_rss(self) -> int:
        pid = self.pid
        return tree_peak_rss(pid) if pid is not None else 0

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        """Unmount and wait for the daemon (it may upload what is pending); kill it past the timeout."""
        for _ in range(20):
            if not is_mounted(self.mountpoint) or fusermount(self.mountpoint):
                break
            time.sleep(0.25)  # EBUSY: a straggling open file; retry, then go lazy
        else:
            fusermount(self.mountpoint, lazy=True)
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            return proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not exit %.0fs after unmount; killing it", self.name, self.stop_timeout)
            self._killpg(proc)
            return None
        finally:
            if is_mounted(self.mountpoint):
                fusermount(self.mountpoint, lazy=True)

    def kill(self) -> None:
        """Kill the daemon at once (aborting every request blocked on the mount) and unmount lazily."""
        proc, self.proc = self.proc, None
        if proc is not None:
            self._killpg(proc)
        if is_mounted(self.mountpoint):
            fusermount(self.mountpoint, lazy=True)

    @staticmethod
    def _killpg(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)


@contextlib.contextmanager
def watchdog(seconds: float, on_expiry: Callable[[], None], what: str) -> Iterator[None]:
    """Run ``on_expiry`` (which must unblock the body, e.g. kill the daemon) if the body overruns."""
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        log.error("%s took over %.0fs: aborting it", what, seconds)
        on_expiry()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except BaseException as exc:
        if fired.is_set():
            raise TimeoutError(f"{what} took over {seconds:.0f}s") from exc
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        raise TimeoutError(f"{what} took over {seconds:.0f}s")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
