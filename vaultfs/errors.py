"""Configuration errors, and the helpers that phrase them.

A :class:`ConfigError` lists every :class:`Problem` found, each with where (a
key path like ``backends[0].config.port``) and what was expected.
:func:`join_key`, :func:`suggest` and :func:`show_value` word those messages
the same way wherever a problem is found (:mod:`vaultfs.config`,
:mod:`vaultfs.settings`, :mod:`vaultfs.options`); :data:`BAD` stands in for a
value already reported, so it is not reported twice.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Sequence
from typing import Any

BAD = object()  # marks a value that already produced a problem, so it is not reported twice


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration: where (a key path like ``backends[0].config.port``) and what."""

    key: str
    message: str


class ConfigError(Exception):
    """A configuration that cannot be used.

    ``str()`` gives one line per problem: ``SOURCE: KEY.PATH: what was expected``,
    where SOURCE is the file (``file:line:col`` for YAML syntax errors) or
    ``command line``.
    """

    def __init__(self, source: str, problems: Sequence[Problem] | str, key: str = "") -> None:
        self.source = source
        self.problems = (Problem(key, problems),) if isinstance(problems, str) else tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(": ".join(p for p in (self.source, pr.key, pr.message) if p) for pr in self.problems)


def join_key(path: str, key: str | int) -> str:
    """``path`` extended by a mapping key (``a.b``) or a list index (``a[0]``)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def suggest(key: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a misspelt ``key``, or ``""``."""
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_KINDS = (
    (bool, "a boolean"),
    (str, "a string"),
    (int, "an integer"),
    (float, "a number"),
    (list, "a list"),
    (dict, "a mapping"),
)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for cls, word in _KINDS:
        if isinstance(value, cls):
            return word
    return f"a {type(value).__name__}"


def show_value(value: Any, secret: bool = False) -> str:
    """Describe a wrong value: by type only if it is secret or a container, else by its repr."""
    if secret or isinstance(value, list | dict) or value is None:
        return _kind(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(str(value) if isinstance(value, str) else value)
    return text if len(text) <= 60 else text[:57] + "..."
