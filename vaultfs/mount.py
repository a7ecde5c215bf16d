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
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from drivers.base import Driver
from drivers.errors import AccessDenied, InvalidName, NotFound

from . import attrs, kernel, logs, metrics, registry, runtime, sdnotify
from .attrindex import AttrIndex
from .backend import Backend, HealthState
from .cache import BlockCache
from .config import ResolvedBackend
from .files import Files
from .fs import FsOptions, Operations
from .http import MetricsServer, MountState
from .namespace import Namespace
from .reader import Reader
from .settings import Settings

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
    def fsname(self) -> str:
        """What df and findmnt show as the source: the user's ``-o fsname=``, else ``vaultfs:NAME``."""
        given = [o[len("fsname=") :] for o in self.fuse_options if o.startswith("fsname=")]
        return given[-1] if given else f"vaultfs:{self.name}"

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
        # The kernel may answer stat(2) of a dead FUSE mount from its cache; statfs always asks.
        os.statvfs(path)
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
    """The options handed to libfuse (one fsname: libfuse would take whichever came last)."""
    opts = set(ALWAYS) | {f"fsname={plan.fsname}"}
    if plan.settings.read_only:
        opts.add("ro")
    if plan.settings.allow_other:
        opts.add("allow_other")
    opts.update(o for o in plan.fuse_options if o != "nonempty" and not o.startswith("fsname="))
    return opts


def _refuse_broken_backend(plan: MountPlan, driver: Driver) -> None:
    """Fail the mount when the backend's health check says it can never work (a missing
    local root, wrong credentials); a backend that is merely unreachable still mounts
    and is retried, so a mount at boot does not depend on the network being up."""
    outcome: list[BaseException | None] = []

    def check() -> None:
        try:
            driver.health_check()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=check, daemon=True, name="vaultfs initial health check")
    thread.start()
    thread.join(plan.settings.timeout)
    error = outcome[0] if outcome else None
    if isinstance(error, (NotFound, AccessDenied, InvalidName)):
        raise MountError(f"backend {plan.name}: {error}")
    if error is not None:
        log.warning("backend %s is not answering yet (%s); mounting anyway", plan.name, error)


def build(plan: MountPlan) -> tuple[Operations, Files, Backend]:
    """Create the driver, backend, namespace and operations for ``plan``."""
    s = plan.settings
    driver = registry.create(plan.backend)
    _refuse_broken_backend(plan, driver)
    backend = Backend(plan.name, driver, workers=s.workers, timeout=s.timeout, retries=s.retries)
    index = None if driver.lists_metadata else AttrIndex(backend)
    ns = Namespace(backend, plan.defaults, attr_ttl=s.attr_ttl, dir_ttl=s.dir_ttl, index=index)
    cache = None
    if s.cache_enabled and driver.cacheable:
        cache = BlockCache(Path(s.cache_dir) / "blocks" / plan.name, s.cache_size, s.cache_min_free)
        metrics.CACHE_BUDGET_BYTES.labels(plan.name).set(s.cache_size)
    reader = Reader(backend, cache, s.cache_block_size, s.read_ahead_max)
    files = Files(
        ns, backend, reader, plan.staging_dir, upload_workers=s.upload_workers, files_ahead=s.read_ahead_files
    )
    # Before serving: files whose upload a crash or restart interrupted are shown and queued again.
    files.resume()
    # The kernel's own entry/attribute caches must not outlive ours.
    fs_options = FsOptions(
        attr_ttl=min(s.attr_ttl, s.dir_ttl),
        rename_limit=s.rename_limit,
        read_only=s.read_only,
        mountpoint=plan.mountpoint,
    )
    ops = Operations(backend, ns, files, fs_options)
    # Mount-wide and trusts the kernel's idea of each file's size: faster small
    # writes, but another client's size changes can go unseen (README).
    ops.enable_writeback_cache = s.writeback_cache
    return ops, files, backend


