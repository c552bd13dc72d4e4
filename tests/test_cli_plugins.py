"""``ckpthooks plugins --hook / --requirements``, and commands that plugins add through register_cli_commands."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import pytest

import ckpthooks
from ckpthooks import _plugin_host as plugin_host_module
from ckpthooks import hookimpl
from ckpthooks._cli.plugins import _requirements
from ckpthooks._plugin_host import BUILTIN_PLUGINS, PluginHost, PluginInfo, set_plugin_host
from ckpthooks.cli import main
from ckpthooks.exceptions import PluginError
from tests.cli_helpers import run_cli, run_json

BUILTINS = [name for name, _ in BUILTIN_PLUGINS]


@pytest.fixture(autouse=True)
def _fresh_command_list(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for variable in ("CKPTHOOKS_STRICT_PLUGINS", "CKPTHOOKS_PLUGINS_ALLOW", "CKPTHOOKS_PLUGINS_BLOCK",
                     "CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD"):  # fmt: skip
        monkeypatch.delenv(variable, raising=False)
    main.reset_plugin_commands()  # type: ignore[attr-defined]
    yield
    main.reset_plugin_commands()  # type: ignore[attr-defined]


@click.command("hello")
@click.argument("name", default="world")
def hello(name: str) -> None:
    """Say hello (a plugin's command)."""
    click.echo(f"hello {name}")


class HelloPlugin:
    @hookimpl
    def register_cli_commands(self) -> list[click.Command]:
        return [hello]


class BrokenCommandsPlugin:
    @hookimpl
    def register_cli_commands(self) -> list[click.Command]:
        raise RuntimeError("the plugin's command module is broken")


class NotCommandsPlugin:
    @hookimpl
    def register_cli_commands(self) -> Any:
        return ["hello"]


class ShadowingPlugin:
    @hookimpl
    def register_cli_commands(self) -> list[click.Command]:
        @click.command("ls")
        def fake_ls() -> None:
            click.echo("not the real ls")

        return [fake_ls]


# --------------------------------------------------------------------------- --hook and --requirements


def test_hook_option_lists_only_plugins_implementing_it() -> None:
    records = run_json("plugins", "--hook", "save_checkpoint")
    assert [r["name"] for r in records] == ["builtin-storage"]
    assert all("save_checkpoint" in r["hooks"] for r in records)
    table = run_cli("plugins", "--hook", "register_policies")
    assert table.exit_code == 0
    assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == [
        r["name"] for r in run_json("plugins") if "register_policies" in r["hooks"]
    ]


def test_hook_option_with_an_unknown_hook_is_a_usage_error() -> None:
    result = run_cli("plugins", "--hook", "save_checkpiont")
    assert result.exit_code == 2
    assert "no hook named 'save_checkpiont'" in result.stderr and "save_checkpoint" in result.stderr


def test_requirements_pin_ckpthooks_and_torch_first() -> None:
    result = run_cli("plugins", "--requirements")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    public_torch = metadata.version("torch").partition("+")[0]
    assert lines[:2] == [f"ckpthooks=={ckpthooks.__version__}", f"torch=={public_torch}"]
    assert run_json("plugins", "--requirements")[:2] == lines[:2]


def test_requirements_pin_the_distributions_of_active_entry_point_plugins() -> None:
    infos = [
        PluginInfo("builtin-state", "builtin", "ckpthooks", ckpthooks.__version__),
        PluginInfo("runid", "entrypoint", "ckpthooks-runid", "0.1.0"),
        PluginInfo("runid-extra", "entrypoint", "ckpthooks-runid", "0.1.0"),  # one pin per distribution
        PluginInfo("alpha", "entrypoint", "ckpthooks-alpha", "2.0"),
        PluginInfo("broken", "entrypoint", "ckpthooks-broken", "0.0.1", error="ImportError: x"),
        PluginInfo("local", "entrypoint", None, None, module="local_plugin"),
        PluginInfo("mine", "manual", None, None),
    ]
    lines = [line for line in _requirements(infos) if "local build" not in line]
    assert lines[0] == f"ckpthooks=={ckpthooks.__version__}" and lines[1].startswith("torch==")
    assert lines[2:] == [
        "ckpthooks-alpha==2.0",
        "ckpthooks-runid==0.1.0",
        "# plugin 'local' (local_plugin): its distribution is unknown",
    ]


def test_a_local_version_is_pinned_as_its_public_version_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch==2.13.0+cpu`` is a version no index serves by that name: ``pip install -r`` failed."""
    from packaging.requirements import Requirement

    import ckpthooks._cli.plugins as plugins_cli

    real = plugins_cli.metadata.version
    monkeypatch.setattr(plugins_cli.metadata, "version", lambda name: "2.13.0+cpu" if name == "torch" else real(name))
    lines = _requirements([PluginInfo("gpu-io", "entrypoint", "ckpthooks-gpu-io", "1.0+cu121")])
    pins = [Requirement(line) for line in lines if not line.startswith("#")]
    assert [str(p) for p in pins] == [f"ckpthooks=={ckpthooks.__version__}", "torch==2.13.0", "ckpthooks-gpu-io==1.0"]
    assert all("+" not in str(p.specifier) for p in pins)
    hints = [line for line in lines if line.startswith("#")]
    assert any("torch 2.13.0+cpu is a local build" in h and "download.pytorch.org/whl/cpu" in h for h in hints)


def test_requirements_do_not_import_torch() -> None:
    code = """
        import json, sys
        from ckpthooks.cli import main
        main(["plugins", "--requirements"], standalone_mode=False)
        print(json.dumps({"torch": "torch" in sys.modules}))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"torch": False}


