"""Commit manifests: the small JSON file written after a checkpoint's data is durable.

A checkpoint counts as committed only when ``<checkpoint>.manifest.json`` exists, parses, and names
that checkpoint. "last", "best", listing and auto-resume read manifests, never whole checkpoints.
Deleting a checkpoint removes its manifest first, so a crash in between leaves orphaned data, never
a manifest that points at nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ckpthooks import commit_index
from ckpthooks._version import FORMAT_VERSION, __version__
from ckpthooks.exceptions import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    IncompatibleFormatError,
    StorageError,
)
from ckpthooks.io import paths
from ckpthooks.io.durable import atomic_write, fsync_dir
from ckpthooks.io.durable import storage_error as _storage_error
from ckpthooks.io.hashing import folder_base, hash_local_file, hash_local_folder, hash_stream, read_chunks
from ckpthooks.io.regular_file import open_regular
from ckpthooks.io.retry import call_with_retry

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "ckpthooks.manifest"
MANIFEST_VERSION = 1

VerifyMode = Literal["full", "size", "off"]

#: A manifest is about a kilobyte; a file named like one and larger than this is not read whole.
MAX_MANIFEST_BYTES = 1 << 20
#: How deep the JSON of a manifest's ``extra`` may nest.
MAX_MANIFEST_DEPTH = 32


def manifest_path(checkpoint_path: str) -> str:
    return checkpoint_path.rstrip("/") + MANIFEST_SUFFIX


@dataclass
class Manifest:
    """What is known about one committed checkpoint without opening it."""

    file: str
    size: int
    checksum: str | None
    algorithm: str | None
    epoch: int
    global_step: int
    metrics: dict[str, float] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    weights_only: bool = False
    writer: str | None = None
    library_version: str = __version__
    format_version: int = FORMAT_VERSION
    plugins: dict[str, str | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        payload = {"format": MANIFEST_FORMAT, "manifest_version": MANIFEST_VERSION, **asdict(self)}
        return json.dumps(payload, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "the manifest") -> Manifest:
        return parse_manifest(text.encode(), source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "the manifest") -> Manifest:
        """A manifest from its decoded JSON object (what :meth:`from_json` parses)."""
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ValueError("not a ckpthooks manifest")
        version = data.get("manifest_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > MANIFEST_VERSION:
            raise IncompatibleFormatError(
                f"{source} was written by a newer ckpthooks: its manifest version is {version}, but "
                f"ckpthooks {__version__} reads versions up to {MANIFEST_VERSION}. Upgrade ckpthooks "
                "(pip install --upgrade ckpthooks) to use this checkpoint."
            )
        fields = {k: v for k, v in data.items() if k in _MANIFEST_FIELDS}
        missing = sorted(_REQUIRED_FIELDS - fields.keys())
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        manifest = cls(**fields)
        manifest.validate()
        return manifest

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field of the wrong type or size (a manifest read
        from disk is data from anywhere: a string where a number belongs must not become a
        ``TypeError`` far away, in sorting or comparing)."""
        _check_str(self.file, "file", allow_none=False)
        if not self.file:
            raise ValueError("'file' is empty")
        for name in ("size", "epoch", "global_step", "format_version"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name!r} must be a whole number of at least 0, not {_shown(value)}")
        _check_str(self.checksum, "checksum")
        _check_str(self.algorithm, "algorithm")
        _check_str(self.writer, "writer")
        _check_str(self.library_version, "library_version", allow_none=False)
        if not _is_number(self.created):
            raise ValueError(f"'created' must be a number (seconds since the epoch), not {_shown(self.created)}")
        if not isinstance(self.weights_only, bool):
            raise ValueError(f"'weights_only' must be true or false, not {_shown(self.weights_only)}")
        if not isinstance(self.metrics, dict) or not all(
            isinstance(k, str) and _is_number(v) for k, v in self.metrics.items()
        ):
            raise ValueError("'metrics' must map metric names to numbers")
        if not isinstance(self.plugins, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in self.plugins.items()
        ):
            raise ValueError("'plugins' must map plugin names to versions (strings or null)")
        if not isinstance(self.extra, dict):
            raise ValueError(f"'extra' must be an object, not {_shown(self.extra)}")
        if _depth(self.extra) > MAX_MANIFEST_DEPTH:
            raise ValueError(f"'extra' is nested more than {MAX_MANIFEST_DEPTH} levels deep")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _check_str(value: Any, name: str, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str):
        raise ValueError(f"{name!r} must be a string{' or null' if allow_none else ''}, not {_shown(value)}")


