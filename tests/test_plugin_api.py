"""The declared plugin API: ``ckpthooks.plugin``, what plugin packages may import, and their pins."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import ckpthooks
import ckpthooks.plugin

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FOLDERS = (ROOT / "plugins", ROOT / "examples")
PLUGIN_PACKAGES = sorted(path.parent for folder in PACKAGE_FOLDERS for path in folder.glob("*/pyproject.toml"))
ALLOWED_MODULES = ("ckpthooks", "ckpthooks.plugin", "ckpthooks.testing")


def _allowed_module(module: str) -> bool:
    return module in ALLOWED_MODULES or module.startswith("ckpthooks.testing.")


def forbidden_imports(source: str, filename: str) -> list[str]:
    """``file:line: what`` for every import of ckpthooks other than the public modules, anywhere in
    the file (module level, in functions, under ``if TYPE_CHECKING:``)."""
    problems: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ckpthooks" and not _allowed_module(alias.name):
                    problems.append(f"{filename}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            if node.module.split(".")[0] != "ckpthooks":
                continue
            if not _allowed_module(node.module):
                problems.append(f"{filename}:{node.lineno}: from {node.module} import ...")
            elif node.module == "ckpthooks":
                # `from ckpthooks import io` reaches an internal module through the package
                for alias in node.names:
                    if alias.name not in ckpthooks.__all__ and alias.name not in {"plugin", "testing"}:
                        problems.append(f"{filename}:{node.lineno}: from ckpthooks import {alias.name}")
    return problems


def python_files() -> list[Path]:
    return sorted(
        path
        for folder in PACKAGE_FOLDERS
        for path in folder.rglob("*.py")
        if not {".venv", "build", "__pycache__"} & set(path.parts)
    )


def test_plugins_and_examples_import_only_ckpthooks_ckpthooks_plugin_and_ckpthooks_testing() -> None:
    files = python_files()
    assert len(files) > 30  # the plugin packages, the example plugin and the example scripts
    problems = [
        problem for path in files for problem in forbidden_imports(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not problems, "internal ckpthooks imports (use ckpthooks.plugin instead):\n" + "\n".join(problems)


def test_the_import_check_finds_imports_in_functions_type_checking_blocks_and_through_the_package() -> None:
    source = textwrap.dedent(
        """
        from typing import TYPE_CHECKING
        import ckpthooks
        import ckpthooks.plugin
        import ckpthooks.testing.faults
        from ckpthooks import Checkpointer, hookimpl
        from ckpthooks.plugin import write_durably
        from ckpthooks.testing.storage_contract import CheckpointIOContract
        import ckpthooks._io.paths
        from ckpthooks import _distributed as distributed

        if TYPE_CHECKING:
            from ckpthooks._io.base import CheckpointIO

        def f():
            from ckpthooks._io.durable import fsync_dir
            import ckpthooks._manifest as m
        """
    )
    assert forbidden_imports(source, "x.py") == [
        "x.py:9: import ckpthooks._io.paths",
        "x.py:10: from ckpthooks import _distributed",
        "x.py:13: from ckpthooks._io.base import ...",
        "x.py:16: from ckpthooks._io.durable import ...",
        "x.py:17: import ckpthooks._manifest",
    ]


def test_every_name_in_the_plugin_api_exists_and_is_documented() -> None:
    assert len(set(ckpthooks.plugin.__all__)) == len(ckpthooks.plugin.__all__)
    assert sorted(ckpthooks.plugin.__all__) == sorted(ckpthooks.plugin.DOCUMENTATION)
    for name in ckpthooks.plugin.__all__:
        assert getattr(ckpthooks.plugin, name) is not None, name
        module, _, line = ckpthooks.plugin.DOCUMENTATION[name]
        assert line.strip() and line.endswith("."), name
        assert module != "ckpthooks.plugin", name


def test_the_plugin_api_holds_what_the_issue_names() -> None:
    needed = {
        "write_durably", "atomic_write", "fsync_dir", "temp_name_for",  # durable writes, temporaries
        "filesystem", "is_local", "local_path", "protocol_of",  # locations
        "new_hasher", "hash_local_file", "hash_local_folder",  # hashing
        "restoring_checkpointer",
        "DistributedContext", "broadcast_object", "all_gather_object", "barrier", "agree_on_outcome",
        "translate_load_error", "check_weights_only_safe", "storage_error",
        "CheckpointIO", "CheckpointIOSpec", "SaveResult", "hookimpl", "PluginHost",
    }  # fmt: skip
    assert needed <= set(ckpthooks.plugin.__all__)


def test_an_unknown_plugin_api_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match=r"'ckpthooks\.plugin' has no attribute 'paths'"):
        ckpthooks.plugin.paths  # noqa: B018


def test_import_ckpthooks_plugin_imports_no_torch_and_builds_no_plugin_host() -> None:
    code = """
        import json, sys
        import ckpthooks.plugin as api
        api.hookimpl
        api.__all__
        print(json.dumps({
            "torch": "torch" in sys.modules,
            "plugin_host": "ckpthooks._plugin_host" in sys.modules,
            "builtins": sorted(m for m in sys.modules if m.startswith("ckpthooks._builtin")),
        }))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"torch": False, "plugin_host": False, "builtins": []}


