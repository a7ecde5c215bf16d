"""The mount-level settings, and the syntax of their values.

Every setting is declared once, as a field of :class:`Settings`; its YAML
name (``section.key``), command-line flag and ``-o`` name are derived from
that declaration (see :data:`SETTINGS`).  :func:`add_setting_flags` and
:func:`overrides_from_args` give the flags, :func:`parse_mount_options` reads
``-o``, and :func:`render_settings_table` documents them all.

Sizes (``10GiB``), durations (``500ms``), permission masks (``022``) and
listen addresses (``HOST:PORT``) are parsed by :func:`parse_size`,
:func:`parse_duration`, :func:`parse_octal` and :func:`parse_listen`.
"""

from __future__ import annotations

import argparse
import dataclasses
import decimal
import re
import typing
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError, show_value

#: The sections of the configuration file (top level or per backend) that hold settings.
SECTIONS = ("cache", "metrics", "mount", "logging")
# The -o and attribute names: mount.* settings keep their bare names, since
# FUSE users already know ``allow_other``, ``uid``, ``umask``.
_OPTION_PREFIX = {"cache": "cache_", "metrics": "metrics_", "mount": "", "logging": "log_"}


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


def parse_bool(text: str) -> bool:
    """A boolean from ``true``/``yes``/``on``/``1`` or ``false``/``no``/``off``/``0``, any case."""
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
            raise ValueError(f"expected {self.expects()}, got {show_value(value)}") from None
        if self.minimum is not None and result < self.minimum:
            raise ValueError(f"expected at least {self.format(self.minimum)}, got {show_value(value)}")
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
                return parse_bool(value)
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
    upload_workers: int = _setting("mount.upload_workers", "int", 8,
        "uploads the write-back queue runs at once (each also takes one of the workers)", minimum=1)
    timeout: float = _setting("mount.timeout", "duration", 60.0,
        "time limit of one backend operation attempt", minimum=0.1)
    retries: int = _setting("mount.retries", "int", 5,
        "retries of a transient backend failure, with exponential backoff", minimum=0)
    read_ahead_max: int = _setting("mount.read_ahead_max", "size", 32 << 20,
        "largest read-ahead window of a sequential reader; the daemon keeps up to twice this of read blocks"
        " in memory", minimum=0)
    read_ahead_files: int = _setting("mount.read_ahead_files", "int", 16,
        "most files of a directory read one after another whose first block is fetched ahead; 0 turns"
        " it off", minimum=0)
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
#: Each setting by its ``-o`` name (its :class:`Settings` attribute).
BY_OPTION = {s.option: s for s in SETTINGS}
#: Each setting by section, then by its key within the section.
BY_SECTION: dict[str, dict[str, Setting]] = {sec: {} for sec in SECTIONS}
for _field, _s in zip(dataclasses.fields(Settings), SETTINGS, strict=True):
    if _field.name != _s.option:  # the attribute must be the -o name, or the two drift apart
        raise RuntimeError(f"Settings.{_field.name} is declared as {_s.yaml_name} (-o {_s.option})")
    BY_SECTION[_s.section][_s.key] = _s

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
            setting = BY_OPTION.get(name)
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
