"""Durable writes and temporary names: the primitives every storage path of ckpthooks builds on.

- :func:`temp_name_for` names the temporary sibling a write goes to
  (``.<name>.ckpthooks-tmp-<pid>-<process token>-<n>``), so that a later process can tell a
  leftover of a crashed save (:mod:`ckpthooks.leftovers`) from a write in progress;
- :func:`atomic_write` writes a local file all or nothing (fsync, rename, fsync of the folder);
- :func:`write_durably` streams a checkpoint's bytes to a local path or any fsspec URL and reports
  their size and checksum (the file backends' write, also for plugins);
- :func:`storage_error` turns an ``OSError`` into a :class:`~ckpthooks.StorageError` that says what
  to do (a full disk, a folder that is not writable).

This module knows nothing of torch or of checkpoint formats.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from ckpthooks.exceptions import StorageError
from ckpthooks.io import multipart, paths
from ckpthooks.io.base import SaveResult
from ckpthooks.io.hashing import HashingWriter
from ckpthooks.io.pipe import WritePipe
from ckpthooks.io.retry import RetryPolicy, call_with_retry

log = logging.getLogger(__name__)

__all__ = [
    "PROCESS_TOKEN",
    "TEMP_MARKER",
    "abandon_upload",
    "atomic_write",
    "fsync_dir",
    "is_temp_name",
    "storage_error",
    "temp_name_for",
    "temp_owner",
    "write_durably",
]

#: Buffer size of local checkpoint writes.
_BUFFER = 8 * 1024 * 1024

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
def atomic_write(path: str, buffering: int = -1) -> Iterator[IO[bytes]]:
    """Write the local file ``path`` all or nothing.

    Yields a file open on a temporary sibling (:func:`temp_name_for`). When the block ends normally
    the file is flushed and fsynced, renamed over ``path`` and the folder fsynced: a crash at any
    point leaves either the old ``path`` or the new one, never a mix. When the block raises, the
    temporary file is removed and ``path`` is untouched. The folder must exist.
    """
    tmp = temp_name_for(path)
    try:
        with open(tmp, "wb", buffering=buffering) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_durably(
    path: str,
    serialize: Callable[[HashingWriter], object],
    storage_options: Mapping[str, Any] | None = None,
    *,
    checksum_algorithm: str | None = None,
    retry: RetryPolicy | None = None,
) -> SaveResult:
    """Write a checkpoint file to ``path`` the way ckpthooks' file backends do, and report its size
    and checksum: ``serialize(writer)`` writes the bytes (in order, never seeking) into ``writer``,
    which hashes them on the way.

    Local paths: the folder is created, the bytes go to a temporary sibling that is fsynced and
    renamed over ``path`` (:func:`atomic_write`). Other URLs: the bytes stream to the object
    (several parts uploading at once on S3) while ``serialize`` goes on, a failed upload is aborted
    rather than published, and the whole write is repeated on transient errors (``retry``, by default
    :data:`ckpthooks.io.retry.DEFAULT_RETRY`; ``serialize`` is then called again). Storage failures
    raise :class:`~ckpthooks.StorageError`; an exception of ``serialize`` itself passes through.
    """
    if paths.is_local(path):
        return _write_local(paths.local_path(path), serialize, checksum_algorithm)
    fs = paths.filesystem(path, storage_options)
    target = paths.fs_path(fs, path)

    def attempt() -> SaveResult:
        paths.make_parent_folders(fs, path)
        handle = multipart.open_for_write(fs, target)
        recorder = _ErrorRecorder(handle)
        pipe = WritePipe(recorder)  # uploads overlap serializing and hashing
        writer = HashingWriter(pipe, checksum_algorithm)  # type: ignore[arg-type]
        try:
            serialize(writer)
            pipe.close()
            handle.close()  # object stores upload (the rest) here
        except BaseException as exc:
            pipe.abort()
            abandon_upload(handle)
            if recorder.error is not None and exc is not recorder.error:
                raise recorder.error from exc  # what the storage raised, not the serializer's wrapper
            raise
        return SaveResult(size=writer.size, checksum=writer.hexdigest(), algorithm=writer.algorithm)

    try:
        return call_with_retry(attempt, action="write", path=path, policy=retry)
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error("write", path, exc) from exc


def _write_local(path: str, serialize: Callable[[HashingWriter], object], checksum_algorithm: str | None) -> SaveResult:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise storage_error("create the folder", directory, exc) from exc
    writer: HashingWriter | None = None
    try:
        with atomic_write(path, buffering=_BUFFER) as handle:
            writer = HashingWriter(handle, checksum_algorithm)
            serialize(writer)
    except BaseException as exc:
        if isinstance(exc, OSError):
            raise storage_error("write", path, exc) from exc
        if writer is not None and writer.error is not None:  # torch.save reports it as a RuntimeError
            raise storage_error("write", path, writer.error) from exc
        raise
    return SaveResult(size=writer.size, checksum=writer.hexdigest(), algorithm=writer.algorithm)


class _ErrorRecorder:
    """A file-like pass-through that remembers the exception a read or write of the storage raised
    (``torch.save``/``torch.load`` report those as ``RuntimeError``, hiding what went wrong)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.error: Exception | None = None

    def write(self, data: Any) -> Any:
        try:
            return self._handle.write(data)
        except Exception as exc:
            self.error = exc
            raise

    def read(self, *args: Any) -> Any:
        try:
            return self._handle.read(*args)
        except Exception as exc:
            self.error = exc
            raise

    def readinto(self, buffer: Any) -> Any:
        try:
            return self._handle.readinto(buffer)
        except Exception as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:  # seek, tell, flush, readable, ...
        return getattr(self._handle, name)


def abandon_upload(handle: Any) -> None:
    """Drop a half-written remote file without publishing it (aborts an S3 multipart upload)."""
    discard = getattr(handle, "discard", None)
    try:
        if callable(discard):
            discard()
            handle.closed = True  # nothing to flush any more, also not at garbage collection
        else:
            handle.close()
    except Exception as exc:  # the storage is failing already; the original error matters
        log.debug("could not abandon the partial upload %s: %s", getattr(handle, "path", handle), exc)


def storage_error(action: str, path: str, exc: OSError) -> StorageError:
    hint = ""
    if isinstance(exc, PermissionError):
        hint = " Check that the folder is writable by this user."
    elif exc.errno == errno.ENOSPC:
        hint = " The disk is full: free space or choose another folder."
    error = StorageError(f"could not {action} {path}: {exc.strerror or exc}.{hint}")
    error.errno = exc.errno
    return error

