"""The only caller of drivers: worker threads, timeouts, retries, metrics and health.

Drivers are synchronous and may block for as long as the network makes them;
:class:`Backend` turns each driver operation into an ``async`` method for trio
code, so nothing above this module blocks the trio loop or talks to a driver
directly.

Each call:

* runs in a worker thread taken from one ``trio.CapacityLimiter(workers)`` per
  backend (the connection-pool size);
* is bounded per attempt by ``timeout`` seconds, which include the wait for a
  free worker; an attempt that runs out of time raises
  :class:`~drivers.errors.Unavailable` and its thread is *abandoned*: it keeps
  its worker slot until the driver returns, so a driver that hangs for ever
  slowly starves the pool, and every later call then fails fast with a timeout
  instead of hanging the mount;
* is retried on :class:`~drivers.errors.Unavailable` only, at most ``retries``
  times after the first attempt, sleeping ``d/2 + uniform(0, d/2)`` between
  attempts where ``d = min(backoff_max, backoff_base * 2**(attempt-1))``;
  an error carrying a numeric ``retry_after`` attribute (a server's
  ``Retry-After``) waits at least that long, up to ``backoff_max``;
* records its count, outcome and latency per attempt, its retries, and the
  bytes of completed transfers in :mod:`vaultfs.metrics`.

No method takes a caller's stream.  A retry must start from the first byte, so
every method that sends data owns its source (``put_bytes`` wraps the bytes
afresh, ``put_file`` has the driver reopen the file in each attempt) and every method that
receives data owns its sink's position (``read`` buffers, ``read_into_file``
rewinds).  Write-back uploads from its staging file; that is the "retry from
the staging file" rule of the design.

Retried operations that are not idempotent on the backend can report the
effect of their own earlier attempt: when a timed-out ``create_container``
actually succeeded, its retry raises ``AlreadyExists``; likewise
``delete_container`` and ``NotFound``.  An abandoned ``put`` may still land
after a later one; both send the staging file's bytes, so this only matters if
the file changed in between.

Await points: every public method awaits a worker thread and, between
attempts, ``trio.sleep``; other tasks run meanwhile, and several calls on one
backend run concurrently up to ``workers``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, TypeVar

import tenacity
import trio

from drivers.base import ArtifactInfo, Driver, Prefix
from drivers.errors import Unavailable

from . import metrics
from .metrics import outcome_of

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest single read from a driver stream; bounds memory per worker thread.
CHUNK_SIZE = 1 << 20
#: :attr:`Backend.get_latency` is the quickest of this many recent gets, once it has this many.
GET_TIMINGS = 15
GET_TIMINGS_NEEDED = 3

#: Attempts before this number log their failure at DEBUG, later ones at WARNING.
_QUIET_ATTEMPTS = 3


@dataclasses.dataclass(frozen=True)
class HealthState:
    """The result of the last health check; truthy when it succeeded.

    Before the first check ``ok`` is False and ``checked_at`` is None: a
    backend is not called healthy until it has answered.
    """

    ok: bool
    #: Wall-clock time (``time.time()``) the last check finished.
    checked_at: float | None = None
    #: Seconds the last successful check took.
    latency: float | None = None
    #: Why the last check failed.
    error: str | None = None

    def __bool__(self) -> bool:
        return self.ok


class _Superseded(Exception):
    """Raised inside an abandoned ``read_into_file`` attempt once it may no longer write."""


class _WriteFence:
    """Stops abandoned attempts of one ``read_into_file`` call from writing.

    Each attempt takes a new generation under the lock before it touches the
    file and writes only while its generation is current, so once a later
    attempt has begun an abandoned one never writes again.  When the call
    ends, ``closed`` stops them all; a write already under way then still
    finishes, which is why callers discard the file after a failed call.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0
        self.closed = False
        self.start: int | None = None


def _open_timed(
    driver: Driver, container: str, artifact: str, offset: int, length: int, answered: Callable[[float], None]
) -> IO[bytes]:
    """The driver's stream of the range, telling ``answered`` how long the driver took to give it
    (for S3, until the response's headers)."""
    began = time.perf_counter()
    stream = driver.get(container, artifact, offset, length)
    answered(time.perf_counter() - began)
    return stream


def _read_range(
    driver: Driver, container: str, artifact: str, offset: int, length: int, answered: Callable[[float], None]
) -> bytes:
    stream = _open_timed(driver, container, artifact, offset, length, answered)
    try:
        # A stream may return short reads (sockets do), so only EOF ends the loop early.
        chunks: list[bytes] = []
        remaining = length
        while remaining > 0:
            chunk = stream.read(min(remaining, CHUNK_SIZE))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        stream.close()


