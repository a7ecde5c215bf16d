"""Ordinary tools on a real mount, over the local and the S3 driver."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mounts import Mount, MountFactory, s3_config
from test_http import Scrape

from drivers.base import Driver
from drivers.local import LocalDriver

pytestmark = pytest.mark.mount

TTL = "1"
#: /healthz, through which Tree waits for the mount's pending uploads.
LISTEN = ("--metrics-listen", "127.0.0.1:0")


@dataclass
class Tree:
    """A container seen through a mount, and the same container through a driver ("another client")."""

    mount: Mount
    root: Path
    driver: Driver
    container: str

    def put(self, name: str, data: bytes) -> None:
        # After the mount's own pending uploads, which would otherwise overwrite this (README).
        self.mount.settle()
        self.driver.put(self.container, name, io.BytesIO(data), size=len(data))

    def stored(self, name: str) -> bytes:
        """What the backend holds once the mount's pending uploads are done."""
        self.mount.settle()
        with self.driver.get(self.container, name) as f:
            return f.read()


def sh(cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a shell command; fail the test with its output if it fails."""
    done = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"{cmd!r} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def make_local(tmp_path: Path, mount_factory: MountFactory) -> Tree:
    data = tmp_path / "data"
    (data / "c").mkdir(parents=True)
    m = mount_factory(
        str(data), "--cache-dir", str(tmp_path / "cache"), "--attr-ttl", TTL, "--dir-ttl", TTL, *LISTEN
    )
    return Tree(m, m.mountpoint / "c", LocalDriver(LocalDriver.Options(root=str(data))), "c")


def make_s3(tmp_path: Path, mount_factory: MountFactory, s3_options: dict[str, object]) -> Tree:
    from drivers.s3 import S3Driver

    bucket = f"m-{uuid.uuid4().hex[:10]}"
    driver = S3Driver(S3Driver.Options(**s3_options))  # type: ignore[arg-type]
    driver.create_container(bucket)
    config = s3_config(tmp_path / "config.yaml", "s3test", s3_options)
    m = mount_factory(
        "s3test",
        "--config",
        str(config),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--attr-ttl",
        TTL,
        "--dir-ttl",
        TTL,
        *LISTEN,
    )
    return Tree(m, m.mountpoint / bucket, driver, bucket)


@pytest.fixture(params=["local", "s3"])
def tree(request: pytest.FixtureRequest, tmp_path: Path, mount_factory: MountFactory) -> Iterator[Tree]:
    if request.param == "local":
        yield make_local(tmp_path, mount_factory)
    else:
        yield make_s3(tmp_path, mount_factory, request.getfixturevalue("s3_options"))


def make_source_tree(base: Path) -> Path:
    """A small tree with nested directories, modes, an empty file and a symlink."""
    src = base / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "empty").write_bytes(b"")
    (src / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "deeper" / "c.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "sub" / "deeper" / "c.sh").chmod(0o755)
    (src / "ünï côdé.txt").write_text("names\n")
    (src / "link").symlink_to("a.txt")
    old = time.time() - 86400 * 30
    for p in src.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (old, old))
    return src


def test_cp_cat_ls_rm(tree: Tree) -> None:
    (tree.root / "hello.txt").write_text("hello\n")
    assert tree.stored("hello.txt") == b"hello\n"
    assert sh(f"cat '{tree.root}/hello.txt'").stdout == "hello\n"
    sh(f"cp '{tree.root}/hello.txt' '{tree.root}/copy.txt'")
    assert tree.stored("copy.txt") == b"hello\n"
    listing = sh(f"ls -l '{tree.root}'").stdout
    assert "hello.txt" in listing and "copy.txt" in listing
    sh(f"rm '{tree.root}/copy.txt'")
    assert not (tree.root / "copy.txt").exists()
    assert sorted(os.listdir(tree.root)) == ["hello.txt"]


def test_tar_in_and_out(tree: Tree, tmp_path: Path) -> None:
    src = make_source_tree(tmp_path)
    (tree.root / "t").mkdir()
    sh(f"tar -C '{src}' -cf - . | tar -C '{tree.root}/t' -xpf -")
    sh(f"diff -r '{src}' '{tree.root}/t'")
    out = tmp_path / "out"
    out.mkdir()
    sh(f"tar -C '{tree.root}/t' -cf - . | tar -C '{out}' -xpf -")
    sh(f"diff -r '{src}' '{out}'")
    assert os.stat(out / "sub/deeper/c.sh").st_mode & 0o111
    assert os.readlink(out / "link") == "a.txt"


def test_rsync_twice_second_is_a_no_op(tree: Tree, tmp_path: Path) -> None:
    src = make_source_tree(tmp_path)
    sh(f"rsync -a '{src}/' '{tree.root}/r/'")
    sh(f"diff -r '{src}' '{tree.root}/r'")
    again = sh(f"rsync -a --itemize-changes '{src}/' '{tree.root}/r/'").stdout
    assert again.strip() == "", f"second rsync copied:\n{again}"


def test_find_and_mv(tree: Tree, tmp_path: Path) -> None:
    src = make_source_tree(tmp_path)
    sh(f"cp -r '{src}' '{tree.root}/f'")
    found = sorted(sh(f"cd '{tree.root}/f' && find . -type f").stdout.split("\n"))
    expected = sorted(sh(f"cd '{src}' && find . -type f").stdout.split("\n"))
    assert found == expected
    sh(f"mv '{tree.root}/f/a.txt' '{tree.root}/f/renamed.txt'")
    assert (tree.root / "f/renamed.txt").read_text() == "alpha\n"
    assert not (tree.root / "f/a.txt").exists()
    sh(f"mv '{tree.root}/f/sub' '{tree.root}/f/moved'")
    sh(f"diff -r '{src}/sub' '{tree.root}/f/moved'")
    assert not (tree.root / "f/sub").exists()
    sh(f"rm -r '{tree.root}/f'")
    assert not (tree.root / "f").exists()


def test_git_commit_and_status(tree: Tree) -> None:
    repo = tree.root / "repo"
    repo.mkdir()
    env = "GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t"
    sh("git init -q .", cwd=repo)
    (repo / "file.txt").write_text("v1\n")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    sh(f"git add -A && {env} git commit -qm first", cwd=repo)
    (repo / "file.txt").write_text("v2\n")
    sh(f"{env} git commit -qam second", cwd=repo)
    assert sh("git status --porcelain", cwd=repo).stdout == ""
    assert sh("git log --oneline", cwd=repo).stdout.count("\n") == 2
    assert "100755" in sh("git ls-files -s run.sh", cwd=repo).stdout


def test_python_appends_and_partial_overwrites(tree: Tree) -> None:
    path = tree.root / "p.bin"
    path.write_bytes(b"0123456789")
    with open(path, "ab") as f:
        f.write(b"abc")
    with open(path, "r+b") as f:
        f.seek(2)
        f.write(b"XY")
        f.seek(0, os.SEEK_END)
        f.write(b"!")
    assert path.read_bytes() == b"01XY456789abc!"
    assert tree.stored("p.bin") == b"01XY456789abc!"
    os.truncate(path, 4)
    assert tree.stored("p.bin") == b"01XY"
    with open(path, "r+b") as f:
        f.truncate(2)
        f.seek(5)
        f.write(b"Z")
    assert tree.stored("p.bin") == b"01\0\0\0Z"


def test_dd_256_mib_in_and_out(tree: Tree, tmp_path: Path) -> None:
    src = tmp_path / "big"
    sh(f"head -c 256M /dev/urandom > '{src}'")
    sh(f"dd if='{src}' of='{tree.root}/big' bs=1M status=none")
    out = tmp_path / "back"
    sh(f"dd if='{tree.root}/big' of='{out}' bs=1M status=none")
    digest = sh(f"sha256sum '{src}' '{out}'").stdout.split("\n")
    assert digest[0].split()[0] == digest[1].split()[0]
    assert os.stat(tree.root / "big").st_size == 256 << 20


def test_chmod_chown_touch_persist(tree: Tree) -> None:
    path = tree.root / "m.txt"
    path.write_text("x")
    os.chmod(path, 0o600)
    os.chown(path, 1234, 5678)
    os.utime(path, (1_600_000_000, 1_600_000_000))
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (
        0o600,
        1234,
        5678,
        1_600_000_000,
    )
    tree.mount.settle()
    meta = tree.driver.stat(tree.container, "m.txt").metadata or {}
    assert (meta["mode"], meta["uid"], meta["gid"], meta["mtime"]) == (
        str(0o100600),
        "1234",
        "5678",
        "1600000000",
    )


def test_symlinks_hard_links_and_fifos(tree: Tree) -> None:
    (tree.root / "target").write_text("t")
    os.symlink("target", tree.root / "sym")
    assert os.readlink(tree.root / "sym") == "target"
    assert (tree.root / "sym").read_text() == "t"
    with pytest.raises(OSError) as hard:
        os.link(tree.root / "target", tree.root / "hard")
    assert hard.value.errno == errno.EPERM
    with pytest.raises(OSError) as fifo:
        os.mkfifo(tree.root / "fifo")
    assert fifo.value.errno == errno.EPERM


def test_extended_attributes_are_not_supported_and_writes_never_ask(tree: Tree, tmp_path: Path) -> None:
    path = tree.root / "x.txt"
    path.write_bytes(b"a")
    # cp -a and ls -l carry on without them; rsync -X copies the data and reports the attributes
    # it could not set (exit 23), as on any file system without them.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"f")
    os.setxattr(outside / "f", "user.a", b"1")
    sh(f"cp -a '{path}' '{outside}/cp'")
    sh(f"cp -a '{outside}' '{tree.root}/cp'")
    sh(f"rsync -aX '{tree.root}/cp/' '{tmp_path}/back/'")
    rsync = subprocess.run(
        ["rsync", "-aX", f"{outside}/", f"{tree.root}/rs/"], capture_output=True, text=True, timeout=60
    )
    assert rsync.returncode == 23 and "Operation not supported" in rsync.stderr
    assert "x.txt" in sh(f"ls -l '{tree.root}'").stdout
    assert (outside / "cp").read_bytes() == b"a"
    assert (tree.root / "cp" / "f").read_bytes() == (tree.root / "rs" / "f").read_bytes() == b"f"
    assert (tmp_path / "back" / "f").read_bytes() == b"f"
    for call in (
        lambda: os.getxattr(path, "user.a"),
        lambda: os.setxattr(path, "user.a", b"1"),
        lambda: os.listxattr(path),
        lambda: os.removexattr(path, "user.a"),
    ):
        with pytest.raises(OSError) as refused:
            call()
        assert refused.value.errno == errno.EOPNOTSUPP

    # ENOSYS told the kernel to stop asking, also before each write(2) (its security.capability
    # check), which otherwise costs a round trip per write.
    def getxattr_requests() -> float:
        return Scrape(tree.mount.metrics_address()).value(
            "vaultfs_fuse_operations_total", operation="getxattr"
        )

    before = getxattr_requests()
    with open(path, "ab") as f:
        for _ in range(20):
            f.write(b"b")
            f.flush()
    assert getxattr_requests() == before


def test_other_clients_changes_show_after_the_ttl(tree: Tree) -> None:
    (tree.root / "shared.txt").write_text("mine")
    assert (tree.root / "shared.txt").read_text() == "mine"
    tree.put("shared.txt", b"theirs, and longer")
    tree.put("fresh.txt", b"new")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (tree.root / "shared.txt").read_text() == "theirs, and longer" and (
            tree.root / "fresh.txt"
        ).exists():
            break
        time.sleep(0.2)
    assert (tree.root / "shared.txt").read_text() == "theirs, and longer"
    assert (tree.root / "fresh.txt").read_text() == "new"


def test_containers_are_directories_at_the_root(tree: Tree) -> None:
    top = tree.mount.mountpoint
    assert tree.container in os.listdir(top)
    name = f"n-{uuid.uuid4().hex[:8]}"
    (top / name).mkdir()
    assert name in tree.driver.containers()
    (top / name / "f").write_text("x")
    with pytest.raises(OSError) as not_empty:
        (top / name).rmdir()
    assert not_empty.value.errno == errno.ENOTEMPTY
    (top / name / "f").unlink()
    (top / name).rmdir()
    assert name not in tree.driver.containers()
    with pytest.raises(OSError) as at_root:
        (top / "file-at-root").write_text("x")
    assert at_root.value.errno == errno.EPERM


def test_keys_no_path_can_show_are_skipped_and_the_directory_wins(
    tmp_path: Path, mount_factory: MountFactory, s3_options: dict[str, object]
) -> None:
    import boto3

    tree = make_s3(tmp_path, mount_factory, s3_options)
    client = boto3.client(
        "s3",
        endpoint_url=str(s3_options["endpoint"]),
        aws_access_key_id=str(s3_options["access_key"]),
        aws_secret_access_key=str(s3_options["secret_key"]),
        region_name="us-east-1",
    )
    # Written by another tool: names vaultfs's own drivers refuse, and a file
    # shadowed by a directory of the same name.
    for key in ("odd//double", "odd/./dot", "odd/../up", "odd/fine", "both", "both/inside"):
        with contextlib.suppress(client.exceptions.ClientError):  # SeaweedFS refuses some outright
            client.put_object(Bucket=tree.container, Key=key, Body=key.encode())
    stored = {o["Key"] for o in client.list_objects_v2(Bucket=tree.container, Prefix="odd/")["Contents"]}
    assert "odd/fine" in stored
    showable = sorted(k[4:] for k in stored if k[4:] not in ("", ".", "..") and "/" not in k[4:])
    assert sorted(os.listdir(tree.root / "odd")) == showable  # whatever else the server kept is skipped
    assert (tree.root / "both").is_dir()
    assert (tree.root / "both" / "inside").read_bytes() == b"both/inside"
    assert "both is both a file and a directory" in tree.mount.log()
