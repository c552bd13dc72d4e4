"""Open a local checkpoint file only if it is a regular file, without ever blocking.

A FIFO named like a checkpoint blocks an ordinary ``open()`` until some process writes to it, and a
symlink to ``/dev/zero`` or ``/dev/urandom`` reads forever. Checkpoints are regular files (or
folders, for sharded ones), so anything else is refused at once: the file is opened with
``O_NONBLOCK`` (opening a FIFO for reading then returns at once instead of waiting for a writer),
and the type of the very file opened is checked with ``fstat`` before a byte is read. Checking with
``os.stat`` first and opening afterwards would leave a window in which the name is replaced.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from ckpthooks.exceptions import CorruptCheckpointError

__all__ = ["check_regular", "describe_file_type", "not_regular_error", "open_regular"]

_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # not on Windows, which has no FIFOs in the file system
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def describe_file_type(mode: int) -> str:
    """What kind of file ``mode`` (``st_mode``) is, in words: ``"a FIFO (named pipe)"``, ..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def not_regular_error(shown: str, mode: int) -> CorruptCheckpointError:
    """The error for the path ``shown`` whose target has ``st_mode`` ``mode``."""
    what = describe_file_type(mode)
    if stat.S_ISDIR(mode):
        return CorruptCheckpointError(
            f"{shown} is a folder, not a checkpoint file; a sharded checkpoint (a folder) is read by "
            "its storage plugin (for torch.distributed.checkpoint folders the ckpthooks-dcp plugin, "
            "plugins/ckpthooks-dcp in the ckpthooks repository)"
        )
    return CorruptCheckpointError(
        f"{shown} is {what}, not a regular file: a checkpoint is a regular file, so nothing was read "
        "from it. Pass the path of the checkpoint file itself (a symlink must point to a regular file)."
    )


def open_regular(local: str, shown: str | None = None, *, allow_folder: bool = False) -> BinaryIO:
    """Open the local file ``local`` for binary reading if it is a regular file.

    Raises :class:`~ckpthooks.CorruptCheckpointError` at once
    for a FIFO, a device (a symlink to ``/dev/zero``), a socket or a folder (with
    ``allow_folder=False``), naming ``shown`` (default: ``local``); ``FileNotFoundError`` and
    ``PermissionError`` pass through. With ``allow_folder=True`` a folder is returned open (its
    handle reads nothing; callers use it only to hold the folder).
    """
    fd = os.open(local, os.O_RDONLY | _O_NONBLOCK | _O_BINARY | _O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or (allow_folder and stat.S_ISDIR(mode))):
            raise not_regular_error(shown or local, mode)
        if _O_NONBLOCK:
            os.set_blocking(fd, True)  # no effect on regular files; keep the flag out of later reads
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(local: str, shown: str | None = None) -> None:
    """Raise :class:`~ckpthooks.CorruptCheckpointError` when the local ``local`` exists and is not a regular
    file (nothing is opened; for callers that hand a path, not a file, to another library)."""
    try:
        mode = os.stat(local).st_mode
    except OSError:
        return  # a missing file is reported by whoever opens it
    if not stat.S_ISREG(mode):
        raise not_regular_error(shown or local, mode)
