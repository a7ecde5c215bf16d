"""The configuration file, ``${ENV}`` expansion, settings and their precedence.

Errors are checked by the message a user reads: the file, the key path, and
what was expected.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from test_registry import SECRET, write_plugins

from vaultfs import config, environment, settings
from vaultfs.config import Config
from vaultfs.errors import ConfigError
from vaultfs.options import redact_text, redacted


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_plugins(tmp_path / "site")
    monkeypatch.syspath_prepend(str(path))
    return path


def write(tmp_path: Path, text: str, name: str = "vaultfs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """The error a config file gives, and the file's path."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        Config.load(path, environ=environ or {})
    return str(err.value), str(path)


MEMORY = "backends:\n  - name: m\n    driver: memory\n"


def fake(config_text: str) -> str:
    return f"backends:\n  - name: f\n    driver: fake\n    config: {config_text}\n"


# -- ${ENV} expansion ------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${HOST}", "example.org"),
        ("https://${HOST}:${PORT}/", "https://example.org:9000/"),
        ("${MISSING:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${HOST:-fallback}", "example.org"),
        ("${EMPTY}", ""),
        ("${MISSING:-}", ""),
        ("pa$$word", "pa$word"),
        ("$${HOST}", "${HOST}"),
        ("cost: 5$ and $HOST", "cost: 5$ and $HOST"),
        ("${MISSING:-a$b}", "a$b"),
        ("no dollars", "no dollars"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    environ = {"HOST": "example.org", "PORT": "9000", "EMPTY": ""}
    assert environment.expand(text, environ) == expected


def test_expanded_text_is_not_expanded_again() -> None:
    assert environment.expand("${A}", {"A": "${B}", "B": "no"}) == "${B}"


@pytest.mark.parametrize("text", ["${1ABC}", "${UNCLOSED", "${A:b}", "${}", "x${A-b}"])
def test_malformed_reference(text: str) -> None:
    with pytest.raises(
        ValueError, match=r"malformed variable reference at character \d+.*\$\$ for a literal"
    ):
        environment.expand(text, {"A": "1"})


def test_unset_variable_names_file_key_and_variable(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, MEMORY + "mount:\n  uid: ${VAULT_UID}\n")
    assert message == (
        f"{path}: mount.uid: environment variable VAULT_UID is not set "
        "(write ${VAULT_UID:-default} to give a default)"
    )


def test_unset_variable_in_driver_options(tmp_path: Path, plugins: Path) -> None:
    text = "backends:\n  - name: f\n    driver: fake\n    config: {endpoint: 'https://${S3_HOST}/'}\n"
    message, path = load_error(tmp_path, text)
    assert message.startswith(f"{path}: backends[0].config.endpoint: environment variable S3_HOST is not set")


def test_expansion_is_on_values_only_and_after_parsing(tmp_path: Path, plugins: Path) -> None:
    # A secret full of YAML syntax stays one opaque string.
    token = "a: b, [c] {d} # e $$ 'f\" \n- g"
    path = write(
        tmp_path,
        "backends:\n  - name: f\n    driver: fake\n"
        "    config: {endpoint: x, token: '${TOKEN}', '${KEY}': 1}\n",
    )
    with pytest.raises(ConfigError, match=r"backends\[0\]\.config\.\$\{KEY\}: unknown key"):
        Config.load(path, environ={"TOKEN": token, "KEY": "port"})
    path = write(
        tmp_path, "backends:\n  - name: f\n    driver: fake\n    config: {endpoint: x, token: '${TOKEN}'}\n"
    )
    options = Config.load(path, environ={"TOKEN": token}).backends[0].options
    assert options.token == token and type(options.token) is str


def test_environment_text_is_parsed_for_the_field_type(tmp_path: Path, plugins: Path) -> None:
    text = (
        "backends:\n  - name: f\n    driver: fake\n"
        "    config: {endpoint: x, port: '${PORT}', ratio: '${RATIO}', verbose: '${VERBOSE:-no}',"
        " region: '${REGION:-}'}\n"
        "mount: {workers: '${WORKERS}', allow_other: '${ALLOW:-true}', uid: '${UID_:-}'}\n"
    )
    cfg = Config.load(write(tmp_path, text), environ={"PORT": "9000", "RATIO": "0.5", "WORKERS": "4"})
    options = cfg.backends[0].options
    assert (options.port, options.ratio, options.verbose, options.region) == (9000, 0.5, False, None)
    assert cfg.settings == {"workers": 4, "allow_other": True, "uid": None}


def test_literal_yaml_strings_are_not_numbers(tmp_path: Path, plugins: Path) -> None:
    text = fake("{endpoint: x, port: '9000'}") + "mount: {workers: '4'}\n"
    message, path = load_error(tmp_path, text)
    assert f"{path}: mount.workers: expected an integer, got '4'" in message
    assert f"{path}: backends[0].config.port: expected an integer, got '9000'" in message


# -- the file ---------------------------------------------------------------------
def test_missing_default_file_says_how_to_choose_another(tmp_path: Path) -> None:
    if os.path.exists(config.DEFAULT_PATH):
        pytest.skip("this machine has a real /etc/vaultfs/config.yaml")
    with pytest.raises(ConfigError) as err:
        Config.load(environ={})
    assert str(err.value) == (
        "/etc/vaultfs/config.yaml: no such file (the default; set $VAULTFS_CONFIG "
        "or pass --config PATH to use another file)"
    )


def test_config_path_precedence(tmp_path: Path) -> None:
    assert config.config_path(None, {}) == config.DEFAULT_PATH
    assert config.config_path(None, {"VAULTFS_CONFIG": "/env.yaml"}) == "/env.yaml"
    assert config.config_path("/flag.yaml", {"VAULTFS_CONFIG": "/env.yaml"}) == "/flag.yaml"
    env_file = write(tmp_path, MEMORY, "env.yaml")
    assert Config.load(environ={"VAULTFS_CONFIG": str(env_file)}).source == str(env_file)
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"^{missing}: no such file \(from \$VAULTFS_CONFIG\)$"):
        Config.load(environ={"VAULTFS_CONFIG": str(missing)})
    with pytest.raises(ConfigError, match=rf"^{missing}: no such file \(given with --config\)$"):
        Config.load(missing, environ={"VAULTFS_CONFIG": str(env_file)})


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: is a directory"):
        Config.load(tmp_path, environ={})


