"""The per-mount HTTP listener: ``/metrics``, ``/healthz`` and ``/readyz``.

Each mount daemon serves its own listener on ``metrics.listen`` (off unless
configured; port 0 picks a free port, which the runtime record and
``vaultfs status`` show).  One daemon serves one backend, so the port tells
mounts apart, and every ``vaultfs_*`` series also carries a ``backend`` label.

* ``/metrics``: the process's prometheus-client registry in the text format,
  process metrics included.  Rendering calls each driver's ``get_metrics()``,
  which may block, so it happens here, in the listener's request thread,
  never on the trio loop.
* ``/healthz``: 200 with a JSON description of the mount when it is mounted
  and its backend's last periodic health check succeeded, else 503 with the
  same body saying why.  Requests never call the backend; the trio loop
  checks it periodically and stores the result in :class:`MountState`.
* ``/readyz``: 200 once the kernel's FUSE INIT is answered and the mount is
  still there, whatever the backend's health (for "is the mount up").

prometheus-client's own server answers every path with the metrics, so this
module has its own small handler on :class:`http.server.ThreadingHTTPServer`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.registry import CollectorRegistry

from . import metrics
from .backend import HealthState
from .logs import RecentErrors

log = logging.getLogger(__name__)

#: Seconds a client may take to send its request before its thread gives up.
REQUEST_TIMEOUT = 10.0

#: FUSE outcomes counted as errors: EIO and unexpected failures, not the
#: ENOENT, EEXIST ... that ordinary programs cause all the time.
FUSE_ERROR_OUTCOMES = frozenset({"eio", "error"})
#: Driver outcomes counted as failures: the backend did not answer, or failed unexpectedly.
DRIVER_ERROR_OUTCOMES = frozenset({"unavailable", "error"})


def _sum_samples(metric: Any, backend: str, suffix: str = "", **match: frozenset[str] | str) -> float:
    """The sum of ``metric``'s samples for ``backend`` whose labels match (a value or a set of values)."""
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if suffix and not sample.name.endswith(suffix):
                continue
            labels = sample.labels
            if labels.get("backend") != backend:
                continue
            if all(
                labels.get(key) in want if isinstance(want, frozenset) else labels.get(key) == want
                for key, want in match.items()
            ):
                total += sample.value
    return total


