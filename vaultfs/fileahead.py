"""Read-ahead across files: the next files of a directory read one after another.

``cp -r``, ``cat *``, ``tar``, ``grep -r`` and rsync read a directory's files
in listing order, each from its start. Within a file the reader's read-ahead
hides the backend's latency; across files every open would otherwise wait for
one round trip of its own, one file after another. So, per directory, a file
read from its start right after the one before it in the listing (a step) lets
the first block of the next files be fetched in the background, 1, 2, 4 ... up
to a limit ahead, like read-ahead within a file; a read anywhere else (a jump)
starts over and fetches nothing ahead, so a lone ``cat`` costs no extra
request. Empty files are left out (the kernel reads nothing of them), and only
a backend whose gets take a while gains (see :data:`SLOW_GET`). Only regular
files the cached listing shows with a stored version are fetched, under the
version the listing shows, so a file changed since is fetched again by its own
read, never served stale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cachetools

from .namespace import Entry, Kind, Namespace, Node
from .reader import Reader

#: Directories whose reading order is followed at once (most recently read first).
WALKS = 16
#: Files are fetched ahead only while even the quickest recent get took this long to start answering
#: (:attr:`vaultfs.backend.Backend.get_latency`).
#: Each file fetched ahead costs the daemon CPU (about 0.3 ms on a 2-core machine); against a server
#: on the same machine, whose gets took about 2 ms, fetching ahead made reading small files no
#: faster on S3 and 23% slower on the local driver (the CPUs were the limit), while against a
#: server 10 ms away (gets of 15 ms and more) it made them 4x faster.
SLOW_GET = 0.005
#: A read this many files past the expected one still continues the walk: the kernel reads nothing
#: of a file whose pages it still holds.
SKIP = 2


@dataclass(eq=False)
class _Walk:
    """The reading order of one directory: its listed non-empty files, and where reading is."""

    listing: int  # id() of the listing the order was taken from (holding it would keep it alive)
    count: int
    names: list[str]
    position: dict[str, int] = field(default_factory=dict)
    next: int | None = None  # the position a step would read next; None before the first read
    window: int = 0
    ahead_until: int = 0  # positions before this have been fetched ahead, or read

    def __post_init__(self) -> None:
        self.position = {name: i for i, name in enumerate(self.names)}


class FilesAhead:
    """Follows which files of each directory are read from their start, and fetches the next ones."""

    def __init__(self, namespace: Namespace, reader: Reader, limit: int) -> None:
        self.ns = namespace
        self.reader = reader
        # The reader also caps blocks fetched ahead and not read yet, for all directories together.
        self.limit = max(0, min(limit, reader.spare_blocks))
        self._walks: cachetools.LRUCache[tuple[str, str], _Walk] = cachetools.LRUCache(WALKS)

    def reading(self, node: Node) -> None:
        """File ``node`` is being read from its start: note it, and fetch ahead if that is a step."""
        if self.limit == 0 or not node.container or node.key.endswith("/"):
            return
        quickest = self.reader.backend.get_latency
        if quickest is None or quickest < SLOW_GET:
            return  # the backend answers about as fast as fetching ahead costs: not worth following
        name = node.key[node.key.rfind("/") + 1 :]
        parent = self.ns.find(node.container, node.key[: len(node.key) - len(name)])
        if parent is None or parent.children is None or parent.children_expires < time.monotonic():
            return  # no listing to follow (too large, or not current)
        listing = parent.children
        walk = self._walk(parent.container, parent.key, listing, name)
        at = walk.position.get(name)
        if at is None:
            return
        if walk.next is not None and walk.next <= at <= walk.next + SKIP:
            walk.window = min(self.limit, max(1, 2 * walk.window))
            walk.next = at + 1
        elif walk.next is None or not walk.next - walk.window <= at < walk.next:
            walk.window, walk.ahead_until, walk.next = 0, at + 1, at + 1  # a jump: start over
        # Otherwise a file fetched ahead was read out of turn (readers side by side): carry on.
        end = min(len(walk.names), at + 1 + walk.window)
        for i in range(max(walk.ahead_until, at + 1), end):
            entry = listing.get(walk.names[i])
            if entry is None or entry.kind is not Kind.FILE or not entry.etag:  # gone, or not stored yet
                continue
            if not self.reader.fetch_first_block(
                parent.container, parent.key + walk.names[i], entry.etag, entry.size
            ):
                end = i  # memory is full of blocks fetched ahead: the next step tries again from here
                break
        walk.ahead_until = max(walk.ahead_until, end)

    def _walk(self, container: str, key: str, listing: dict[str, Entry], name: str) -> _Walk:
        """The walk of directory ``key``, its order taken again only from a new listing, or when a
        name it lacks was added (positions of the names it has do not move when others come or go)."""
        walk = self._walks.get((container, key))
        grown = walk is not None and name not in walk.position and walk.count != len(listing)
        if walk is None or walk.listing != id(listing) or grown:
            names = [n for n, entry in listing.items() if entry.kind is Kind.FILE and entry.size > 0]
            walk = self._walks[(container, key)] = _Walk(id(listing), len(listing), names)
        return walk
