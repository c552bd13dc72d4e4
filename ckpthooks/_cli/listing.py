"""``ckpthooks ls``: the committed checkpoints under a folder or URL, from their manifests only."""

from __future__ import annotations

import ast
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from ckpthooks._cli.common import (
    EXIT_FAILURE,
    describe_error,
    emit_json,
    error,
    format_metrics,
    human_age,
    human_size,
    json_option,
    parse_storage_options,
    storage_option,
    table,
)

if TYPE_CHECKING:
    from ckpthooks._manifest import CommittedCheckpoint


@dataclass(frozen=True)
class Writer:
    """A manifest's ``writer`` taken apart: ``<policy state key>#<role>``.

    ``ModelCheckpoint`` writes ``ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}#topk``
    (and ``#last``); ``monitor`` and ``mode`` are read from the state key when it has that shape.
    """

    state_key: str
    role: str
    monitor: str | None = None
    mode: str | None = None

    @classmethod
    def parse(cls, writer: str | None) -> Writer | None:
        if not writer or "#" not in writer:
            return None
        state_key, _, role = writer.rpartition("#")
        monitor = mode = None
        brace = state_key.find("{")
        if brace > 0 and state_key.endswith("}"):
            try:
                options = ast.literal_eval(state_key[brace:])  # a dict literal: never code
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                options = None
            if isinstance(options, dict):
                monitor = options.get("monitor") if isinstance(options.get("monitor"), str) else None
                mode = options.get("mode") if options.get("mode") in ("min", "max") else None
        return cls(state_key, role, monitor, mode)


def score_of(item: CommittedCheckpoint, monitor: str) -> float | None:
    value = item.manifest.metrics.get(monitor)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def last_of(root: str, items: list[CommittedCheckpoint], dirpaths: Sequence[str] = ()) -> CommittedCheckpoint | None:
    """What ``ckpt_path="last"`` of a run with ``default_root_dir=root`` resolves to, by the rule
    of :mod:`ckpthooks._last_search`: the folders of the run (the root itself, ``<root>/checkpoints``
    and the folders its policies write into: those given as ``dirpaths``, and those a policy's
    manifests name as their writer), then the highest global step, full checkpoints before
    weights-only ones. The runtime also verifies the candidate's bytes; ``ls`` reads manifests only
    (``ckpthooks verify`` checks the bytes)."""
    from ckpthooks._io import paths
    from ckpthooks._last_search import in_folders, last_order, search_folders

    policy_folders = {paths.dirname(item.path) for item in items if Writer.parse(item.manifest.writer) is not None}
    policy_folders.update(paths.normalize(folder) for folder in dirpaths)
    folders = search_folders(root, sorted(policy_folders))
    ordered = last_order(item for item in items if in_folders(item.path, folders))
    return ordered[0] if ordered else None


def best_by(items: list[CommittedCheckpoint], monitor: str, mode: str) -> CommittedCheckpoint | None:
    scored = [(score, item) for item in items if (score := score_of(item, monitor)) is not None]
    if not scored:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(scored, key=lambda pair: (sign * pair[0], -pair[1].manifest.global_step))[1]


def best_per_policy(items: list[CommittedCheckpoint]) -> dict[str, tuple[str, str, CommittedCheckpoint]]:
    """``{policy state key: (monitor, mode, best checkpoint)}`` for every ModelCheckpoint with a monitor,
    over the top-k files it wrote (as ``ckpt_path="best"`` chooses)."""
    groups: dict[str, tuple[Writer, list[CommittedCheckpoint]]] = {}
    for item in items:
        writer = Writer.parse(item.manifest.writer)
        if writer is None or writer.monitor is None or writer.role != "topk":
            continue
        groups.setdefault(writer.state_key, (writer, []))[1].append(item)
    found = {}
    for key, (writer, members) in groups.items():
        mode = writer.mode or "min"
        best = best_by(members, str(writer.monitor), mode)
        if best is not None:
            found[key] = (str(writer.monitor), mode, best)
    return found


def committed_under(root: str, options: dict[str, Any] | None) -> list[CommittedCheckpoint]:
    from ckpthooks._catalog import iter_committed

    return sorted(iter_committed(root, options), key=lambda item: item.sort_key)


