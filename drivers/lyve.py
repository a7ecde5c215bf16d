"""The ``lyve`` driver: Seagate Lyve Cloud, which is the ``s3`` driver with Lyve's defaults.

Lyve Cloud's S3 endpoints follow ``https://s3.{region}.lyvecloud.seagate.com``
(for example ``us-east-1``, ``us-west-1``, ``ap-southeast-1``), so a region is
all most configurations need; ``endpoint`` overrides it for other sites.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

from .s3 import S3Driver, S3Options

_REGION = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def lyve_endpoint(region: str) -> str:
    """The Lyve Cloud S3 endpoint URL of ``region``."""
    if not _REGION.fullmatch(region):
        raise ValueError(f"region {region!r} is not a Lyve Cloud region name such as us-east-1")
    return f"https://s3.{region}.lyvecloud.seagate.com"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LyveOptions(S3Options):
    """Configuration keys of the ``lyve`` driver: those of ``s3``, with ``region`` required.

    Path-style addressing is the default because bucket names with dots do not
    match Lyve's wildcard TLS certificate in virtual-host style.  Checksums stay
    ``when_required``: Lyve, like most S3-compatible services, does not accept
    the CRC trailers newer AWS SDKs send by default.
    """

    region: str = dataclasses.field()
    path_style: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.endpoint is None:
            lyve_endpoint(self.region)


class LyveDriver(S3Driver):
    """An :class:`S3Driver` whose endpoint is derived from the Lyve Cloud region."""

    name = "lyve"
    Options: ClassVar[type[LyveOptions]] = LyveOptions

    def __init__(self, options: LyveOptions) -> None:
        if options.endpoint is None:
            options = dataclasses.replace(options, endpoint=lyve_endpoint(options.region))
        super().__init__(options)