def _depth(value: Any) -> int:
    """How deep ``value`` nests (iteratively: a hostile manifest must not exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_MANIFEST_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def parse_manifest(data: bytes, source: str = "the manifest") -> Manifest:
    """A manifest from the bytes of its file; ``ValueError`` when they are not a valid one (too
    large, not UTF-8 JSON, nested too deep, fields of the wrong type), ``IncompatibleFormatError``
    for a newer manifest version."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ValueError(f"it is larger than {MAX_MANIFEST_BYTES} bytes, so it is not a ckpthooks manifest")
    try:
        text = data.decode()
        decoded = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ValueError(f"it is not UTF-8 text ({exc.reason})") from None
    except RecursionError:
        raise ValueError("its JSON is nested too deep to be a ckpthooks manifest") from None
    return Manifest.from_dict(decoded, source)


_MANIFEST_FIELDS = frozenset(Manifest.__dataclass_fields__)
_REQUIRED_FIELDS = frozenset(("file", "size", "checksum", "algorithm", "epoch", "global_step"))
#: The fields of a manifest in the order of its commit index record (see :mod:`ckpthooks.commit_index`).
_RECORD_FIELDS = tuple(Manifest.__dataclass_fields__)
#: Identifies the record layout: records written with other fields or another manifest version are
#: not used (their manifests are read from their files).
_RECORD_LAYOUT = zlib.crc32(f"{MANIFEST_FORMAT}/{MANIFEST_VERSION}:{','.join(_RECORD_FIELDS)}".encode())


@dataclass(frozen=True)
class CommittedCheckpoint:
    """A checkpoint path with its parsed manifest."""

    path: str
    manifest: Manifest

    @property
    def sort_key(self) -> tuple[int, float]:
        return (self.manifest.global_step, self.manifest.created)


def write_manifest(
    checkpoint_path: str, manifest: Manifest, storage_options: Mapping[str, Any] | None = None
) -> str:
    """Commit ``checkpoint_path`` by writing its manifest atomically; returns the manifest path."""
    target = manifest_path(checkpoint_path)
    data = manifest.to_json().encode()
    try:
        if paths.is_local(target):
            local = paths.local_path(target)
            with atomic_write(local) as handle:
                handle.write(data)
                written = os.fstat(handle.fileno()).st_ino
            _index_commit(local, written, data)
        else:
            fs = paths.filesystem(target, storage_options)
            # one PUT: atomic on object stores
            call_with_retry(lambda: fs.pipe_file(paths.fs_path(fs, target), data), action="write", path=target)
    except StorageError:
        raise
    except OSError as exc:
        raise _storage_error(f"commit {checkpoint_path}: could not write", target, exc) from exc
    return target


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
    target = manifest_path(checkpoint_path)
    try:
        if paths.is_local(target):
            with contextlib.suppress(FileNotFoundError):
                os.remove(paths.local_path(target))
            fsync_dir(os.path.dirname(paths.local_path(target)))
        else:
            fs = paths.filesystem(target, storage_options)
            stripped = paths.fs_path(fs, target)

            def remove() -> None:
                if fs.exists(stripped):
                    fs.rm_file(stripped)

            call_with_retry(remove, action="delete", path=target)
    except StorageError:
        raise
    except OSError as exc:
        raise _storage_error(f"uncommit {checkpoint_path}: could not delete", target, exc) from exc


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
    return str(exc) if isinstance(exc, ValueError) and not isinstance(exc, json.JSONDecodeError) else (
        f"{type(exc).__name__}: {exc}"
    )


def _invalid(target: str, reason: str, strict: bool) -> None:
    if strict:
        raise CorruptCheckpointError(
            f"{target} is not a valid ckpthooks manifest ({reason}). Remove it, or re-commit the "
            "checkpoint beside it with `ckpthooks convert --adopt FILE FILE`, to use the checkpoint."
        )
    log.warning("ignoring unreadable manifest %s: %s", target, reason)


