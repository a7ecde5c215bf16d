"""Configuration: the YAML file, ``${ENV}`` expansion, validation, and the mount settings.

The file (``/etc/vaultfs/config.yaml``, or ``$VAULTFS_CONFIG``, or ``--config``)
lists backends, each a driver plus that driver's options, and the mount
settings (sections ``cache``, ``metrics``, ``mount``, ``logging``)::

    backends:
      - name: photos
        driver: s3
        config: {bucket: photos, access_key: "${AWS_KEY}", secret_key: "${AWS_SECRET}"}
        mountpoint: /mnt/photos
        cache: {size: 20GiB}          # overrides the top-level section for this backend
    cache: {dir: /var/cache/vaultfs}

A setting's value comes from, lowest first: its default, the top-level
section, the backend's section, the command line (flags and ``-o``).
:func:`resolve` applies that order for one backend.

Every setting is declared once, as a field of :class:`Settings`; its YAML
name, command-line flag and ``-o`` name are derived from that declaration
(see :data:`SETTINGS`).

``${VAR}`` and ``${VAR:-default}`` are expanded in string values after the
YAML is parsed, so a substituted secret is never re-read as YAML; ``$$`` is a
literal ``$``, and a ``$`` followed by anything else is kept as is.  Literal
YAML values must have the right YAML type, but text that came from the
environment is parsed for the field's type (``port: ${PORT}`` works), since
the environment only holds strings.

Values of driver options marked secret (``metadata={"secret": True}``) never
appear in error messages or reprs.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import decimal
import difflib
import logging
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from . import registry

log = logging.getLogger(__name__)

#: Where the configuration is read from when neither ``--config`` nor ``$VAULTFS_CONFIG`` says otherwise.
DEFAULT_PATH = "/etc/vaultfs/config.yaml"
#: The environment variable that overrides :data:`DEFAULT_PATH`.
ENV_VAR = "VAULTFS_CONFIG"

SECTIONS = ("cache", "metrics", "mount", "logging")
_TOP_KEYS = ("backends", *SECTIONS)
_BACKEND_KEYS = ("name", "driver", "config", "mountpoint", *SECTIONS)
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# The -o and attribute names: mount.* settings keep their bare names, since
# FUSE users already know ``allow_other``, ``uid``, ``umask``.
_OPTION_PREFIX = {"cache": "cache_", "metrics": "metrics_", "mount": "", "logging": "log_"}


# -- errors -----------------------------------------------------------------
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


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _suggest(key: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- value syntax ------------------------------------------------------------
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(_NUMBER + r"\s*([A-Za-z]*)")
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgtp", start=1):
    _SIZE_UNITS[_letter] = _SIZE_UNITS[_letter + "i"] = _SIZE_UNITS[_letter + "ib"] = 1024**_power
    _SIZE_UNITS[_letter + "b"] = 1000**_power
_DURATION_RE = re.compile(_NUMBER + r"\s*(ms|s|m|h|)", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"10GiB"``, ``"512MiB"``, ``"1M"``, ``"1.5G"``.

    K, M, G, T, P and KiB ... PiB are powers of 1024; KB ... PB are powers of 1000.
    Raises ``ValueError``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected an integer or a string")
    m = _SIZE_RE.fullmatch(value.strip())
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size")
    return int(decimal.Decimal(m.group(1)) * _SIZE_UNITS[unit])


def format_size(size: int) -> str:
    """The shortest exact spelling of ``size``: ``10GiB``, ``1MiB``, ``1500``."""
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def parse_duration(value: float | str) -> float:
    """Seconds from a number or a string such as ``"5"``, ``"1.5s"``, ``"500ms"``, ``"2m"``, ``"1h"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a number or a string")
    m = _DURATION_RE.fullmatch(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a duration")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


def parse_octal(value: int | str) -> int:
    """A permission mask from an int or an octal string (``"022"``, ``"0o022"``), at most 0o777."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str):
        digits = value.strip()
        digits = digits[2:] if digits[:2].lower() == "0o" else digits
        if not re.fullmatch(r"[0-7]{1,4}", digits):
            raise ValueError(f"{value!r} is not an octal number")
        mode = int(digits, 8)
    else:
        raise ValueError("expected an integer or an octal string")
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{mode:#o} is outside 0..0o777")
    return mode


def parse_listen(value: str) -> tuple[str, int] | None:
    """``(host, port)`` from ``HOST:PORT`` (``[::1]:9101`` for IPv6), or ``None`` for ``""``/``off``."""
    text = value.strip()
    if text.lower() in ("", "off"):
        return None
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host, int(port)


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError(f"{text!r} is not a boolean")


# -- settings ----------------------------------------------------------------
_EXPECTS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "size": "a size such as 10GiB, 512MiB, 1.5G or a number of bytes",
    "octal": 'an octal mode such as "022"',
    "duration": 'a duration in seconds such as 5, 2.5 or "500ms"',
    "address": 'HOST:PORT such as 127.0.0.1:9101, or "" or off to disable',
    "choice": "one of",
}
_METAVARS = {
    "str": "PATH",
    "int": "N",
    "float": "N",
    "size": "SIZE",
    "octal": "MODE",
    "duration": "SECONDS",
    "address": "HOST:PORT",
    "choice": "LEVEL",
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One mount-level setting: where it lives in YAML, its flag, its ``-o`` name, its type.

    ``type`` is one of ``str``, ``int``, ``float``, ``bool``, ``size``,
    ``octal``, ``duration``, ``address``, ``choice``.  A setting whose
    default is ``None`` also accepts ``null`` (and empty text).
    """

    section: str
    key: str
    type: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None

    @property
    def yaml_name(self) -> str:
        """``section.key``, e.g. ``cache.dir``."""
        return f"{self.section}.{self.key}"

    @property
    def option(self) -> str:
        """The ``-o`` name, which is also the :class:`Settings` attribute: ``cache_dir``."""
        return _OPTION_PREFIX[self.section] + self.key

    @property
    def flag(self) -> str:
        """The command-line flag: ``--cache-dir``."""
        return "--" + self.option.replace("_", "-")

    @property
    def nullable(self) -> bool:
        """Whether ``null`` is a valid value."""
        return self.default is None

    def expects(self) -> str:
        """What a valid value looks like, for error messages."""
        text = _EXPECTS[self.type]
        if self.type == "choice":
            text += " " + ", ".join(self.choices)
        return text + (" or null" if self.nullable else "")

    def parse(self, value: Any, *, text: bool = False) -> Any:
        """Check and convert one value; ``text=True`` for strings from the command line or environment.

        Raises ``ValueError`` whose message says what was expected.
        """
        if value is None or (text and self.nullable and value == ""):
            if self.nullable:
                return None
            raise ValueError(f"expected {self.expects()}, got null")
        try:
            result = self._convert(value, text)
        except ValueError:
            raise ValueError(f"expected {self.expects()}, got {_show(value)}") from None
        if self.minimum is not None and result < self.minimum:
            raise ValueError(f"expected at least {self.format(self.minimum)}, got {_show(value)}")
        return result

    def _convert(self, value: Any, text: bool) -> Any:
        kind = self.type
        if kind == "address" and value is False:
            return ""  # YAML reads a bare "off" as false
        if isinstance(value, bool) and kind != "bool":
            raise ValueError("a boolean")
        if kind == "size":
            return parse_size(value)
        if kind == "octal":
            return parse_octal(value)
        if kind == "duration":
            return parse_duration(value)
        if kind in ("str", "address", "choice"):
            if not isinstance(value, str):
                raise ValueError("not a string")
            if kind == "address":
                parse_listen(value)
                return "" if value.strip().lower() == "off" else value.strip()
            if kind == "choice":
                for choice in self.choices:
                    if choice.lower() == value.strip().lower():
                        return choice
                raise ValueError("not a choice")
            return str(value)
        if isinstance(value, str) and text:
            if kind == "bool":
                return _parse_bool(value)
            return int(value.strip()) if kind == "int" else float(value.strip())
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "int" and isinstance(value, int):
            return value
        if kind == "float" and isinstance(value, int | float):
            return float(value)
        raise ValueError("wrong type")

    def format(self, value: Any) -> str:
        """``value`` spelled as a user would write it (``10GiB``, ``022``, ``true``)."""
        if value is None:
            return "unset"
        if self.type == "bool":
            return "true" if value else "false"
        if self.type == "size":
            return format_size(int(value))
        if self.type == "octal":
            return f"{value:03o}"
        if self.type in ("duration", "float"):
            return f"{value:g}"
        if self.type == "address" and not value:
            return "off"
        return str(value)


def _setting(name: str, kind: str, default: Any, help: str, **extra: Any) -> Any:
    section, key = name.split(".")
    setting = Setting(section, key, kind, default, help, **extra)
    return dataclasses.field(default=default, metadata={"setting": setting})


@dataclasses.dataclass(frozen=True)
class Settings:
    """The mount-level settings of one backend, after precedence; attribute names are the ``-o`` names.

    This class body is the one table of settings: each field declares its
    YAML name, type, default and meaning; :data:`SETTINGS` is derived from it.
    """

    # A table reads best aligned, one setting per entry.
    # fmt: off
    cache_dir: str = _setting("cache.dir", "str", "/var/cache/vaultfs",
        "directory for cached blocks, staging files and the write-back journal")
    cache_size: int = _setting("cache.size", "size", 10 << 30,
        "byte budget of the block cache; least recently used blocks go first", minimum=0)
    cache_block_size: int = _setting("cache.block_size", "size", 1 << 20,
        "size of one cached block, and of one ranged read", minimum=4096)
    cache_min_free: int = _setting("cache.min_free", "size", 1 << 30,
        "free space the cache leaves on its file system, shrinking if needed", minimum=0)
    cache_enabled: bool = _setting("cache.enabled", "bool", True,
        "keep read blocks on disk; when off, every read goes to the backend")
    metrics_listen: str = _setting("metrics.listen", "address", "",
        "HOST:PORT of the /metrics and /healthz listener; off disables it, port 0 picks a free port")
    attr_ttl: float = _setting("mount.attr_ttl", "duration", 5.0,
        "seconds file attributes are trusted before the backend is asked again", minimum=0)
    dir_ttl: float = _setting("mount.dir_ttl", "duration", 5.0,
        "seconds a directory listing is trusted", minimum=0)
    uid: int | None = _setting("mount.uid", "int", None,
        "owner of files whose metadata names none (unset: the mounting user)", minimum=0)
    gid: int | None = _setting("mount.gid", "int", None,
        "group of files whose metadata names none (unset: the mounting user's)", minimum=0)
    umask: int = _setting("mount.umask", "octal", 0o022,
        "permission bits cleared on files and directories whose metadata has no mode")
    allow_other: bool = _setting("mount.allow_other", "bool", False,
        "let other users use the mount (non-root needs user_allow_other in /etc/fuse.conf)")
    read_only: bool = _setting("mount.read_only", "bool", False,
        "refuse every change (also -o ro)")
    rename_limit: int = _setting("mount.rename_limit", "int", 1000,
        "most artifacts a directory rename may copy before it is refused", minimum=0)
    workers: int = _setting("mount.workers", "int", 16,
        "concurrent backend operations (worker threads, connection pool size)", minimum=1)
    timeout: float = _setting("mount.timeout", "duration", 60.0,
        "time limit of one backend operation attempt", minimum=0.1)
    retries: int = _setting("mount.retries", "int", 5,
        "retries of a transient backend failure, with exponential backoff", minimum=0)
    read_ahead_max: int = _setting("mount.read_ahead_max", "size", 64 << 20,
        "largest read-ahead window of a sequential reader", minimum=0)
    writeback_cache: bool = _setting("mount.writeback_cache", "bool", False,
        "let the kernel buffer small writes (FUSE writeback cache)")
    foreground: bool = _setting("mount.foreground", "bool", False,
        "stay in the foreground instead of detaching")
    log_level: str = _setting("logging.level", "choice", "INFO",
        "least severe level that is logged", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    log_file: str | None = _setting("logging.file", "str", None,
        "append the log to this file (unset: standard error)")
    # fmt: on

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``(host, port)`` for the HTTP listener, or ``None`` when it is off."""
        return parse_listen(self.metrics_listen)


#: Every mount-level setting, in declaration order.
SETTINGS: tuple[Setting, ...] = tuple(f.metadata["setting"] for f in dataclasses.fields(Settings))
_BY_OPTION = {s.option: s for s in SETTINGS}
_BY_SECTION: dict[str, dict[str, Setting]] = {sec: {} for sec in SECTIONS}
for _field, _s in zip(dataclasses.fields(Settings), SETTINGS, strict=True):
    if _field.name != _s.option:  # the attribute must be the -o name, or the two drift apart
        raise RuntimeError(f"Settings.{_field.name} is declared as {_s.yaml_name} (-o {_s.option})")
    _BY_SECTION[_s.section][_s.key] = _s

_DEST = "settings."


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting (``--cache-size``, ``--allow-other/--no-allow-other`` ...).

    Only flags given on the command line end up in the namespace; collect
    them with :func:`overrides_from_args`.
    """
    group = parser.add_argument_group("settings", "override the configuration file's sections")
    for s in SETTINGS:
        help_text = f"{s.help} (default: {s.format(s.default)})".replace("%", "%%")
        if s.type == "bool":
            group.add_argument(
                s.flag,
                dest=_DEST + s.option,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(
                s.flag,
                dest=_DEST + s.option,
                type=_flag_type(s),
                metavar=_METAVARS[s.type],
                default=argparse.SUPPRESS,
                help=help_text,
            )


def _flag_type(setting: Setting) -> typing.Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return setting.parse(text, text=True)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags, by ``-o`` name, already converted."""
    return {k[len(_DEST) :]: v for k, v in vars(args).items() if k.startswith(_DEST)}


def split_option_list(text: str) -> list[str]:
    """The items of one ``-o`` value, split at commas not escaped as ``\\,``."""
    # libfuse lets a value hold a comma escaped as "\,"; keep the escape so
    # options passed through reach libfuse exactly as written.
    return [item for item in re.split(r"(?<!\\),", text) if item]


# fstab options meant for mount(8) itself, which libfuse would refuse as unknown.
_MOUNT8_ONLY = frozenset({"defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail"})


def parse_mount_options(items: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``-o`` arguments (each ``a=b,c,...``) into our settings and libfuse's options.

    Returns ``(overrides, fuse_options)``: overrides by ``-o`` name, converted;
    boolean settings may be bare words (``allow_other``); ``ro`` means
    ``read_only``; ``rw``, ``x-*`` and mount(8)'s own words (``defaults``,
    ``noauto``, ``_netdev``, ``nofail`` ...) are dropped; anything else
    (``default_permissions``, ``fsname=...``) is passed through to libfuse
    unchanged.  Raises :class:`ConfigError` for a malformed value of one of
    our settings.
    """
    overrides: dict[str, Any] = {}
    fuse: list[str] = []
    for item in items:
        for raw in split_option_list(item):
            name, eq, value = raw.partition("=")
            if raw == "rw" or raw in _MOUNT8_ONLY or raw.startswith("x-"):
                # mount(8) adds "rw" to every fstab line ("defaults"), so it must
                # not override read_only from the configuration file.
                continue
            if raw == "ro":
                overrides["read_only"] = True
                continue
            setting = _BY_OPTION.get(name)
            if setting is None:
                fuse.append(raw)
                continue
            if not eq:
                if setting.type != "bool":
                    raise ConfigError("command line", f"needs a value, e.g. -o {name}=...", key=f"-o {name}")
                overrides[name] = True
                continue
            try:
                overrides[name] = setting.parse(value.replace("\\,", ","), text=True)
            except ValueError as exc:
                raise ConfigError("command line", str(exc), key=f"-o {name}") from None
    return overrides, fuse


def render_settings_table() -> str:
    """A Markdown table of every setting: YAML name, flag, ``-o`` name, default, meaning."""
    lines = ["| YAML | flag | `-o` | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for s in SETTINGS:
        flag = f"`{s.flag}`, `--no-{s.flag[2:]}`" if s.type == "bool" else f"`{s.flag} {_METAVARS[s.type]}`"
        option = f"`{s.option}`" + (", `ro`" if s.option == "read_only" else "")
        meaning = s.help.replace("|", "\\|")
        lines.append(f"| `{s.yaml_name}` | {flag} | {option} | `{s.format(s.default)}` | {meaning} |")
    lines.append("")
    lines.append(
        "Sizes take K, M, G, T (powers of 1024, also written KiB, MiB ...) or KB, MB, GB, TB "
        "(powers of 1000); durations are seconds, or a number with ms, s, m or h."
    )
    return "\n".join(lines) + "\n"


# -- environment expansion ---------------------------------------------------
class _FromEnv(str):
    """A string that took text from the environment, so it may stand for a number or a boolean."""

    __slots__ = ()


_BAD = object()  # marks a value that already produced a problem, so it is not reported twice
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
    return _FromEnv(result) if substituted else result


def _expand_tree(node: Any, path: str, environ: Mapping[str, str], problems: list[Problem]) -> Any:
    if isinstance(node, dict):
        return {k: _expand_tree(v, _join(path, str(k)), environ, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_tree(v, _join(path, i), environ, problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "$" in node:
        try:
            return expand(node, environ)
        except ValueError as exc:
            problems.append(Problem(path, str(exc)))
            return _BAD
    return node


def _plain(value: Any) -> Any:
    """``value`` with every environment-marked string turned back into a plain ``str``."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# -- YAML --------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, which YAML would silently let the last one win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if (key_node.tag, key_node.value) in seen:
                    raise ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add((key_node.tag, key_node.value))
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        # Our own message: PyYAML's quotes the offending line, which may hold a secret.
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        what = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            what = f"{what} ({exc.context})"
        raise ConfigError(where, f"YAML syntax error: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"YAML error: {type(exc).__name__}") from None


def config_path(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The file to read: ``path`` (from ``--config``), else ``$VAULTFS_CONFIG``, else :data:`DEFAULT_PATH`."""
    environ = os.environ if environ is None else environ
    if path is not None:
        return os.fspath(path)
    return environ.get(ENV_VAR) or DEFAULT_PATH


# -- driver options ------------------------------------------------------------
class _Invalid(Exception):
    def __init__(self, message: str, suffix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.suffix = suffix


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


def _show(value: Any, secret: bool = False) -> str:
    """Describe a wrong value: by type only if it is secret or a container, else by its repr."""
    if secret or isinstance(value, list | dict) or value is None:
        return _kind(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(str(value) if isinstance(value, str) else value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    from_env = isinstance(value, _FromEnv)

    def wrong() -> _Invalid:
        hint = " (put it in quotes)" if tp is str and isinstance(value, int | float) else ""
        return _Invalid(f"expected {_describe(tp)}, got {_show(value, secret)}{hint}")

    if tp is Any or tp is object:
        return _plain(value)
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
            return value if isinstance(value, bool) else _parse_bool(value)
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
        return _plain(value)
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
            problems.append(Problem(_join(path, key), f"unknown key{_suggest(key, names)}; {accepts}"))
    for field, tp in fields:
        key = _join(path, field.name)
        if field.name not in raw:
            if _required(field):
                problems.append(
                    Problem(key, f"missing; the {driver.name} driver requires it ({_describe(tp)})")
                )
            continue
        value = raw[field.name]
        if value is _BAD:
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


# -- the configuration -------------------------------------------------------
@dataclasses.dataclass(frozen=True, repr=False)
class BackendConfig:
    """One validated entry of ``backends:``; ``settings`` holds only its own section overrides."""

    name: str
    driver_name: str
    options: Any
    mountpoint: str | None = None
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"BackendConfig(name={self.name!r}, driver_name={self.driver_name!r}, "
            f"options={redacted(self.options)!r}, mountpoint={self.mountpoint!r}, "
            f"settings={dict(self.settings)!r})"
        )


@dataclasses.dataclass(frozen=True, repr=False)
class ResolvedBackend:
    """Everything needed to mount one backend: its driver's options and its final settings."""

    name: str
    driver_name: str
    options: Any
    settings: Settings
    mountpoint: str | None = None

    def __repr__(self) -> str:
        return (
            f"ResolvedBackend(name={self.name!r}, driver_name={self.driver_name!r}, "
            f"options={redacted(self.options)!r}, settings={self.settings!r}, "
            f"mountpoint={self.mountpoint!r})"
        )


def _mapping(
    value: Any, path: str, problems: list[Problem], what: str = "a mapping"
) -> dict[str, Any] | None:
    if value is None:
        return {}
    if value is _BAD:
        return None
    if not isinstance(value, dict):
        problems.append(Problem(path, f"expected {what}, got {_show(value)}"))
        return None
    bad = [k for k in value if not isinstance(k, str)]
    for key in bad:
        problems.append(Problem(path, f"keys must be strings, got {key!r}"))
    return None if bad else value


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], path: str, problems: list[Problem]) -> None:
    for key in data:
        if key not in allowed:
            problems.append(
                Problem(
                    _join(path, key),
                    f"unknown key{_suggest(key, allowed)}; expected one of " + ", ".join(allowed),
                )
            )


def _parse_sections(data: Mapping[str, Any], path: str, problems: list[Problem]) -> dict[str, Any]:
    """The settings given in ``data``'s sections, by ``-o`` name."""
    values: dict[str, Any] = {}
    for section in SECTIONS:
        body = _mapping(data.get(section), _join(path, section), problems)
        if not body:
            continue
        known = _BY_SECTION[section]
        _check_keys(body, list(known), _join(path, section), problems)
        for key, value in body.items():
            setting = known.get(key)
            if setting is None or value is _BAD:
                continue
            try:
                values[setting.option] = setting.parse(value, text=isinstance(value, _FromEnv))
            except ValueError as exc:
                problems.append(Problem(_join(_join(path, section), key), str(exc)))
    return values


def _parse_backend(raw: Any, path: str, problems: list[Problem]) -> BackendConfig | None:
    entry = _mapping(raw, path, problems, "a mapping with name, driver and config")
    if entry is None:
        return None
    before = len(problems)
    _check_keys(entry, _BACKEND_KEYS, path, problems)
    name = entry.get("name")
    if name is None:
        problems.append(Problem(_join(path, "name"), "missing; expected a name made of A-Z a-z 0-9 _ . -"))
    elif name is not _BAD and (
        not isinstance(name, str) or not _NAME_RE.fullmatch(name) or set(name) == {"."}
    ):
        problems.append(
            Problem(_join(path, "name"), f"expected a name made of A-Z a-z 0-9 _ . -, got {_show(name)}")
        )
    mountpoint = entry.get("mountpoint")
    if (
        mountpoint is not None
        and mountpoint is not _BAD
        and (not isinstance(mountpoint, str) or not os.path.isabs(mountpoint))
    ):
        problems.append(
            Problem(_join(path, "mountpoint"), f"expected an absolute path, got {_show(mountpoint)}")
        )
    settings = _parse_sections(entry, path, problems)
    options = None
    driver_name = entry.get("driver")
    if driver_name is None:
        problems.append(Problem(_join(path, "driver"), "missing; " + registry.installed_message()))
    elif not isinstance(driver_name, str):
        if driver_name is not _BAD:
            problems.append(
                Problem(_join(path, "driver"), f"expected a driver name, got {_show(driver_name)}")
            )
    else:
        try:
            driver = registry.load(driver_name)
        except registry.RegistryError as exc:
            problems.append(Problem(_join(path, "driver"), str(exc)))
        else:
            config = _mapping(entry.get("config"), _join(path, "config"), problems)
            if config is not None:
                options = build_options(driver, config, _join(path, "config"), problems)
    if len(problems) > before:
        return None
    return BackendConfig(str(name), str(driver_name), options, _plain(mountpoint), settings)


def _parse_backends(raw: Any, problems: list[Problem]) -> list[BackendConfig]:
    """The valid entries of ``backends:``, checking that names and mountpoints are unique."""
    if raw is _BAD:
        return []
    if not isinstance(raw, list) or not raw:
        expected = "expected a list of at least one backend (each with name, driver and config)"
        problems.append(Problem("backends", expected))
        return []
    backends: list[BackendConfig] = []
    first_index: dict[str, int] = {}
    mounts: dict[str, str] = {}
    for i, entry in enumerate(raw):
        backend = _parse_backend(entry, _join("backends", i), problems)
        if backend is None:
            continue
        if backend.name in first_index:
            also = f"also backends[{first_index[backend.name]}]"
            problems.append(
                Problem(f"backends[{i}].name", f"duplicate backend name {backend.name!r} ({also})")
            )
        first_index.setdefault(backend.name, i)
        if backend.mountpoint:
            point = os.path.normpath(backend.mountpoint)
            if point in mounts:
                taken = f"{backend.mountpoint} is also the mountpoint of {mounts[point]!r}"
                problems.append(Problem(f"backends[{i}].mountpoint", taken))
            mounts.setdefault(point, backend.name)
        backends.append(backend)
    return backends


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated configuration: the backends and the top-level settings sections.

    ``source`` names where it came from (the file path) and prefixes errors.
    """

    source: str
    backends: tuple[BackendConfig, ...]
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> Config:
        """Read and validate the configuration file chosen by :func:`config_path`."""
        environ = os.environ if environ is None else environ
        chosen = config_path(path, environ)
        if path is not None:
            how = "given with --config"
        elif environ.get(ENV_VAR):
            how = f"from ${ENV_VAR}"
        else:
            how = f"the default; set ${ENV_VAR} or pass --config PATH to use another file"
        try:
            with open(chosen, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ConfigError(chosen, f"no such file ({how})") from None
        except IsADirectoryError:
            raise ConfigError(chosen, f"is a directory, not a configuration file ({how})") from None
        except OSError as exc:
            raise ConfigError(chosen, f"cannot read: {exc.strerror} ({how})") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(chosen, f"not UTF-8 text (byte {exc.start})") from None
        config = cls.from_text(text, chosen, environ)
        log.debug("read %s: %d backends", chosen, len(config.backends))
        return config

    @classmethod
    def from_text(cls, text: str, source: str, environ: Mapping[str, str] | None = None) -> Config:
        """Parse and validate YAML text; ``source`` names it in errors."""
        return cls.from_dict(_parse_yaml(text, source), source, environ)

    @classmethod
    def from_dict(cls, data: Any, source: str, environ: Mapping[str, str] | None = None) -> Config:
        """Validate an already parsed document (expanding ``${VAR}`` against ``environ``)."""
        environ = os.environ if environ is None else environ
        problems: list[Problem] = []
        top = _mapping(data, "", problems, "a mapping with a backends list")
        if top is None:
            raise ConfigError(source, problems)
        top = _expand_tree(top, "", environ, problems)
        _check_keys(top, _TOP_KEYS, "", problems)
        settings = _parse_sections(top, "", problems)
        backends = _parse_backends(top.get("backends"), problems)
        if problems:
            raise ConfigError(source, problems)
        return cls(source, tuple(backends), settings)

    @classmethod
    def for_directory(cls, path: str | os.PathLike[str], name: str | None = None) -> Config:
        """The built-in configuration that mounts one local directory: a ``local`` backend, ``root=path``.

        The backend is named ``name``, or after the directory.
        """
        root = os.path.abspath(os.fspath(path))
        if name is None:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(root)).strip(".") or "root"
        # The path is data, not a template: escape "$" so expansion gives it back unchanged.
        backend = {"name": name, "driver": "local", "config": {"root": root.replace("$", "$$")}}
        document = {"backends": [backend]}
        return cls.from_dict(document, f"built-in configuration for {root}", environ={})

    @property
    def names(self) -> list[str]:
        """The backends' names, in file order."""
        return [b.name for b in self.backends]

    def backend(self, name: str | None = None) -> BackendConfig:
        """The backend called ``name``; with ``None``, the only one (an error if there are several)."""
        if name is None:
            if len(self.backends) == 1:
                return self.backends[0]
            raise ConfigError(self.source, "several backends are defined; name one: " + ", ".join(self.names))
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise ConfigError(
            self.source,
            f"no backend named {name!r}{_suggest(name, self.names)}; defined: " + ", ".join(self.names),
        )


def resolve(
    config: Config,
    backend_name: str | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
    *,
    mountpoint: str | None = None,
) -> ResolvedBackend:
    """One backend with its final settings: defaults < top-level section < backend's section < command line.

    ``cli_overrides`` maps ``-o`` names to values, converted (as from
    :func:`overrides_from_args` and :func:`parse_mount_options`) or as text.
    ``mountpoint``, when given, replaces the backend's.
    """
    backend = config.backend(backend_name)
    values: dict[str, Any] = {**config.settings, **backend.settings}
    problems: list[Problem] = []
    for name, value in (cli_overrides or {}).items():
        setting = _BY_OPTION.get(name)
        if setting is None:
            problems.append(Problem(name, f"unknown setting{_suggest(name, _BY_OPTION)}"))
            continue
        try:
            values[name] = setting.parse(value, text=isinstance(value, str))
        except ValueError as exc:
            problems.append(Problem(setting.flag, str(exc)))
    if problems:
        raise ConfigError("command line", problems)
    return ResolvedBackend(
        backend.name,
        backend.driver_name,
        backend.options,
        Settings(**values),
        mountpoint if mountpoint is not None else backend.mountpoint,
    )
