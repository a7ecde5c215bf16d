"""Following readers through a directory's listing, for the look-aheads built on it.

``cp -r``, ``tar``, ``grep -r``, ``find``, ``du`` and rsync visit a directory's
files and sub-directories in listing order. A visit right after the one
before it in the listing (a step) widens a window, 1, 2, 4 ... up to a limit,
of names ahead of it to fetch in the background, like read-ahead within a
file; a visit anywhere else (a jump) starts over and fetches nothing ahead,
so a lone ``cat`` or ``ls`` costs no extra request. What is fetched, and
when it is worth it, is the caller's: :mod:`vaultfs.fileahead` fetches files'
first blocks, :class:`~vaultfs.namespace.Namespace` sub-directories' listings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cachetools

#: Directories whose visits are followed at once (most recently visited first).
KEEP = 16
#: The look-aheads fetch ahead only while the backend's quickest recent answer
#: (:attr:`vaultfs.backend.Backend.latency`) took this long.  Each file fetched ahead costs the
#: daemon CPU (about 0.3 ms on a 2-core machine); against a server on the same machine, whose gets
#: took about 2 ms, fetching files ahead made reading small files no faster on S3 and 23% slower
#: on the local driver (the CPUs were the limit), while against a server 10 ms away (gets of 15 ms
#: and more) it made them 4x faster.
SLOW_BACKEND = 0.005
#: A visit this many names past the expected one still continues the walk: the kernel reads
#: nothing of a file whose pages it still holds.
SKIP = 2


@dataclass(eq=False)
class _Walk:
    """The order of the names a walk visits in one directory, and where the walk is."""

    listing: int  # id() of the listing the order was taken from (holding it would keep it alive)
    count: int
    names: list[str]
    position: dict[str, int] = field(default_factory=dict)
    next: int | None = None  # the position a step would visit next; None before the first visit
    window: int = 0
    ahead_until: int = 0  # positions before this have been fetched ahead, or visited

    def __post_init__(self) -> None:
        self.position = {name: i for i, name in enumerate(self.names)}


class Walks:
    """Walks through the listings of up to :data:`KEEP` directories, each at most ``limit`` ahead."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._walks: cachetools.LRUCache[tuple[str, str], _Walk] = cachetools.LRUCache(KEEP)

    def visit(
        self,
        where: tuple[str, str],
        listing: Mapping[str, Any],
        name: str,
        wanted: Callable[[Any], bool],
        fetch: Callable[[str], bool],
    ) -> None:
        """``name`` of directory ``where``'s ``listing`` is visited: if that is a step, call ``fetch``
        for the next names whose entries are ``wanted``, in order, until it returns False (no room).

        A visit up to :data:`SKIP` names past the expected one is a step; one back inside the
        window (visitors side by side) changes nothing; anything else is a jump.
        """
        walk = self._walk(where, listing, name, wanted)
        at = walk.position.get(name)
        if at is None:
            return
        if walk.next is not None and walk.next <= at <= walk.next + SKIP:
            walk.window = min(self.limit, max(1, 2 * walk.window))
            walk.next = at + 1
        elif walk.next is None or not walk.next - walk.window <= at < walk.next:
            walk.window, walk.ahead_until, walk.next = 0, at + 1, at + 1
        start = max(walk.ahead_until, at + 1)
        end = min(len(walk.names), at + 1 + walk.window)
        for i in range(start, end):
            if not fetch(walk.names[i]):
                end = i  # no room now: the next step tries again from here
                break
        walk.ahead_until = max(walk.ahead_until, end)

    def _walk(
        self, where: tuple[str, str], listing: Mapping[str, Any], name: str, wanted: Callable[[Any], bool]
    ) -> _Walk:
        """The walk of ``where``, its order taken again only from a new listing, or when a name it
        lacks was added (positions of the names it has do not move when others come or go)."""
        walk = self._walks.get(where)
        grown = walk is not None and name not in walk.position and walk.count != len(listing)
        if walk is None or walk.listing != id(listing) or grown:
            names = [n for n, entry in listing.items() if wanted(entry)]
            walk = self._walks[where] = _Walk(id(listing), len(listing), names)
        return walk