def test_yaml_syntax_error_gives_line_and_column_without_quoting(tmp_path: Path) -> None:
    text = f'backends:\n  - name: m\n    driver: memory\n    config: {{token: "{SECRET}" oops}}\n'
    message, path = load_error(tmp_path, text)
    assert message.startswith(f"{path}:4:")
    assert "YAML syntax error" in message
    assert SECRET not in message


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, MEMORY + "cache: {size: 1G}\ncache: {size: 2G}\n")
    assert message == f"{path}:5:1: YAML syntax error: duplicate key 'cache'"


def test_empty_file_and_wrong_shapes(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "")
    assert (
        message
        == f"{path}: backends: expected a list of at least one backend (each with name, driver and config)"
    )
    message, path = load_error(tmp_path, "- just a list\n")
    assert message == f"{path}: expected a mapping with a backends list, got a list"
    message, path = load_error(tmp_path, "backends:\n  - memory\n")
    assert message == f"{path}: backends[0]: expected a mapping with name, driver and config, got 'memory'"


def test_unknown_top_level_and_section_keys(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, MEMORY + "cahce: {size: 1G}\nmount: {atr_ttl: 3}\n")
    assert message.splitlines() == [
        f"{path}: cahce: unknown key (did you mean 'cache'?); expected one of backends, cache, metrics, "
        "mount, logging",
        f"{path}: mount.atr_ttl: unknown key (did you mean 'attr_ttl'?); expected one of attr_ttl, dir_ttl, "
        "uid, gid, umask, allow_other, read_only, rename_limit, workers, upload_workers, timeout, retries, "
        "read_ahead_max, read_ahead_files, writeback_cache, foreground",
    ]


