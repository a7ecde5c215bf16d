"""Read-ahead across files: the next files of a directory read one after another.

Within a file the reader's read-ahead hides the backend's latency; across
files every open would otherwise wait for one round trip of its own, one file
after another.  So a file read from its start is a visit of a
:class:`~vaultfs.walks.Walks` walk through its directory's listing, and each
step fetches the first block of the next files in the background.  Empty
files are left out (the kernel reads nothing of them), and only a backend that
is slow to answer gains (see :data:`~vaultfs.walks.SLOW_BACKEND`).  Only
regular files the cached listing shows with a stored version are fetched,
under the version the listing shows, so a file changed since is fetched again
by its own read, never served stale.
"""

from __future__ import annotations

import time

from .namespace import Entry, Kind, Namespace, Node
from .reader import Reader
from .walks import SLOW_BACKEND, Walks


def _fetchable(entry: Entry) -> bool:
    return entry.kind is Kind.FILE and entry.size > 0


class FilesAhead:
    """Follows which files of each directory are read from their start, and fetches the next ones."""

    def __init__(self, namespace: Namespace, reader: Reader, limit: int) -> None:
        self.ns = namespace
        self.reader = reader
        # The reader also caps blocks fetched ahead and not read yet, for all directories together.
        self.limit = max(0, min(limit, reader.spare_blocks))
        self._walks = Walks(self.limit)

    def reading(self, node: Node) -> None:
        """File ``node`` is being read from its start: note it, and fetch ahead if that is a step."""
        if self.limit == 0 or not node.container or node.key.endswith("/"):
            return
        latency = self.reader.backend.latency
        if latency is None or latency < SLOW_BACKEND:
            return  # the backend answers about as fast as fetching ahead costs: not worth following
        name = node.key[node.key.rfind("/") + 1 :]
        parent = self.ns.find(node.container, node.key[: len(node.key) - len(name)])
        if parent is None or parent.children is None or parent.children_expires < time.monotonic():
            return  # no listing to follow (too large, or not current)
        listing = parent.children

        def fetch(later: str) -> bool:
            entry = listing.get(later)
            if entry is None or not _fetchable(entry) or not entry.etag:  # gone, or not stored yet
                return True
            return self.reader.fetch_first_block(parent.container, parent.key + later, entry.etag, entry.size)

        self._walks.visit((parent.container, parent.key), listing, name, _fetchable, fetch)
