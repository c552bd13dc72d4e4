"""Path and URL helpers over fsspec; local paths stay plain strings."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.core import split_protocol

LOCAL_PROTOCOLS = frozenset({"file", "local"})
#: Object stores: keys, no folders. Writing ``a/b/c`` needs no ``a/b`` first.
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})


def protocol_of(path: str | os.PathLike[str]) -> str:
    """The URL protocol of ``path`` (``"file"`` for plain local paths)."""
    protocol, _ = split_protocol(os.fspath(path))
    return protocol or "file"


def is_local(path: str | os.PathLike[str]) -> bool:
    return protocol_of(path) in LOCAL_PROTOCOLS


def local_path(path: str | os.PathLike[str]) -> str:
    """A local path without any ``file://`` prefix."""
    text = os.fspath(path)
    protocol, rest = split_protocol(text)
    return rest if protocol in LOCAL_PROTOCOLS else text


def normalize(path: str | os.PathLike[str]) -> str:
    """Absolute local paths; URLs unchanged (without a trailing slash)."""
    text = os.fspath(path)
    if is_local(text):
        return os.path.abspath(os.path.expanduser(local_path(text)))
    return text.rstrip("/")


def join(base: str, *parts: str) -> str:
    if is_local(base):
        return os.path.join(base, *parts)
    return posixpath.join(base, *parts)


def dirname(path: str) -> str:
    if is_local(path):
        return os.path.dirname(path)
    protocol, rest = split_protocol(path)
    parent = posixpath.dirname(rest)
    return f"{protocol}://{parent}" if protocol else parent


def basename(path: str) -> str:
    return os.path.basename(path) if is_local(path) else posixpath.basename(path.rstrip("/"))


def filesystem(path: str, storage_options: Mapping[str, Any] | None = None) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for ``path``, built with ``storage_options``."""
    fs, _ = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    return fs


def fs_path(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """``path`` in the form ``fs`` expects (no protocol prefix)."""
    return str(fs._strip_protocol(path))


def make_parent_folders(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Create the folders above ``path`` before writing it, where the filesystem has folders. On
    object stores nothing is created (``makedirs`` would cost requests that look the bucket up)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if OBJECT_STORE_PROTOCOLS.intersection(protocols):
        return
    fs.makedirs(fs_path(fs, dirname(path)), exist_ok=True)


def unstrip(fs: fsspec.AbstractFileSystem, template: str, stripped: str) -> str:
    """Give ``stripped`` (a path returned by ``fs``) the protocol prefix ``template`` had."""
    protocol, _ = split_protocol(template)
    if protocol is None or protocol in LOCAL_PROTOCOLS:
        return stripped
    base = fs_path(fs, template).rstrip("/")
    if base and (stripped == base or stripped.startswith(base + "/")):
        return template.rstrip("/") + stripped[len(base) :]  # spelled like the root: paths compare equal
    return str(fs.unstrip_protocol(stripped))


def forget_listings(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Drop the directory listings ``fs`` cached for ``path``, its parents and everything below it.

    s3fs and other object-store filesystems cache listings per instance (shared by every user of the
    same storage options); one taken before another process wrote would hide the new files from
    "last", "best" and the size checks.
    """
    fs.invalidate_cache(path)
    cache = getattr(fs, "dircache", None)
    if not cache:
        return
    prefix = path.rstrip("/") + "/"
    for key in [key for key in list(cache) if str(key).startswith(prefix)]:
        fs.invalidate_cache(key)


def stored_size(path: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """Bytes stored at ``path``: a file's size, or the total of every file below a folder (a
    sharded checkpoint is a folder)."""
    fs = filesystem(path, storage_options)
    return size_on(fs, fs_path(fs, path))


def size_on(fs: fsspec.AbstractFileSystem, stripped: str) -> int:
    """:func:`stored_size` for a path already in ``fs``'s form; a missing path raises
    ``FileNotFoundError``."""
    if fs.isdir(stripped):
        return int(fs.du(stripped, total=True, withdirs=False))
    return int(fs.size(stripped))
