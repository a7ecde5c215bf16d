"""The driver conformance suite, run over every installed driver.

The list of drivers comes from the ``vaultfs.drivers`` entry-point group, so a
driver that is installed but has no factory here fails instead of being skipped.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.base import Driver
from drivers.conformance import DriverConformance

#: A non-seekable stream is uploaded a part at a time, each part held in memory:
#: the peak is about part size x (concurrency + 2) whatever the artifact's size,
#: which is what the suite's memory check measures.
BOUNDED_PARTS = {"multipart_chunksize": 5 << 20, "multipart_concurrency": 2}

INSTALLED = sorted(ep.name for ep in importlib.metadata.entry_points(group="vaultfs.drivers"))


def _options(cls: type[Driver], **values: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls.Options)}
    return cls.Options(**{k: v for k, v in values.items() if k in names})


def _make(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> Driver:
    cls = next(
        ep for ep in importlib.metadata.entry_points(group="vaultfs.drivers") if ep.name == name
    ).load()
    factories: dict[str, Callable[[], Driver]] = {
        "memory": lambda: cls(),
        "local": lambda: cls(_options(cls, root=str(tmp_path))),
        "sqlite": lambda: cls(_options(cls, path=str(tmp_path / "store.db"))),
        "s3": lambda: cls(_options(cls, **request.getfixturevalue("s3_options"), **BOUNDED_PARTS)),
        "lyve": lambda: cls(_options(cls, **request.getfixturevalue("s3_options"), **BOUNDED_PARTS)),
    }
    if name not in factories:
        pytest.fail(f"driver {name!r} is installed but tests/test_conformance.py has no factory for it")
    return factories[name]()


@pytest.mark.parametrize("driver_name", INSTALLED)
class TestConformance(DriverConformance):
    """Every installed driver against the one suite."""

    @pytest.fixture
    def driver(self, request: pytest.FixtureRequest, tmp_path: Path, driver_name: str) -> Iterator[Driver]:
        if driver_name == "memory":
            self.streams_data = False
        drv = _make(request, tmp_path, driver_name)
        yield drv
        drv.close()


def test_every_builtin_driver_is_registered() -> None:
    assert {"memory", "local", "s3", "lyve"} <= set(INSTALLED)