def test_backend_entry_errors(tmp_path: Path) -> None:
    text = """\
backends:
  - name: "bad name!"
    driver: memory
  - name: ok
    drivr: memory
  - name: ok
    driver: memory
    mountpoint: relative/dir
  - name: a
    driver: memory
    mountpoint: /mnt/a
  - name: a
    driver: memory
    mountpoint: /mnt/a/
"""
    message, path = load_error(tmp_path, text)
    assert message.splitlines() == [
        f"{path}: backends[0].name: expected a name made of A-Z a-z 0-9 _ . -, got 'bad name!'",
        f"{path}: backends[1].drivr: unknown key (did you mean 'driver'?); expected one of name, driver, "
        "config, mountpoint, cache, metrics, mount, logging",
        f"{path}: backends[1].driver: missing; installed drivers: " + ", ".join(config.registry.available()),
        f"{path}: backends[2].mountpoint: expected an absolute path, got 'relative/dir'",
        f"{path}: backends[4].name: duplicate backend name 'a' (also backends[3])",
        f"{path}: backends[4].mountpoint: /mnt/a/ is also the mountpoint of 'a'",
    ]


def test_unknown_driver_lists_the_installed_ones(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "backends:\n  - {name: x, driver: s3x}\n")
    assert message.startswith(
        f"{path}: backends[0].driver: unknown driver 's3x' (did you mean 's3'?); installed drivers: "
    )
    for name in ("local", "lyve", "memory", "s3"):
        assert name in message


def test_a_plugin_that_fails_to_load_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(write_plugins(tmp_path / "bad", bad=True)))
    message, path = load_error(tmp_path, "backends:\n  - {name: x, driver: broken}\n")
    assert message.startswith(
        f"{path}: backends[0].driver: driver 'broken' (entry point 'broken = vaultfs_testplug_broken:Driver'"
    )
    assert "ImportError: the fake SDK is not installed" in message


# -- driver options ---------------------------------------------------------------
def test_driver_options_are_built(tmp_path: Path, plugins: Path) -> None:
    text = fake("{endpoint: 'https://h', port: 9000, ratio: 2, verbose: true, hosts: [a, b], mode: fast}")
    cfg = Config.load(
        write(tmp_path, text.replace("mode:", "region: null, mode:")),
        environ={},
    )
    options = cfg.backends[0].options
    assert type(options).__name__ == "FakeOptions"
    assert (options.endpoint, options.port, options.ratio, options.verbose) == ("https://h", 9000, 2.0, True)
    assert (options.hosts, options.region, options.mode) == (["a", "b"], None, "fast")
    assert isinstance(options.ratio, float)


def test_unknown_option_suggests_a_close_match(tmp_path: Path, plugins: Path) -> None:
    message, path = load_error(tmp_path, fake("{endpont: x}"))
    accepts = (
        "the fake driver accepts: endpoint (required), token, password, port, ratio, verbose, hosts, "
        "region, mode"
    )
    assert message.splitlines() == [
        f"{path}: backends[0].config.endpont: unknown key (did you mean 'endpoint'?); {accepts}",
        f"{path}: backends[0].config.endpoint: missing; the fake driver requires it (a string)",
    ]


def test_option_type_errors(tmp_path: Path, plugins: Path) -> None:
    message, path = load_error(
        tmp_path,
        fake("{endpoint: 5, port: abc, ratio: true, verbose: 'yes', hosts: [a, 2], mode: slow, region: [x]}"),
    )
    prefix = f"{path}: backends[0].config."
    assert message.splitlines() == [
        prefix + "endpoint: expected a string, got 5 (put it in quotes)",
        prefix + "port: expected an integer, got 'abc'",
        prefix + "ratio: expected a number, got true",
        prefix + "verbose: expected true or false, got 'yes'",
        prefix + "hosts[1]: expected a string, got 2 (put it in quotes)",
        prefix + "region: expected a string or null, got a list",
        prefix + "mode: expected one of 'fast', 'safe', got 'slow'",
    ]


