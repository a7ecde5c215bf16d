"""A real mount checked against a plain local directory, step by step (model-based property tests).

Random operations go both to a vaultfs mount and to an ordinary directory (the
model).  Every operation must have the same outcome on both sides (success or
the same errno), and after every step the two trees must hold the same paths,
kinds, sizes and contents, and a lookup of every nameable path must find the
same thing.  Operations of "another client" go straight through a driver on the
mount side and become the equivalent plain-file operation on the model side;
the mount runs with TTL 0, so they must show at once.

What an object store may do differently, as the README's Semantics section
documents, is allowed and nothing else:

- a directory without a marker (only implied by its files) may vanish when its
  last entry goes, on some backends (local, AWS) and not on others
  (SeaweedFS); the model drops such an empty directory when the mount no longer
  shows it;
- a file ``a`` and a directory ``a/`` cannot coexist in the local driver (its
  put refuses), so another client's puts are only generated where they do not
  clash with the model's tree.

:class:`MountModel` closes every file within the step that opened it.
:class:`OpenFilesModel` adds descriptors that stay open across steps while the
tree changes around them (writes through them, renames and unlinks of their
files).

The backend is behind :class:`Setup` (how to build the mount) and
:class:`OtherClient` (put/delete through a driver); :data:`SETUPS` has the
local driver and the S3 driver on the suite's SeaweedFS server.  One mount
serves a whole run: mounting costs about half a second, and each example gets
an emptied container (local) or a new bucket (S3).

Profiles: ``ci`` (the default: 25 examples of 20 steps, reproducible: five
batches of five with fixed seeds, and no new batch once ``VAULTFS_MODEL_BUDGET``
seconds, 150 by default, are spent) and
``model-hunt`` (100 random examples) for hunting bugs locally, chosen with
``VAULTFS_MODEL_PROFILE=model-hunt``.  Shrunk failures are kept at the end of
this module as ``test_regression_*`` replays.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest
from hypothesis import HealthCheck, currently_in_test_context, note, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    get_state_machine_test,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)
from mounts import Mount, MountFactory, s3_config

from drivers.base import ArtifactInfo, Driver
from drivers.local import LocalDriver

pytestmark = pytest.mark.mount

# -- settings ------------------------------------------------------------------------

settings.register_profile(
    "ci",
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    database=None,  # derandomized runs do not use it; keeps .hypothesis/ out of the tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "model-hunt", parent=settings.get_profile("ci"), max_examples=100, derandomize=False
)
#: The profile the machines run under (not the globally loaded one, so other tests keep theirs).
PROFILE = os.environ.get("VAULTFS_MODEL_PROFILE", "ci")
#: The time budget of one machine on one backend, in seconds: examples run in batches, and no batch
#: starts once it is spent, so a slow machine runs fewer examples instead of stalling CI.
BUDGET = float(os.environ.get("VAULTFS_MODEL_BUDGET", "150"))
BATCH = 5

#: A tiny alphabet and depth, so random paths collide with existing ones often.
NAMES = ("a", "b", "c")
MAX_DEPTH = 2
#: Every path the rules can name; each is looked up on both sides after every step.
ALL_PATHS = tuple(
    "/".join(parts) for depth in range(1, MAX_DEPTH + 1) for parts in itertools.product(NAMES, repeat=depth)
)
TOP = tuple(p for p in ALL_PATHS if "/" not in p)
CONTAINER = "c"

#: Top-level names half the time: deeper paths need an existing parent, or most operations just fail.
paths = st.one_of(st.sampled_from(TOP), st.sampled_from(ALL_PATHS))
contents = st.binary(max_size=24)
offsets = st.integers(min_value=0, max_value=40)  # up to well past any file's end: zero fill
sizes = st.integers(min_value=0, max_value=40)  # shrinks and grows
#: Which of the (at most two) open descriptors a step uses, modulo how many there are.
handle_picks = st.integers(min_value=0, max_value=1)
#: Whether an open creates the file: mostly, as opening a missing file only fails.
creates = st.sampled_from([True, True, False])
MAX_HANDLES = 2

# -- the backend, behind a small interface -------------------------------------------


class OtherClient(Protocol):
    """Another client of the mounted container, writing straight to the backend."""

    def put(self, name: str, data: bytes) -> None: ...

    def delete(self, name: str) -> None: ...

    def fresh(self) -> str:
        """An empty container for the next example; returns its name."""

    def clear(self) -> None:
        """Delete every artifact in the container (after an example)."""


@dataclass
class DriverClient:
    """An :class:`OtherClient` over any driver.

    With ``new_containers`` each example gets a container of its own, for
    backends that keep showing an emptied "folder" for a while (SeaweedFS):
    leftovers of one example must not change what the next one sees.
    """

    driver: Driver
    container: str
    new_containers: bool = False
    made: int = 0

    def fresh(self) -> str:
        if self.new_containers:
            self.made += 1
            self.container = f"{self.container.split('-')[0]}-{self.made}"
            self.driver.create_container(self.container)
        else:
            self.clear()  # whatever a failed example left behind
        return self.container

    def put(self, name: str, data: bytes) -> None:
        self.driver.put(self.container, name, io.BytesIO(data), size=len(data))

    def delete(self, name: str) -> None:
        self.driver.delete(self.container, name)

    def clear(self) -> None:
        names = [i.name for i in self.driver.list(self.container) if isinstance(i, ArtifactInfo)]
        # Files first, then markers deepest first: a file-backed store cannot drop a non-empty directory.
        for name in names:
            if not name.endswith("/"):
                self.driver.delete(self.container, name)
        for name in sorted((n for n in names if n.endswith("/")), key=lambda n: -n.count("/")):
            self.driver.delete(self.container, name)


@dataclass
class Setup:
    """A running mount and another client of the backend it mounts."""

    mount: Mount
    client: OtherClient
    #: The store may keep listing an emptied prefix for a while (SeaweedFS does; AWS and the
    #: local driver do not), so any directory that was once there may flap back, empty.
    prunes_lazily: bool = False


def mount_args(tmp_path: Path) -> list[str]:
    """TTL 0: another client's changes must be visible at the very next operation.  The listener
    lets the other client wait for the mount's pending uploads (see :meth:`MountModel.settle`)."""
    return [
        "--cache-dir",
        str(tmp_path / "cache"),
        "--attr-ttl",
        "0",
        "--dir-ttl",
        "0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]


def local_setup(tmp_path: Path, mount_factory: MountFactory) -> Setup:
    data = tmp_path / "data"
    (data / CONTAINER).mkdir(parents=True)
    mount = mount_factory(str(data), *mount_args(tmp_path))
    client = DriverClient(LocalDriver(LocalDriver.Options(root=str(data))), CONTAINER)
    return Setup(mount, client)


def s3_setup(tmp_path: Path, mount_factory: MountFactory, s3_options: dict[str, Any]) -> Setup:
    """The S3 driver on the suite's SeaweedFS server, a new bucket per example."""
    from drivers.s3 import S3Driver

    config = s3_config(tmp_path / "config.yaml", "model", s3_options)
    mount = mount_factory("model", "--config", str(config), *mount_args(tmp_path))
    driver = S3Driver(S3Driver.Options(**s3_options))
    client = DriverClient(driver, f"model{uuid.uuid4().hex[:8]}", new_containers=True)
    return Setup(mount, client, prunes_lazily=True)


#: How to build each backend's mount.
SETUPS: dict[str, Callable[[pytest.FixtureRequest, Path, MountFactory], Setup]] = {
    "local": lambda request, tmp_path, factory: local_setup(tmp_path, factory),
    "s3": lambda request, tmp_path, factory: s3_setup(
        tmp_path, factory, request.getfixturevalue("s3_options")
    ),
}


@pytest.fixture(params=sorted(SETUPS))
def setup(request: pytest.FixtureRequest, tmp_path: Path, mount_factory: MountFactory) -> Setup:
    return SETUPS[request.param](request, tmp_path, mount_factory)


# -- operations and observations, the same on either tree -------------------------------


def outcome(fn: Callable[[], object]) -> tuple[int | None, object]:
    """``(None, result)`` if ``fn`` succeeds, else ``(errno, None)``."""
    try:
        return None, fn()
    except OSError as exc:
        return exc.errno, None


def errname(code: int | None) -> str:
    return "ok" if code is None else errno.errorcode.get(code, str(code))


def write_file(path: Path, flags: int, data: bytes, offset: int | None = None) -> None:
    """open/write/close; close's error counts, since that is where the mount uploads."""
    fd = os.open(path, flags, 0o644)
    try:
        if offset is None:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


Snapshot = dict[str, tuple[Any, ...]]


def snapshot(root: Path, open_fds: dict[str, int] | None = None, flapping: Collection[str] = ()) -> Snapshot:
    """Every path below ``root`` with its kind, and for files the size stat shows and the content.

    Files in ``open_fds`` are read through that descriptor: opening and closing
    one by path would flush it, which uploads a dirty file on the mount and
    would hide every state in which a file has data the backend has not.
    Paths in ``flapping`` may be gone by the time they are looked at after
    their listing showed them; any other error propagates, as a finding.
    """
    open_fds = open_fds or {}
    out: Snapshot = {}

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
        for name in names:
            rel, full = prefix + name, directory / name
            try:
                st_ = os.lstat(full)
            except FileNotFoundError:
                if rel in flapping:
                    continue
                raise
            if stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir",)
                try:
                    walk(full, rel + "/")
                except FileNotFoundError:
                    if rel not in flapping:
                        raise
            elif stat.S_ISREG(st_.st_mode):
                fd = open_fds.get(rel)
                data = full.read_bytes() if fd is None else os.pread(fd, st_.st_size + 4096, 0)
                out[rel] = ("file", st_.st_size, data)
            else:
                out[rel] = ("other", stat.S_IFMT(st_.st_mode))

    walk(root, "")
    return out


def probe(path: Path) -> str:
    """What a lookup by name finds: a kind, or the errno."""
    try:
        st_ = os.lstat(path)
    except OSError as exc:
        return errname(exc.errno)
    return "dir" if stat.S_ISDIR(st_.st_mode) else "file" if stat.S_ISREG(st_.st_mode) else "other"


def _made(path: str, done: bool) -> MultipleResults[str]:
    """Add ``path`` to a bundle if the step that made it succeeded."""
    return multiple(path) if done else multiple()


# -- the machine ----------------------------------------------------------------------


class MountModel(RuleBasedStateMachine):
    """The mount and a local directory, driven in lock step.

    Paths come from :data:`paths` (any name, so error cases are common) or from
    the bundles ``files`` and ``dirs``, the paths some step made, so operations
    on existing files and directories are common too.  ``marked`` holds the
    model's directories that have a marker on the backend (made by ``mkdir``
    through the mount); the others exist only because something is in them and
    may vanish once empty.

    Each operation is a plain method that regression tests call directly; the
    rules only choose its arguments.
    """

    setup: ClassVar[Setup]
    model_base: ClassVar[Path]

    #: Paths some step made a file or a directory (they may be gone since: that is tested too).
    files = Bundle("files")
    dirs = Bundle("dirs")

    def __init__(self) -> None:
        super().__init__()
        self.client = self.setup.client
        self.settle()
        self.mnt = self.setup.mount.mountpoint / self.client.fresh()
        self.model_base.mkdir(parents=True, exist_ok=True)
        self.model = Path(tempfile.mkdtemp(dir=self.model_base))
        self.marked: set[str] = set()
        self.vanished: set[str] = set()  # empty unmarked directories the mount stopped showing
        self.were_dirs: set[str] = set()  # every path that has been a directory in the model
        self.steps: list[str] = []  # what this example did, for a failure's message

    def step(self, what: str) -> None:
        """Record a step (Hypothesis prints its own list only for a failure it can replay)."""
        self.steps.append(what)
        if currently_in_test_context():  # the regression tests call the steps directly
            note(what)

    def teardown(self) -> None:
        shutil.rmtree(self.model, ignore_errors=True)
        self.settle()
        self.client.clear()

    # -- helpers -----------------------------------------------------------------
    def both(self, what: str, op: Callable[[Path], object]) -> bool:
        """Apply ``op`` to the model, then to the mount; the outcomes must agree.  True on success."""
        self.were_dirs |= {p for p in ALL_PATHS if self.kind(p) == "dir"}
        self.step(what)
        expected, _ = outcome(lambda: op(self.model))
        actual, _ = outcome(lambda: op(self.mnt))
        assert actual == expected, f"{what}: the mount says {errname(actual)}, the model {errname(expected)}"
        return expected is None

    def settle(self) -> None:
        """Wait for the mount's pending uploads, as the README asks of another client: an upload
        still pending when another client writes the same artifact overwrites that write."""
        self.setup.mount.settle()

    def kind(self, path: str) -> str:
        """What the model has at ``path``."""
        return probe(self.model / path)

    # -- a starting tree ----------------------------------------------------------
    @initialize(target=dirs, names=st.lists(st.sampled_from(TOP), max_size=3, unique=True))
    def seed_dirs(self, names: list[str]) -> MultipleResults[str]:
        """Start from a few directories and files, so twenty steps reach deeper states than from empty."""
        return multiple(*(d for d in names if self.mkdir(d)))

    @initialize(
        target=files,
        mine=st.lists(st.tuples(paths, contents), max_size=5),
        theirs=st.lists(st.tuples(st.sampled_from(ALL_PATHS), contents), max_size=2),
    )
    def seed_files(
        self, mine: list[tuple[str, bytes]], theirs: list[tuple[str, bytes]]
    ) -> MultipleResults[str]:
        """Files through the mount, and some by another client (whose parents are only implied)."""
        made = [path for path, data in mine if self.create_file(path, data)]
        made += [path for path, data in theirs if self.other_put(path, data)]
        return multiple(*made)

    # -- operations through the mount ------------------------------------------------
    def create_file(self, path: str, data: bytes) -> bool:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        return self.both(f"create {path} {data!r}", lambda base: write_file(base / path, flags, data))

    def write_at(self, path: str, offset: int, data: bytes) -> bool:
        return self.both(
            f"pwrite {path} @{offset} {data!r}",
            lambda base: write_file(base / path, os.O_WRONLY, data, offset),
        )

    def append(self, path: str, data: bytes) -> bool:
        flags = os.O_WRONLY | os.O_APPEND
        return self.both(f"append {path} {data!r}", lambda base: write_file(base / path, flags, data))

    def truncate(self, path: str, size: int) -> bool:
        return self.both(f"truncate {path} {size}", lambda base: os.truncate(base / path, size))

    def rename(self, src: str, dst: str) -> bool:
        """Files and directories alike: to a new name, over a file, over an (empty) directory."""
        was_dir = self.kind(src) == "dir"
        done = self.both(f"rename {src} {dst}", lambda base: os.rename(base / src, base / dst))
        if done and was_dir and src != dst:
            # The source's markers move with it.  The replaced target's are dropped (lenient:
            # whether a replaced empty directory's marker survives is no promise of the README).
            moved = {m for m in self.marked if m == src or m.startswith(src + "/")}
            self.marked = {m for m in self.marked - moved if m != dst and not m.startswith(dst + "/")}
            self.marked |= {dst + m[len(src) :] for m in moved}
        return done

    def unlink(self, path: str) -> bool:
        return self.both(f"unlink {path}", lambda base: os.unlink(base / path))

    def mkdir(self, path: str) -> bool:
        done = self.both(f"mkdir {path}", lambda base: os.mkdir(base / path))
        if done:
            self.marked.add(path)
        return done

    def rmdir(self, path: str) -> bool:
        done = self.both(f"rmdir {path}", lambda base: os.rmdir(base / path))
        if done:
            self.marked.discard(path)
        return done

    # -- operations of another client ------------------------------------------------
    def other_put(self, path: str, data: bytes) -> bool:
        """A put straight to the backend; its parents may not exist yet (they are implied)."""
        parts = path.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if self.kind(path) == "dir" or any(self.kind(a) == "file" for a in ancestors):
            self.step(f"skipped other_put {path}: a file and a directory of one name cannot coexist")
            return False
        self.step(f"other_put {path} {data!r}")
        self.settle()
        self.client.put(path, data)
        (self.model / path).parent.mkdir(parents=True, exist_ok=True)
        (self.model / path).write_bytes(data)
        return True

    def other_delete(self, path: str) -> None:
        """A delete straight to the backend; deleting a name that is not there does nothing, as on S3."""
        if self.kind(path) == "dir":
            # Stores disagree here: S3 deletes nothing, SeaweedFS drops an empty folder of that name.
            self.step(f"skipped other_delete {path}: a directory")
            return
        self.step(f"other_delete {path}")
        self.settle()
        self.client.delete(path)
        if self.kind(path) == "file":
            (self.model / path).unlink()

    # -- rules -----------------------------------------------------------------------
    @rule(target=files, path=paths, data=contents)
    def create_any(self, path: str, data: bytes) -> MultipleResults[str]:
        return _made(path, self.create_file(path, data))

    @rule(target=dirs, path=paths)
    def mkdir_any(self, path: str) -> MultipleResults[str]:
        return _made(path, self.mkdir(path))

    @rule(path=paths, offset=offsets, data=contents)
    def write_any(self, path: str, offset: int, data: bytes) -> None:
        self.write_at(path, offset, data)

    @rule(path=files, offset=offsets, data=contents)
    def write_at_file(self, path: str, offset: int, data: bytes) -> None:
        self.write_at(path, offset, data)

    @rule(path=paths, data=contents)
    def append_any(self, path: str, data: bytes) -> None:
        self.append(path, data)

    @rule(path=files, data=contents)
    def append_file(self, path: str, data: bytes) -> None:
        self.append(path, data)

    @rule(path=paths, size=sizes)
    def truncate_any(self, path: str, size: int) -> None:
        self.truncate(path, size)

    @rule(path=files, size=sizes)
    def truncate_file(self, path: str, size: int) -> None:
        self.truncate(path, size)

    @rule(src=paths, dst=paths)
    def rename_any(self, src: str, dst: str) -> None:
        self.rename(src, dst)

    @rule(target=files, src=files, dst=st.one_of(paths, files))
    def rename_file(self, src: str, dst: str) -> MultipleResults[str]:
        return _made(dst, self.rename(src, dst))

    @rule(target=dirs, src=dirs, dst=st.one_of(paths, dirs))
    def rename_dir(self, src: str, dst: str) -> MultipleResults[str]:
        return _made(dst, self.rename(src, dst))

    @rule(path=paths)
    def unlink_any(self, path: str) -> None:
        self.unlink(path)

    @rule(path=files)
    def unlink_file(self, path: str) -> None:
        self.unlink(path)

    @rule(path=paths)
    def rmdir_any(self, path: str) -> None:
        self.rmdir(path)

    @rule(path=dirs)
    def rmdir_dir(self, path: str) -> None:
        self.rmdir(path)

    @rule(target=files, path=paths, data=contents)
    def other_put_any(self, path: str, data: bytes) -> MultipleResults[str]:
        return _made(path, self.other_put(path, data))

    @rule(path=files, data=contents)
    def other_put_file(self, path: str, data: bytes) -> None:
        self.other_put(path, data)

    @rule(path=paths)
    def other_delete_any(self, path: str) -> None:
        self.other_delete(path)

    @rule(path=files)
    def other_delete_file(self, path: str) -> None:
        self.other_delete(path)

    # -- the check -------------------------------------------------------------------
    def _drop_vanished_dirs(self) -> None:
        """Empty unmarked directories may be gone from the mount (documented); follow it in the model."""
        dirs = sorted((p for p in ALL_PATHS if self.kind(p) == "dir"), key=lambda p: -p.count("/"))
        for p in dirs:
            if p not in self.marked and not os.listdir(self.model / p) and probe(self.mnt / p) == "ENOENT":
                self.step(f"empty unmarked directory {p} vanished from the mount")
                (self.model / p).rmdir()
                self.vanished.add(p)

    def _may_linger(self) -> set[str]:
        """Directories gone from the model that the mount may still show, empty: a store that
        drops emptied prefixes lazily (SeaweedFS) may list one for a while after its last key
        went (a vanished directory, an rmdir, a directory renamed away), the documented either-way."""
        return self.vanished | self.were_dirs if self.setup.prunes_lazily else self.vanished

    def _lingering(self, mount_tree: dict[str, tuple[Any, ...]]) -> set[str]:
        """The directories of :meth:`_may_linger` the mount shows with nothing but such directories below."""
        candidates = {
            p for p in self._may_linger() if not (self.model / p).exists() and mount_tree.get(p) == ("dir",)
        }
        return {p for p in candidates if all(q in candidates for q in mount_tree if q.startswith(p + "/"))}

    def _holds_only(self, path: str, allowed: set[str]) -> bool:
        """Whether the mount's ``path`` lists nothing outside ``allowed`` (or is gone by now)."""
        try:
            names = os.listdir(self.mnt / path)
        except FileNotFoundError:
            return True
        return all(f"{path}/{name}" in allowed for name in names)

    def open_fds(self) -> dict[str, int]:
        """Descriptors of the mount through which :meth:`agree` reads files instead of opening them."""
        return {}

    @invariant()
    def agree(self) -> None:
        try:
            self._agree()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nafter these steps:\n  " + "\n  ".join(self.steps)) from None

    def _agree(self) -> None:
        self._drop_vanished_dirs()
        may_linger = self._may_linger()
        mount_tree = snapshot(self.mnt, self.open_fds(), flapping=may_linger)
        lingering = self._lingering(mount_tree)
        assert {p: v for p, v in mount_tree.items() if p not in lingering} == snapshot(self.model)
        found = {p: probe(self.mnt / p) for p in ALL_PATHS}
        expected = {p: probe(self.model / p) for p in ALL_PATHS}
        for p in may_linger:
            if expected.get(p) == "ENOENT" and found.get(p) == "dir" and self._holds_only(p, may_linger):
                found[p] = "ENOENT"  # lingering, as above
                lingering.add(p)
        assert found == expected
        # The mount shows these (empty, unmarked) directories, so the next steps (a mkdir in one)
        # act on them; the model follows, and drops them again once they vanish.
        for p in sorted(lingering):
            self.step(f"empty directory {p} lingers on the mount")
            (self.model / p).mkdir(parents=True, exist_ok=True)


# -- descriptors that stay open across steps ---------------------------------------------


@dataclass
class Handle:
    """One file open on both sides.

    ``path`` follows renames.  ``orphan``: the file was unlinked or replaced by
    a rename while open.  ``staged``: the mount holds the file's data locally
    (it was created, written or truncated while this descriptor was open).
    """

    path: str
    file: int  # descriptors of one file share the mount's state of it
    model_fd: int
    mount_fd: int
    staged: bool
    orphan: bool = False


class OpenFilesModel(MountModel):
    """:class:`MountModel` plus up to two descriptors kept open while other steps run.

    One limit is allowed for, as an object store has no unlinked-but-open
    files: a descriptor whose file was unlinked or replaced before the mount
    had a local copy of it can only be closed (reads of it may fail or show the
    new file).  Another client never touches a file that is open here (the
    README promises last-writer-wins at best).
    """

    def __init__(self) -> None:
        self.handles: list[Handle] = []
        self.next_file = 0
        super().__init__()

    def teardown(self) -> None:
        for h in self.handles:
            for fd in (h.model_fd, h.mount_fd):
                # An upload failing here was reported by the step that caused it.
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.handles.clear()
        super().teardown()

    def _live(self, path: str) -> list[Handle]:
        return [h for h in self.handles if not h.orphan and h.path == path]

    def open_fds(self) -> dict[str, int]:
        return {h.path: h.mount_fd for h in self.handles if not h.orphan}

    # -- descriptor operations ---------------------------------------------------------
    def open_handle(self, path: str, create: bool) -> bool:
        """open(O_RDWR, with O_CREAT if ``create``) on both sides, kept open."""
        existed = self.kind(path) == "file"
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        self.step(f"open {path} {'O_CREAT' if create else ''}")
        fds: list[int] = []
        codes: list[int | None] = []
        for base in (self.model, self.mnt):
            target = base / path
            code, fd = outcome(lambda: os.open(target, flags, 0o644))  # noqa: B023 - called at once
            codes.append(code)
            if isinstance(fd, int):
                fds.append(fd)
        if codes[0] != codes[1]:
            for fd in fds:
                os.close(fd)
            raise AssertionError(
                f"open {path}: the mount says {errname(codes[1])}, the model {errname(codes[0])}"
            )
        if codes[0] is not None:
            return False
        same = self._live(path)
        if same:
            file, staged = same[0].file, same[0].staged
        else:
            file, staged = self.next_file, not existed  # the mount stages a new file at once
            self.next_file += 1
        self.handles.append(Handle(path, file, fds[0], fds[1], staged))
        return True

    def _pick(self, index: int) -> Handle | None:
        h = self.handles[index % len(self.handles)]
        if h.orphan and not h.staged:
            self.step(f"skipped: the descriptor of {h.path} lost its file before the mount had a copy")
            return None
        return h

    def _on_handle(self, h: Handle, what: str, op: Callable[[int], object]) -> bool:
        self.step(f"{what} on a descriptor of {h.path} (file #{h.file})")
        expected = outcome(lambda: op(h.model_fd))
        actual = outcome(lambda: op(h.mount_fd))
        assert actual == expected, (
            f"{what} on the descriptor of {h.path}: the mount gives {actual[1]!r} ({errname(actual[0])}),"
            f" the model {expected[1]!r} ({errname(expected[0])})"
        )
        return expected[0] is None

    def handle_write(self, index: int, offset: int, data: bytes) -> None:
        h = self._pick(index)
        if h is not None and self._on_handle(
            h, f"pwrite @{offset} {data!r}", lambda fd: os.pwrite(fd, data, offset)
        ):
            self._staged(h)

    def handle_truncate(self, index: int, size: int) -> None:
        h = self._pick(index)
        if h is not None and self._on_handle(h, f"ftruncate {size}", lambda fd: os.ftruncate(fd, size)):
            self._staged(h)

    def handle_read(self, index: int, offset: int, size: int) -> None:
        h = self._pick(index)
        if h is not None:
            self._on_handle(h, f"pread @{offset} {size}", lambda fd: os.pread(fd, size, offset))

    def handle_fstat(self, index: int) -> None:
        h = self._pick(index)
        if h is not None:
            self._on_handle(h, "fstat", lambda fd: (stat.S_IFMT(os.fstat(fd).st_mode), os.fstat(fd).st_size))

    def handle_fsync(self, index: int) -> None:
        h = self.handles[index % len(self.handles)]
        self._on_handle(h, "fsync", os.fsync)

    def handle_close(self, index: int) -> None:
        h = self.handles.pop(index % len(self.handles))
        self._on_handle(h, "close", os.close)

    def _staged(self, h: Handle) -> None:
        """Every descriptor of one file shares the mount's local copy."""
        for other in self.handles:
            if other.file == h.file:
                other.staged = True

    # -- path operations that change what the descriptors see ----------------------------
    def _path_staged(self, path: str, done: bool) -> bool:
        if done:
            for h in self._live(path):
                self._staged(h)
        return done

    def create_file(self, path: str, data: bytes) -> bool:
        return self._path_staged(path, super().create_file(path, data))

    def write_at(self, path: str, offset: int, data: bytes) -> bool:
        return self._path_staged(path, super().write_at(path, offset, data))

    def append(self, path: str, data: bytes) -> bool:
        return self._path_staged(path, super().append(path, data))

    def truncate(self, path: str, size: int) -> bool:
        return self._path_staged(path, super().truncate(path, size))

    def rename(self, src: str, dst: str) -> bool:
        done = super().rename(src, dst)
        if done and src != dst:
            for h in self.handles:
                if h.orphan:
                    continue
                if h.path == dst or h.path.startswith(dst + "/"):
                    h.orphan = True  # replaced by the rename
                elif h.path == src or h.path.startswith(src + "/"):
                    h.path = dst + h.path[len(src) :]
        return done

    def unlink(self, path: str) -> bool:
        done = super().unlink(path)
        if done:
            for h in self._live(path):
                h.orphan = True
        return done

    def other_put(self, path: str, data: bytes) -> bool:
        if self._live(path):
            self.step(f"skipped other_put {path}: open here")
            return False
        return super().other_put(path, data)

    def other_delete(self, path: str) -> None:
        live = self._live(path)
        if any(h.staged for h in live):
            # The mount uploads its copy on close, bringing the file back: last writer wins.
            self.step(f"skipped other_delete {path}: open here with local data")
            return
        super().other_delete(path)
        for h in live:
            h.orphan = True  # deleted under the descriptor, as by an unlink

    # -- rules -------------------------------------------------------------------------
    @initialize(opens=st.lists(st.tuples(paths, creates), min_size=1, max_size=MAX_HANDLES))
    def seed_open(self, opens: list[tuple[str, bool]]) -> None:
        """Open descriptors from the start: twenty steps would rarely get far with them otherwise."""
        for path, create in opens:
            self.open_handle(path, create)

    @precondition(lambda self: len(self.handles) < MAX_HANDLES)
    @rule(path=paths, create=creates)
    def open_any(self, path: str, create: bool) -> None:
        self.open_handle(path, create)

    @precondition(lambda self: len(self.handles) < MAX_HANDLES)
    @rule(path=MountModel.files)
    def open_file(self, path: str) -> None:
        self.open_handle(path, create=False)

    @precondition(lambda self: self.handles)
    @rule(index=handle_picks, offset=offsets, data=contents)
    def write_open(self, index: int, offset: int, data: bytes) -> None:
        self.handle_write(index, offset, data)

    @precondition(lambda self: self.handles)
    @rule(index=handle_picks, data=contents)
    def write_open_at_end(self, index: int, data: bytes) -> None:
        h = self.handles[index % len(self.handles)]
        self.handle_write(index, os.fstat(h.model_fd).st_size, data)

    @precondition(lambda self: self.handles)
    @rule(index=handle_picks, size=sizes)
    def truncate_open(self, index: int, size: int) -> None:
        self.handle_truncate(index, size)

    @precondition(lambda self: self.handles)
    @rule(index=handle_picks, offset=offsets, size=st.integers(min_value=0, max_value=48))
    def read_open(self, index: int, offset: int, size: int) -> None:
        self.handle_read(index, offset, size)

    @precondition(lambda self: self.handles)
    @rule(index=handle_picks)
    def read_open_whole(self, index: int) -> None:
        self.handle_read(index, 0, 1 << 16)

    @precondition(lambda self: self.handles)
    @rule(index=handle_picks)
    def fstat_open(self, index: int) -> None:
        self.handle_fstat(index)

    @precondition(lambda self: self.handles)
    @rule(index=handle_picks)
    def fsync_open(self, index: int) -> None:
        self.handle_fsync(index)

    @precondition(lambda self: self.handles)
    @rule(index=handle_picks)
    def close_open(self, index: int) -> None:
        self.handle_close(index)


# -- running ------------------------------------------------------------------------------


def machine_for(machine: type[MountModel], setup: Setup, model_base: Path) -> type[MountModel]:
    """``machine`` bound to one running mount (hypothesis builds machines without arguments)."""
    return type(machine.__name__, (machine,), {"setup": setup, "model_base": model_base})


def run_checked(setup: Setup, fn: Callable[[], None]) -> None:
    """Run ``fn``; on failure show the daemon's log, and insist the daemon survived either way."""
    try:
        fn()
    except BaseException:
        print(f"--- vaultfs log (tail) ---\n{setup.mount.log()[-6000:]}")
        raise
    assert setup.mount.alive(), f"vaultfs died:\n{setup.mount.log()[-6000:]}"


def run_budgeted(machine: type[MountModel]) -> None:
    """Run ``machine`` under :data:`PROFILE` in batches of :data:`BATCH` examples within :data:`BUDGET`.

    Each batch has a fixed seed, so a CI run is reproducible; hypothesis has no
    time limit of its own, and stopping inside a batch would make it report
    flaky data generation.
    """
    profile = settings.get_profile(PROFILE)
    if not profile.derandomize:
        get_state_machine_test(machine, settings=profile)()  # hunting: one random run, no budget
        return
    deadline = time.monotonic() + BUDGET
    batches = -(-profile.max_examples // BATCH)
    for batch in range(batches):
        if time.monotonic() > deadline:
            print(f"time budget of {BUDGET:.0f}s spent: ran {batch} of {batches} batches")
            return
        test = get_state_machine_test(
            machine, settings=settings(profile, max_examples=BATCH, derandomize=False)
        )
        seed(batch)(test)()


def test_mount_agrees_with_a_local_directory(setup: Setup, tmp_path: Path) -> None:
    machine = machine_for(MountModel, setup, tmp_path / "model")
    run_checked(setup, lambda: run_budgeted(machine))


def test_mount_with_open_files_agrees_with_a_local_directory(setup: Setup, tmp_path: Path) -> None:
    machine = machine_for(OpenFilesModel, setup, tmp_path / "model")
    run_checked(setup, lambda: run_budgeted(machine))


# -- shrunk failures, kept as regression tests ----------------------------------------------

Step = tuple[str, dict[str, Any]]


def replay(
    setup: Setup, tmp_path: Path, steps: list[Step], machine: type[MountModel] = OpenFilesModel
) -> None:
    """Run ``steps`` (operation, arguments) on a fresh machine, checking after each as hypothesis does."""
    m = machine_for(machine, setup, tmp_path / "model")()

    def run() -> None:
        try:
            m.agree()
            for name, kwargs in steps:
                getattr(m, name)(**kwargs)
                m.agree()
        finally:
            m.teardown()

    run_checked(setup, run)


# Fixed in 52e6755 (found by OpenFilesModel).


def test_regression_new_open_file_is_listed_and_found(setup: Setup, tmp_path: Path) -> None:
    """A file created but not yet flushed is in no backend listing; it must still be listed and found."""
    replay(setup, tmp_path, [("open_handle", {"path": "a", "create": True})])


def test_regression_rename_over_an_open_file(setup: Setup, tmp_path: Path) -> None:
    """The replaced file's descriptor must not upload its data over the renamed file on close."""
    replay(
        setup,
        tmp_path,
        [
            ("create_file", {"path": "a", "data": b"new"}),
            ("create_file", {"path": "b", "data": b"old"}),
            ("open_handle", {"path": "b", "create": False}),
            ("handle_write", {"index": 0, "offset": 0, "data": b"O"}),
            ("rename", {"src": "a", "dst": "b"}),
            ("handle_close", {"index": 0}),
        ],
    )


def test_regression_recreate_after_unlinking_an_open_file(setup: Setup, tmp_path: Path) -> None:
    """A new file under an unlinked open file's name must not share its (never uploaded) state."""
    replay(
        setup,
        tmp_path,
        [
            ("create_file", {"path": "a", "data": b"old"}),
            ("open_handle", {"path": "a", "create": False}),
            ("unlink", {"path": "a"}),
            ("create_file", {"path": "a", "data": b"new"}),
        ],
    )


def test_regression_rename_directory_holding_a_new_open_file(setup: Setup, tmp_path: Path) -> None:
    """A new, not yet flushed file follows its directory through a rename."""
    replay(
        setup,
        tmp_path,
        [
            ("mkdir", {"path": "a"}),
            ("open_handle", {"path": "a/b", "create": True}),
            ("rename", {"src": "a", "dst": "c"}),
        ],
    )


def test_regression_new_open_file_keeps_its_implied_directory(setup: Setup, tmp_path: Path) -> None:
    """A new, not yet flushed file keeps its directory alive after the last stored file in it goes."""
    replay(
        setup,
        tmp_path,
        [
            ("other_put", {"path": "a/a", "data": b"1"}),
            ("open_handle", {"path": "a/b", "create": True}),
            ("unlink", {"path": "a/a"}),
        ],
    )


def test_regression_open_file_replaced_by_a_directory(setup: Setup, tmp_path: Path) -> None:
    """A name that changes kind behind the mount gets a new inode; the open file still closes cleanly."""
    replay(
        setup,
        tmp_path,
        [
            ("create_file", {"path": "b", "data": b"x"}),
            ("open_handle", {"path": "b", "create": False}),
            ("other_delete", {"path": "b"}),
            ("mkdir", {"path": "b"}),
            ("handle_close", {"index": 0}),
        ],
    )


def test_regression_rmdir_of_a_directory_holding_a_new_open_file(setup: Setup, tmp_path: Path) -> None:
    """rmdir refuses a directory holding a new, not yet flushed file."""
    replay(
        setup,
        tmp_path,
        [
            ("mkdir", {"path": "a"}),
            ("open_handle", {"path": "a/c", "create": True}),
            ("rmdir", {"path": "a"}),
        ],
    )


def test_regression_directory_made_again_after_rmdir(setup: Setup, tmp_path: Path) -> None:
    """The unlinked open file keeps the removed directory's inode alive in the kernel."""
    replay(
        setup,
        tmp_path,
        [
            ("mkdir", {"path": "a"}),
            ("create_file", {"path": "a/c", "data": b""}),
            ("open_handle", {"path": "a/c", "create": False}),
            ("unlink", {"path": "a/c"}),
            ("rmdir", {"path": "a"}),
            ("mkdir", {"path": "a"}),
            ("create_file", {"path": "a/b", "data": b"x"}),
        ],
    )


def test_regression_file_replaced_by_a_directory_behind_the_mount(setup: Setup, tmp_path: Path) -> None:
    """A listing shows the directory, and a lookup finds it, not the file the mount knew by that name."""
    m = machine_for(MountModel, setup, tmp_path / "model")()

    def run() -> None:
        try:
            m.create_file("a", b"1")
            m.agree()  # the kernel now holds the file's inode
            m.other_delete("a")
            m.other_put("a/b", b"2")
            m.agree()
        finally:
            m.teardown()

    run_checked(setup, run)