#: Seconds between health checks of the backend; ``$VAULTFS_HEALTH_INTERVAL`` overrides it.
HEALTH_INTERVAL = 15.0
#: Longest a health check may take before the backend counts as unavailable.
HEALTH_TIMEOUT = 10.0
#: Seconds between refreshes of the figures in /healthz, the gauges and systemd's STATUS line.
REPORT_INTERVAL = 5.0
#: While uploads drain on SIGTERM, systemd is asked for this many more seconds at a time ...
DRAIN_EXTENSION = 30.0
#: ... for at most this long in all, after which its own TimeoutStopSec= applies again.
DRAIN_LIMIT = 15 * 60.0


def health_interval(environ: Mapping[str, str] | None = None) -> float:
    """Seconds between health checks: ``$VAULTFS_HEALTH_INTERVAL`` if valid, else :data:`HEALTH_INTERVAL`."""
    environ = os.environ if environ is None else environ
    text = environ.get("VAULTFS_HEALTH_INTERVAL", "")
    if not text:
        return HEALTH_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        log.warning("VAULTFS_HEALTH_INTERVAL=%r is not a positive number; using %g", text, HEALTH_INTERVAL)
        return HEALTH_INTERVAL
    return value


def is_mounted(plan: MountPlan) -> bool:
    """Whether our mount is still on the plan's mountpoint (never a stat(2): see kernel.mount_entry)."""
    entry = kernel.mount_entry(plan.mountpoint)
    return entry is not None and entry.fstype == "fuse.vaultfs" and entry.source == plan.fsname


@dataclass
class Service:
    """What runs beside the FUSE loop: systemd notifications and the state the HTTP listener reports."""

    plan: MountPlan
    notifier: sdnotify.Notifier
    state: MountState
    health_interval: float = HEALTH_INTERVAL
    stopping_sent: bool = False

    def status_line(self) -> str:
        """One line for ``systemctl status``: health, open files, inodes, pending uploads."""
        ok, report = self.state.health()
        backend = report["backend"]
        if backend["checked_at"] is None:
            health = "not checked yet"
        elif ok:
            health = f"healthy ({backend['latency_seconds'] * 1000:.0f} ms)"
        else:
            health = f"unavailable: {backend['error']}"
        files, writeback, cache = report["files"], report["writeback"], report["cache"]
        line = (
            f"{self.plan.name} on {self.plan.mountpoint}: backend {health}; "
            f"{files['open']} open files, {files['inodes']} inodes, "
            f"{writeback['pending']} pending uploads"
        )
        if cache["budget_bytes"]:
            line += f", cache {cache['bytes'] >> 20} of {cache['budget_bytes'] >> 20} MiB"
        return line

    def publish_status(self) -> None:
        """Send the status line to systemd, unless shutdown has begun (its own STATUS then stands)."""
        if not self.stopping_sent:
            self.notifier.status(self.status_line())

    def stopping(self, why: str) -> None:
        """Tell systemd, once, that shutdown has begun."""
        self.state.update(stopping=True)
        if not self.stopping_sent:
            self.stopping_sent = True
            self.notifier.stopping(status=why)


async def _mark_serving(ops: Operations, service: Service) -> None:
    await ops.initialized.wait()
    service.state.update(serving=True)


async def _check_health(backend: Backend, service: Service, timeout: float) -> None:
    """Run the backend's health check now and every ``health_interval`` seconds, for /healthz."""
    while True:
        with trio.move_on_after(timeout) as scope:
            # The backend keeps a failure in .healthy and logs when the state changes.
            with contextlib.suppress(Exception):
                await backend.health_check()
        if scope.cancelled_caught:
            # The backend's own per-attempt timeout may be much longer; /healthz must
            # not say "healthy" for that long about a backend that stopped answering.
            health = HealthState(ok=False, checked_at=time.time(), error=f"no answer within {timeout:g}s")
            if service.state.backend.ok or service.state.backend.checked_at is None:
                log.warning("backend %s: health check got %s", backend.name, health.error)
            metrics.BACKEND_HEALTHY.labels(backend.name).set(0)
        else:
            health = backend.healthy
        service.state.update(backend=health)
        service.publish_status()
        await trio.sleep(service.health_interval)