def _readinto(stream: IO[bytes], view: memoryview) -> int:
    try:
        return int(stream.readinto(view) or 0)  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError):
        # typing.IO promises only read(): a plug-in's stream may lack readinto,
        # or inherit RawIOBase's, which raises when only read() is written.
        data = stream.read(len(view))
        view[: len(data)] = data
        return len(data)


def _read_blocks(
    driver: Driver,
    container: str,
    artifact: str,
    offset: int,
    length: int,
    block_size: int,
    new_block: Callable[[], bytearray],
    arrived: Callable[[int, bytearray], None] | None,
    answered: Callable[[float], None],
) -> list[bytearray]:
    stream = _open_timed(driver, container, artifact, offset, length, answered)
    blocks: list[bytearray] = []
    try:
        remaining = length
        while remaining > 0:
            want = min(block_size, remaining)
            # A whole block into a reusable buffer; the short tail (all of a small file) into one
            # of its own size, not a block-sized one allocated and then cut down for a few KiB.
            block = new_block() if want == block_size else bytearray(want)
            got = 0
            with memoryview(block) as view:
                while got < want:
                    n = _readinto(stream, view[got : min(want, got + CHUNK_SIZE)])
                    if not n:
                        break
                    got += n
            if got < len(block):
                del block[got:]
            if block:
                blocks.append(block)
                if arrived is not None:
                    arrived(len(blocks) - 1, block)
            if got < block_size:
                break
            remaining -= got
        return blocks
    finally:
        stream.close()


def _copy_to_file(
    driver: Driver,
    fence: _WriteFence,
    container: str,
    artifact: str,
    dest: str | os.PathLike[str] | IO[bytes],
    offset: int,
    length: int | None,
) -> int:
    # Open the artifact first, so a missing one leaves the destination untouched.
    stream = driver.get(container, artifact, offset, length)
    out: IO[bytes] | None = None
    owned = isinstance(dest, (str, os.PathLike))
    try:
        with fence.lock:
            if fence.closed:
                raise _Superseded
            fence.generation += 1
            generation = fence.generation
            if isinstance(dest, (str, os.PathLike)):
                out = open(dest, "wb")  # noqa: SIM115 -- closed in finally, after the loop
            else:
                out = dest
                if fence.start is None:
                    fence.start = out.tell()
                out.seek(fence.start)
        written = 0
        remaining = length
        while remaining is None or remaining > 0:
            chunk = stream.read(CHUNK_SIZE if remaining is None else min(remaining, CHUNK_SIZE))
            if not chunk:
                break
            with fence.lock:
                if fence.closed or fence.generation != generation:
                    raise _Superseded
                out.write(chunk)
                # Flushed under the lock so no buffered bytes of this attempt
                # reach the file after a later attempt has begun.
                out.flush()
            written += len(chunk)
            if remaining is not None:
                remaining -= len(chunk)
        return written
    finally:
        try:
            stream.close()
        finally:
            if owned and out is not None:
                out.close()


def _put_bytes(
    driver: Driver, container: str, artifact: str, data: bytes, metadata: Mapping[str, str] | None
) -> ArtifactInfo:
    return driver.put(container, artifact, io.BytesIO(data), size=len(data), metadata=metadata)


def _list_page(
    driver: Driver,
    container: str,
    prefix: str,
    delimiter: str | None,
    start_after: str | None,
    limit: int,
) -> list[ArtifactInfo | Prefix]:
    entries = driver.list(container, prefix, delimiter, start_after)
    try:
        return list(itertools.islice(entries, limit))
    finally:
        # Lets a generator-based driver release its paginator or connection now.
        close = getattr(entries, "close", None)
        if close is not None:
            close()