def test_driver_with_no_options(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, MEMORY + "    config: {size: 1}\n")
    assert message == f"{path}: backends[0].config.size: unknown key; the memory driver takes no options"
    message, path = load_error(tmp_path, MEMORY + "    config: [1]\n")
    assert message == f"{path}: backends[0].config: expected a mapping, got a list"


# -- secrets ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "config_text",
    [
        f"{{endpoint: x, token: [{SECRET}]}}",
        f"{{endpoint: x, token: {{{SECRET}: 1}}}}",
        f"{{endpoint: x, password: [{SECRET}]}}",
        f"{{endpoint: reject, token: {SECRET}}}",
        f"{{endpoint: x, token: {SECRET}, port: nope}}",
        f"{{endpoint: x, token: '{SECRET}${{oops'}}",
        f"{{endpoint: x, token: '{SECRET}${{UNSET_VAR}}'}}",
    ],
)
def test_secrets_never_appear_in_errors(tmp_path: Path, plugins: Path, config_text: str) -> None:
    message, path = load_error(tmp_path, fake(config_text))
    assert message.startswith(f"{path}: backends[0].config")
    assert SECRET not in message


def test_secret_type_error_names_the_type_only(tmp_path: Path, plugins: Path) -> None:
    message, path = load_error(tmp_path, fake(f"{{endpoint: x, token: [{SECRET}]}}"))
    assert message == f"{path}: backends[0].config.token: expected a string, got a list"
    message, path = load_error(tmp_path, fake("{endpoint: reject, token: '${TOKEN}'}"), {"TOKEN": SECRET})
    assert message == f"{path}: backends[0].config: endpoint reject does not accept token ***"


def test_secrets_never_appear_in_reprs(tmp_path: Path, plugins: Path) -> None:
    path = write(tmp_path, fake("{endpoint: x, token: '${TOKEN}', password: '${TOKEN}'}"))
    cfg = Config.load(path, environ={"TOKEN": SECRET})
    resolved = config.resolve(cfg, "f")
    assert resolved.options.password == SECRET
    for text in (repr(cfg), repr(cfg.backends[0]), repr(resolved), str(redacted(resolved.options))):
        assert SECRET not in text
        assert "'password': '***'" in text
    assert redact_text(f"boom {SECRET}!", resolved.options) == "boom ***!"


# -- setting values -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "size"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("10GiB", 10 << 30),
        ("512MiB", 512 << 20),
        ("1M", 1 << 20),
        ("1.5G", 3 << 29),
        ("2k", 2048),
        ("1KB", 1000),
        ("3 GB", 3 * 10**9),
        ("1mib", 1 << 20),
        ("0", 0),
        ("2T", 2 << 40),
        (".5K", 512),
    ],
)
def test_parse_size(text: int | str, size: int) -> None:
    assert settings.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "10 GiBs", "-1", "1e9", "10 XB", -5, 1.5, True])
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        settings.parse_size(text)  # type: ignore[arg-type]


def test_format_size() -> None:
    assert [settings.format_size(n) for n in (10 << 30, 1 << 20, 1536, 1000, 0)] == [
        "10GiB",
        "1MiB",
        "1536",
        "1000",
        "0",
    ]
    assert settings.format_size(3 << 29) == "1536MiB"


@pytest.mark.parametrize(
    ("value", "mode"), [("022", 0o022), ("0o027", 0o027), ("0777", 0o777), ("7", 7), (0o022, 0o022), (18, 18)]
)
def test_parse_octal(value: int | str, mode: int) -> None:
    assert settings.parse_octal(value) == mode


