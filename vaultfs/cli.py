"""The ``vaultfs`` command.

Each subcommand is one :class:`Subcommand` in :data:`SUBCOMMANDS`: a function
that adds its arguments and a function that runs it and returns the exit
status.  To add one (``mount``, ``umount``, ``status``, ``cache`` ...), write
those two functions in the module that owns the feature, keeping heavy imports
(pyfuse3, trio, boto3) inside ``run`` so ``vaultfs drivers`` stays quick, and
add a line to :data:`SUBCOMMANDS`.  :func:`add_config_argument` gives the
shared ``--config``; ``vaultfs.settings.add_setting_flags`` the setting flags.

Exit status: 0 success, 1 a backend or operation failed, 2 a usage or
configuration error (reported on stderr, without a traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from . import __version__, cachecmd, config, logs, mountcmd, registry, status
from .errors import ConfigError
from .options import redact_text
from .settings import parse_duration

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """One ``vaultfs`` subcommand: its help line, how it runs, and how it adds its arguments."""

    help: str
    run: Callable[[argparse.Namespace], int]
    configure: Callable[[argparse.ArgumentParser], None] | None = None


def configure_logging(level: str = "WARNING", file: str | None = None) -> None:
    """Send log records at ``level`` and above to stderr, or to ``file``; may be called again.

    The CLI calls it once at start; a subcommand that learns the configured
    level later (``mount``, from ``logging.level``) calls it again, which
    replaces the handler this function added and leaves any other alone.
    Under systemd the lines suit journald (see :mod:`vaultfs.logs`).
    """
    logs.configure(level, file)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--config PATH`` (default: ``$VAULTFS_CONFIG``, else ``/etc/vaultfs/config.yaml``)."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help=f"configuration file (default: ${config.ENV_VAR}, else {config.DEFAULT_PATH})",
    )


def _positive_seconds(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return seconds


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    """Print rows under headers in aligned columns (the last column is not padded)."""
    out = out or sys.stdout
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers) - 1)]
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, str(row[-1])]).rstrip(), file=out)


# -- vaultfs drivers -----------------------------------------------------------
def _run_drivers(args: argparse.Namespace) -> int:
    rows = []
    status = EXIT_OK
    for name, ep in registry.available().items():
        try:
            description = registry.summary(registry.load(name))
        except registry.RegistryError as exc:
            description = f"error: {exc}"
            status = EXIT_FAILED
        rows.append((name, ep.value, description))
    if not rows:
        print(f"vaultfs: {registry.installed_message()}", file=sys.stderr)
        return EXIT_FAILED
    print_table(("NAME", "MODULE", "DESCRIPTION"), rows)
    return status


# -- vaultfs check-config ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of one backend's health check; ``latency`` is ``None`` if it timed out."""

    name: str
    driver: str
    ok: bool
    status: str
    latency: float | None


def _check_one(backend: config.BackendConfig, results: list[CheckResult]) -> None:
    start = time.monotonic()
    ok, status = False, ""
    try:
        driver = registry.create(backend)
        try:
            driver.health_check()
        finally:
            try:
                driver.close()
            except Exception:
                log.warning(
                    "closing the %s driver of %s failed", backend.driver_name, backend.name, exc_info=True
                )
    except Exception as exc:
        # Any failure of a driver, expected or not, is this backend's status, not a crash of the check.
        log.debug("health check of %s failed", backend.name, exc_info=True)
        message = " ".join(redact_text(str(exc), backend.options).split())
        status = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    else:
        ok, status = True, "ok"
    results.append(CheckResult(backend.name, backend.driver_name, ok, status, time.monotonic() - start))


def check_backends(backends: Sequence[config.BackendConfig], timeout: float) -> list[CheckResult]:
    """Create each backend's driver and run its ``health_check`` in parallel, each within ``timeout`` seconds.

    A check still running at its deadline is reported as timed out and left
    behind in a daemon thread, which cannot stop the process from exiting.
    """
    checks: list[tuple[config.BackendConfig, threading.Thread, list[CheckResult]]] = []
    for backend in backends:
        # One list per check: the thread appends its result; a late result is never read.
        slot: list[CheckResult] = []
        thread = threading.Thread(
            target=_check_one, args=(backend, slot), daemon=True, name=f"check-{backend.name}"
        )
        thread.start()
        checks.append((backend, thread, slot))
    deadline = time.monotonic() + timeout
    results = []
    for backend, thread, slot in checks:
        thread.join(max(0.0, deadline - time.monotonic()))
        if slot:
            results.append(slot[0])
        else:
            status = f"timed out after {timeout:g} s"
            results.append(CheckResult(backend.name, backend.driver_name, False, status, None))
    return results


def _configure_check_config(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="time limit of each backend's health check (default: 10)",
    )
    parser.add_argument("backends", nargs="*", metavar="NAME", help="check only these backends")


def _run_check_config(args: argparse.Namespace) -> int:
    cfg = config.Config.load(args.config)
    backends = [cfg.backend(name) for name in args.backends] if args.backends else list(cfg.backends)
    log.info("%s is valid; checking %d backend(s)", cfg.source, len(backends))
    results = check_backends(backends, args.timeout)
    rows = [
        (r.name, r.driver, r.status, "-" if r.latency is None else f"{r.latency * 1000:.0f} ms")
        for r in results
    ]
    print_table(("NAME", "DRIVER", "STATUS", "LATENCY"), rows)
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(
            f"vaultfs: {len(failed)} of {len(results)} backend(s) failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


#: Every subcommand, by name, in the order ``vaultfs --help`` lists them.
SUBCOMMANDS: dict[str, Subcommand] = {
    "check-config": Subcommand(
        "validate the configuration, then run each backend's health check",
        _run_check_config,
        _configure_check_config,
    ),
    "drivers": Subcommand("list the installed storage drivers", _run_drivers),
    "mount": Subcommand(
        "mount a backend (or a local directory) on a directory", mountcmd.run_mount, mountcmd.configure_mount
    ),
    "cache": Subcommand("show or clear the block caches", cachecmd.run, cachecmd.configure),
    "status": Subcommand(
        "show each running mount: backend health, open files, pending uploads, errors",
        status.run_status,
        status.configure_status,
    ),
    "umount": Subcommand(
        "unmount and wait for pending uploads to finish", mountcmd.run_umount, mountcmd.configure_umount
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``vaultfs`` argument parser, with one sub-parser per entry of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="vaultfs",
        description="Mount storage backends (S3, Lyve Cloud, local, plug-ins) with FUSE.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LOG_LEVELS,
        default="WARNING",
        help="log level of this command (default: WARNING)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        if command.configure is not None:
            command.configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vaultfs`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    argv = mountcmd.mount8_argv(sys.argv[1:] if argv is None else argv, list(SUBCOMMANDS))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_level)
    try:
        return SUBCOMMANDS[args.command].run(args)
    except (ConfigError, registry.RegistryError) as exc:
        for line in str(exc).splitlines():
            print(f"vaultfs: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (vaultfs drivers | head); say nothing more on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
