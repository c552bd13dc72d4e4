"""The committed checkpoints on storage: their manifests written, read, removed, listed and
checked against the bytes they describe.

The format of a manifest (its fields, validation, names) is :mod:`ckpthooks._manifest`; this
module puts it on storage through :class:`~ckpthooks._io.location.Location`. Local folders keep a
commit index (:mod:`ckpthooks._commit_index`) so that listing a large folder reads one file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ckpthooks import _commit_index as commit_index
from ckpthooks._io import paths
from ckpthooks._io.durable import storage_error
from ckpthooks._io.location import Location
from ckpthooks._io.regular_file import open_regular
from ckpthooks._manifest import (
    MANIFEST_SUFFIX,
    MAX_MANIFEST_BYTES,
    CommittedCheckpoint,
    Manifest,
    VerifyMode,
    _from_record,
    _is_manifest_name,
    _record_of,
    manifest_path,
    parse_manifest,
)
from ckpthooks.exceptions import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    IncompatibleFormatError,
    StorageError,
)

log = logging.getLogger(__name__)

__all__ = [
    "iter_committed",
    "maintain_index",
    "read_manifest",
    "remove_manifest",
    "scan_for_index",
    "verify_checkpoint",
    "write_manifest",
]


def write_manifest(checkpoint_path: str, manifest: Manifest, storage_options: Mapping[str, Any] | None = None) -> str:
    """Commit ``checkpoint_path`` by writing its manifest atomically; returns the manifest path."""
    target = Location.of(manifest_path(checkpoint_path), storage_options)
    data = manifest.to_json().encode()
    try:
        written = target.replace_with(data)  # one PUT on object stores: atomic there
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(f"commit {checkpoint_path}: could not write", target.url, exc) from exc
    if written is not None:  # a local file: its folder's commit index records it
        _index_commit(target.local, written, data)
    return target.url


def _index_commit(local_manifest: str, written: int, data: bytes) -> None:
    """Record the manifest just committed at ``local_manifest`` (its bytes: ``data``) in its folder's
    commit index, with the identity of the file now at that name: the one written (inode
    ``written``), not a newer one. The record is made from the bytes, as a reader of the file
    would parse them."""
    try:
        st = os.stat(local_manifest)
        record = _record_of(parse_manifest(data, source=local_manifest))
    except (OSError, ValueError, TypeError, IncompatibleFormatError):
        return
    if st.st_ino != written:
        return  # replaced by another writer already: its commit records itself
    entry = commit_index.Entry(os.path.basename(local_manifest), commit_index.identity_of(st), record)
    commit_index.record_commit(os.path.dirname(local_manifest), entry, scan_for_index)


def remove_manifest(checkpoint_path: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Uncommit ``checkpoint_path`` (a missing manifest is fine)."""
    target = Location.of(manifest_path(checkpoint_path), storage_options)
    try:
        target.remove()
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(f"uncommit {checkpoint_path}: could not delete", target.url, exc) from exc


def read_manifest(
    checkpoint_path: str, storage_options: Mapping[str, Any] | None = None, *, strict: bool = False
) -> Manifest | None:
    """The manifest of ``checkpoint_path``, or ``None`` if it is not committed.

    A file named like the manifest that is not a valid one (not a regular file: a FIFO, a device;
    larger than :data:`MAX_MANIFEST_BYTES`; not JSON, or JSON of the wrong shape; naming another
    file) is ignored with a warning, so one junk file never blocks a listing or a resume; with
    ``strict`` (an explicitly named checkpoint) it raises :class:`CorruptCheckpointError` instead.
    A FIFO is never waited on, and no more than :data:`MAX_MANIFEST_BYTES` + 1 bytes are read.
    """
    target = manifest_path(checkpoint_path)
    try:
        data = _read_manifest_bytes(target, storage_options)
        manifest = parse_manifest(data, source=target)
    except FileNotFoundError:
        return None
    except (StorageError, IncompatibleFormatError):
        raise  # storage unreachable: not the same as "not committed"; a newer manifest: upgrade
    except (OSError, ValueError, TypeError, CorruptCheckpointError) as exc:
        _invalid(target, str(exc) if isinstance(exc, CorruptCheckpointError) else _reason(exc), strict)
        return None
    if manifest.file != paths.basename(checkpoint_path):
        # a manifest of another checkpoint (copied or moved here): this one is not committed
        log.warning("ignoring manifest %s: it names %r", target, manifest.file)
        return None
    return manifest


