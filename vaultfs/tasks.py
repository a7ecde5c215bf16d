"""Running a batch of backend calls concurrently, with a bound and plain errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio


async def run_all(calls: Iterable[Callable[[], Awaitable[Any]]], limit: int = 16) -> list[Any]:
    """Await every call, at most ``limit`` at a time; return their results in order.

    If any call fails, the others are cancelled and the first failure is raised
    as itself, not wrapped in an exception group, so callers can catch driver
    errors as usual.
    """
    calls = list(calls)
    results: list[Any] = [None] * len(calls)
    limiter = trio.CapacityLimiter(limit)

    async def one(i: int) -> None:
        async with limiter:
            results[i] = await calls[i]()

    try:
        async with trio.open_nursery() as nursery:
            for i in range(len(calls)):
                nursery.start_soon(one, i)
    except BaseExceptionGroup as group:
        first = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return results
