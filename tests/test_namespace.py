"""The namespace alone over the memory driver: directories kept alive by files not yet stored."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from drivers.errors import NotFound
from drivers.memory import MemoryDriver
from vaultfs import attrs
from vaultfs.backend import Backend
from vaultfs.namespace import ROOT_INODE, Entry, Kind, Namespace, Node


class NoScans(dict[Any, Any]):
    """The unflushed-file table, refusing to be walked whole (what a lookup must not need)."""

    def __iter__(self) -> Any:
        raise AssertionError("walked every unflushed file")


def namespace() -> tuple[Namespace, Node]:
    driver = MemoryDriver()
    driver.create_container("b")
    ns = Namespace(
        Backend("test", driver, retries=0, timeout=10),
        attrs.Defaults(uid=1000, gid=1000, umask=0o022),
        attr_ttl=0,
        dir_ttl=0,
    )
    return ns, ns.remember(ns.get(ROOT_INODE), "b", Entry(Kind.DIR))


def new_file(ns: Namespace, parent: Node, name: str) -> Node:
    node = ns.remember(parent, name, Entry(Kind.FILE, meta={}))
    ns.add_unflushed(node)
    return node


async def lookup_dir(ns: Namespace, parent: Node, name: str) -> Node:
    node = await ns.lookup(parent, name)
    assert node.kind is Kind.DIR
    return node


def test_directories_live_exactly_as_long_as_an_unflushed_file_below_them() -> None:
    async def main() -> None:
        ns, top = namespace()
        deep = new_file(ns, top, "x")
        ns.moved(deep, "b", "a/b/f")
        other = new_file(ns, top, "y")
        ns.moved(other, "b", "a/g")
        a = await lookup_dir(ns, top, "a")
        await lookup_dir(ns, a, "b")
        assert not await ns.is_empty(a) and not await ns.is_empty(top)
        ns.remove_unflushed(deep)
        with pytest.raises(NotFound):
            await ns.lookup(a, "b")
        await lookup_dir(ns, top, "a")  # still held by a/g
        ns.remove_unflushed(deep)  # twice changes nothing
        ns.detach(other)
        with pytest.raises(NotFound):
            await ns.lookup(top, "a")
        assert await ns.is_empty(top)

    trio.run(main)


def test_a_lookup_of_a_new_name_does_not_walk_every_unflushed_file() -> None:
    async def main() -> None:
        ns, top = namespace()
        d = ns.remember(top, "d", Entry(Kind.DIR, meta={}))
        ns.cache_listing(d, {})
        for i in range(100):
            new_file(ns, d, f"f{i}")
        ns._unflushed = NoScans(ns._unflushed)
        with pytest.raises(NotFound):
            await ns.lookup(d, "new")
        assert (await ns.lookup(d, "f7")).kind is Kind.FILE
        assert not await ns.is_empty(d)

    trio.run(main)
