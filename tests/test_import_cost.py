"""`import ckpthooks` and `ckpthooks plugins` stay cheap: no torch, no plugin host, no plugin loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CKPTHOOKS_")}


def test_import_ckpthooks_imports_no_torch_and_builds_no_plugin_host() -> None:
    result = run_python(
        """
        import json, sys
        import ckpthooks
        ckpthooks.hookimpl
        ckpthooks.__version__
        ckpthooks.CheckpointError
        loaded = {
            "torch": "torch" in sys.modules,
            "plugin_host": "ckpthooks._plugin_host" in sys.modules,
            "builtins": sorted(m for m in sys.modules if m.startswith("ckpthooks._builtin.")),
        }
        import ckpthooks._plugin_host as plugin_host
        loaded["host"] = plugin_host._host is not None
        loaded["torch_after_plugin_host"] = "torch" in sys.modules
        print(json.dumps(loaded))
        """,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "torch": False,
        "plugin_host": False,
        "builtins": [],
        "host": False,
        "torch_after_plugin_host": False,
    }


def test_lazy_public_names_resolve_without_building_the_host() -> None:
    result = run_python(
        """
        import json, sys
        import ckpthooks
        ckpthooks.PluginHost, ckpthooks.get_plugin_host, ckpthooks.CheckpointIOSpec, ckpthooks.Callback
        import ckpthooks._plugin_host as plugin_host
        print(json.dumps({"torch": "torch" in sys.modules, "host": plugin_host._host is not None}))
        """,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"torch": False, "host": False}


def test_unknown_attribute_is_an_attribute_error() -> None:
    import ckpthooks

    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        ckpthooks.NoSuchThing  # noqa: B018


def test_listing_plugins_imports_no_torch() -> None:
    result = run_python(
        """
        import json, sys
        import ckpthooks.cli
        ckpthooks.cli.main(["plugins", "--json"], standalone_mode=False)
        print(json.dumps({"torch": "torch" in sys.modules}))
        """,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    *listing, last = result.stdout.strip().splitlines()
    assert json.loads(last) == {"torch": False}
    names = [record["name"] for record in json.loads("\n".join(listing))]
    assert names[:3] == ["builtin-state", "builtin-policies", "builtin-storage"]


def test_console_script_lists_plugins_without_importing_torch() -> None:
    script = BIN / "ckpthooks"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ckpthooks.cli"]
    env = clean_env() | {"PYTHONPROFILEIMPORTTIME": "1"}  # every import is logged to stderr
    result = subprocess.run(
        [*command, "plugins"], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "builtin-storage" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "click" in imported and "pluggy" in imported  # the import log is really there
    assert "torch" not in imported
    assert not any(name.startswith("torch.") for name in imported)
