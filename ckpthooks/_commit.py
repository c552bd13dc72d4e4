"""The commit protocol, in one place: a checkpoint is committed exactly when its manifest is valid.

Every way a checkpoint comes to be (a save, ``ckpthooks copy``, ``convert``, a hard-linked
``last``, a collective save) and every way it goes (pruning, an overwrite, an interrupted save
cleaned up at the next start) follows these rules:

1. **Data durable, manifest last.** The data is written and made durable first; the manifest,
   written all or nothing (:meth:`~ckpthooks._io.location.Location.replace_with`), is the commit.
2. **An overwrite loses nothing.** A committed checkpoint about to be overwritten is kept under
   its hidden previous-version name ``.<name>.ckpthooks-prev`` (hard-linked, a folder renamed),
   committed there, then uncommitted at its own name. A crash before the new commit leaves the
   previous version committed ("last" finds it); after the commit it is dropped. A failed
   overwrite whose old bytes are intact commits them again (:func:`recommit_if_intact`).
3. **In-place writes are announced.** Where data cannot be renamed into place
   (:attr:`~ckpthooks._io.location.Location.renames_atomically` is false: object stores), a
   *pending marker* ``.<name>.ckpthooks-pending`` is written before the data and removed after
   the commit, so that the next start can delete the data of a save that crashed in between.
4. **Deletion in reverse:** uncommit (manifest) first, then the data, then a kept previous
   version (:func:`remove`).
5. **Leftovers, and nothing else, are cleaned** at the next start (:func:`clean_leftovers`):
   temporary files whose writer is gone, previous versions whose checkpoint is committed again,
   and the data of stale pending markers whose checkpoint never committed. Files without one of
   our markers are never touched.

:class:`~ckpthooks._store.CheckpointStore` decides *what* to write (through the storage hooks and
the plugin backends) and calls :func:`commit` to make it count; the catalog
(:mod:`ckpthooks._catalog`) reads and writes the manifests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ckpthooks._catalog import read_manifest, remove_manifest, verify_checkpoint, write_manifest
from ckpthooks._io import durable, paths
from ckpthooks._io.base import SaveResult
from ckpthooks._io.durable import STALE_AFTER, is_leftover, pid_running, storage_error, temp_name_for
from ckpthooks._io.location import Location
from ckpthooks._manifest import Manifest, previous_of, previous_path
from ckpthooks.exceptions import CheckpointError, StorageError

log = logging.getLogger(__name__)

__all__ = [
    "PENDING_STALE_AFTER",
    "PENDING_SUFFIX",
    "STALE_AFTER",
    "clean_leftovers",
    "commit",
    "commit_link",
    "drop_previous",
    "finish_overwrite",
    "is_leftover",
    "keep_previous",
    "left_previous",
    "pending_checkpoint_name",
    "pending_is_stale",
    "pending_marker_path",
    "prepare_overwrite",
    "previous_manifest",
    "recommit_folder",
    "recommit_if_intact",
    "remove",
    "remove_pending_marker",
    "write_pending_marker",
]

#: A pending marker written by another host (whose writer cannot be checked) is stale after this
#: long; generous, because a large upload over a slow link takes a while.
PENDING_STALE_AFTER = 2 * 60 * 60.0
#: Suffix of the pending markers of in-place saves: ``.<checkpoint name>.ckpthooks-pending``.
PENDING_SUFFIX = ".ckpthooks-pending"
PENDING_FORMAT = "ckpthooks.pending"


# ---------------------------------------------------------------------- committing


def commit(
    path: str,
    write: Callable[[], SaveResult],
    manifest_for: Callable[[SaveResult], Manifest],
    storage_options: Mapping[str, Any] | None = None,
) -> Manifest:
    """Commit the data ``write()`` puts at ``path`` with the manifest ``manifest_for(result)``,
    by rules 1-3 of this module. A failure raises after the old version (if any) is committed
    again where its bytes are intact."""
    location = Location.of(path, storage_options)
    in_place = not location.renames_atomically
    old = read_manifest(path, storage_options)
    previous = None
    try:
        if old is not None:
            previous = keep_previous(path, storage_options)
            remove_manifest(path, storage_options)
        if in_place:
            write_pending_marker(path, storage_options)
        result = write()
        manifest = manifest_for(result)
        write_manifest(path, manifest, storage_options)
    except BaseException:
        if old is not None:
            recommit_if_intact(path, old, previous, storage_options)
        raise
    finish_overwrite(path, previous or left_previous(path, storage_options))
    if in_place:
        try:
            remove_pending_marker(path, storage_options)
        except OSError as exc:  # committed already; the next start removes the marker
            log.warning("committed %s, but could not remove its pending marker: %s", path, exc)
    log.info("committed checkpoint %s (%d bytes, step %d)", path, manifest.size, manifest.global_step)
    return manifest


def commit_link(source: str, target: str, *, writer: str | None = None) -> Manifest:
    """Commit ``target`` as a second name (a hard link: no second write) of the committed
    checkpoint file ``source``; :class:`~ckpthooks.StorageError` where that is impossible."""
    manifest = read_manifest(source)
    here, there = Location.of(source), Location.of(target)
    if manifest is None or not (here.hard_links and there.hard_links) or here.is_folder():
        raise StorageError(f"cannot link {target} to {source}: not a committed checkpoint file on storage with links")
    previous = keep_previous(target) if read_manifest(target) is not None else None
    remove_manifest(target)
    temporary = Location.of(temp_name_for(there.url))
    try:
        here.link_to(temporary)
        temporary.rename_to(there)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.remove_tree()
        raise StorageError(f"could not link {target} to {source}: {exc}") from exc
    manifest.file = there.name
    manifest.writer = writer
    write_manifest(target, manifest)
    finish_overwrite(target, previous or left_previous(target))
    return manifest


def prepare_overwrite(
    path: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[Manifest | None, str | None]:
    """Before new data goes to ``path``: keep a committed checkpoint there as its previous version
    and uncommit ``path``. Returns the old manifest and the kept previous version (each ``None``
    when there is none) for :func:`finish_overwrite` or a recovery."""
    old = read_manifest(path, storage_options)
    previous = None
    if old is not None:
        previous = keep_previous(path, storage_options)
        remove_manifest(path, storage_options)
    return old, previous


def finish_overwrite(path: str, previous: str | None) -> None:
    """After ``path`` committed: drop the previous version kept for the overwrite."""
    try:
        drop_previous(previous)
    except OSError as exc:  # committed already; the next start removes the kept copy
        log.warning("committed %s, but could not remove its previous version: %s", path, exc)


def remove(path: str, delete_data: Callable[[], None], storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete a checkpoint in reverse commit order: uncommit it, ``delete_data()`` (the backend's
    removal), then the previous version an interrupted overwrite left, which goes with it."""
    remove_manifest(path, storage_options)
    delete_data()
    drop_previous(left_previous(path, storage_options))


