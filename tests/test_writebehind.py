"""Write-behind: which stretches of a staged file have their writeback started, and when."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from vaultfs import writebehind
from vaultfs.writebehind import WINDOW, advance


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    seen: list[tuple[int, int, int]] = []

    def record(fd: int, offset: int, length: int, flags: int) -> int:
        seen.append((offset, length, flags))
        return 0

    monkeypatch.setattr(writebehind, "_sync_file_range", record)
    return seen


def test_a_window_at_a_time(calls: list[tuple[int, int, int]]) -> None:
    assert advance(3, 0, WINDOW - 1) == 0
    assert calls == []
    assert advance(3, 0, WINDOW + 5) == WINDOW + 5
    assert advance(3, WINDOW + 5, 100) == WINDOW + 5  # a write before the mark
    assert advance(3, WINDOW + 5, 3 * WINDOW) == 3 * WINDOW
    assert calls == [(0, WINDOW + 5, 2), (WINDOW + 5, 2 * WINDOW - 5, 2)]


@pytest.mark.skipif(sys.platform != "linux", reason="sync_file_range is Linux's")
def test_the_system_call_is_there_and_takes_a_real_file(tmp_path: Path) -> None:
    assert writebehind._sync_file_range is not None
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"x" * WINDOW, 0)
        assert advance(fd, 0, WINDOW) == WINDOW
        os.fsync(fd)
    finally:
        os.close(fd)