def _read_manifest_bytes(target: str, storage_options: Mapping[str, Any] | None) -> bytes:
    """At most :data:`MAX_MANIFEST_BYTES` + 1 bytes of the manifest file ``target``."""
    if paths.is_local(target):
        local = paths.local_path(target)
        with open_regular(local, target) as handle:  # a FIFO or a device is refused, never read
            return handle.read(MAX_MANIFEST_BYTES + 1)
    fs = paths.filesystem(target, storage_options)
    # a range read from 0 is one GET (s3fs asks for the size first otherwise: HEAD, and a listing
    # when the manifest does not exist)
    data: bytes = call_with_retry(
        lambda: fs.cat_file(paths.fs_path(fs, target), start=0, end=MAX_MANIFEST_BYTES + 1),
        action="read",
        path=target,
    )
    return data


#: Suffix of the committed copy of a local checkpoint kept while it is being overwritten.
PREVIOUS_SUFFIX = ".ckpthooks-prev"


def previous_path(checkpoint_path: str) -> str:
    """Where :func:`keep_previous` keeps the old version of ``checkpoint_path``."""
    return paths.join(paths.dirname(checkpoint_path), f".{paths.basename(checkpoint_path)}{PREVIOUS_SUFFIX}")


def previous_of(name: str) -> str | None:
    """The checkpoint name a ``.<name>.ckpthooks-prev`` file keeps, or ``None`` for other names."""
    if name.startswith(".") and name.endswith(PREVIOUS_SUFFIX):
        return name[1 : -len(PREVIOUS_SUFFIX)] or None
    return None


def keep_previous(checkpoint_path: str) -> str | None:
    """Before a committed local checkpoint is overwritten, keep it committed under a hidden name.

    Overwriting uncommits the old version before the new one is committed; without this, a crash in
    between would leave no committed checkpoint when it was the only one (``save_top_k=0`` with
    ``save_last=True``). The old data is hard-linked (no copy) to ``.<name>.ckpthooks-prev`` and
    committed there; "last" finds it until :func:`drop_previous` removes it after the new commit.
    A folder (a sharded checkpoint) cannot be hard-linked: it is renamed there instead, so that the
    new folder can be renamed into place. Returns the kept path, or ``None`` where this is not
    possible (remote storage, no hard links).
    """
    if not paths.is_local(checkpoint_path):
        return None
    manifest = read_manifest(checkpoint_path)
    if manifest is None:
        return None
    source = paths.local_path(checkpoint_path)
    kept = previous_path(source)
    drop_previous(kept)
    try:
        if os.path.isdir(source) and not os.path.islink(source):
            os.rename(source, kept)
            fsync_dir(os.path.dirname(source))
        else:
            os.link(source, kept)
    except OSError as exc:
        log.info("cannot keep the previous version of %s while it is overwritten: %s", checkpoint_path, exc)
        return None
    manifest.file = paths.basename(kept)
    write_manifest(kept, manifest)
    return kept


def drop_previous(kept: str | None) -> None:
    """Uncommit and delete what :func:`keep_previous` kept (a missing one is fine)."""
    if kept is None:
        return
    remove_manifest(kept)
    local = paths.local_path(kept)
    if os.path.isdir(local) and not os.path.islink(local):
        shutil.rmtree(local)  # a kept folder (a sharded checkpoint)
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(local)


def _is_manifest_name(name: str) -> bool:
    """A committed manifest's file name: ``<name>.manifest.json`` (not hidden), or the manifest of a
    kept previous version."""
    return name.endswith(MANIFEST_SUFFIX) and (
        not name.startswith(".") or previous_of(name[: -len(MANIFEST_SUFFIX)]) is not None
    )


def _from_record(record: list[Any], file: str) -> Manifest | None:
    """The manifest of checkpoint ``file`` a commit index record holds, or ``None`` when the record
    is not one of this layout or names another file (the caller then reads the manifest file)."""
    if len(record) != len(_RECORD_FIELDS) + 1 or record[0] != _RECORD_LAYOUT:
        return None
    try:
        manifest = Manifest(*record[1:])
        manifest.validate()
    except (TypeError, ValueError):
        return None
    return manifest if manifest.file == file else None


def _record_of(manifest: Manifest) -> list[Any]:
    return [_RECORD_LAYOUT, *(getattr(manifest, name) for name in _RECORD_FIELDS)]


