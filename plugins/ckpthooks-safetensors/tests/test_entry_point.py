"""The distribution, pip-installed into a fresh folder, is found through its ``ckpthooks`` entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ckpthooks.plugin import PluginHost
from ckpthooks.testing.packaging import PLUGIN_ENV_VARIABLES, on_sys_path, pip_install_target, subprocess_env

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The plugin pip-installed (without dependencies) into a fresh folder, first on sys.path."""
    site = pip_install_target([PACKAGE_ROOT], tmp_path_factory.mktemp("safetensors-plugin"))
    with on_sys_path(site):
        yield site


@pytest.fixture(autouse=True)
def _clean_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in PLUGIN_ENV_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def test_the_installed_files_include_the_typing_marker_and_the_entry_point(site_dir: Path) -> None:
    assert (site_dir / "ckpthooks_safetensors" / "py.typed").exists()
    [dist_info] = site_dir.glob("ckpthooks_safetensors-*.dist-info")
    entry_points = (dist_info / "entry_points.txt").read_text()
    assert "[ckpthooks]\nsafetensors = ckpthooks_safetensors.plugin" in entry_points


def test_the_plugin_host_finds_the_plugin_through_its_entry_point(site_dir: Path) -> None:
    host = PluginHost()
    infos = {info.name: info for info in host.plugins()}
    info = infos["safetensors"]
    assert info.source == "entrypoint"
    assert info.distribution == "ckpthooks-safetensors"
    assert info.version == "0.1.0"
    assert info.module == "ckpthooks_safetensors.plugin"
    assert info.hooks == ("load_checkpoint", "register_checkpoint_io")
    assert info.active
    specs = {spec.name: (plugin_name, spec) for plugin_name, spec in host.checkpoint_io_specs()}
    plugin_name, spec = specs["safetensors"]
    assert plugin_name == "safetensors"
    assert spec.priority < specs["torch"][1].priority
    assert type(host.checkpoint_io_for("/tmp/x.ckpt")).__name__ == "TorchCheckpointIO"


def test_in_a_new_process_the_installed_plugin_saves_and_loads(site_dir: Path, tmp_path: Path) -> None:
    code = f"""
import sys, torch, ckpthooks_safetensors
from ckpthooks import Checkpointer
from ckpthooks_safetensors import SafetensorsCheckpointIO
assert ckpthooks_safetensors.__file__.startswith({str(site_dir)!r}), ckpthooks_safetensors.__file__
model = torch.nn.Linear(2, 2)
Checkpointer({str(tmp_path)!r}, checkpoint_io=SafetensorsCheckpointIO(), enable_checkpointing=False,
             save_rng_state=False).track(model=model).save_checkpoint({str(tmp_path / "a.ckpt")!r})
fresh = torch.nn.Linear(2, 2)
report = Checkpointer({str(tmp_path)!r}, enable_checkpointing=False, save_rng_state=False).track(
    model=fresh).restore("last", must_exist=True)
print('model' in report.restored, torch.equal(fresh.weight, model.weight))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, timeout=120, env=subprocess_env(site_dir), check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True True"


def test_the_cli_lists_the_plugin_without_importing_torch(site_dir: Path) -> None:
    code = (
        "import sys, ckpthooks.cli\n"
        "ckpthooks.cli.main(['plugins', '--json'], standalone_mode=False)\n"
        "print('torch' in sys.modules, 'safetensors' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, timeout=120, env=subprocess_env(site_dir), check=False,
    )
    assert result.returncode == 0, result.stderr
    *listing, modules = result.stdout.strip().splitlines()
    records = {record["name"]: record for record in json.loads("\n".join(listing))}
    assert records["safetensors"] == {
        "name": "safetensors",
        "source": "entrypoint",
        "distribution": "ckpthooks-safetensors",
        "version": "0.1.0",
        "module": "ckpthooks_safetensors.plugin",
        "hooks": ["load_checkpoint", "register_checkpoint_io"],
        "active": True,
        "error": None,
    }
    assert modules == "False False"
