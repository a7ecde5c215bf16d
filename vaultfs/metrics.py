"""The process's Prometheus metrics, all named ``vaultfs_*`` and labelled with ``backend``.

Every metric carries the backend's configured name as its ``backend`` label, so
several mounts (or several backends behind one mount) in one process never
share a series.  Units are base units (seconds, bytes); counters end in
``_total``.

Who updates what:

* ``vaultfs.backend`` -- the ``vaultfs_driver_*`` series and ``vaultfs_backend_healthy``.
* the FUSE layer -- ``vaultfs_fuse_*``, ``vaultfs_open_files``, ``vaultfs_inodes`` and
  ``vaultfs_bytes_{read,written}_total`` (bytes seen by applications).
* the block cache and write-back -- ``vaultfs_cache_*`` and ``vaultfs_writeback_*``.

Drivers' own numbers (:meth:`drivers.base.Driver.get_metrics`) are read at
scrape time by :class:`DriverMetricsCollector` and exported as
``vaultfs_driver_reported_<key>{backend,driver}`` gauges.  They cannot be
``vaultfs_driver_<key>``: the memory driver's ``operations`` and ``bytes`` keys
would then clash with the ``vaultfs_driver_operations_total`` and
``vaultfs_driver_bytes_total`` families, and a scrape with two ``# TYPE`` lines
for one family is rejected by Prometheus.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import trio
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from drivers.base import Driver
from drivers.errors import (
    AccessDenied,
    AlreadyExists,
    DriverError,
    InvalidName,
    NameTooLong,
    NotEmpty,
    NotFound,
    QuotaExceeded,
    Unavailable,
)

log = logging.getLogger(__name__)

#: From a 1 ms cache-warm stat to a 60 s multi-gigabyte upload (the default timeout).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# -- driver calls (vaultfs.backend) ------------------------------------------

DRIVER_OPERATIONS = Counter(
    "vaultfs_driver_operations_total",
    "Driver calls (each attempt of a retried call counts), by outcome.",
    ["backend", "driver", "operation", "outcome"],
)
DRIVER_OPERATION_DURATION = Histogram(
    "vaultfs_driver_operation_duration_seconds",
    "Duration of one driver call attempt, including the wait for a free worker thread.",
    ["backend", "driver", "operation"],
    buckets=LATENCY_BUCKETS,
)
DRIVER_BYTES = Counter(
    "vaultfs_driver_bytes_total",
    "Bytes moved by completed driver calls (direction: read or written).",
    ["backend", "driver", "direction"],
)
DRIVER_RETRIES = Counter(
    "vaultfs_driver_retries_total",
    "Driver calls retried after an Unavailable error.",
    ["backend", "driver", "operation"],
)
BACKEND_HEALTHY = Gauge(
    "vaultfs_backend_healthy",
    "1 if the backend's last health check succeeded, else 0.",
    ["backend"],
)

# -- FUSE layer ------------------------------------------------------------

FUSE_OPERATIONS = Counter(
    "vaultfs_fuse_operations_total",
    "FUSE requests handled, by outcome.",
    ["backend", "operation", "outcome"],
)
FUSE_OPERATION_DURATION = Histogram(
    "vaultfs_fuse_operation_duration_seconds",
    "Time to answer one FUSE request.",
    ["backend", "operation"],
    buckets=LATENCY_BUCKETS,
)


@functools.cache
def fuse_operation(backend: str, operation: str, outcome: str) -> Any:
    """The ``vaultfs_fuse_operations_total`` child of these labels (looked up once, not per request)."""
    return FUSE_OPERATIONS.labels(backend, operation, outcome)


@functools.cache
def fuse_duration(backend: str, operation: str) -> Any:
    """The ``vaultfs_fuse_operation_duration_seconds`` child of these labels (looked up once)."""
    return FUSE_OPERATION_DURATION.labels(backend, operation)


OPEN_FILES = Gauge("vaultfs_open_files", "File handles open on the mount.", ["backend"])
INODES = Gauge("vaultfs_inodes", "Inodes the mount currently knows.", ["backend"])
BYTES_READ = Counter("vaultfs_bytes_read_total", "Bytes returned to applications by read.", ["backend"])
BYTES_WRITTEN = Counter(
    "vaultfs_bytes_written_total", "Bytes accepted from applications by write.", ["backend"]
)

# -- block cache -------------------------------------------------------------

CACHE_HITS = Counter("vaultfs_cache_hits_total", "Block cache lookups answered from the cache.", ["backend"])
CACHE_MISSES = Counter(
    "vaultfs_cache_misses_total", "Block cache lookups that went to the backend.", ["backend"]
)
CACHE_EVICTIONS = Counter("vaultfs_cache_evictions_total", "Blocks evicted from the cache.", ["backend"])
CACHE_BYTES = Gauge("vaultfs_cache_bytes", "Bytes held by the block cache on disk.", ["backend"])
CACHE_BUDGET_BYTES = Gauge("vaultfs_cache_budget_bytes", "The block cache's byte budget.", ["backend"])

# -- write-back --------------------------------------------------------------

WRITEBACK_PENDING = Gauge(
    "vaultfs_writeback_pending", "Uploads waiting in the write-back queue.", ["backend"]
)
WRITEBACK_PENDING_BYTES = Gauge(
    "vaultfs_writeback_pending_bytes", "Bytes waiting in the write-back queue.", ["backend"]
)
WRITEBACK_OLDEST_AGE = Gauge(
    "vaultfs_writeback_oldest_age_seconds", "Age of the oldest pending upload (0 when none).", ["backend"]
)
WRITEBACK_HEDGE = Gauge(
    "vaultfs_writeback_hedge_seconds",
    "How long a close waits for a small file's upload before it journals the file instead.",
    ["backend"],
)
WRITEBACK_JOURNALED = Counter(
    "vaultfs_writeback_journaled_total",
    "Journal records written: a close (or a metadata change of a pending file) whose upload had "
    "not finished within the hedge, or had failed.",
    ["backend"],
)
WRITEBACK_FAILURES = Counter(
    "vaultfs_writeback_failures_total", "Upload attempts from the write-back queue that failed.", ["backend"]
)

# -- outcomes --------------------------------------------------------------

# Looked up along the exception's MRO, so a subclass (NameTooLong) gets its own
# label before its base's (InvalidName), and a driver's private subclass of
# NotFound still counts as not_found.
_OUTCOMES: dict[type[BaseException], str] = {
    NotFound: "not_found",
    AccessDenied: "access_denied",
    QuotaExceeded: "quota_exceeded",
    AlreadyExists: "already_exists",
    NotEmpty: "not_empty",
    NameTooLong: "name_too_long",
    InvalidName: "invalid_name",
    Unavailable: "unavailable",
    DriverError: "error",
    trio.Cancelled: "cancelled",
}


def outcome_of(exc: BaseException | None) -> str:
    """The ``outcome`` label for a call that raised ``exc`` (``None``: it succeeded).

    One of ``ok``, ``not_found``, ``access_denied``, ``quota_exceeded``,
    ``already_exists``, ``not_empty``, ``name_too_long``, ``invalid_name``,
    ``unavailable``, ``cancelled`` or ``error`` (anything else, driver bugs
    included).  The set is closed so the label's cardinality stays bounded.
    """
    if exc is None:
        return "ok"
    for cls in type(exc).__mro__:
        label = _OUTCOMES.get(cls)
        if label is not None:
            return label
    return "error"


# -- driver-reported metrics -------------------------------------------------

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


class DriverMetricsCollector(Collector):
    """Exports each registered driver's ``get_metrics()`` as gauges at scrape time.

    ``collect`` calls ``get_metrics()`` on the scraping thread.  Drivers are
    expected to answer from counters they keep, but nothing stops one from
    doing I/O, so a trio program must render ``/metrics`` in a worker thread,
    never on the trio loop.
    """

    def __init__(self) -> None:
        # Registration happens on the trio thread, collection on the HTTP
        # server's thread.
        self._lock = threading.Lock()
        self._drivers: dict[str, Driver] = {}

    def register(self, backend: str, driver: Driver) -> None:
        """Export ``driver``'s metrics under ``backend``, replacing any earlier driver of that name."""
        with self._lock:
            self._drivers[backend] = driver

    def unregister(self, backend: str, driver: Driver | None = None) -> None:
        """Stop exporting ``backend``; with ``driver``, only if that is still the one registered."""
        with self._lock:
            if driver is None or self._drivers.get(backend) is driver:
                self._drivers.pop(backend, None)

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on which drivers are registered at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield one gauge family per metric key, with a sample per backend reporting it."""
        with self._lock:
            drivers = list(self._drivers.items())
        families: dict[str, GaugeMetricFamily] = {}
        for backend, driver in sorted(drivers):
            try:
                values = driver.get_metrics()
            except Exception:
                # One broken driver must not take the whole scrape down with it.
                log.warning("backend %s: get_metrics() failed", backend, exc_info=True)
                continue
            for key, value in sorted(values.items()):
                name = "vaultfs_driver_reported_" + _INVALID_NAME_CHARS.sub("_", str(key))
                family = families.get(name)
                if family is None:
                    family = GaugeMetricFamily(
                        name, f"Driver-reported value {key!r}.", labels=["backend", "driver"]
                    )
                    families[name] = family
                try:
                    family.add_metric([backend, driver.name], float(value))
                except (TypeError, ValueError):
                    log.debug("backend %s: metric %r is not a number, skipped", backend, key)
        yield from families.values()


DRIVER_METRICS = DriverMetricsCollector()
REGISTRY.register(DRIVER_METRICS)


def register_driver(backend: str, driver: Driver) -> None:
    """Export ``driver.get_metrics()`` as ``vaultfs_driver_reported_<key>{backend,driver}``."""
    DRIVER_METRICS.register(backend, driver)


def unregister_driver(backend: str, driver: Driver | None = None) -> None:
    """Stop exporting the driver registered for ``backend`` (only ``driver``, when given)."""
    DRIVER_METRICS.unregister(backend, driver)
