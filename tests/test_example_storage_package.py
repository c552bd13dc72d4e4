"""examples/ckpthooks-example-storage, pip-installed like a user would: a storage package for a
new URL scheme (sqlblob://, files as rows of a SQLite database) registered only through fsspec's
entry point. Its own tests (the ckpthooks storage contract, and a run that is killed, resumed from
"last" and "best", pruned, and handled by `ckpthooks ls/verify/copy/prune`) run against the
installed package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "examples" / "ckpthooks-example-storage"
REPO = PACKAGE.parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(site folder with the package installed, a copy of its source tree with its tests)."""
    work = tmp_path_factory.mktemp("example-storage")
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
    return {**clean, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def test_without_the_package_the_scheme_is_unknown() -> None:
    import fsspec

    with pytest.raises(ValueError, match="sqlblob"):
        fsspec.get_filesystem_class("sqlblob")


def test_the_packages_own_tests_pass_against_the_installed_package(installed: tuple[Path, Path]) -> None:
    site, source = installed
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")],
        capture_output=True, text=True, timeout=600, env=env(site), cwd=source, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in done.stdout and "failed" not in done.stdout
    summary = done.stdout.strip().splitlines()[-1]
    assert int(summary.split(" passed")[0].split()[-1]) >= 25, summary  # every test ran, none skipped wholesale


# tests/test_plugin_api.py checks this package too: it imports only ckpthooks, ckpthooks.plugin and
# ckpthooks.testing, and pins a ckpthooks range that admits this version.
