"""End to end: real plugin distributions, pip-installed, found through real entry points.

``tests/fixtures/ckpthooks-fixture-plugin`` contributes the state component ``fixture_counter`` and
two edit hooks; ``tests/fixtures/ckpthooks-broken-plugin`` fails at import (a missing dependency).
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ckpthooks import Checkpointer, UnexpectedStateError
from ckpthooks._plugin_host import PluginHost, PluginLoadWarning, get_plugin_host, set_plugin_host
from ckpthooks.testing.packaging import PLUGIN_ENV_VARIABLES, on_sys_path, pip_install_target, subprocess_env

FIXTURES = Path(__file__).parent / "fixtures"
PACKAGES = ("ckpthooks-fixture-plugin", "ckpthooks-broken-plugin")
GOOD_MODULE = "ckpthooks_fixture_plugin"
BROKEN_MODULE = "ckpthooks_broken_plugin"
BUILTINS = ["builtin-state", "builtin-policies", "builtin-storage", "builtin-lightning"]


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Both fixture packages pip-installed into a fresh folder, first on sys.path."""
    site = pip_install_target([FIXTURES / package for package in PACKAGES], tmp_path_factory.mktemp("plugin-packages"))
    with on_sys_path(site, GOOD_MODULE, BROKEN_MODULE):
        yield site


@pytest.fixture(autouse=True)
def _clean_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in PLUGIN_ENV_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def host(site_dir: Path) -> Iterator[PluginHost]:
    """A host with entry points, installed as the shared host; the previous one is put back."""
    with pytest.warns(PluginLoadWarning, match="'broken'"):
        new = PluginHost()
    previous = set_plugin_host(new)
    try:
        yield new
    finally:
        set_plugin_host(previous)


@pytest.fixture
def plugin(host: PluginHost) -> Iterator[types.ModuleType]:
    """The installed plugin module, its counter reset before and after the test."""
    module = sys.modules[GOOD_MODULE]
    module.COUNTER.value = 0
    module.COUNTER.loaded.clear()
    yield module
    module.COUNTER.value = 0
    module.COUNTER.loaded.clear()


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "ckpthooks"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ckpthooks.cli"]


# --------------------------------------------------------------------------- discovery


def test_installed_plugin_is_discovered_through_its_entry_point(host: PluginHost) -> None:
    infos = {info.name: info for info in host.plugins()}
    assert list(infos) == [*BUILTINS, "fixture", "broken"]
    fixture = infos["fixture"]
    assert fixture.source == "entrypoint"
    assert fixture.distribution == "ckpthooks-fixture-plugin"
    assert fixture.version == "1.2.3"
    assert fixture.module == GOOD_MODULE
    assert fixture.hooks == ("on_load_checkpoint", "on_save_checkpoint", "register_state_components")
    assert fixture.active
    assert host.plugin_versions()["fixture"] == "1.2.3"
    assert get_plugin_host() is host


def test_broken_package_is_listed_as_failed_and_does_not_stop_the_host(host: PluginHost) -> None:
    [broken] = host.failures
    assert broken.name == "broken"
    assert broken.source == "entrypoint"
    assert broken.distribution == "ckpthooks-broken-plugin"
    assert broken.version == "0.0.1"
    assert broken.module == BROKEN_MODULE
    assert not broken.active
    assert broken.error == "ModuleNotFoundError: No module named 'ckpthooks_fixture_missing_dependency'"
    assert "broken" not in host.plugin_versions()
    assert BROKEN_MODULE not in sys.modules


