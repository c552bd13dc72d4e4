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
    ["ckpthooks.checkpointer", "ckpthooks.loop_tracking", "ckpthooks.state_assembly", "ckpthooks.resolution",
     "ckpthooks.save_strategy"],
)  # fmt: skip
def test_the_runtime_imports_no_built_in_policy(runtime: str) -> None:
    graph = grimp.build_graph("ckpthooks", exclude_type_checking_imports=True)
    policies = ("ckpthooks.policies.model_checkpoint", "ckpthooks.policies.milestones", "ckpthooks._builtin.policies")
    for policy in policies:
        assert not graph.chain_exists(importer=runtime, imported=policy), graph.find_shortest_chain(
            importer=runtime, imported=policy
        )
