"""Kernel-side tuning of a live mount.

The kernel reads ahead of a sequential reader only ``read_ahead_kb`` at a
time (128 KiB by default), which caps a FUSE read request, and with it
throughput, far below what the daemon can serve.  Raising it is a root-only
write to sysfs, made after each mount; without permission we log once and go on.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024


def device_of(mountpoint: Path) -> str | None:
    """``major:minor`` of the file system mounted at ``mountpoint``, read from /proc.

    Reading /proc, not calling stat(2), matters: a stat of the mountpoint
    would wait for our own FUSE loop, which has not started yet.
    """
    target = str(mountpoint)
    device = None
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if len(fields) > 4 and fields[4] == target:
                device = fields[2]  # the last one: a mount on top of another shadows it
    return device


def raise_read_ahead(mountpoint: Path, kilobytes: int = READ_AHEAD_KB) -> bool:
    """Set the mount's ``read_ahead_kb``; return whether it worked."""
    device = device_of(mountpoint)
    if device is None:
        return False
    path = Path("/sys/class/bdi") / device / "read_ahead_kb"
    try:
        path.write_text(str(kilobytes))
    except OSError as exc:
        log.info("cannot raise the kernel read-ahead (%s: %s); large reads are slower", path, exc.strerror)
        return False
    return True
