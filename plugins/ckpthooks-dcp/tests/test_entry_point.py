"""The distribution, pip-installed into a fresh folder, is found through its ``ckpthooks`` entry point."""

from __future__ import annotations

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
    site = pip_install_target([PACKAGE_ROOT], tmp_path_factory.mktemp("dcp-plugin"))
    with on_sys_path(site):
        yield site


@pytest.fixture(autouse=True)
def _clean_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in PLUGIN_ENV_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def test_the_installed_files_include_the_typing_marker_and_the_entry_point(site_dir: Path) -> None:
    assert (site_dir / "ckpthooks_dcp" / "py.typed").exists()
    [dist_info] = site_dir.glob("ckpthooks_dcp-*.dist-info")
    entry_points = (dist_info / "entry_points.txt").read_text()
    assert "[ckpthooks]\ndcp = ckpthooks_dcp.plugin" in entry_points


def test_the_plugin_host_finds_the_plugin_and_it_changes_no_default(site_dir: Path) -> None:
    host = PluginHost()
    info = {info.name: info for info in host.plugins()}["dcp"]
    assert (info.source, info.distribution, info.version) == ("entrypoint", "ckpthooks-dcp", "0.1.0")
    assert info.module == "ckpthooks_dcp.plugin"
    assert info.hooks == ("load_checkpoint", "register_checkpoint_io")
    assert info.active
    assert type(host.checkpoint_io_for("/tmp/x.ckpt")).__name__ == "TorchCheckpointIO"


def test_listing_plugins_imports_no_torch(site_dir: Path) -> None:
    code = (
        "import sys\n"
        "from ckpthooks.plugin import PluginHost\n"
        "names = [info.name for info in PluginHost().plugins()]\n"
        "print('dcp' in names, 'torch' in sys.modules)\n"
    )
    env = subprocess_env(site_dir)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True False"