def _reason(exc: BaseException) -> str:
    return (
        str(exc)
        if isinstance(exc, ValueError) and not isinstance(exc, json.JSONDecodeError)
        else (f"{type(exc).__name__}: {exc}")
    )


def _invalid(target: str, reason: str, strict: bool) -> None:
    if strict:
        raise CorruptCheckpointError(
            f"{target} is not a valid ckpthooks manifest ({reason}). Remove it, or re-commit the "
            "checkpoint beside it with `ckpthooks convert --adopt FILE FILE`, to use the checkpoint."
        )
    log.warning("ignoring unreadable manifest %s: %s", target, reason)


def _read_manifest_bytes(target: str, storage_options: Mapping[str, Any] | None) -> bytes:
    """At most :data:`MAX_MANIFEST_BYTES` + 1 bytes of the manifest file ``target`` (a range read
    from 0 is one GET on object stores; a FIFO or a device is refused, never read)."""
    return Location(target, storage_options).read_prefix(MAX_MANIFEST_BYTES + 1)


def _committed_in_folder(folder: Location, files: list[str]) -> Iterator[CommittedCheckpoint]:
    """The committed checkpoints of one folder, from the names in its listing: from the commit
    index (a folder with an operating-system path keeps one) where a line matches the manifest
    file's identity, else from the manifest."""
    local = folder.os_path
    index = commit_index.load(local) if local is not None and commit_index.INDEX_NAME in files else None
    records = index.entries if index is not None else None
    for name in sorted(files):
        if not name.endswith(MANIFEST_SUFFIX) or not _is_manifest_name(name):
            continue
        file = name[: -len(MANIFEST_SUFFIX)]
        checkpoint = folder.child(file).url
        manifest = None
        if records is not None:
            prefix = os.path.join(folder.local, "")
            try:
                record = records.get((name, commit_index.identity_of(os.stat(prefix + name))))
            except OSError:
                record = None
            if record is not None:
                manifest = _from_record(record, file)
        if manifest is None:
            manifest = read_manifest(checkpoint, folder.storage_options)
        if manifest is not None:
            yield CommittedCheckpoint(checkpoint, manifest)


def scan_for_index(folder: str) -> commit_index.Scan:
    """Every committed manifest of the local ``folder`` with its file's identity, taken from the
    commit index where it matches and read from the file otherwise (what the index is rebuilt
    from)."""
    try:
        files = sorted(os.listdir(folder))
    except FileNotFoundError:
        files = []
    index = commit_index.load(folder) if commit_index.INDEX_NAME in files else None
    entries: list[commit_index.Entry] = []
    from_index = 0
    for name in files:
        if not _is_manifest_name(name):
            continue
        path = os.path.join(folder, name)
        try:
            identity = commit_index.identity_of(os.stat(path))
        except OSError:
            continue
        record = index.get(name, identity) if index is not None else None
        if record is not None and _from_record(record, name[: -len(MANIFEST_SUFFIX)]) is not None:
            entries.append(commit_index.Entry(name, identity, record))
            from_index += 1
            continue
        read = _read_for_index(path)
        if read is not None:
            entries.append(read)
    return commit_index.Scan(
        entries, from_index, index.lines if index is not None else 0, index.size if index is not None else 0
    )