class Backend:
    """One configured backend: a driver behind worker threads, timeouts and retries.

    ``name`` is the backend's configured name, used as the ``backend`` label of
    every metric.  ``retries`` is the number of retries after the first
    attempt (``0`` disables retrying); ``timeout`` bounds each attempt.

    The constructor needs no running trio loop.  Close with :meth:`aclose`
    (or use ``async with``).  A synchronous caller such as the CLI uses
    ``trio.run(backend.stat, container, artifact)``; sequential ``trio.run``
    calls may share one backend.
    """

    def __init__(
        self,
        name: str,
        driver: Driver,
        *,
        workers: int = 16,
        timeout: float = 60.0,
        retries: int = 5,
        backoff_base: float = 0.05,
        backoff_max: float = 5.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must not be negative")
        if backoff_base < 0 or backoff_max < backoff_base:
            raise ValueError("need 0 <= backoff_base <= backoff_max")
        self.name = name
        self._driver = driver
        self._limiter = trio.CapacityLimiter(workers)
        self._timeout = timeout
        self._retries = retries
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._health = HealthState(ok=False)
        self._closed = False
        # How long recent gets took to start answering, appended from worker threads (atomic).
        self._get_times: collections.deque[float] = collections.deque(maxlen=GET_TIMINGS)
        metrics.BACKEND_HEALTHY.labels(name).set(0)
        metrics.register_driver(name, driver)

    # -- state -----------------------------------------------------------
    @property
    def driver_name(self) -> str:
        """The driver's registered name (``memory``, ``s3`` ...), the ``driver`` metric label."""
        return self._driver.name

    @property
    def healthy(self) -> HealthState:
        """The last health check's result and time; truthy if it succeeded."""
        return self._health

    @property
    def get_latency(self) -> float | None:
        """Seconds the quickest of the latest gets took to start answering; None before a few.

        Timed in the worker thread, from the request until the driver's stream
        is there (the transfer and the wait for a thread left out), and the
        quickest, not the typical: gets side by side wait for each other and for
        the CPU, the quickest shows what the backend itself costs.
        """
        return min(self._get_times) if len(self._get_times) >= GET_TIMINGS_NEEDED else None

    # -- artifacts -------------------------------------------------------
    async def stat(self, container: str, artifact: str) -> ArtifactInfo:
        """The artifact's info, metadata included."""
        return await self._run("stat", f"{container}/{artifact}", self._driver.stat, container, artifact)

    async def list_page(
        self,
        container: str,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
        limit: int = 1000,
    ) -> list[ArtifactInfo | Prefix]:
        """At most ``limit`` listing entries after ``start_after``, in name order.

        The driver's iterator runs in the worker thread and is closed after
        ``limit`` entries, so a huge listing is fetched a page at a time.  The
        next page starts after the last entry's name; a page shorter than
        ``limit`` is the last.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return await self._run(
            "list",
            f"{container}/{prefix}",
            _list_page,
            self._driver,
            container,
            prefix,
            delimiter,
            start_after,
            limit,
        )

    async def read(self, container: str, artifact: str, offset: int, length: int) -> bytes:
        """The artifact's bytes ``[offset, offset+length)``, fewer only at its end.

        Opens, reads fully and closes the driver's stream within one worker
        thread call.  The bytes are held in memory: meant for blocks, not whole
        artifacts (see :meth:`read_into_file`).
        """
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        data = await self._run(
            "get",
            f"{container}/{artifact}",
            _read_range,
            self._driver,
            container,
            artifact,
            offset,
            length,
            self._get_times.append,
        )
        self._count_bytes("read", len(data))
        return data

    async def read_blocks(
        self,
        container: str,
        artifact: str,
        offset: int,
        length: int,
        block_size: int,
        new_block: Callable[[], bytearray] | None = None,
        arrived: Callable[[int, bytearray], None] | None = None,
    ) -> list[bytearray]:
        """The bytes ``[offset, offset+length)`` as consecutive blocks of ``block_size``.

        Like :meth:`read`, fewer bytes only at the artifact's end (the last block
        is then short, and none follow).  The driver's stream fills each block
        in place: no joining or splitting copies.  ``new_block`` supplies the
        buffers of whole blocks (``block_size`` bytes each; called in the worker
        thread, so it must be thread-safe), which lets the caller reuse memory; a
        range ending in a shorter block gets a buffer of that size; buffers taken
        by a failed or abandoned attempt are never returned, since an abandoned
        attempt may still be writing into them.  ``arrived(i, block)`` is called
        in the worker thread as each block is complete (the driver no longer
        writes into it), so the caller can use it before the whole range is in;
        a retried call may report a block again, an abandoned attempt even
        after the call has ended.
        """
        if offset < 0 or length < 0 or block_size < 1:
            raise ValueError("offset and length must not be negative, block_size must be positive")
        blocks = await self._run(
            "get",
            f"{container}/{artifact}",
            _read_blocks,
            self._driver,
            container,
            artifact,
            offset,
            length,
            block_size,
            new_block or (lambda: bytearray(block_size)),
            arrived,
            self._get_times.append,
        )
        self._count_bytes("read", sum(len(b) for b in blocks))
        return blocks

    async def read_into_file(
        self,
        container: str,
        artifact: str,
        dest: str | os.PathLike[str] | IO[bytes],
        offset: int = 0,
        length: int | None = None,
    ) -> int:
        """Copy the artifact (or ``length`` bytes from ``offset``) into a local file; return the count.

        ``dest`` is a path, created or truncated, or a seekable binary file object,
        written from its position at the call (each retry rewinds to it; bytes
        past the returned count are unspecified).  Data moves in chunks of at
        most :data:`CHUNK_SIZE`.  After a failure the file holds partial data
        and should be discarded.
        """
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        fence = _WriteFence()
        try:
            written = await self._run(
                "get",
                f"{container}/{artifact}",
                _copy_to_file,
                self._driver,
                fence,
                container,
                artifact,
                dest,
                offset,
                length,
            )
        finally:
            fence.closed = True
        self._count_bytes("read", written)
        return written

    async def put_file(
        self,
        container: str,
        artifact: str,
        path: str | os.PathLike[str],
        metadata: Mapping[str, str] | None = None,
        *,
        adopt: bool = False,
    ) -> ArtifactInfo:
        """Upload a local file as the artifact, replacing it whole.

        Each attempt hands ``path`` to the driver's ``put_file``, which opens
        it afresh and sends it from its first byte, so the file must not change
        until this returns.  ``adopt=True`` promises that the caller never
        writes the file again: the driver may keep the file itself as the
        artifact's data (see :meth:`drivers.base.Driver.put_file`).
        """
        info = await self._run(
            "put",
            f"{container}/{artifact}",
            functools.partial(self._driver.put_file, adopt=adopt),
            container,
            artifact,
            path,
            metadata,
        )
        self._count_bytes("written", info.size)
        return info

    async def put_bytes(
        self, container: str, artifact: str, data: bytes, metadata: Mapping[str, str] | None = None
    ) -> ArtifactInfo:
        """Store ``data`` as the artifact, replacing it whole (for small artifacts and markers)."""
        info = await self._run(
            "put", f"{container}/{artifact}", _put_bytes, self._driver, container, artifact, data, metadata
        )
        self._count_bytes("written", info.size)
        return info

    async def delete(self, container: str, artifact: str) -> None:
        """Delete the artifact; deleting a missing artifact succeeds."""
        await self._run("delete", f"{container}/{artifact}", self._driver.delete, container, artifact)

    async def copy(
        self,
        container: str,
        artifact: str,
        dst_container: str,
        dst_artifact: str,
        metadata: Mapping[str, str] | None = None,
    ) -> ArtifactInfo:
        """Copy an artifact, with its metadata unless ``metadata`` is given."""
        return await self._run(
            "copy",
            f"{container}/{artifact} -> {dst_container}/{dst_artifact}",
            self._driver.copy,
            container,
            artifact,
            dst_container,
            dst_artifact,
            metadata,
        )

    async def update_metadata(
        self, container: str, artifact: str, metadata: Mapping[str, str]
    ) -> ArtifactInfo:
        """Replace the artifact's user metadata, keeping its content."""
        return await self._run(
            "update_metadata",
            f"{container}/{artifact}",
            self._driver.update_metadata,
            container,
            artifact,
            metadata,
        )

    # -- containers ------------------------------------------------------
    async def containers(self) -> list[str]:
        """The names of the containers, sorted."""
        return await self._run("containers", "", self._driver.containers)

    async def create_container(self, container: str) -> None:
        """Create a container; ``AlreadyExists`` if it exists (see the module notes on retries)."""
        await self._run("create_container", container, self._driver.create_container, container)

    async def delete_container(self, container: str) -> None:
        """Delete an empty container; ``NotEmpty`` if it holds artifacts."""
        await self._run("delete_container", container, self._driver.delete_container, container)

    # -- operations ------------------------------------------------------
    async def health_check(self) -> float:
        """Ask the driver whether the backend answers; return the latency in seconds.

        One attempt, no retries: the answer should describe the backend now.
        Updates :attr:`healthy` and ``vaultfs_backend_healthy``, then re-raises
        a failure (a timeout is ``Unavailable``).
        """
        started = time.monotonic()
        try:
            await self._run("health_check", "", self._driver.health_check, retry=False)
        except Exception as exc:
            # Warn when the state changes; a backend that stays down is checked
            # periodically and would otherwise flood the log.
            first_failure = self._health.ok or self._health.checked_at is None
            self._health = HealthState(ok=False, checked_at=time.time(), error=str(exc) or type(exc).__name__)
            metrics.BACKEND_HEALTHY.labels(self.name).set(0)
            log.log(
                logging.WARNING if first_failure else logging.DEBUG,
                "backend %s: health check failed: %s",
                self.name,
                self._health.error,
            )
            raise
        latency = time.monotonic() - started
        if not self._health:
            log.info("backend %s: healthy (%.3fs)", self.name, latency)
        self._health = HealthState(ok=True, checked_at=time.time(), latency=latency)
        metrics.BACKEND_HEALTHY.labels(self.name).set(1)
        return latency

    async def aclose(self) -> None:
        """Close the driver in a thread and stop exporting its metrics.  Idempotent.

        Calls still in flight are the caller's to finish or cancel first.  A
        driver whose ``close`` outlasts ``timeout`` is abandoned so shutdown
        goes on; errors from it are logged, not raised.
        """
        if self._closed:
            return
        self._closed = True
        metrics.unregister_driver(self.name, self._driver)
        metrics.BACKEND_HEALTHY.labels(self.name).set(0)
        self._health = HealthState(ok=False, checked_at=time.time(), error="closed")
        try:
            with trio.move_on_after(self._timeout) as scope:
                # Not under the limiter: hung calls holding every worker must not block shutdown.
                await trio.to_thread.run_sync(self._driver.close, abandon_on_cancel=True)
            if scope.cancelled_caught:
                log.warning("backend %s: driver close timed out after %gs", self.name, self._timeout)
        except Exception:
            log.warning("backend %s: driver close failed", self.name, exc_info=True)

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- machinery -------------------------------------------------------
    async def _run(
        self, operation: str, target: str, fn: Callable[..., T], *args: Any, retry: bool = True
    ) -> T:
        if self._closed:
            raise RuntimeError(f"backend {self.name} is closed")
        attempts = self._retries + 1 if retry else 1
        # A fresh AsyncRetrying per call: tenacity keeps per-call state on the
        # object (thread-local, and every trio task shares one thread).
        retrying = tenacity.AsyncRetrying(
            sleep=trio.sleep,
            stop=tenacity.stop_after_attempt(attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(Unavailable),
            before_sleep=lambda state: self._before_sleep(operation, target, attempts, state),
            # Without reraise tenacity wraps the last error (and trio.Cancelled
            # along with it) in RetryError.
            reraise=True,
        )
        try:
            return await retrying(self._attempt, operation, target, fn, *args)
        except Unavailable as exc:
            if attempts > 1:
                log.warning(
                    "backend %s: %s %s failed after %d attempts: %s",
                    self.name,
                    operation,
                    target,
                    attempts,
                    exc,
                )
            raise

    async def _attempt(self, operation: str, target: str, fn: Callable[..., T], *args: Any) -> T:
        error: BaseException | None = None
        started = time.monotonic()
        try:
            with trio.fail_after(self._timeout):
                return await trio.to_thread.run_sync(
                    fn,
                    *args,
                    limiter=self._limiter,
                    abandon_on_cancel=True,
                    thread_name=f"vaultfs {self.name} {operation}",
                )
        except trio.TooSlowError:
            what = f"{operation} {target}" if target else operation
            error = Unavailable(f"{what} timed out after {self._timeout:g}s")
            raise error from None
        except BaseException as exc:
            error = exc
            raise
        finally:
            driver = self._driver.name
            metrics.DRIVER_OPERATIONS.labels(self.name, driver, operation, outcome_of(error)).inc()
            metrics.DRIVER_OPERATION_DURATION.labels(self.name, driver, operation).observe(
                time.monotonic() - started
            )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** (state.attempt_number - 1))
        # Half fixed, half random: retries from many tasks spread out, and each
        # wait is at least as long as the previous one could have been.
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        exc = state.outcome.exception() if state.outcome is not None else None
        hint = getattr(exc, "retry_after", None)
        if isinstance(hint, (int, float)) and hint > delay:
            delay = min(float(hint), self._backoff_max)
        return delay

    def _before_sleep(
        self, operation: str, target: str, attempts: int, state: tenacity.RetryCallState
    ) -> None:
        metrics.DRIVER_RETRIES.labels(self.name, self._driver.name, operation).inc()
        exc = state.outcome.exception() if state.outcome is not None else None
        sleep = state.next_action.sleep if state.next_action is not None else 0.0
        level = logging.DEBUG if state.attempt_number < _QUIET_ATTEMPTS else logging.WARNING
        log.log(
            level,
            "backend %s: %s %s failed (attempt %d of %d), retrying in %.3fs: %s",
            self.name,
            operation,
            target,
            state.attempt_number,
            attempts,
            sleep,
            exc,
        )

    def _count_bytes(self, direction: str, n: int) -> None:
        if n > 0:
            metrics.DRIVER_BYTES.labels(self.name, self._driver.name, direction).inc(n)
