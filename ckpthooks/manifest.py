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
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ckpthooks._version import FORMAT_VERSION, __version__
from ckpthooks.exceptions import CheckpointNotFoundError, CorruptCheckpointError, StorageError
from ckpthooks.io import paths
from ckpthooks.io.hashing import hash_stream, read_chunks
from ckpthooks.io.torch_io import fsync_dir, temp_name_for

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "ckpthooks.manifest"
MANIFEST_VERSION = 1

VerifyMode = Literal["full", "size", "off"]


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
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ValueError("not a ckpthooks manifest")
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


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
            tmp = temp_name_for(local)
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, local)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
            fsync_dir(os.path.dirname(local))
        else:
            fs = paths.filesystem(target, storage_options)
            fs.pipe_file(paths.fs_path(fs, target), data)  # one PUT: atomic on object stores
    except OSError as exc:
        raise StorageError(f"could not commit {checkpoint_path}: writing {target} failed: {exc}") from exc
    return target


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
            if fs.exists(stripped):
                fs.rm_file(stripped)
    except OSError as exc:
        raise StorageError(f"could not uncommit {checkpoint_path}: {exc}") from exc


def read_manifest(
    checkpoint_path: str, storage_options: Mapping[str, Any] | None = None
) -> Manifest | None:
    """The manifest of ``checkpoint_path``, or ``None`` if it is not committed."""
    target = manifest_path(checkpoint_path)
    try:
        if paths.is_local(target):
            with open(paths.local_path(target), "rb") as handle:
                text = handle.read().decode()
        else:
            fs = paths.filesystem(target, storage_options)
            text = fs.cat_file(paths.fs_path(fs, target)).decode()
        manifest = Manifest.from_json(text)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
        log.warning("ignoring unreadable manifest %s: %s", target, exc)
        return None
    if manifest.file != paths.basename(checkpoint_path):
        log.warning("ignoring manifest %s: it names %r", target, manifest.file)
        return None
    return manifest


def iter_committed(
    root: str, storage_options: Mapping[str, Any] | None = None, recursive: bool = True
) -> Iterator[CommittedCheckpoint]:
    """Every committed checkpoint below ``root`` (manifests only; no checkpoint is opened)."""
    root = paths.normalize(root)
    if paths.is_local(root):
        if not os.path.isdir(root):
            return
        walker = os.walk(root) if recursive else [next(os.walk(root))]
        for folder, _dirs, files in walker:
            for name in sorted(files):
                if name.endswith(MANIFEST_SUFFIX) and not name.startswith("."):
                    checkpoint = os.path.join(folder, name[: -len(MANIFEST_SUFFIX)])
                    manifest = read_manifest(checkpoint)
                    if manifest is not None:
                        yield CommittedCheckpoint(checkpoint, manifest)
        return
    fs = paths.filesystem(root, storage_options)
    base = paths.fs_path(fs, root)
    if not fs.exists(base):
        return
    pattern = "**/*" + MANIFEST_SUFFIX if recursive else "*" + MANIFEST_SUFFIX
    for found in sorted(fs.glob(f"{base.rstrip('/')}/{pattern}")):
        checkpoint = paths.unstrip(fs, root, str(found)[: -len(MANIFEST_SUFFIX)])
        manifest = read_manifest(checkpoint, storage_options)
        if manifest is not None:
            yield CommittedCheckpoint(checkpoint, manifest)


def newest_committed(
    roots: list[str], storage_options: Mapping[str, Any] | None = None
) -> list[CommittedCheckpoint]:
    """Committed checkpoints under ``roots``, newest first by global step (then creation time)."""
    seen: dict[str, CommittedCheckpoint] = {}
    for root in roots:
        for item in iter_committed(root, storage_options):
            seen.setdefault(item.path, item)
    return sorted(seen.values(), key=lambda c: c.sort_key, reverse=True)


def verify_checkpoint(
    checkpoint_path: str,
    manifest: Manifest | None = None,
    mode: VerifyMode = "full",
    storage_options: Mapping[str, Any] | None = None,
) -> Manifest:
    """Check size (and checksum, with ``mode="full"``) against the manifest; return the manifest.

    Raises :class:`CheckpointNotFoundError` when the checkpoint is not committed, and
    :class:`CorruptCheckpointError` naming what differs otherwise.
    """
    if manifest is None:
        manifest = read_manifest(checkpoint_path, storage_options)
        if manifest is None:
            raise CheckpointNotFoundError(
                f"{checkpoint_path} is not a committed checkpoint (no valid {MANIFEST_SUFFIX} "
                "beside it); it may be from an interrupted save"
            )
    if mode == "off":
        return manifest
    fs = paths.filesystem(checkpoint_path, storage_options)
    target = paths.fs_path(fs, checkpoint_path)
    try:
        size = int(fs.size(target))
    except FileNotFoundError as exc:
        raise CorruptCheckpointError(
            f"{checkpoint_path} is missing although its manifest commits it"
        ) from exc
    if size != manifest.size:
        raise CorruptCheckpointError(
            f"{checkpoint_path} has {size} bytes but its manifest records {manifest.size}: "
            "the file was truncated or replaced after it was committed"
        )
    if mode == "full" and manifest.checksum and manifest.algorithm:
        try:
            with fs.open(target, "rb") as handle:
                _, digest = hash_stream(read_chunks(handle), manifest.algorithm)
        except LookupError as exc:
            log.warning("cannot verify the checksum of %s: %s; checked its size only", checkpoint_path, exc)
            return manifest
        if digest != manifest.checksum:
            raise CorruptCheckpointError(
                f"{checkpoint_path} fails its {manifest.algorithm} checksum (file {digest}, manifest "
                f"{manifest.checksum}): its bytes changed after it was committed"
            )
    return manifest