# --------------------------------------------------------------------------- version pins


def ckpthooks_requirement(package: Path) -> Requirement:
    text = (package / "pyproject.toml").read_text()
    block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.M | re.S)
    assert block is not None, f"{package.name}: no dependencies list"
    for item in re.findall(r'"([^"]+)"', block.group(1)):
        requirement = Requirement(item)
        if requirement.name == "ckpthooks":
            return requirement
    raise AssertionError(f"{package.name} does not depend on ckpthooks")


@pytest.mark.parametrize("package", PLUGIN_PACKAGES, ids=lambda p: p.name)
def test_each_plugin_package_pins_a_ckpthooks_range_that_admits_this_version(package: Path) -> None:
    requirement = ckpthooks_requirement(package)
    current = Version(ckpthooks.__version__)
    assert requirement.specifier.contains(current, prereleases=True), (package.name, str(requirement))
    # an upper bound below the next minor release: the plugin API may change between minors
    next_minor = Version(f"{current.major}.{current.minor + 1}")
    assert not requirement.specifier.contains(next_minor, prereleases=True), (package.name, str(requirement))
    assert any(spec.operator in {">=", "~=", "=="} for spec in requirement.specifier), str(requirement)


def test_the_plugin_packages_are_all_checked() -> None:
    assert {p.name for p in PLUGIN_PACKAGES} >= {
        "ckpthooks-safetensors",
        "ckpthooks-dcp",
        "ckpthooks-xla",
        "ckpthooks-example-plugin",
    }


#: The modules a user or a plugin author imports by name; every other module is internal and says
#: so with a leading underscore somewhere in its dotted name.
PUBLIC_MODULES = {
    "ckpthooks",
    "ckpthooks.cli",
    "ckpthooks.exceptions",
    "ckpthooks.hookspecs",
    "ckpthooks.interop",
    "ckpthooks.interop.lightning_callback",
    "ckpthooks.plugin",
    "ckpthooks.testing",
    "ckpthooks.testing.faults",
    "ckpthooks.testing.packaging",
    "ckpthooks.testing.storage_contract",
}


def test_internal_modules_are_private_by_name() -> None:
    import pkgutil

    import ckpthooks

    modules = {"ckpthooks"} | {
        info.name for info in pkgutil.walk_packages(ckpthooks.__path__, "ckpthooks.", onerror=lambda _name: None)
    }
    public = {name for name in modules if not any(part.startswith("_") for part in name.split("."))}
    assert public == PUBLIC_MODULES
