"""``ckpthooks plugins``: what is installed, which hooks each plugin implements, and pins to reproduce it."""

from __future__ import annotations

import contextlib
import sys
import warnings
from importlib import metadata
from typing import Any

import click

from ckpthooks._cli.common import EXIT_FAILURE, EXIT_USAGE, emit_json, error, json_option, table
from ckpthooks._version import __version__


@click.command("plugins")
@click.option("--hook", "hook", metavar="NAME", help="List only the plugins implementing this hook.")
@click.option(
    "--requirements",
    is_flag=True,
    help="Print name==version lines (ckpthooks, torch and the distributions of the active entry-point "
    "plugins), to reproduce this environment with pip install -r.",
)
@json_option
def plugins_command(hook: str | None, requirements: bool, as_json: bool) -> None:
    """List every plugin: built-in and entry-point ones, and those that failed to load.

    Exit codes: 0, also when some plugin failed to load (its error is shown); 1 in strict mode
    (CKPTHOOKS_STRICT_PLUGINS=1) when one failed; 2 on bad usage, such as an unknown --hook name.
    """
    from ckpthooks._plugin_host import PluginHost
    from ckpthooks.exceptions import PluginLoadError

    if hook is not None:
        known = _hook_names()
        if hook not in known:
            error(f"no hook named {hook!r}; the hooks are: {', '.join(sorted(known))}")
            sys.exit(EXIT_USAGE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are part of the listing itself
        try:
            host = PluginHost()
        except PluginLoadError as exc:
            error(str(exc))
            sys.exit(EXIT_FAILURE)
    infos = host.plugins()
    if requirements:
        lines = _requirements(infos)
        if as_json:
            emit_json(lines)
        else:
            for line in lines:
                click.echo(line)
        return
    records = [info.as_dict() for info in infos]
    if hook is not None:
        records = [record for record in records if hook in record["hooks"]]
    if as_json:
        emit_json(records)
        return
    click.echo(_table(records))


def _hook_names() -> set[str]:
    from ckpthooks import hookspecs

    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return {name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, marker)}


def _requirements(infos: list[Any]) -> list[str]:
    """``name==version`` for ckpthooks, torch (from its metadata: torch is not imported) and every
    active entry-point plugin's distribution; a plugin without one gets a comment line, and so does
    a local version (``2.13.0+cpu`` is pinned as ``2.13.0``, which ``pip install -r`` resolves)."""
    pins: dict[str, str] = {"ckpthooks": __version__}
    with contextlib.suppress(metadata.PackageNotFoundError):
        pins["torch"] = metadata.version("torch")
    comments: list[str] = []
    for info in infos:
        if info.source != "entrypoint" or not info.active:
            continue
        if info.distribution and info.version:
            pins.setdefault(info.distribution, info.version)
        else:
            comments.append(f"# plugin {info.name!r} ({info.module}): its distribution is unknown")
    for name, version in list(pins.items()):
        public, plus, local = version.partition("+")
        if plus:  # a local version (torch's +cpu, +cu121) no package index serves by that name
            pins[name] = public
            comments.append(
                f"# {name} {version} is a local build: pinned as {name}=={public}; install the build "
                f"from the index it came from (for torch's {local} wheels: "
                f"--index-url https://download.pytorch.org/whl/{local})"
            )
    head = [f"{name}=={pins[name]}" for name in ("ckpthooks", "torch") if name in pins]
    rest = [f"{name}=={version}" for name, version in sorted(pins.items()) if name not in ("ckpthooks", "torch")]
    return head + rest + comments


def _table(records: list[dict[str, Any]]) -> str:
    headers = ["name", "version", "distribution", "source", "hooks", "status"]
    rows = [
        [
            record["name"],
            record["version"] or "-",
            record["distribution"] or "-",
            record["source"],
            ", ".join(record["hooks"]) or "-",
            "ok" if record["active"] else f"FAILED: {record['error']}",
        ]
        for record in records
    ]
    return table(headers, rows)