def _read_for_index(path: str) -> commit_index.Entry | None:
    """A valid manifest file's record, with the identity of the very file read."""
    try:
        with open_regular(path) as handle:
            identity = commit_index.identity_of(os.fstat(handle.fileno()))
            size = os.fstat(handle.fileno()).st_size  # a read of 1 MiB would allocate it first
            manifest = parse_manifest(handle.read(min(size + 1, MAX_MANIFEST_BYTES + 1)), source=path)
    except (OSError, ValueError, TypeError, CorruptCheckpointError, IncompatibleFormatError):
        return None
    name = os.path.basename(path)
    if manifest.file != name[: -len(MANIFEST_SUFFIX)]:
        return None
    return commit_index.Entry(name, identity, _record_of(manifest))


def maintain_index(folder: str) -> None:
    """Compact the commit index of ``folder`` if enough of it is dead (after deleting checkpoints);
    nothing for folders without an index (those without an operating-system path have none)."""
    local = Location.of(folder).os_path
    if local is not None:
        commit_index.maintain(local, scan_for_index)


def iter_committed(
    root: str, storage_options: Mapping[str, Any] | None = None, recursive: bool = True
) -> Iterator[CommittedCheckpoint]:
    """Every committed checkpoint below ``root`` (manifests only; no checkpoint is opened).

    In a local folder with a commit index (see :mod:`ckpthooks._commit_index`), manifests whose file
    is unchanged since their commit come from the index; the others are read.
    """
    for folder, files in Location.of(root, storage_options).walk(recursive):
        yield from _committed_in_folder(folder, files)


def verify_checkpoint(
    checkpoint_path: str,
    manifest: Manifest | None = None,
    mode: VerifyMode = "full",
    storage_options: Mapping[str, Any] | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Check size (and checksum, with ``mode="full"``) against the manifest; return the manifest.

    ``progress``, when given, is called with the number of bytes of every chunk the checksum reads
    (the command line's progress bar).

    Raises :class:`CheckpointNotFoundError` when the checkpoint is not committed, and
    :class:`CorruptCheckpointError` naming what differs otherwise.
    """
    if manifest is None:
        manifest = read_manifest(checkpoint_path, storage_options, strict=True)
        if manifest is None:
            raise CheckpointNotFoundError(
                f"{checkpoint_path} is not a committed checkpoint (no valid {MANIFEST_SUFFIX} "
                "beside it); it may be from an interrupted save"
            )
    if mode == "off":
        return manifest
    location = Location.of(checkpoint_path, storage_options)
    try:
        size = location.stored_size()
    except FileNotFoundError as exc:
        raise CorruptCheckpointError(f"{checkpoint_path} is missing although its manifest commits it") from exc
    check_size(checkpoint_path, size, manifest)
    if mode == "full" and manifest.checksum and manifest.algorithm:
        try:
            digest = location.digest(manifest.algorithm, progress)
        except LookupError as exc:
            log.warning("cannot verify the checksum of %s: %s; checked its size only", checkpoint_path, exc)
            return manifest
        check_digest(checkpoint_path, digest, manifest)
    return manifest


def check_size(checkpoint_path: str, size: int, manifest: Manifest) -> None:
    """Raise :class:`CorruptCheckpointError` when ``size`` is not the size ``manifest`` records."""
    if size != manifest.size:
        raise CorruptCheckpointError(
            f"{checkpoint_path} has {size} bytes but its manifest records {manifest.size}: "
            "the file was truncated or replaced after it was committed"
        )


def check_digest(checkpoint_path: str, digest: str, manifest: Manifest) -> None:
    """Raise :class:`CorruptCheckpointError` when ``digest`` is not the checksum ``manifest`` records."""
    if digest != manifest.checksum:
        raise CorruptCheckpointError(
            f"{checkpoint_path} fails its {manifest.algorithm} checksum (file {digest}, manifest "
            f"{manifest.checksum}): its bytes changed after it was committed"
        )
