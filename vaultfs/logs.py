"""Where the log goes and how its lines look: a terminal or file, journald, or syslog.

* A terminal or a file (``--log-file``) gets ``TIME LEVEL LOGGER: message``.
* Standard error that systemd connected to the journal (``$JOURNAL_STREAM``
  names that very stream) gets no timestamp, since journald adds its own, and
  a ``<N>`` syslog priority prefix that journald turns into the entry's
  priority (``journalctl -p err`` then works).
* A daemon that detached from its terminal without a log file sends its log to
  the local syslog socket (``/dev/log``, which journald also serves); with no
  syslog either, the log is dropped, as a detached daemon has nowhere to write.

:class:`RecentErrors` keeps the last warnings and errors in memory for
``/healthz`` and ``vaultfs status``.  Messages are written without secrets by
their callers (see the design notes); nothing here filters them.
"""

from __future__ import annotations

import collections
import logging
import logging.handlers
import os
import sys
import threading
import time
from typing import Any, TextIO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "<%(priority)d>%(levelname)s %(name)s: %(message)s"
SYSLOG_FORMAT = "vaultfs[%(process)d]: %(levelname)s %(name)s: %(message)s"
SYSLOG_SOCKET = "/dev/log"

#: syslog priorities by logging level (the nearest one at or below).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority(levelno: int) -> int:
    """The syslog priority of a logging level: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    for level, value in _PRIORITIES:
        if levelno >= level:
            return value
    return 7


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        value = priority(record.levelno)
        # Read by the format string as %(priority)d.
        record.priority = value  # type: ignore[attr-defined]
        text = super().format(record)
        # journald splits on newlines; a traceback's later lines keep the priority
        # only if each carries the prefix.
        prefix = f"<{value}>"
        return text.replace("\n", "\n" + prefix)


def journal_stream(stream: TextIO | None = None, environ: Any = None) -> bool:
    """Whether ``stream`` (standard error) is the journal stream systemd gave us.

    ``$JOURNAL_STREAM`` is ``DEVICE:INODE`` of that stream; comparing it with
    the stream's own numbers tells a real journal connection from one that a
    child inherited after its output was redirected elsewhere.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("JOURNAL_STREAM", "")
    stream = sys.stderr if stream is None else stream
    if not value or stream is None:
        return False
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class _State:
    # The handler configure() added, so a later call replaces only that one.
    handler: logging.Handler | None = None
    file: str | None = None


_lock = threading.Lock()


def _install(handler: logging.Handler) -> None:
    root = logging.getLogger()
    if _State.handler is not None:
        root.removeHandler(_State.handler)
        _State.handler.close()
    root.addHandler(handler)
    _State.handler = handler


def configure(level: str = "WARNING", file: str | None = None) -> None:
    """Log records at ``level`` and above to ``file``, else to standard error; may be called again.

    A second call replaces the handler the first added and leaves any other alone.
    """
    with _lock:
        handler: logging.Handler
        if file:
            handler = logging.FileHandler(file)
            handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
        else:
            handler = logging.StreamHandler(sys.stderr)
            if journal_stream(sys.stderr):
                handler.setFormatter(_JournalFormatter(JOURNAL_FORMAT))
            else:
                handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
        _install(handler)
        _State.file = file
        logging.getLogger().setLevel(level.upper())
        # botocore's and urllib3's debug output includes request headers, among
        # them the access key id: never let them log below INFO.
        for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
            logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))


def keeps_stderr() -> bool:
    """Whether a detaching daemon should keep standard error: it is the journal."""
    return _State.file is None and journal_stream(sys.stderr)


def detached() -> None:
    """Called by a daemon that has just dropped its terminal: move a standard-error log to syslog.

    A log file, or standard error that is the journal, stays as it is.
    """
    with _lock:
        if _State.file is not None or journal_stream(sys.stderr):
            return
        handler: logging.Handler = logging.NullHandler()
        # SysLogHandler accepts a missing socket and fails on every record instead.
        if os.path.exists(SYSLOG_SOCKET):
            try:
                handler = logging.handlers.SysLogHandler(
                    address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON
                )
            except OSError:
                pass
            else:
                handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
        _install(handler)


class RecentErrors(logging.Handler):
    """Keeps the last ``size`` records at WARNING and above, for health reports.

    Records arrive from any thread; :meth:`entries` may be called from any other.
    """

    def __init__(self, size: int = 20) -> None:
        super().__init__(logging.WARNING)
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._count = 0
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        """Remember ``record``'s time, level, logger and message (without a traceback)."""
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not break logging
            message = str(record.msg)
        entry = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        with self._guard:
            self._entries.append(entry)
            self._count += 1

    def entries(self) -> list[dict[str, Any]]:
        """The remembered records, oldest first."""
        with self._guard:
            return list(self._entries)

    @property
    def count(self) -> int:
        """How many records arrived since the start (not only those remembered)."""
        return self._count

    def install(self) -> RecentErrors:
        """Attach to the root logger; return self."""
        logging.getLogger().addHandler(self)
        return self

    def remove(self) -> None:
        """Detach from the root logger."""
        logging.getLogger().removeHandler(self)


def timestamp(seconds: float) -> str:
    """A local ``YYYY-MM-DD HH:MM:SS`` for a wall-clock time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
