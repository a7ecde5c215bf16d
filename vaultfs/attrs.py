"""File attributes kept in artifact metadata.

vaultfs writes the keys s3fs-fuse uses (``mode``, ``uid``, ``gid`` and ``mtime``
as decimal strings), so files keep their modes and times when another tool
mounts the same bucket, plus ``vfs-mtime-ns`` for full precision.  It reads
rclone's ``mtime`` (RFC 3339) as well.  Symlinks are artifacts whose ``mode``
has the ``S_IFLNK`` type bits and whose content is the target, as s3fs does.
"""

from __future__ import annotations

import datetime
import stat
from collections.abc import Mapping
from dataclasses import dataclass

MODE = "mode"
UID = "uid"
GID = "gid"
MTIME = "mtime"
MTIME_NS = "vfs-mtime-ns"


@dataclass(frozen=True)
class Defaults:
    """What an artifact without our metadata looks like: the mount's ``uid``, ``gid`` and ``umask``."""

    uid: int
    gid: int
    umask: int

    @property
    def file_mode(self) -> int:
        return stat.S_IFREG | (0o666 & ~self.umask)

    @property
    def dir_mode(self) -> int:
        return stat.S_IFDIR | (0o777 & ~self.umask)


def _parse_mtime(value: str) -> int | None:
    try:
        return int(float(value) * 1_000_000_000)
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(parsed.timestamp() * 1_000_000_000)


def mode_of(meta: Mapping[str, str] | None, default: int) -> int:
    """The st_mode stored in ``meta``, or ``default``; the type bits of ``default`` win
    unless the stored mode says symlink."""
    if meta and MODE in meta:
        try:
            stored = int(meta[MODE])
        except ValueError:
            return default
        if stat.S_ISLNK(stored):
            return stored
        return stat.S_IFMT(default) | stat.S_IMODE(stored)
    return default


def owner_of(meta: Mapping[str, str] | None, defaults: Defaults) -> tuple[int, int]:
    """(uid, gid) stored in ``meta``, or the mount's defaults."""
    uid, gid = defaults.uid, defaults.gid
    if meta:
        try:
            uid = int(meta.get(UID, uid))
            gid = int(meta.get(GID, gid))
        except ValueError:
            pass
    return uid, gid


def mtime_ns_of(meta: Mapping[str, str] | None, fallback: float) -> int:
    """The modification time stored in ``meta`` (ours, then s3fs/rclone), else the backend's."""
    if meta:
        if MTIME_NS in meta:
            try:
                return int(meta[MTIME_NS])
            except ValueError:
                pass
        if MTIME in meta:
            parsed = _parse_mtime(meta[MTIME])
            if parsed is not None:
                return parsed
    return int(fallback * 1_000_000_000)


def is_symlink(meta: Mapping[str, str] | None) -> bool:
    """Whether the metadata marks the artifact as a symlink."""
    return stat.S_ISLNK(mode_of(meta, stat.S_IFREG))


def encode(
    mode: int, uid: int, gid: int, mtime_ns: int, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Metadata recording these attributes, keeping any other keys of ``base``."""
    meta = dict(base or {})
    meta[MODE] = str(mode)
    meta[UID] = str(uid)
    meta[GID] = str(gid)
    meta[MTIME] = str(mtime_ns // 1_000_000_000)
    meta[MTIME_NS] = str(mtime_ns)
    return meta