# --------------------------------------------------------------------------- plugin commands


def test_a_plugin_command_runs_and_is_listed_in_help(register_plugin: Callable[..., str]) -> None:
    register_plugin(HelloPlugin(), name="hello-plugin")
    result = run_cli("hello", "you")
    assert result.exit_code == 0, result.output
    assert result.stdout == "hello you\n"
    help_text = run_cli("--help").stdout
    assert "hello" in help_text and "Say hello" in help_text


def test_built_in_commands_do_not_load_plugin_commands(register_plugin: Callable[..., str]) -> None:
    calls: list[str] = []

    class Counting:
        @hookimpl
        def register_cli_commands(self) -> list[click.Command]:
            calls.append("called")
            return [hello]

    register_plugin(Counting(), name="counting")
    assert run_cli("plugins", "--json").exit_code == 0
    assert calls == []
    assert run_cli("hello").exit_code == 0
    assert run_cli("hello").exit_code == 0 and calls == ["called"]  # loaded once per process


def test_a_broken_plugin_is_reported_and_the_other_commands_still_work(register_plugin: Callable[..., str]) -> None:
    register_plugin(BrokenCommandsPlugin(), name="broken-commands")
    register_plugin(HelloPlugin(), name="hello-plugin")
    result = run_cli("hello")
    assert result.exit_code == 0 and result.stdout == "hello world\n"
    assert "warning: plugin 'broken-commands': its commands are left out" in result.stderr
    assert "RuntimeError: the plugin's command module is broken" in result.stderr


def test_a_plugin_returning_something_else_is_reported(register_plugin: Callable[..., str]) -> None:
    register_plugin(NotCommandsPlugin(), name="not-commands")
    result = run_cli("--help")
    assert result.exit_code == 0
    assert "plugin 'not-commands'" in result.stderr and "click.Command" in result.stderr


def test_a_built_in_command_wins_over_a_plugin_command_of_the_same_name(
    register_plugin: Callable[..., str], tmp_path: Path
) -> None:
    register_plugin(ShadowingPlugin(), name="shadow")
    result = run_cli("--help")
    assert "command 'ls' is built in" in result.stderr
    assert "not the real ls" not in run_cli("ls", str(tmp_path)).output


def test_two_plugins_contributing_the_same_command_name(register_plugin: Callable[..., str]) -> None:
    register_plugin(HelloPlugin(), name="a-hello")
    register_plugin(HelloPlugin(), name="b-hello")
    result = run_cli("hello")
    assert result.exit_code == 0  # the first plugin in plugin order keeps it
    assert "plugin 'b-hello'" in result.stderr and "'a-hello'" in result.stderr


def test_strict_mode_makes_a_broken_plugin_command_an_error() -> None:
    host = PluginHost(load_entry_points=False, strict=True)
    host.register(BrokenCommandsPlugin(), name="broken-commands")
    with pytest.raises(PluginError, match="broken-commands"):
        host.cli_commands()


def test_an_unknown_command_is_still_a_usage_error(register_plugin: Callable[..., str]) -> None:
    register_plugin(HelloPlugin(), name="hello-plugin")
    result = run_cli("goodbye")
    assert result.exit_code == 2 and "No such command" in result.output


def test_an_entry_point_that_fails_to_load_is_one_warning_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ckh_cli_cmd_broken.py").write_text("raise ImportError('missing_dependency_xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    real = metadata.entry_points

    def fake(**params: Any) -> Any:
        if params.get("group") == "ckpthooks":
            return [metadata.EntryPoint("broken", "ckh_cli_cmd_broken", "ckpthooks")]
        return real(**params)

    monkeypatch.setattr(plugin_host_module.metadata, "entry_points", fake)
    previous = set_plugin_host(None)  # the CLI builds the shared host with entry points
    try:
        result = run_cli("--help")
    finally:
        set_plugin_host(previous)
        sys.modules.pop("ckh_cli_cmd_broken", None)
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'broken' failed to load" in warnings[0] and "missing_dependency_xyz" in warnings[0]
    assert "Traceback" not in result.output and "PluginLoadWarning" not in result.output


def test_every_built_in_command_has_help_and_json() -> None:
    for name in ("plugins", "inspect", "ls", "verify", "prune", "convert", "copy"):
        result = run_cli(name, "--help")
        assert result.exit_code == 0, name
        assert "--json" in result.output and "Exit codes:" in result.output, name
    top = run_cli("--help").stdout
    assert all(name in top for name in ("inspect", "ls", "prune", "convert", "copy")) and BUILTINS
