"""The ``vaultfs mount`` and ``vaultfs umount`` subcommands.

Argument parsing lives here; :mod:`vaultfs.mount` (which imports pyfuse3 and
trio) is imported only when a mount actually runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from . import config, runtime

EXIT_OK, EXIT_FAILED = 0, 1


def configure_mount(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vaultfs mount``."""
    parser.add_argument(
        "source", metavar="SOURCE", help="a backend name from the configuration, or a local directory"
    )
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory to mount on")
    parser.add_argument("--config", metavar="PATH", default=None, help="configuration file")
    parser.add_argument(
        "-o",
        dest="mount_options",
        action="append",
        default=[],
        metavar="OPTS",
        help="comma-separated settings (key=value, see the README) and libfuse options",
    )
    config.add_setting_flags(parser)


def _is_directory_source(source: str) -> bool:
    return "/" in source or source in (".", "..") or os.path.isdir(source)


def run_mount(args: argparse.Namespace) -> int:
    """Resolve the configuration, check the mountpoint, then mount (detached unless --foreground)."""
    from . import cli
    from .mount import MountError, MountPlan, check_mountpoint, daemonize, serve

    option_overrides, fuse_options = config.parse_mount_options(args.mount_options)
    overrides = {**option_overrides, **config.overrides_from_args(args)}
    if _is_directory_source(args.source):
        if not os.path.isdir(args.source):
            print(f"vaultfs: {args.source} is not a directory", file=sys.stderr)
            return EXIT_FAILED
        cfg, name = config.Config.for_directory(args.source), None
    else:
        cfg, name = config.Config.load(args.config), args.source
    mountpoint = Path(os.path.abspath(args.mountpoint))
    resolved = config.resolve(cfg, name, overrides, mountpoint=str(mountpoint))
    settings = resolved.settings
    cli.configure_logging(settings.log_level, settings.log_file)
    try:
        check_mountpoint(mountpoint, nonempty="nonempty" in fuse_options)
    except MountError as exc:
        print(f"vaultfs: {exc}", file=sys.stderr)
        return EXIT_FAILED
    plan = MountPlan(resolved, mountpoint, tuple(fuse_options))

    def report(error: str | None) -> None:
        if error is not None:
            print(f"vaultfs: {error}", file=sys.stderr)

    if settings.foreground:
        return serve(plan, report)
    return daemonize(lambda ready: serve(plan, ready))


def configure_umount(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vaultfs umount``."""
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the daemon to finish pending uploads and exit (default: 300)",
    )


def run_umount(args: argparse.Namespace) -> int:
    """Unmount, then wait for the daemon to exit so pending work is done when this returns."""
    mountpoint = Path(os.path.abspath(args.mountpoint))
    record = runtime.find(mountpoint)
    done = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if done.returncode != 0:
        reason = done.stderr.strip().removeprefix("fusermount3: ") or f"exit status {done.returncode}"
        print(f"vaultfs: cannot unmount {mountpoint}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    if record is not None and not runtime.wait_for_exit(int(record["pid"]), args.timeout):
        print(f"vaultfs: unmounted, but the daemon (pid {record['pid']}) is still running", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
