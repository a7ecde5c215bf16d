"""The ``vaultfs cache stats`` and ``vaultfs cache clear`` subcommands.

Each backend's blocks live in ``CACHE_DIR/blocks/NAME``; these commands look
at those directories directly, so they work whether or not a mount is running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from . import runtime
from .settings import Settings, format_size

EXIT_OK, EXIT_FAILED = 0, 1


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vaultfs cache``."""
    parser.add_argument("action", choices=("stats", "clear"), help="show the cache's use, or empty it")
    parser.add_argument("backends", nargs="*", metavar="NAME", help="only these backends (default: all)")
    parser.add_argument(
        "--cache-dir",
        default=Settings().cache_dir,
        metavar="PATH",
        help="the cache directory (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="stats as JSON")
    parser.add_argument("--force", action="store_true", help="clear even while a mount uses the cache")


def _block_dirs(cache_dir: Path, names: list[str]) -> list[Path]:
    base = cache_dir / "blocks"
    found = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    return [p for p in found if not names or p.name in names]


def _usage(directory: Path) -> tuple[int, int]:
    blocks = size = 0
    for root, _, files in os.walk(directory):
        for name in files:
            blocks += 1
            size += os.stat(os.path.join(root, name)).st_size
    return blocks, size


def run(args: argparse.Namespace) -> int:
    """Show or clear the block caches under ``--cache-dir``."""
    cache_dir = Path(args.cache_dir)
    dirs = _block_dirs(cache_dir, args.backends)
    if args.action == "stats":
        rows: list[dict[str, Any]] = [
            {"backend": d.name, "blocks": b, "bytes": s} for d in dirs for b, s in [_usage(d)]
        ]
        if args.json:
            print(json.dumps(rows))
        else:
            print(f"{'BACKEND':20} {'BLOCKS':>8} {'SIZE':>10}")
            for row in rows:
                print(f"{row['backend']:20} {row['blocks']:>8} {format_size(row['bytes']):>10}")
        return EXIT_OK
    users = [
        r
        for r in runtime.records()
        if Path(r.get("cache_dir", "")) == cache_dir and (not args.backends or r.get("name") in args.backends)
    ]
    if users and not args.force:
        mounts = ", ".join(f"{r['name']} on {r['mountpoint']}" for r in users)
        print(f"vaultfs: the cache is in use by {mounts}; unmount first or use --force", file=sys.stderr)
        return EXIT_FAILED
    for d in dirs:
        shutil.rmtree(d)
    print(f"cleared {len(dirs)} backend cache(s) in {cache_dir / 'blocks'}")
    return EXIT_OK
