"""The ``vaultfs`` command, run as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_registry import SECRET, write_plugins

VAULTFS = shutil.which("vaultfs", path=os.path.dirname(sys.executable))


def run(
    *args: str,
    cwd: Path,
    pythonpath: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``vaultfs ARGS`` with a clean environment (no $VAULTFS_CONFIG) plus ``env``."""
    assert VAULTFS, "the vaultfs console script is not installed next to this Python"
    environ = {k: v for k, v in os.environ.items() if k not in ("VAULTFS_CONFIG", "PYTHONPATH")}
    if pythonpath is not None:
        environ["PYTHONPATH"] = str(pythonpath)
    environ.update(env or {})
    return subprocess.run(
        [VAULTFS, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout, check=False
    )


def table(stdout: str) -> dict[str, dict[str, str]]:
    """A printed table's rows by their first cell, each a dict from column header to cell.

    Columns are cut where the header's words start, as the table aligns them.
    """
    header, *lines = stdout.splitlines()
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    rows = {}
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows[cells[0]] = dict(zip(names, cells, strict=True))
    return rows


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plugins(tmp_path_factory.mktemp("plugins"))


# -- vaultfs drivers --------------------------------------------------------------
def test_drivers_lists_builtins_and_plugins(tmp_path: Path, plugin_path: Path) -> None:
    result = run("drivers", cwd=tmp_path, pythonpath=plugin_path)
    assert result.stdout.splitlines()[0].split() == ["NAME", "MODULE", "DESCRIPTION"]
    rows = table(result.stdout)
    assert {"memory", "local", "s3", "lyve", "fake", "failing", "slow"} <= set(rows)
    assert list(rows) == sorted(rows)
    assert rows["memory"]["MODULE"] == "drivers.memory:MemoryDriver"
    assert rows["local"]["MODULE"] == "drivers.local:LocalDriver"
    assert rows["fake"] == {
        "NAME": "fake",
        "MODULE": "vaultfs_testplug:FakeDriver",
        "DESCRIPTION": "An in-memory driver with options, for tests.",
    }
    # Exit status 1 exactly when some installed driver cannot be loaded (its row says why).
    broken = [name for name, row in rows.items() if row["DESCRIPTION"].startswith("error: ")]
    assert result.returncode == (1 if broken else 0), result.stdout
    assert "Traceback" not in result.stderr


def test_drivers_reports_a_broken_plugin(tmp_path: Path) -> None:
    bad = write_plugins(tmp_path / "bad", bad=True)
    result = run("drivers", cwd=tmp_path, pythonpath=bad)
    assert result.returncode == 1
    rows = table(result.stdout)
    broken = rows["broken"]["DESCRIPTION"]
    assert broken.startswith("error: driver 'broken' (entry point 'broken = vaultfs_testplug_broken:Driver' ")
    assert "of vaultfs-testplug-bad 1.0, in module vaultfs_testplug_broken)" in broken
    assert broken.endswith("ImportError: the fake SDK is not installed")
    assert "is not a subclass of drivers.Driver" in rows["notadriver"]["DESCRIPTION"]
    assert rows["memory"]["MODULE"] == "drivers.memory:MemoryDriver"
    assert "Traceback" not in result.stderr


# -- vaultfs check-config ---------------------------------------------------------
def test_check_config_memory_and_local_ok(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    config = tmp_path / "vaultfs.yaml"
    config.write_text(
        f"backends:\n  - {{name: mem, driver: memory}}\n"
        f"  - {{name: files, driver: local, config: {{root: '{root}'}}}}\n"
    )
    result = run("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["NAME", "DRIVER", "STATUS", "LATENCY"]
    rows = table(result.stdout)
    assert list(rows) == ["mem", "files"]
    assert [(r["DRIVER"], r["STATUS"]) for r in rows.values()] == [("memory", "ok"), ("local", "ok")]
    assert all(re.fullmatch(r"\d+ ms", r["LATENCY"]) for r in rows.values())
    assert result.stderr == ""


def test_check_config_reads_vaultfs_config_and_expands_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "env.yaml"
    config.write_text(
        "backends:\n  - {name: mem, driver: '${DRIVER:-memory}'}\n  - {name: '${NAME}', "
        "driver: local, config: {root: '${ROOT}'}}\n"
    )
    result = run(
        "check-config",
        cwd=tmp_path,
        env={"VAULTFS_CONFIG": str(config), "NAME": "here", "ROOT": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert table(result.stdout)["here"]["STATUS"] == "ok"


def test_check_config_local_root_missing_fails(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    config = tmp_path / "vaultfs.yaml"
    config.write_text(
        f"backends:\n  - {{name: mem, driver: memory}}\n"
        f"  - {{name: gone, driver: local, config: {{root: '{missing}'}}}}\n"
    )
    result = run("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1
    rows = table(result.stdout)
    assert rows["mem"]["STATUS"] == "ok"
    assert rows["gone"]["DRIVER"] == "local"
    assert rows["gone"]["STATUS"].startswith("NotFound: ") and str(missing) in rows["gone"]["STATUS"]
    assert result.stderr == "vaultfs: 1 of 2 backend(s) failed: gone\n"


def test_check_config_one_backend_by_name(tmp_path: Path) -> None:
    config = tmp_path / "vaultfs.yaml"
    config.write_text(
        f"backends:\n  - {{name: mem, driver: memory}}\n"
        f"  - {{name: gone, driver: local, config: {{root: '{tmp_path / 'x'}'}}}}\n"
    )
    result = run("check-config", "--config", str(config), "mem", cwd=tmp_path)
    assert result.returncode == 0 and set(table(result.stdout)) == {"mem"}
    result = run("check-config", "--config", str(config), "men", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"vaultfs: {config}: no backend named 'men' (did you mean 'mem'?); defined: mem, gone\n"
    )


def test_check_config_failing_driver_does_not_leak_its_secret(tmp_path: Path, plugin_path: Path) -> None:
    config = tmp_path / "vaultfs.yaml"
    config.write_text("backends:\n  - {name: f, driver: failing, config: {endpoint: x, token: '${TOKEN}'}}\n")
    result = run(
        "check-config", "--config", str(config), cwd=tmp_path, pythonpath=plugin_path, env={"TOKEN": SECRET}
    )
    assert result.returncode == 1
    assert table(result.stdout)["f"]["STATUS"] == "AccessDenied: token *** was refused"
    assert SECRET not in result.stdout + result.stderr


def test_check_config_times_out(tmp_path: Path, plugin_path: Path) -> None:
    config = tmp_path / "vaultfs.yaml"
    config.write_text(
        "backends:\n  - {name: s, driver: slow, config: {endpoint: x}}\n  - {name: m, driver: memory}\n"
    )
    start = time.monotonic()
    result = run(
        "check-config", "--config", str(config), "--timeout", "0.5", cwd=tmp_path, pythonpath=plugin_path
    )
    assert time.monotonic() - start < 20
    assert result.returncode == 1
    rows = table(result.stdout)
    assert (rows["s"]["STATUS"], rows["s"]["LATENCY"]) == ("timed out after 0.5 s", "-")
    assert rows["m"]["STATUS"] == "ok"


def test_check_config_config_errors_exit_2_without_traceback(tmp_path: Path, plugin_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"backends:\n  - name: f\n    driver: fake\n    config: {{endpont: x, token: [{SECRET}]}}\n"
        "  - {name: g, driver: s3x}\n"
    )
    result = run("check-config", "--config", str(config), cwd=tmp_path, pythonpath=plugin_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"vaultfs: {config}: backends[0].config.endpont: unknown key (did you mean 'endpoint'?); "
        "the fake driver accepts: endpoint (required), token, password, port, ratio, verbose, "
        "hosts, region, mode"
    )
    assert f"vaultfs: {config}: backends[0].config.token: expected a string, got a list" in lines
    assert any(
        line.startswith(
            f"vaultfs: {config}: backends[1].driver: unknown driver 's3x' (did you mean 's3'?); "
            "installed drivers: "
        )
        and " memory, " in line
        for line in lines
    )
    assert SECRET not in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_yaml_error(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(f"backends:\n  - name: m\n\tdriver: memory  # {SECRET}\n")
    result = run("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"vaultfs: {config}:3:1: YAML syntax error: ")
    assert SECRET not in result.stderr and "Traceback" not in result.stderr


def test_check_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = run("check-config", cwd=tmp_path, env={"VAULTFS_CONFIG": str(missing)})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"vaultfs: {missing}: no such file (from $VAULTFS_CONFIG)\n"
    result = run("check-config", "--config", str(missing), cwd=tmp_path)
    assert result.stderr == f"vaultfs: {missing}: no such file (given with --config)\n"


def test_check_config_unset_variable(tmp_path: Path) -> None:
    config = tmp_path / "vaultfs.yaml"
    config.write_text("backends:\n  - {name: m, driver: memory}\nmetrics: {listen: '${LISTEN}'}\n")
    result = run("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"vaultfs: {config}: metrics.listen: environment variable LISTEN is not set "
        "(write ${LISTEN:-default} to give a default)\n"
    )


# -- usage --------------------------------------------------------------------------
def test_usage(tmp_path: Path) -> None:
    result = run(cwd=tmp_path)
    assert result.returncode == 2 and "check-config" in result.stderr and "drivers" in result.stderr
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0 and "check-config" in result.stdout
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("vaultfs ")
    result = run("check-config", "--timeout", "0", cwd=tmp_path)
    assert result.returncode == 2 and "argument --timeout: must be more than 0" in result.stderr
    result = run("frobnicate", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'frobnicate'" in result.stderr


def test_log_level_shows_debug_records(tmp_path: Path) -> None:
    config = tmp_path / "vaultfs.yaml"
    config.write_text("backends:\n  - {name: m, driver: memory}\n")
    quiet = run("check-config", "--config", str(config), cwd=tmp_path)
    loud = run("--log-level", "debug", "check-config", "--config", str(config), cwd=tmp_path)
    assert quiet.returncode == loud.returncode == 0
    assert quiet.stderr == ""
    assert "DEBUG vaultfs.registry: loaded driver 'memory'" in loud.stderr
    assert f"INFO vaultfs.cli: {config} is valid; checking 1 backend(s)" in loud.stderr


@pytest.mark.s3
def test_check_config_local_and_s3_backends(tmp_path: Path, s3_options: dict[str, object]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    config = tmp_path / "vaultfs.yaml"
    config.write_text(
        "backends:\n"
        f"  - {{name: files, driver: local, config: {{root: '{root}'}}}}\n"
        "  - name: objects\n    driver: s3\n    config:\n"
        f"      endpoint: {s3_options['endpoint']}\n"
        "      access_key: ${KEY}\n      secret_key: ${SECRET}\n"
        "      path_style: true\n      request_checksum_calculation: when_required\n"
        "  - name: wrong-key\n    driver: s3\n    config:\n"
        f"      endpoint: {s3_options['endpoint']}\n"
        "      access_key: NOSUCHKEY\n      secret_key: ${SECRET}\n      path_style: true\n"
    )
    env = {"KEY": str(s3_options["access_key"]), "SECRET": str(s3_options["secret_key"])}
    result = run("--log-level", "DEBUG", "check-config", "--config", str(config), cwd=tmp_path, env=env)
    rows = table(result.stdout)
    assert [(name, r["DRIVER"]) for name, r in rows.items()] == [
        ("files", "local"),
        ("objects", "s3"),
        ("wrong-key", "s3"),
    ]
    assert (rows["files"]["STATUS"], rows["objects"]["STATUS"]) == ("ok", "ok")
    assert rows["wrong-key"]["STATUS"].startswith("AccessDenied")
    assert result.returncode == 1
    assert "1 of 3 backend(s) failed: wrong-key" in result.stderr
    assert env["SECRET"] not in result.stdout + result.stderr
    assert env["KEY"] not in result.stderr  # not even botocore's debug log of request headers
