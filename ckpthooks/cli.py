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


@main.command("verify")
@click.argument("target")
@click.option(
    "--mode",
    type=click.Choice(["full", "size"]),
    default="full",
    show_default=True,
    help="full: size and checksum; size: size only.",
)
@click.option("--deep", is_flag=True, help="Also load each file with torch.load(weights_only=True).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--storage-option",
    "-o",
    "storage_option_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="An fsspec storage option (repeatable); VALUE is parsed as JSON when it is valid JSON, "
    "e.g. -o key=ID -o secret=SECRET -o 'client_kwargs={\"endpoint_url\": \"http://127.0.0.1:9000\"}'.",
)
def verify_command(
    target: str, mode: str, deep: bool, as_json: bool, storage_option_args: tuple[str, ...]
) -> None:
    """Check one checkpoint, or every committed checkpoint under a folder, against its manifest.

    TARGET is a checkpoint path, a folder or an fsspec URL. Exit code 0 when everything checked is
    intact, 1 when anything failed (or a folder holds no committed checkpoint), 2 on bad usage.
    """
    from ckpthooks.exceptions import CheckpointError
    from ckpthooks.io import paths
    from ckpthooks.manifest import MANIFEST_SUFFIX, iter_committed, read_manifest, verify_checkpoint

    options = _storage_options(storage_option_args)
    root = paths.normalize(target)
    try:
        fs = paths.filesystem(root, options)
        stripped = paths.fs_path(fs, root)
        if stripped.endswith(MANIFEST_SUFFIX):
            root = root[: -len(MANIFEST_SUFFIX)]
            stripped = stripped[: -len(MANIFEST_SUFFIX)]
        if fs.isdir(stripped) and read_manifest(root, options) is None:
            targets = [item.path for item in iter_committed(root, options)]
            if not targets:
                _emit_verify([], as_json, f"no committed checkpoint under {target}")
                sys.exit(EXIT_FAILURE)
        else:
            targets = [root]
    except (CheckpointError, OSError) as exc:
        _emit_verify([], as_json, f"error: {type(exc).__name__}: {exc}")
        sys.exit(EXIT_FAILURE)
    results: list[dict[str, Any]] = []
    for path in targets:
        record: dict[str, Any] = {"path": path, "ok": True, "error": None}
        try:
            manifest = verify_checkpoint(path, None, mode, options)  # type: ignore[arg-type]
            record.update(size=manifest.size, global_step=manifest.global_step, epoch=manifest.epoch)
            if deep:
                _deep_load(path, options)
        except (CheckpointError, OSError) as exc:
            record.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        results.append(record)
    _emit_verify(results, as_json, None)
    sys.exit(EXIT_OK if all(r["ok"] for r in results) else EXIT_FAILURE)


def _storage_options(args: tuple[str, ...]) -> dict[str, Any] | None:
    """``KEY=VALUE`` pairs as a dict; values that parse as JSON are taken as JSON."""
    options: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {arg!r}", param_hint="--storage-option")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options or None


def _deep_load(path: str, storage_options: dict[str, Any] | None = None) -> None:
    """Load through the storage hooks, so plugin formats load too; never unpickles code."""
    from ckpthooks.store import CheckpointStore

    CheckpointStore(storage_options=storage_options).load(path, map_location="cpu", weights_only=True, verify="off")


def _emit_verify(results: list[dict[str, Any]], as_json: bool, note: str | None) -> None:
    if as_json:
        click.echo(json.dumps({"results": results, "note": note}, indent=2))
        return
    if note:
        click.echo(note, err=True)
    for record in results:
        status = "ok" if record["ok"] else f"FAILED  {record['error']}"
        click.echo(f"{status:<6}  {record['path']}" if record["ok"] else f"{status}\n        {record['path']}")
    if results:
        failed = sum(not r["ok"] for r in results)
        click.echo(f"{len(results) - failed} ok, {failed} failed")


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
