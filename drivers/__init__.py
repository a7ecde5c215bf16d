"""Storage drivers for vaultfs and the contract they implement."""

from .base import ArtifactInfo, Driver, NoOptions, Prefix
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

__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "ArtifactInfo",
    "Driver",
    "DriverError",
    "InvalidName",
    "NameTooLong",
    "NoOptions",
    "NotEmpty",
    "NotFound",
    "Prefix",
    "QuotaExceeded",
    "Unavailable",
]
