"""Shared set-up. Tests that need torch_xla skip cleanly where it is not installed (the main venv);
``make xla-test`` runs them in ``.venv-xla`` against real torch_xla on the CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from ckpthooks.plugin import PluginHost, set_plugin_host

# torch_xla picks its device when it is first used: the CPU, unless the caller chose otherwise
os.environ.setdefault("PJRT_DEVICE", "CPU")


def pytest_configure(config: pytest.Config) -> None:
    """In the XLA lane, start the XLA runtime before any test runs a backward pass: torch's autograd
    engine sizes its per-device queues at its first backward, and an XLA device that appears later
    fails an internal assertion there (torch 2.9 with torch_xla 2.9)."""
    try:
        import torch_xla
    except ImportError:
        return
    torch_xla.device()


@pytest.fixture(autouse=True)
def _isolated_plugin_host() -> Iterator[None]:
    """The shared host has the built-in plugins only: tests register the XLA plugin where they need it."""
    previous = set_plugin_host(PluginHost(load_entry_points=False))
    try:
        yield
    finally:
        set_plugin_host(previous)


@pytest.fixture
def xla_host() -> PluginHost:
    """A host with the built-in plugins and the XLA plugin, registered as its entry point would be."""
    import ckpthooks_xla.plugin

    host = PluginHost(load_entry_points=False)
    host.register(ckpthooks_xla.plugin, name="xla")
    return host
