"""examples/ckpthooks-example-plugin, pip-installed like a user would: its entry point, its command,
and its own test suite running on the fixtures of the installed ckpthooks pytest plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "examples" / "ckpthooks-example-plugin"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(site folder with the package installed, a copy of its source tree with its tests)."""
    work = tmp_path_factory.mktemp("example-plugin")
    source = Path(shutil.copytree(PACKAGE, work / "src", ignore=shutil.ignore_patterns("build", "*.egg-info")))
    site = work / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--no-input", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    yield site, source


def env(site: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CKPTHOOKS_") and k != "PYTHONPATH"}
    return {**clean, "PYTHONPATH": str(site), "RUN_ID": "example-run-7"}


def run(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=240, env=env(site), cwd=cwd, check=False)


def test_the_installed_plugin_is_listed_with_its_distribution(installed: tuple[Path, Path]) -> None:
    site, _ = installed
    result = run(site, str(BIN / "ckpthooks"), "plugins", "--json", "--hook", "register_cli_commands")
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert (record["name"], record["distribution"], record["version"]) == ("runid", "ckpthooks-example-plugin", "0.1.0")
    pins = run(site, str(BIN / "ckpthooks"), "plugins", "--requirements").stdout.splitlines()
    assert "ckpthooks-example-plugin==0.1.0" in pins


def test_a_training_script_carries_the_run_id_and_the_command_reads_it(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    site, _ = installed
    script = PACKAGE.parents[0] / "plain_loop.py"
    trained = run(site, sys.executable, str(script), "--root", str(tmp_path), "--epochs", "1")
    assert trained.returncode == 0, trained.stderr
    last = tmp_path / "checkpoints" / "last.ckpt"
    result = run(site, str(BIN / "ckpthooks"), "runid", str(last))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "example-run-7"
    report = json.loads(run(site, str(BIN / "ckpthooks"), "inspect", str(last), "--json").stdout)
    assert report["written_by"]["plugins"]["runid"] == "0.1.0"
    assert "ckpthooks.components.run_id" in {c["name"] for c in report["components"]}


def test_the_plugins_own_tests_pass_with_the_installed_pytest_plugin(installed: tuple[Path, Path]) -> None:
    site, source = installed
    result = run(site, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=source)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout
