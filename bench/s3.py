"""The benchmark's S3 server and the bare boto3 reference workloads against it.

The server is the test suite's SeaweedFS fixture (``tests/s3server.py``, one
pinned ``weed mini`` command line) with two flags changed for volume: 1 GiB
volumes instead of 64 MiB ones, and a vacuum between targets so deleted
gigabytes are given back.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from latency import LatencyProxy
from procs import free_port
from s3server import SeaweedServer  # the tests' fixture, reused as a library

log = logging.getLogger("bench")
MiB = 1 << 20


class BenchServer(SeaweedServer):
    """``weed mini`` as the tests pin it, with volumes sized for gigabyte objects; optionally
    behind a :class:`~latency.LatencyProxy`, whose address is then :attr:`endpoint`."""

    proxy: LatencyProxy | None = None

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint if self.proxy is not None else super().endpoint

    def add_latency(self, delay: float) -> None:
        """Put a proxy delaying each byte by ``delay`` seconds each way in front of the S3 port."""
        self.proxy = LatencyProxy(free_port(), self.port("s3"), delay)
        self.proxy.wait_ready()

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        super().close()

    def command(self) -> list[str]:
        cmd = super().command()
        swap = {"-master.volumeSizeLimitMB=": "1024", "-volume.max=": "100"}
        return [next((k + v for k, v in swap.items() if arg.startswith(k)), arg) for arg in cmd]

    def vacuum(self) -> None:
        """Reclaim the space of deleted objects now (master API), bounded in time."""
        url = f"http://127.0.0.1:{self.port('master')}/vol/vacuum?garbageThreshold=0.01"
        try:
            with urllib.request.urlopen(url, timeout=120) as answer:
                answer.read()
        except OSError as exc:
            log.warning("SeaweedFS vacuum failed: %s", exc)

    def bench_client(self, pool: int = 32) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=120,
                max_pool_connections=pool,
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


def count_objects(client: Any, bucket: str, prefix: str) -> int:
    """Objects under ``prefix``, leaving out directory markers and vaultfs's hidden index."""
    n = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if not key.endswith("/") and not key.rsplit("/", 1)[-1].startswith(".vaultfs-"):
                n += 1
    return n


def object_size(client: Any, bucket: str, key: str) -> int | None:
    try:
        return int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except client.exceptions.ClientError:
        return None


class Boto3Reference:
    """The bare boto3 figures the S3 driver is measured against, over one client."""

    def __init__(self, client: Any, bucket: str, threads: int = 8, part_size: int = 16 * MiB,
                 range_size: int = 8 * MiB) -> None:
        self.client = client
        self.bucket = bucket
        self.threads = threads
        self.part_size = part_size
        self.range_size = range_size

    def multipart_upload(self, key: str, size: int, pattern: bytes) -> None:
        """Upload ``size`` bytes as parallel parts from memory."""
        c, b = self.client, self.bucket
        upload = c.create_multipart_upload(Bucket=b, Key=key)["UploadId"]

        def part(number: int) -> dict[str, Any]:
            start = (number - 1) * self.part_size
            length = min(self.part_size, size - start)
            body = _pattern_slice(pattern, start, length)
            etag = c.upload_part(Bucket=b, Key=key, UploadId=upload, PartNumber=number, Body=body)["ETag"]
            return {"PartNumber": number, "ETag": etag}

        count = (size + self.part_size - 1) // self.part_size
        try:
            with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
                parts = list(pool.map(part, range(1, count + 1)))
            c.complete_multipart_upload(Bucket=b, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
        except BaseException:
            c.abort_multipart_upload(Bucket=b, Key=key, UploadId=upload)
            raise

    def parallel_read(self, key: str, size: int) -> int:
        """Read the whole object as parallel ranged gets; returns the bytes read."""

        def fetch(start: int) -> int:
            end = min(start + self.range_size, size) - 1
            body = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}")["Body"]
            got = 0
            for chunk in body.iter_chunks(MiB):
                got += len(chunk)
            body.close()
            return got

        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            return sum(pool.map(fetch, range(0, size, self.range_size)))

    def ranged_reads(self, key: str, offsets: list[int], length: int, seconds: float) -> int:
        """One ranged get after another (an application's random reads); returns how many were done."""
        deadline = time.monotonic() + seconds
        done = 0
        for off in offsets:
            span = f"bytes={off}-{off + length - 1}"
            answer = self.client.get_object(Bucket=self.bucket, Key=key, Range=span)
            answer["Body"].read()
            done += 1
            if time.monotonic() > deadline:
                break
        return done

    def put_many(self, keys: list[str], data: bytes, threads: int = 1) -> None:
        def put(key: str) -> None:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

        if threads == 1:
            for key in keys:
                put(key)
        else:
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                list(pool.map(put, keys))

    def head_each(self, keys: list[str]) -> None:
        for key in keys:
            self.client.head_object(Bucket=self.bucket, Key=key)

    def get_each(self, keys: list[str]) -> None:
        for key in keys:
            self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def delete_each(self, keys: list[str]) -> None:
        for key in keys:
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def list_all(self, prefix: str) -> int:
        return sum(1 for _ in self._keys(prefix))

    def _keys(self, prefix: str) -> Iterator[str]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]


def _pattern_slice(pattern: bytes, start: int, length: int) -> bytes:
    """``length`` bytes of the endlessly repeated ``pattern`` from offset ``start``."""
    n = len(pattern)
    out = bytearray()
    pos = start % n
    while len(out) < length:
        take = min(n - pos, length - len(out))
        out += pattern[pos:pos + take]
        pos = 0
    return bytes(out)
