"""Checksums computed while bytes stream out, and a file wrapper that computes them.

``xxh3_64`` from the ``xxhash`` package (a dependency; about 10-20 GB/s on one core) is the default,
so that the disk, not the hash, limits a save. ``crc32`` from the standard library (about 2-3 GB/s)
is the fallback where ``xxhash`` is missing. The algorithm's name is stored next to the value, so a
file is verified with the algorithm it was written with.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Protocol

CHUNK = 8 * 1024 * 1024


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Hasher: ...


class _Crc32:
    name = "crc32"

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value & 0xFFFFFFFF:08x}"

    def copy(self) -> _Crc32:
        twin = _Crc32()
        twin._value = self._value
        return twin


def _xxh3() -> Hasher | None:
    try:
        import xxhash
    except ImportError:
        return None
    hasher: Hasher = xxhash.xxh3_64()
    return hasher


def available_algorithms() -> tuple[str, ...]:
    return ("xxh3_64", "crc32") if _xxh3() is not None else ("crc32",)


def default_algorithm() -> str:
    return available_algorithms()[0]


def new_hasher(algorithm: str | None = None) -> tuple[str, Hasher]:
    """A fresh hasher for ``algorithm`` (default: the fastest available)."""
    name = algorithm or default_algorithm()
    if name == "crc32":
        return name, _Crc32()
    if name == "xxh3_64":
        hasher = _xxh3()
        if hasher is not None:
            return name, hasher
        raise LookupError("checksum algorithm 'xxh3_64' needs the 'xxhash' package (pip install xxhash)")
    raise LookupError(f"unknown checksum algorithm {name!r}")


def hash_stream(chunks: Iterable[bytes | memoryview], algorithm: str) -> tuple[int, str]:
    """Size and hex digest of a stream of chunks."""
    _, hasher = new_hasher(algorithm)
    size = 0
    for chunk in chunks:
        hasher.update(chunk)
        size += len(chunk)
    return size, hasher.hexdigest()


def read_chunks(handle: IO[bytes], chunk_size: int = CHUNK) -> Iterable[bytes]:
    while True:
        chunk = handle.read(chunk_size)
        if not chunk:
            return
        yield chunk


def mapped_chunks(handle: IO[bytes], chunk_size: int = CHUNK) -> Iterator[memoryview]:
    """The bytes of an open local file as views of a read-only memory map: hashing them copies
    nothing (a ``read()`` copies every chunk into fresh memory first, which costs more than xxh3
    itself). Falls back to ``read()`` where the file cannot be mapped."""
    size = os.fstat(handle.fileno()).st_size
    if size == 0:
        return
    try:
        mapped = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        yield from (memoryview(chunk) for chunk in read_chunks(handle, chunk_size))
        return
    with mapped:
        if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            mapped.madvise(mmap.MADV_SEQUENTIAL)  # read ahead aggressively from a cold disk
        view = memoryview(mapped)
        try:
            for start in range(0, size, chunk_size):
                chunk = view[start : start + chunk_size]
                try:
                    yield chunk
                finally:
                    chunk.release()
        finally:
            view.release()


def hash_local_file(
    path: str, algorithm: str, progress: Callable[[int], None] | None = None
) -> tuple[int, str]:
    """Size and hex digest of a local file, hashed through a memory map."""
    _, hasher = new_hasher(algorithm)
    size = 0
    with open(path, "rb") as handle:
        for chunk in mapped_chunks(handle):
            hasher.update(chunk)
            size += chunk.nbytes
            if progress is not None:
                progress(chunk.nbytes)
    return size, hasher.hexdigest()


class HashingWriter:
    """Wraps a binary file: every write also feeds the hasher and counts bytes.

    ``torch.save`` writes its zip records straight through this object, so the checkpoint is never
    buffered whole in memory and the checksum costs no second read pass. A handle that hashes what
    it writes itself (``hash_into``, as :class:`~ckpthooks._io.direct.DirectFile` does, a buffer at
    a time) is given the hasher instead; the digest is then complete once the handle is flushed or
    closed.
    """

    def __init__(self, handle: IO[bytes], algorithm: str | None = None) -> None:
        self._handle = handle
        self.algorithm, self._hasher = new_hasher(algorithm)
        self.size = 0
        #: the OSError a write raised (torch.save reports it as a RuntimeError)
        self.error: OSError | None = None
        self._hashing_handle = getattr(handle, "hash_into", None) is not None
        if self._hashing_handle:
            handle.hash_into(self._hasher)  # type: ignore[attr-defined]
            self.write = self._write_through  # type: ignore[method-assign]

    def _write_through(self, data: Any) -> int:
        """``write`` when the handle does the hashing."""
        try:
            written: int | None = self._handle.write(data)
        except OSError as exc:
            self.error = exc
            raise
        if written is None:
            written = memoryview(data).nbytes
        self.size += written
        return written

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._hasher.update(view)
        self.size += view.nbytes
        try:
            written = self._handle.write(view)
        except OSError as exc:
            self.error = exc
            raise
        return view.nbytes if written is None else written

    def flush(self) -> None:
        self._handle.flush()

    def hexdigest(self) -> str:
        """The digest of the bytes written so far."""
        if self._hashing_handle:
            return str(self._handle.hexdigest())  # type: ignore[attr-defined]
        return self._hasher.hexdigest()


# ---------------------------------------------------------------------- folders (sharded checkpoints)

#: Suffix of the algorithm name of a folder's checksum: ``xxh3_64/files`` is the ``xxh3_64`` of the
#: folder's listing of files, each with its size and its own ``xxh3_64`` (see :func:`folder_digest`).
FOLDER_SUFFIX = "/files"


def folder_algorithm(algorithm: str) -> str:
    """The name under which a folder's checksum built with ``algorithm`` is recorded."""
    return algorithm + FOLDER_SUFFIX


