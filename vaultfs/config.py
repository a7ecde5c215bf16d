"""The configuration file: reading it, validating its backends, and each backend's final settings.

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

The YAML is parsed here (duplicate keys refused), ``${VAR}`` references are
expanded by :mod:`vaultfs.environment`, the sections are checked against the
settings declared in :mod:`vaultfs.settings`, and each backend's ``config:``
becomes its driver's options through :mod:`vaultfs.options`.  Every problem
found is reported at once, in one :class:`~vaultfs.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from . import registry
from .environment import FromEnv, expand_tree, plain
from .errors import BAD, ConfigError, Problem, join_key, show_value, suggest
from .options import build_options, redacted
from .settings import BY_OPTION, BY_SECTION, SECTIONS, Settings

log = logging.getLogger(__name__)

#: Where the configuration is read from when neither ``--config`` nor ``$VAULTFS_CONFIG`` says otherwise.
DEFAULT_PATH = "/etc/vaultfs/config.yaml"
#: The environment variable that overrides :data:`DEFAULT_PATH`.
ENV_VAR = "VAULTFS_CONFIG"

_TOP_KEYS = ("backends", *SECTIONS)
_BACKEND_KEYS = ("name", "driver", "config", "mountpoint", *SECTIONS)
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


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
    if value is BAD:
        return None
    if not isinstance(value, dict):
        problems.append(Problem(path, f"expected {what}, got {show_value(value)}"))
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
                    join_key(path, key),
                    f"unknown key{suggest(key, allowed)}; expected one of " + ", ".join(allowed),
                )
            )


def _parse_sections(data: Mapping[str, Any], path: str, problems: list[Problem]) -> dict[str, Any]:
    """The settings given in ``data``'s sections, by ``-o`` name."""
    values: dict[str, Any] = {}
    for section in SECTIONS:
        body = _mapping(data.get(section), join_key(path, section), problems)
        if not body:
            continue
        known = BY_SECTION[section]
        _check_keys(body, list(known), join_key(path, section), problems)
        for key, value in body.items():
            setting = known.get(key)
            if setting is None or value is BAD:
                continue
            try:
                values[setting.option] = setting.parse(value, text=isinstance(value, FromEnv))
            except ValueError as exc:
                problems.append(Problem(join_key(join_key(path, section), key), str(exc)))
    return values


def _parse_backend(raw: Any, path: str, problems: list[Problem]) -> BackendConfig | None:
    entry = _mapping(raw, path, problems, "a mapping with name, driver and config")
    if entry is None:
        return None
    before = len(problems)
    _check_keys(entry, _BACKEND_KEYS, path, problems)
    name = entry.get("name")
    if name is None:
        problems.append(Problem(join_key(path, "name"), "missing; expected a name made of A-Z a-z 0-9 _ . -"))
    elif name is not BAD and (
        not isinstance(name, str) or not _NAME_RE.fullmatch(name) or set(name) == {"."}
    ):
        problems.append(
            Problem(
                join_key(path, "name"), f"expected a name made of A-Z a-z 0-9 _ . -, got {show_value(name)}"
            )
        )
    mountpoint = entry.get("mountpoint")
    if (
        mountpoint is not None
        and mountpoint is not BAD
        and (not isinstance(mountpoint, str) or not os.path.isabs(mountpoint))
    ):
        problems.append(
            Problem(join_key(path, "mountpoint"), f"expected an absolute path, got {show_value(mountpoint)}")
        )
    settings = _parse_sections(entry, path, problems)
    options = None
    driver_name = entry.get("driver")
    if driver_name is None:
        problems.append(Problem(join_key(path, "driver"), "missing; " + registry.installed_message()))
    elif not isinstance(driver_name, str):
        if driver_name is not BAD:
            problems.append(
                Problem(join_key(path, "driver"), f"expected a driver name, got {show_value(driver_name)}")
            )
    else:
        try:
            driver = registry.load(driver_name)
        except registry.RegistryError as exc:
            problems.append(Problem(join_key(path, "driver"), str(exc)))
        else:
            config = _mapping(entry.get("config"), join_key(path, "config"), problems)
            if config is not None:
                options = build_options(driver, config, join_key(path, "config"), problems)
    if len(problems) > before:
        return None
    return BackendConfig(str(name), str(driver_name), options, plain(mountpoint), settings)


def _parse_backends(raw: Any, problems: list[Problem]) -> list[BackendConfig]:
    """The valid entries of ``backends:``, checking that names and mountpoints are unique."""
    if raw is BAD:
        return []
    if not isinstance(raw, list) or not raw:
        expected = "expected a list of at least one backend (each with name, driver and config)"
        problems.append(Problem("backends", expected))
        return []
    backends: list[BackendConfig] = []
    first_index: dict[str, int] = {}
    mounts: dict[str, str] = {}
    for i, entry in enumerate(raw):
        backend = _parse_backend(entry, join_key("backends", i), problems)
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
        top = expand_tree(top, "", environ, problems)
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
            f"no backend named {name!r}{suggest(name, self.names)}; defined: " + ", ".join(self.names),
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
        setting = BY_OPTION.get(name)
        if setting is None:
            problems.append(Problem(name, f"unknown setting{suggest(name, BY_OPTION)}"))
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
