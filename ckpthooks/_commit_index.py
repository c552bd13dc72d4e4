"""The commit index: a per-folder cache of the manifests committed in a local folder.

Finding "last" or "best" among thousands of checkpoints would otherwise open and parse one manifest
per checkpoint. The writer therefore keeps ``.ckpthooks-index.jsonl`` beside the manifests: one JSON
line per commit, holding the *identity* of the manifest file written (inode, size, modification and
change times in nanoseconds) and the manifest's fields::

    [1,"a.ckpt.manifest.json",[ino,size,mtime_ns,ctime_ns],[layout,"a.ckpt",size,checksum,...]]

The first element is the line format's version; the last one is the record
:mod:`ckpthooks._manifest` makes of a manifest: its fields in a fixed order, after a number that
identifies that order (see ``manifest._RECORD_LAYOUT``; records of another layout are not used).

The index is a cache, never the source of truth. A reader lists the folder, stats each manifest, and
takes a manifest from the index only when a line records that manifest's name *and* its current
identity. Everything else is read from the manifest file as before: a manifest the index lacks
(written by an older ckpthooks, by another tool, or after a lost line), one rewritten or replaced
since its line was written (a different inode or times), or a line that does not parse (a torn last
line after a crash). Lines whose manifest is gone (pruned, removed) are ignored. So an index copied
from another folder, deleted, truncated or stale changes how fast a listing is, never its result.

Writing (local folders only; :func:`record_commit` is called by
:func:`ckpthooks._catalog.write_manifest` after the manifest is durable):

- A folder gets an index once it holds :data:`MIN_CHECKPOINTS` committed checkpoints; smaller
  folders are listed quickly without one. Until then, the writer looks at the folder's size now and
  then (at its first commit there, then after as many commits as are missing to the threshold).
- Each commit appends one whole line with one ``write`` on a file opened with ``O_APPEND``. The
  append is not fsynced: the manifest, written and fsynced before it, is what commits; a line lost
  in a power failure only means that manifest is read from its file. A line cut short is ignored,
  and the next append starts on a new line.
- Compaction: when the index has doubled in size since this process last checked it (and at its
  first commit into the folder), the writer compares it with the folder. When more than half of its
  lines are dead (their manifest was removed or rewritten), or more than a quarter of the committed
  manifests have no line, it writes a fresh index (temporary file, fsync, rename). Pruning with
  ``save_top_k`` therefore keeps the index proportional to the folder, at an amortized constant cost
  per commit.

Object stores (every non-local URL) cannot append, and rewriting an object per commit would make
every save slower as the history grows: remote folders get no index, and listing them reads every
manifest (one GET each). An index object found there (copied from a local folder) is not read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ckpthooks._io.durable import atomic_write

log = logging.getLogger(__name__)

#: The index file's name in each local checkpoint folder.
INDEX_NAME = ".ckpthooks-index.jsonl"
#: Version of the line format; lines of another version are ignored.
INDEX_VERSION = 1
#: A folder gets an index once it holds this many committed checkpoints.
MIN_CHECKPOINTS = 64
#: An index is compared with its folder again once it has grown to twice its size at the last
#: comparison, and at least to this many bytes.
CHECK_AFTER_BYTES = 64 * 1024

#: What identifies one version of a manifest file: (inode, size, mtime_ns, ctime_ns).
Identity = tuple[int, int, int, int]


def identity_of(st: os.stat_result) -> Identity:
    """The identity of a manifest file from its ``stat``."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def index_path(folder: str) -> str:
    return os.path.join(folder, INDEX_NAME)


@dataclass(frozen=True)
class Entry:
    """One manifest as the index records it: the manifest file's name, its identity, its record."""

    name: str
    identity: Identity
    record: list[Any]


def encode(entry: Entry) -> bytes:
    """One index line, newline included."""
    line = [INDEX_VERSION, entry.name, list(entry.identity), entry.record]
    return (json.dumps(line, separators=(",", ":")) + "\n").encode()


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _entry(data: Any) -> Entry | None:
    """The entry a decoded line holds, or ``None`` for anything else."""
    if type(data) is not list or len(data) != 4 or data[0] != INDEX_VERSION:
        return None
    _, name, identity, record = data
    if type(name) is not str or type(record) is not list or type(identity) is not list or len(identity) != 4:
        return None
    ino, size, mtime, ctime = identity
    if type(ino) is not int or type(size) is not int or type(mtime) is not int or type(ctime) is not int:
        return None
    return Entry(name, (ino, size, mtime, ctime), record)


@dataclass
class Index:
    """A parsed index: the records of its usable lines by (manifest name, identity)."""

    entries: dict[tuple[str, Identity], list[Any]]
    lines: int  #: complete lines, usable or not
    size: int  #: bytes read

    def get(self, name: str, identity: Identity) -> list[Any] | None:
        return self.entries.get((name, identity))


