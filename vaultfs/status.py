"""``vaultfs status``: every running mount (or one) at a glance.

The mounts come from the runtime records the daemons write
(:mod:`vaultfs.runtime`); each daemon with an HTTP listener is asked for its
``/healthz`` report, which holds the backend's health from the daemon's last
periodic check, open files, pending uploads, cache use and error counts.
Without a listener (``metrics.listen`` off) the health is "unknown".

Mounts of type ``fuse.vaultfs`` in ``/proc/self/mounts`` that have no record
are shown too: a crashed daemon's dead mount ("Transport endpoint is not
connected") is the usual reason, and the fix is printed with it.

Exit status: 0 when every mount shown is healthy or its health is unknown,
1 when one is not (or MOUNTPOINT is not a vaultfs mount).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from . import runtime

EXIT_OK, EXIT_FAILED = 0, 1

#: Health words that make ``vaultfs status`` exit 1.
_BAD_HEALTH = ("backend unavailable", "unmounted", "stopping", "dead", "not mounted", "unreachable")


def configure_status(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vaultfs status``."""
    parser.add_argument(
        "mountpoint",
        nargs="?",
        metavar="MOUNTPOINT",
        help="show only this mount (a mountpoint or a backend name)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON (a list of mounts) instead of a table"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="how long to wait for each daemon's /healthz (default: 3)",
    )


def _unescape(field: str) -> str:
    # /proc/self/mounts writes space, tab, newline and backslash as octal escapes.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def kernel_mounts(path: str = "/proc/self/mounts") -> dict[str, str]:
    """The ``fuse.vaultfs`` mounts the kernel has: mountpoint -> source (``vaultfs:NAME``)."""
    found: dict[str, str] = {}
    try:
        with open(path) as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "fuse.vaultfs":
                    found[_unescape(fields[1])] = _unescape(fields[0])
    except OSError:
        pass
    return found


def _statfs_errno(path: str, timeout: float) -> int | None:
    """The errno of statfs(``path``), 0 if it works, or None if it did not answer within ``timeout``.

    statfs, not stat: the kernel answers stat from its attribute cache for a
    while after a FUSE daemon died, but always forwards statfs to the daemon.
    In a thread, because a FUSE mount whose daemon hangs makes the call hang too.
    """
    result: list[int] = []

    def probe() -> None:
        try:
            os.statvfs(path)
            result.append(0)
        except OSError as exc:
            result.append(exc.errno or errno.EIO)

    thread = threading.Thread(target=probe, daemon=True, name="vaultfs status statfs")
    thread.start()
    thread.join(timeout)
    return result[0] if result else None


def fetch_health(address: str, timeout: float) -> dict[str, Any]:
    """The daemon's ``/healthz`` report (a 503 carries one too); ``OSError`` if it does not answer."""
    # No proxies: the listener is local, and an http_proxy from the environment would swallow the request.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{address}/healthz", timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503 still carries the report
        body = exc.read()
        exc.close()
    report = json.loads(body)
    if not isinstance(report, dict):
        raise ValueError("not a JSON object")
    return report


def _entry_from_record(record: dict[str, Any], mounted: bool, timeout: float) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": record.get("name"),
        "mountpoint": record.get("mountpoint"),
        "pid": record.get("pid"),
        "driver": record.get("driver"),
        "started": record.get("started"),
        "metrics": record.get("metrics"),
        "mounted": mounted,
        "health": "unknown",
        "open_files": None,
        "pending_uploads": None,
        "cache_bytes": None,
        "cache_budget_bytes": None,
        "errors": None,
        "recent_errors": [],
        "report": None,
    }
    address = record.get("metrics")
    if not mounted:
        entry["health"] = "not mounted"
    if not address:
        return entry
    try:
        report = fetch_health(str(address), timeout)
    except (OSError, ValueError) as exc:
        entry["health"] = "unreachable"
        entry["error"] = f"http://{address}/healthz: {getattr(exc, 'reason', None) or exc}"
        return entry
    entry["report"] = report
    if mounted:
        entry["health"] = str(report.get("status", "unknown"))
    files = report.get("files", {})
    writeback = report.get("writeback", {})
    cache = report.get("cache", {})
    errors = report.get("errors", {})
    entry["open_files"] = files.get("open")
    entry["pending_uploads"] = writeback.get("pending")
    entry["cache_bytes"] = cache.get("bytes")
    entry["cache_budget_bytes"] = cache.get("budget_bytes")
    entry["errors"] = int(errors.get("fuse", 0)) + int(errors.get("driver", 0))
    entry["recent_errors"] = errors.get("recent", [])
    return entry


