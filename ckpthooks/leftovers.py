"""Removing what a crashed save left behind, and nothing else.

A save streams into ``.<name>.ckpthooks-tmp-<pid>-<token>-<n>`` next to its target and renames it
into place; a crash leaves that temporary file (a temporary folder, for a sharded checkpoint whose
ranks write into a fresh folder named so by rank 0). At the next start the writer rank removes such files
from the checkpoint folders when the process that created them is gone: its pid is not running, or
it belongs to another process (a different token: pids repeat across container restarts) and the
file has not been written to for :data:`STALE_AFTER` seconds. Files without our marker are never
touched.

Object stores (``s3://``, ``gs://``, ... every non-local URL) have no atomic rename: the data goes
straight to its final key and the manifest written last is the commit. So before writing remote
data, :meth:`~ckpthooks.store.CheckpointStore.save` writes a tiny *pending marker*
``.<name>.ckpthooks-pending`` beside it (:func:`write_pending_marker`) and removes it once the
manifest is written. A crash in between leaves data, marker and no manifest. At the next start, a
marker whose writer is gone (see :func:`pending_is_stale`) is handled: when its checkpoint has no
valid manifest, the data object and then the marker are deleted; when the checkpoint is committed
(the crash came after the commit), only the marker is. Objects without a marker are never touched.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ckpthooks.catalog import drop_previous
from ckpthooks.exceptions import StorageError
from ckpthooks.io import durable, paths
from ckpthooks.io.durable import storage_error as _storage_error
from ckpthooks.io.durable import temp_owner
from ckpthooks.io.retry import call_with_retry

log = logging.getLogger(__name__)

#: A temporary file untouched this long is stale even if a process with its pid is running.
STALE_AFTER = 15 * 60.0
#: A pending marker written by another host (whose writer cannot be checked) is stale after this
#: long; generous, because a large upload over a slow link takes a while.
PENDING_STALE_AFTER = 2 * 60 * 60.0
#: Suffix of the pending markers of remote saves: ``.<checkpoint name>.ckpthooks-pending``.
PENDING_SUFFIX = ".ckpthooks-pending"
PENDING_FORMAT = "ckpthooks.pending"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def is_leftover(folder: str, name: str, now: float | None = None) -> bool:
    owner = temp_owner(name)
    if owner is None:
        return False
    pid, token = owner
    if token == durable.PROCESS_TOKEN:
        return False  # ours: possibly a save in flight
    if not _pid_running(pid):
        return True
    try:
        age = (now or time.time()) - os.path.getmtime(os.path.join(folder, name))
    except OSError:
        return False
    return age > STALE_AFTER


def clean_leftovers(folders: Iterable[str], storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Remove what crashed saves left in ``folders`` (not recursive); returns what went.

    Local folders: stale temporary files. Remote folders: the data objects (and markers) of
    uncommitted saves with a stale pending marker, and stale markers of committed checkpoints. A
    remote folder that cannot be listed is skipped with a warning.
    """
    removed: list[str] = []
    for folder in dict.fromkeys(folders):
        if not paths.is_local(folder):
            try:
                removed += _clean_remote(folder, storage_options)
            except OSError as exc:
                log.warning("could not look for leftovers of interrupted saves in %s: %s", folder, exc)
            continue
        local = paths.local_path(folder)
        try:
            names = os.listdir(local)
        except OSError:
            continue
        for name in names:
            if is_leftover(local, name):
                target = os.path.join(local, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.path.isdir(target) and not os.path.islink(target):
                        shutil.rmtree(target)  # the fresh folder of a sharded save
                    else:
                        os.remove(target)
                    removed.append(target)
                    log.warning("removed %s, left behind by an interrupted save", target)
            elif _previous_no_longer_needed(local, name):
                drop_previous(os.path.join(local, name))
                removed.append(os.path.join(local, name))
                log.warning("removed %s: the overwrite it protected was committed", name)
    return removed


def _previous_no_longer_needed(folder: str, name: str) -> bool:
    """A kept previous version (see :func:`ckpthooks.catalog.keep_previous`) whose checkpoint has
    been committed again. While the checkpoint is uncommitted the previous version is its only
    committed state, and it stays."""
    from ckpthooks.catalog import read_manifest
    from ckpthooks.manifest import previous_of

    original = previous_of(name)
    return original is not None and read_manifest(os.path.join(folder, original)) is not None


# ---------------------------------------------------------------------- remote: pending markers


def pending_marker_path(checkpoint_path: str) -> str:
    """The pending marker of ``checkpoint_path``: ``.<name>.ckpthooks-pending`` in the same folder."""
    return paths.join(paths.dirname(checkpoint_path), f".{paths.basename(checkpoint_path)}{PENDING_SUFFIX}")


def pending_checkpoint_name(marker_name: str) -> str | None:
    """The checkpoint name a pending marker's name refers to, or ``None`` for other names."""
    if not (marker_name.startswith(".") and marker_name.endswith(PENDING_SUFFIX)):
        return None
    name = marker_name[1 : -len(PENDING_SUFFIX)]
    return name or None


def write_pending_marker(checkpoint_path: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Record that a save of ``checkpoint_path`` is starting; returns the marker's path."""
    marker = pending_marker_path(checkpoint_path)
    payload = json.dumps(
        {
            "format": PENDING_FORMAT,
            "file": paths.basename(checkpoint_path),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": durable.PROCESS_TOKEN,
            "created": time.time(),
        },
        sort_keys=True,
    ).encode()
    fs = paths.filesystem(marker, storage_options)
    try:
        call_with_retry(lambda: fs.pipe_file(paths.fs_path(fs, marker), payload), action="write", path=marker)
    except StorageError:
        raise
    except OSError as exc:
        raise _storage_error(f"save {checkpoint_path}: could not write", marker, exc) from exc
    return marker


def remove_pending_marker(checkpoint_path: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove the pending marker of ``checkpoint_path`` (a missing one is fine)."""
    marker = pending_marker_path(checkpoint_path)
    fs = paths.filesystem(marker, storage_options)
    stripped = paths.fs_path(fs, marker)

    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(stripped)  # one DELETE

    call_with_retry(remove, action="delete", path=marker)


def pending_is_stale(marker: Mapping[str, Any] | None, now: float | None = None) -> bool:
    """Whether the save a pending marker announces can no longer be in flight.

    Never for a marker of this process. For one of this host: when its pid is gone (or the marker
    is older than :data:`STALE_AFTER` and the pid belongs to another process). For another host's,
    or an unreadable marker: when it is older than :data:`PENDING_STALE_AFTER`.
    """
    now = time.time() if now is None else now
    if marker is None:
        return False
    created = marker.get("created")
    age = now - float(created) if isinstance(created, (int, float)) else None
    if marker.get("token") == durable.PROCESS_TOKEN:
        return False
    pid = marker.get("pid")
    if marker.get("host") == socket.gethostname() and isinstance(pid, int):
        if not _pid_running(pid):
            return True
        return age is not None and age > STALE_AFTER
    return age is not None and age > PENDING_STALE_AFTER


def _read_marker(fs: Any, stripped: str, marker: str) -> dict[str, Any] | None:
    try:
        data = json.loads(call_with_retry(lambda: fs.cat_file(stripped), action="read", path=marker))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and data.get("format") == PENDING_FORMAT:
        return data
    # unreadable: judge it by the age the store gives it, as another host's marker
    try:
        modified = fs.modified(stripped)
        return {"created": modified.timestamp()}
    except (OSError, NotImplementedError, AttributeError, ValueError):
        return None


def _remove_object(fs: Any, path: str, stripped: str) -> None:
    def remove() -> None:
        if not fs.exists(stripped):
            return
        if fs.isdir(stripped):
            fs.rm(stripped, recursive=True)
        else:
            fs.rm_file(stripped)

    call_with_retry(remove, action="delete", path=path)


def _clean_remote(folder: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    from ckpthooks.catalog import read_manifest

    fs = paths.filesystem(folder, storage_options)
    base = paths.fs_path(fs, folder).rstrip("/")
    paths.forget_listings(fs, base)

    def listing() -> list[str]:
        try:
            return [paths.basename(str(entry)) for entry in fs.ls(base, detail=False)]
        except FileNotFoundError:
            return []

    removed: list[str] = []
    for name in call_with_retry(listing, action="list", path=folder):
        checkpoint_name = pending_checkpoint_name(name)
        if checkpoint_name is None:
            continue
        marker = paths.join(folder, name)
        checkpoint = paths.join(folder, checkpoint_name)
        if not pending_is_stale(_read_marker(fs, paths.fs_path(fs, marker), marker)):
            log.info("keeping %s: its save may still be in progress", marker)
            continue
        if read_manifest(checkpoint, storage_options) is None:
            stripped = paths.fs_path(fs, checkpoint)
            if call_with_retry(functools.partial(fs.exists, stripped), action="look up", path=checkpoint):
                _remove_object(fs, checkpoint, stripped)  # data first: the marker keeps pointing at it
                removed.append(checkpoint)
                log.warning("removed %s, left uncommitted by an interrupted save", checkpoint)
        _remove_object(fs, marker, paths.fs_path(fs, marker))
        removed.append(marker)
        log.info("removed the pending marker %s", marker)
    return removed
