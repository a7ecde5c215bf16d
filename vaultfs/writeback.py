"""Asynchronous write-back: a durable journal of pending uploads, and the workers that upload them.

The open-file layer hands over a staged file when it is flushed; from then on
the file belongs to write-back and is never written again (its owner copies it
before writing more).  :meth:`WriteBack.submit` queues the upload at once and
returns as soon as the version is either stored or durable in the journal.
How long it waits for the upload before it writes the journal record depends
on what both cost here: a record is timed as the workers start
(:meth:`WriteBack.calibrate`), uploads as they end (the median of recent
small files' uploads):

* a quick backend, whose small uploads take at most :data:`QUICK` times what
  a record costs and under :data:`HEDGE_MAX` (a server on this machine or
  nearby, a local directory), gets up to :data:`HEDGE_MAX`: it stores a small file with no local fsync at
  all, where on a busy disk each fsync can cost more than such a PUT;
* a slower or remote one gets as long as a record costs, then the record is
  written (the classic rent-or-buy answer): a close costs a millisecond or
  two on an idle SSD instead of a remote PUT's tens, and the uploads go on in
  the background side by side.

A large file is also given about as long as fsyncing its data would take.

The journal is one small JSON record per pending version, in the staging
directory beside the staged data (``journal-SEQ.json``)::

    {"format": 1, "backend": NAME, "container": C, "artifact": KEY,
     "staging": FILE-NAME, "metadata": {...}, "size": N, "mtime_ns": N, "seq": SEQ}

A record is made durable in this order: fsync the staged data, write the
record to a temporary name and fsync it, rename it into place, fsync the
directory.  After a crash a record is therefore either absent (the flush had
not returned, or the version was already stored) or complete and names
complete data.  A record is never created after its version left the queue:
removal waits for a record write under way.

Ordering rules:

* Versions of one artifact are uploaded one at a time, oldest first; a version
  submitted while an older one is still queued (not started) replaces it, so an
  old version is never uploaded after a newer one.
* A version is *safe* once it is stored, its record is durable, or a newer
  version that replaced it is safe; ``submit`` returns only then.  A record is
  removed only once its version is safe and no longer needed (stored, or
  replaced by a safe newer version, or the artifact deleted).  Removal is made
  durable (directory fsync) before the caller goes on, so a deleted file is
  never brought back by replay.
* At start-up :meth:`WriteBack.replay` keeps the newest record per artifact
  (highest ``seq``) and queues it again.

Failed uploads (after the backend's own retries) stay queued and are tried
again after a backoff that doubles from :data:`RETRY_BASE` to
:data:`RETRY_MAX`; their data is never dropped.

Everything here runs on the trio loop except the file-system work of
:meth:`WriteBack.submit` and record removal, which runs in a worker thread.
Await points (where other tasks may change the queue) are those thread calls
and the upload itself; each method re-reads the queue after them.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from drivers.base import ArtifactInfo
from drivers.errors import DriverError, Unavailable

from . import metrics

log = logging.getLogger(__name__)

FORMAT = 1
RECORD_PREFIX = "journal-"
RECORD_SUFFIX = ".json"
#: Seconds before the first retry of a failed upload; doubles up to :data:`RETRY_MAX`.
RETRY_BASE = 1.0
RETRY_MAX = 60.0
#: The longest :meth:`WriteBack.submit` gives an upload before it journals it instead.
HEDGE_MAX = 0.05
#: A backend is quick while its recent small uploads take at most this many times what a journal
#: record costs.  Break-even (1) is not enough: a record costs more than the close sees (three
#: fsyncs of staged data, record and directory, then the record's removal and another directory
#: fsync, all competing with the uploads).  A first version that journaled once uploads took over
#: about twice a record made 2,000 small creates about 15% slower on this project's machines, on
#: the local driver (about 1.5 ms a file) and on a local S3 server (3 ms), against records timed
#: at 0.6 ms; with 8 both stay quick.
QUICK = 8
#: Uploads of files up to this size are timed: a larger file's upload is about its data.
SMALL_FILE = 1 << 20
#: The upload time is the median of this many recent timings.
TIMINGS = 15
#: :meth:`WriteBack.calibrate` keeps the quickest of this many probe records.
PROBES = 3
#: Plus one second per this many bytes: a record needs the staged data fsynced first, which costs
#: about that long on a local disk, so a large file gains nothing from journaling an upload that
#: is making progress, and would only write its data to the disk twice.
HEDGE_RATE = 256 * 1024 * 1024

Key = tuple[str, str]
#: Uploads a local file as (container, artifact) with metadata: ``Backend.put_file``.
PutFile = Callable[[str, str, str, Mapping[str, str]], Awaitable[ArtifactInfo]]
#: Told that the newest pending version of an artifact is stored, with what the backend answered.
OnStored = Callable[["Upload", ArtifactInfo], None]


@dataclass(eq=False)
class Upload:
    """One pending version of an artifact."""

    container: str
    artifact: str
    staging: Path
    metadata: dict[str, str]
    size: int
    mtime_ns: int
    seq: int
    record: Path
    #: ``trio.current_time()`` the artifact started waiting (kept when a newer version replaces this one).
    since: float = 0.0
    attempts: int = 0
    not_before: float = 0.0
    uploading: bool = False
    #: The failure of the last attempt, None after a success.
    error: BaseException | None = None
    #: Set, and replaced, whenever an attempt ends.
    attempted: trio.Event = field(default_factory=trio.Event)
    #: Set, and replaced, whenever an attempt ends or the version becomes safe.
    changed: trio.Event = field(default_factory=trio.Event)
    #: Set once losing this version is impossible: it is stored, its record is durable, a newer
    #: version that replaced it is safe, or the artifact was deleted.
    safe: trio.Event = field(default_factory=trio.Event)
    #: Older versions this one replaced before they were stored; their records are kept until this
    #: version is safe, so a crash in between still finds one of them.
    replaces: list[Upload] = field(default_factory=list)
    #: Its journal record: "none", "writing" or "durable" (replayed versions are durable).
    journal: str = "none"
    #: Set once a record write has ended, whatever its outcome.
    journaled: trio.Event = field(default_factory=trio.Event)

    def poke(self) -> None:
        """Wake whoever waits for ``changed``."""
        event, self.changed = self.changed, trio.Event()
        event.set()

    @property
    def key(self) -> Key:
        return (self.container, self.artifact)

    def body(self, backend: str) -> dict[str, object]:
        """The journal record's content."""
        return {
            "format": FORMAT,
            "backend": backend,
            "container": self.container,
            "artifact": self.artifact,
            "staging": self.staging.name,
            "metadata": self.metadata,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "seq": self.seq,
        }


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteBack:
    """The write-back queue and journal of one backend.

    ``directory`` holds the staged files and the journal; ``put`` uploads one
    file; at most ``concurrency`` uploads run at once; ``on_stored`` hears when
    the newest pending version of an artifact is in the backend; ``hedge``
    fixes how long :meth:`submit` waits for an upload before journaling it
    (by default :attr:`hedge` follows what uploads have been timed to take and
    :meth:`calibrate` timed a journal record to cost).
    """

    def __init__(
        self,
        directory: Path,
        backend: str,
        put: PutFile,
        concurrency: int,
        on_stored: OnStored | None = None,
        retry_base: float = RETRY_BASE,
        retry_max: float = RETRY_MAX,
        hedge: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.directory = directory
        self.backend = backend
        self._put = put
        self._concurrency = concurrency
        self._on_stored = on_stored
        self._retry_base = retry_base
        self._retry_max = retry_max
        # A fixed hedge (tests), or None: chosen from the timings below.
        self._hedge = hedge
        #: Seconds a journal record costs on this disk (:meth:`calibrate`).
        self.journal_cost = HEDGE_MAX
        #: The median of recent small files' uploads, in seconds (0 until one has ended).
        self.upload_time = 0.0
        self._upload_times: collections.deque[float] = collections.deque(maxlen=TIMINGS)
        #: Set once :meth:`run` has timed a journal record (at once with a fixed hedge).
        self.calibrated = trio.Event()
        metrics.WRITEBACK_JOURNALED.labels(backend)  # exported as 0 until a close journals
        directory.mkdir(parents=True, exist_ok=True)
        # Waiting to start, in submission order; at most one version per artifact.
        self._queued: dict[Key, Upload] = {}
        # Being uploaded now; a newer version of the same artifact waits in _queued.
        self._uploading: dict[Key, Upload] = {}
        # Stored, their records and data being removed (see _upload).
        self._finishing: list[Upload] = []
        self._seq = 0
        self._wakeup = trio.Event()

    # -- what is pending ---------------------------------------------------
    def __len__(self) -> int:
        return len(self._queued.keys() | self._uploading.keys())

    def pending(self, container: str, artifact: str) -> Upload | None:
        """The newest version of the artifact not yet stored, if any."""
        key = (container, artifact)
        return self._queued.get(key) or self._uploading.get(key)

    def _all(self) -> list[Upload]:
        """Every version not yet stored, oldest first."""
        return [*self._uploading.values(), *self._queued.values()]

    def publish(self) -> None:
        """Export queue depth, bytes and the oldest pending upload's age as the write-back gauges."""
        newest = {up.key: up for up in self._all()}  # queued (newer) versions come last and win
        now = trio.current_time()
        oldest = min((up.since or now for up in newest.values()), default=None)
        metrics.WRITEBACK_PENDING.labels(self.backend).set(len(newest))
        metrics.WRITEBACK_PENDING_BYTES.labels(self.backend).set(sum(up.size for up in newest.values()))
        metrics.WRITEBACK_OLDEST_AGE.labels(self.backend).set(0 if oldest is None else max(0.0, now - oldest))
        metrics.WRITEBACK_HEDGE.labels(self.backend).set(self.hedge)

    def _changed(self) -> None:
        self._wakeup.set()
        self._wakeup = trio.Event()
        self.publish()

    # -- handing data over ---------------------------------------------------
    async def submit(
        self,
        container: str,
        artifact: str,
        staging: Path,
        metadata: Mapping[str, str],
        size: int,
        mtime_ns: int,
    ) -> Upload:
        """Queue ``staging`` for upload; return once it is stored or durable in the journal.

        ``staging`` must not change from now on.  The upload starts at once;
        if it has not finished within :attr:`hedge` seconds plus one per
        :data:`HEDGE_RATE` bytes (or fails), the data
        and a journal record naming it are made durable.  A queued older
        version of the same artifact is replaced.  Raises ``OSError`` if the
        journal cannot be written; the version then stays queued in memory.
        Raises the backend's error if it refused the version outright (not
        :class:`~drivers.errors.Unavailable`) within the hedge; the version is
        then dropped and ``staging`` left to the caller.
        """
        self._seq = max(time.time_ns(), self._seq + 1)
        up = Upload(
            container,
            artifact,
            staging,
            dict(metadata),
            size,
            mtime_ns,
            self._seq,
            self.directory / f"{RECORD_PREFIX}{self._seq:020d}{RECORD_SUFFIX}",
        )
        older = self._queued.pop(up.key, None)
        if older is not None:
            # Never uploaded now; its record stays until this version is safe.
            up.replaces, older.replaces = [*older.replaces, older], []
        waiting = older or self._uploading.get(up.key)
        up.since = waiting.since if waiting is not None else trio.current_time()
        self._queued[up.key] = up
        self._changed()
        hedge = self.hedge
        if hedge > 0:
            # A backend that answers quickly stores small files sooner than a
            # journal record becomes durable, and saves the fsyncs.
            with trio.move_on_after(hedge + size / HEDGE_RATE):
                while not up.safe.is_set() and up.error is None:
                    event = up.changed
                    await event.wait()
        if up.safe.is_set():
            return up
        error = up.error
        if (
            isinstance(error, DriverError)
            and not isinstance(error, Unavailable)
            and self._queued.get(up.key) is up
        ):
            # Refused outright (a name the backend does not accept, no permission, no quota):
            # retrying would not help, so the caller gets the error back with its data, as
            # from a synchronous upload.  What this version replaced is still to be stored.
            del self._queued[up.key]
            if up.replaces:
                previous = up.replaces.pop()
                previous.replaces, up.replaces = up.replaces, []
                self._queued[up.key] = previous
            self._changed()
            raise error
        # Not safe yet, and nothing awaited since that check: a newer version made safe from here
        # on waits for this record before removing it.
        up.journal = "writing"
        try:
            await trio.to_thread.run_sync(self._write_record, up)
            metrics.WRITEBACK_JOURNALED.labels(self.backend).inc()
            up.journal = "durable"
        finally:
            if up.journal != "durable":
                up.journal = "none"
            up.journaled.set()
        await self._made_safe(up)
        return up

    async def amend(self, container: str, artifact: str, metadata: Mapping[str, str]) -> bool:
        """Give the artifact's pending data new metadata (chmod, touch); False if nothing is pending."""
        newest = self.pending(container, artifact)
        if newest is None:
            return False
        await self.submit(container, artifact, newest.staging, metadata, newest.size, newest.mtime_ns)
        return True

    @property
    def hedge(self) -> float:
        """Seconds a small file's upload gets before :meth:`submit` journals it instead."""
        if self._hedge is not None:
            return self._hedge
        if self.upload_time <= min(HEDGE_MAX, QUICK * self.journal_cost):
            return HEDGE_MAX  # a quick backend: store small files with no local fsync at all
        # A slow or remote one: wait as long as a record costs, then write one (rent or buy).
        return min(HEDGE_MAX, self.journal_cost)

    def _upload_timed(self, seconds: float) -> None:
        # A median: one slow request must not change how every later close behaves.
        self._upload_times.append(seconds)
        self.upload_time = statistics.median(self._upload_times)

    async def _calibrate_once(self) -> None:
        try:
            if self._hedge is None:
                await trio.to_thread.run_sync(self.calibrate)
        finally:
            self.calibrated.set()

    def calibrate(self) -> float:
        """Time a journal write on this disk (a probe record over 4 KiB of probe data, then
        removed; the quickest of :data:`PROBES`), keep it as :attr:`journal_cost` and return it.

        Blocking: :meth:`run` starts with it in a worker thread (unless the
        hedge is fixed), so a slow disk's fsyncs do not delay the mount; until
        it is done, closes wait as for a quick backend.  The probe's files carry
        the journal's prefix and a suffix replay ignores, and are removed here
        first, so a crash in the middle leaves nothing replay would upload.
        """
        data = self.directory / f"{RECORD_PREFIX}probe-data.tmp"
        record = self.directory / f"{RECORD_PREFIX}probe.probe"
        timings = []
        try:
            for _ in range(PROBES):
                data.unlink(missing_ok=True)
                record.unlink(missing_ok=True)
                data.write_bytes(bytes(4096))
                started = time.perf_counter()
                self._make_durable(data, record, "{}")
                timings.append(time.perf_counter() - started)
            data.unlink()
            record.unlink()
            _fsync_path(self.directory)
        except OSError as exc:
            log.debug("write-back: cannot time a journal write in %s: %s", self.directory, exc)
            return self.journal_cost
        # The quickest: the disk's own cost, not a moment when something else was flushing.
        took = self.journal_cost = min(timings)
        log.debug("write-back: a journal record takes %.1f ms in %s", 1000 * took, self.directory)
        return took

    def _write_record(self, up: Upload) -> None:
        self._make_durable(up.staging, up.record, json.dumps(up.body(self.backend), separators=(",", ":")))

    def _make_durable(self, data: Path, record: Path, body: str) -> None:
        """fsync ``data``, then write ``record`` to a temporary name, fsync it, rename it into place
        and fsync the directory: after a crash the record is absent or complete, and so is its data."""
        _fsync_path(data)
        tmp = record.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, record)
        _fsync_path(self.directory)

    async def _made_safe(self, up: Upload) -> None:
        """``up`` is stored or durable: so is everything it replaced, whose records can go now."""
        replaced, up.replaces = up.replaces, []
        for version in (up, *replaced):
            version.safe.set()
            version.poke()
        for old in replaced:
            await self._remove(old)

    async def _supersede(self, old: Upload, newer: Upload) -> None:
        """``old`` left the queue for ``newer``: remove it once ``newer`` is safe."""
        if newer.safe.is_set():
            old.safe.set()
            old.poke()
            await self._remove(old)
        else:
            newer.replaces.append(old)

    async def _remove(self, up: Upload) -> None:
        """Finish a version that is safe or no longer needed: delete its record, if it has one, and
        its data unless a pending version shares it.

        ``up`` must have left the queue: only a pending version's data is ever submitted again
        (:meth:`amend`), so what shares it now is all that can while the removal runs.
        """
        if up.journal == "writing":
            await up.journaled.wait()  # the record must not appear after it was removed
        others = (*self._finishing, *self._all())
        shared = any(other.staging == up.staging for other in others if other is not up)
        recorded = up.journal == "durable"
        try:
            if recorded:
                await trio.to_thread.run_sync(self._unlink, up, shared, recorded)
            else:
                self._unlink(up, shared, recorded)  # one unlink, no fsync: not worth a thread
        except OSError as exc:
            # At worst the version is uploaded once more after a restart.
            log.error("write-back: cannot remove the journal record %s: %s", up.record, exc)

    def _unlink(self, up: Upload, shared: bool, recorded: bool) -> None:
        if recorded:
            up.record.unlink(missing_ok=True)
        if not shared:
            up.staging.unlink(missing_ok=True)
        if recorded:
            # Durable before anyone relies on it: replay must not bring back what unlink deleted.
            _fsync_path(self.directory)

    # -- waiting ------------------------------------------------------------
    async def sync(self, container: str, artifact: str) -> None:
        """Wait until the artifact's pending versions are stored (an fsync, a rename).

        Starts a backing-off upload now.  Raises the error of a failed attempt
        of the newest version (which stays queued and is retried later).
        """
        while (up := self.pending(container, artifact)) is not None:
            if not up.uploading and up.not_before > 0:
                up.not_before = 0.0
                self._changed()
            event = up.attempted
            await event.wait()
            if up.error is not None and self.pending(container, artifact) is up:
                raise up.error

    async def sync_prefix(self, container: str, prefix: str) -> None:
        """:meth:`sync` every pending artifact whose name starts with ``prefix`` (a directory rename)."""
        for c, artifact in sorted({up.key for up in self._all()}):
            if c == container and artifact.startswith(prefix):
                await self.sync(c, artifact)

    async def cancel(self, container: str, artifact: str) -> None:
        """Drop the artifact's pending versions (unlink): queued ones now, one uploading once it ends."""
        key = (container, artifact)
        while True:
            queued = self._queued.pop(key, None)
            if queued is not None:
                # The artifact is being deleted: none of its versions is needed any more.
                replaced, queued.replaces = queued.replaces, []
                for version in (queued, *replaced):
                    version.safe.set()
                    version.poke()
                    await self._remove(version)
                self._changed()
                continue
            uploading = self._uploading.get(key)
            if uploading is None:
                return
            event = uploading.attempted
            await event.wait()

    async def drain(self) -> int:
        """Upload everything now; return once the queue is empty or each remaining upload has
        failed at least once more since the call (a dead backend must not hang an unmount).
        Returns how many artifacts remain pending."""
        started = {id(up): up.attempts for up in self._all()}
        for up in self._queued.values():
            up.not_before = 0.0
        self._changed()
        while True:
            remaining = self._all()
            if not remaining and not self._finishing:
                return 0
            if remaining and all(up.attempts > started.get(id(up), 0) for up in remaining):
                return len({up.key for up in remaining})
            event = self._wakeup
            await event.wait()

    # -- crash recovery ---------------------------------------------------------
    def replay(self) -> list[Upload]:
        """Queue the versions a previous run left in the journal; return them (oldest first).

        Runs before the mount serves.  Keeps the newest record per artifact,
        removes older and malformed ones, and logs staged files that no record
        names (left by a crash before their file was closed, so never promised):
        those are kept for the user to inspect.
        """
        records: dict[Key, Upload] = {}
        named: set[str] = set()
        for tmp in self.directory.glob(f"{RECORD_PREFIX}*.tmp"):
            tmp.unlink(missing_ok=True)  # a record whose write never finished: its flush failed
        for path in sorted(self.directory.glob(f"{RECORD_PREFIX}*{RECORD_SUFFIX}")):
            up = self._load(path)
            if up is None:
                continue
            named.add(up.staging.name)
            older = records.get(up.key)
            if older is not None and older.seq > up.seq:
                older, up = up, older
            records[up.key] = up
            if older is not None:
                older.record.unlink(missing_ok=True)
                if older.staging != up.staging:
                    older.staging.unlink(missing_ok=True)
        uploads = sorted(records.values(), key=lambda u: u.seq)
        for up in uploads:
            self._queued[up.key] = up  # since=0: run() dates them once the loop has a clock
            self._seq = max(self._seq, up.seq)
        orphans = [
            p.name
            for p in self.directory.iterdir()
            if p.name not in named and not p.name.startswith(RECORD_PREFIX)
        ]
        if uploads:
            log.info("write-back: %d upload(s) left by the previous run are queued again", len(uploads))
        if orphans:
            log.warning(
                "write-back: %d staged file(s) in %s were not closed before a crash and are not uploaded: %s",
                len(orphans),
                self.directory,
                ", ".join(sorted(orphans)[:10]),
            )
        return uploads

    def _load(self, path: Path) -> Upload | None:
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            if body.get("format") != FORMAT or body.get("backend") != self.backend:
                raise ValueError(f"format {body.get('format')!r} of backend {body.get('backend')!r}")
            staging = self.directory / str(body["staging"])
            if os.path.basename(body["staging"]) != body["staging"]:
                raise ValueError("the staging file is not in the journal's directory")
            up = Upload(
                str(body["container"]),
                str(body["artifact"]),
                staging,
                {str(k): str(v) for k, v in dict(body["metadata"]).items()},
                int(body["size"]),
                int(body["mtime_ns"]),
                int(body["seq"]),
                path,
                journal="durable",
            )
            up.safe.set()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("write-back: ignoring the unreadable journal record %s: %s", path, exc)
            return None
        if not staging.exists():
            log.error(
                "write-back: the journal record %s names %s, which is missing; %s/%s is not uploaded",
                path,
                staging,
                up.container,
                up.artifact,
            )
            path.unlink(missing_ok=True)
            return None
        return up

    # -- the workers ---------------------------------------------------------------
    async def run(self) -> None:
        """Upload queued versions, at most ``concurrency`` at a time, for ever."""
        slots = trio.Semaphore(self._concurrency)
        for up in self._queued.values():
            up.since = up.since or trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._calibrate_once)
            while True:
                await slots.acquire()
                up = await self._next()
                nursery.start_soon(self._upload, up, slots)

    async def _next(self) -> Upload:
        """Take the next queued version whose artifact is not uploading and whose backoff is over."""
        while True:
            now = trio.current_time()
            wait = math.inf
            for key, up in self._queued.items():
                if key in self._uploading:
                    continue
                if up.not_before <= now:
                    del self._queued[key]
                    self._uploading[key] = up
                    up.uploading = True
                    return up
                wait = min(wait, up.not_before - now)
            event = self._wakeup
            with trio.move_on_after(wait):
                await event.wait()

    async def _upload(self, up: Upload, slots: trio.Semaphore) -> None:
        try:
            started = time.perf_counter()
            try:
                info = await self._put(up.container, up.artifact, str(up.staging), up.metadata)
            except Exception as exc:
                self._failed(up, exc)
                newer = self._queued.get(up.key)
                if newer is not None and newer is not up:
                    await self._supersede(up, newer)
                return
            up.error = None
            if up.size <= SMALL_FILE:
                self._upload_timed(time.perf_counter() - started)
            # Stored: no longer pending, before anything is awaited.  A metadata change from here on
            # goes to the stored artifact instead of into a new version of this staged data, which
            # _remove is about to delete (in a worker thread, after deciding nothing else uses it).
            del self._uploading[up.key]
            up.uploading = False
            # Until its cleanup is over, its data counts as shared (a version it replaced may hold
            # the same staged file) and drain waits for it (its records must not outlive an unmount).
            self._finishing.append(up)
            try:
                if self.pending(*up.key) is None and self._on_stored is not None:
                    self._on_stored(up, info)
                await self._made_safe(up)
                await self._remove(up)
            finally:
                self._finishing.remove(up)
        finally:
            slots.release()
            event, up.attempted = up.attempted, trio.Event()
            event.set()
            up.poke()
            self._changed()

    def _failed(self, up: Upload, exc: Exception) -> None:
        up.error = exc
        up.attempts += 1
        up.uploading = False
        del self._uploading[up.key]
        metrics.WRITEBACK_FAILURES.labels(self.backend).inc()
        if up.key in self._queued:
            log.info("write-back: upload of %s/%s failed (%s); a newer version follows", *up.key, exc)
            return
        delay = min(self._retry_max, self._retry_base * 2 ** (up.attempts - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)
        up.not_before = trio.current_time() + delay
        self._queued[up.key] = up
        log.log(
            logging.WARNING if up.attempts < 3 else logging.ERROR,
            "write-back: upload of %s/%s failed (attempt %d): %s; retrying in %.1fs, the data stays in %s",
            up.container,
            up.artifact,
            up.attempts,
            exc,
            delay,
            up.staging,
        )
