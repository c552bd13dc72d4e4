"""Durable writes and temporary names: the primitives every storage path of ckpthooks builds on.

- :func:`temp_name_for` names the temporary sibling a write goes to
  (``.<name>.ckpthooks-tmp-<pid>-<process token>-<n>``), so that a later process can tell a
  leftover of a crashed save from a write in progress (:func:`is_leftover`; the commit protocol,
  :mod:`ckpthooks._commit`, removes leftovers at the next start);
- :func:`atomic_write` writes a local file all or nothing (fsync, rename, fsync of the folder);
- :func:`storage_error` turns an ``OSError`` into a :class:`~ckpthooks.StorageError` that says what
  to do (a full disk, a folder that is not writable).

This module knows nothing of torch or of checkpoint formats.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
import uuid
from collections.abc import Iterator
from typing import IO, Any

from ckpthooks._io import paths
from ckpthooks._io.direct import open_direct
from ckpthooks.exceptions import StorageError

log = logging.getLogger(__name__)

__all__ = [
    "PROCESS_TOKEN",
    "TEMP_MARKER",
    "atomic_write",
    "fsync_dir",
    "is_leftover",
    "is_temp_name",
    "storage_error",
    "temp_name_for",
    "temp_owner",
]

#: Marker in the names of temporary files; a file with it next to a checkpoint is ours.
TEMP_MARKER = ".ckpthooks-tmp-"


#: Distinguishes this process from an earlier one that had the same pid (pids repeat in containers).
PROCESS_TOKEN = uuid.uuid4().hex[:8]


def _new_process_token() -> None:
    global PROCESS_TOKEN
    PROCESS_TOKEN = uuid.uuid4().hex[:8]


# a forked child is another process: its crashed saves must be recognisable as someone else's
os.register_at_fork(after_in_child=_new_process_token)


def temp_name_for(path: str) -> str:
    """A unique temporary sibling of ``path``: ``.<name>.ckpthooks-tmp-<pid>-<process token>-<n>``."""
    base = paths.basename(path)
    unique = uuid.uuid4().hex[:8]
    return paths.join(paths.dirname(path), f".{base}{TEMP_MARKER}{os.getpid()}-{PROCESS_TOKEN}-{unique}")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


def temp_owner(name: str) -> tuple[int, str] | None:
    """``(pid, process token)`` of the process that created a temporary file, if it is one of ours."""
    if not is_temp_name(name):
        return None
    parts = name.rsplit(TEMP_MARKER, 1)[1].split("-")
    if len(parts) < 2 or not parts[0].isdigit():
        return None
    return int(parts[0]), parts[1]


#: A temporary file untouched this long is stale even if a process with its pid is running.
STALE_AFTER = 15 * 60.0


def pid_running(pid: int) -> bool:
    """Whether a process with this pid runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def is_leftover(folder: str, name: str, now: float | None = None) -> bool:
    """Whether ``name`` in the local ``folder`` is a temporary file (:func:`temp_name_for`) of a
    process that is gone: its pid is not running, or it belongs to another process (a different
    token: pids repeat across container restarts) and the file has not been written to for
    :data:`STALE_AFTER` seconds. Never one of this process's."""
    owner = temp_owner(name)
    if owner is None:
        return False
    pid, token = owner
    if token == PROCESS_TOKEN:
        return False  # ours: possibly a save in flight
    if not pid_running(pid):
        return True
    try:
        age = (now or time.time()) - os.path.getmtime(os.path.join(paths.local_path(folder), name))
    except OSError:
        return False
    return age > STALE_AFTER


def fsync_dir(directory: str) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str, buffering: int = -1, direct: bool = False) -> Iterator[IO[bytes]]:
    """Write the local file ``path`` all or nothing.

    Yields a file open on a temporary sibling (:func:`temp_name_for`). When the block ends normally
    the file is flushed and fsynced, renamed over ``path`` and the folder fsynced: a crash at any
    point leaves either the old ``path`` or the new one, never a mix. When the block raises, the
    temporary file is removed and ``path`` is untouched. The folder must exist.

    ``direct``: write with ``O_DIRECT`` through aligned buffers (:mod:`ckpthooks._io.direct`) where
    the file system allows it, else as without it.
    """
    tmp = temp_name_for(path)
    try:
        handle: Any = open_direct(tmp) if direct else None
        if handle is None:
            handle = open(tmp, "wb", buffering=buffering)  # noqa: SIM115 (entered just below)
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def storage_error(action: str, path: str, exc: OSError) -> StorageError:
    hint = ""
    if isinstance(exc, PermissionError):
        hint = " Check that the folder is writable by this user."
    elif exc.errno == errno.ENOSPC:
        hint = " The disk is full: free space or choose another folder."
    error = StorageError(f"could not {action} {path}: {exc.strerror or exc}.{hint}")
    error.errno = exc.errno
    return error
