"""Runtime records: one small JSON file per running mount, so other commands find it.

``vaultfs umount`` reads the daemon's pid from here to wait for it to finish;
``vaultfs status`` lists every record whose process is alive, and reaches the
daemon's HTTP listener at the record's ``metrics`` address (``HOST:PORT``, or
absent when the listener is off).  ``$VAULTFS_RUNTIME_DIR`` overrides the
directory, for tests and for several independent set-ups on one machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

#: The environment variable that overrides :func:`runtime_dir`.
ENV_VAR = "VAULTFS_RUNTIME_DIR"


def runtime_dir() -> Path:
    """``$VAULTFS_RUNTIME_DIR``, else ``/run/vaultfs`` for root, the user's runtime directory otherwise."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/run/vaultfs")
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/vaultfs-{os.geteuid()}"
    return Path(base) / "vaultfs"


def _path_for(name: str, mountpoint: Path) -> Path:
    digest = hashlib.sha1(str(mountpoint).encode()).hexdigest()[:10]
    return runtime_dir() / f"{name}-{digest}.json"


def write_record(name: str, mountpoint: Path, driver: str, **extra: Any) -> Path:
    """Record this process as the daemon of ``mountpoint``; return the record's path."""
    path = _path_for(name, mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "pid": os.getpid(),
        "name": name,
        "mountpoint": str(mountpoint),
        "driver": driver,
        "started": time.time(),
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)
    return path


def remove_record(path: Path) -> None:
    """Remove a record written by :func:`write_record`."""
    path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed daemon whose parent never reaps it (a container's PID 1 may not)
    # stays a zombie, which signal 0 still finds.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def records() -> list[dict[str, Any]]:
    """Every record whose daemon is still running (stale ones are removed)."""
    out: list[dict[str, Any]] = []
    directory = runtime_dir()
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(body.get("pid", 0))):
            out.append(body)
        else:
            path.unlink(missing_ok=True)
    return out


def find(mountpoint: Path) -> dict[str, Any] | None:
    """The running daemon's record for ``mountpoint``, if any."""
    target = str(mountpoint)
    return next((r for r in records() if r.get("mountpoint") == target), None)


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit; return whether it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)
