"""The driver registry: built-ins and plug-ins found alike through the ``vaultfs.drivers`` entry points.

Plug-ins here are real installed distributions: a ``*.dist-info`` directory
with an ``entry_points.txt`` on a ``sys.path`` entry, exactly what pip leaves
behind.  :func:`write_plugins` builds them; the config and CLI tests use it too.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from drivers.memory import MemoryDriver
from vaultfs import registry

SECRET = "s3cr3t-T0KEN-4242"

#: A plug-in module with a well-behaved driver (rich Options) and some that misbehave on purpose.
PLUGIN_MODULE = '''
"""Drivers for vaultfs's registry, config and CLI tests."""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

from drivers.errors import AccessDenied
from drivers.memory import MemoryDriver


@dataclasses.dataclass(frozen=True)
class FakeOptions:
    endpoint: str
    token: str = dataclasses.field(default="", repr=False, metadata={"secret": True})
    # A secret a careless plug-in leaves in its repr; vaultfs must hide it anyway.
    password: str = dataclasses.field(default="", metadata={"secret": True})
    port: int = 443
    ratio: float = 1.0
    verbose: bool = False
    hosts: list[str] = dataclasses.field(default_factory=list)
    region: str | None = None
    mode: Literal["fast", "safe"] = "safe"

    def __post_init__(self) -> None:
        if self.endpoint == "reject":
            raise ValueError(f"endpoint reject does not accept token {self.token}")


class FakeDriver(MemoryDriver):
    """An in-memory driver with options, for tests."""

    name = "fake"
    Options = FakeOptions

    def __init__(self, options: FakeOptions) -> None:
        super().__init__(options)
        self.options = options


class FailingDriver(FakeDriver):
    """Fails its health check, quoting its token as a careless driver might."""

    name = "failing"

    def health_check(self) -> None:
        raise AccessDenied(f"token {self.options.token} was refused")


class SlowDriver(FakeDriver):
    """Never answers its health check in time."""

    name = "slow"

    def health_check(self) -> None:
        time.sleep(60)


class Misnamed(FakeDriver):
    name = "something-else"


class NotADriver:
    pass
