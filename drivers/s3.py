"""The ``s3`` driver: Amazon S3 and S3-compatible services through boto3.

Containers are buckets by default.  With ``bucket`` set, containers are instead
the top-level "directories" under ``prefix`` in that one bucket (each marked by
a zero-byte ``name/`` object), for accounts that may not list or create buckets.

Retries belong to ``vaultfs.backend``: the client here makes exactly one attempt
per request and reports transient failures as :class:`Unavailable`.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import dataclasses
import datetime
import email.utils
import io
import logging
import os
import stat
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from typing import IO, Any, ClassVar, cast

import boto3
import botocore.exceptions as bce
import botocore.session
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore import xform_name
from botocore.config import Config
from botocore.utils import determine_content_length, parse_timestamp

from .base import MAX_NAME_BYTES, ArtifactInfo, Driver, Prefix, check_artifact_name, check_metadata
from .errors import (
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

MiB = 1 << 20
#: S3 refuses parts smaller than this (except the last) and CopyObject above 5 GiB.
MIN_PART_SIZE = 5 * MiB
#: Largest artifact ``put`` sends as one PutObject held in memory (at most this much per worker thread).
SMALL_PUT = 1 * MiB
MAX_SINGLE_COPY = 5 * 1024 * MiB
_CHECKSUM_MODES = ("when_supported", "when_required")
_SSE_MODES = (None, "AES256", "aws:kms")
# Headers a REPLACE copy would otherwise reset to defaults.
_CONTENT_HEADERS = ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl")


def _secret() -> Any:
    return dataclasses.field(default=None, repr=False, metadata={"secret": True})


@dataclasses.dataclass(frozen=True, kw_only=True)
class S3Options:
    """Configuration keys of the ``s3`` driver.

    Without ``access_key``/``secret_key`` (or ``profile``) the standard AWS
    credential chain applies (environment, shared config, instance roles).
    Uploads from a whole regular file read their parts straight from the file.
    Other streams are cut into parts in memory: at most about
    ``multipart_chunksize * (multipart_concurrency + 2)`` for the whole driver.
    """

    endpoint: str | None = None
    region: str = "us-east-1"
    access_key: str | None = _secret()
    secret_key: str | None = _secret()
    session_token: str | None = _secret()
    profile: str | None = None
    path_style: bool = False
    verify: bool = True
    ca_bundle: str | None = None
    bucket: str | None = None
    prefix: str = ""
    containers: list[str] | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_pool_connections: int = 32
    multipart_threshold: int = 8 * MiB
    multipart_chunksize: int = 8 * MiB
    multipart_concurrency: int = 8
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    request_checksum_calculation: str = "when_required"
    response_checksum_validation: str = "when_required"

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(bool(self.region), "region must not be empty")
        need(
            self.endpoint is None or self.endpoint.startswith(("http://", "https://")),
            "endpoint must start with http:// or https://",
        )
        need(
            (self.access_key is None) == (self.secret_key is None),
            "access_key and secret_key must be given together",
        )
        need(
            self.profile is None or self.access_key is None,
            "give either profile or access_key/secret_key, not both",
        )
        need(self.session_token is None or self.access_key is not None, "session_token needs access_key")
        need(self.bucket is not None or not self.prefix, "prefix needs bucket")
        need(self.bucket is None or not self.containers, "containers cannot be combined with bucket")
        need(self.connect_timeout > 0 and self.read_timeout > 0, "timeouts must be positive")
        need(self.max_pool_connections >= 1, "max_pool_connections must be at least 1")
        need(self.multipart_concurrency >= 1, "multipart_concurrency must be at least 1")
        need(self.multipart_threshold >= 1, "multipart_threshold must be positive")
        need(
            MIN_PART_SIZE <= self.multipart_chunksize <= MAX_SINGLE_COPY,
            "multipart_chunksize must be between 5 MiB and 5 GiB",
        )
        need(self.sse in _SSE_MODES, "sse must be AES256 or aws:kms")
        need(self.sse_kms_key_id is None or self.sse == "aws:kms", "sse_kms_key_id needs sse: aws:kms")
        for key in ("request_checksum_calculation", "response_checksum_validation"):
            need(getattr(self, key) in _CHECKSUM_MODES, f"{key} must be when_supported or when_required")


def _no_continue_for_small_puts(params: dict[str, Any], model: Any = None, **kwargs: Any) -> None:
    """Send a small PutObject's body without waiting for ``100 Continue``.

    botocore asks every PUT with a body to wait for the server's go-ahead
    (``Expect: 100-continue``), which costs a round trip per request; it spares
    sending a large body a server refuses, and a body up to :data:`SMALL_PUT`
    costs less to send than that round trip.  The header is not signed.
    """
    headers = params.get("headers")
    if model is None or model.name != "PutObject" or not headers or "Expect" not in headers:
        return
    size = determine_content_length(params.get("body"))
    if size is not None and size <= SMALL_PUT:
        del headers["Expect"]


def _timestamp(value: Any) -> datetime.datetime:
    """Parse a time in an S3 answer: the two forms S3 uses directly, anything else as botocore does.

    botocore's own parser (dateutil's) takes about 50 µs a value: a Last-Modified
    header on every GET and HEAD, and 50 ms for a page of 1,000 listed keys.
    """
    if isinstance(value, str):
        try:
            if value.endswith("Z"):
                return datetime.datetime.fromisoformat(value)  # XML bodies: 2026-01-02T03:04:05.000Z
            if value.endswith(" GMT"):
                return email.utils.parsedate_to_datetime(value)  # headers: Fri, 02 Jan 2026 03:04:05 GMT
        except (ValueError, TypeError, IndexError):
            pass
    return cast(datetime.datetime, parse_timestamp(value))


def _parse_listing_entries(
    response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
) -> None:
    """Parse the objects and common prefixes of a ListObjectsV2 page with ElementTree's C parser.

    botocore parses each of a page's up to 1,000 objects field by field in Python:
    11 ms a page here, beside the server's 9 ms to answer, and a cold ``find``
    or ``ls -lR`` is mostly listing.  This handler of botocore's ``before-parse``
    event parses the objects and prefixes itself (about a tenth of that), hands
    them to botocore as the parsed page's ``Contents`` and ``CommonPrefixes``,
    and leaves botocore only the page's few other fields to parse, so botocore's
    own ``after-call`` handlers (URL-decoding the keys) still apply.  Anything
    unexpected is left to botocore whole.
    """
    body = response_dict.get("body")
    if response_dict.get("status_code") != 200 or not body:
        return
    try:
        root = ET.fromstring(body)
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        if root.tag != ns + "ListBucketResult":
            return
        objects, common = ns + "Contents", ns + "CommonPrefixes"
        listed = [child for child in root if child.tag in (objects, common)]
        contents = [
            {
                "Key": item.findtext(ns + "Key", ""),
                "LastModified": _timestamp(item.findtext(ns + "LastModified", "")),
                "ETag": item.findtext(ns + "ETag", ""),
                "Size": int(item.findtext(ns + "Size", "0")),
            }
            for item in listed
            if item.tag == objects
        ]
        prefixes = [{"Prefix": item.findtext(ns + "Prefix", "")} for item in listed if item.tag == common]
        for item in listed:
            root.remove(item)
        rest = ET.tostring(root)
    except (ET.ParseError, ValueError, TypeError):
        return
    if contents:
        customized_response_dict["Contents"] = contents
    if prefixes:
        customized_response_dict["CommonPrefixes"] = prefixes
    response_dict["body"] = rest


def _etag(value: str) -> str:
    return value.strip('"')


def translate_error(exc: BaseException, what: str) -> BaseException:
    """Map a boto3/botocore/urllib3 failure onto the driver errors.

    ``what`` names the container and artifact for the message.  Messages carry
    the S3 error code and HTTP status, never the request or its credentials.
    Anything that is not an S3 client failure is returned unchanged.
    """
    if isinstance(exc, DriverError):
        return exc
    if isinstance(exc, bce.ClientError):
        code = str(exc.response.get("Error", {}).get("Code") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{what}: S3 {code or 'error'} (HTTP {status}) in {exc.operation_name}"
        if code in _CODES:
            return _CODES[code](message)
        if "Quota" in code:
            return QuotaExceeded(message)
        if status == 404:
            return NotFound(message)
        if status in (401, 403):
            return AccessDenied(message)
        if status >= 500 or status == 429:
            return Unavailable(message)
        if status == 400:
            return InvalidName(message)
        return DriverError(message)
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return AccessDenied(
            f"{what}: no usable S3 credentials; set access_key and secret_key (or profile) "
            "in the backend configuration, or provide them through the standard AWS chain"
        )
    if isinstance(exc, bce.ProfileNotFound):
        return AccessDenied(f"{what}: the AWS profile named by the profile key does not exist")
    if isinstance(exc, bce.ParamValidationError | bce.InvalidDNSNameError):
        return InvalidName(f"{what}: the S3 client refused the request parameters")
    if isinstance(exc, bce.SSLError):
        return Unavailable(f"{what}: TLS failure talking to S3 (check verify and ca_bundle)")
    if isinstance(
        exc,
        bce.HTTPClientError
        | bce.ConnectionError
        | bce.IncompleteReadError
        | bce.CredentialRetrievalError
        | urllib3.exceptions.HTTPError
        | ConnectionError
        | TimeoutError,
    ):
        return Unavailable(f"{what}: S3 endpoint unreachable or connection failed ({type(exc).__name__})")
    return exc


def _codes(cls: type[DriverError], *codes: str) -> dict[str, type[DriverError]]:
    return dict.fromkeys(codes, cls)


# S3 error codes (HEAD responses carry only the status, hence "404" and friends).
_CODES: dict[str, type[DriverError]] = {
    **_codes(NotFound, "NoSuchKey", "NoSuchBucket", "NotFound", "404", "NoSuchVersion"),
    **_codes(AccessDenied, "AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"),
    **_codes(AccessDenied, "AllAccessDisabled", "AccountProblem", "InvalidToken", "ExpiredToken"),
    # Retrying cannot fix a skewed clock or an archived (Glacier) object.
    **_codes(AccessDenied, "InvalidSecurity", "RequestTimeTooSkewed", "InvalidObjectState"),
    **_codes(QuotaExceeded, "QuotaExceeded", "EntityTooLarge", "InsufficientStorage", "TooManyBuckets"),
    **_codes(QuotaExceeded, "507"),
    **_codes(AlreadyExists, "BucketAlreadyExists", "BucketAlreadyOwnedByYou"),
    **_codes(NotEmpty, "BucketNotEmpty"),
    **_codes(NameTooLong, "KeyTooLongError"),
    **_codes(InvalidName, "InvalidBucketName", "InvalidArgument", "InvalidObjectName", "InvalidURI"),
    **_codes(InvalidName, "MetadataTooLarge", "400"),
    **_codes(Unavailable, "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled"),
    **_codes(Unavailable, "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestTimeout"),
    **_codes(Unavailable, "InternalError", "ServiceUnavailable", "500", "502", "503", "504"),
    # Another writer got in between our HEAD and a conditional copy, or a
    # conflicting operation is in flight: trying again resolves both.
    **_codes(Unavailable, "PreconditionFailed", "OperationAborted"),
}


class _UploadSource:
    """The caller's stream as s3transfer sees it: read once, exactly ``limit`` bytes when given.

    Reads are filled completely, because s3transfer turns a short read into a
    short multipart part, which S3 refuses.  An error from the caller's stream
    is remembered so that it is not mistaken for a backend failure.
    """

    def __init__(self, stream: IO[bytes], limit: int | None, what: str, count: Any) -> None:
        self._stream = stream
        self._left = limit
        self._what = what
        self._count = count
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._left if self._left is not None else 1 << 62
        elif self._left is not None:
            size = min(size, self._left)
        chunks: list[bytes] = []
        got = 0
        while got < size:
            try:
                chunk = self._stream.read(min(size - got, 8 * MiB))
            except BaseException as exc:
                self.error = exc
                raise
            if not chunk:
                if self._left is not None and got < size:
                    # Refused before the last part is sent, so nothing is stored.
                    raise DriverError(
                        f"{self._what}: the stream ended {self._left - got} bytes short of its size"
                    )
                break
            chunks.append(chunk)
            got += len(chunk)
        if self._left is not None:
            self._left -= got
        self._count(got)
        return b"".join(chunks)


class _Download(io.RawIOBase):
    """A GET response body whose read failures surface as :class:`Unavailable`."""

    def __init__(self, body: Any, what: str, count: Any) -> None:
        super().__init__()
        self._body = body
        self._what = what
        self._count = count

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed artifact stream")
        if self._body is None:
            return b""
        try:
            data: bytes = self._body.read(None if size is None or size < 0 else size)
        except Exception as exc:
            raise translate_error(exc, self._what) from exc
        self._count(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                if self._body is not None:
                    self._body.close()
            finally:
                super().close()


class S3Driver(Driver):
    """Containers and artifacts in S3 buckets, through one thread-safe boto3 client."""

    name = "s3"
    Options: ClassVar[type[S3Options]] = S3Options

    def __init__(self, options: S3Options) -> None:
        self.options = options
        if options.ca_bundle is not None and not os.path.isfile(options.ca_bundle):
            raise ValueError("ca_bundle does not name a readable file")
        # Fixed-bucket mode keeps every container under this key prefix.
        self._root = options.prefix.strip("/") + "/" if options.prefix.strip("/") else ""
        self._configured = sorted(options.containers) if options.containers else None
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._client = self._make_client(options)
        events = self._client.meta.events
        events.register("before-call.s3", self._on_request)
        events.register("after-call.s3", self._on_response)
        events.register("after-call-error.s3", self._on_failure)
        # After botocore's own handler of that event, which adds the header this one takes away.
        events.register("before-call.s3", _no_continue_for_small_puts)
        events.register("before-parse.s3.ListObjectsV2", _parse_listing_entries)
        self._transfer_config = TransferConfig(
            multipart_threshold=options.multipart_threshold,
            multipart_chunksize=options.multipart_chunksize,
            max_concurrency=options.multipart_concurrency,
            use_threads=True,
            preferred_transfer_client="classic",
        )
        # s3transfer buffers each part of a non-seekable stream; this caps how
        # many it holds at once (boto3's TransferConfig does not expose it).
        self._transfer_config.max_in_memory_upload_chunks = options.multipart_concurrency
        # One manager for the driver's lifetime, so the concurrency and memory
        # bounds hold across all concurrent puts, not per put.
        self._transfer = create_transfer_manager(self._client, self._transfer_config)
        log.info(
            "s3 driver: endpoint=%s region=%s mode=%s",
            options.endpoint or "(AWS default)",
            options.region,
            f"bucket {options.bucket}" if options.bucket else "buckets",
        )

    @staticmethod
    def _make_client(o: S3Options) -> Any:
        core = botocore.session.get_session()
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
        try:
            session = boto3.session.Session(
                botocore_session=core,
                aws_access_key_id=o.access_key,
                aws_secret_access_key=o.secret_key,
                aws_session_token=o.session_token,
                region_name=o.region,
                profile_name=o.profile,
            )
        except bce.ProfileNotFound as exc:
            raise translate_error(exc, "s3 driver") from exc
        config = Config(
            region_name=o.region,
            signature_version="s3v4",
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=o.connect_timeout,
            read_timeout=o.read_timeout,
            max_pool_connections=o.max_pool_connections,
            s3={"addressing_style": "path" if o.path_style else "auto"},
            request_checksum_calculation=o.request_checksum_calculation,
            response_checksum_validation=o.response_checksum_validation,
            tcp_keepalive=True,
        )
        verify: bool | str = o.ca_bundle if o.ca_bundle is not None else o.verify
        return session.client("s3", endpoint_url=o.endpoint, config=config, verify=verify)

    def __repr__(self) -> str:
        o = self.options
        mode = f"bucket={o.bucket!r} prefix={o.prefix!r}" if o.bucket else "buckets"
        return f"<{type(self).__name__} endpoint={o.endpoint!r} region={o.region!r} {mode}>"

    # -- helpers ---------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            mapped = translate_error(exc, what)
            if mapped is exc:
                raise
            raise mapped from exc

    def _container_root(self, container: str) -> tuple[str, str]:
        """The bucket and key prefix holding ``container``'s artifacts."""
        if self.options.bucket is None:
            if not container:
                raise InvalidName("empty container name")
            return container, ""
        if not container or "/" in container or container in (".", "..") or "\x00" in container:
            raise InvalidName(f"invalid container name {container!r}")
        return self.options.bucket, f"{self._root}{container}/"

    def _locate(self, container: str, artifact: str) -> tuple[str, str]:
        check_artifact_name(artifact)
        bucket, base = self._container_root(container)
        key = base + artifact
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidName(f"artifact name {artifact!r} is not valid UTF-8, which S3 requires") from None
        if size > MAX_NAME_BYTES:
            raise NameTooLong(f"S3 key for {artifact!r} is longer than {MAX_NAME_BYTES} bytes")
        return bucket, key

    def _write_args(self, metadata: Mapping[str, str] | None) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if metadata is not None:
            args["Metadata"] = dict(metadata)
        if self.options.storage_class:
            args["StorageClass"] = self.options.storage_class
        if self.options.sse:
            args["ServerSideEncryption"] = self.options.sse
            if self.options.sse_kms_key_id:
                args["SSEKMSKeyId"] = self.options.sse_kms_key_id
        return args

    def _head(self, container: str, artifact: str, what: str) -> dict[str, Any]:
        bucket, key = self._locate(container, artifact)
        with self._errors(what):
            head: dict[str, Any] = self._client.head_object(Bucket=bucket, Key=key)
        return head

    @staticmethod
    def _info(artifact: str, head: Mapping[str, Any]) -> ArtifactInfo:
        return ArtifactInfo(
            artifact,
            int(head["ContentLength"]),
            head["LastModified"].timestamp(),
            _etag(head["ETag"]),
            dict(head.get("Metadata") or {}),
        )

    def _copy_object(self, args: dict[str, Any], size: int, what: str) -> dict[str, Any] | None:
        """Server-side copy; returns CopyObjectResult, or None after a multipart copy."""
        with self._errors(what):
            if size <= self._single_copy_limit:
                result: dict[str, Any] = self._client.copy_object(**args)["CopyObjectResult"]
                return result
            extra = {k: v for k, v in args.items() if k not in ("Bucket", "Key", "CopySource")}
            config = TransferConfig(
                multipart_threshold=self._single_copy_limit,
                multipart_chunksize=max(self.options.multipart_chunksize, 256 * MiB),
                max_concurrency=self.options.multipart_concurrency,
                preferred_transfer_client="classic",
            )
            self._client.copy(args["CopySource"], args["Bucket"], args["Key"], ExtraArgs=extra, Config=config)
        return None

    #: Above this, CopyObject is refused by S3 and a multipart copy is used.
    _single_copy_limit = MAX_SINGLE_COPY

    # -- metrics ---------------------------------------------------------
    def _on_request(self, event_name: str, **kwargs: Any) -> None:
        op = xform_name(event_name.rsplit(".", 1)[-1])
        with self._lock:
            self._counts["requests_total"] += 1
            self._counts[f"requests_{op}"] += 1

    def _on_response(self, event_name: str, http_response: Any = None, **kwargs: Any) -> None:
        if http_response is not None and http_response.status_code >= 400:
            self._count_error(event_name)

    def _on_failure(self, event_name: str, **kwargs: Any) -> None:
        self._count_error(event_name)

    def _count_error(self, event_name: str) -> None:
        op = xform_name(event_name.rsplit(".", 1)[-1])
        with self._lock:
            self._counts["errors_total"] += 1
            self._counts[f"errors_{op}"] += 1

    def _count_in(self, n: int) -> None:
        with self._lock:
            self._counts["bytes_in"] += n

    def _count_out(self, n: int) -> None:
        with self._lock:
            self._counts["bytes_out"] += n

    def get_metrics(self) -> dict[str, float]:
        """Requests and errors per S3 operation, and bytes downloaded (in) and uploaded (out)."""
        with self._lock:
            metrics = {name: float(value) for name, value in self._counts.items()}
        metrics.setdefault("bytes_in", 0.0)
        metrics.setdefault("bytes_out", 0.0)
        return metrics

    # -- artifacts -------------------------------------------------------
    def get(self, container: str, artifact: str, offset: int = 0, length: int | None = None) -> IO[bytes]:
        """Ranged GET; a range starting at or past the end yields an empty stream."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        bucket, key = self._locate(container, artifact)
        what = f"get container {container!r} artifact {artifact!r}"
        if length == 0:
            # S3 has no empty range; a HEAD still reports a missing artifact.
            self._head(container, artifact, what)
            return cast(IO[bytes], _Download(None, what, self._count_in))
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            params["Range"] = f"bytes={offset}-{end}"
        body = None
        with self._errors(what):
            try:
                body = self._client.get_object(**params)["Body"]
            except bce.ClientError as exc:
                # Past the end: S3 answers 416, the contract an empty read.
                if not _is_invalid_range(exc):
                    raise
        return cast(IO[bytes], _Download(body, what, self._count_in))

    def put(
        self,
        container: str,
        artifact: str,
        stream: IO[bytes],
        size: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ArtifactInfo:
        """Upload the stream (multipart above ``multipart_threshold``) and describe the result.

        An artifact of known size up to :data:`SMALL_PUT` bytes is one
        PutObject whose answer carries the ETag; its ``mtime`` is then this
        machine's clock, not the server's.  Larger ones go through s3transfer
        and a HEAD.  A regular file read from its start (a staging file) is
        uploaded by reopening it through ``/proc/self/fd``: parts are then read
        in parallel straight from the file instead of being buffered in memory.
        """
        meta = check_metadata(metadata)
        bucket, key = self._locate(container, artifact)
        what = f"put container {container!r} artifact {artifact!r}"
        source = _UploadSource(stream, size, what, self._count_out)
        if size is not None and size <= min(SMALL_PUT, self.options.multipart_threshold):
            # One request instead of a transfer, its threads and a HEAD: most of
            # the cost of a small file's upload.
            body = source.read(size)
            with self._errors(what):
                answer = self._client.put_object(Bucket=bucket, Key=key, Body=body, **self._write_args(meta))
            return ArtifactInfo(artifact, size, time.time(), _etag(answer.get("ETag", "")), dict(meta or {}))
        whole = _whole_file(stream, size)
        try:
            upload = source if whole is None else whole[0]
            self._transfer.upload(upload, bucket, key, extra_args=self._write_args(meta)).result()
        except Exception as exc:
            if source.error is not None:
                raise
            mapped = translate_error(exc, what)
            if mapped is exc:
                raise
            raise mapped from exc
        if whole is not None:
            # The caller's stream counts as read, as if the bytes went through it.
            stream.seek(whole[1])
            self._count_out(whole[1])
        return self._info(artifact, self._head(container, artifact, what))

    def delete(self, container: str, artifact: str) -> None:
        """DELETE the object; S3 reports success for a missing key."""
        bucket, key = self._locate(container, artifact)
        with self._errors(f"delete container {container!r} artifact {artifact!r}"):
            self._client.delete_object(Bucket=bucket, Key=key)

    def list(
        self,
        container: str,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
    ) -> Iterator[ArtifactInfo | Prefix]:
        """ListObjectsV2 pages, each page's objects and common prefixes merged by name.

        The first page is fetched before returning, so a missing container
        raises here rather than on the first ``next()``.
        """
        bucket, base = self._container_root(container)
        what = f"list container {container!r} prefix {prefix!r}"
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": base + prefix}
        if delimiter:
            params["Delimiter"] = delimiter
        if start_after:
            params["StartAfter"] = base + start_after
        pages = self._pages(params, what)
        first = next(pages)
        if base and not first.get("Contents") and not first.get("CommonPrefixes"):
            self._require_prefix_container(container, bucket, base)
        return self._entries(first, pages, base, start_after)

    def _pages(self, params: dict[str, Any], what: str) -> Iterator[dict[str, Any]]:
        params = dict(params)
        while True:
            with self._errors(what):
                page: dict[str, Any] = self._client.list_objects_v2(**params)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token

    @staticmethod
    def _entries(
        first: dict[str, Any], rest: Iterator[dict[str, Any]], base: str, start_after: str | None
    ) -> Iterator[ArtifactInfo | Prefix]:
        last = start_after or ""
        page: dict[str, Any] | None = first
        while page is not None:
            entries: list[ArtifactInfo | Prefix] = [
                ArtifactInfo(
                    obj["Key"][len(base) :],
                    int(obj["Size"]),
                    obj["LastModified"].timestamp(),
                    _etag(obj.get("ETag", "")),
                    None,
                )
                for obj in page.get("Contents", ())
            ]
            entries.extend(Prefix(cp["Prefix"][len(base) :]) for cp in page.get("CommonPrefixes", ()))
            entries.sort(key=lambda e: e.name)
            for entry in entries:
                # Skips the container's own marker (empty name), prefixes that
                # sort before start_after (S3 returns those; the contract does
                # not), and anything a server repeats across a page boundary.
                if entry.name > last:
                    last = entry.name
                    yield entry
            page = next(rest, None)

    def stat(self, container: str, artifact: str) -> ArtifactInfo:
        """HEAD the object, user metadata included."""
        what = f"stat container {container!r} artifact {artifact!r}"
        return self._info(artifact, self._head(container, artifact, what))

    def update_metadata(self, container: str, artifact: str, metadata: Mapping[str, str]) -> ArtifactInfo:
        """Copy the object onto itself with new metadata, keeping content, storage class and SSE.

        The copy is conditional on the ETag seen by the HEAD, so a concurrent
        overwrite is not clobbered with stale content (it reports Unavailable).
        """
        meta = check_metadata(metadata)
        bucket, key = self._locate(container, artifact)
        what = f"update metadata of container {container!r} artifact {artifact!r}"
        head = self._head(container, artifact, what)
        args: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "CopySource": {"Bucket": bucket, "Key": key},
            "CopySourceIfMatch": head["ETag"],
            "MetadataDirective": "REPLACE",
            "Metadata": meta,
        }
        args.update({h: head[h] for h in _CONTENT_HEADERS if head.get(h)})
        if head.get("StorageClass"):
            args["StorageClass"] = head["StorageClass"]
        if head.get("ServerSideEncryption"):
            args["ServerSideEncryption"] = head["ServerSideEncryption"]
            if head.get("SSEKMSKeyId"):
                args["SSEKMSKeyId"] = head["SSEKMSKeyId"]
        result = self._copy_object(args, int(head["ContentLength"]), what)
        if result is None:
            return self.stat(container, artifact)
        mtime = result["LastModified"].timestamp()
        return ArtifactInfo(artifact, int(head["ContentLength"]), mtime, _etag(result["ETag"]), meta)

    def copy(
        self,
        container: str,
        artifact: str,
        dst_container: str,
        dst_artifact: str,
        metadata: Mapping[str, str] | None = None,
    ) -> ArtifactInfo:
        """Server-side copy, with the source's metadata unless ``metadata`` is given."""
        meta = None if metadata is None else check_metadata(metadata)
        src_bucket, src_key = self._locate(container, artifact)
        dst_bucket, dst_key = self._locate(dst_container, dst_artifact)
        what = f"copy container {container!r} artifact {artifact!r} to {dst_container!r} {dst_artifact!r}"
        head = self._head(container, artifact, what)
        if meta is None and (src_bucket, src_key) == (dst_bucket, dst_key):
            # S3 refuses a copy onto itself that changes nothing.
            return self._info(artifact, head)
        args: dict[str, Any] = {
            "Bucket": dst_bucket,
            "Key": dst_key,
            "CopySource": {"Bucket": src_bucket, "Key": src_key},
            "CopySourceIfMatch": head["ETag"],
            **self._write_args(meta),
        }
        if meta is None:
            args["MetadataDirective"] = "COPY"
        else:
            args["MetadataDirective"] = "REPLACE"
            args.update({h: head[h] for h in _CONTENT_HEADERS if head.get(h)})
        result = self._copy_object(args, int(head["ContentLength"]), what)
        if result is None:
            return self.stat(dst_container, dst_artifact)
        return ArtifactInfo(
            dst_artifact,
            int(head["ContentLength"]),
            result["LastModified"].timestamp(),
            _etag(result["ETag"]),
            meta if meta is not None else dict(head.get("Metadata") or {}),
        )

    # -- containers ------------------------------------------------------
    def containers(self) -> builtins.list[str]:
        """Buckets (or the configured ``containers`` when ListBuckets is denied), or top-level prefixes."""
        if self.options.bucket is not None:
            params = {"Bucket": self.options.bucket, "Prefix": self._root, "Delimiter": "/"}
            pages = self._pages(params, "list containers")
            entries = self._entries(next(pages), pages, self._root, None)
            return sorted(e.name.rstrip("/") for e in entries if isinstance(e, Prefix) and e.name.rstrip("/"))
        try:
            with self._errors("list buckets"):
                buckets = self._client.list_buckets().get("Buckets", [])
        except AccessDenied as exc:
            if self._configured is None:
                raise AccessDenied(
                    f"{exc}; set containers: (a list of bucket names) or bucket: in the backend configuration"
                ) from exc.__cause__
            log.debug("ListBuckets denied; using the configured containers list")
            return list(self._configured)
        return sorted(b["Name"] for b in buckets)

    def _require_prefix_container(self, container: str, bucket: str, base: str) -> None:
        with self._errors(f"container {container!r}"):
            found = self._client.list_objects_v2(Bucket=bucket, Prefix=base, MaxKeys=1).get("KeyCount", 0)
        if not found:
            raise NotFound(f"container {container!r} does not exist in bucket {bucket!r}")

    def create_container(self, container: str) -> None:
        """CreateBucket, or write the ``prefix+name/`` marker in fixed-bucket mode."""
        bucket, base = self._container_root(container)
        what = f"create container {container!r}"
        if base:
            with self._errors(what):
                found = self._client.list_objects_v2(Bucket=bucket, Prefix=base, MaxKeys=1).get("KeyCount", 0)
                if found:
                    raise AlreadyExists(f"container {container!r} already exists")
                self._client.put_object(Bucket=bucket, Key=base, Body=b"", **self._write_args(None))
            return
        # us-east-1 answers 200 to re-creating one's own bucket, so ask first.
        try:
            with self._errors(what):
                self._client.head_bucket(Bucket=bucket)
        except NotFound:
            pass
        except AccessDenied:
            log.debug("HeadBucket denied for %r; letting CreateBucket decide", bucket)
        else:
            raise AlreadyExists(f"container {container!r} already exists")
        args: dict[str, Any] = {"Bucket": bucket}
        if self.options.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.options.region}
        with self._errors(what):
            self._client.create_bucket(**args)

    def delete_container(self, container: str) -> None:
        """DeleteBucket, or remove the marker of an empty container in fixed-bucket mode."""
        bucket, base = self._container_root(container)
        what = f"delete container {container!r}"
        with self._errors(what):
            if not base:
                self._client.delete_bucket(Bucket=bucket)
                return
            page = self._client.list_objects_v2(Bucket=bucket, Prefix=base, MaxKeys=2)
            keys = [obj["Key"] for obj in page.get("Contents", [])]
            if not keys:
                raise NotFound(f"container {container!r} does not exist in bucket {bucket!r}")
            if keys != [base]:
                raise NotEmpty(f"container {container!r} is not empty")
            self._client.delete_object(Bucket=bucket, Key=base)

    # -- operations ------------------------------------------------------
    def health_check(self) -> None:
        """One cheap request: HeadBucket on the fixed or first configured bucket, else ListBuckets."""
        with self._errors("health check"):
            if self.options.bucket is not None:
                self._client.head_bucket(Bucket=self.options.bucket)
            elif self._configured:
                self._client.head_bucket(Bucket=self._configured[0])
            else:
                self._client.list_buckets()

    def close(self) -> None:
        """Stop the transfer threads and close the connection pool."""
        self._transfer.shutdown()
        self._client.close()


def _whole_file(stream: IO[bytes], size: int | None) -> tuple[str, int] | None:
    """A path reopening ``stream``'s own file, and its size, when it is a whole regular file.

    ``/proc/self/fd/N`` names the open file itself, so a rename or unlink of the
    caller's path meanwhile does not change what is uploaded.
    """
    try:
        fd = stream.fileno()
        if stream.tell() != 0:
            return None
        info = os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return None
    path = f"/proc/self/fd/{fd}"
    if (
        not stat.S_ISREG(info.st_mode)
        or (size is not None and size != info.st_size)
        or not os.path.exists(path)
    ):
        return None
    return path, info.st_size


def _is_invalid_range(exc: bce.ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return exc.response.get("Error", {}).get("Code") == "InvalidRange" or status == 416
