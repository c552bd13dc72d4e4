"""``ckpthooks preempted``: whether a run's newest committed checkpoint is a preemption save.

Job scripts need to tell a preemption from a failure to decide whether to requeue. Workers exit
with ``128 + signal`` (143 for SIGTERM) after a preemption save, but launchers do not pass that
on: torchrun exits 1 whatever its workers' codes were. The checkpoint itself says it: the
preemption save's manifest records ``writer="preemption"`` and when it was made. This command
answers from the manifests alone, with its exit code, like ``grep -q``.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any

import click

from ckpthooks._cli.common import emit_json, error, json_option, parse_storage_options, storage_option
from ckpthooks._cli.listing import committed_under, last_of

#: the manifest writer of a preemption save (``ckpthooks._loop_tracking.LoopTracker.preempt``)
PREEMPTION_WRITER = "preemption"
#: exit codes: yes, no, trouble (bad usage, or ROOT cannot be read)
EXIT_PREEMPTED, EXIT_NOT_PREEMPTED, EXIT_TROUBLE = 0, 1, 2


def parse_since(text: str) -> float:
    """Seconds since the epoch (``date +%s``) or an ISO 8601 time (local time when it has no zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither seconds since the epoch (date +%s) nor an ISO 8601 time "
            "(2026-12-07T21:30:00)"
        ) from None


@click.command("preempted")
@click.argument("root")
@click.option(
    "--since",
    metavar="TIME",
    help="Only a preemption save made at or after TIME counts: seconds since the epoch (date +%s, "
    "taken before the launch) or an ISO 8601 time. Without it, any.",
)
@click.option(
    "--dirpath",
    "dirpaths",
    multiple=True,
    metavar="FOLDER",
    help="A folder a policy of the run writes into (as for ls). Repeatable.",
)
@json_option
@storage_option
def preempted_command(
    root: str, since: str | None, dirpaths: tuple[str, ...], as_json: bool, storage_option_args: tuple[str, ...]
) -> None:
    """Exit 0 when the checkpoint ckpt_path="last" resumes from under ROOT is a preemption save.

    ROOT is the run's default_root_dir (a folder or an fsspec URL); "last" is found as by `ls`,
    from the manifests alone. For a job script that requeues a preempted run whatever launched it
    (torchrun exits 1 when its workers exit 143):

    \b
        start=$(date +%s)
        torchrun --nproc-per-node 8 train.py --root runs/a
        ckpthooks preempted runs/a --since "$start" && scontrol requeue "$SLURM_JOB_ID"

    Exit codes: 0 the newest checkpoint is a preemption save (made at or after --since), 1 it is
    not, or there is none, 2 bad usage or ROOT cannot be read.
    """
    from ckpthooks._io import paths
    from ckpthooks.exceptions import CheckpointError

    threshold = parse_since(since) if since is not None else None
    options = parse_storage_options(storage_option_args)
    base = paths.normalize(root)
    try:
        fs = paths.filesystem(base, options)
        if not fs.exists(paths.fs_path(fs, base)):
            error(f"no folder at {root}")
            sys.exit(EXIT_TROUBLE)
        items = committed_under(base, options)
    except (CheckpointError, OSError) as exc:
        error(f"could not list {root}: {exc}")
        sys.exit(EXIT_TROUBLE)
    last = last_of(base, items, dirpaths)
    is_preemption = last is not None and last.manifest.writer == PREEMPTION_WRITER
    recent = last is not None and (threshold is None or last.manifest.created >= threshold)
    answer = bool(is_preemption and recent)
    if as_json:
        record: dict[str, Any] = {
            "root": base,
            "preempted": answer,
            "last": None if last is None else last.path,
            "writer": None if last is None else last.manifest.writer,
            "created": None if last is None else last.manifest.created,
            "global_step": None if last is None else last.manifest.global_step,
            "since": threshold,
        }
        emit_json(record)
    elif last is None:
        click.echo(f"not preempted: no committed checkpoint under {root}")
    elif not is_preemption:
        click.echo(f"not preempted: the newest checkpoint, {last.path}, is not a preemption save")
    elif not recent:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.manifest.created))
        click.echo(f"not preempted since {since}: the preemption save {last.path} was made at {when}, before")
    else:
        click.echo(f"preempted: {last.path} (global step {last.manifest.global_step})")
    sys.exit(EXIT_PREEMPTED if answer else EXIT_NOT_PREEMPTED)
