"""Inodes and the directory tree over (container, artifact name).

The mount root lists containers; a container lists artifacts, with ``/`` in a
name shown as directories.  A directory's key is its prefix ending in ``/``
(``""`` for a container's top); a file's key is its artifact name.

Inode numbers are derived from a hash of (container, key), so one path keeps
its number for the life of the mount (and across remounts) even after the
kernel forgets it; a collision with a different live path probes the next
number.  The table only holds nodes the kernel still references (lookup
count > 0) or that are open, so ``forget`` bounds memory.

Attributes, listings and negative lookups are cached for ``attr_ttl`` and
``dir_ttl`` seconds; changes by other clients show once those expire.
"""

from __future__ import annotations

import collections
import enum
import functools
import hashlib
import itertools
import logging
import stat
import time
from dataclasses import dataclass, field

import trio

from drivers.base import ArtifactInfo, Prefix
from drivers.errors import NotFound

from . import attrs
from .attrindex import INDEX_NAME, AttrIndex
from .backend import Backend
from .tasks import run_all

log = logging.getLogger(__name__)

ROOT_INODE = 1
#: Listings longer than this are paged from the backend each time instead of cached.
MAX_CACHED_LISTING = 10_000
#: The most names after a looked-up one whose metadata a lookup fetches ahead.
STAT_AHEAD_MAX = 16
#: Requests fetching metadata ahead at a time, for the whole mount.
STAT_AHEAD_WORKERS = 8
#: Sorts after every key below a prefix, to resume a listing past a whole "directory".
PAST_PREFIX = "\U0010ffff"
PAGE = 1000


class Kind(enum.Enum):
    """What a node is."""

    DIR = "dir"
    FILE = "file"
    LINK = "link"


@dataclass
class Entry:
    """One name in a directory as a listing or a stat saw it."""

    kind: Kind
    size: int = 0
    mtime: float = 0.0
    etag: str = ""
    meta: dict[str, str] | None = None
    marker: bool = False


@dataclass(eq=False)
class Node:
    """An inode the kernel knows, with its cached attributes."""

    ino: int
    container: str
    key: str
    kind: Kind
    mode: int
    uid: int
    gid: int
    size: int = 0
    mtime_ns: int = 0
    etag: str = ""
    meta: dict[str, str] | None = None
    marker: bool = False
    local: bool = False  # has unflushed local data: listings and stats must not overwrite it
    expires: float = 0.0
    lookups: int = 0
    opens: int = 0
    children: dict[str, Entry] | None = None
    attr_index: dict[str, tuple[str, dict[str, str]]] | None = None
    children_expires: float = 0.0
    too_big_until: float = 0.0  # too large to list for a lookup: probe names one by one until then
    stat_ahead: int = 0  # how many names' metadata a lookup here fetches ahead (see _complete_ahead)
    stat_ahead_next: str | None = None  # the first name after those fetched ahead
    negative: dict[str, float] = field(default_factory=dict)

    @property
    def is_root(self) -> bool:
        return self.ino == ROOT_INODE

    @property
    def is_container(self) -> bool:
        return bool(self.container) and self.key == ""

    def child_key(self, name: str, kind: Kind) -> str:
        """The key a child called ``name`` of this directory has."""
        return self.key + name + ("/" if kind is Kind.DIR else "")


def _prefixes(key: str) -> list[str]:
    """The directory prefixes above artifact ``key``: ``"a/b/c"`` gives ``"", "a/", "a/b/"``."""
    out = [""]
    at = key.find("/")
    while at >= 0:
        out.append(key[: at + 1])
        at = key.find("/", at + 1)
    return out


