"""One value per path or URL: resolved once, it knows its filesystem, whether it is local, and
its sibling names; its small-file operations (read a bounded prefix, replace atomically, remove)
are the only place where local disk and other storage take different routes.

Local paths go through the operating system (``open_regular``: never a FIFO or a device;
``atomic_write``: temporary sibling, fsync, rename, folder fsync). Any other URL goes through its
fsspec filesystem, with transient errors retried: a bounded range read from 0 (one GET), and one
``pipe_file`` for a replacement (one PUT, atomic on object stores).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ckpthooks.io import paths
from ckpthooks.io.durable import atomic_write, fsync_dir
from ckpthooks.io.hashing import folder_base, hash_local_file, hash_local_folder, hash_stream, read_chunks
from ckpthooks.io.regular_file import open_regular
from ckpthooks.io.retry import call_with_retry

__all__ = ["Location"]


@dataclass(frozen=True)
class Location:
    """A checkpoint path or URL with its storage options, resolved once (:meth:`of`)."""

    #: the normalized path or URL (an absolute local path, or a URL without a trailing slash)
    url: str
    storage_options: Mapping[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Location:
        return cls(paths.normalize(path), storage_options)

    # ------------------------------------------------------------------ what it is
    @cached_property
    def is_local(self) -> bool:
        """Whether the bytes are on this machine's file system (then :attr:`local` is the OS path)."""
        return paths.is_local(self.url)

    @cached_property
    def local(self) -> str:
        """The operating-system path of a local location (``file://`` removed)."""
        return paths.local_path(self.url)

    @cached_property
    def fs(self) -> Any:
        """The fsspec filesystem of this location (built once, from its storage options)."""
        return paths.filesystem(self.url, self.storage_options)

    @cached_property
    def fs_path(self) -> str:
        """The path as its filesystem spells it (the protocol stripped)."""
        return paths.fs_path(self.fs, self.url)

    @property
    def name(self) -> str:
        return paths.basename(self.url)

    @property
    def parent(self) -> Location:
        return Location(paths.dirname(self.url), self.storage_options)

    def sibling(self, name: str) -> Location:
        """The location called ``name`` in the same folder."""
        return Location(paths.join(paths.dirname(self.url), name), self.storage_options)

    def with_suffix(self, suffix: str) -> Location:
        """This location with ``suffix`` appended to its name (``x.ckpt`` -> ``x.ckpt<suffix>``)."""
        return Location(self.url.rstrip("/") + suffix, self.storage_options)

    # ------------------------------------------------------------------ small-file operations
    def read_prefix(self, limit: int) -> bytes:
        """At most ``limit`` bytes from the start of the file. ``FileNotFoundError`` when it is
        missing; a local FIFO, device or folder raises :class:`~ckpthooks.CorruptCheckpointError`
        at once, unread."""
        if self.is_local:
            with open_regular(self.local, self.url) as handle:
                # a read of ``limit`` bytes would allocate them first: ask for what the file holds
                size = os.fstat(handle.fileno()).st_size
                return handle.read(min(size + 1, limit))
        data: bytes = call_with_retry(
            lambda: self.fs.cat_file(self.fs_path, start=0, end=limit), action="read", path=self.url
        )
        return data

    def replace_with(self, data: bytes) -> int | None:
        """Replace the file's content with ``data`` all or nothing; returns the inode of the local
        file written (``None`` elsewhere). The folder of a local file must exist."""
        if self.is_local:
            with atomic_write(self.local) as handle:
                handle.write(data)
                return os.fstat(handle.fileno()).st_ino
        call_with_retry(lambda: self.fs.pipe_file(self.fs_path, data), action="write", path=self.url)
        return None

    def remove(self) -> None:
        """Remove the file; a missing one is fine. A local removal is made durable (folder fsync)."""
        if self.is_local:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.local)
            fsync_dir(os.path.dirname(self.local))
            return

        def remove() -> None:
            if self.fs.exists(self.fs_path):
                self.fs.rm_file(self.fs_path)

        call_with_retry(remove, action="delete", path=self.url)

    def stored_size(self) -> int:
        """The size in bytes of the file (or, for a folder, of the files below it), as stored now;
        ``FileNotFoundError`` when it is missing."""
        self.fs.invalidate_cache(self.fs_path)  # a cached listing may predate the write (s3fs)
        size: int = call_with_retry(
            lambda: paths.size_on(self.fs, self.fs_path), action="read the size of", path=self.url
        )
        return size

    def digest(self, algorithm: str, progress: Callable[[int], None] | None = None) -> str:
        """The checksum of the stored bytes by ``algorithm`` (a folder algorithm such as
        ``xxh3_64/files`` for a local folder); ``progress`` hears of every chunk read.
        ``LookupError`` for an algorithm this installation cannot compute here."""

        def compute() -> str:
            base = folder_base(algorithm)
            if base is not None:  # a folder (a sharded checkpoint): its files, each hashed
                if not self.is_local:
                    raise LookupError(f"folder checksums ({algorithm}) are checked on local folders only")
                return hash_local_folder(self.local, base, progress)[1]
            if self.is_local:
                return hash_local_file(self.local, algorithm, progress)[1]
            with self.fs.open(self.fs_path, "rb") as handle:
                chunks: Iterable[bytes] = read_chunks(handle)
                if progress is not None:
                    chunks = _reporting(chunks, progress)
                return hash_stream(chunks, algorithm)[1]

        digest: str = call_with_retry(compute, action="read", path=self.url)
        return digest

    def exists(self) -> bool:
        if self.is_local:
            return os.path.lexists(self.local)
        return bool(self.fs.exists(self.fs_path))


def _reporting(chunks: Iterable[bytes], progress: Callable[[int], None]) -> Iterator[bytes]:
    for chunk in chunks:
        progress(len(chunk))
        yield chunk
