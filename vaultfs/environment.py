"""``${VAR}`` expansion of configuration values.

``${VAR}`` and ``${VAR:-default}`` are expanded in string values after the
YAML is parsed, so a substituted secret is never re-read as YAML; ``$$`` is a
literal ``$``, and a ``$`` followed by anything else is kept as is.  Literal
YAML values must have the right YAML type, but text that came from the
environment is marked (:class:`FromEnv`) and parsed for the field's type
(``port: ${PORT}`` works), since the environment only holds strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import BAD, Problem, join_key


class FromEnv(str):
    """A string that took text from the environment, so it may stand for a number or a boolean."""

    __slots__ = ()


_VAR_RE = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<has_default>:-(?P<default>[^}]*))?\}|(?P<bad>\{))"
)


def expand(text: str, environ: Mapping[str, str]) -> str:
    """Expand ``${VAR}``, ``${VAR:-default}`` (default when unset or empty) and ``$$`` in ``text``.

    Raises ``ValueError`` naming an unset variable or the position of a
    malformed reference; the text itself is never quoted, as it may be a secret.
    """
    out: list[str] = []
    pos = 0
    substituted = False
    for m in _VAR_RE.finditer(text):
        out.append(text[pos : m.start()])
        pos = m.end()
        if m.group("dollar"):
            out.append("$")
            continue
        name = m.group("name")
        if name is None:
            raise ValueError(
                f"malformed variable reference at character {m.start() + 1}: expected "
                "${NAME} or ${NAME:-default} (write $$ for a literal $)"
            )
        value = environ.get(name)
        if m.group("has_default") is not None and not value:
            value = m.group("default")
        if value is None:
            raise ValueError(
                f"environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
            )
        out.append(value)
        substituted = True
    out.append(text[pos:])
    result = "".join(out)
    return FromEnv(result) if substituted else result


def expand_tree(node: Any, path: str, environ: Mapping[str, str], problems: list[Problem]) -> Any:
    """A parsed document with every string expanded; a failed one is recorded and becomes :data:`BAD`."""
    if isinstance(node, dict):
        return {k: expand_tree(v, join_key(path, str(k)), environ, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_tree(v, join_key(path, i), environ, problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "$" in node:
        try:
            return expand(node, environ)
        except ValueError as exc:
            problems.append(Problem(path, str(exc)))
            return BAD
    return node


def plain(value: Any) -> Any:
    """``value`` with every environment-marked string turned back into a plain ``str``."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