@pytest.mark.parametrize("value", ["089", "0x12", "", "1000", 0o1000, -1])
def test_parse_octal_refuses(value: int | str) -> None:
    with pytest.raises(ValueError):
        settings.parse_octal(value)


def test_parse_duration_and_listen() -> None:
    assert [settings.parse_duration(v) for v in (5, 2.5, "5", "1.5s", "500ms", "2m", "1h")] == [
        5.0,
        2.5,
        5.0,
        1.5,
        0.5,
        120.0,
        3600.0,
    ]
    with pytest.raises(ValueError):
        settings.parse_duration("5 days")
    assert settings.parse_listen("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert settings.parse_listen("[::1]:0") == ("::1", 0)
    assert settings.parse_listen("") is None and settings.parse_listen("off") is None
    for bad in ("9101", ":9101", "host:", "host:99999"):
        with pytest.raises(ValueError):
            settings.parse_listen(bad)


def test_setting_values_from_yaml(tmp_path: Path) -> None:
    cfg = Config.load(
        write(
            tmp_path,
            MEMORY
            + """\
cache: {size: 20GiB, block_size: 4MiB, min_free: 512M, enabled: false, dir: /srv/cache}
metrics: {listen: off}
mount: {umask: "027", attr_ttl: 1.5, dir_ttl: 500ms, uid: 1000, gid: null, read_ahead_max: 1G}
logging: {level: debug, file: /var/log/vaultfs.log}
""",
        ),
        environ={},
    )
    s = config.resolve(cfg).settings
    assert (s.cache_size, s.cache_block_size, s.cache_min_free) == (20 << 30, 4 << 20, 512 << 20)
    assert (s.cache_enabled, s.cache_dir, s.metrics_listen, s.metrics_address) == (
        False,
        "/srv/cache",
        "",
        None,
    )
    assert (s.umask, s.attr_ttl, s.dir_ttl, s.uid, s.gid) == (0o027, 1.5, 0.5, 1000, None)
    assert (s.read_ahead_max, s.log_level, s.log_file) == (1 << 30, "DEBUG", "/var/log/vaultfs.log")


def test_setting_value_errors(tmp_path: Path) -> None:
    message, path = load_error(
        tmp_path,
        MEMORY
        + """\
cache: {size: lots, block_size: 1K, enabled: 1}
metrics: {listen: 9101}
mount: {umask: "999", workers: 0, timeout: -1, uid: abc, allow_other: "yes"}
logging: {level: LOUD}
""",
    )
    assert message.splitlines() == [
        f"{path}: {line}"
        for line in [
            "cache.size: expected a size such as 10GiB, 512MiB, 1.5G or a number of bytes, got 'lots'",
            "cache.block_size: expected at least 4KiB, got '1K'",
            "cache.enabled: expected true or false, got 1",
            'metrics.listen: expected HOST:PORT such as 127.0.0.1:9101, or "" or off to disable, got 9101',
            "mount.umask: expected an octal mode such as \"022\", got '999'",
            "mount.workers: expected at least 1, got 0",
            "mount.timeout: expected at least 0.1, got -1",
            "mount.uid: expected an integer or null, got 'abc'",
            "mount.allow_other: expected true or false, got 'yes'",
            "logging.level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'",
        ]
    ]


# -- precedence -------------------------------------------------------------------
PRECEDENCE = """\
backends:
  - name: photos
    driver: memory
    mountpoint: /mnt/photos
    cache: {size: 3G}
    mount: {attr_ttl: 3, read_only: true}
  - name: docs
    driver: memory
cache: {size: 2G, block_size: 2M}
mount: {attr_ttl: 2, workers: 2}
"""


def test_precedence_defaults_top_level_backend_command_line(tmp_path: Path) -> None:
    cfg = Config.load(write(tmp_path, PRECEDENCE), environ={})
    docs = config.resolve(cfg, "docs").settings
    assert (docs.cache_size, docs.cache_block_size, docs.attr_ttl, docs.workers) == (2 << 30, 2 << 20, 2.0, 2)
    assert (docs.read_only, docs.retries, docs.cache_min_free) == (False, 5, 1 << 30)  # defaults

    photos = config.resolve(cfg, "photos")
    assert photos.mountpoint == "/mnt/photos" and photos.driver_name == "memory"
    s = photos.settings
    assert (s.cache_size, s.cache_block_size, s.attr_ttl, s.read_only, s.workers) == (
        3 << 30,
        2 << 20,
        3.0,
        True,
        2,
    )

    overrides, fuse = settings.parse_mount_options(["cache_size=4G,workers=8"])
    overrides["attr_ttl"] = "9"  # text, as a caller without argparse may pass it
    s = config.resolve(cfg, "photos", overrides, mountpoint="/elsewhere").settings
    assert (s.cache_size, s.workers, s.attr_ttl, s.cache_block_size) == (4 << 30, 8, 9.0, 2 << 20)
    assert config.resolve(cfg, "photos", {}, mountpoint="/elsewhere").mountpoint == "/elsewhere"
    assert fuse == []


def test_command_line_flags(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    settings.add_setting_flags(parser)
    args = parser.parse_args(
        [
            "--cache-size",
            "1G",
            "--no-cache-enabled",
            "--allow-other",
            "--umask",
            "077",
            "--attr-ttl",
            "250ms",
            "--log-level",
            "debug",
        ]
    )
    overrides = settings.overrides_from_args(args)
    assert overrides == {
        "cache_size": 1 << 30,
        "cache_enabled": False,
        "allow_other": True,
        "umask": 0o077,
        "attr_ttl": 0.25,
        "log_level": "DEBUG",
    }
    assert settings.overrides_from_args(parser.parse_args([])) == {}
    cfg = Config.load(write(tmp_path, PRECEDENCE), environ={})
    s = config.resolve(cfg, "photos", overrides).settings
    assert (s.cache_size, s.cache_enabled, s.allow_other, s.umask, s.attr_ttl) == (
        1 << 30,
        False,
        True,
        0o077,
        0.25,
    )


def test_bad_flag_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="vaultfs")
    settings.add_setting_flags(parser)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--cache-size", "huge"])
    assert exit_.value.code == 2
    assert (
        "argument --cache-size: expected a size such as 10GiB, 512MiB, 1.5G or a number of bytes, got 'huge'"
    ) in capsys.readouterr().err


def test_flag_help_shows_defaults() -> None:
    parser = argparse.ArgumentParser()
    settings.add_setting_flags(parser)
    text = " ".join(parser.format_help().split())
    assert "--cache-size SIZE byte budget of the block cache" in text
    assert "(default: 10GiB)" in text and "(default: 022)" in text
    assert "--allow-other, --no-allow-other" in text


def test_resolve_errors(tmp_path: Path) -> None:
    cfg = Config.load(write(tmp_path, PRECEDENCE), environ={})
    with pytest.raises(ConfigError) as err:
        config.resolve(cfg, "photo")
    assert (
        str(err.value)
        == f"{cfg.source}: no backend named 'photo' (did you mean 'photos'?); defined: photos, docs"
    )
    with pytest.raises(ConfigError, match="several backends are defined; name one: photos, docs"):
        config.resolve(cfg)
    with pytest.raises(ConfigError) as err:
        config.resolve(cfg, "docs", {"cache_sise": 1, "workers": "many"})
    assert str(err.value).splitlines() == [
        "command line: cache_sise: unknown setting (did you mean 'cache_size'?)",
        "command line: --workers: expected an integer, got 'many'",
    ]


# -- -o ---------------------------------------------------------------------------
def test_mount_options_split_ours_from_libfuses() -> None:
    overrides, fuse = settings.parse_mount_options(
        [
            "rw,allow_other,default_permissions,cache_size=1G",
            "fsname=vaultfs:photos,ro,umask=027,attr_ttl=2.5,cache_enabled=false,uid=",
            r"subtype=a\,b,log_file=/var/log/a\,b.log",
        ]
    )
    assert overrides == {
        "allow_other": True,
        "cache_size": 1 << 30,
        "read_only": True,
        "umask": 0o027,
        "attr_ttl": 2.5,
        "cache_enabled": False,
        "uid": None,
        "log_file": "/var/log/a,b.log",
    }
    assert fuse == ["default_permissions", "fsname=vaultfs:photos", r"subtype=a\,b"]


def test_mount_options_drop_mount8_words() -> None:
    overrides, fuse = settings.parse_mount_options(
        ["defaults,noauto,_netdev,nofail,x-systemd.automount,user,rw"]
    )
    assert (overrides, fuse) == ({}, [])


def test_mount_option_errors() -> None:
    with pytest.raises(ConfigError) as err:
        settings.parse_mount_options(["cache_size=big"])
    assert str(err.value) == (
        "command line: -o cache_size: expected a size such as 10GiB, 512MiB, 1.5G or a "
        "number of bytes, got 'big'"
    )
    with pytest.raises(
        ConfigError, match=r"^command line: -o workers: needs a value, e\.g\. -o workers=\.\.\.$"
    ):
        settings.parse_mount_options(["workers"])
    with pytest.raises(ConfigError, match=r"-o allow_other: expected true or false, got 'maybe'"):
        settings.parse_mount_options(["allow_other=maybe"])


# -- the settings table ---------------------------------------------------------
def test_every_setting_is_declared_once_with_consistent_names() -> None:
    names = [s.option for s in settings.SETTINGS]
    assert len(names) == len(set(names))
    assert len({s.flag for s in settings.SETTINGS}) == len(names)
    assert names == list(settings.Settings.__dataclass_fields__)
    cache_dir = settings.SETTINGS[0]
    assert (cache_dir.yaml_name, cache_dir.flag, cache_dir.option) == (
        "cache.dir",
        "--cache-dir",
        "cache_dir",
    )
    umask = next(s for s in settings.SETTINGS if s.key == "umask")
    assert (umask.yaml_name, umask.flag, umask.option, umask.type) == (
        "mount.umask",
        "--umask",
        "umask",
        "octal",
    )
    defaults = settings.Settings()
    for s in settings.SETTINGS:
        assert getattr(defaults, s.option) == s.default
        assert s.parse(s.default) == s.default  # every default passes its own validation


def test_render_settings_table() -> None:
    table = settings.render_settings_table()
    lines = table.splitlines()
    assert lines[0] == "| YAML | flag | `-o` | default | meaning |"
    assert lines[1] == "| --- | --- | --- | --- | --- |"
    rows = [line for line in lines[2:] if line.startswith("| `")]
    assert len(rows) == len(settings.SETTINGS)
    assert all(row.count(" | ") == 4 for row in rows)
    assert (
        "| `cache.size` | `--cache-size SIZE` | `cache_size` | `10GiB` | byte budget of the block cache; "
        "least recently used blocks go first |"
    ) in lines
    assert "| `mount.read_only` | `--read-only`, `--no-read-only` | `read_only`, `ro` | `false` |" in table
    assert "| `mount.umask` | `--umask MODE` | `umask` | `022` |" in table
    assert "| `metrics.listen` | `--metrics-listen HOST:PORT` | `metrics_listen` | `off` |" in table


# -- the built-in configuration ---------------------------------------------------
def test_for_directory(tmp_path: Path) -> None:
    root = tmp_path / "my data$$ ${HOME}"
    cfg = Config.for_directory(root)
    (backend,) = cfg.backends
    assert (backend.driver_name, backend.name) == ("local", "my_data_HOME_")
    assert backend.options.root == str(root)
    resolved = config.resolve(cfg, None, {"read_only": True}, mountpoint="/mnt/x")
    assert resolved.settings.read_only and resolved.mountpoint == "/mnt/x"
    assert Config.for_directory("relative", name="mine").backends[0].options.root == os.path.abspath(
        "relative"
    )
