"""The ``vaultfs mount`` and ``vaultfs umount`` subcommands, and mount(8)'s form of mount.

Argument parsing lives here; :mod:`vaultfs.mount` (which imports pyfuse3 and
trio) is imported only when a mount actually runs.  Services name a backend
and nothing else (the systemd template unit knows only ``%i``), so MOUNTPOINT
may be left out when the backend configures its ``mountpoint:``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from . import config, kernel, runtime
from .errors import ConfigError
from .settings import add_setting_flags, overrides_from_args, parse_mount_options, split_option_list

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def configure_mount(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vaultfs mount``."""
    parser.add_argument(
        "source", metavar="SOURCE", help="a backend name from the configuration, or a local directory"
    )
    parser.add_argument(
        "mountpoint",
        metavar="MOUNTPOINT",
        nargs="?",
        default=None,
        help="an empty directory to mount on (default: the backend's configured mountpoint)",
    )
    parser.add_argument("--config", metavar="PATH", default=None, help="configuration file")
    parser.add_argument(
        "-o",
        dest="mount_options",
        action="append",
        default=[],
        metavar="OPTS",
        help="comma-separated settings (key=value, see the README), config=PATH, and libfuse options",
    )
    add_setting_flags(parser)


def _is_directory_source(source: str) -> bool:
    return "/" in source or source in (".", "..") or os.path.isdir(source)


def _configured_mountpoint(config_path: str | None, source: str) -> str:
    """The ``mountpoint:`` of backend ``source`` in the configuration; ConfigError if it has none."""
    cfg = config.Config.load(config_path)
    backend = cfg.backend(source)
    if not backend.mountpoint:
        raise ConfigError(
            cfg.source,
            f"backend {source!r} has no mountpoint: give MOUNTPOINT, or set it in the configuration",
            key=f"backends[{cfg.names.index(source)}].mountpoint",
        )
    return backend.mountpoint


def take_config_option(values: Sequence[str]) -> tuple[list[str], str | None]:
    """``-o`` values without their ``config=PATH`` items, and the last such PATH (None if none)."""
    kept_values: list[str] = []
    config_path: str | None = None
    for value in values:
        kept = []
        for item in split_option_list(value):
            if item.startswith("config="):
                config_path = item[len("config=") :].replace("\\,", ",")
            else:
                kept.append(item)
        if kept:
            kept_values.append(",".join(kept))
    return kept_values, config_path


def run_mount(args: argparse.Namespace) -> int:
    """Resolve the configuration, check the mountpoint, then mount (detached unless --foreground)."""
    from . import cli
    from .mount import MountError, MountPlan, check_mountpoint, daemonize, serve

    # "-o config=PATH" is how mount(8) and fstab name the file.
    args.mount_options, config_path = take_config_option(args.mount_options)
    if config_path is not None:
        args.config = config_path
    option_overrides, fuse_options = parse_mount_options(args.mount_options)
    overrides = {**option_overrides, **overrides_from_args(args)}
    if any(o.startswith("subtype=") for o in fuse_options):
        print(
            "vaultfs: -o subtype= cannot be changed: fstab and umount -t rely on fuse.vaultfs",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if _is_directory_source(args.source):
        if not os.path.exists(args.source):
            print(
                f"vaultfs: {args.source} does not exist (SOURCE is a backend name or a directory)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if not os.path.isdir(args.source):
            print(f"vaultfs: {args.source} is not a directory", file=sys.stderr)
            return EXIT_USAGE
        if args.mountpoint is None:
            print("vaultfs: mounting a directory needs a MOUNTPOINT", file=sys.stderr)
            return EXIT_USAGE
        cfg, name = config.Config.for_directory(args.source), None
    else:
        cfg, name = config.Config.load(args.config), args.source
        if args.mountpoint is None:
            args.mountpoint = _configured_mountpoint(args.config, args.source)
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
    parser.add_argument(
        "mountpoint",
        metavar="MOUNTPOINT",
        help="the mountpoint, or the name of a backend with a configured mountpoint",
    )
    parser.add_argument("--config", metavar="PATH", default=None, help="configuration file")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the daemon to finish pending uploads and exit (default: 300)",
    )
    parser.add_argument(
        "--dead-only",
        action="store_true",
        help="only clean up a dead mount (its daemon exited); succeed when there is none "
        "(for ExecStartPre= in the systemd unit)",
    )


def run_umount(args: argparse.Namespace) -> int:
    """Unmount, then wait for the daemon to exit so pending work is done when this returns."""
    target = args.mountpoint
    if not os.path.isabs(target) and not os.path.isdir(target) and "/" not in target:
        target = _configured_mountpoint(args.config, target)
    mountpoint = Path(os.path.abspath(target))
    if args.dead_only:
        from .mount import MountError, clean_dead_mount

        try:
            done = clean_dead_mount(mountpoint)
        except MountError as exc:
            print(f"vaultfs: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if done:
            print(f"vaultfs: {done}", file=sys.stderr)
        return EXIT_OK
    entry = kernel.mount_entry(mountpoint)
    if entry is None or not entry.fstype.startswith("fuse"):
        print(f"vaultfs: {mountpoint} is not mounted", file=sys.stderr)
        return EXIT_FAILED
    record = runtime.find(mountpoint)
    unmounted = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if unmounted.returncode != 0:
        reason = (
            unmounted.stderr.strip().removeprefix("fusermount3: ") or f"exit status {unmounted.returncode}"
        )
        print(f"vaultfs: cannot unmount {mountpoint}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    if record is not None and not runtime.wait_for_exit(int(record["pid"]), args.timeout):
        print(f"vaultfs: unmounted, but the daemon (pid {record['pid']}) is still running", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def mount8_argv(argv: Sequence[str], subcommands: Sequence[str]) -> list[str]:
    """mount(8)'s ``vaultfs SOURCE MOUNTPOINT -o OPTS`` as ``vaultfs mount SOURCE MOUNTPOINT ...``.

    ``mount -t fuse.vaultfs`` (and an fstab line of that type) makes
    mount.fuse3 run ``vaultfs SOURCE MOUNTPOINT -o rw,config=PATH,...``: no
    subcommand, and the configuration file as an option.  Any other command
    line is returned unchanged.  The mount detaches and returns once live, as
    ``vaultfs mount`` does without ``--foreground``.
    """
    args = list(argv)
    # mount.fuse3 always passes SOURCE and MOUNTPOINT; one word alone is a mistyped subcommand.
    if len(args) < 2 or args[0].startswith("-") or args[1].startswith("-") or args[0] in subcommands:
        return args
    if "-o" not in args and difflib.get_close_matches(args[0], list(subcommands), n=1):
        return args  # "vaultfs stauts /mnt/x": let argparse say "invalid choice"
    return ["mount", *args]
