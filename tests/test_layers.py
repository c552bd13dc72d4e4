"""The layering of docs/architecture.md holds: the import-linter contract in pyproject.toml is kept
(``make lint`` runs it too), and no import, at module level or inside a function, closes a cycle
between ckpthooks modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="pip install -e '.[test]' installs import-linter and grimp")

REPO = Path(__file__).resolve().parent.parent


def test_the_layers_contract_is_kept() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports is not None, "lint-imports is installed with the test extra"
    done = subprocess.run([lint_imports], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_no_import_closes_a_cycle_not_even_inside_a_function() -> None:
    graph = grimp.build_graph("ckpthooks", exclude_type_checking_imports=True)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.append(f"{importer} -> {' -> '.join(back)}")
    assert cycles == []


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic import b\n")
    (package / "b.py").write_text("def later():\n    from cyclic import a\n    return a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("cyclic", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    assert graph.find_shortest_chain(importer="cyclic.b", imported="cyclic.a") == ("cyclic.b", "cyclic.a")
    assert graph.find_shortest_chain(importer="cyclic.a", imported="cyclic.b") == ("cyclic.a", "cyclic.b")


@pytest.mark.parametrize(
    "runtime",
    ["ckpthooks._checkpointer", "ckpthooks._loop_tracking", "ckpthooks._state_assembly", "ckpthooks._resolution",
     "ckpthooks._save_strategy"],
)  # fmt: skip
def test_the_runtime_imports_no_built_in_policy(runtime: str) -> None:
    graph = grimp.build_graph("ckpthooks", exclude_type_checking_imports=True)
    policies = ("ckpthooks._policies.model_checkpoint", "ckpthooks._policies.milestones", "ckpthooks._builtin.policies")
    for policy in policies:
        assert not graph.chain_exists(importer=runtime, imported=policy), graph.find_shortest_chain(
            importer=runtime, imported=policy
        )


#: The modules that may ask whether a path is local: the one value a path resolves to, the path
#: helpers it is built on, and the plugin API that re-exports them for format backends.
_DECIDES_LOCAL = {"_io/location.py", "_io/paths.py", "plugin.py"}


def _asks_whether_local(source: str) -> list[int]:
    """The lines of ``source`` that call ``is_local`` or name the local protocols."""
    import ast

    lines = []
    for node in ast.walk(ast.parse(source)):
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
        if name in {"is_local", "LOCAL_PROTOCOLS"}:
            lines.append(node.lineno)
    return lines


def test_no_module_but_location_branches_on_local_versus_remote() -> None:
    package = REPO / "ckpthooks"
    offenders = {
        str(path.relative_to(package)): lines
        for path in sorted(package.rglob("*.py"))
        if str(path.relative_to(package)) not in _DECIDES_LOCAL and (lines := _asks_whether_local(path.read_text()))
    }
    assert offenders == {}, f"ask a Location for a capability instead: {offenders}"


def test_the_local_check_finds_a_branch_on_is_local() -> None:
    assert _asks_whether_local("from x import paths\nif paths.is_local(p):\n    pass\n") == [2]
    assert _asks_whether_local("if location.renames_atomically:\n    pass\n") == []