'''

GOOD = {
    "fake": "vaultfs_testplug:FakeDriver",
    "failing": "vaultfs_testplug:FailingDriver",
    "slow": "vaultfs_testplug:SlowDriver",
}
BAD = {
    "broken": "vaultfs_testplug_broken:Driver",
    "notadriver": "vaultfs_testplug:NotADriver",
    "misnamed": "vaultfs_testplug:Misnamed",
    "abstract": "drivers:Driver",
    "noattr": "vaultfs_testplug:Missing",
}


def write_dist(root: Path, dist: str, entry_points: dict[str, str]) -> Path:
    """Install a distribution named ``dist`` with these ``vaultfs.drivers`` entry points under ``root``."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[vaultfs.drivers]\n{lines}")
    return root


def write_plugins(root: Path, *, bad: bool = False) -> Path:
    """A sys.path entry holding the test plug-in modules and a distribution registering them.

    ``bad=True`` registers the misbehaving entry points instead of the good ones.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "vaultfs_testplug.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    (root / "vaultfs_testplug_broken.py").write_text('raise ImportError("the fake SDK is not installed")\n')
    if bad:
        return write_dist(root, "vaultfs-testplug-bad", BAD)
    return write_dist(root, "vaultfs-testplug", GOOD)


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The good test plug-ins, installed for this test."""
    path = write_plugins(tmp_path / "site")
    monkeypatch.syspath_prepend(str(path))
    return path


@pytest.fixture
def bad_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The misbehaving test plug-ins, installed for this test."""
    path = write_plugins(tmp_path / "bad-site", bad=True)
    monkeypatch.syspath_prepend(str(path))
    return path


@dataclasses.dataclass(frozen=True)
class Spec:
    driver_name: str
    options: object


def test_builtin_drivers_are_found_through_entry_points() -> None:
    found = registry.available()
    assert {"memory", "local", "s3", "lyve"} <= set(found)
    assert list(found) == sorted(found)
    assert found["memory"].value == "drivers.memory:MemoryDriver"
    assert all(ep.group == registry.GROUP for ep in found.values())


def test_load_and_create_a_builtin() -> None:
    cls = registry.load("memory")
    assert cls is MemoryDriver
    driver = registry.create(Spec("memory", cls.Options()))
    assert isinstance(driver, MemoryDriver)
    assert registry.summary(cls)


def test_unknown_driver_lists_installed_and_suggests() -> None:
    with pytest.raises(registry.UnknownDriver) as err:
        registry.load("memroy")
    message = str(err.value)
    assert "unknown driver 'memroy'" in message
    assert "did you mean 'memory'?" in message
    assert "installed drivers: " in message
    for name in ("local", "lyve", "memory", "s3"):
        assert name in message


def test_third_party_plugin_is_found_like_a_builtin(plugins: Path) -> None:
    found = registry.available()
    assert {"fake", "failing", "slow", "memory"} <= set(found)
    assert found["fake"].dist is not None and found["fake"].dist.name == "vaultfs-testplug"
    cls = registry.load("fake")
    assert cls.__name__ == "FakeDriver" and cls.name == "fake"
    driver = registry.create(Spec("fake", cls.Options(endpoint="https://example.invalid")))
    driver.create_container("c")
    assert driver.containers() == ["c"]
    assert registry.summary(cls) == "An in-memory driver with options, for tests."


def test_plugins_leave_with_their_path_entry(plugins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    assert "fake" not in registry.available()


def test_plugin_that_fails_to_import(bad_plugins: Path) -> None:
    with pytest.raises(registry.PluginError) as err:
        registry.load("broken")
    message = str(err.value)
    assert "driver 'broken'" in message
    assert "entry point 'broken = vaultfs_testplug_broken:Driver' of vaultfs-testplug-bad 1.0" in message
    assert "in module vaultfs_testplug_broken" in message
    assert "ImportError: the fake SDK is not installed" in message


def test_plugin_naming_a_missing_attribute(bad_plugins: Path) -> None:
    with pytest.raises(registry.PluginError, match=r"noattr.*could not be loaded: AttributeError"):
        registry.load("noattr")


def test_plugin_that_is_not_a_driver(bad_plugins: Path) -> None:
    with pytest.raises(registry.PluginError) as err:
        registry.load("notadriver")
    message = str(err.value)
    assert "entry point 'notadriver = vaultfs_testplug:NotADriver'" in message
    assert "in module vaultfs_testplug)" in message
    assert "is not a subclass of drivers.Driver" in message


def test_abstract_plugin(bad_plugins: Path) -> None:
    with pytest.raises(registry.PluginError, match=r"is abstract: it does not implement .*get"):
        registry.load("abstract")


def test_plugin_whose_name_differs_from_its_entry_point(bad_plugins: Path) -> None:
    with pytest.raises(registry.PluginError, match=r"sets name = 'something-else'; it must match"):
        registry.load("misnamed")


def test_a_broken_plugin_does_not_break_the_others(plugins: Path, bad_plugins: Path) -> None:
    assert registry.load("fake").name == "fake"
    assert registry.load("memory") is MemoryDriver


def test_two_packages_claiming_one_name(
    plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = write_dist(
        tmp_path / "other-site", "vaultfs-impostor", {"fake": "vaultfs_testplug:FailingDriver"}
    )
    monkeypatch.syspath_prepend(str(other))
    with pytest.raises(registry.PluginError) as err:
        registry.load("fake")
    message = str(err.value)
    assert "registered by more than one package" in message
    assert "vaultfs-testplug" in message and "vaultfs-impostor" in message
    assert "fake" in registry.available()


def test_the_same_target_seen_twice_is_one_driver(
    plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An old copy of the same distribution's metadata elsewhere on the path is not a conflict.
    twin = write_dist(tmp_path / "twin-site", "vaultfs-testplug-twin", {"fake": GOOD["fake"]})
    monkeypatch.syspath_prepend(str(twin))
    assert registry.load("fake").name == "fake"