def folder_base(algorithm: str) -> str | None:
    """The per-file algorithm of a folder checksum's name, ``None`` for a file checksum's name."""
    return algorithm[: -len(FOLDER_SUFFIX)] if algorithm.endswith(FOLDER_SUFFIX) else None


def folder_digest(files: dict[str, tuple[int, str]], algorithm: str) -> tuple[int, str]:
    """Total size and checksum of a folder from ``{relative path: (size, digest)}`` of its files:
    ``algorithm`` over one line ``<path>\\t<size>\\t<digest>\\n`` per file, sorted by path (``/``
    separates folders). A renamed, missing, extra or changed file changes it."""
    _, hasher = new_hasher(algorithm)
    total = 0
    for name in sorted(files):
        size, digest = files[name]
        total += size
        hasher.update(f"{name}\t{size}\t{digest}\n".encode())
    return total, hasher.hexdigest()


def folder_files(folder: str) -> list[str]:
    """Relative paths (``/``-separated) of every file below the local ``folder``."""
    found: list[str] = []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            found.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(found)


def stored_folder_files(fs: Any, folder: str) -> dict[str, int]:
    """``{relative path: size}`` of every file below ``folder`` on the fsspec filesystem ``fs``
    (``folder`` in ``fs``'s own form, as :func:`ckpthooks._io.paths.fs_path` gives it)."""
    base = folder.rstrip("/")
    found: dict[str, int] = {}
    for full, info in fs.find(base, detail=True).items():
        if info.get("type") == "directory":
            continue
        name = full[len(base) + 1 :] if full.startswith(base + "/") else full
        found[name] = int(info.get("size") or 0)
    return dict(sorted(found.items()))


def hash_stored_file(
    fs: Any, path: str, algorithm: str, progress: Callable[[int], None] | None = None
) -> tuple[int, str]:
    """``(size, digest)`` of one file on the fsspec filesystem ``fs``, streamed."""
    _, hasher = new_hasher(algorithm)
    size = 0
    with fs.open(path, "rb") as handle:
        for chunk in read_chunks(handle):
            hasher.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress(len(chunk))
    return size, hasher.hexdigest()


def hash_stored_folder(
    fs: Any, folder: str, algorithm: str, progress: Callable[[int], None] | None = None
) -> tuple[int, str]:
    """:func:`hash_local_folder` for a folder on any fsspec filesystem (an object store's prefix):
    every file below it read once and hashed with ``algorithm``."""
    base = folder.rstrip("/")
    files = {
        name: hash_stored_file(fs, f"{base}/{name}", algorithm, progress) for name in stored_folder_files(fs, base)
    }
    return folder_digest(files, algorithm)


def hash_local_folder(
    folder: str, algorithm: str, progress: Callable[[int], None] | None = None
) -> tuple[int, str]:
    """Size and checksum (see :func:`folder_digest`) of a local folder, every file hashed through
    a memory map with ``algorithm`` (the per-file one: ``xxh3_64``, not ``xxh3_64/files``)."""
    files = {
        name: hash_local_file(os.path.join(folder, *name.split("/")), algorithm, progress)
        for name in folder_files(folder)
    }
    return folder_digest(files, algorithm)
