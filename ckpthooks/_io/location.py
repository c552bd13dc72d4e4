"""One value per path or URL: resolved once, it knows its filesystem, whether it is local, and
its sibling names. Its operations (read a bounded prefix, replace atomically, remove, list, link,
rename) and its capabilities (:attr:`Location.renames_atomically`, :attr:`Location.hard_links`,
:attr:`Location.os_path`) are the only place where local disk and other storage take different
routes: the commit protocol, the catalog and the command line ask a location, never a protocol.

Local paths go through the operating system (``open_regular``: never a FIFO or a device;
``atomic_write``: temporary sibling, fsync, rename, folder fsync). Any other URL goes through its
fsspec filesystem, with transient errors retried: a bounded range read from 0 (one GET), and one
``pipe_file`` for a replacement (one PUT, atomic on object stores).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ckpthooks._io import paths
from ckpthooks._io.durable import atomic_write, fsync_dir
from ckpthooks._io.hashing import (
    folder_base,
    hash_local_file,
    hash_local_folder,
    hash_stored_folder,
    hash_stream,
    read_chunks,
)
from ckpthooks._io.regular_file import open_regular
from ckpthooks._io.retry import call_with_retry

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
    def os_path(self) -> str | None:
        """The operating-system file name of the location, for code that hands a file name to the
        operating system or to a library (``mmap``, ``safe_open``, ``O_DIRECT``); ``None`` where the
        bytes live elsewhere (then stream through :attr:`fs`)."""
        return self.local if self.is_local else None

    @property
    def renames_atomically(self) -> bool:
        """Whether data can be written under a temporary name and renamed into place all or nothing
        (and a folder renamed as a whole). Where it cannot (object stores, most remote storage),
        bytes land at their final name while they are written: the commit protocol then guards
        them with a pending marker and keeps no previous version."""
        return self.is_local

    @property
    def hard_links(self) -> bool:
        """Whether a file can get a second name without a copy (:meth:`link_to`)."""
        return self.is_local

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

    def child(self, name: str) -> Location:
        """The location called ``name`` inside this folder."""
        return Location(paths.join(self.url, name), self.storage_options)

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
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.fs_path)  # one DELETE; a missing object is fine

        call_with_retry(remove, action="delete", path=self.url)

    def remove_tree(self) -> None:
        """Remove the file or the folder with everything below it; a missing one is fine."""
        if self.is_local:
            if os.path.isdir(self.local) and not os.path.islink(self.local):
                shutil.rmtree(self.local, ignore_errors=False)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.local)
            return

        def remove() -> None:
            if not self.fs.exists(self.fs_path):
                return
            if self.fs.isdir(self.fs_path):
                self.fs.rm(self.fs_path, recursive=True)
            else:
                self.fs.rm_file(self.fs_path)

        call_with_retry(remove, action="delete", path=self.url)

    def is_folder(self) -> bool:
        """Whether a folder (not a link to one) is at the location."""
        if self.is_local:
            return os.path.isdir(self.local) and not os.path.islink(self.local)
        return bool(call_with_retry(lambda: self.fs.isdir(self.fs_path), action="look up", path=self.url))

    def modified(self) -> float | None:
        """When the file was last written (seconds since the epoch), or ``None`` when it is missing
        or the storage does not say."""
        if self.is_local:
            try:
                return os.path.getmtime(self.local)
            except OSError:
                return None
        try:
            return float(self.fs.modified(self.fs_path).timestamp())
        except (OSError, NotImplementedError, AttributeError, ValueError):
            return None

    def names(self) -> list[str]:
        """The names of the entries of this folder (none when it is missing). A remote listing is
        taken fresh: a cached one may predate other writers."""
        if self.is_local:
            try:
                return os.listdir(self.local)
            except (FileNotFoundError, NotADirectoryError):
                return []
        base = self.fs_path.rstrip("/")
        paths.forget_listings(self.fs, base)

        def listing() -> list[str]:
            try:
                return [paths.basename(str(entry)) for entry in self.fs.ls(base, detail=False)]
            except FileNotFoundError:
                return []

        names: list[str] = call_with_retry(listing, action="list", path=self.url)
        return names

    def walk(self, recursive: bool = True) -> Iterator[tuple[Location, list[str]]]:
        """Each folder at or below this one (only this one unless ``recursive``) with the names of
        the files in it. A remote tree is listed at once (one flat listing on object stores);
        folders are spelled like this location, so that paths compare equal."""
        if self.is_local:
            if not os.path.isdir(self.local):
                return
            walker = os.walk(self.local) if recursive else [next(os.walk(self.local))]
            for folder, _dirs, files in walker:
                yield Location(folder, self.storage_options), files
            return
        if not recursive:
            yield self, self.names()
            return
        fs, base = self.fs, self.fs_path.rstrip("/")
        paths.forget_listings(fs, base)

        def listing() -> list[str]:
            if not fs.exists(base):
                return []
            return sorted(str(found) for found in fs.find(base, withdirs=False))

        folders: dict[str, list[str]] = {}
        for found in call_with_retry(listing, action="list", path=self.url):
            parent, _, name = found.rpartition("/")
            folders.setdefault(parent, []).append(name)
        for parent, files in folders.items():
            yield Location(paths.unstrip(fs, self.url, parent), self.storage_options), files

    def link_to(self, target: Location) -> bool:
        """Give this file the second name ``target`` (a hard link: no copy); ``False`` where the
        storage has no links. An existing ``target`` is an error (``FileExistsError``)."""
        if not (self.hard_links and target.hard_links):
            return False
        os.link(self.local, target.local)
        return True

    def rename_to(self, target: Location) -> bool:
        """Rename this file or folder to ``target`` atomically, durably (folder fsync); ``False``
        where the storage cannot rename all or nothing."""
        if not (self.renames_atomically and target.renames_atomically):
            return False
        os.rename(self.local, target.local)
        fsync_dir(os.path.dirname(target.local))
        return True

    def sync_tree(self) -> None:
        """Make the names of every folder at and below this one durable (folder fsyncs), where the
        storage needs it: after a tree of files was written under a temporary name."""
        if self.is_local:
            for folder, _dirs, _names in os.walk(self.local):
                fsync_dir(folder)

    def make_parents(self) -> None:
        """Create the folders above the location before it is written, where the storage has
        folders. Object stores get none: their ``makedirs`` looks the bucket up (a request per
        save) and creates a missing bucket, which a checkpoint save must never do; fsspec has no
        flag that says whether a filesystem has folders, so :data:`~ckpthooks._io.paths.OBJECT_STORE_PROTOCOLS`
        names the object stores."""
        if self.is_local:
            os.makedirs(os.path.dirname(self.local), exist_ok=True)
            return
        paths.make_parent_folders(self.fs, self.url)

    @contextlib.contextmanager
    def open_read(self) -> Iterator[Any]:
        """The file open for reading in binary. A local FIFO, device or folder raises
        :class:`~ckpthooks.CorruptCheckpointError` at once instead of blocking or reading forever."""
        if self.is_local:
            with open_regular(self.local, self.url) as handle:
                yield handle
            return
        with self.fs.open(self.fs_path, "rb") as handle:
            yield handle

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
                    return hash_stored_folder(self.fs, self.fs_path, base, progress)[1]
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
