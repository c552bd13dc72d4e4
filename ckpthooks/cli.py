"""The ``ckpthooks`` command line. It never imports torch just to start or to list plugins."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ckpthooks._version import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckpthooks")
def main() -> None:
    """Checkpointing for plain PyTorch training loops: inspect plugins and checkpoints."""


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List every plugin: built-in and entry-point ones, and those that failed to load.

    Exit code 0, also when some plugin failed to load (its error is shown); 1 in strict mode
    (CKPTHOOKS_STRICT_PLUGINS=1) when one failed.
    """
    import warnings

    from ckpthooks.exceptions import PluginLoadError
    from ckpthooks.plugin_host import PluginHost

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are part of the listing itself
        try:
            host = PluginHost()
        except PluginLoadError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILURE)
    records = [info.as_dict() for info in host.plugins()]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    click.echo(_table(records))


def _table(records: list[dict[str, Any]]) -> str:
    headers = ["name", "version", "distribution", "source", "hooks", "status"]
    rows = []
    for record in records:
        rows.append(
            [
                record["name"],
                record["version"] or "-",
                record["distribution"] or "-",
                record["source"],
                ", ".join(record["hooks"]) or "-",
                "ok" if record["active"] else f"FAILED: {record['error']}",
            ]
        )
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers) - 1)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    main()