def load(folder: str) -> Index | None:
    """The index of the local ``folder``, or ``None`` when it has none or it cannot be read.

    Bytes after the last newline are an append cut short and are ignored, as is every line that
    does not parse as a line of this version.
    """
    try:
        with open(index_path(folder), "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.debug("not using the commit index of %s: %s", folder, exc)
        return None
    lines = [raw for raw in data[: data.rfind(b"\n") + 1].split(b"\n") if raw.strip()]
    try:
        decoded = json.loads(b"[" + b",".join(lines) + b"]")  # one parse for the usual, intact index
    except (ValueError, RecursionError):
        decoded = [_loads(raw) for raw in lines]
    entries: dict[tuple[str, Identity], list[Any]] = {}
    for item in decoded:
        entry = _entry(item)
        if entry is not None:
            entries[(entry.name, entry.identity)] = entry.record
    return Index(entries, len(lines), len(data))


def append(folder: str, line: bytes) -> int | None:
    """Append ``line`` to the index of ``folder``; returns the index's size afterwards, or ``None``
    when the folder has no index (none is created here)."""
    flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(index_path(folder), flags)
    except FileNotFoundError:
        return None
    try:
        if os.fstat(fd).st_size:
            os.lseek(fd, -1, os.SEEK_END)
            if os.read(fd, 1) != b"\n":
                line = b"\n" + line  # the last append was cut short: its rest stays an unusable line
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def rewrite(folder: str, entries: Iterable[Entry]) -> int:
    """Replace the index of ``folder`` with ``entries`` atomically; returns its size."""
    target = index_path(folder)
    data = b"".join(encode(entry) for entry in entries)
    with atomic_write(target) as handle:
        handle.write(data)
    return len(data)


@dataclass
class Scan:
    """What a folder holds, compared with its index (see :func:`ckpthooks._catalog.scan_for_index`)."""

    entries: list[Entry]  #: every committed manifest, in listing order
    from_index: int  #: how many of them the index had (name and identity)
    index_lines: int  #: lines of the index (0 without one)
    index_size: int  #: bytes of the index (0 without one)


ScanFolder = Callable[[str], Scan]


@dataclass
class _FolderState:
    checked_size: int = -1  #: the index's size when this process last compared it with the folder
    countdown: int = 0  #: commits until the next look at a folder without an index
    warned: bool = False  #: a failure to update the index was logged as a warning already


_lock = threading.Lock()
_folders: dict[str, _FolderState] = {}


def needs_rewrite(scan: Scan) -> bool:
    """More than half of the index's lines are dead, or more than a quarter of the committed
    manifests are missing from it."""
    dead = scan.index_lines - scan.from_index
    missing = len(scan.entries) - scan.from_index
    return dead * 2 > scan.index_lines or missing * 4 > len(scan.entries)


def record_commit(folder: str, entry: Entry, scan: ScanFolder) -> None:
    """Add the manifest just committed in the local ``folder`` to its index, creating or compacting
    the index when due (see the module's documentation). Never raises for the index's sake: the
    commit is complete already, and a failure here only leaves listings slower."""
    key = os.path.abspath(folder)
    with _lock:
        state = _folders.setdefault(key, _FolderState())
        try:
            size = append(folder, encode(entry))
            if size is None:
                if state.countdown > 0:
                    state.countdown -= 1
                    return
                found = scan(folder)
                if len(found.entries) >= MIN_CHECKPOINTS:
                    state.checked_size = rewrite(folder, found.entries)
                    log.debug("created the commit index of %s (%d checkpoints)", folder, len(found.entries))
                else:
                    state.countdown = MIN_CHECKPOINTS - len(found.entries) - 1
                return
            if state.checked_size >= 0 and size <= 2 * max(state.checked_size, CHECK_AFTER_BYTES):
                return
            state.checked_size = _compact_if_due(folder, scan)
        except Exception as exc:
            state.checked_size = -1
            log.log(
                logging.DEBUG if state.warned else logging.WARNING,
                "committed, but could not update the commit index of %s (listing it reads every manifest "
                "instead): %s", folder, exc,
            )  # fmt: skip
            state.warned = True


def maintain(folder: str, scan: ScanFolder) -> None:
    """Compact the index of the local ``folder`` now if it is due (after deleting checkpoints); a
    folder without an index keeps having none."""
    key = os.path.abspath(folder)
    with _lock:
        state = _folders.setdefault(key, _FolderState())
        try:
            if os.path.exists(index_path(folder)):
                state.checked_size = _compact_if_due(folder, scan)
        except Exception as exc:
            log.warning("could not compact the commit index of %s: %s", folder, exc)


def _compact_if_due(folder: str, scan: ScanFolder) -> int:
    found = scan(folder)
    if not needs_rewrite(found):
        return found.index_size
    size = rewrite(folder, found.entries)
    log.debug(
        "compacted the commit index of %s: %d lines, %d usable, now %d",
        folder, found.index_lines, found.from_index, len(found.entries),
    )  # fmt: skip
    return size


def forget_state() -> None:
    """Forget what this process remembers about folders (used by tests)."""
    with _lock:
        _folders.clear()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it at the fork
    _folders.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
