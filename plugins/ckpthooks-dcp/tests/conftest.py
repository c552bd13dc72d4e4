"""Every test gets a fresh plugin host (built-ins only) unless it asks otherwise."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ckpthooks.plugin import PluginHost, set_plugin_host


@pytest.fixture(autouse=True)
def _isolated_plugin_host(request: pytest.FixtureRequest) -> Iterator[None]:
    if "ckpthooks_host" in request.fixturenames:
        yield
        return
    previous = set_plugin_host(PluginHost(load_entry_points=False))
    try:
        yield
    finally:
        set_plugin_host(previous)
