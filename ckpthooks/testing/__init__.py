"""Test helpers for ckpthooks and its plugins, shipped as a pytest plugin.

Installed with ckpthooks, so a plugin's own test suite gets these fixtures without configuration:

``ckpthooks_host``
    A fresh :class:`~ckpthooks.PluginHost` (built-in plugins only, no entry points) installed as
    the shared host for the duration of the test, and the previous host put back afterwards.
``register_plugin``
    ``register_plugin(obj, name=None)`` registers a plugin object on that host and always
    unregisters it at the end of the test.
``faulty_fs``
    The :class:`~ckpthooks.testing.faults.FaultyFileSystem` class (``faulty://`` URLs), emptied and
    without faults at the start and at the end of the test; inject storage faults with
    ``faulty_fs.inject("write", nth=2, error=disk_full())``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ckpthooks._plugin_host import PluginHost
    from ckpthooks.testing.faults import FaultyFileSystem


@pytest.fixture
def ckpthooks_host() -> Iterator[PluginHost]:
    from ckpthooks._plugin_host import PluginHost, set_plugin_host

    host = PluginHost(load_entry_points=False)
    previous = set_plugin_host(host)
    try:
        yield host
    finally:
        set_plugin_host(previous)


@pytest.fixture
def register_plugin(ckpthooks_host: PluginHost) -> Iterator[Callable[..., str]]:
    names: list[str] = []

    def register(plugin: object, name: str | None = None) -> str:
        registered = ckpthooks_host.register(plugin, name)
        names.append(registered)
        return registered

    try:
        yield register
    finally:
        for name in reversed(names):
            ckpthooks_host.unregister(name)


@pytest.fixture
def faulty_fs() -> Iterator[type[FaultyFileSystem]]:
    from ckpthooks.testing.faults import FaultyFileSystem

    FaultyFileSystem.reset()
    try:
        yield FaultyFileSystem
    finally:
        FaultyFileSystem.reset()
