"""Driver options: each driver's ``Options`` dataclass, built and checked from its ``config:`` mapping.

:func:`build_options` checks every value against its field's annotation
(``str``, ``int``, ``list[str]``, ``Literal[...]``, optional types, paths ...)
and reports each wrong, missing or unknown key as a :class:`~vaultfs.errors.Problem`
with what the driver accepts.  Text that came from the environment is parsed
for the field's type.

Values of driver options marked secret (``metadata={"secret": True}``) never
appear in error messages or reprs: :func:`redacted` and :func:`redact_text`
hide them.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import logging
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

from .environment import FromEnv, plain
from .errors import BAD, Problem, join_key, show_value, suggest
from .settings import parse_bool

log = logging.getLogger(__name__)


class _Invalid(Exception):
    def __init__(self, message: str, suffix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.suffix = suffix


# Annotations a YAML list satisfies: a list, or a tuple for a frozen Options.
_SEQUENCES = (list, tuple, collections.abc.Sequence)
_PLURALS = {"a string": "strings", "an integer": "integers", "a number": "numbers", "a path": "paths"}


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return "any value"
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    simple = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}
    if tp in simple:
        return simple[tp]
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return "a path"
    container = origin or tp
    if container in _SEQUENCES:
        element = _describe(args[0]) if args else "any value"
        return f"a list of {_PLURALS[element]}" if element in _PLURALS else f"a list (each {element})"
    if container in (dict, collections.abc.Mapping):
        return "a mapping" + (f" of {_describe(args[1])}" if len(args) == 2 else "")
    return f"a {getattr(tp, '__name__', tp)}"


def _convert(value: Any, tp: Any, secret: bool) -> Any:
    """``value`` checked against the annotation ``tp`` (raising :class:`_Invalid`), converted."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    from_env = isinstance(value, FromEnv)

    def wrong() -> _Invalid:
        hint = " (put it in quotes)" if tp is str and isinstance(value, int | float) else ""
        return _Invalid(f"expected {_describe(tp)}, got {show_value(value, secret)}{hint}")

    if tp is Any or tp is object:
        return plain(value)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        # "${VAR:-}" is how a template leaves an optional field unset.
        if value is None or (from_env and value == ""):
            if type(None) in args:
                return None
            raise wrong()
        for member in members:
            try:
                return _convert(value, member, secret)
            except _Invalid as exc:
                if len(members) == 1 and exc.suffix:
                    raise
        raise wrong()
    if origin is typing.Literal:
        for allowed in args:
            if (type(value) is type(allowed) and value == allowed) or (from_env and value == str(allowed)):
                return allowed
        raise wrong()
    if value is None:
        raise wrong()
    try:
        if tp is str and isinstance(value, str):
            return str(value)
        if tp is bool and (isinstance(value, bool) or from_env):
            return value if isinstance(value, bool) else parse_bool(value)
        if tp is int and ((isinstance(value, int) and not isinstance(value, bool)) or from_env):
            return int(value)
        if tp is float and ((isinstance(value, int | float) and not isinstance(value, bool)) or from_env):
            return float(value)
    except ValueError:
        raise wrong() from None
    if isinstance(tp, type) and issubclass(tp, PurePath) and isinstance(value, str):
        return tp(str(value))
    container = origin or tp
    if container in _SEQUENCES:
        if not isinstance(value, list):
            raise wrong()
        element = args[0] if args else Any
        items = []
        for i, item in enumerate(value):
            try:
                items.append(_convert(item, element, secret))
            except _Invalid as exc:
                raise _Invalid(exc.message, f"[{i}]{exc.suffix}") from None
        return items if container is list else tuple(items)
    if container in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise wrong()
        key_tp, value_tp = args if len(args) == 2 else (Any, Any)
        out = {}
        for key, item in value.items():
            try:
                out[_convert(key, key_tp, False)] = _convert(item, value_tp, secret)
            except _Invalid as exc:
                raise _Invalid(exc.message, f".{key}{exc.suffix}") from None
        return out
    if isinstance(tp, type) and isinstance(value, tp):
        return plain(value)
    raise wrong()


def _is_secret(field: dataclasses.Field[Any]) -> bool:
    return bool(field.metadata.get("secret"))


def _option_fields(options_cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    try:
        hints = typing.get_type_hints(options_cls)
    except Exception:  # an annotation naming something only imported for type checkers
        log.debug("cannot resolve the annotations of %r", options_cls, exc_info=True)
        hints = {}
    return [
        (f, hints.get(f.name, f.type if not isinstance(f.type, str) else Any))
        for f in dataclasses.fields(options_cls)
        if f.init
    ]


def _required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def build_options(driver: type[Any], raw: Mapping[str, Any], path: str, problems: list[Problem]) -> Any:
    """The driver's ``Options`` built from its ``config`` mapping, or ``None`` after recording problems."""
    fields = _option_fields(driver.Options)
    names = [f.name for f, _ in fields]
    accepts = (
        f"the {driver.name} driver accepts: "
        + ", ".join(f"{f.name} (required)" if _required(f) else f.name for f, _ in fields)
        if fields
        else f"the {driver.name} driver takes no options"
    )
    before = len(problems)
    values: dict[str, Any] = {}
    for key in raw:
        if key not in names:
            problems.append(Problem(join_key(path, key), f"unknown key{suggest(key, names)}; {accepts}"))
    for field, tp in fields:
        key = join_key(path, field.name)
        if field.name not in raw:
            if _required(field):
                problems.append(
                    Problem(key, f"missing; the {driver.name} driver requires it ({_describe(tp)})")
                )
            continue
        value = raw[field.name]
        if value is BAD:
            continue
        try:
            values[field.name] = _convert(value, tp, _is_secret(field))
        except _Invalid as exc:
            problems.append(Problem(key + exc.suffix, exc.message))
    if len(problems) > before:
        return None
    try:
        return driver.Options(**values)
    except (TypeError, ValueError) as exc:
        # The driver's own checks (__post_init__); scrub in case it quoted a secret.
        secrets = [str(values[f.name]) for f, _ in fields if _is_secret(f) and values.get(f.name)]
        problems.append(Problem(path, _scrub(str(exc), secrets)))
        return None


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def redacted(options: Any) -> dict[str, Any]:
    """The options as a dict, with the value of every secret field replaced by ``***``."""
    if not dataclasses.is_dataclass(options):
        return {}
    return {
        f.name: ("***" if _is_secret(f) and getattr(options, f.name) else getattr(options, f.name))
        for f in dataclasses.fields(options)
    }


def redact_text(text: str, options: Any) -> str:
    """``text`` with the values of the options' secret fields replaced by ``***``.

    For messages that came from a driver, which may quote its credentials.
    """
    if not dataclasses.is_dataclass(options):
        return text
    fields = dataclasses.fields(options)
    return _scrub(text, [str(v) for f in fields if _is_secret(f) and (v := getattr(options, f.name))])
