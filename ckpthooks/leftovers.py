"""Removing what a crashed save left behind, and nothing else.

A save streams into ``.<name>.ckpthooks-tmp-<pid>-<token>-<n>`` next to its target and renames it
into place; a crash leaves that temporary file. At the next start the writer rank removes such files
from the checkpoint folders when the process that created them is gone: its pid is not running, or
it belongs to another process (a different token: pids repeat across container restarts) and the
file has not been written to for :data:`STALE_AFTER` seconds. Files without our marker are never
touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable

from ckpthooks.io import paths
from ckpthooks.io.torch_io import PROCESS_TOKEN, temp_owner

log = logging.getLogger(__name__)

#: A temporary file untouched this long is stale even if a process with its pid is running.
STALE_AFTER = 15 * 60.0


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
    if token == PROCESS_TOKEN:
        return False  # ours: possibly a save in flight
    if not _pid_running(pid):
        return True
    try:
        age = (now or time.time()) - os.path.getmtime(os.path.join(folder, name))
    except OSError:
        return False
    return age > STALE_AFTER


def clean_leftovers(folders: Iterable[str]) -> list[str]:
    """Remove stale temporary files from local ``folders`` (not recursive); returns what went."""
    removed = []
    for folder in dict.fromkeys(folders):
        if not paths.is_local(folder):
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
                    os.remove(target)
                    removed.append(target)
                    log.warning("removed %s, left behind by an interrupted save", target)
    return removed
