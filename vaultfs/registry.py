"""Find, load and create storage drivers.

Every driver, built-in or third-party, is found the same way: by name in the
``vaultfs.drivers`` entry-point group.  The built-ins are registered by
vaultfs's own ``pyproject.toml``, so nothing here names them, and a plug-in
package becomes usable with ``driver: NAME`` just by being installed::

    [project.entry-points."vaultfs.drivers"]
    sqlite = "vaultfs_sqlite:SQLiteDriver"

This module sits below :mod:`vaultfs.config` (which uses it to validate a
backend's ``driver`` and ``config``), so its errors are its own;
``vaultfs.config`` reports them with the file and key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
from collections.abc import Iterable
from importlib import metadata
from typing import Any, Protocol

from drivers import Driver

log = logging.getLogger(__name__)

#: The entry-point group drivers register in.
GROUP = "vaultfs.drivers"


class RegistryError(Exception):
    """A driver that cannot be found or loaded."""


class UnknownDriver(RegistryError, LookupError):
    """No installed driver has the requested name; the message lists the installed ones."""


class PluginError(RegistryError):
    """An entry point that does not give a usable driver: it fails to import, is not a
    :class:`~drivers.Driver` subclass, or is registered twice by different packages."""


class BackendSpec(Protocol):
    """What :func:`create` needs: a driver name and that driver's ``Options`` instance.

    ``vaultfs.config.BackendConfig`` and ``vaultfs.config.ResolvedBackend`` both fit.
    """

    @property
    def driver_name(self) -> str: ...

    @property
    def options(self) -> Any: ...


def _scan() -> tuple[dict[str, metadata.EntryPoint], dict[str, list[metadata.EntryPoint]]]:
    """Installed entry points by name, plus the names that different targets claim."""
    found: dict[str, list[metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=GROUP):
        claims = found.setdefault(ep.name, [])
        # The same target seen twice (say an egg-info beside an editable install) is one driver.
        if all(other.value != ep.value for other in claims):
            claims.append(ep)
    first = {name: found[name][0] for name in sorted(found)}
    conflicts = {name: eps for name, eps in found.items() if len(eps) > 1}
    return first, conflicts


def available() -> dict[str, metadata.EntryPoint]:
    """The installed drivers' entry points, by driver name, in sorted order.

    Nothing is imported; use :func:`load` for the class.
    """
    first, conflicts = _scan()
    for name, eps in conflicts.items():
        log.warning("driver %r is registered more than once: %s", name, "; ".join(map(describe, eps)))
    return first


def describe(ep: metadata.EntryPoint) -> str:
    """Name an entry point and the package it comes from, for error messages."""
    dist = getattr(ep, "dist", None)
    origin = f" of {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point '{ep.name} = {ep.value}'{origin}"


def installed_message(names: Iterable[str] | None = None) -> str:
    """``installed drivers: a, b, c`` (of ``names``, default all installed), for error messages."""
    names = list(available() if names is None else names)
    if not names:
        return f"no drivers are installed (the {GROUP!r} entry-point group is empty; is vaultfs installed?)"
    return "installed drivers: " + ", ".join(names)


def _unknown(name: str, names: list[str]) -> UnknownDriver:
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UnknownDriver(f"unknown driver {name!r}{hint}; {installed_message(names)}")


def load(name: str) -> type[Driver]:
    """Import the driver registered as ``name`` and check that it is a usable driver class.

    Raises :class:`UnknownDriver` for a name nobody registered and
    :class:`PluginError` when the entry point is ambiguous, fails to import,
    or does not name a concrete :class:`~drivers.Driver` subclass whose
    ``name`` is ``name`` and whose ``Options`` is a dataclass.
    """
    first, conflicts = _scan()
    if name in conflicts:
        raise PluginError(
            f"driver {name!r} is registered by more than one package: "
            + "; ".join(map(describe, conflicts[name]))
            + "; uninstall all but one"
        )
    ep = first.get(name)
    if ep is None:
        raise _unknown(name, list(first))
    where = f"driver {name!r} ({describe(ep)}, in module {ep.module})"
    try:
        obj = ep.load()
    except Exception as exc:
        # A plug-in's import may fail in any way; the user needs to know which one broke.
        log.debug("loading %s failed", where, exc_info=True)
        raise PluginError(f"{where} could not be loaded: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Driver)):
        raise PluginError(f"{where} is not a subclass of drivers.Driver (it is {obj!r})")
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        raise PluginError(f"{where} is abstract: it does not implement {missing}")
    declared = getattr(obj, "name", None)
    if declared != name:
        # Metrics and logs use the class's name; a mismatch would label them wrongly.
        raise PluginError(f"{where} sets name = {declared!r}; it must match the entry point's name")
    options = getattr(obj, "Options", None)
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise PluginError(f"{where} has Options = {options!r}, which is not a dataclass")
    log.debug("loaded %s", where)
    return obj


def summary(cls: type[Driver]) -> str:
    """The first line of the driver class's own docstring, else of its module's."""
    module = inspect.getmodule(cls)
    doc = cls.__dict__.get("__doc__") or (module.__doc__ if module else None) or ""
    lines = inspect.cleandoc(doc).splitlines()
    # Docstrings use reStructuredText literals; a terminal shows them better bare.
    return lines[0].replace("``", "") if lines else ""


def create(backend: BackendSpec) -> Driver:
    """Instantiate the backend's driver with its validated ``Options``.

    Whatever the driver's constructor raises (typically a
    :class:`~drivers.DriverError`) propagates unchanged.
    """
    cls = load(backend.driver_name)
    log.debug("creating %s driver", backend.driver_name)
    # The contract has every driver take its Options, but Driver declares no __init__ saying so.
    return cls(backend.options)  # type: ignore[call-arg]