def collect(target: str | None = None, timeout: float = 3.0) -> list[dict[str, Any]]:
    """One entry per running mount (or the one named by ``target``: a mountpoint or backend name)."""
    kernel = kernel_mounts()
    entries = []
    recorded = set()
    for record in runtime.records():
        mountpoint = str(record.get("mountpoint"))
        recorded.add(mountpoint)
        if not _matches(target, mountpoint, record.get("name")):
            continue
        entries.append(_entry_from_record(record, mountpoint in kernel, timeout))
    for mountpoint, source in sorted(kernel.items()):
        name = source.removeprefix("vaultfs:")
        if mountpoint in recorded or not _matches(target, mountpoint, name):
            continue
        code = _statfs_errno(mountpoint, timeout)
        entry = {
            "name": name,
            "mountpoint": mountpoint,
            "pid": None,
            "driver": None,
            "metrics": None,
            "mounted": True,
            "health": "dead" if code == errno.ENOTCONN else "unknown",
            "note": (
                f"dead mount (its daemon exited); clean it up with: fusermount3 -uz {mountpoint}"
                if code == errno.ENOTCONN
                else "no runtime record (started by another user, or with another $VAULTFS_RUNTIME_DIR)"
            ),
        }
        entries.append(entry)
    return entries


def _matches(target: str | None, mountpoint: str, name: Any) -> bool:
    if target is None:
        return True
    return mountpoint == os.path.abspath(target) or name == target


def _human(size: Any) -> str:
    if not isinstance(size, int):
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" or value >= 10 else f"{value:.1f}{unit}"
        value /= 1024
    return str(size)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def print_status(entries: list[dict[str, Any]], out: Any = None) -> None:
    """The table, then a line per mount for its latest error or a hint."""
    from .cli import print_table

    out = out or sys.stdout
    rows = []
    for e in entries:
        cache = "-"
        if e.get("cache_budget_bytes"):
            cache = f"{_human(e.get('cache_bytes'))}/{_human(e.get('cache_budget_bytes'))}"
        rows.append(
            (
                _cell(e.get("name")),
                _cell(e.get("mountpoint")),
                _cell(e.get("pid")),
                _cell(e.get("driver")),
                _cell(e.get("health")),
                _cell(e.get("open_files")),
                _cell(e.get("pending_uploads")),
                cache,
                _cell(e.get("errors")),
            )
        )
    print_table(
        ("NAME", "MOUNTPOINT", "PID", "DRIVER", "HEALTH", "OPEN", "PENDING", "CACHE", "ERRORS"), rows, out
    )
    for e in entries:
        if e.get("note"):
            print(f"{e['name']}: {e['note']}", file=out)
        if e.get("error"):
            print(f"{e['name']}: {e['error']}", file=out)
        report = e.get("report") or {}
        backend = report.get("backend", {})
        if backend.get("error") and not backend.get("healthy"):
            print(f"{e['name']}: backend: {backend['error']}", file=out)
        recent = e.get("recent_errors") or []
        if recent:
            last = recent[-1]
            when = time.strftime("%H:%M:%S", time.localtime(float(last.get("time", 0))))
            message = last.get("message")
            print(f"{e['name']}: last of {len(recent)} recent errors, at {when}: {message}", file=out)


def run_status(args: argparse.Namespace) -> int:
    """Print the mounts' status; exit 1 if one is unhealthy or MOUNTPOINT has no vaultfs mount."""
    entries = collect(args.mountpoint, args.timeout)
    if args.json:
        json.dump(entries, sys.stdout, indent=2, sort_keys=True)
        print()
    elif entries:
        print_status(entries)
    elif args.mountpoint is None:
        print("no vaultfs mounts are running")
    if args.mountpoint is not None and not entries:
        print(f"vaultfs: no vaultfs mount on {args.mountpoint}", file=sys.stderr)
        return EXIT_FAILED
    if any(e.get("health") in _BAD_HEALTH for e in entries):
        return EXIT_FAILED
    return EXIT_OK