def test_allow_list_loads_only_the_fixture_plugin(site_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTHOOKS_PLUGINS_ALLOW", "fixture")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        host = PluginHost()
    assert [info.name for info in host.plugins()] == [*BUILTINS, "fixture"]


# --------------------------------------------------------------------------- save and restore


def test_plugin_state_is_saved_and_restored(
    plugin: types.ModuleType, host: PluginHost, tmp_path: Path
) -> None:
    plugin.COUNTER.value = 41
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False, save_rng_state=False)
    assert ckpt.host is host
    assert "fixture_counter" in [component.name for component in ckpt.components]
    path = tmp_path / "epoch=0.ckpt"
    manifest = ckpt.save_checkpoint(path)

    saved = torch.load(path, weights_only=True)
    assert saved["ckpthooks"]["components"]["fixture_counter"] == 41
    assert saved["fixture_plugin"] == {"saved_by": "ckpthooks-fixture-plugin", "counter": 41}
    assert saved["ckpthooks"]["plugins"]["fixture"] == "1.2.3"
    assert manifest is not None and manifest.plugins["fixture"] == "1.2.3"

    plugin.COUNTER.value = 0
    report = Checkpointer(tmp_path, enable_checkpointing=False, save_rng_state=False).restore(path)
    assert report is not None
    assert "fixture_counter" in report.restored
    assert report.missing == [] and report.unexpected == []
    assert plugin.COUNTER.value == 41
    assert plugin.COUNTER.loaded == [{"saved_by": "ckpthooks-fixture-plugin", "counter": 41}]


def test_restoring_without_the_plugin_reports_its_state_as_unexpected(
    plugin: types.ModuleType, host: PluginHost, tmp_path: Path
) -> None:
    plugin.COUNTER.value = 5
    path = tmp_path / "a.ckpt"
    Checkpointer(tmp_path, enable_checkpointing=False, save_rng_state=False).save_checkpoint(path)

    without = PluginHost(load_entry_points=False)
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False, save_rng_state=False, plugin_host=without)
    with pytest.raises(UnexpectedStateError, match="'fixture_counter'"):
        ckpt.restore(path)
    report = ckpt.restore(path, strict=False)
    assert report is not None and report.unexpected == ["component 'fixture_counter'"]


def test_a_new_process_restores_the_plugin_state(
    plugin: types.ModuleType, site_dir: Path, tmp_path: Path
) -> None:
    plugin.COUNTER.value = 1234
    path = tmp_path / "a.ckpt"
    Checkpointer(tmp_path, enable_checkpointing=False, save_rng_state=False).save_checkpoint(path)
    code = (
        "import warnings, ckpthooks, ckpthooks_fixture_plugin as p\n"
        "warnings.simplefilter('ignore')\n"
        f"c = ckpthooks.Checkpointer({str(tmp_path)!r}, enable_checkpointing=False, save_rng_state=False)\n"
        f"c.restore({str(path)!r})\n"
        "print(p.COUNTER.value)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env=subprocess_env(site_dir), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1234"


# --------------------------------------------------------------------------- the CLI


def test_cli_lists_the_installed_plugins_as_json(site_dir: Path) -> None:
    result = subprocess.run(
        [*cli_command(), "plugins", "--json"], capture_output=True, text=True, timeout=120,
        env=subprocess_env(site_dir), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = {record["name"]: record for record in json.loads(result.stdout)}
    assert list(records) == [*BUILTINS, "fixture", "broken"]
    assert records["fixture"] == {
        "name": "fixture",
        "source": "entrypoint",
        "distribution": "ckpthooks-fixture-plugin",
        "version": "1.2.3",
        "module": GOOD_MODULE,
        "hooks": ["on_load_checkpoint", "on_save_checkpoint", "register_state_components"],
        "active": True,
        "error": None,
    }
    broken = records["broken"]
    assert broken["active"] is False
    assert broken["distribution"] == "ckpthooks-broken-plugin"
    assert "ckpthooks_fixture_missing_dependency" in broken["error"]
    assert broken["hooks"] == []


def test_cli_strict_mode_fails_on_the_broken_package(site_dir: Path) -> None:
    result = subprocess.run(
        [*cli_command(), "plugins"], capture_output=True, text=True, timeout=120,
        env=subprocess_env(site_dir, CKPTHOOKS_STRICT_PLUGINS="1"), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "plugin 'broken' failed to load" in result.stderr
    assert "ckpthooks_fixture_missing_dependency" in result.stderr


def test_cli_with_the_plugins_installed_still_imports_no_torch(site_dir: Path) -> None:
    code = (
        "import sys, ckpthooks.cli\n"
        "ckpthooks.cli.main(['plugins'], standalone_mode=False)\n"
        "print('torch' in sys.modules, 'ckpthooks_fixture_plugin' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env=subprocess_env(site_dir), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False True"
