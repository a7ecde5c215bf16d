"""Listing for the ``local`` driver: a container directory walked in S3 key order.

:func:`walk_level` lists one level (``delimiter="/"``): files, and
sub-directories as :class:`~drivers.base.Prefix`.  :func:`walk_tree` lists
every file below, depth first; that is global key order because a directory
sorts as ``name/``.  A directory is listed as its marker ``name/`` when it is
marked (carries the metadata attribute) or bare (holds nothing at all).
Temporary files, symlinks leading out of the container, special files and
keys longer than the contract allows are never listed.
"""

from __future__ import annotations

import os
import stat as st_mode
from collections.abc import Iterator

from ._localfs import TEMP_PREFIX, artifact_info, inside, map_oserror, read_record
from .base import MAX_NAME_BYTES, ArtifactInfo, Prefix

_Entries = list[tuple[str, os.DirEntry[str]]]


def _scan(cdir: str, path: str, key: str, leaf: str, label: str) -> tuple[_Entries, bool]:
    """One directory's visible entries as (key, entry) sorted by key, and whether it is bare.

    Directory keys end in '/'.  Bare means nothing at all is in it: a directory holding only
    an in-flight temp file is not listed as a marker, as S3 shows nothing before a put ends.
    """
    out: _Entries = []
    bare = True
    try:
        with os.scandir(path) as it:
            for entry in it:
                bare = False
                name = entry.name
                if name.startswith(TEMP_PREFIX) or not name.startswith(leaf):
                    continue
                try:
                    if entry.is_symlink() and not inside(cdir, os.path.realpath(entry.path)):
                        continue
                    if entry.is_dir():
                        k = f"{key}{name}/"
                    elif entry.is_file():
                        k = key + name
                    else:
                        continue
                except OSError:
                    continue
                # Keys too long to address through the contract are not listed either.
                if len(os.fsencode(k)) <= MAX_NAME_BYTES:
                    out.append((k, entry))
    except (FileNotFoundError, NotADirectoryError):
        return [], False
    except OSError as exc:
        raise map_oserror(exc, label) from exc
    out.sort(key=lambda item: item[0])
    return out, bare


def _marker(path: str, key: str, bare: bool, st: os.stat_result | None = None) -> ArtifactInfo | None:
    """The marker entry of a directory if it is bare or marked."""
    try:
        st = st or os.stat(path)
        if not st_mode.S_ISDIR(st.st_mode):
            return None
        record = read_record(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return artifact_info(key, st, record) if bare or record.present else None


def _file(key: str, entry: os.DirEntry[str]) -> ArtifactInfo | None:
    try:
        return artifact_info(key, entry.stat(), read_record(entry.path))
    except (FileNotFoundError, NotADirectoryError):
        return None  # deleted while we listed


def _start_marker(
    start: str, dir_key: str, leaf: str, bare: bool, start_after: str | None
) -> Iterator[ArtifactInfo]:
    # A prefix naming a directory ("a/b/") matches that directory's own marker.
    if dir_key and not leaf and (start_after is None or dir_key > start_after):
        info = _marker(start, dir_key, bare)
        if info is not None:
            yield info


def walk_level(
    cdir: str, start: str, dir_key: str, leaf: str, start_after: str | None, label: str
) -> Iterator[ArtifactInfo | Prefix]:
    entries, bare = _scan(cdir, start, dir_key, leaf, label)
    yield from _start_marker(start, dir_key, leaf, bare, start_after)
    for key, entry in entries:
        if start_after is not None and key <= start_after:
            continue
        if key.endswith("/"):
            yield Prefix(key)
        else:
            info = _file(key, entry)
            if info is not None:
                yield info


def walk_tree(
    cdir: str, start: str, dir_key: str, leaf: str, start_after: str | None, label: str
) -> Iterator[ArtifactInfo]:
    entries, bare = _scan(cdir, start, dir_key, leaf, label)
    yield from _start_marker(start, dir_key, leaf, bare, start_after)
    try:
        st = os.stat(start)
    except OSError:
        return
    # Depth-first over sorted siblings is global key order because a directory sorts as "name/".
    stack: list[tuple[Iterator[tuple[str, os.DirEntry[str]]], tuple[int, int]]]
    stack = [(iter(entries), (st.st_dev, st.st_ino))]
    ancestors = {stack[0][1]}
    while stack:
        items, ident = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            ancestors.discard(ident)
            continue
        key, entry = item
        if not key.endswith("/"):
            if start_after is None or key > start_after:
                info = _file(key, entry)
                if info is not None:
                    yield info
            continue
        if start_after is not None and key <= start_after and not start_after.startswith(key):
            continue  # every key below sorts before start_after
        try:
            dst = entry.stat()
        except OSError:
            continue
        child = (dst.st_dev, dst.st_ino)
        if child in ancestors:
            continue  # a symlink loop
        children, bare = _scan(cdir, entry.path, key, "", label)
        if start_after is None or key > start_after:
            info = _marker(entry.path, key, bare, dst)
            if info is not None:
                yield info
        stack.append((iter(children), child))
        ancestors.add(child)
