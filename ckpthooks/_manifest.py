"""The manifest format: the small JSON record written after a checkpoint's data is durable.

A checkpoint counts as committed only when ``<checkpoint>.manifest.json`` exists, parses, and names
that checkpoint. "last", "best", listing and auto-resume read manifests, never whole checkpoints.
This module is the format only: the :class:`Manifest` fields, their validation, parsing and
serializing, the names of a checkpoint's manifest and kept previous version, and the record layout
of the commit index. Putting manifests on storage is :mod:`ckpthooks._catalog`; committing is
:mod:`ckpthooks._store`.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ckpthooks._io import paths
from ckpthooks._version import FORMAT_VERSION, __version__
from ckpthooks.exceptions import IncompatibleFormatError

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
                "to use this checkpoint."
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
#: The fields of a manifest in the order of its commit index record (see :mod:`ckpthooks._commit_index`).
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


