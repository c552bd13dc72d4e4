"""Retention: rules say, from manifests, which checkpoints to keep; one pruner deletes the rest.

A :class:`RetentionRule` looks at committed checkpoints (:class:`~ckpthooks._manifest.CommittedCheckpoint`:
a path and its manifest with epoch, step, metrics, created time and writer; a rule never opens a
checkpoint) and returns the paths it keeps. Rules combine: a checkpoint may go only when *no* rule
keeps it. ``ModelCheckpoint``'s top-k and ``last`` bookkeeping is one rule, :class:`TopKRule` ranks
from manifests alone, ``KeepMilestones`` is a rule, and a plugin adds its own by returning, from
``register_policies``, a ``Callback`` that implements the protocol (see docs/writing-a-plugin.md).

:class:`Pruner` is the one place where a policy's deletions happen, with the guards:

1. only committed checkpoints (a valid manifest, or, for a file a killed overwrite left
   uncommitted, the manifest of its kept previous version) and, when a writer is given, only those
   whose manifest names it;
2. never the checkpoint the run resumed from;
3. never one with a save pending: a background (``async_save``) save of that path queued or
   running, or a pending marker another save left beside it;
4. never one a callback ``retains`` (the older, per-path veto);

and the store's deletion order: manifest first, then the data.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ckpthooks._catalog import read_manifest
from ckpthooks._commit import pending_marker_path, previous_manifest
from ckpthooks._io import paths
from ckpthooks._io.location import Location
from ckpthooks._manifest import CommittedCheckpoint

if TYPE_CHECKING:
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._manifest import Manifest

log = logging.getLogger(__name__)

__all__ = ["Pruner", "RetentionRule", "TopKRule", "kept_by", "rules_among"]


@runtime_checkable
class RetentionRule(Protocol):
    """Says which committed checkpoints to keep, from their manifests only."""

    def keep(self, checkpoints: Sequence[CommittedCheckpoint]) -> Collection[str]:
        """The paths among ``checkpoints`` (every committed checkpoint of one writer in scope: the
        ones a policy is about to delete and the ones it still keeps) that this rule keeps. A path
        no rule keeps may be deleted."""
        ...


def rules_among(objects: Iterable[object]) -> list[RetentionRule]:
    """The objects (callbacks, usually) that are retention rules."""
    return [obj for obj in objects if isinstance(obj, RetentionRule)]


def kept_by(rules: Iterable[RetentionRule], checkpoints: Sequence[CommittedCheckpoint]) -> set[str]:
    """The paths any of ``rules`` keeps among ``checkpoints``."""
    kept: set[str] = set()
    for rule in rules:
        kept.update(paths.normalize(p) for p in rule.keep(checkpoints))
    return kept


class TopKRule:
    """Keep the ``k`` best checkpoints of ``writer`` by ``monitor`` (``mode`` ``"min"``/``"max"``), as
    read from their manifests; without a monitor, the ``k`` newest by global step. ``k == -1`` keeps
    all. Among equal scores the newer checkpoint ranks first: a score equal to the k-th never enters
    the top k (no file is written for it), and when one must go, ``ModelCheckpoint`` (like
    Lightning) displaces the earliest of the tied worst. Checkpoints of other writers, and ranked
    ones whose manifest lacks a finite ``monitor``, are not this rule's to keep."""

    def __init__(self, k: int, monitor: str | None = None, mode: str = "min", writer: str | None = None) -> None:
        self.k = k
        self.monitor = monitor
        self.mode = mode
        self.writer = writer

    def keep(self, checkpoints: Sequence[CommittedCheckpoint]) -> Collection[str]:
        mine = [c for c in checkpoints if self.writer is None or c.manifest.writer == self.writer]
        if self.k < 0:
            return [c.path for c in mine]
        if self.monitor is None:
            ranked = sorted(mine, key=lambda c: c.sort_key, reverse=True)
        else:
            monitor = self.monitor
            scored = [c for c in mine if _finite(c.manifest.metrics.get(monitor))]
            sign = 1.0 if self.mode == "min" else -1.0
            ranked = sorted(scored, key=lambda c: (sign * c.manifest.metrics[monitor], -c.manifest.created))
        return [c.path for c in ranked[: self.k]]

    def __repr__(self) -> str:
        return f"TopKRule(k={self.k}, monitor={self.monitor!r}, mode={self.mode!r}, writer={self.writer!r})"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Pruner:
    """Deletes checkpoints for the policies of one :class:`~ckpthooks.Checkpointer`, with the guards
    (see the module). Get it with :meth:`of`."""

    _by_checkpointer: weakref.WeakKeyDictionary[Checkpointer, Pruner] = weakref.WeakKeyDictionary()
    _create_lock = threading.Lock()

    def __init__(self, checkpointer: Checkpointer) -> None:
        self._checkpointer = weakref.ref(checkpointer)
        self._lock = threading.Lock()
        self._saving: Counter[str] = Counter()

    @classmethod
    def of(cls, checkpointer: Checkpointer) -> Pruner:
        """The pruner of ``checkpointer`` (one per checkpointer)."""
        with cls._create_lock:
            pruner = cls._by_checkpointer.get(checkpointer)
            if pruner is None:
                pruner = cls._by_checkpointer[checkpointer] = cls(checkpointer)
            return pruner

    @property
    def checkpointer(self) -> Checkpointer:
        checkpointer = self._checkpointer()
        if checkpointer is None:
            raise RuntimeError("the checkpointer of this pruner is gone")
        return checkpointer

    # ------------------------------------------------------------------ pending saves
    def saving(self, path: str) -> None:
        """Record that a save of ``path`` is queued or running (it may not be deleted meanwhile)."""
        with self._lock:
            self._saving[paths.normalize(path)] += 1

    def saved(self, path: str) -> None:
        """Record that a save :meth:`saving` announced has ended (committed or failed)."""
        key = paths.normalize(path)
        with self._lock:
            self._saving[key] -= 1
            if self._saving[key] <= 0:
                del self._saving[key]

    def is_pending(self, path: str) -> bool:
        """Whether a save of ``path`` is in flight here, or a pending marker announces another one."""
        key = paths.normalize(path)
        with self._lock:
            if self._saving.get(key):
                return True
        try:
            return Location.of(pending_marker_path(key), self.checkpointer.storage_options).exists()
        except OSError:
            return True  # cannot tell: keep the file

    # ------------------------------------------------------------------ deleting
    def committed(self, path: str) -> Manifest | None:
        """The manifest that commits ``path``: its own, or, while a killed overwrite left it
        uncommitted, its kept previous version's; ``None`` when nothing commits it."""
        options = self.checkpointer.storage_options
        manifest = read_manifest(path, options)
        return manifest if manifest is not None else previous_manifest(path, options)

    def may_remove(self, path: str, *, writer: str | None = None, manifest: Manifest | None = None) -> bool:
        """Whether the guards allow deleting ``path`` now. ``writer``: a manifest's ``writer`` must
        be it, or start with it followed by ``#`` (``ModelCheckpoint`` writes ``<state_key>#topk``
        and ``<state_key>#last``)."""
        checkpointer = self.checkpointer
        path = paths.normalize(path)
        if checkpointer.resumed_from is not None and path == checkpointer.resumed_from:
            log.info("keeping %s: the run resumed from it", path)
            return False
        if writer is not None:
            manifest = manifest or self.committed(path)
            if manifest is None:
                log.info("keeping %s: it is not committed", path)
                return False
            if not _written_by(manifest, writer):
                log.info("keeping %s: %s did not write it", path, writer)
                return False
        if self.is_pending(path):
            log.info("keeping %s: a save of it is pending", path)
            return False
        for cb in checkpointer.callbacks:
            if cb.retains(checkpointer, path):
                log.info("keeping %s: %r retains it", path, cb)
                return False
        return True

    def remove(self, path: str, *, writer: str | None = None, manifest: Manifest | None = None) -> bool:
        """Delete ``path`` (manifest first, then the data) when the guards allow; whether they did.
        Deleting happens on the writer rank; every rank gets the same answer only when the guards'
        inputs agree, so policies call this on the writer rank."""
        path = paths.normalize(path)
        if not self.may_remove(path, writer=writer, manifest=manifest):
            return False
        checkpointer = self.checkpointer
        if checkpointer.is_global_zero:
            checkpointer.store.remove(path)
        return True

    def prune(
        self,
        candidates: Sequence[CommittedCheckpoint],
        rules: Sequence[RetentionRule],
        *,
        scope: Sequence[CommittedCheckpoint] = (),
        writer: str | None = None,
    ) -> list[str]:
        """Delete the ``candidates`` that no rule keeps (the rules see ``candidates`` and ``scope``,
        the writer's other committed checkpoints) and the guards allow; returns the paths deleted."""
        seen = {c.path: c for c in scope}
        seen.update((c.path, c) for c in candidates)
        kept = kept_by(rules, list(seen.values()))
        removed = []
        for candidate in candidates:
            if paths.normalize(candidate.path) in kept:
                continue
            if self.remove(candidate.path, writer=writer, manifest=candidate.manifest):
                removed.append(candidate.path)
        return removed


def _written_by(manifest: Manifest, writer: str) -> bool:
    name = manifest.writer or ""
    return name == writer or name.startswith(writer + "#")
