"""``ckpthooks verify``: one checkpoint, or every committed checkpoint under a folder, against its manifest."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from ckpthooks._cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Progress,
    echo,
    emit_json,
    json_option,
    parse_storage_options,
    plugin_host,
    progress_option,
    storage_option,
)

log = logging.getLogger(__name__)


@click.command("verify")
@click.argument("target")
@click.option(
    "--mode",
    type=click.Choice(["full", "size"]),
    default="full",
    show_default=True,
    help="full: size and checksum; size: size only.",
)
@click.option("--deep", is_flag=True, help="Also load each file with torch.load(weights_only=True).")
@json_option
@storage_option
@progress_option
def verify_command(
    target: str,
    mode: str,
    deep: bool,
    as_json: bool,
    storage_option_args: tuple[str, ...],
    progress: bool | None,
) -> None:
    """Check one checkpoint, or every committed checkpoint under a folder, against its manifest.

    TARGET is a checkpoint path, a folder or an fsspec URL.

    Exit codes: 0 when everything checked is intact, 1 when anything failed (or a folder holds no
    committed checkpoint), 2 on bad usage.
    """
    from ckpthooks._catalog import iter_committed, read_manifest, verify_checkpoint
    from ckpthooks._io import paths
    from ckpthooks._manifest import MANIFEST_SUFFIX, Manifest
    from ckpthooks.exceptions import CheckpointError

    options = parse_storage_options(storage_option_args)
    root = paths.normalize(target)
    targets: list[tuple[str, Manifest | None]]
    listed = False  # the targets come from a folder's listing
    try:
        fs = paths.filesystem(root, options)
        stripped = paths.fs_path(fs, root)
        if stripped.endswith(MANIFEST_SUFFIX):
            root = root[: -len(MANIFEST_SUFFIX)]
            stripped = stripped[: -len(MANIFEST_SUFFIX)]
        if not fs.exists(stripped) and not fs.exists(stripped + MANIFEST_SUFFIX):
            _emit([], as_json, f"error: nothing at {target}: no such file or folder")
            sys.exit(EXIT_FAILURE)
        if fs.isdir(stripped) and read_manifest(root, options) is None:
            targets = [(item.path, item.manifest) for item in iter_committed(root, options)]
            listed = True
            if not targets:
                _emit([], as_json, f"no committed checkpoint under {target}")
                sys.exit(EXIT_FAILURE)
        else:
            targets = [(root, read_manifest(root, options, strict=True))]
    except (CheckpointError, OSError) as exc:
        _emit([], as_json, f"error: {type(exc).__name__}: {exc}")
        sys.exit(EXIT_FAILURE)
    results: list[dict[str, Any]] = []
    removed: list[str] = []
    total = sum(manifest.size for _, manifest in targets if manifest is not None) if mode == "full" else 0
    with Progress(total, "verifying", enabled=progress if mode == "full" else False, as_json=as_json) as bar:
        for path, manifest in targets:
            record: dict[str, Any] = {"path": path, "ok": True, "error": None}
            try:
                checked = verify_checkpoint(path, manifest, mode, options, progress=bar.update)  # type: ignore[arg-type]
                record.update(size=checked.size, global_step=checked.global_step, epoch=checked.epoch)
                if deep:
                    _deep_load(path, options)
            except (CheckpointError, OSError) as exc:
                if listed and _uncommitted_meanwhile(path, options):
                    # pruned (or being overwritten) by a running policy since the folder was listed
                    log.info("%s was removed while verifying; it is not checked", path)
                    removed.append(path)
                    continue
                record.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            results.append(record)
    _emit(results, as_json, None, removed)
    sys.exit(EXIT_OK if all(r["ok"] for r in results) else EXIT_FAILURE)


def _uncommitted_meanwhile(path: str, options: dict[str, Any] | None) -> bool:
    """Whether ``path``, committed when its folder was listed, has no manifest any more: a policy
    pruned it (manifest first, then data) or is overwriting it. Its failure is then no failure."""
    from ckpthooks._catalog import read_manifest
    from ckpthooks.exceptions import CheckpointError

    try:
        return read_manifest(path, options) is None
    except (CheckpointError, OSError):
        return False


def _deep_load(path: str, storage_options: dict[str, Any] | None = None) -> None:
    """Load through the storage hooks, so plugin formats load too; never unpickles code."""
    from ckpthooks._store import CheckpointStore

    store = CheckpointStore(host=plugin_host(), storage_options=storage_options)
    store.load(path, map_location="cpu", weights_only=True, verify="off")


def _emit(results: list[dict[str, Any]], as_json: bool, note: str | None, removed: list[str] | None = None) -> None:
    if as_json:
        emit_json({"results": results, "note": note, "removed": removed or []})
        return
    if note:
        echo(note, err=True)
    for path in removed or []:
        echo(f"removed while verifying (not checked): {path}", err=True)
    for record in results:
        if record["ok"]:
            echo(f"{'ok':<6}  {record['path']}")
        else:
            echo(f"FAILED  {record['error']}\n        {record['path']}")
    if results or removed:
        failed = sum(not r["ok"] for r in results)
        gone = f", {len(removed)} removed while verifying" if removed else ""
        echo(f"{len(results) - failed} ok, {failed} failed{gone}")
