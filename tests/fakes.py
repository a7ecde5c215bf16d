"""Drivers for tests that check which requests the daemon makes."""

from __future__ import annotations

import time
from typing import IO

from drivers.memory import MemoryDriver


class CountingDriver(MemoryDriver):
    """A memory driver that notes its ranged gets and can make each take ``delay`` seconds
    (a server a network away)."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.gets: list[tuple[str, int, int | None]] = []
        self.delay = delay

    @property
    def got(self) -> list[str]:
        """The artifacts the gets asked for, in order."""
        return [artifact for artifact, _, _ in self.gets]

    def get(self, container: str, artifact: str, offset: int = 0, length: int | None = None) -> IO[bytes]:
        self.gets.append((artifact, offset, length))
        if self.delay:
            time.sleep(self.delay)
        return super().get(container, artifact, offset, length)
