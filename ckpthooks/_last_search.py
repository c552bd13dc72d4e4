"""Where ``ckpt_path="last"`` looks and which committed checkpoint it takes: one rule for the
runtime and for ``ckpthooks ls``.

The folders of a run are:

1. ``default_root_dir`` itself, not its subfolders (they may hold other runs);
2. ``<default_root_dir>/checkpoints`` with its subfolders: the run's checkpoint folder by
   convention (the default policy and the preemption save write there, and so does Lightning's
   layout), so a file saved there by hand belongs to the run;
3. the folders every policy writes to (``ModelCheckpoint(dirpath=...)``) with their subfolders.

Among the committed checkpoints there (manifests only), "last" is the one with the highest global
step, then the newest; full checkpoints before weights-only ones (a weights-only file is taken
only when there is no full one). The runtime then loads the first that verifies.

This module reads manifests only; it imports neither torch nor any policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ckpthooks._catalog import iter_committed
from ckpthooks._io import paths
from ckpthooks._manifest import CommittedCheckpoint

#: The run's checkpoint folder, below ``default_root_dir``.
CHECKPOINT_FOLDER = "checkpoints"
#: The extension of checkpoint files (for naming files that were never committed).
CHECKPOINT_EXTENSION = ".ckpt"


@dataclass(frozen=True)
class SearchFolder:
    """A folder "last" looks in, and whether its subfolders count."""

    path: str
    recursive: bool


def search_folders(root: str, policy_folders: Iterable[str] = ()) -> list[SearchFolder]:
    """The folders of the run under ``root``, in order (see the module docstring)."""
    root = paths.normalize(root)
    folders = [SearchFolder(root, False), SearchFolder(paths.join(root, CHECKPOINT_FOLDER), True)]
    for folder in policy_folders:
        path = paths.normalize(folder)
        if path == root:
            folders[0] = SearchFolder(root, True)  # a policy writing into the root owns its subfolders
        elif all(path != known.path for known in folders):
            folders.append(SearchFolder(path, True))
    return folders


def committed_in(
    folders: Sequence[SearchFolder], storage_options: Mapping[str, Any] | None = None
) -> list[CommittedCheckpoint]:
    """Every committed checkpoint in ``folders``, each once, newest (by global step) first."""
    found: dict[str, CommittedCheckpoint] = {}
    for folder in folders:
        for item in iter_committed(folder.path, storage_options, recursive=folder.recursive):
            found.setdefault(item.path, item)
    return sorted(found.values(), key=lambda c: c.sort_key, reverse=True)


def last_order(candidates: Iterable[CommittedCheckpoint]) -> list[CommittedCheckpoint]:
    """The order in which "last" tries ``candidates``: the highest global step first (then the
    newest); full checkpoints only, unless there is none."""
    ordered = sorted(candidates, key=lambda c: c.sort_key, reverse=True)
    return [c for c in ordered if not c.manifest.weights_only] or ordered


def in_folders(path: str, folders: Sequence[SearchFolder]) -> bool:
    """Whether the checkpoint ``path`` lies in one of ``folders`` (its own folder, or below a
    recursive one)."""
    parent = paths.dirname(paths.normalize(path))
    for folder in folders:
        base = folder.path.rstrip("/\\")
        if parent.rstrip("/\\") == base:
            return True
        if folder.recursive and parent.startswith(base) and parent[len(base) : len(base) + 1] in ("/", "\\"):
            return True
    return False