def _valid_segment(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\x00" not in name


class Namespace:
    """The inode table and attribute/listing caches, over a :class:`Backend`."""

    def __init__(
        self,
        backend: Backend,
        defaults: attrs.Defaults,
        attr_ttl: float,
        dir_ttl: float,
        index: AttrIndex | None = None,
    ) -> None:
        self.backend = backend
        self.index = index
        self.defaults = defaults
        self.attr_ttl = attr_ttl
        self.dir_ttl = dir_ttl
        self.started = time.time()
        self._unflushed: dict[tuple[str, str], Node] = {}
        # How many unflushed files each directory prefix (``""``, ``"a/"``, ``"a/b/"``) holds, so a
        # lookup of a new name (every create) asks in O(1) instead of scanning every unflushed file.
        self._unflushed_below: collections.Counter[tuple[str, str]] = collections.Counter()
        self._loading: dict[int, trio.Event] = {}
        # Metadata being fetched ahead, by (container, directory key, name); see _complete_ahead.
        self._fetching_ahead: dict[tuple[str, str, str], trio.Event] = {}
        self._ahead_limiter = trio.CapacityLimiter(STAT_AHEAD_WORKERS)
        self._nursery: trio.Nursery | None = None
        self._nodes: dict[int, Node] = {}
        self._by_path: dict[tuple[str, str], int] = {}
        root = Node(ROOT_INODE, "", "", Kind.DIR, defaults.dir_mode, defaults.uid, defaults.gid)
        root.lookups = 1
        root.mtime_ns = time.time_ns()
        self._nodes[ROOT_INODE] = root
        self._by_path[("", "")] = ROOT_INODE

    def start(self, nursery: trio.Nursery) -> None:
        """Fetch metadata ahead in ``nursery``; without it, each lookup fetches only its own."""
        self._nursery = nursery

    # -- the table -------------------------------------------------------
    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, ino: int) -> Node:
        """The node for ``ino``; ``NotFound`` if the kernel asks for one it forgot."""
        try:
            return self._nodes[ino]
        except KeyError:
            raise NotFound(f"inode {ino} is not known") from None

    def _ino_for(self, container: str, key: str) -> int:
        path = (container, key.rstrip("/"))
        known = self._by_path.get(path)
        if known is not None:
            return known
        digest = hashlib.blake2b(f"{container}\0{path[1]}".encode("utf-8", "surrogateescape"), digest_size=8)
        ino = int.from_bytes(digest.digest(), "big") >> 1
        while ino <= ROOT_INODE or ino in self._nodes:
            ino = (ino + 1) & ((1 << 63) - 1)
        return ino

    def _node_from(self, container: str, key: str, entry: Entry) -> Node:
        """Find or make the node for (container, key), refreshed from ``entry``."""
        ino = self._ino_for(container, key)
        node = self._nodes.get(ino)
        if node is not None and node.kind is not entry.kind:
            # The kernel refuses an inode whose type changes, and open descriptors
            # still mean the old object: the new kind gets a new number.
            self.detach(node)
            ino = self._ino_for(container, key)
            node = None
        if node is None:
            node = Node(ino, container, key, entry.kind, 0, 0, 0)
            self._nodes[ino] = node
            self._by_path[(container, key.rstrip("/"))] = ino
        node.key = key
        if not node.local:
            self._apply(node, entry)
        return node

    def _apply(self, node: Node, entry: Entry) -> None:
        d = self.defaults
        default_mode = d.dir_mode if entry.kind is Kind.DIR else d.file_mode
        meta: dict[str, str] | None
        if entry.meta is None and node.meta is not None and entry.etag in ("", node.etag):
            meta = node.meta  # a listing without metadata does not erase what a stat saw
        else:
            meta = entry.meta
        node.kind = entry.kind
        node.meta = meta
        node.mode = attrs.mode_of(meta, default_mode)
        if entry.kind is Kind.LINK:
            node.mode = stat.S_IFLNK | 0o777
        node.uid, node.gid = attrs.owner_of(meta, d)
        node.size = entry.size
        # Containers and prefix-only directories have no time of their own; show the mount's start.
        node.mtime_ns = attrs.mtime_ns_of(meta, entry.mtime or self.started)
        node.etag = entry.etag
        node.marker = entry.marker
        node.expires = time.monotonic() + self.attr_ttl

    def record(self, node: Node) -> None:
        """Note ``node``'s new attributes (after an upload or a metadata change) in its directory's
        cached listing, which later lookups answer from, and in its attribute index, if any."""
        if node.is_container or node.is_root:
            return
        name = node.key.rstrip("/")
        parent_key = name[: name.rfind("/") + 1]
        parent = self.find(node.container, parent_key)
        if parent is not None and parent.children is not None:
            parent.children[name[len(parent_key) :]] = Entry(
                node.kind, node.size, node.mtime_ns / 1e9, node.etag, node.meta, node.marker
            )
        if self.index is not None:
            self.index.record(node.container, node.key, node.etag, node.meta)

    def record_gone(self, container: str, key: str) -> None:
        """Drop a removed artifact or directory from its directory's attribute index."""
        if self.index is not None:
            self.index.record(container, key, "", None)

    def remember(self, parent: Node, name: str, entry: Entry) -> Node:
        """Record a child the file system just created or changed, and return its node."""
        parent.negative.pop(name, None)
        if parent.children is not None:
            parent.children[name] = entry
        if parent.is_root:
            return self._node_from(name, "", entry)
        return self._node_from(parent.container, parent.child_key(name, entry.kind), entry)

    def adopt(self, container: str, key: str, entry: Entry) -> Node:
        """The node for a file known without its directory (a pending upload found at start-up)."""
        return self._node_from(container, key, entry)

    def forget_name(self, parent: Node, name: str) -> None:
        """Drop a child the file system just removed from the caches (not from the inode table)."""
        if parent.children is not None:
            parent.children.pop(name, None)
        parent.negative[name] = time.monotonic() + self.dir_ttl

    def invalidate(self, node: Node) -> None:
        """Forget a directory's cached listing, e.g. after renaming into it."""
        node.children = None
        node.attr_index = None
        node.negative.clear()

    def detach(self, node: Node) -> None:
        """``node``'s name now means something else (it was unlinked or replaced): the kernel
        may still use the node through open files, but a new file of that name gets a new inode."""
        path = (node.container, node.key.rstrip("/"))
        if self._by_path.get(path) == node.ino:
            del self._by_path[path]
        self._drop_unflushed(path)

    def add_unflushed(self, node: Node) -> None:
        """A file created here that no upload has stored yet: listings must still show it."""
        self._add_unflushed((node.container, node.key), node)

    def remove_unflushed(self, node: Node) -> None:
        """The file is stored (or gone): listings find it, or not, in the backend again."""
        if self._unflushed.get((node.container, node.key)) is node:
            self._drop_unflushed((node.container, node.key))

    def _add_unflushed(self, path: tuple[str, str], node: Node) -> None:
        if path not in self._unflushed:
            for prefix in _prefixes(path[1]):
                self._unflushed_below[(path[0], prefix)] += 1
        self._unflushed[path] = node

    def _drop_unflushed(self, path: tuple[str, str]) -> None:
        if self._unflushed.pop(path, None) is None:
            return
        for prefix in _prefixes(path[1]):
            below = (path[0], prefix)
            self._unflushed_below[below] -= 1
            if self._unflushed_below[below] <= 0:
                del self._unflushed_below[below]

    def moved(self, node: Node, container: str, key: str) -> None:
        """Re-home a node after a rename so its inode number follows the file."""
        path = (node.container, node.key.rstrip("/"))
        if self._by_path.get(path) == node.ino:
            del self._by_path[path]
        unflushed = self._unflushed.get((node.container, node.key)) is node
        self.remove_unflushed(node)
        node.container, node.key = container, key
        self._by_path[(container, key.rstrip("/"))] = node.ino
        if unflushed:
            self._add_unflushed((container, key), node)

    def find(self, container: str, key: str) -> Node | None:
        """The node the kernel knows for (container, key), if any."""
        ino = self._by_path.get((container, key.rstrip("/")))
        return None if ino is None else self._nodes.get(ino)

    def move_tree(self, container: str, prefix: str, new_container: str, new_prefix: str) -> None:
        """Re-home every known node at or below directory ``prefix`` after a directory rename."""
        for node in list(self._nodes.values()):
            if node.container == container and node.key.startswith(prefix) and not node.is_container:
                self.moved(node, new_container, new_prefix + node.key[len(prefix) :])
                if node.kind is Kind.DIR:
                    self.invalidate(node)

    def lookup_ref(self, node: Node) -> None:
        """Count one more kernel reference to ``node``."""
        node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped ``count`` references; free the node once none remain."""
        node = self._nodes.get(ino)
        if node is None or node.is_root:
            return
        node.lookups -= count
        self.release_if_unused(node)

    def release_if_unused(self, node: Node) -> None:
        """Drop a node the kernel no longer references and nobody has open."""
        if node.lookups <= 0 and node.opens <= 0 and not node.is_root:
            if self._nodes.get(node.ino) is node:
                del self._nodes[node.ino]
            if self._by_path.get((node.container, node.key.rstrip("/"))) == node.ino:
                del self._by_path[(node.container, node.key.rstrip("/"))]

    # -- lookups ---------------------------------------------------------
    async def lookup(self, parent: Node, name: str) -> Node:
        """The child ``name`` of directory ``parent``; ``NotFound`` if there is none."""
        if parent.kind is not Kind.DIR or not _valid_segment(name):
            raise NotFound(name)
        now = time.monotonic()
        unflushed = self._unflushed.get((parent.container, parent.key + name))
        if unflushed is not None and not parent.is_root:
            return unflushed
        try:
            return await self._lookup_stored(parent, name, now)
        except NotFound:
            if parent.is_root or not self._holds_unflushed(parent.container, parent.key + name + "/"):
                raise
        # Only a new file no upload has stored yet keeps this directory alive.
        known = self.find(parent.container, parent.key + name + "/")
        if known is not None and known.kind is Kind.DIR:
            return known
        return self.remember(parent, name, Entry(Kind.DIR, meta={}))

    async def _load_listing(self, parent: Node) -> dict[str, Entry] | None:
        """List directory ``parent`` whole to answer a lookup in it, unless it is too large.

        One listing answers every later lookup in the directory until ``dir_ttl``
        runs out (``stat`` of many files, ``find``, a second ``rsync``), where
        probing each name costs a HEAD and a LIST.  A lookup sees exactly what
        ``readdir`` shows, also where a store keeps listing an emptied prefix.
        Concurrent lookups in one directory share one listing.
        """
        loading = self._loading.get(parent.ino)
        if loading is not None:
            await loading.wait()
            return parent.children if parent.children_expires >= time.monotonic() else None
        self._loading[parent.ino] = done = trio.Event()
        try:
            entries: dict[str, Entry] = {}
            after: str | None = None
            while True:
                page, after = await self.list_page(parent, after)
                entries.update(page)
                if after is None:
                    break
                if len(entries) >= MAX_CACHED_LISTING:
                    parent.too_big_until = time.monotonic() + max(self.dir_ttl, 1.0)
                    return None
            self.cache_listing(parent, entries)
            return entries
        finally:
            del self._loading[parent.ino]
            done.set()

    def _holds_unflushed(self, container: str, prefix: str) -> bool:
        """Whether directory ``prefix`` (ending in ``/``, or ``""``) holds an unflushed file."""
        return (container, prefix) in self._unflushed_below

    async def _lookup_stored(self, parent: Node, name: str, now: float) -> Node:
        if parent.negative.get(name, 0) > now:
            raise NotFound(name)
        children = parent.children if parent.children_expires > now else None
        if children is None and not parent.is_root and parent.too_big_until <= now:
            children = await self._load_listing(parent)
        if children is not None:
            entry = children.get(name)
            if entry is None:
                raise NotFound(name)
            if entry.meta is None and not parent.is_root:
                # Listings (S3's) carry no metadata: a lookup by name fetches it,
                # so stat and rsync see true modes and times while ls -l costs
                # no request per entry.
                entry = await self._complete_ahead(parent, name, entry, children)
            return self.remember(parent, name, entry)
        try:
            entry = await self._probe(parent, name)
        except NotFound:
            parent.negative[name] = now + self.dir_ttl
            raise
        return self.remember(parent, name, entry)

    async def _complete_ahead(
        self, parent: Node, name: str, entry: Entry, children: dict[str, Entry]
    ) -> Entry:
        """:meth:`_complete` ``name``; and start fetching, in the background, the metadata of the
        next names of the listing that lack it too, so the lookups that follow (``cp -r``,
        ``cat *``, rsync) find theirs ready or on its way.

        How many grows like read-ahead: none for a lookup that does not follow
        on from the last one here (a lone ``stat`` costs one request), then 1, 2,
        4 ... up to :data:`STAT_AHEAD_MAX` while each lookup that needs a request
        is for the name right after the ones fetched ahead.  Fetching ahead takes
        at most :data:`STAT_AHEAD_WORKERS` requests at a time, never holds up this
        lookup, and leaves the others' failures (a name deleted meanwhile) to
        their own lookup.
        """
        where = (parent.container, parent.key, name)
        pending = self._fetching_ahead.get(where)
        if pending is not None:
            await pending.wait()  # fetched ahead: share that request
            fetched = children.get(name)
            if fetched is not None and fetched.meta is not None:
                return fetched
            entry = fetched or entry  # it failed: ask again here, and see the error
        elif name == parent.stat_ahead_next:
            parent.stat_ahead = min(STAT_AHEAD_MAX, max(1, 2 * parent.stat_ahead))
        else:
            parent.stat_ahead = 0
        if self._nursery is not None and name in children:  # gone while it was fetched ahead: no more
            names = list(children)
            later = (
                n
                for n in names[names.index(name) + 1 :]
                if children[n].meta is None and (parent.container, parent.key, n) not in self._fetching_ahead
            )
            for n in itertools.islice(later, parent.stat_ahead):
                at = (parent.container, parent.key, n)
                self._nursery.start_soon(self._fetch_ahead, at, parent, n, children[n], children)
                self._fetching_ahead[at] = trio.Event()
            parent.stat_ahead_next = next(later, None)
        got = await self._complete(parent, name, entry)
        if children.get(name) is entry:
            children[name] = got
        return got

    async def _fetch_ahead(
        self, where: tuple[str, str, str], parent: Node, name: str, listed: Entry, children: dict[str, Entry]
    ) -> None:
        # ``where`` as it was when this was started: a rename may change parent.key meanwhile.
        try:
            async with self._ahead_limiter:
                done = await self._complete(parent, name, listed)
            if children.get(name) is listed:  # not changed or dropped meanwhile
                children[name] = done
        except Exception as exc:
            log.debug("metadata of %s/%s%s not fetched ahead: %s", parent.container, parent.key, name, exc)
        finally:
            fetched = self._fetching_ahead.pop(where, None)
            if fetched is not None:
                fetched.set()

    async def _complete(self, parent: Node, name: str, entry: Entry) -> Entry:
        """``entry`` with its metadata, from a stat of the artifact or directory marker."""
        known = self.find(parent.container, parent.child_key(name, entry.kind))
        same_kind = known is not None and (known.kind is Kind.DIR) == (entry.kind is Kind.DIR)
        if known is not None and same_kind and known.meta is not None and entry.etag in ("", known.etag):
            return Entry(entry.kind, entry.size, entry.mtime, entry.etag, known.meta, known.marker)
        if entry.kind is Kind.DIR:
            return await self._marker_entry(parent.container, parent.child_key(name, Kind.DIR))
        return await self._stat_entry(parent.container, parent.child_key(name, entry.kind))

    async def _marker_entry(self, container: str, key: str) -> Entry:
        try:
            return await self._stat_entry(container, key)
        except NotFound:
            return Entry(Kind.DIR, meta={})  # a directory implied by its children alone

    async def _probe(self, parent: Node, name: str) -> Entry:
        if parent.is_root:
            if name in await self.backend.containers():
                return Entry(Kind.DIR)
            raise NotFound(name)
        key = parent.key + name

        # Ask every question at once; a directory wins over a file of the same name.
        async def file_entry() -> Entry | None:
            try:
                return await self._stat_entry(parent.container, key)
            except NotFound:
                return None

        # The directory question is asked as readdir asks it (a delimited listing of the
        # parent, past every sibling that sorts before "key/"), so a lookup finds exactly
        # the directories a listing shows, also where a store keeps listing an emptied prefix.
        children, marker, file = await run_all(
            [
                functools.partial(
                    self.backend.list_page,
                    parent.container,
                    prefix=key,
                    delimiter="/",
                    start_after=key + "." + PAST_PREFIX,
                    limit=1,
                ),
                functools.partial(self._marker_entry, parent.container, key + "/"),
                file_entry,
            ]
        )
        if children and children[0].name == key + "/":
            if file is not None:
                log.warning(
                    "%s/%s is both a file and a directory; showing the directory", parent.container, key
                )
            return marker  # type: ignore[no-any-return]
        if file is not None:
            return file  # type: ignore[no-any-return]
        raise NotFound(name)

    async def _stat_entry(self, container: str, key: str) -> Entry:
        info = await self.backend.stat(container, key)
        return self._entry_of(info)

    def _entry_of(self, info: ArtifactInfo) -> Entry:
        meta = dict(info.metadata) if info.metadata is not None else None
        if info.name.endswith("/"):
            return Entry(Kind.DIR, 0, info.mtime, info.etag, meta, marker=True)
        kind = Kind.LINK if attrs.is_symlink(meta) else Kind.FILE
        return Entry(kind, info.size, info.mtime, info.etag, meta)

    async def refresh(self, node: Node) -> Node:
        """``node`` with attributes no older than the TTL (a HEAD for files)."""
        if node.expires > time.monotonic() or (node.kind is Kind.DIR and not node.marker):
            return node
        if node.kind is Kind.DIR:
            try:
                self._apply(node, await self._stat_entry(node.container, node.key))
            except NotFound:
                node.marker = False
                node.expires = time.monotonic() + self.attr_ttl
            return node
        self._apply(node, await self._stat_entry(node.container, node.key))
        return node

    # -- listings --------------------------------------------------------
    async def list_page(self, node: Node, after: str | None) -> tuple[list[tuple[str, Entry]], str | None]:
        """One page of directory ``node``'s children, resuming at backend position ``after``.

        Returns the children and the position to pass next time, or ``None``
        once the listing is complete.
        """
        if node.is_root:
            return [(name, Entry(Kind.DIR)) for name in await self.backend.containers()], None
        listing = functools.partial(
            self.backend.list_page,
            node.container,
            prefix=node.key,
            delimiter="/",
            start_after=None if after is None else node.key + after,
            limit=PAGE,
        )
        # Files stored while the listing is under way may be missing from both the listing (asked
        # before their upload landed) and the unflushed table (left it since): note them first.
        unflushed_before = self._unflushed_below_dir(node) if after is None else []
        if after is None and self.index is not None:
            # A listing that starts over reads the directory's attribute index again: both requests
            # at once, so a cold directory costs one round trip, not two.
            items, _ = await run_all([listing, functools.partial(self._load_index, node)])
        else:
            items = await listing()
        known = await self._dir_index(node)
        out: dict[str, Entry] = {}
        for item in items:
            name = item.name[len(node.key) :]
            if isinstance(item, Prefix):
                seg = name[:-1]
                if not _valid_segment(seg):
                    log.warning("skipping %s/%s: not representable as a path", node.container, item.name)
                    continue
                if seg in out:
                    log.warning(
                        "%s/%s is both a file and a directory; showing the directory",
                        node.container,
                        node.key + seg,
                    )
                out[seg] = Entry(Kind.DIR)
            elif name in ("", INDEX_NAME):
                continue  # this directory's own marker, or vaultfs's attribute index
            elif not _valid_segment(name):
                log.warning("skipping %s/%s: not representable as a path", node.container, item.name)
            elif name not in out:
                out[name] = self._entry_of(item)
        if after is None:
            unflushed_now = self._unflushed_below_dir(node)
            still = set(unflushed_now)
            stored_meanwhile = [
                n
                for n in unflushed_before
                if n not in still
                and n.key.startswith(node.key)
                and self._by_path.get((n.container, n.key.rstrip("/"))) == n.ino  # not deleted since
            ]
            for new in (*stored_meanwhile, *unflushed_now):
                name = new.key[len(node.key) :]
                if "/" in name:
                    out.setdefault(name.split("/", 1)[0], Entry(Kind.DIR))  # kept alive by the new file
                else:
                    # The user's newest word on the name, as in lookup, even over a listed
                    # prefix (another client's, or an emptied folder a store keeps listing).
                    out[name] = Entry(new.kind, new.size, new.mtime_ns / 1e9, new.etag, new.meta)
        for name, entry in out.items():
            self._complete_from_memory(node, name, entry)
            self._apply_index(known, name, entry)
        if len(items) < PAGE:
            return list(out.items()), None
        last = items[-1]
        position = last.name[len(node.key) :]
        if isinstance(last, Prefix):
            position += PAST_PREFIX  # skip the whole "directory", not just its first key
        return list(out.items()), position

    def _unflushed_below_dir(self, node: Node) -> list[Node]:
        """The unflushed files anywhere below directory ``node``."""
        return [
            n for (c, key), n in self._unflushed.items() if c == node.container and key.startswith(node.key)
        ]

    def cache_listing(self, node: Node, entries: dict[str, Entry]) -> None:
        """Keep a complete listing of a not-too-large directory for ``dir_ttl``."""
        if len(entries) <= MAX_CACHED_LISTING:
            node.children = entries
            node.children_expires = time.monotonic() + self.dir_ttl
            node.negative.clear()

    async def _load_index(self, node: Node) -> dict[str, tuple[str, dict[str, str]]]:
        """Read the attribute index of directory ``node`` (again) and keep it on the node."""
        assert self.index is not None
        node.attr_index = await self.index.load(node.container, node.key)
        return node.attr_index

    async def _dir_index(self, node: Node) -> dict[str, tuple[str, dict[str, str]]]:
        """The attribute index of directory ``node``, loaded if not held yet (``list_page`` reads it
        again when a listing starts over), plus this mount's updates not written yet."""
        if self.index is None:
            return {}
        held = node.attr_index
        if held is None:
            held = await self._load_index(node)
        # What this mount wrote in the last second is not in the stored index yet.
        return self.index.with_pending(node.container, node.key, held)

    def _complete_from_memory(self, parent: Node, name: str, entry: Entry) -> None:
        """Fill a listed entry lacking metadata from the node we already hold for it, if still current."""
        if entry.meta is not None:
            return
        kinds = (Kind.DIR,) if entry.kind is Kind.DIR else (Kind.FILE, Kind.LINK)
        for kind in kinds:
            known = self.find(parent.container, parent.child_key(name, kind))
            if known is None or known.kind not in kinds:
                continue  # the name held something else when we last saw it
            current = kind is Kind.DIR or known.etag == entry.etag
            if current and known.meta is not None:
                entry.meta, entry.kind = known.meta, known.kind
                return

    @staticmethod
    def _apply_index(known: dict[str, tuple[str, dict[str, str]]], name: str, entry: Entry) -> None:
        if entry.meta is not None:
            return
        recorded = known.get(name + "/" if entry.kind is Kind.DIR else name)
        if recorded is None:
            return
        etag, meta = recorded
        if entry.kind is Kind.DIR or etag == entry.etag:
            entry.meta = meta
            if entry.kind is Kind.FILE and attrs.is_symlink(meta):
                entry.kind = Kind.LINK

    async def is_empty(self, node: Node) -> bool:
        """Whether directory ``node`` has no children (its own marker and attribute index aside)."""
        if self._holds_unflushed(node.container, node.key):
            return False  # a new file no upload has stored yet
        ours = (node.key, node.key + INDEX_NAME)
        items = await self.backend.list_page(node.container, prefix=node.key, limit=3)
        return all(item.name in ours for item in items)
