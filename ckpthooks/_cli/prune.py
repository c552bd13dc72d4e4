"""``ckpthooks prune``: keep the K best checkpoints by a metric, delete the rest; a dry run unless --yes.

The guards are the library's (see ``docs/model-checkpoint.md#deletion-guards``), made precise for a
folder that no running policy owns. A checkpoint may be deleted only when all of these hold:

1. it is committed (its manifest is valid), and the manifest is unchanged right before deleting;
2. a ckpthooks policy wrote it as a ranked file: its manifest's ``writer`` ends in ``#topk``
   (files saved by hand, converted or copied files, and ``last`` files are never candidates);
3. its manifest records the monitored metric as a finite number;
4. it is not at the newest global step under the folder (``last.ckpt`` and the top-k file of the
   same step alike), not what ``ckpt_path="last"`` with the folder as ``default_root_dir`` resumes
   from (:mod:`ckpthooks._last_search`; an older full checkpoint when the newest are weights-only),
   and not a kept previous version (``.<name>.ckpthooks-prev``);
5. it is not among the K best of the candidates.

Deleting uncommits first (the manifest goes), then removes the data through the storage hooks, as
:meth:`ckpthooks.CheckpointStore.remove` does: a crash in between leaves orphaned bytes, never a
manifest that points at nothing. Afterwards the commit index of each local folder that lost
checkpoints is compacted when most of its lines are dead (see :mod:`ckpthooks._commit_index`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from ckpthooks._cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    describe_error,
    echo,
    emit_json,
    error,
    human_size,
    json_option,
    parse_storage_options,
    plugin_host,
    storage_option,
    table,
)
from ckpthooks._cli.listing import Writer, committed_under, last_of, relative, score_of

if TYPE_CHECKING:
    from ckpthooks._manifest import CommittedCheckpoint


@click.command("prune")
@click.argument("root")
@click.option("--keep-top-k", "keep", type=click.IntRange(min=0), required=True, help="How many best to keep.")
@click.option("--monitor", required=True, metavar="NAME", help="The logged metric to rank by (from manifests).")
@click.option(
    "--mode", type=click.Choice(["min", "max"]), default="min", show_default=True, help="Which direction is better."
)
@click.option("--yes", "-y", "confirmed", is_flag=True, help="Delete. Without it, only print what would be deleted.")
@json_option
@storage_option
def prune_command(
    root: str,
    keep: int,
    monitor: str,
    mode: str,
    confirmed: bool,
    as_json: bool,
    storage_option_args: tuple[str, ...],
) -> None:
    """Keep the K best checkpoints under ROOT by a metric and delete the other ranked ones.

    A dry run unless --yes. Only committed checkpoints that a ckpthooks policy wrote as ranked
    (top-k) files and whose manifest records the metric are candidates; files saved by hand,
    "last" files, and the checkpoints of the newest step (what ckpt_path="last" resumes from) are
    always kept.
    Each deletion removes the manifest first, then the data.

    Exit codes: 0 after a dry run or when every deletion succeeded, 1 when ROOT cannot be read, a
    deletion failed, or no manifest records the metric (a misspelt --monitor), 2 on bad usage.
    """
    from ckpthooks._io import paths
    from ckpthooks.exceptions import CheckpointError

    options = parse_storage_options(storage_option_args)
    base = paths.normalize(root)
    try:
        fs = paths.filesystem(base, options)
        if not fs.isdir(paths.fs_path(fs, base)):
            error(f"no folder at {root}")
            sys.exit(EXIT_FAILURE)
        items = committed_under(base, options)
    except (CheckpointError, OSError) as exc:
        error(f"could not list {root}: {describe_error(exc)}")
        sys.exit(EXIT_FAILURE)
    delete, kept = plan(items, keep, monitor, mode, root=base)
    unknown_monitor = bool(items) and all(score_of(item, monitor) is None for item in items)
    if unknown_monitor:  # a typo, most likely: say so instead of a quiet "nothing to delete"
        recorded = sorted({name for item in items for name in item.manifest.metrics})
        echo(
            f"warning: no committed checkpoint under {root} records a finite {monitor!r}, so none is "
            f"ranked and nothing is deleted; the manifests record: {', '.join(recorded) or 'no metrics'}",
            err=True,
        )
    deleted: list[str] = []
    failures: list[dict[str, str]] = []
    if confirmed and delete:
        deleted, failures = _delete(delete, options)
        _compact_indexes(deleted)
    report = {
        "root": base,
        "monitor": monitor,
        "mode": mode,
        "keep_top_k": keep,
        "dry_run": not confirmed,
        "delete": [_record(base, item, monitor) for item in delete],
        "keep": [dict(_record(base, item, monitor), reason=reason) for item, reason in kept],
        "deleted": deleted,
        "errors": failures,
        "monitor_found": not unknown_monitor,
    }
    if as_json:
        emit_json(report)
    else:
        _print(report, confirmed)
    sys.exit(EXIT_FAILURE if failures or unknown_monitor else EXIT_OK)


def plan(
    items: list[CommittedCheckpoint], keep: int, monitor: str, mode: str, *, root: str | None = None
) -> tuple[list[CommittedCheckpoint], list[tuple[CommittedCheckpoint, str]]]:
    """What to delete, and what to keep with the reason, by the guards of the module docstring."""
    from ckpthooks._manifest import previous_of

    newest_step = max((item.manifest.global_step for item in items), default=None)
    # what ckpt_path="last" of a run rooted at ``root`` resumes from (ckpthooks._last_search): an
    # older full checkpoint when the newest step has weights-only files only
    last = last_of(root, items) if root is not None else None
    kept: list[tuple[CommittedCheckpoint, str]] = []
    candidates: list[tuple[float, CommittedCheckpoint]] = []
    for item in items:
        writer = Writer.parse(item.manifest.writer)
        score = score_of(item, monitor)
        name = item.path.replace("\\", "/").rsplit("/", 1)[-1]
        if previous_of(name) is not None:
            kept.append((item, "a kept previous version"))
        elif item.manifest.global_step == newest_step:
            kept.append((item, "at the newest step (last)"))
        elif last is not None and item.path == last.path:
            kept.append((item, 'what ckpt_path="last" resumes from'))
        elif writer is None:
            kept.append((item, "not written by a ckpthooks policy"))
        elif writer.role != "topk":
            kept.append((item, f"a {writer.role!r} file, not a ranked one"))
        elif score is None:
            kept.append((item, f"no finite {monitor} in its manifest"))
        else:
            candidates.append((score, item))
    sign = 1.0 if mode == "min" else -1.0
    ranked = sorted(candidates, key=lambda pair: (sign * pair[0], -pair[1].manifest.global_step))
    kept.extend((item, f"top {keep}") for _, item in ranked[:keep])
    delete = [item for _, item in ranked[keep:]]
    kept.sort(key=lambda pair: pair[0].sort_key)
    delete.sort(key=lambda item: item.sort_key)
    return delete, kept


def _delete(
    items: list[CommittedCheckpoint], options: dict[str, Any] | None
) -> tuple[list[str], list[dict[str, str]]]:
    from ckpthooks._catalog import read_manifest
    from ckpthooks._store import CheckpointStore

    store = CheckpointStore(host=plugin_host(), storage_options=options)
    deleted: list[str] = []
    failures: list[dict[str, str]] = []
    for item in items:
        try:
            current = read_manifest(item.path, options)
            if current != item.manifest:  # rewritten (or removed) since it was ranked: not ours to judge
                failures.append({"path": item.path, "error": "its manifest changed since the listing; kept"})
                continue
            store.remove(item.path)
            deleted.append(item.path)
        except Exception as exc:  # report every failure, delete the rest
            failures.append({"path": item.path, "error": describe_error(exc)})
    return deleted, failures


def _compact_indexes(deleted: list[str]) -> None:
    """Compact the commit index of each local folder that lost checkpoints, if enough of it is dead."""
    from ckpthooks._catalog import maintain_index
    from ckpthooks._io import paths

    for folder in dict.fromkeys(paths.dirname(path) for path in deleted):
        maintain_index(folder)


def _record(base: str, item: CommittedCheckpoint, monitor: str) -> dict[str, Any]:
    return {
        "path": item.path,
        "name": relative(base, item.path),
        "global_step": item.manifest.global_step,
        "score": item.manifest.metrics.get(monitor),
        "size": item.manifest.size,
    }


def _print(report: dict[str, Any], confirmed: bool) -> None:
    rows = [[r["name"], str(r["global_step"]), _score(r["score"]), "delete", ""] for r in report["delete"]]
    rows += [[r["name"], str(r["global_step"]), _score(r["score"]), "keep", r["reason"]] for r in report["keep"]]
    rows.sort(key=lambda row: (int(row[1]), row[0]))
    if rows:
        echo(table(["name", "step", report["monitor"], "action", "why kept"], rows))
    freed = sum(r["size"] for r in report["delete"])
    if not confirmed:
        echo(
            f"dry run: {len(report['delete'])} of {len(rows)} checkpoints would be deleted "
            f"({human_size(freed)}); run again with --yes to delete them"
        )
        return
    for failure in report["errors"]:
        echo(f"FAILED  {failure['path']}: {failure['error']}", err=True)
    echo(f"deleted {len(report['deleted'])}, failed {len(report['errors'])}")


def _score(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"
