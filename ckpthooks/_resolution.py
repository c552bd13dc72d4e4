"""Resolving and loading what ``ckpt_path`` names: a path, ``"last"`` or ``"best"``.

Where "last" looks and which candidate comes first is :mod:`ckpthooks._last_search` (shared with
``ckpthooks ls``). Here the candidates are loaded in that order, and the first that loads wins:

- a candidate that fails verification is skipped with a warning; one whose bytes no longer match
  its manifest (another program rewrote the file after its commit) is named in a warning that says
  what "last" resolves to instead and how to adopt the file;
- a candidate that went away between the listing and the load (another process saving or pruning
  meanwhile: its manifest or its data gone) is not an error: the folders are listed again and the
  next candidate is tried.

"best" is answered by the first callback that :attr:`~ckpthooks.Callback.resolves_best`.
Under ``torch.distributed`` rank 0 resolves, every rank takes its answer and reads the checkpoint,
and if one rank cannot, every rank raises. For "last" the ranks also compare what they see: when a
rank sees a committed checkpoint at a higher global step than rank 0's choice (or any, when rank 0
found none), as on node-local disks where rank 0 landed on the node without the newest checkpoint,
every rank raises :class:`~ckpthooks.DistributedCheckpointError` instead of resuming from less.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ckpthooks import _distributed as distributed
from ckpthooks._catalog import read_manifest
from ckpthooks._io import paths
from ckpthooks._io.base import restoring
from ckpthooks._io.location import Location
from ckpthooks._last_search import (
    CHECKPOINT_EXTENSION,
    SearchFolder,
    committed_in,
    last_order,
    search_folders,
)
from ckpthooks._manifest import CommittedCheckpoint, VerifyMode
from ckpthooks._state_assembly import Prepared, prepare_restore, restore_from_dict
from ckpthooks.exceptions import (
    CheckpointNotFoundError,
    ConfigurationError,
    CorruptCheckpointError,
    DistributedCheckpointError,
)

if TYPE_CHECKING:
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._state_assembly import RestoreReport

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What identifies a committed checkpoint across ranks: its path, its manifest's creation time and size.
CandidateKey = tuple[str, float, int]

#: How often "last" lists the folders again when candidates go away while they are loaded (a
#: process saving all the time); after that the remaining candidates of the last listing are tried.
RELISTS = 5


class Resolver:
    """Finds and loads checkpoints for one checkpointer."""

    def __init__(self, checkpointer: Checkpointer) -> None:
        self.checkpointer = checkpointer
        #: the candidates the last :meth:`_first_usable` tried and did not take
        self.passed_over: list[CandidateKey] = []
        #: the candidate the last :meth:`load_last` took
        self.last_chosen: CommittedCheckpoint | None = None

    # ------------------------------------------------------------------ where
    def folders(self) -> list[SearchFolder]:
        ckpt = self.checkpointer
        policy_folders = [folder for cb in ckpt.callbacks for folder in cb.checkpoint_folders()]
        return search_folders(ckpt.default_root_dir, policy_folders)

    def committed(self) -> list[CommittedCheckpoint]:
        return committed_in(self.folders(), self.checkpointer.storage_options)

    # ------------------------------------------------------------------ which
    def find(self, which: str) -> str | None:
        if which == "last":
            found = self._first_usable(lambda c: self.checkpointer.store.verify_committed(c))
            return found[0].path if found else None
        if which == "best":
            for cb in self.checkpointer.callbacks:
                if cb.resolves_best:
                    return cb.find_best(self.checkpointer)
            raise ConfigurationError(
                'ckpt_path="best" needs a callback that resolves "best" (a ModelCheckpoint with a '
                "monitor) among the callbacks"
            )
        raise ConfigurationError(f'expected "last" or "best", not {which!r}')

    def _preparer(self, prepared: Prepared | None) -> Callable[[dict[str, Any]], object] | None:
        """What :meth:`CheckpointStore.load` calls on the loaded checkpoint while it verifies it:
        :func:`prepare_restore`, its result kept in ``prepared``."""
        if prepared is None:
            return None

        def prepare(checkpoint: dict[str, Any]) -> None:
            prepared.clear()
            prepared.update(prepare_restore(self.checkpointer, checkpoint))

        return prepare

    def load_last(
        self, map_location: Any, weights_only: bool, *, alone: bool = False, prepared: Prepared | None = None
    ) -> tuple[str | None, dict[str, Any] | None]:
        """Load the first candidate for "last" that loads; each is checked in its own load (its
        bytes read once, a remote one downloaded once). ``(None, None)`` when none loads.
        ``alone``: on rank 0 of several, which cannot read a collective backend's checkpoint by
        itself: such a candidate is verified, and returned without a checkpoint, for every rank
        to read together. ``prepared`` receives what :func:`prepare_restore` made of the checkpoint
        while it was verified."""
        store = self.checkpointer.store

        def load(candidate: CommittedCheckpoint) -> dict[str, Any] | None:
            if alone and store.io_for(candidate.path).collective:
                store.verify_committed(candidate)
                return None
            with restoring(self.checkpointer):
                return store.load(
                    candidate.path, map_location=map_location, weights_only=weights_only, require_manifest=True,
                    prepare=self._preparer(prepared),
                )  # fmt: skip

        found = self._first_usable(load)
        self.last_chosen = None if found is None else found[0]
        return (None, None) if found is None else (found[0].path, found[1])

    def _first_usable(self, attempt: Callable[[CommittedCheckpoint], T]) -> tuple[CommittedCheckpoint, T] | None:
        """``attempt`` each candidate in :func:`~ckpthooks._last_search.last_order` until one
        succeeds; the candidate and its result, or ``None``."""
        options = self.checkpointer.storage_options
        candidates = self.committed()
        tried: set[CandidateKey] = set()
        passed_over: list[CandidateKey] = []
        self.passed_over = passed_over
        replaced: list[tuple[CommittedCheckpoint, CorruptCheckpointError]] = []
        relists = 0
        while True:
            went_away = False
            for candidate in last_order(candidates):
                key = (candidate.path, candidate.manifest.created, candidate.manifest.size)
                if key in tried:
                    continue
                tried.add(key)
                try:
                    result = attempt(candidate)
                except (CorruptCheckpointError, FileNotFoundError) as exc:
                    if _went_away(candidate, options):
                        log.info("%s went away while it was loaded (saved or pruned meanwhile)", candidate.path)
                        if relists < RELISTS:
                            went_away = True
                            break
                        continue
                    if isinstance(exc, CorruptCheckpointError) and _data_exists(candidate.path, options):
                        replaced.append((candidate, exc))
                    else:
                        log.warning("skipping %s for resume: %s", candidate.path, exc)
                    continue
                self._report_replaced(replaced, candidate)
                self._warn_uncommitted_newer_than(candidate.manifest.created, {c.path for c in candidates})
                passed_over.extend(k for k in tried if k != key)
                return candidate, result
            if not went_away:
                break
            relists += 1
            candidates = self.committed()
        self._report_replaced(replaced, None)
        self._warn_uncommitted_newer_than(0.0, {c.path for c in candidates})
        passed_over.extend(tried)
        return None

    def _report_replaced(
        self, replaced: list[tuple[CommittedCheckpoint, CorruptCheckpointError]], chosen: CommittedCheckpoint | None
    ) -> None:
        if chosen is None:
            instead = "there is no other committed checkpoint, so the run starts fresh"
        else:
            instead = (
                f'"last" resolves to {chosen.path} (epoch {chosen.manifest.epoch}, global step '
                f"{chosen.manifest.global_step}) instead"
            )
        for skipped, exc in replaced:
            behind = ""
            if chosen is not None and skipped.manifest.global_step > chosen.manifest.global_step:
                behind = f", {skipped.manifest.global_step - chosen.manifest.global_step} global steps older"
            log.warning(
                "skipping %s for resume: it no longer counts, because it was replaced after its "
                "commit (epoch %d, global step %d): its size or checksum differ from its manifest "
                "(%s). Another program may have written into this folder. %s%s. To resume from the "
                "file as it is now (a Lightning or torch.save file), adopt it: `ckpthooks convert "
                "--adopt %s %s` commits it in place, and the next resume considers it again.",
                skipped.path, skipped.manifest.epoch, skipped.manifest.global_step, exc, instead, behind,
                skipped.path, skipped.path,
            )  # fmt: skip

    def _warn_uncommitted_newer_than(self, created: float, committed: set[str]) -> None:
        """Name the checkpoint files in the searched folders that are newer than ``created`` but
        were never committed (an interrupted save, or another program's file)."""
        skipped = []
        for folder in self.folders():
            root = Location.of(folder.path, self.checkpointer.storage_options)
            try:
                names = root.names()
            except OSError:
                continue
            for name in sorted(names):
                entry = root.child(name)
                if name.startswith(".") or not name.endswith(CHECKPOINT_EXTENSION) or entry.url in committed:
                    continue
                modified = entry.modified()
                if modified is not None and modified > created:
                    skipped.append(entry.url)
        if skipped:
            log.warning(
                "ignoring %s: never committed (an interrupted save, or not written by ckpthooks)",
                ", ".join(skipped),
            )

    # ------------------------------------------------------------------ restore
    def restore(
        self, ckpt_path: str | os.PathLike[str], *, strict: bool | None, weights_only: bool, map_location: Any,
        must_exist: bool,
    ) -> RestoreReport | None:  # fmt: skip
        ckpt = self.checkpointer
        text = os.fspath(ckpt_path)
        checkpoint: dict[str, Any] | None = None
        prepared: Prepared = {}
        if text == "last" and distributed.world_size(ckpt.host) == 1:
            path, checkpoint = self.load_last(map_location, weights_only, prepared=prepared)
        elif text == "last":  # rank 0 chooses by loading; it keeps what it loaded, the others load it then
            kept: list[dict[str, Any]] = []

            def choose() -> tuple[str | None, int | None, list[CandidateKey]]:
                found, loaded = self.load_last(map_location, weights_only, alone=True, prepared=prepared)
                if loaded is not None:
                    kept.append(loaded)
                step = None if self.last_chosen is None else self.last_chosen.manifest.global_step
                return found, step, self.passed_over

            path, step, passed_over = distributed.decide_on_rank_zero(
                choose, 'finding ckpt_path="last"', host=ckpt.host
            )
            checkpoint = kept[0] if kept else None
            self._agree_on_last(path, step, passed_over)
        elif text == "best":
            path = distributed.decide_on_rank_zero(
                lambda: self.find(text), f'finding ckpt_path="{text}"', host=ckpt.host
            )
        else:
            path = paths.normalize(text)
        if text in ("last", "best") and path is None:
            if must_exist or text == "best":
                raise CheckpointNotFoundError(
                    f'ckpt_path="{text}": no committed checkpoint found under '
                    f"{', '.join(ckpt.checkpoint_roots())}"
                )
            log.info('ckpt_path="last": no checkpoint yet under %s; starting fresh', ckpt.default_root_dir)
            return None
        assert path is not None
        if checkpoint is None or distributed.world_size(ckpt.host) > 1:
            checkpoint = self._load_on_every_rank(
                path, map_location, weights_only, loaded=checkpoint, prepared=prepared
            )
        report = restore_from_dict(ckpt, checkpoint, strict=strict, prepared=prepared)
        report.path = path
        ckpt.resumed_from = path
        log.info("%s", report.summary())
        return report

    def _agree_on_last(self, path: str | None, step: int | None, passed_over: list[CandidateKey]) -> None:
        """Every rank compares rank 0's "last" (``path`` at global ``step``; ``None`` when it found
        none) with the newest committed checkpoint it sees itself, leaving out the candidates rank 0
        tried and passed over (damaged, gone). If any rank sees one at a higher global step, or any
        at all where rank 0 found none, every rank raises: resuming would go on from less than the
        run has (from step 0, writing a second set of checkpoints, when rank 0 saw nothing)."""
        ckpt = self.checkpointer
        rank = distributed.global_rank(ckpt.host)
        own: tuple[str, int] | None = None
        if rank != 0:
            skip = set(passed_over)
            for candidate in last_order(self.committed()):
                if (candidate.path, candidate.manifest.created, candidate.manifest.size) not in skip:
                    own = (candidate.path, candidate.manifest.global_step)
                    break
        views = distributed.all_gather_object((socket.gethostname(), own), ckpt.host)
        ahead = [
            (r, host, seen)
            for r, (host, seen) in enumerate(views)
            if seen is not None and (step is None or seen[1] > step)
        ]
        if not ahead:
            return
        chosen = (
            f"found no committed checkpoint under {', '.join(ckpt.checkpoint_roots())}"
            if path is None
            else f"resolved it to {path} (global step {step})"
        )
        seen_by = "; ".join(f"rank {r} (host {host}) sees {where} (global step {at})" for r, host, (where, at) in ahead)
        raise DistributedCheckpointError(
            f'ckpt_path="last": the ranks do not see the same checkpoints. Rank 0 (host {views[0][0]}) '
            f"{chosen}, but {seen_by}. Resuming would go on from "
            + ("step 0" if path is None else f"step {step}")
            + " and leave the newer checkpoint behind. The checkpoint folder is probably on a disk of "
            "each node: put default_root_dir on storage every node shares (a shared file system, or "
            "an object store such as s3://...), or copy the newest checkpoint (with its manifest, "
            "`ckpthooks copy`) to the same path on every node, or pass its path as ckpt_path where "
            "every rank can read it"
        )

    def _load_on_every_rank(
        self, path: str, map_location: Any, weights_only: bool, loaded: dict[str, Any] | None = None,
        prepared: Prepared | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Read ``path`` (on every rank under ``torch.distributed``); every rank raises if one failed.
        A rank that passes what it ``loaded`` already (rank 0, choosing "last") only takes part in
        the agreement.

        A collective backend reads in one collective step: the ranks first agree that each of them
        sees a committed, intact checkpoint, so that none starts the collective read alone. With
        full verification, rank 0 checks the checksum (every rank's files, once) and the other ranks
        the size: on the shared folder they all read, one full read is enough.
        """
        ckpt = self.checkpointer
        if loaded is not None:
            distributed.agree_on_outcome(None, f"loading {path}", host=ckpt.host)
            return loaded
        checkpoint: dict[str, Any] = {}
        error: BaseException | None = None
        with restoring(ckpt):
            try:
                verify: VerifyMode | None = None
                if ckpt.store.io_for(path).collective:
                    failed: BaseException | None = None
                    check = ckpt.store.verify
                    if check == "full" and not ckpt.is_global_zero:
                        check = "size"
                    try:
                        ckpt.store.check_loadable(path, verify=check)
                    except Exception as exc:
                        failed = exc
                    distributed.agree_on_outcome(failed, f"checking {path}", host=ckpt.host)
                    verify = "off"  # checked just now
                checkpoint = ckpt.store.load(
                    path, map_location=map_location, weights_only=weights_only, verify=verify,
                    prepare=self._preparer(prepared),
                )  # fmt: skip
            except Exception as exc:
                error = exc
        distributed.agree_on_outcome(error, f"loading {path}", host=ckpt.host)
        return checkpoint


def _went_away(candidate: CommittedCheckpoint, storage_options: Any) -> bool:
    """Whether ``candidate`` is no longer the committed checkpoint it was when listed: its
    manifest is gone or says something else now (uncommitted, pruned, or saved again)."""
    try:
        return read_manifest(candidate.path, storage_options) != candidate.manifest
    except Exception:  # storage unreachable: not a sign that it went away
        return False


def _data_exists(path: str, storage_options: Any) -> bool:
    try:
        fs = paths.filesystem(path, storage_options)
        return bool(fs.exists(paths.fs_path(fs, path)))
    except Exception:
        return False
