"""The file backends' write: a checkpoint's bytes streamed durably to any location.

:func:`write_durably` streams the bytes a serializer produces to a local path (a temporary sibling,
fsynced and renamed into place) or any fsspec URL (uploaded while serializing goes on; a failed
upload is aborted, never published) and reports their size and checksum. The default torch backend
and plugin backends write through it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from ckpthooks._io import multipart
from ckpthooks._io.base import SaveResult
from ckpthooks._io.direct import direct_io_default
from ckpthooks._io.durable import atomic_write, storage_error
from ckpthooks._io.hashing import HashingWriter
from ckpthooks._io.location import Location
from ckpthooks._io.pipe import WritePipe
from ckpthooks._io.retry import RetryPolicy, call_with_retry
from ckpthooks.exceptions import StorageError

log = logging.getLogger(__name__)

__all__ = ["abandon_upload", "write_durably"]

#: Buffer size of local checkpoint writes.
_BUFFER = 8 * 1024 * 1024


def write_durably(
    path: str,
    serialize: Callable[[HashingWriter], object],
    storage_options: Mapping[str, Any] | None = None,
    *,
    checksum_algorithm: str | None = None,
    retry: RetryPolicy | None = None,
    direct_io: bool | None = None,
) -> SaveResult:
    """Write a checkpoint file to ``path`` the way ckpthooks' file backends do, and report its size
    and checksum: ``serialize(writer)`` writes the bytes (in order, never seeking) into ``writer``,
    which hashes them on the way.

    Local paths: the folder is created, the bytes go to a temporary sibling that is fsynced and
    renamed over ``path`` (:func:`atomic_write`). Other URLs: the bytes stream to the object
    (several parts uploading at once on S3) while ``serialize`` goes on, a failed upload is aborted
    rather than published, and the whole write is repeated on transient errors (``retry``, by default
    :data:`ckpthooks._io.retry.DEFAULT_RETRY`; ``serialize`` is then called again). Storage failures
    raise :class:`~ckpthooks.StorageError`; an exception of ``serialize`` itself passes through.

    ``direct_io``: local files are written with ``O_DIRECT`` through two aligned buffers (the
    serializer fills one while the other is written), bypassing the page cache, where the file
    system allows it (else through the page cache, by itself); the bytes are the same. ``None``:
    on unless the environment sets ``CKPTHOOKS_DIRECT_IO=0``.
    """
    location = Location.of(path, storage_options)
    if location.os_path is not None:
        direct = direct_io_default() if direct_io is None else direct_io
        return _write_local(location.os_path, serialize, checksum_algorithm, direct)
    fs, target = location.fs, location.fs_path

    def attempt() -> SaveResult:
        location.make_parents()
        handle = multipart.open_for_write(fs, target)
        recorder = ErrorRecorder(handle)
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


def _write_local(
    path: str, serialize: Callable[[HashingWriter], object], checksum_algorithm: str | None, direct: bool
) -> SaveResult:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise storage_error("create the folder", directory, exc) from exc
    writer: HashingWriter | None = None
    try:
        with atomic_write(path, buffering=_BUFFER, direct=direct) as handle:
            writer = HashingWriter(handle, checksum_algorithm)
            serialize(writer)
    except BaseException as exc:
        if isinstance(exc, OSError):
            raise storage_error("write", path, exc) from exc
        if writer is not None and writer.error is not None:  # torch.save reports it as a RuntimeError
            raise storage_error("write", path, writer.error) from exc
        raise
    return SaveResult(size=writer.size, checksum=writer.hexdigest(), algorithm=writer.algorithm)


class ErrorRecorder:
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
