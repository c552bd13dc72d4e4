"""Shared test setup: every test gets a fresh plugin host (built-ins only) unless it asks otherwise."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from ckpthooks._plugin_host import PluginHost, set_plugin_host


@pytest.fixture(autouse=True)
def _isolated_plugin_host(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests do not see entry-point plugins installed in the environment, nor each other's."""
    if "ckpthooks_host" in request.fixturenames:
        yield  # the test manages the host itself
        return
    previous = set_plugin_host(PluginHost(load_entry_points=False))
    try:
        yield
    finally:
        set_plugin_host(previous)


@pytest.fixture(autouse=True)
def _ckpthooks_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ckpthooks")
