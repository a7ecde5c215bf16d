"""Read-ahead across files: the next files of a directory read one after another.

``cp -r``, ``cat *``, ``tar``, ``grep -r`` and rsync read a directory's files
in listing order, each from its start. Within a file the reader's read-ahead
hides the backend's latency; across files every open would otherwise wait for
one round trip of its own, one file after another. So, per directory, a file
read from its start right after the one before it in the listing (a step) lets
the first block of the next files be fetched in the background, 1, 2, 4 ... up
to a limit ahead, like read-ahead within a file; a read anywhere else (a jump)
starts over and fetches nothing ahead, so a lone ``cat`` costs no extra
request. Only a backend whose gets take a while gains (see :data:`SLOW_GET`).
Only regular files the cached listing shows with a stored version are
fetched, under the version the listing shows, so a file changed since is
fetched again by its own read, never served stale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cachetools

from .namespace import Entry, Kind, Namespace, Node
from .reader import Reader

#: Directories whose reading order is followed at once (most recently read first).
WALKS = 64
#: Files are fetched ahead only while even the quickest recent get of a block took this long. Each
#: file fetched ahead costs the daemon CPU (about 0.3 ms on a 2-core machine); against a server
#: on the same machine, whose gets took about 2 ms, fetching ahead made reading small files no
#: faster on S3 and 23% slower on the local driver (the CPUs were the limit), while against a
#: server 10 ms away (gets of 15 ms and more) it made them 4x faster.
SLOW_GET = 0.005


@dataclass(eq=False)
class _Walk:
    """The reading order of one directory: its listed files, and where reading is."""

    listing: dict[str, Entry]
    count: int
    names: list[str]
    position: dict[str, int] = field(default_factory=dict)
    next: int = -1  # the position a step would read next
    window: int = 0
    ahead_until: int = 0  # positions before this have been fetched ahead, or read

    def __post_init__(self) -> None:
        self.position = {name: i for i, name in enumerate(self.names)}


class FilesAhead:
    """Follows which files of each directory are read from their start, and fetches the next ones."""

    def __init__(self, namespace: Namespace, reader: Reader, limit: int) -> None:
        self.ns = namespace
        self.reader = reader
        # Fetched blocks wait in the reader's memory until read: never more than it keeps.
        self.limit = max(0, min(limit, reader.spare_blocks))
        self._walks: cachetools.LRUCache[tuple[str, str], _Walk] = cachetools.LRUCache(WALKS)

    def reading(self, node: Node) -> None:
        """File ``node`` is being read from its start: note it, and fetch ahead if that is a step."""
        if self.limit == 0 or not node.container or node.key.endswith("/"):
            return
        name = node.key[node.key.rfind("/") + 1 :]
        parent = self.ns.find(node.container, node.key[: len(node.key) - len(name)])
        if parent is None or parent.children is None or parent.children_expires < time.monotonic():
            return  # no listing to follow (too large, or not current)
        where = (parent.container, parent.key)
        walk = self._walks.get(where)
        listing = parent.children
        if walk is None or walk.listing is not listing or walk.count != len(listing):
            names = [n for n, entry in listing.items() if entry.kind is Kind.FILE]
            walk = self._walks[where] = _Walk(listing, len(listing), names)
        at = walk.position.get(name)
        if at is None:
            return
        if at == walk.next:
            walk.window = min(self.limit, max(1, 2 * walk.window))
            walk.next = at + 1
        elif walk.next - walk.window <= at < walk.ahead_until:
            # A file fetched ahead read out of turn (readers side by side): still the same walk.
            walk.next = max(walk.next, at + 1)
        else:
            walk.window, walk.ahead_until, walk.next = 0, at + 1, at + 1
        quickest = self.reader.quickest_get
        if quickest is None or quickest < SLOW_GET:
            return  # followed, not fetched: the backend answers about as fast as fetching ahead costs
        start, end = max(walk.ahead_until, at + 1), min(len(walk.names), at + 1 + walk.window)
        for later in walk.names[start:end]:
            entry = listing.get(later)
            if entry is not None and entry.kind is Kind.FILE and entry.etag:  # "": not stored yet
                self.reader.fetch_first_block(parent.container, parent.key + later, entry.etag, entry.size)
        walk.ahead_until = max(walk.ahead_until, end)
