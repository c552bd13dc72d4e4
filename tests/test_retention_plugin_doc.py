"""The "keep one checkpoint per hour" plugin of docs/writing-a-plugin.md works as shown: the module
and its tests are taken from the page itself, so the page cannot drift from the code."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "writing-a-plugin.md"


def code_block(marker: str) -> str:
    """The code block right after ``<!-- marker -->`` on the page."""
    match = re.search(rf"<!-- {marker} -->\n```python\n(.*?)\n```", PAGE.read_text(), re.DOTALL)
    assert match, f"docs/writing-a-plugin.md has no python block after <!-- {marker} -->"
    return match.group(1) + "\n"


@pytest.fixture
def hourly_plugin(tmp_path: Path) -> Iterator[ModuleType]:
    package = tmp_path / "src" / "ckpthooks_hourly"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(code_block("retention-plugin-module"))
    sys.path.insert(0, str(package.parent))
    try:
        import ckpthooks_hourly

        yield ckpthooks_hourly
    finally:
        sys.path.remove(str(package.parent))
        sys.modules.pop("ckpthooks_hourly", None)


def doc_tests() -> dict[str, Callable[..., Any]]:
    namespace: dict[str, Any] = {}
    exec(compile(code_block("retention-plugin-test"), "docs/writing-a-plugin.md", "exec"), namespace)
    return {name: fn for name, fn in namespace.items() if name.startswith("test_")}


def test_the_plugin_module_is_about_thirty_lines() -> None:
    lines = [line for line in code_block("retention-plugin-module").splitlines() if line.strip()]
    assert len(lines) <= 32


def test_the_page_shows_two_tests(hourly_plugin: ModuleType) -> None:
    assert sorted(doc_tests()) == ["test_the_newest_checkpoint_of_each_hour_stays", "test_the_rule_keeps_one_per_hour"]


def test_the_newest_checkpoint_of_each_hour_stays_as_the_page_says(
    hourly_plugin: ModuleType, tmp_path: Path, register_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    doc_tests()["test_the_newest_checkpoint_of_each_hour_stays"](run, register_plugin, monkeypatch)


def test_the_rule_keeps_one_per_hour_as_the_page_says(hourly_plugin: ModuleType, tmp_path: Path) -> None:
    doc_tests()["test_the_rule_keeps_one_per_hour"](tmp_path)


def test_the_plugin_rule_is_a_retention_rule(hourly_plugin: ModuleType) -> None:
    from ckpthooks import RetentionRule

    assert isinstance(hourly_plugin.KeepHourly(), RetentionRule)
