"""The one error hierarchy every driver raises.

Each driver maps its own service's failures onto these classes, so nothing above
``drivers/`` ever looks at an error string or a service-specific code.  Only
:class:`Unavailable` is transient and retried by ``vaultfs.backend``.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base of every error a driver raises on purpose."""


class NotFound(DriverError):
    """The container or artifact does not exist."""


class AccessDenied(DriverError):
    """Credentials are missing, wrong, or lack permission for the operation."""


class QuotaExceeded(DriverError):
    """The backend refused the write for lack of space or quota."""


class AlreadyExists(DriverError):
    """The container (or a conflicting file/directory) already exists."""


class NotEmpty(DriverError):
    """The container or directory still holds artifacts."""


class InvalidName(DriverError):
    """The name is not acceptable to the backend (bad characters, traversal, ...)."""


class NameTooLong(InvalidName):
    """The name, or one of its segments, exceeds the backend's length limit."""


class Unavailable(DriverError):
    """A transient failure: network, timeout, throttling or a server error.

    The only class the backend layer retries.
    """
