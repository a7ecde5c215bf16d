"""The workloads, as plain file operations on a directory (a mount or the raw disk).

Each function does the work and returns what it counted; the caller times it
(so "until in the backend" can include the wait after the last close).
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
SMALL_FILE_SIZE = 4 * KiB
FILES_PER_DIR = 1000
PATTERN_SIZE = 4 * MiB


def make_pattern(seed: int = 1) -> bytes:
    """Incompressible data, the same in every run (and a multiple of every write size)."""
    return random.Random(seed).randbytes(PATTERN_SIZE)


def seq_write(path: Path, size: int, block: int, pattern: bytes) -> None:
    """Write ``size`` bytes with ``block``-sized write(2) calls, then close."""
    view = memoryview(pattern)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pos = 0
        while pos < size:
            start = pos % len(pattern)
            chunk = view[start:start + min(block, size - pos)]
            while chunk:
                n = os.write(fd, chunk)
                chunk = chunk[n:]
                pos += n
    finally:
        os.close(fd)  # FUSE: flush, whose answer close(2) returns


def seq_read(path: Path, block: int = MiB) -> int:
    """Read a whole file with ``block``-sized reads; returns the bytes read."""
    buf = bytearray(block)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return total
            total += n


def random_offsets(size: int, block: int, count: int, seed: int = 7) -> list[int]:
    """``count`` block-aligned offsets spread over the file, the same for every target."""
    rng = random.Random(seed * 1000003 + block)
    slots = max(1, size // block)
    return [rng.randrange(slots) * block for _ in range(count)]


def random_read(path: Path, offsets: list[int], block: int, seconds: float) -> int:
    """pread(2) at each offset until done or ``seconds`` have passed; returns how many reads were done."""
    deadline = time.monotonic() + seconds
    fd = os.open(path, os.O_RDONLY)
    done = 0
    try:
        for off in offsets:
            if len(os.pread(fd, block, off)) != block:
                raise OSError(f"short read at {off} of {path}")
            done += 1
            if time.monotonic() > deadline:
                break
    finally:
        os.close(fd)
    return done


def small_names(count: int) -> list[str]:
    """Relative paths of the small files: ``dNN/fNNNNNN``, at most FILES_PER_DIR per directory."""
    return [f"d{i // FILES_PER_DIR:02d}/f{i:06d}" for i in range(count)]


def create_small(top: Path, names: list[str], pattern: bytes) -> None:
    top.mkdir(exist_ok=True)  # a store may keep listing the emptied folder of an earlier run
    for d in sorted({n.split("/")[0] for n in names}):
        (top / d).mkdir(exist_ok=True)
    for i, name in enumerate(names):
        start = (i * SMALL_FILE_SIZE) % len(pattern)
        fd = os.open(top / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, pattern[start:start + SMALL_FILE_SIZE])
        finally:
            os.close(fd)


def stat_small(top: Path, names: list[str]) -> None:
    for name in names:
        os.stat(top / name)


def read_small(top: Path, names: list[str]) -> None:
    for name in names:
        with open(top / name, "rb", buffering=0) as f:
            if len(f.read()) != SMALL_FILE_SIZE:
                raise OSError(f"short small file {name}")


def run_tool(argv: list[str], timeout: float) -> None:
    """Run ``ls``, ``find`` or ``rm`` with its output discarded; fail on a non-zero exit."""
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
