"""The ``ckpthooks`` command line: ``plugins`` as a table and as JSON, strict mode, help, version."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import ckpthooks
from ckpthooks import _plugin_host as plugin_host_module
from ckpthooks.cli import main

BUILTINS = ["builtin-state", "builtin-policies", "builtin-storage", "builtin-lightning"]
JSON_KEYS = {"name", "version", "distribution", "source", "module", "hooks", "active", "error"}

GOOD_PLUGIN = """
from ckpthooks import hookimpl

@hookimpl
def on_save_checkpoint(checkpoint):
    checkpoint["cli_good"] = True

@hookimpl
def on_load_checkpoint(checkpoint):
    pass
"""
BROKEN_PLUGIN = """
raise ImportError("ckh_cli_missing_dependency is not installed")
"""
SOURCES = {"good": ("ckh_cli_good", GOOD_PLUGIN), "broken": ("ckh_cli_broken", BROKEN_PLUGIN)}


@pytest.fixture(autouse=True)
def _clean_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (
        "CKPTHOOKS_STRICT_PLUGINS",
        "CKPTHOOKS_PLUGINS_ALLOW",
        "CKPTHOOKS_PLUGINS_BLOCK",
        "CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD",
    ):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """``entry_points("good", "broken")``: the ckpthooks group holds exactly these entry points."""
    folder = tmp_path / "cli_plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    real_entry_points = metadata.entry_points

    def install(*names: str) -> None:
        eps = []
        for name in names:
            module, source = SOURCES[name]
            (folder / f"{module}.py").write_text(textwrap.dedent(source))
            eps.append(metadata.EntryPoint(name, module, "ckpthooks"))
        importlib.invalidate_caches()

        def fake(**params: Any) -> Any:
            if params.get("group") == "ckpthooks":
                return list(eps)
            return real_entry_points(**params)

        monkeypatch.setattr(plugin_host_module.metadata, "entry_points", fake)

    yield install
    for module, _ in SOURCES.values():
        sys.modules.pop(module, None)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_plugins_prints_a_table_of_the_builtin_plugins(
    runner: CliRunner, entry_points: Callable[..., None]
) -> None:
    entry_points()
    result = runner.invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split() == ["name", "version", "distribution", "source", "hooks", "status"]
    assert [row.split()[0] for row in rows] == BUILTINS
    for row in rows:
        assert row.split()[1:4] == [ckpthooks.__version__, "ckpthooks", "builtin"]
        assert row.endswith("ok")
    assert "load_checkpoint, register_checkpoint_io, remove_checkpoint, save_checkpoint" in rows[2]


def test_plugins_json_is_a_list_of_records(runner: CliRunner, entry_points: Callable[..., None]) -> None:
    entry_points("good")
    result = runner.invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert isinstance(records, list)
    assert [r["name"] for r in records] == [*BUILTINS, "good"]
    for record in records:
        assert set(record) == JSON_KEYS
    assert records[0] == {
        "name": "builtin-state",
        "version": ckpthooks.__version__,
        "distribution": "ckpthooks",
        "source": "builtin",
        "module": "ckpthooks._builtin.state",
        "hooks": ["register_state_components"],
        "active": True,
        "error": None,
    }
    assert records[-1] == {
        "name": "good",
        "version": None,
        "distribution": None,
        "source": "entrypoint",
        "module": "ckh_cli_good",
        "hooks": ["on_load_checkpoint", "on_save_checkpoint"],
        "active": True,
        "error": None,
    }


def test_plugins_lists_a_broken_plugin_with_its_error_and_exits_0(
    runner: CliRunner, entry_points: Callable[..., None]
) -> None:
    entry_points("good", "broken")
    result = runner.invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    by_name = {record["name"]: record for record in json.loads(result.output)}
    assert by_name["good"]["active"] is True
    broken = by_name["broken"]
    assert broken["active"] is False
    assert broken["error"] == "ImportError: ckh_cli_missing_dependency is not installed"
    assert broken["hooks"] == []
    assert broken["module"] == "ckh_cli_broken"


def test_plugins_table_shows_a_failure_on_its_own_row(
    runner: CliRunner, entry_points: Callable[..., None]
) -> None:
    entry_points("good", "broken")
    result = runner.invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    rows = result.output.splitlines()
    assert len(rows) == 1 + len(BUILTINS) + 2
    assert rows[-1].startswith("broken")
    assert rows[-1].endswith("FAILED: ImportError: ckh_cli_missing_dependency is not installed")
    assert "PluginLoadWarning" not in result.output  # the table is the report


def test_plugins_in_strict_mode_exits_1_naming_the_broken_plugin(
    runner: CliRunner, entry_points: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_points("good", "broken")
    monkeypatch.setenv("CKPTHOOKS_STRICT_PLUGINS", "1")
    result = runner.invoke(main, ["plugins", "--json"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error: plugin 'broken' failed to load" in result.stderr
    assert "ckh_cli_missing_dependency" in result.stderr


def test_plugins_in_strict_mode_without_failures_exits_0(
    runner: CliRunner, entry_points: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_points("good")
    monkeypatch.setenv("CKPTHOOKS_STRICT_PLUGINS", "1")
    result = runner.invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.stdout)] == [*BUILTINS, "good"]


def test_plugins_honours_the_block_list(
    runner: CliRunner, entry_points: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_points("good", "broken")
    monkeypatch.setenv("CKPTHOOKS_PLUGINS_BLOCK", "broken,builtin-policies")
    result = runner.invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.output)] == [
        "builtin-state", "builtin-storage", "builtin-lightning", "good"
    ]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_group_help_lists_the_plugins_command(runner: CliRunner, flag: str) -> None:
    result = runner.invoke(main, [flag])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    assert "plugins" in result.output
    assert "Checkpointing for plain PyTorch training loops" in result.output


def test_plugins_help_documents_json_and_strict_mode(runner: CliRunner) -> None:
    result = runner.invoke(main, ["plugins", "--help"])
    assert result.exit_code == 0
    assert "--json" in result.output
    assert "CKPTHOOKS_STRICT_PLUGINS" in result.output


def test_version_prints_the_package_version(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"ckpthooks, version {ckpthooks.__version__}"


def test_unknown_command_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output