class MountState:
    """What the listener reports about one mount.

    The trio loop writes it (:meth:`update`); listener threads read it
    (:meth:`health`).  Every access holds one lock, and readers get copies.
    """

    def __init__(
        self,
        name: str,
        mountpoint: str,
        driver: str,
        *,
        health_interval: float,
        recent: RecentErrors | None = None,
    ) -> None:
        self.name = name
        self.mountpoint = mountpoint
        self.driver = driver
        self.pid = os.getpid()
        self.started = time.time()
        self.health_interval = health_interval
        self.recent = recent
        self._lock = threading.Lock()
        self._mounted = False
        self._serving = False
        self._stopping = False
        self._backend = HealthState(ok=False)
        self._open_files = 0
        self._inodes = 0

    def update(
        self,
        *,
        mounted: bool | None = None,
        serving: bool | None = None,
        stopping: bool | None = None,
        backend: HealthState | None = None,
        open_files: int | None = None,
        inodes: int | None = None,
    ) -> None:
        """Set the given fields (from the trio loop)."""
        with self._lock:
            if mounted is not None:
                self._mounted = mounted
            if serving is not None:
                self._serving = serving
            if stopping is not None:
                self._stopping = stopping
            if backend is not None:
                self._backend = backend
            if open_files is not None:
                self._open_files = open_files
            if inodes is not None:
                self._inodes = inodes

    @property
    def backend(self) -> HealthState:
        """The last health check's result."""
        with self._lock:
            return self._backend

    @property
    def mounted(self) -> bool:
        """Whether the kernel still has the mount."""
        with self._lock:
            return self._mounted

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Whether the mount answers requests, and a short body saying so."""
        with self._lock:
            ok = self._mounted and self._serving and not self._stopping
            body = {
                "ready": ok,
                "mounted": self._mounted,
                "serving": self._serving,
                "stopping": self._stopping,
            }
        return ok, body

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the mount is healthy, and the JSON body describing it."""
        with self._lock:
            mounted, serving, stopping = self._mounted, self._serving, self._stopping
            backend, open_files, inodes = self._backend, self._open_files, self._inodes
        ok = mounted and backend.ok
        if not mounted:
            status = "stopping" if stopping else "unmounted"
        elif backend.checked_at is None:
            status = "starting"
        else:
            status = "ok" if backend.ok else "backend unavailable"
        name = self.name
        body: dict[str, Any] = {
            "status": status,
            "mount": {
                "name": name,
                "mountpoint": self.mountpoint,
                "driver": self.driver,
                "pid": self.pid,
                "started": self.started,
                "mounted": mounted,
                "serving": serving,
                "stopping": stopping,
            },
            "backend": {
                "healthy": backend.ok,
                "checked_at": backend.checked_at,
                "latency_seconds": backend.latency,
                "error": backend.error,
                "check_interval_seconds": self.health_interval,
            },
            "files": {"open": open_files, "inodes": inodes},
            "writeback": {
                "pending": int(_sum_samples(metrics.WRITEBACK_PENDING, name)),
                "pending_bytes": int(_sum_samples(metrics.WRITEBACK_PENDING_BYTES, name)),
                "oldest_age_seconds": _sum_samples(metrics.WRITEBACK_OLDEST_AGE, name),
                "failures": int(_sum_samples(metrics.WRITEBACK_FAILURES, name, "_total")),
            },
            "cache": {
                "bytes": int(_sum_samples(metrics.CACHE_BYTES, name)),
                "budget_bytes": int(_sum_samples(metrics.CACHE_BUDGET_BYTES, name)),
                "hits": int(_sum_samples(metrics.CACHE_HITS, name, "_total")),
                "misses": int(_sum_samples(metrics.CACHE_MISSES, name, "_total")),
            },
            "errors": {
                "fuse": int(
                    _sum_samples(metrics.FUSE_OPERATIONS, name, "_total", outcome=FUSE_ERROR_OUTCOMES)
                ),
                "driver": int(
                    _sum_samples(metrics.DRIVER_OPERATIONS, name, "_total", outcome=DRIVER_ERROR_OUTCOMES)
                ),
                "logged": self.recent.count if self.recent is not None else 0,
                "recent": self.recent.entries() if self.recent is not None else [],
            },
        }
        return ok, body


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: MetricsServer) -> None:
        # Read by the base class when it creates the socket, so set first.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.owner = owner
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    server_version = "vaultfs"

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        owner = self.server.owner
        try:
            if path == "/metrics":
                body = generate_latest(owner.registry)
                self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, body, head)
            elif path == "/healthz":
                ok, report = owner.state.health()
                self._send_json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, report, head)
            elif path == "/readyz":
                ok, report = owner.state.ready()
                self._send_json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, report, head)
            elif path == "/":
                text = b"vaultfs: /metrics /healthz /readyz\n"
                self._send(HTTPStatus.OK, "text/plain; charset=utf-8", text, head)
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n", head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; nothing to answer
        except Exception:
            log.exception("HTTP %s failed", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", b"error\n", head)

    def _send_json(self, code: HTTPStatus, body: dict[str, Any], head: bool) -> None:
        data = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
        self._send(code, "application/json", data, head)

    def _send(self, code: HTTPStatus, content_type: str, body: bytes, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes every few seconds would drown the log at INFO.
        log.debug("HTTP %s: " + format, self.client_address[0], *args)


class MetricsServer:
    """A threaded HTTP listener for one mount; closes with :meth:`close` (or ``with``).

    Binding happens in the constructor, so a taken port fails before the mount
    starts; requests are served once :meth:`start` runs the listener thread.
    """

    def __init__(
        self, host: str, port: int, state: MountState, registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.state = state
        self.registry = registry
        self._httpd = _Server((host, port), self)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``HOST:PORT`` actually bound (``[HOST]:PORT`` for IPv6), with the real port when 0 was asked."""
        host, port = self._httpd.server_address[:2]
        host = str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> MetricsServer:
        """Serve requests in a daemon thread; return self."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5}, name="vaultfs http", daemon=True
        )
        self._thread.start()
        log.info("serving /metrics and /healthz on http://%s", self.address)
        return self

    def close(self) -> None:
        """Stop serving and release the port.  Idempotent."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
