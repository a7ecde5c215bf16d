"""Mounting: checks before mounting, daemon mode, the trio main loop and clean shutdown.

Daemon mode forks before anything starts a thread (trio, boto3): the parent
waits on a pipe and exits only once the child reports the mount live, or
prints the child's error and fails.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from . import attrs, kernel, metrics, registry, runtime
from .backend import Backend
from .cache import BlockCache
from .config import ResolvedBackend, Settings
from .files import Files
from .fs import FsOptions, Operations
from .namespace import Namespace
from .reader import Reader

log = logging.getLogger(__name__)

#: libfuse options we always set: the kernel checks permissions against the
#: modes we report, and df / findmnt / umount -t see a "fuse.vaultfs" mount.
ALWAYS = ("default_permissions", "subtype=vaultfs")


class MountError(Exception):
    """A reason the mount cannot start, worded for the user."""


@dataclass(frozen=True)
class MountPlan:
    """A resolved backend, where to mount it, and the options for libfuse."""

    backend: ResolvedBackend
    mountpoint: Path
    fuse_options: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def settings(self) -> Settings:
        return self.backend.settings

    @property
    def staging_dir(self) -> Path:
        return Path(self.settings.cache_dir) / "staging" / self.name

    @property
    def defaults(self) -> attrs.Defaults:
        s = self.settings
        return attrs.Defaults(
            uid=os.getuid() if s.uid is None else s.uid,
            gid=os.getgid() if s.gid is None else s.gid,
            umask=s.umask,
        )


def check_mountpoint(path: Path, nonempty: bool = False) -> None:
    """Refuse, with the fix, a mountpoint we cannot use."""
    if not os.path.exists("/dev/fuse"):
        raise MountError(
            "/dev/fuse is missing: load the kernel module (modprobe fuse) or, in a container, "
            "pass the device through (--device /dev/fuse)"
        )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist; create it with: mkdir -p {path}") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountError(
                f"{path} is a dead FUSE mount (its daemon exited); clean it up with: fusermount3 -uz {path}"
            ) from None
        raise MountError(f"cannot use mountpoint {path}: {exc.strerror}") from None
    if not os.path.isdir(path) or not (st.st_mode & 0o040000):
        raise MountError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point; unmount it first with: vaultfs umount {path}")
    if not nonempty and any(os.scandir(path)):
        raise MountError(f"mountpoint {path} is not empty; use an empty directory (or -o nonempty)")


def fuse_option_set(plan: MountPlan) -> set[str]:
    """The options handed to libfuse."""
    opts = set(ALWAYS) | {f"fsname=vaultfs:{plan.name}"}
    if plan.settings.read_only:
        opts.add("ro")
    if plan.settings.allow_other:
        opts.add("allow_other")
    opts.update(o for o in plan.fuse_options if o != "nonempty")
    return opts


def build(plan: MountPlan) -> tuple[Operations, Files, Backend]:
    """Create the driver, backend, namespace and operations for ``plan``."""
    s = plan.settings
    driver = registry.create(plan.backend)
    backend = Backend(plan.name, driver, workers=s.workers, timeout=s.timeout, retries=s.retries)
    ns = Namespace(backend, plan.defaults, attr_ttl=s.attr_ttl, dir_ttl=s.dir_ttl)
    cache = None
    if s.cache_enabled and driver.cacheable:
        cache = BlockCache(Path(s.cache_dir) / "blocks" / plan.name, s.cache_size, s.cache_min_free)
        metrics.CACHE_BUDGET_BYTES.labels(plan.name).set(s.cache_size)
    reader = Reader(backend, cache, s.cache_block_size, s.read_ahead_max)
    files = Files(ns, backend, reader, plan.staging_dir)
    # The kernel's own entry/attribute caches must not outlive ours.
    fs_options = FsOptions(
        attr_ttl=min(s.attr_ttl, s.dir_ttl), rename_limit=s.rename_limit, read_only=s.read_only
    )
    ops = Operations(backend, ns, files, fs_options)
    return ops, files, backend


async def _tune_kernel(ops: Operations, mountpoint: Path) -> None:
    # The kernel sets the mount's read-ahead when it processes FUSE INIT's
    # reply, so ours must come after that reply, not after pyfuse3.init().
    await ops.initialized.wait()
    await trio.sleep(0.1)
    kernel.raise_read_ahead(mountpoint)


async def _serve(ops: Operations, files: Files, backend: Backend, mountpoint: Path) -> None:
    async with trio.open_nursery() as nursery:
        files.reader.start(nursery)
        nursery.start_soon(_tune_kernel, ops, mountpoint)
        nursery.start_soon(_stop_on_signal, files)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()
    await backend.aclose()


async def _stop_on_signal(files: Files) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: uploading pending files, then unmounting", signal.Signals(signum).name)
            failed = await files.flush_all()
            if failed:
                log.error(
                    "%d file(s) could not be uploaded; their data stays in %s", failed, files.staging_dir
                )
            pyfuse3.terminate()
            return


def serve(plan: MountPlan, ready: Callable[[str | None], None]) -> int:
    """Mount and serve until unmounted or signalled.  ``ready`` hears None once live, or the error."""
    try:
        ops, files, backend = build(plan)
        pyfuse3.init(ops, str(plan.mountpoint), fuse_option_set(plan))
    except Exception as exc:
        ready(f"cannot mount {plan.mountpoint}: {exc}")
        return 1
    record = runtime.write_record(
        plan.name, plan.mountpoint, plan.backend.driver_name, cache_dir=plan.settings.cache_dir
    )
    log.info("mounted %s (%s) on %s", plan.name, plan.backend.driver_name, plan.mountpoint)
    ready(None)
    try:
        trio.run(_serve, ops, files, backend, plan.mountpoint)
    finally:
        pyfuse3.close(unmount=True)
        runtime.remove_record(record)
    log.info("unmounted %s", plan.mountpoint)
    return 0


def daemonize(run: Callable[[Callable[[str | None], None]], int]) -> int:
    """Run ``run`` in a detached child; return once it reports the mount live (0) or failed (1)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message.startswith("ok"):
            return 0
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        print(f"vaultfs: {message.strip() or 'the mount daemon exited before mounting'}", file=sys.stderr)
        return 1
    os.close(read_end)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    reported = False

    def ready(error: str | None) -> None:
        nonlocal reported
        if not reported:
            reported = True
            os.write(write_end, b"ok\n" if error is None else error.encode())
            os.close(write_end)

    code = 1
    try:
        code = run(ready)
    finally:
        ready("the mount daemon exited before mounting")
        os._exit(code)
