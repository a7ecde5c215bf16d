"""What the kernel says about mounts, and kernel-side tuning of a live mount.

The kernel reads ahead of a sequential reader only ``read_ahead_kb`` at a
time (128 KiB by default), which caps a FUSE read request, and with it
throughput, far below what the daemon can serve.  Raising it is a root-only
write to sysfs, made after each mount; without permission we log once and go on.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo, as far as vaultfs cares."""

    device: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # /proc escapes space, tab, newline and backslash in paths as octal \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entry(mountpoint: Path) -> MountEntry | None:
    """What is mounted on ``mountpoint`` now (the topmost mount), read from /proc.

    Reading /proc, not calling stat(2), matters: a stat of a FUSE mountpoint
    waits for its daemon, which may be this very process, or dead.
    """
    target = str(mountpoint)
    found = None
    try:
        with open("/proc/self/mountinfo") as mountinfo:
            for line in mountinfo:
                before, _, after = line.partition(" - ")
                fields, tail = before.split(), after.split()
                if len(fields) > 4 and len(tail) > 1 and _unescape(fields[4]) == target:
                    found = MountEntry(fields[2], tail[0], _unescape(tail[1]))
    except OSError:
        return None
    return found


def raise_read_ahead(mountpoint: Path, kilobytes: int = READ_AHEAD_KB) -> bool:
    """Set the mount's ``read_ahead_kb``; return whether it worked."""
    entry = mount_entry(mountpoint)
    if entry is None:
        return False
    path = Path("/sys/class/bdi") / entry.device / "read_ahead_kb"
    try:
        path.write_text(str(kilobytes))
    except OSError as exc:
        log.info("cannot raise the kernel read-ahead (%s: %s); large reads are slower", path, exc.strerror)
        return False
    return True