def relative(root: str, path: str) -> str:
    prefix = root.rstrip("/\\")
    if path.startswith(prefix) and len(path) > len(prefix) and path[len(prefix)] in "/\\":
        return path[len(prefix) + 1 :]
    return path


@click.command("ls")
@click.argument("root")
@click.option("--monitor", metavar="NAME", help="Also mark the best checkpoint by this logged metric.")
@click.option(
    "--mode", type=click.Choice(["min", "max"]), default="min", show_default=True, help="Direction of --monitor."
)
@click.option(
    "--dirpath",
    "dirpaths",
    multiple=True,
    metavar="FOLDER",
    help='A folder a policy of the run writes into (ModelCheckpoint(dirpath=...)), for the "last" flag, '
    "when no policy-written manifest there says so (files saved by hand only). Repeatable.",
)
@json_option
@storage_option
def ls_command(
    root: str,
    monitor: str | None,
    mode: str,
    dirpaths: tuple[str, ...],
    as_json: bool,
    storage_option_args: tuple[str, ...],
) -> None:
    """List the committed checkpoints under ROOT (a folder or an fsspec URL, searched recursively).

    Reads manifests only, never a checkpoint: each row has the global step, epoch, logged metrics,
    size, age and flags. "last" marks what ckpt_path="last" with ROOT as default_root_dir resumes
    from (ROOT itself, ROOT/checkpoints and the folders its policies wrote into; docs/resume.md);
    "best(METRIC)" the best top-k file of each ModelCheckpoint with a monitor, as its
    manifests record it, and the best by --monitor when given.

    Exit codes: 0 when the listing was printed (also when it is empty), 1 when ROOT cannot be
    read, 2 on bad usage.
    """
    from ckpthooks._io import paths
    from ckpthooks.exceptions import CheckpointError

    options = parse_storage_options(storage_option_args)
    base = paths.normalize(root)
    try:
        fs = paths.filesystem(base, options)
        if not fs.exists(paths.fs_path(fs, base)):
            error(f"no folder at {root}")
            sys.exit(EXIT_FAILURE)
        items = committed_under(base, options)
    except (CheckpointError, OSError) as exc:
        error(f"could not list {root}: {describe_error(exc)}")
        sys.exit(EXIT_FAILURE)
    flags: dict[str, list[str]] = {item.path: [] for item in items}
    last = last_of(base, items, dirpaths)
    if last is not None:
        flags[last.path].append("last")
    best: dict[str, str] = {}
    for key, (metric, _mode, item) in best_per_policy(items).items():
        flags[item.path].append(f"best({metric})")
        best[key] = item.path
    if monitor is not None:
        chosen = best_by(items, monitor, mode)
        if chosen is not None:
            label = f"best({monitor})"
            if label not in flags[chosen.path]:
                flags[chosen.path].append(label)
            best[f"--monitor {monitor} --mode {mode}"] = chosen.path
    now = time.time()
    records = [
        {
            "path": item.path,
            "name": relative(base, item.path),
            "epoch": item.manifest.epoch,
            "global_step": item.manifest.global_step,
            "metrics": item.manifest.metrics,
            "size": item.manifest.size,
            "created": item.manifest.created,
            "age_seconds": round(now - item.manifest.created, 3),
            "weights_only": item.manifest.weights_only,
            "writer": item.manifest.writer,
            "flags": flags[item.path],
        }
        for item in items
    ]
    if as_json:
        emit_json({"root": base, "checkpoints": records, "last": last.path if last else None, "best": best})
        return
    if not records:
        click.echo(f"no committed checkpoint under {root}", err=True)
        return
    headers = ["name", "step", "epoch", "metrics", "size", "age", "flags"]
    rows = [
        [
            str(record["name"]),
            str(item.manifest.global_step),
            str(item.manifest.epoch),
            format_metrics(item.manifest.metrics),
            human_size(item.manifest.size),
            human_age(now - item.manifest.created),
            " ".join(flags[item.path] + (["weights-only"] if item.manifest.weights_only else [])),
        ]
        for item, record in zip(items, records)
    ]
    click.echo(table(headers, rows))
