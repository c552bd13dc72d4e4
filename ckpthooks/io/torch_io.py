"""The default storage backend: ``torch.save``/``torch.load`` over fsspec, written crash-safely."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from ckpthooks.exceptions import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    StorageError,
)
from ckpthooks.io import multipart, paths
from ckpthooks.io.base import CheckpointIO, SaveResult
from ckpthooks.io.hashing import HashingWriter
from ckpthooks.io.pipe import WritePipe
from ckpthooks.io.regular_file import open_regular
from ckpthooks.io.retry import RetryPolicy, call_with_retry
from ckpthooks.io.safety import translate_load_error

log = logging.getLogger(__name__)

#: Marker in the names of temporary files; a file with it next to a checkpoint is ours.
TEMP_MARKER = ".ckpthooks-tmp-"
_BUFFER = 8 * 1024 * 1024


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


_zip_crc_lock = threading.Lock()
_zip_crc_users = 0
_zip_crc_before = True
_zip_crc_thread_local: bool | None = None


def _crc_switch_is_thread_local(serialization: Any) -> bool:
    """Whether ``set_crc32_options`` affects only the calling thread (torch >= 2.10 keeps config
    overrides per thread) or the whole process (earlier versions). Probed once, by flipping the
    switch in a short-lived thread."""
    global _zip_crc_thread_local
    if _zip_crc_thread_local is None:
        before = serialization.get_crc32_options()
        probe = threading.Thread(target=serialization.set_crc32_options, args=(not before,))
        probe.start()
        probe.join()
        _zip_crc_thread_local = serialization.get_crc32_options() == before
        if not _zip_crc_thread_local:
            serialization.set_crc32_options(before)
    return _zip_crc_thread_local


@contextlib.contextmanager
def _torch_save_options(zip_crc32: bool) -> Iterator[None]:
    """Run ``torch.save`` without the CRC-32 it computes for every zip record, unless ``zip_crc32``.

    ``torch.load`` never checks these CRCs, and ckpthooks' own checksum covers every byte of the
    file. Where torch keeps the switch per thread, it is set and restored on this thread; where it
    is process-wide, the first of overlapping ckpthooks saves (the training thread and the
    background saver) turns it off and the last one restores what was set before."""
    global _zip_crc_users, _zip_crc_before
    import torch.serialization as serialization

    if zip_crc32 or not hasattr(serialization, "set_crc32_options"):
        yield
        return
    with _zip_crc_lock:
        if _crc_switch_is_thread_local(serialization):
            before = serialization.get_crc32_options()
            serialization.set_crc32_options(False)
            thread_local = True
        else:
            thread_local = False
            if _zip_crc_users == 0:
                _zip_crc_before = serialization.get_crc32_options()
                serialization.set_crc32_options(False)
            _zip_crc_users += 1
    try:
        yield
    finally:
        if thread_local:
            serialization.set_crc32_options(before)
        else:
            with _zip_crc_lock:
                _zip_crc_users -= 1
                if _zip_crc_users == 0:
                    serialization.set_crc32_options(_zip_crc_before)


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


class TorchCheckpointIO(CheckpointIO):
    """``torch.save`` streamed to storage; ``torch.load(weights_only=True)`` back.

    Local paths: bytes stream to a temporary sibling file (never a whole in-memory copy), which is
    fsynced, renamed over the target, and the folder fsynced. Other fsspec URLs (``memory://``,
    ``s3://``, ...): bytes stream to the target object; there the commit manifest the runtime writes
    afterwards is what makes the checkpoint count. The checksum is computed while writing.

    Remote writes, reads and deletes that fail transiently (a dropped connection, a timeout, an
    HTTP 5xx) are repeated with backoff following ``retry`` (by default the process-wide
    :data:`ckpthooks.io.retry.DEFAULT_RETRY`); a retried write streams the checkpoint again into a
    fresh object.

    ``torch.save`` computes a CRC-32 of every zip record, which costs as much CPU as the checksum
    itself. ckpthooks' checksum (``checksum_algorithm``, recorded in the manifest) already covers
    every byte and ``torch.load`` never checks the zip CRCs, so they are left out (written as 0)
    unless ``zip_crc32=True``: files still load with ``torch.load`` and Lightning, while ``unzip -t``
    would report CRC mismatches.
    """

    loads_from_local_copy = True  # a local copy of a remote file loads like the file

    def __init__(
        self,
        checksum_algorithm: str | None = None,
        retry: RetryPolicy | None = None,
        zip_crc32: bool = False,
    ) -> None:
        self.checksum_algorithm = checksum_algorithm
        self.retry = retry
        self.zip_crc32 = zip_crc32

    # ------------------------------------------------------------------ save

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str,
        storage_options: Mapping[str, Any] | None = None,
    ) -> SaveResult:
        import torch

        def serialize(writer: HashingWriter) -> None:
            with _torch_save_options(self.zip_crc32):
                torch.save(checkpoint, writer)  # type: ignore[arg-type]  # a file-like writer

        return write_durably(
            path, serialize, storage_options, checksum_algorithm=self.checksum_algorithm, retry=self.retry
        )

    # ------------------------------------------------------------------ load

    def load_checkpoint(
        self,
        path: str,
        map_location: Any = None,
        storage_options: Mapping[str, Any] | None = None,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        import torch

        try:
            if paths.is_local(path):
                local = paths.local_path(path)
                # a FIFO, a device (a symlink to /dev/zero) or a folder is refused at once, unread
                with open_regular(local, path) as handle:
                    source = _pinned(local, handle)
                    loaded = torch.load(
                        source, map_location=map_location, weights_only=weights_only, mmap=_is_zip(source)
                    )
            else:
                loaded = call_with_retry(
                    lambda: _load_remote(path, map_location, storage_options, weights_only),
                    action="read",
                    path=path,
                    policy=self.retry,
                )
        except StorageError:
            raise
        except FileNotFoundError as exc:
            raise CheckpointNotFoundError(f"no checkpoint at {path}") from exc
        except PermissionError as exc:
            raise _storage_error("read", path, exc) from exc
        except Exception as exc:
            translated = translate_load_error(exc, path)
            if translated is not None:
                raise translated from exc
            if isinstance(exc, CorruptCheckpointError):
                raise
            raise CorruptCheckpointError(
                f"{path} is not a readable checkpoint ({_load_failure(exc, path, storage_options)}); "
                "it may be truncated, altered or of another file type"
            ) from exc
        if not isinstance(loaded, dict):
            raise CorruptCheckpointError(
                f"{path} holds a {type(loaded).__name__}, not a checkpoint dict; was it written "
                "with torch.save(model) or torch.save(state_dict)?"
            )
        return loaded

    # ------------------------------------------------------------------ remove

    def remove_checkpoint(self, path: str, storage_options: Mapping[str, Any] | None = None) -> None:
        try:
            if paths.is_local(path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(paths.local_path(path))
                return
            fs = paths.filesystem(path, storage_options)
            target = paths.fs_path(fs, path)
            call_with_retry(lambda: _remove_remote(fs, target), action="delete", path=path, policy=self.retry)
        except StorageError:
            raise
        except OSError as exc:
            raise _storage_error("delete", path, exc) from exc


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
            _abandon(handle)
            if recorder.error is not None and exc is not recorder.error:
                raise recorder.error from exc  # what the storage raised, not the serializer's wrapper
            raise
        return SaveResult(size=writer.size, checksum=writer.hexdigest(), algorithm=writer.algorithm)

    try:
        return call_with_retry(attempt, action="write", path=path, policy=retry)
    except StorageError:
        raise
    except OSError as exc:
        raise _storage_error("write", path, exc) from exc


def _write_local(path: str, serialize: Callable[[HashingWriter], object], checksum_algorithm: str | None) -> SaveResult:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise _storage_error("create the folder", directory, exc) from exc
    writer: HashingWriter | None = None
    try:
        with atomic_write(path, buffering=_BUFFER) as handle:
            writer = HashingWriter(handle, checksum_algorithm)
            serialize(writer)
    except BaseException as exc:
        if isinstance(exc, OSError):
            raise _storage_error("write", path, exc) from exc
        if writer is not None and writer.error is not None:  # torch.save reports it as a RuntimeError
            raise _storage_error("write", path, writer.error) from exc
        raise
    return SaveResult(size=writer.size, checksum=writer.hexdigest(), algorithm=writer.algorithm)


def _load_remote(
    path: str, map_location: Any, storage_options: Mapping[str, Any] | None, weights_only: bool
) -> Any:
    import torch

    fs = paths.filesystem(path, storage_options)
    with fs.open(paths.fs_path(fs, path), "rb") as handle:
        recorder = _ErrorRecorder(handle)
        try:
            return torch.load(recorder, map_location=map_location, weights_only=weights_only)
        except Exception as exc:
            if recorder.error is not None and exc is not recorder.error:
                raise recorder.error from exc  # a failed read, not a bad file: may be retried
            raise


def _remove_remote(fs: Any, target: str) -> None:
    if not fs.exists(target):
        return
    if fs.isdir(target):
        fs.rm(target, recursive=True)
    else:
        fs.rm_file(target)  # one DELETE; a missing object is not an error


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


def _abandon(handle: Any) -> None:
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


def _is_zip(path: str) -> bool:
    """Whether ``path`` has torch's zip layout (mmap works only there, not for the legacy format)."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _pinned(path: str, handle: Any) -> str:
    """A name for the very file ``handle`` has open, where the OS offers one (``/proc/self/fd``).

    ``torch.load(mmap=True)`` opens its path twice (the zip index, then the mapping): if a writer
    renames a new checkpoint over ``path`` in between, a reader would mix the old file's index with
    the new file's bytes. Elsewhere ``path`` itself is returned and that window remains.
    """
    pinned = f"/proc/self/fd/{handle.fileno()}"
    return pinned if os.path.exists(pinned) else path


_MAGIC = (
    (b"\x89PNG", "it is a PNG image"),
    (b"\xff\xd8\xff", "it is a JPEG image"),
    (b"%PDF", "it is a PDF document"),
    (b"\x1f\x8b", "it is gzip-compressed"),
    (b"{", "it looks like JSON text"),
    (b"[", "it looks like JSON text"),
)


def _load_failure(exc: BaseException, path: str, storage_options: Mapping[str, Any] | None) -> str:
    """What went wrong, in words: the file type when it is recognisably not a torch file."""
    try:
        fs = paths.filesystem(path, storage_options)
        with fs.open(paths.fs_path(fs, path), "rb") as handle:
            head = handle.read(16)
    except Exception:
        head = b""
    if not head:
        return "the file is empty"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "it is a safetensors file: load it with the ckpthooks-safetensors plugin's backend"
    text = _first_line(exc)
    if "Weights only load failed" in str(exc):
        marker = "Unsupported operand"
        index = str(exc).find(marker)
        text = str(exc)[index:].splitlines()[0] if index >= 0 else "not a pickle torch.load understands"
    return f"{type(exc).__name__}: {text}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _storage_error(action: str, path: str, exc: OSError) -> StorageError:
    hint = ""
    if isinstance(exc, PermissionError):
        hint = " Check that the folder is writable by this user."
    elif exc.errno == errno.ENOSPC:
        hint = " The disk is full: free space or choose another folder."
    error = StorageError(f"could not {action} {path}: {exc.strerror or exc}.{hint}")
    error.errno = exc.errno
    return error
