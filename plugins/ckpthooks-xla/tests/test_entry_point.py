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
HOOKS = ["distributed_context", "on_save_checkpoint", "register_checkpoint_io"]


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The plugin pip-installed (without dependencies) into a fresh folder, first on sys.path."""
    site = pip_install_target([PACKAGE_ROOT], tmp_path_factory.mktemp("xla-plugin"))
    with on_sys_path(site):
        yield site


@pytest.fixture(autouse=True)
def _clean_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in PLUGIN_ENV_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def test_the_installed_files_include_the_typing_marker_and_the_entry_point(site_dir: Path) -> None:
    assert (site_dir / "ckpthooks_xla" / "py.typed").exists()
    [dist_info] = site_dir.glob("ckpthooks_xla-*.dist-info")
    assert "[ckpthooks]\nxla = ckpthooks_xla.plugin" in (dist_info / "entry_points.txt").read_text()
    metadata = (dist_info / "METADATA").read_text()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires == ["Requires-Dist: ckpthooks<0.2,>=0.1.0.dev0"]  # torch_xla is the user's to install


def test_the_plugin_host_finds_the_plugin_through_its_entry_point(site_dir: Path) -> None:
    host = PluginHost()
    info = {info.name: info for info in host.plugins()}["xla"]
    assert info.source == "entrypoint"
    assert info.distribution == "ckpthooks-xla"
    assert info.version == "0.1.0"
    assert info.module == "ckpthooks_xla.plugin"
    assert list(info.hooks) == HOOKS
    assert info.active
    names = {spec.name for _, spec in host.checkpoint_io_specs()}
    assert {"torch", "xla"} <= names


def test_the_cli_lists_the_plugin_without_importing_torch_or_torch_xla(site_dir: Path) -> None:
    code = (
        "import sys, ckpthooks.cli\n"
        "ckpthooks.cli.main(['plugins', '--json'], standalone_mode=False)\n"
        "print('torch' in sys.modules, 'torch_xla' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, timeout=120, env=subprocess_env(site_dir), check=False,
    )
    assert result.returncode == 0, result.stderr
    *listing, modules = result.stdout.strip().splitlines()
    records = {record["name"]: record for record in json.loads("\n".join(listing))}
    assert records["xla"]["active"] is True
    assert records["xla"]["distribution"] == "ckpthooks-xla"
    assert records["xla"]["hooks"] == HOOKS
    assert modules == "False False"


def test_a_plain_cpu_run_with_the_plugin_installed_saves_as_before(site_dir: Path, tmp_path: Path) -> None:
    code = f"""
import sys, torch
from ckpthooks import Checkpointer
ckpt = Checkpointer({str(tmp_path)!r}, enable_checkpointing=False, save_rng_state=False)
ckpt.track(model=torch.nn.Linear(2, 2)).save_checkpoint({str(tmp_path / "a.ckpt")!r})
print(type(ckpt.host.checkpoint_io_for({str(tmp_path / "a.ckpt")!r})).__name__, ckpt.host.distributed_context(),
      'torch_xla' in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, timeout=120, env=subprocess_env(site_dir), check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["TorchCheckpointIO", "None", "False"]