# ---------------------------------------------------------------------- recovery


def recommit_if_intact(
    path: str, old: Manifest, previous: str | None, storage_options: Mapping[str, Any] | None = None
) -> None:
    """After a failed overwrite: commit ``path`` again when its bytes are still the old ones (the
    write failed before replacing them), so that a failed save loses nothing; else say truthfully
    what stays committed."""
    try:
        still_committed = read_manifest(path, storage_options) == old
    except (CheckpointError, OSError):
        still_committed = False
    if still_committed:  # the save failed before it uncommitted the old version
        log.info("the failed save left %s unchanged; it stays committed", path)
        with contextlib.suppress(OSError):
            drop_previous(previous)
        return
    if not (old.checksum and old.algorithm):
        _report_uncommitted(path, previous, "its manifest records no checksum to check the bytes by")
        return  # a size match alone cannot tell the old bytes from new ones
    try:
        verify_checkpoint(path, old, "full", storage_options)
        write_manifest(path, old, storage_options)
    except (CheckpointError, OSError) as exc:
        _report_uncommitted(path, previous, str(exc))
        return
    log.info("the failed save left %s unchanged; it is committed again", path)
    with contextlib.suppress(OSError):
        drop_previous(previous)
        if not Location.of(path, storage_options).renames_atomically:
            remove_pending_marker(path, storage_options)


