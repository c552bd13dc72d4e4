"""Testing a plugin distribution the way users get it: pip-installed, found through its entry point.

::

    @pytest.fixture(scope="module")
    def site_dir(tmp_path_factory):
        site = pip_install_target([PACKAGE_ROOT], tmp_path_factory.mktemp("plugin"))
        with on_sys_path(site, "my_plugin_module"):
            yield site

A child process sees the installed copy (not the source tree) with ``env=subprocess_env(site)``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

#: The environment variables that change which plugins the plugin host loads.
PLUGIN_ENV_VARIABLES = (
    "CKPTHOOKS_STRICT_PLUGINS",
    "CKPTHOOKS_PLUGINS_ALLOW",
    "CKPTHOOKS_PLUGINS_BLOCK",
    "CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD",
)
_NOT_COPIED = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache", "tests")


def pip_install_target(sources: Sequence[Path], work: Path) -> Path:
    """pip-install the distributions in ``sources`` (without their dependencies) into
    ``work / "site"`` and return that folder. Each is built from a copy in ``work`` (setuptools
    leaves ``build/`` and ``*.egg-info`` in the folder it builds), without its tests."""
    copies = [str(shutil.copytree(source, work / Path(source).name, ignore=_NOT_COPIED)) for source in sources]
    target = work / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--no-input", "--target", str(target), *copies],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"pip install failed:\n{result.stdout}\n{result.stderr}")
    return target


@contextlib.contextmanager
def on_sys_path(folder: Path, *modules: str) -> Iterator[Path]:
    """``folder`` first on ``sys.path`` for the block; afterwards ``modules`` are forgotten, so
    that nothing imported from ``folder`` outlives it."""
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        for module in modules:
            sys.modules.pop(module, None)
        importlib.invalidate_caches()


def subprocess_env(site: Path, **extra: str) -> dict[str, str]:
    """This process's environment for a child that imports from ``site`` first, without the
    plugin-selection variables (``extra`` sets variables on top)."""
    env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env.update(extra)
    return env