async def _report(ops: Operations, files: Files, service: Service) -> None:
    """Refresh the figures /healthz and systemd show, and notice a mount that disappeared."""
    plan, name = service.plan, service.plan.name
    while True:
        mounted = is_mounted(plan)
        open_files, inodes = len(files), len(ops.ns)
        metrics.OPEN_FILES.labels(name).set(open_files)
        metrics.INODES.labels(name).set(inodes)
        files.publish_pending()
        if service.state.mounted and not mounted:
            log.warning("%s is no longer mounted; serving open files until they are closed", plan.mountpoint)
        service.state.update(mounted=mounted, open_files=open_files, inodes=inodes)
        service.publish_status()
        await trio.sleep(min(REPORT_INTERVAL, service.health_interval))


async def _watchdog(notifier: sdnotify.Notifier, interval: float) -> None:
    """Ping systemd's watchdog: a ping proves the trio loop is still turning."""
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


async def _extend_stop_timeout(notifier: sdnotify.Notifier) -> None:
    """Keep asking systemd for more time while uploads drain, up to :data:`DRAIN_LIMIT`.

    The first request is the caller's, sent before draining starts.
    """
    deadline = trio.current_time() + DRAIN_LIMIT
    while True:
        await trio.sleep(DRAIN_EXTENSION / 3)
        if trio.current_time() >= deadline:
            break
        notifier.extend_timeout(DRAIN_EXTENSION)
    log.warning("uploads still draining after %gs; systemd may now stop vaultfs", DRAIN_LIMIT)


async def _serve(ops: Operations, files: Files, backend: Backend, service: Service) -> None:
    async with trio.open_nursery() as nursery:
        files.start(nursery)
        nursery.start_soon(_mark_serving, ops, service)
        nursery.start_soon(_stop_on_signal, files, service)
        health_timeout = min(HEALTH_TIMEOUT, service.plan.settings.timeout)
        nursery.start_soon(_check_health, backend, service, health_timeout)
        nursery.start_soon(_report, ops, files, service)
        interval = service.notifier.watchdog_interval
        if interval is not None:
            nursery.start_soon(_watchdog, service.notifier, interval)
        await pyfuse3.main()
        # After an unmount: upload what is pending while the write-back workers still run.
        failed = await files.flush_all()
        if failed:
            log.error(
                "%d file(s) could not be uploaded; they stay in the journal in %s", failed, files.staging_dir
            )
        nursery.cancel_scope.cancel()
    service.state.update(mounted=False, serving=False)
    service.stopping("unmounted; closing the backend")
    await backend.aclose()


async def _stop_on_signal(files: Files, service: Service) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: uploading pending files, then unmounting", signal.Signals(signum).name)
            service.stopping("uploading pending files, then unmounting")
            async with trio.open_nursery() as nursery:
                # Sent before draining starts, so systemd hears it even when nothing is pending.
                if service.notifier.extend_timeout(DRAIN_EXTENSION):
                    nursery.start_soon(_extend_stop_timeout, service.notifier)
                failed = await files.flush_all()
                nursery.cancel_scope.cancel()
            if failed:
                log.error(
                    "%d file(s) could not be uploaded; they stay in the journal in %s for the next mount",
                    failed,
                    files.staging_dir,
                )
            pyfuse3.terminate()
            return


def _listen(plan: MountPlan, state: MountState) -> MetricsServer | None:
    address = plan.settings.metrics_address
    if address is None:
        return None
    host, port = address
    try:
        return MetricsServer(host, port, state)
    except OSError as exc:
        raise MountError(f"cannot listen on {plan.settings.metrics_listen}: {exc.strerror or exc}") from None


