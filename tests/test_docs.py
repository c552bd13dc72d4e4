"""The documentation keeps up with the code: every hook, every option, every command.

The hook reference (``hooks-reference.md``) is generated from ``ckpthooks.hookspecs`` at build time
by ``docs/_gen_hooks.py`` and never stored, so it cannot go stale; these tests check what the
generator needs (a docstring per hook) and what it cannot write (the hand-written guide's section
per hook). Building the whole site (``make docs``) is left to CI's docs job: it needs mkdocs.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ckpthooks import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_gen_hooks", DOCS / "_gen_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOKS = sorted(generator().hook_specs())


def test_the_generator_finds_every_hook_of_the_specification() -> None:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    declared = {name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, marker)}
    assert set(HOOKS) == declared and "register_cli_commands" in HOOKS


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_has_a_docstring(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert len(doc) > 80, f"hook {name} needs a docstring: the hook reference is generated from it"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_has_a_section_in_the_hook_guide(name: str) -> None:
    headings = re.findall(r"^## `([^`]+)`", (DOCS / "hooks.md").read_text(), re.MULTILINE)
    assert name in headings, f"docs/hooks.md has no '## `{name}`' section: document the new hook there"


def test_the_generated_reference_has_a_section_per_hook_and_no_rst_left() -> None:
    page = generator().render()
    for name in HOOKS:
        assert f"## `{name}`" in page
        assert f"def {name}(" in page
    assert ":class:" not in page and ":func:" not in page and "``" not in page.replace("```", "")


def test_the_generated_reference_lists_every_name_of_the_plugin_api() -> None:
    import ckpthooks.plugin

    page = generator().render()
    assert "## The plugin API: `ckpthooks.plugin`" in page
    for name in ckpthooks.plugin.__all__:
        line = ckpthooks.plugin.DOCUMENTATION[name][2]
        assert f"| `ckpthooks.plugin.{name}` | {line.replace('|', chr(92) + '|')} |" in page, name


def test_the_generated_reference_is_never_stored() -> None:
    assert not (DOCS / "hooks-reference.md").exists(), "hooks-reference.md is generated at build time"


def test_every_page_is_in_the_nav_and_every_nav_page_exists_or_is_pending() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    nav = set(re.findall(r":\s*([\w-]+\.md)\s*$", config, re.MULTILINE))
    pages = {path.name for path in DOCS.glob("*.md")}
    generated = {"hooks-reference.md"} | set(generator().PENDING)
    assert pages - nav == set(), "pages missing from the nav in mkdocs.yml"
    assert nav - pages - generated == set(), "nav entries without a page"


def test_the_changelog_page_includes_the_changelog() -> None:
    assert '--8<-- "CHANGELOG.md"' in (DOCS / "changelog.md").read_text()


def parameters(cls: type) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]


def test_every_checkpointer_option_is_in_the_getting_started_table() -> None:
    from ckpthooks import Checkpointer

    text = (DOCS / "getting-started.md").read_text()
    missing = [name for name in parameters(Checkpointer) if f"| `{name}` |" not in text]
    assert missing == [], f"Checkpointer options without a row in docs/getting-started.md: {missing}"


def test_every_model_checkpoint_option_is_in_its_table() -> None:
    from ckpthooks import ModelCheckpoint

    text = (DOCS / "model-checkpoint.md").read_text()
    missing = [name for name in parameters(ModelCheckpoint) if f"| `{name}` |" not in text]
    assert missing == [], f"ModelCheckpoint options without a row in docs/model-checkpoint.md: {missing}"


def test_every_command_has_a_section_in_the_cli_reference() -> None:
    from ckpthooks.cli import main

    text = (DOCS / "cli.md").read_text()
    for name in main.commands:
        assert f"## `ckpthooks {name}`" in text, f"docs/cli.md has no section for ckpthooks {name}"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mkdocs") is None and importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install -e '.[docs]')")  # fmt: skip
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs-material is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "hooks-reference.html").exists()
