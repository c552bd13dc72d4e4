"""The default storage backend: ``torch.save``/``torch.load`` over fsspec, written crash-safely."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from ckpthooks._io import paths
from ckpthooks._io.base import CheckpointIO, SaveResult
from ckpthooks._io.durable import storage_error
from ckpthooks._io.hashing import HashingWriter
from ckpthooks._io.location import Location
from ckpthooks._io.regular_file import open_regular
from ckpthooks._io.retry import RetryPolicy, call_with_retry
from ckpthooks._io.safety import translate_load_error
from ckpthooks._io.writing import ErrorRecorder, write_durably
from ckpthooks.exceptions import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    StorageError,
)

log = logging.getLogger(__name__)

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


class TorchCheckpointIO(CheckpointIO):
    """``torch.save`` streamed to storage; ``torch.load(weights_only=True)`` back.

    Local paths: bytes stream to a temporary sibling file (never a whole in-memory copy), which is
    fsynced, renamed over the target, and the folder fsynced. Other fsspec URLs (``memory://``,
    ``s3://``, ...): bytes stream to the target object; there the commit manifest the runtime writes
    afterwards is what makes the checkpoint count. The checksum is computed while writing.

    Remote writes, reads and deletes that fail transiently (a dropped connection, a timeout, an
    HTTP 5xx) are repeated with backoff following ``retry`` (by default the process-wide
    :data:`ckpthooks._io.retry.DEFAULT_RETRY`); a retried write streams the checkpoint again into a
    fresh object.

    ``torch.save`` computes a CRC-32 of every zip record, which costs as much CPU as the checksum
    itself. ckpthooks' checksum (``checksum_algorithm``, recorded in the manifest) already covers
    every byte and ``torch.load`` never checks the zip CRCs, so they are left out (written as 0)
    unless ``zip_crc32=True``: files still load with ``torch.load`` and Lightning, while ``unzip -t``
    would report CRC mismatches.

    Local files are written with ``O_DIRECT`` through aligned buffers where the file system allows
    it (several times the throughput of the page cache on a fast disk; the same bytes), unless
    ``direct_io=False`` or ``CKPTHOOKS_DIRECT_IO=0`` (see :func:`~ckpthooks.plugin.write_durably`).
    """

    loads_from_local_copy = True  # a local copy of a remote file loads like the file

    def __init__(
        self,
        checksum_algorithm: str | None = None,
        retry: RetryPolicy | None = None,
        zip_crc32: bool = False,
        direct_io: bool | None = None,
    ) -> None:
        self.checksum_algorithm = checksum_algorithm
        self.retry = retry
        self.zip_crc32 = zip_crc32
        self.direct_io = direct_io

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
            path, serialize, storage_options, checksum_algorithm=self.checksum_algorithm, retry=self.retry,
            direct_io=self.direct_io,
        )  # fmt: skip

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
            local = Location.of(path, storage_options).os_path
            if local is not None:
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
            raise storage_error("read", path, exc) from exc
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
            local = Location.of(path, storage_options).os_path
            if local is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(local)
                return
            fs = paths.filesystem(path, storage_options)
            target = paths.fs_path(fs, path)
            call_with_retry(lambda: _remove_remote(fs, target), action="delete", path=path, policy=self.retry)
        except StorageError:
            raise
        except OSError as exc:
            raise storage_error("delete", path, exc) from exc


def _load_remote(
    path: str, map_location: Any, storage_options: Mapping[str, Any] | None, weights_only: bool
) -> Any:
    import torch

    fs = paths.filesystem(path, storage_options)
    with fs.open(paths.fs_path(fs, path), "rb") as handle:
        recorder = ErrorRecorder(handle)
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


