"""The systemd notification protocol (sd_notify), as a small datagram sender.

systemd passes ``NOTIFY_SOCKET`` to a ``Type=notify`` service: the path of an
``AF_UNIX`` datagram socket, or an abstract socket name written with a leading
``@``.  Each message is one datagram of ``KEY=VALUE`` lines: ``READY=1`` once
the service works, ``STATUS=...`` for ``systemctl status``, ``WATCHDOG=1`` at
least every ``WATCHDOG_USEC`` microseconds when ``WatchdogSec=`` is set,
``STOPPING=1`` when shutdown starts and ``EXTEND_TIMEOUT_USEC=N`` to ask for
more time while stopping.

Without ``NOTIFY_SOCKET`` every method does nothing, so callers need no
"under systemd?" checks.  Sending never raises: a lost notification must not
take the mount down (systemd will time the service out instead, which says
more than a crash would).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

#: The variables systemd sets for the notification protocol.
ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def forget_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Remove the notification variables, so this process and its children never notify.

    For a process that is not the service's main process (a daemon forked
    from it): systemd ignores or, worse, misattributes its messages.
    """
    environ = os.environ if environ is None else environ
    for name in ENVIRONMENT:
        environ.pop(name, None)


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # An abstract socket: the kernel's name starts with a NUL byte instead of "@".
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends notifications to the socket named by ``NOTIFY_SOCKET``, if any.

    ``environ`` defaults to ``os.environ`` and is read once, here.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        raw = environ.get("NOTIFY_SOCKET", "")
        self._address = _address(raw) if raw else None
        if raw and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket; not notifying", raw)
        self._watchdog_usec = self._read_watchdog(environ)
        self._socket: socket.socket | None = None

    @staticmethod
    def _read_watchdog(environ: Mapping[str, str]) -> int:
        try:
            usec = int(environ.get("WATCHDOG_USEC", "0"))
        except ValueError:
            return 0
        pid = environ.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process the watchdog is meant for; a child that
        # inherited the variables must not ping on its parent's behalf.
        if pid and pid != str(os.getpid()):
            return 0
        return max(0, usec)

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or ``None`` without a watchdog."""
        if not self.enabled or self._watchdog_usec <= 0:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def send(self, **fields: str | int) -> bool:
        """Send one message of ``KEY=VALUE`` lines; return whether it was sent.

        Keys are the protocol's names (``READY``, ``STATUS`` ...); a value must
        not contain a newline (one is replaced by a space).
        """
        if self._address is None or not fields:
            return False
        text = "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(text.encode(), self._address)
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", ", ".join(fields), exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: the mount is live."""
        return self.send(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        """``STATUS=text``, shown by ``systemctl status``."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the main loop is alive."""
        return self.send(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send(STOPPING=1, **({"STATUS": status} if status else {}))

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: we need up to ``seconds`` more before the next message."""
        return self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))

    def close(self) -> None:
        """Close the socket; a later message opens a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
