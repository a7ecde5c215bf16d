"""Write-behind: have the kernel write a staged file's data to disk while the file is still being written.

A staged file handed to write-back is usually fsynced soon after: by the
``local`` driver, which keeps the file as the stored artifact and syncs it, or
by the journal when an upload outlasts its hedge.  Left alone, the kernel keeps
the data in the page cache until then (its dirty limits are gigabytes on a big
machine), so that fsync, and the close(2) waiting for it, would write the
whole file at once.  Starting the writeback of each finished stretch of
:data:`WINDOW` bytes as the writes go by overlaps the disk with the writer and
leaves the fsync little to do.

Only ``SYNC_FILE_RANGE_WRITE`` is used: it starts writeback without waiting for
it (it can block briefly on a full device queue, as the write(2) before it can
on dirty-page throttling), it makes nothing durable, and its errors are left to
the fsync that follows, which reports them reliably.  Rewritten pages are simply
written again.  The cost is disk writes for staged files that are deleted
before anything syncs them (an upload within its hedge, on S3).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

#: Bytes a sequential writer moves past the last mark before their writeback is started.
WINDOW = 8 << 20

_SYNC_FILE_RANGE_WRITE = 2


def _load() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None  # not Linux: the final fsync does all the work, as without this module
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_sync_file_range = _load()


def advance(fd: int, mark: int, end: int) -> int:
    """Bytes of ``fd`` up to ``end`` were just written; return the new mark.

    ``mark`` is where the writeback started so far ends.  Once ``end`` is
    :data:`WINDOW` or more past it, the writeback of ``[mark, end)`` is started
    and ``end`` is the new mark; writes before the mark change nothing.
    """
    if end - mark < WINDOW:
        return mark
    if _sync_file_range is not None:
        _sync_file_range(fd, mark, end - mark, _SYNC_FILE_RANGE_WRITE)
    return end