def serve(plan: MountPlan, ready: Callable[[str | None], None]) -> int:
    """Mount and serve until unmounted or signalled.  ``ready`` hears None once live, or the error.

    Under systemd (``$NOTIFY_SOCKET``) this process tells it READY=1 once the
    kernel has the mount, then STATUS lines, watchdog pings and STOPPING=1.
    """
    recent = logs.RecentErrors().install()
    notifier = sdnotify.Notifier()
    server: MetricsServer | None = None
    try:
        ops, files, backend = build(plan)
        state = MountState(
            plan.name,
            str(plan.mountpoint),
            plan.backend.driver_name,
            health_interval=health_interval(),
            recent=recent,
        )
        server = _listen(plan, state)
        pyfuse3.init(ops, str(plan.mountpoint), fuse_option_set(plan))
    except Exception as exc:
        if server is not None:
            server.close()
        recent.remove()
        ready(f"cannot mount {plan.mountpoint}: {exc}")
        return 1
    service = Service(plan, notifier, state, state.health_interval)
    state.update(mounted=True)
    extra = {"metrics": server.start().address} if server is not None else {}
    record = runtime.write_record(
        plan.name, plan.mountpoint, plan.backend.driver_name, cache_dir=plan.settings.cache_dir, **extra
    )
    log.info("mounted %s (%s) on %s", plan.name, plan.backend.driver_name, plan.mountpoint)
    notifier.ready(status=f"mounted {plan.name} on {plan.mountpoint}")
    ready(None)
    try:
        trio.run(_serve, ops, files, backend, service)
    finally:
        service.stopping("unmounting")
        pyfuse3.close(unmount=True)
        state.update(mounted=False, serving=False)
        if server is not None:
            server.close()
        runtime.remove_record(record)
        recent.remove()
        notifier.close()
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
    os.dup2(null, 0)
    os.dup2(null, 1)
    # Standard error stays the caller's until the mount is live, so libfuse's own
    # complaints (an unknown -o option) reach the user while the parent waits.
    # Standard error that is the journal (a systemd .mount unit running mount(8))
    # stays for good: the daemon's log then lands in that unit's journal.
    keep_stderr = logs.keeps_stderr()
    logs.detached()
    # Only a service's main process may notify systemd, and this one is a fork of it.
    sdnotify.forget_environment()
    reported = False

    def ready(error: str | None) -> None:
        nonlocal reported
        if not reported:
            reported = True
            os.write(write_end, b"ok\n" if error is None else error.encode())
            os.close(write_end)
            if not keep_stderr:
                os.dup2(null, 2)

    code = 1
    try:
        code = run(ready)
    finally:
        ready("the mount daemon exited before mounting")
        os._exit(code)


def clean_dead_mount(mountpoint: Path, timeout: float = 10.0) -> str | None:
    """Lazily unmount ``mountpoint`` if it is a dead FUSE mount; return what was done, or None.

    A dead mount is one whose daemon exited without unmounting: every access
    fails with ENOTCONN ("Transport endpoint is not connected").  A missing,
    plain or live mountpoint is left alone.  Raises :class:`MountError` if the
    unmount fails.
    """
    try:
        # statfs, not stat: the kernel answers stat from its attribute cache for
        # a while after the daemon died, but always forwards statfs to the daemon.
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            return None
    else:
        return None
    done = subprocess.run(
        ["fusermount3", "-uz", str(mountpoint)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        reason = done.stderr.strip().removeprefix("fusermount3: ") or f"exit status {done.returncode}"
        raise MountError(f"cannot unmount the dead mount on {mountpoint}: {reason}")
    log.info("unmounted the dead mount left on %s", mountpoint)
    return f"unmounted the dead mount left on {mountpoint}"
