"""The write-back queue and journal alone, with a fake upload function in place of a backend."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from drivers.base import ArtifactInfo
from drivers.errors import AccessDenied, Unavailable
from vaultfs import writeback
from vaultfs.writeback import HEDGE_MAX, RECORD_PREFIX, Upload, WriteBack


class FakeBackend:
    """Stores uploads in a dict; can fail or block them, and records their order and overlap."""

    def __init__(self) -> None:
        self.stored: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}
        self.order: list[tuple[str, bytes]] = []
        self.failing = False
        self.gate: trio.Event | None = None
        self.running = 0
        self.most_running = 0
        self.delay = 0.001

    async def put(
        self, container: str, artifact: str, path: str, metadata: Mapping[str, str]
    ) -> ArtifactInfo:
        data = Path(path).read_bytes()  # as the real put: the file as it is when the upload starts
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await trio.sleep(self.delay)
            if self.failing:
                raise Unavailable("the backend is down")
            self.stored[(container, artifact)] = (data, dict(metadata))
            self.order.append((artifact, data))
            return ArtifactInfo(artifact, len(data), 0.0, f"etag-{len(self.order)}", dict(metadata))
        finally:
            self.running -= 1


def stage(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


def records(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob(f"{RECORD_PREFIX}*.json"))]


def with_workers(wb: WriteBack, fn: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wb.run)
            result = await fn()
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


def test_many_submissions_are_all_stored_with_bounded_concurrency(tmp_path: Path) -> None:
    fake = FakeBackend()
    fake.delay = 0.05  # slower than a submission, so uploads overlap
    stored: list[str] = []
    wb = WriteBack(
        tmp_path, "b", fake.put, concurrency=4, on_stored=lambda up, info: stored.append(up.artifact)
    )

    async def main() -> None:
        async with trio.open_nursery() as writers:  # fifty files closed at once
            for i in range(50):
                path = stage(tmp_path, f"s{i}", b"%d" % i)
                writers.start_soon(wb.submit, "c", f"f{i}", path, {"mode": "1"}, 2, 0)
        assert await wb.drain() == 0

    with_workers(wb, main)
    assert {k: v[0] for k, v in fake.stored.items()} == {("c", f"f{i}"): b"%d" % i for i in range(50)}
    assert sorted(stored) == sorted(f"f{i}" for i in range(50))
    assert 1 < fake.most_running <= 4
    assert list(tmp_path.iterdir()) == []  # records and staged data are gone once stored


def test_record_is_durable_and_names_the_staged_data(tmp_path: Path) -> None:
    wb = WriteBack(tmp_path, "b", FakeBackend().put, concurrency=1)

    async def main() -> None:
        await wb.submit("c", "dir/f", stage(tmp_path, "s1", b"data"), {"mode": "33188"}, 4, 123)

    trio.run(main)  # no workers: the upload stays pending
    (body,) = records(tmp_path)
    assert body["container"] == "c" and body["artifact"] == "dir/f"
    assert (body["staging"], body["metadata"], body["size"], body["mtime_ns"]) == (
        "s1",
        {"mode": "33188"},
        4,
        123,
    )
    assert body["backend"] == "b" and body["format"] == 1


def test_a_newer_version_replaces_a_queued_one_and_waits_for_one_uploading(tmp_path: Path) -> None:
    fake = FakeBackend()
    wb = WriteBack(tmp_path, "b", fake.put, concurrency=4)

    async def main() -> None:
        fake.gate = trio.Event()
        await wb.submit("c", "f", stage(tmp_path, "v1", b"one"), {}, 3, 0)
        await wait_for(lambda: fake.running == 1)  # v1 is uploading, held at the gate
        await wb.submit("c", "f", stage(tmp_path, "v2", b"two"), {}, 3, 0)
        await wb.submit("c", "f", stage(tmp_path, "v3", b"three"), {}, 5, 0)  # replaces v2, never uploaded
        assert not (tmp_path / "v2").exists()
        assert fake.running == 1  # v3 waits for v1: one upload per artifact at a time
        fake.gate.set()
        await wb.sync("c", "f")

    with_workers(wb, main)
    assert fake.order == [("f", b"one"), ("f", b"three")]
    assert fake.stored[("c", "f")][0] == b"three"


def test_failed_uploads_back_off_keep_their_data_and_succeed_later(tmp_path: Path) -> None:
    fake = FakeBackend()
    wb = WriteBack(tmp_path, "b", fake.put, concurrency=2, retry_base=0.01, retry_max=0.05)

    async def main() -> None:
        fake.failing = True
        up = await wb.submit("c", "f", stage(tmp_path, "s", b"keep me"), {}, 7, 0)
        await wait_for(lambda: up.attempts >= 3)
        assert (tmp_path / "s").read_bytes() == b"keep me"
        assert len(records(tmp_path)) == 1
        with pytest.raises(Unavailable):
            await wb.sync("c", "f")  # an fsync hears the failure
        fake.failing = False
        await wb.sync("c", "f")

    with_workers(wb, main)
    assert fake.stored[("c", "f")][0] == b"keep me"
    assert list(tmp_path.iterdir()) == []


def test_drain_gives_up_on_a_dead_backend_after_one_more_attempt_each(tmp_path: Path) -> None:
    fake = FakeBackend()
    fake.failing = True
    wb = WriteBack(tmp_path, "b", fake.put, concurrency=2, retry_base=10, retry_max=10)

    async def main() -> int:
        for name in ("a", "b"):
            await wb.submit("c", name, stage(tmp_path, name, b"x"), {}, 1, 0)
        with trio.fail_after(5):  # not the 10 s backoff: drain tries everything at once
            return await wb.drain()

    assert with_workers(wb, main) == 2
    assert len(records(tmp_path)) == 2


def test_replay_uploads_what_a_crash_left_and_keeps_the_newest_version(tmp_path: Path) -> None:
    async def crash() -> None:
        wb = WriteBack(tmp_path, "b", FakeBackend().put, concurrency=1)
        await wb.submit("c", "f", stage(tmp_path, "old", b"old"), {}, 3, 0)
        await wb.submit("c", "g", stage(tmp_path, "g", b"gee"), {}, 3, 0)
        # A second record of f as a crash between writing it and removing the older one leaves it.
        older = sorted(tmp_path.glob(f"{RECORD_PREFIX}*"))[0].read_text()
        await wb.submit("c", "f", stage(tmp_path, "new", b"new"), {}, 3, 0)
        (tmp_path / f"{RECORD_PREFIX}{1:020d}.json").write_text(older)
        (tmp_path / "old").write_bytes(b"old")
        # A record whose write never finished, and staged data never closed.
        (tmp_path / f"{RECORD_PREFIX}{2:020d}.tmp").write_text('{"format": 1, "cont')
        stage(tmp_path, "never-closed", b"?")

    trio.run(crash)
    fake = FakeBackend()
    wb = WriteBack(tmp_path, "b", fake.put, concurrency=2)
    replayed = wb.replay()
    assert sorted((up.artifact, up.staging.name) for up in replayed) == [("f", "new"), ("g", "g")]
    assert not (tmp_path / "old").exists()

    async def main() -> None:
        assert await wb.drain() == 0

    with_workers(wb, main)
    assert {k: v[0] for k, v in fake.stored.items()} == {("c", "f"): b"new", ("c", "g"): b"gee"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["never-closed"]  # kept, and logged


def test_replay_skips_a_record_whose_data_is_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def crash() -> None:
        wb = WriteBack(tmp_path, "b", FakeBackend().put, concurrency=1)
        await wb.submit("c", "f", stage(tmp_path, "s", b"x"), {}, 1, 0)

    trio.run(crash)
    (tmp_path / "s").unlink()
    assert WriteBack(tmp_path, "b", FakeBackend().put, concurrency=1).replay() == []
    assert "missing" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_cancel_drops_queued_versions_and_waits_for_an_upload(tmp_path: Path) -> None:
    fake = FakeBackend()
    wb = WriteBack(tmp_path, "b", fake.put, concurrency=1)

    async def main() -> None:
        fake.gate = trio.Event()
        await wb.submit("c", "busy", stage(tmp_path, "busy", b"1"), {}, 1, 0)
        await wait_for(lambda: fake.running == 1)
        await wb.submit("c", "queued", stage(tmp_path, "queued", b"2"), {}, 1, 0)
        await wb.cancel("c", "queued")
        assert wb.pending("c", "queued") is None and not (tmp_path / "queued").exists()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wb.cancel, "c", "busy")
            await trio.sleep(0.05)
            assert wb.pending("c", "busy") is not None  # cancel waits for the upload under way
            fake.gate.set()
        assert wb.pending("c", "busy") is None

    with_workers(wb, main)
    assert list(fake.stored) == [("c", "busy")]
    assert list(tmp_path.iterdir()) == []


def test_amend_gives_pending_data_new_metadata_without_losing_it(tmp_path: Path) -> None:
    fake = FakeBackend()
    wb = WriteBack(tmp_path, "b", fake.put, concurrency=1)

    async def main() -> None:
        fake.gate = trio.Event()
        await wb.submit("c", "f", stage(tmp_path, "s", b"data"), {"mode": "1"}, 4, 0)
        await wait_for(lambda: fake.running == 1)
        # While the first version uploads, new metadata makes a second version of the same file.
        assert await wb.amend("c", "f", {"mode": "2"})
        fake.gate.set()
        await wb.sync("c", "f")
        assert not await wb.amend("c", "f", {"mode": "3"})  # nothing pending: the caller stores it

    with_workers(wb, main)
    assert fake.stored[("c", "f")] == (b"data", {"mode": "2"})
    assert list(tmp_path.iterdir()) == []


def test_gauges_show_depth_bytes_and_age(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    wb = WriteBack(tmp_path, "gauges", FakeBackend().put, concurrency=1)

    async def main() -> None:
        await wb.submit("c", "a", stage(tmp_path, "a", b"12345"), {}, 5, 0)
        await trio.sleep(0.05)
        await wb.submit("c", "a", stage(tmp_path, "a2", b"123"), {}, 3, 0)
        wb.publish()

    trio.run(main)

    def gauge(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"backend": "gauges"}) or 0.0

    assert gauge("vaultfs_writeback_pending") == 1
    assert gauge("vaultfs_writeback_pending_bytes") == 3
    assert gauge("vaultfs_writeback_oldest_age_seconds") >= 0.05  # the artifact's wait, not the version's


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.001)


def test_upload_record_round_trips(tmp_path: Path) -> None:
    up = Upload("c", "k", tmp_path / "s", {"a": "b"}, 1, 2, 3, tmp_path / "r")
    assert up.key == ("c", "k")
    assert up.body("n")["staging"] == "s"
    assert os.path.basename(str(up.body("n")["staging"])) == "s"


def test_a_quick_upload_needs_no_journal_record(tmp_path: Path) -> None:
    fake = FakeBackend()
    wb = WriteBack(tmp_path, "b", fake.put, concurrency=1, hedge=5.0)

    async def main() -> Upload:
        return await wb.submit("c", "f", stage(tmp_path, "s", b"quick"), {}, 5, 0)

    up = with_workers(wb, main)
    assert up.safe.is_set() and up.journal == "none"
    assert fake.stored[("c", "f")][0] == b"quick"
    assert list(tmp_path.iterdir()) == []


def test_a_slow_upload_is_journaled_after_the_hedge_and_goes_on(tmp_path: Path) -> None:
    fake = FakeBackend()
    wb = WriteBack(tmp_path, "b", fake.put, concurrency=1, hedge=0.05)

    async def main() -> None:
        fake.gate = trio.Event()
        with trio.fail_after(5):
            up = await wb.submit("c", "f", stage(tmp_path, "s", b"slow"), {}, 4, 0)
        assert up.journal == "durable" and up.safe.is_set()
        assert [r["artifact"] for r in records(tmp_path)] == ["f"]
        assert fake.running == 1  # the upload started at once and is still under way
        fake.gate.set()
        await wb.sync("c", "f")

    with_workers(wb, main)
    assert fake.stored[("c", "f")][0] == b"slow"
    assert list(tmp_path.iterdir()) == []


def test_a_version_the_backend_refuses_outright_is_returned_with_its_error(tmp_path: Path) -> None:
    async def refuse(container: str, artifact: str, path: str, metadata: Mapping[str, str]) -> ArtifactInfo:
        raise AccessDenied("no write permission")

    wb = WriteBack(tmp_path, "b", refuse, concurrency=1, hedge=5.0)

    async def main() -> None:
        with pytest.raises(AccessDenied):
            await wb.submit("c", "f", stage(tmp_path, "s", b"mine"), {}, 4, 0)
        assert wb.pending("c", "f") is None

    with_workers(wb, main)
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # the data is the caller's again, no record


def test_a_replaced_version_keeps_its_record_until_the_newer_one_is_safe(tmp_path: Path) -> None:
    wb = WriteBack(tmp_path, "b", FakeBackend().put, concurrency=1, hedge=0.01)

    async def main() -> None:
        # No workers: nothing is uploaded, every version must reach the journal.
        await wb.submit("c", "f", stage(tmp_path, "v1", b"one"), {}, 3, 0)
        with pytest.raises(FileNotFoundError):  # the newer version's journal write fails
            await wb.submit("c", "f", tmp_path / "missing", {}, 3, 0)
        assert [r["staging"] for r in records(tmp_path)] == ["v1"]  # so the older one stays durable
        await wb.submit("c", "f", stage(tmp_path, "v3", b"three"), {}, 5, 0)
        assert [r["staging"] for r in records(tmp_path)] == ["v3"]
        assert not (tmp_path / "v1").exists()

    trio.run(main)


def test_calibrate_times_a_journal_write_and_a_crash_in_it_leaves_nothing_to_upload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wb = WriteBack(tmp_path, "b", FakeBackend().put, concurrency=1)
    assert wb.calibrate() == wb.journal_cost > 0
    assert list(tmp_path.iterdir()) == []
    # What a crash in the middle of the probe leaves: neither replayed nor reported as lost data.
    (tmp_path / f"{RECORD_PREFIX}probe-data.tmp").write_bytes(bytes(4096))
    (tmp_path / f"{RECORD_PREFIX}probe.tmp").write_text("{}")
    (tmp_path / f"{RECORD_PREFIX}probe.probe").write_text("{}")
    again = WriteBack(tmp_path, "b", FakeBackend().put, concurrency=1)
    assert again.replay() == []
    assert "not uploaded" not in caplog.text
    again.calibrate()
    assert list(tmp_path.iterdir()) == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_slow_backend_gets_small_files_journaled_as_soon_as_a_record_would_pay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long longest wait: a close that waited for it would trip the fail_after below.
    monkeypatch.setattr(writeback, "HEDGE_MAX", 5.0)
    fake = FakeBackend()
    fake.delay = 1.0  # a remote server: a PUT takes far longer than a local journal record
    wb = WriteBack(tmp_path, "b", fake.put, concurrency=4)
    wb.calibrate()
    assert wb.hedge == 5.0  # nothing is known of the backend yet: it may be quick

    async def main() -> None:
        first = await wb.submit("c", "f1", stage(tmp_path, "s1", b"one"), {}, 3, 0)
        assert first.journal == "none" and ("c", "f1") in fake.stored
        assert wb.upload_time >= 1.0
        # Now a close waits only as long as a record costs, then writes one.
        assert wb.hedge == wb.journal_cost < 1.0
        fake.gate = trio.Event()
        with trio.fail_after(2.5):
            second = await wb.submit("c", "f2", stage(tmp_path, "s2", b"two"), {}, 3, 0)
        assert second.journal == "durable" and second.safe.is_set()
        assert [r["artifact"] for r in records(tmp_path)] == ["f2"]
        assert fake.running == 1  # its upload goes on
        fake.gate.set()
        await wb.sync("c", "f2")

    with_workers(wb, main)
    assert {k: v[0] for k, v in fake.stored.items()} == {("c", "f1"): b"one", ("c", "f2"): b"two"}
    assert list(tmp_path.iterdir()) == []


def test_a_quick_backend_stores_small_files_without_journal_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_durable = WriteBack._make_durable

    def slow_disk(self: WriteBack, data: Path, record: Path, body: str) -> None:
        time.sleep(0.02)  # a journal record costs 20 ms here, a PUT about 1 ms
        make_durable(self, data, record, body)

    monkeypatch.setattr(WriteBack, "_make_durable", slow_disk)
    fake = FakeBackend()
    wb = WriteBack(tmp_path, "b", fake.put, concurrency=4)
    assert wb.calibrate() >= 0.02

    async def main() -> None:
        for i in range(5):
            up = await wb.submit("c", f"f{i}", stage(tmp_path, f"s{i}", b"x"), {}, 1, 0)
            assert up.journal == "none" and up.safe.is_set()
        assert 0 < wb.upload_time < wb.journal_cost
        assert wb.hedge == HEDGE_MAX

    with_workers(wb, main)
    assert len(fake.stored) == 5
    assert list(tmp_path.iterdir()) == []


def test_a_metadata_change_while_a_stored_version_is_cleaned_up_never_loses_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rsync's utimensat right after close, while the journaled version's upload has just ended
    # and its record and staged data are being deleted in a worker thread.
    unlinking, go_on = threading.Event(), threading.Event()
    unlink = WriteBack._unlink

    def held(self: WriteBack, up: Upload, shared: bool, recorded: bool) -> None:
        unlinking.set()
        go_on.wait(5)
        unlink(self, up, shared, recorded)

    monkeypatch.setattr(WriteBack, "_unlink", held)
    fake = FakeBackend()
    fake.gate = trio.Event()
    wb = WriteBack(tmp_path, "b", fake.put, concurrency=1, hedge=0.0)  # every version journaled

    async def main() -> tuple[bool, int]:
        up = await wb.submit("c", "f", stage(tmp_path, "s", b"data"), {"m": "1"}, 4, 0)
        assert up.journal == "durable"
        fake.gate.set()
        with trio.fail_after(5):
            assert await trio.to_thread.run_sync(unlinking.wait, 5)
            # Stored: the change goes to the stored artifact, not into a version of deleted data.
            amended = await wb.amend("c", "f", {"m": "2"})
            drained: list[int] = []

            async def drain() -> None:
                drained.append(await wb.drain())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await trio.sleep(0.05)
                assert drained == []  # an unmount waits for the cleanup: records must not outlive it
                go_on.set()
            return amended, drained[0]

    amended, left = with_workers(wb, main)
    assert (amended, left) == (False, 0)
    assert fake.stored[("c", "f")] == (b"data", {"m": "1"})
    assert list(tmp_path.iterdir()) == []