def recommit_folder(path: str, old: Manifest, previous: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """After a failed collective save of a folder checkpoint: rename the kept previous version
    back to ``path`` (when the new folder never arrived there) and commit it again; else it stays
    committed where it is. A kept file is a hard link: :func:`recommit_if_intact` handles files."""
    kept, here = Location.of(previous), Location.of(path, storage_options)
    if not kept.is_folder() or here.exists():
        return
    try:
        if not kept.rename_to(here):
            return
        write_manifest(path, old, storage_options)
        remove_manifest(previous)
    except OSError as exc:
        log.warning("%s stays uncommitted after the failed save; its previous version is %s (%s)", path, kept.url, exc)
        return
    log.info("the failed save left %s unchanged; it is committed again", path)


def _report_uncommitted(path: str, previous: str | None, reason: str) -> None:
    """Say what is true of ``path`` after a failed overwrite that could not commit it again."""
    kept = None
    if previous is not None:
        with contextlib.suppress(CheckpointError, OSError):
            kept = previous if read_manifest(previous) is not None else None
    if kept is not None:
        log.warning(
            "%s is uncommitted after the failed save (%s); its previous version stays committed as "
            '%s, which ckpt_path="last" finds, and the next successful save of %s replaces it',
            path, reason, kept, paths.basename(path),
        )  # fmt: skip
    else:
        log.warning("%s is uncommitted after the failed save (%s)", path, reason)


# ---------------------------------------------------------------------- previous versions


def keep_previous(checkpoint_path: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """Before a committed checkpoint is overwritten, keep it committed under a hidden name.

    Overwriting uncommits the old version before the new one is committed; without this, a crash in
    between would leave no committed checkpoint when it was the only one (``save_top_k=0`` with
    ``save_last=True``). The old data is hard-linked (no copy) to ``.<name>.ckpthooks-prev`` and
    committed there; "last" finds it until :func:`drop_previous` removes it after the new commit.
    A folder (a sharded checkpoint) cannot be hard-linked: it is renamed there instead, so that the
    new folder can be renamed into place. Returns the kept path, or ``None`` where the storage
    cannot rename or link (object stores: their data is written in place).
    """
    here = Location.of(checkpoint_path, storage_options)
    if not here.renames_atomically:
        return None
    manifest = read_manifest(checkpoint_path, storage_options)
    if manifest is None:
        return None
    kept = Location.of(previous_path(here.url), storage_options)
    drop_previous(kept.url)
    try:
        kept_it = here.rename_to(kept) if here.is_folder() else here.link_to(kept)
    except OSError as exc:
        log.info("cannot keep the previous version of %s while it is overwritten: %s", checkpoint_path, exc)
        return None
    if not kept_it:
        return None
    manifest.file = kept.name
    write_manifest(kept.url, manifest, storage_options)
    return kept.url


def drop_previous(kept: str | None) -> None:
    """Uncommit and delete what :func:`keep_previous` kept (a missing one is fine)."""
    if kept is None:
        return
    remove_manifest(kept)
    Location.of(kept).remove_tree()


def left_previous(path: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The kept previous version of ``path`` an earlier overwrite left (a kill came before its
    commit), or ``None``: once ``path`` is committed again it is not needed."""
    here = Location.of(path, storage_options)
    if not here.renames_atomically:
        return None  # no previous versions where data is written in place: nothing to look up
    kept = Location.of(previous_path(here.url), storage_options)
    return kept.url if kept.exists() else None


def previous_manifest(path: str, storage_options: Mapping[str, Any] | None = None) -> Manifest | None:
    """The manifest of the previous version of ``path`` a killed overwrite left committed (what
    commits ``path`` while it is uncommitted), or ``None``."""
    if not Location.of(path, storage_options).renames_atomically:
        return None  # no previous versions where data is written in place: nothing to look up
    return read_manifest(previous_path(paths.normalize(path)))


# ---------------------------------------------------------------------- pending markers


def pending_marker_path(checkpoint_path: str) -> str:
    """The pending marker of ``checkpoint_path``: ``.<name>.ckpthooks-pending`` in the same folder."""
    return paths.join(paths.dirname(checkpoint_path), f".{paths.basename(checkpoint_path)}{PENDING_SUFFIX}")


def pending_checkpoint_name(marker_name: str) -> str | None:
    """The checkpoint name a pending marker's name refers to, or ``None`` for other names."""
    if not (marker_name.startswith(".") and marker_name.endswith(PENDING_SUFFIX)):
        return None
    name = marker_name[1 : -len(PENDING_SUFFIX)]
    return name or None


def write_pending_marker(checkpoint_path: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Record that a save of ``checkpoint_path`` is starting; returns the marker's path."""
    marker = Location.of(pending_marker_path(checkpoint_path), storage_options)
    payload = json.dumps(
        {
            "format": PENDING_FORMAT,
            "file": paths.basename(checkpoint_path),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": durable.PROCESS_TOKEN,
            "created": time.time(),
        },
        sort_keys=True,
    ).encode()
    try:
        marker.replace_with(payload)
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(f"save {checkpoint_path}: could not write", marker.url, exc) from exc
    return marker.url


def remove_pending_marker(checkpoint_path: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove the pending marker of ``checkpoint_path`` (a missing one is fine)."""
    Location.of(pending_marker_path(checkpoint_path), storage_options).remove()


def pending_is_stale(marker: Mapping[str, Any] | None, now: float | None = None) -> bool:
    """Whether the save a pending marker announces can no longer be in flight.

    Never for a marker of this process. For one of this host: when its pid is gone (or the marker
    is older than :data:`STALE_AFTER` and the pid belongs to another process). For another host's,
    or an unreadable marker: when it is older than :data:`PENDING_STALE_AFTER`.
    """
    now = time.time() if now is None else now
    if marker is None:
        return False
    created = marker.get("created")
    age = now - float(created) if isinstance(created, (int, float)) else None
    if marker.get("token") == durable.PROCESS_TOKEN:
        return False
    pid = marker.get("pid")
    if marker.get("host") == socket.gethostname() and isinstance(pid, int):
        if not pid_running(pid):
            return True
        return age is not None and age > STALE_AFTER
    return age is not None and age > PENDING_STALE_AFTER


def _read_marker(marker: Location) -> dict[str, Any] | None:
    try:
        data = json.loads(marker.read_prefix(64 << 10))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, CheckpointError):
        data = None
    if isinstance(data, dict) and data.get("format") == PENDING_FORMAT:
        return data
    # unreadable: judge it by the age the store gives it, as another host's marker
    modified = marker.modified()
    return None if modified is None else {"created": modified}


# ---------------------------------------------------------------------- leftovers


def clean_leftovers(folders: Iterable[str], storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Remove what crashed saves left in ``folders`` (not recursive); returns what went.

    Where data is renamed into place: stale temporary files, and previous versions whose
    checkpoint is committed again. Where data is written in place: the data (and markers) of
    uncommitted saves with a stale pending marker, and stale markers of committed checkpoints.
    A folder that cannot be listed is skipped with a warning.
    """
    removed: list[str] = []
    for url in dict.fromkeys(folders):
        folder = Location.of(url, storage_options)
        try:
            names = folder.names()
        except OSError as exc:
            log.warning("could not look for leftovers of interrupted saves in %s: %s", url, exc)
            continue
        try:
            if folder.renames_atomically:
                removed += _clean_renamed(folder, names)
            else:
                removed += _clean_in_place(folder, names)
        except OSError as exc:
            log.warning("could not remove the leftovers of interrupted saves in %s: %s", url, exc)
    return removed


def _clean_renamed(folder: Location, names: list[str]) -> list[str]:
    removed: list[str] = []
    for name in names:
        entry = folder.child(name)
        if is_leftover(folder.url, name):
            with contextlib.suppress(FileNotFoundError):
                entry.remove_tree()  # a temporary file, or the fresh folder of a sharded save
                removed.append(entry.url)
                log.warning("removed %s, left behind by an interrupted save", entry.url)
        elif _previous_no_longer_needed(folder, name):
            drop_previous(entry.url)
            removed.append(entry.url)
            log.warning("removed %s: the overwrite it protected was committed", name)
    return removed


def _previous_no_longer_needed(folder: Location, name: str) -> bool:
    """A kept previous version whose checkpoint has been committed again. While the checkpoint is
    uncommitted the previous version is its only committed state, and it stays."""
    original = previous_of(name)
    return original is not None and read_manifest(folder.child(original).url, folder.storage_options) is not None


def _clean_in_place(folder: Location, names: list[str]) -> list[str]:
    removed: list[str] = []
    for name in names:
        checkpoint_name = pending_checkpoint_name(name)
        if checkpoint_name is None:
            continue
        marker, checkpoint = folder.child(name), folder.child(checkpoint_name)
        if not pending_is_stale(_read_marker(marker)):
            log.info("keeping %s: its save may still be in progress", marker.url)
            continue
        if read_manifest(checkpoint.url, folder.storage_options) is None and checkpoint.exists():
            checkpoint.remove_tree()  # data first: the marker keeps pointing at it
            removed.append(checkpoint.url)
            log.warning("removed %s, left uncommitted by an interrupted save", checkpoint.url)
        marker.remove_tree()
        removed.append(marker.url)
        log.info("removed the pending marker %s", marker.url)
    return removed
