"""Checksums of a DCP folder, computed while its files stream out.

``torch.distributed.checkpoint``'s ``FileSystemWriter`` opens every file it writes through its
``fs`` object's ``create_stream``. :class:`HashingFileSystem` stands in for that object: each file
opened for writing is wrapped so that every byte written also feeds a hasher, and the file's size
and digest are recorded when it is closed (renames, as of the ``.metadata`` index written under a
temporary name, carry the record along). Each rank records the files it wrote; rank 0 gathers
every rank's records and combines them into the folder's checksum
(:func:`ckpthooks._io.hashing.folder_digest`), recorded in the commit manifest as
``<algorithm>/files``. A file written in a way the wrapper cannot follow (a seek), or by a DCP
version that does not write through ``fs``, is hashed by reading it back instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from ckpthooks.plugin import folder_digest, hash_local_file, hash_stored_file, new_hasher, stored_folder_files

#: ``{absolute path: (size, digest) or None}``: ``None`` for a file whose writes the hasher could not follow.
Records = dict[str, "tuple[int, str] | None"]


class _HashingStream:
    """A file opened for writing: ``write`` also hashes; anything else goes to the file."""

    def __init__(self, stream: Any, algorithm: str) -> None:
        self._stream = stream
        _, self._hasher = new_hasher(algorithm)
        self.size = 0
        self.followed = True

    def write(self, data: Any) -> int:
        written = self._stream.write(data)
        view = memoryview(data).cast("B")
        count = view.nbytes if written is None else int(written)
        self._hasher.update(view[:count])
        self.size += count
        return count

    def seek(self, *args: Any) -> int:
        self.followed = False  # the bytes no longer arrive in order: read the file back instead
        return int(self._stream.seek(*args))

    def truncate(self, *args: Any) -> int:
        self.followed = False
        return int(self._stream.truncate(*args))

    def record(self) -> tuple[int, str] | None:
        return (self.size, self._hasher.hexdigest()) if self.followed else None

    def __enter__(self) -> _HashingStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stream.close()

    def __getattr__(self, name: str) -> Any:  # tell, flush, fileno, close, writable, ...
        return getattr(self._stream, name)


def _recording(base: type, algorithm: str, key: Any) -> Any:
    """An instance of a subclass of the DCP file system class ``base`` that records the size and
    digest of every file it writes, under ``key(path)``; renames and removals carry the record."""

    class Recording(base):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.algorithm = algorithm
            self.records: Records = {}
            self._lock = threading.Lock()

        @contextlib.contextmanager
        def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
            if "r" in mode or "+" in mode:
                with super().create_stream(path, mode) as stream:
                    yield stream
                return
            with super().create_stream(path, mode) as stream:
                hashing = _HashingStream(stream, self.algorithm)
                try:
                    yield hashing
                finally:
                    with self._lock:
                        self.records[key(path)] = hashing.record()

        def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
            super().rename(path, new_path)
            with self._lock:
                old = key(path)
                if old in self.records:
                    self.records[key(new_path)] = self.records.pop(old)

        def rm_file(self, path: str | os.PathLike[str]) -> None:
            super().rm_file(path)
            with self._lock:
                self.records.pop(key(path), None)

    return Recording()


def hashing_file_system(algorithm: str) -> Any:
    """A ``torch.distributed.checkpoint.filesystem.FileSystem`` recording what it writes, by
    absolute path."""
    from torch.distributed.checkpoint.filesystem import FileSystem

    return _recording(FileSystem, algorithm, lambda path: os.path.abspath(os.fspath(path)))


def hashing_fsspec_file_system(algorithm: str, fs: Any) -> Any:
    """The fsspec counterpart of :func:`hashing_file_system` (DCP's ``FsspecWriter`` writes through
    it): the same records, keyed by the URL DCP opens."""
    from torch.distributed.checkpoint._fsspec_filesystem import FileSystem

    recording = _recording(FileSystem, algorithm, os.fspath)
    recording.fs = fs
    return recording


def relative_urls(records: Records, folder: str) -> dict[str, tuple[int, str] | None]:
    """:func:`relative_records` for records keyed by URL (``s3://bucket/run/x.ckpt/__0_0.distcp``)."""
    base = folder.rstrip("/") + "/"
    return {url[len(base) :]: record for url, record in records.items() if url.startswith(base)}


def stored_folder_checksum(
    fs: Any, folder: str, gathered: list[dict[str, tuple[int, str] | None]], algorithm: str
) -> tuple[int, str]:
    """:func:`folder_checksum` of a folder on an fsspec filesystem (``folder`` in ``fs``'s form):
    the files listed there, each taken from the ranks' records when its size matches, else read
    back."""
    known: dict[str, tuple[int, str] | None] = {}
    for records in gathered:
        known.update(records)
    base = folder.rstrip("/")
    files: dict[str, tuple[int, str]] = {}
    for name, size in stored_folder_files(fs, base).items():
        record = known.get(name)
        if record is None or record[0] != size:
            record = hash_stored_file(fs, f"{base}/{name}", algorithm)
        files[name] = record
    return folder_digest(files, algorithm)


def relative_records(records: Records, folder: str) -> dict[str, tuple[int, str] | None]:
    """``records`` of the files below ``folder``, keyed by ``/``-separated relative path."""
    base = os.path.abspath(folder)
    relative: dict[str, tuple[int, str] | None] = {}
    for path, record in records.items():
        name = os.path.relpath(path, base)
        if not name.startswith(".." + os.sep) and name != "..":
            relative[name.replace(os.sep, "/")] = record
    return relative


def folder_checksum(
    folder: str, gathered: list[dict[str, tuple[int, str] | None]], algorithm: str
) -> tuple[int, str]:
    """Size and checksum of the written ``folder`` from every rank's records; a file no rank
    recorded (or recorded without a digest, or with another size than it has) is read back."""
    from ckpthooks.plugin import folder_files

    known: dict[str, tuple[int, str] | None] = {}
    for records in gathered:
        known.update(records)
    files: dict[str, tuple[int, str]] = {}
    for name in folder_files(folder):
        full = os.path.join(folder, *name.split("/"))
        record = known.get(name)
        if record is None or record[0] != os.path.getsize(full):
            record = hash_local_file(full, algorithm)
        files[name] = record
    return folder_digest(files, algorithm)