def _committed_in_local_folder(folder: str, files: list[str]) -> Iterator[CommittedCheckpoint]:
    """The committed checkpoints of one local folder, from the names in its listing: from the
    commit index where a line matches the manifest file's identity, else from the manifest."""
    index = commit_index.load(folder) if commit_index.INDEX_NAME in files else None
    records = index.entries if index is not None else None
    prefix = os.path.join(folder, "")
    for name in sorted(files):
        if not name.endswith(MANIFEST_SUFFIX) or not _is_manifest_name(name):
            continue
        file = name[: -len(MANIFEST_SUFFIX)]
        checkpoint = prefix + file
        manifest = None
        if records is not None:
            try:
                record = records.get((name, commit_index.identity_of(os.stat(prefix + name))))
            except OSError:
                record = None
            if record is not None:
                manifest = _from_record(record, file)
        if manifest is None:
            manifest = read_manifest(checkpoint)
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
            manifest = parse_manifest(handle.read(MAX_MANIFEST_BYTES + 1), source=path)
    except (OSError, ValueError, TypeError, CorruptCheckpointError, IncompatibleFormatError):
        return None
    name = os.path.basename(path)
    if manifest.file != name[: -len(MANIFEST_SUFFIX)]:
        return None
    return commit_index.Entry(name, identity, _record_of(manifest))


def maintain_index(folder: str) -> None:
    """Compact the commit index of ``folder`` if enough of it is dead (after deleting checkpoints);
    nothing for remote folders and folders without an index."""
    if paths.is_local(folder):
        commit_index.maintain(paths.local_path(folder), scan_for_index)


def iter_committed(
    root: str, storage_options: Mapping[str, Any] | None = None, recursive: bool = True
) -> Iterator[CommittedCheckpoint]:
    """Every committed checkpoint below ``root`` (manifests only; no checkpoint is opened).

    In a local folder with a commit index (see :mod:`ckpthooks.commit_index`), manifests whose file
    is unchanged since their commit come from the index; the others are read.
    """
    root = paths.normalize(root)
    if paths.is_local(root):
        if not os.path.isdir(root):
            return
        walker = os.walk(root) if recursive else [next(os.walk(root))]
        for folder, _dirs, files in walker:
            yield from _committed_in_local_folder(folder, files)
        return
    fs = paths.filesystem(root, storage_options)
    base = paths.fs_path(fs, root)
    paths.forget_listings(fs, base)  # cached listings may predate other writers' commits
    pattern = "**/*" + MANIFEST_SUFFIX if recursive else "*" + MANIFEST_SUFFIX

    def listing() -> list[str]:
        if not fs.exists(base):
            return []
        return sorted(str(found) for found in fs.glob(f"{base.rstrip('/')}/{pattern}"))

    for found in call_with_retry(listing, action="list", path=root):
        checkpoint = paths.unstrip(fs, root, str(found)[: -len(MANIFEST_SUFFIX)])
        manifest = read_manifest(checkpoint, storage_options)
        if manifest is not None:
            yield CommittedCheckpoint(checkpoint, manifest)


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
    fs = paths.filesystem(checkpoint_path, storage_options)
    target = paths.fs_path(fs, checkpoint_path)
    fs.invalidate_cache(target)  # a cached listing may predate the write (s3fs: target and parents)
    try:
        size = call_with_retry(lambda: paths.size_on(fs, target), action="read the size of", path=checkpoint_path)
    except FileNotFoundError as exc:
        raise CorruptCheckpointError(
            f"{checkpoint_path} is missing although its manifest commits it"
        ) from exc
    check_size(checkpoint_path, size, manifest)
    if mode == "full" and manifest.checksum and manifest.algorithm:
        algorithm = manifest.algorithm

        def checksum() -> str:
            base = folder_base(algorithm)
            if base is not None:  # a folder (a sharded checkpoint): its files, each hashed
                if not paths.is_local(checkpoint_path):
                    raise LookupError(f"folder checksums ({algorithm}) are checked on local folders only")
                return hash_local_folder(paths.local_path(checkpoint_path), base, progress)[1]
            if paths.is_local(checkpoint_path):
                return hash_local_file(paths.local_path(checkpoint_path), algorithm, progress)[1]
            with fs.open(target, "rb") as handle:
                chunks: Iterable[bytes] = read_chunks(handle)
                if progress is not None:
                    chunks = _reporting(chunks, progress)
                return hash_stream(chunks, algorithm)[1]

        try:
            digest = call_with_retry(checksum, action="read", path=checkpoint_path)
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


def _reporting(chunks: Iterable[bytes], progress: Callable[[int], None]) -> Iterator[bytes]:
    for chunk in chunks:
        progress(len(chunk))
        yield chunk
