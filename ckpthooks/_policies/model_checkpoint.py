"""``ModelCheckpoint``: Lightning's checkpointing policy for plain loops.

The policy is composed of small parts: :class:`~ckpthooks._policies.schedule.SaveSchedule` (when),
:func:`~ckpthooks._policies.naming.format_filename` (how to name), :class:`~ckpthooks._policies.topk.TopK`
(what to keep). This class only wires them to the loop's events and to saves. What it keeps is a retention rule
(:meth:`ModelCheckpoint.keep`: the files its top-k, latest and ``last`` bookkeeping names); a file it
displaces goes, after the checkpoint that replaces it is committed, only when no retention rule among
the callbacks keeps it, through the checkpointer's :class:`~ckpthooks._retention.Pruner` and its
guards (only files this policy wrote, never the file the run resumed from, never one being saved).
"""

from __future__ import annotations

import ast
import logging
import math
import os
import re
import threading
import warnings
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from ckpthooks import _distributed as distributed
from ckpthooks._callbacks import Callback
from ckpthooks._catalog import iter_committed, read_manifest
from ckpthooks._io import paths
from ckpthooks._io.location import Location
from ckpthooks._manifest import CommittedCheckpoint, Manifest, previous_of
from ckpthooks._policies.naming import EXTENSION, format_filename, with_version
from ckpthooks._policies.schedule import SaveSchedule
from ckpthooks._policies.topk import Mode, TopK
from ckpthooks._retention import Pruner, RetentionRule, kept_by, rules_among
from ckpthooks.exceptions import CheckpointError, ConfigurationError, DistributedCheckpointError, StorageError

if TYPE_CHECKING:
    from ckpthooks._checkpointer import Checkpointer

log = logging.getLogger(__name__)

#: monitor candidates the loop provides when they are not logged (see ``monitor_candidates``)
_LOOP_CANDIDATES = frozenset({"epoch", "step", "global_step"})


class _Savepoint(NamedTuple):
    """Where a transaction started: marks in the undo logs, and the paths it may change."""

    topk: int
    pending: int
    latest_path: str
    last_model_path: str
    #: whether this transaction started the pending-removals log (it is not nested in another)
    outermost: bool


@dataclass
class _Write:
    """A save this policy started and that has not committed yet (with ``async_save``, until the
    worker reports): what to undo if it fails, and what to do once it commits."""

    role: str
    #: the file it displaces (deleted once it commits), if any
    replaces: str | None
    #: ``save_last="link"``: the ``last`` file to link to this one once it commits, and the file
    #: that ``last`` file displaces
    link: tuple[str, str | None] | None = None


def _check_inside_dirpath(name: str, what: str) -> None:
    """Refuse names that would put a file outside ``dirpath`` (absolute, or with a ``..`` part)."""
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts:
        raise ConfigurationError(
            f"ModelCheckpoint {what} {name!r} would put checkpoints outside dirpath; choose the folder "
            "with dirpath= and give filename= a name inside it (no '..', not absolute)"
        )


class ModelCheckpoint(Callback):
    """Save checkpoints when, as and where Lightning's ``ModelCheckpoint`` would.

    Args:
        dirpath: folder (or URL) for the files; default ``<default_root_dir>/checkpoints``.
        filename: template such as ``"{epoch:02d}-{val_loss:.2f}"``; default ``"{epoch}-{step}"``.
        monitor: metric to rank by (logged with ``Checkpointer.log``); ``None`` keeps the latest.
        verbose: log every decision at INFO level.
        save_last: also keep ``last.ckpt`` with the latest state; ``"link"`` makes it a link to the
            newest file where the storage allows (a separate write elsewhere).
        save_top_k: how many best files to keep: ``-1`` all, ``0`` none, ``k``. Without a monitor
            only ``-1``, ``0`` and ``1`` (the latest) make sense.
        save_weights_only: write only the model weights (and hyperparameters).
        mode: ``"min"`` or ``"max"``: which direction of ``monitor`` is better.
        auto_insert_metric_name: ``{val_loss}`` renders as ``val_loss=0.25`` rather than ``0.25``.
        every_n_train_steps: save every N training steps.
        train_time_interval: save when this much time (a ``timedelta``) has passed.
        every_n_epochs: save every N epochs (default 1 when neither of the above is set).
        save_on_train_epoch_end: save epoch-based checkpoints at the end of the training epoch
            rather than after validation.
        enable_version_counter: when a name is taken, append ``-v1``, ``-v2``...; when off, a
            name collision raises instead of replacing a file silently.

    Under ``torch.distributed`` the policy runs on every rank and every rank decides alike: the
    metrics a save decision uses (the monitored value, the values in the file name) are global
    rank 0's, broadcast at each save decision (a rank that logged another local value follows
    rank 0; reduce your metric across ranks before logging it if you want a global value), whether
    a ``train_time_interval`` has passed is rank 0's clock's answer, and whether a file name is
    taken is rank 0's view of the storage.
    """

    #: joins the parts of the default file name, a prefix, and a version (``name-v1``)
    CHECKPOINT_JOIN_CHAR = "-"
    #: follows a metric name inserted into a file name (``epoch=3``)
    CHECKPOINT_EQUALS_CHAR = "="
    #: name (a template) of the ``save_last`` file, without extension
    CHECKPOINT_NAME_LAST = "last"
    #: extension of every file this policy writes
    FILE_EXTENSION = EXTENSION
    #: first number the version counter appends (``name-v1``)
    STARTING_VERSION = 1
    #: a policy: refused with ``enable_checkpointing=False``, and replaces the default one
    saves_checkpoints = True

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | Literal["link"] | None = None,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        mode: Mode = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
        save_on_exception: bool = False,
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigurationError(f"mode must be 'min' or 'max', not {mode!r}")
        if not isinstance(save_top_k, int) or save_top_k < -1:
            raise ConfigurationError(f"save_top_k must be an integer >= -1, not {save_top_k!r}")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ConfigurationError(
                f"save_top_k={save_top_k} needs a monitor to rank by; set monitor=, or use "
                "save_top_k=-1 (keep all) or 1 (keep the latest)"
            )
        if save_last not in (None, True, False, "link"):
            raise ConfigurationError(f"save_last must be True, False, None or 'link', not {save_last!r}")
        if filename is not None and filename.endswith(self.FILE_EXTENSION):
            filename = filename[: -len(self.FILE_EXTENSION)]
        if filename is not None:
            _check_inside_dirpath(filename, "filename")
        self._dirpath_arg = None if dirpath is None else os.fspath(dirpath)
        self.dirpath: str | None = None if dirpath is None else paths.normalize(dirpath)
        self.filename = filename
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_weights_only = save_weights_only
        self.mode: Mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self.enable_version_counter = enable_version_counter
        self.save_on_exception = save_on_exception
        self.schedule = SaveSchedule(
            every_n_train_steps=every_n_train_steps,
            every_n_epochs=every_n_epochs,
            train_time_interval=train_time_interval,
            save_on_train_epoch_end=save_on_train_epoch_end,
        )
        self.topk = TopK(k=save_top_k, mode=mode)
        self.current_score: float | None = None
        self.last_model_path = ""
        self._latest_path = ""  # newest file this policy wrote (for save_top_k=1 without monitor)
        # best_model_path of a state saved with another dirpath (until this policy saves a best)
        self._restored_best = ""
        self._last_global_step_saved = 0  # no save before the first training step (Lightning's rule)
        self._saved_at_log_count = 0  # the loop's log count at this policy's latest save
        self._deferred = False  # a step or time trigger waits for a fresh monitor value (validation)
        self._saved_this_run = False
        self._fit_start_step = 0
        #: set on the ModelCheckpoint added because none was configured (``enable_checkpointing``)
        self.is_default_policy = False
        # files displaced but not deleted yet; saved with the state, so that a run resuming after a
        # crash between a commit and its pruning finishes the pruning (see on_fit_start)
        self._pending_removals: set[str] = set()
        # while a transaction is open: (path, whether it was pending before), oldest first
        self._pending_journal: list[tuple[str, bool]] | None = None
        self._checkpointer: Checkpointer | None = None
        self._writing: str | None = None  # the file the save in progress writes
        self._reusable_last = ""  # a last file a failed save left uncommitted
        # displaced files another retention rule kept: asked about again after every commit
        self._retained: set[str] = set()
        # manifests of the files above and of the files the bookkeeping names (what rules read)
        self._manifests: dict[str, Manifest] = {}
        # saves started and not yet committed or failed (background saves: until the worker reports)
        self._in_flight: dict[str, _Write] = {}
        self._lock = threading.Lock()
        # background saves that failed: (path, what it was); applied on the training thread
        self._failed: deque[tuple[str, _Write]] = deque()

    # ------------------------------------------------------------------ Lightning's attributes
    @property
    def best_k_models(self) -> dict[str, float]:
        return dict(self.topk.scores)

    @property
    def best_model_path(self) -> str:
        if self.monitor is None:
            return self._latest_path or self._restored_best
        return self.topk.best_path or self._restored_best

    @property
    def best_model_score(self) -> float | None:
        return self.topk.best_value

    @property
    def kth_best_model_path(self) -> str:
        return self.topk.kth_path or ""

    @property
    def kth_value(self) -> float | None:
        return self.topk.kth_value

    @property
    def every_n_train_steps(self) -> int:
        return int(self.schedule.every_n_train_steps or 0)

    @property
    def every_n_epochs(self) -> int:
        return int(self.schedule.every_n_epochs or 0)

    @property
    def train_time_interval(self) -> timedelta | None:
        return self.schedule.train_time_interval

    @property
    def state_key(self) -> str:
        """What ranks (``monitor``, ``mode``, an explicit ``dirpath``) and the kind of trigger
        (steps or time; none is named for the default, epochs): stable when ``every_n_epochs``,
        ``save_top_k``, ``filename`` or an interval change between runs (Lightning's key embeds
        them, so that a change orphans the files), and apart for policies that differ by trigger."""
        key = self._ranking_key()
        trigger = self._trigger_kind()
        if trigger is not None:
            key["trigger"] = trigger
        return self._generate_state_key(**key)

    def state_key_aliases(self) -> Sequence[str]:
        """The key of a step- or time-triggered policy's state before the trigger kind was part of
        it (ckpthooks 0.1.0.dev0): its state is read from there when the current key is absent."""
        return () if self._trigger_kind() is None else (self._generate_state_key(**self._ranking_key()),)

    def earlier_state_key(self, unclaimed: Collection[str]) -> str | None:
        """Besides the aliases, this policy's key with another ``dirpath`` (a run resumed into a
        new folder, as Lightning allows: its key holds no folder), when exactly one saved state
        differs from this policy's key by the folder alone."""
        found = super().earlier_state_key(unclaimed)
        if found is not None:
            return found
        mine = self._key_without_dirpath(self.state_key)
        matches = [key for key in unclaimed if mine is not None and self._key_without_dirpath(key) == mine]
        return matches[0] if len(matches) == 1 else None

    def _key_without_dirpath(self, key: str) -> dict[str, Any] | None:
        """A state key of this class as a dict without its ``dirpath``; ``None`` for other keys."""
        name = type(self).__qualname__
        if not key.startswith(name + "{"):
            return None
        try:
            fields = ast.literal_eval(key[len(name) :])
        except (ValueError, SyntaxError):
            return None
        if not isinstance(fields, dict):
            return None
        fields.pop("dirpath", None)
        return fields

    def _ranking_key(self) -> dict[str, Any]:
        key: dict[str, Any] = {"monitor": self.monitor, "mode": self.mode}
        if self._dirpath_arg is not None:
            key["dirpath"] = self._dirpath_arg
        return key

    def _trigger_kind(self) -> str | None:
        if self.schedule.every_n_train_steps:
            return "steps"
        if self.schedule.train_time_interval is not None:
            return "time"
        return None

    # ------------------------------------------------------------------ events
    def setup(self, checkpointer: Checkpointer) -> None:
        self._checkpointer = checkpointer
        if self.dirpath is None:
            self.dirpath = paths.join(checkpointer.default_root_dir, "checkpoints")
        if self.save_last and self.save_top_k == -1 and self.monitor is None and self.verbose:
            log.info(
                "ModelCheckpoint(save_last=True, save_top_k=-1, monitor=None) will duplicate the last "
                "checkpoint saved"
            )

    def on_fit_start(self, checkpointer: Checkpointer) -> None:
        self.schedule.start()
        # _saved_this_run and _deferred carry over from a restored state: a resumed run does what
        # the uninterrupted one would (no extra ``last`` at the end, a deferred save still waits)
        self._fit_start_step = checkpointer.global_step
        self._adopt_resumed_last(checkpointer)
        self._finish_pending_removals(checkpointer)

    def _adopt_resumed_last(self, checkpointer: Checkpointer) -> None:
        """After a resume from this policy's ``last`` file, that file is ``last_model_path``.

        A linked ``last`` (``save_last="link"``) holds the state of the top-k file, dumped before
        ``last`` was chosen: resumed from the first one, the state names no ``last`` file, and the
        next save would write ``last-v1`` and leave ``last`` committed beside it.

        Resumed from the kept previous version of a ``last`` file (``.last.ckpt.ckpthooks-prev``,
        committed while a killed run was overwriting ``last.ckpt``), the ``last`` file is the one it
        keeps: the next save writes ``last.ckpt`` again, and its commit drops the kept copy.
        """
        resumed = checkpointer.resumed_from
        if not self.save_last or resumed is None or resumed == self.last_model_path or self.dirpath is None:
            return
        if paths.dirname(resumed) != paths.dirname(self._filepath("x")):
            return  # not one of this policy's files
        name = paths.basename(resumed)
        original = previous_of(name)
        if name.startswith(".") and original is None:
            return
        manifest = read_manifest(resumed, checkpointer.storage_options)
        if manifest is not None and manifest.writer == f"{self.state_key}#last":
            self.last_model_path = resumed if original is None else paths.join(paths.dirname(resumed), original)

    def _finish_pending_removals(self, checkpointer: Checkpointer) -> None:
        """Delete the files a restored state had displaced but not yet deleted (a crash came first)."""
        for filepath in sorted(self._pending_removals):
            try:
                manifest = read_manifest(filepath, checkpointer.storage_options)
                if manifest is not None and manifest.global_step > checkpointer.global_step:
                    self._discard_pending(filepath)  # a later save reused the name: not the one
                    continue
                self._remove_if_ours(checkpointer, filepath)
            except (CheckpointError, OSError) as exc:
                log.warning("could not remove %s, displaced before the restart: %s", filepath, exc)

    def on_fit_end(self, checkpointer: Checkpointer) -> None:
        self._apply_background_failures(checkpointer)
        if self.save_last and not self._saved_this_run and checkpointer.global_step > self._fit_start_step:
            # no trigger fired in this run (every_n_epochs=0, or more than the epochs run): Lightning's
            # on_train_end writes ``last`` all the same
            candidates = self.monitor_candidates(checkpointer)
            self._note_save(checkpointer)
            self._transaction(checkpointer, lambda: self._save_last(checkpointer, candidates, None))

    def on_exception(self, checkpointer: Checkpointer, exception: BaseException) -> None:
        """``save_on_exception=True``: save a checkpoint (named by ``filename``, not ranked) and
        ``last`` when the loop raises, unless this step is saved already (Lightning's rule). The
        exception goes on whatever happens here: a failed save is logged. Under
        ``torch.distributed`` nothing is saved (the ranks that did not raise would not join)."""
        if not self.save_on_exception or self._already_saved(checkpointer):
            return
        if distributed.world_size(checkpointer.host) > 1:
            log.warning("save_on_exception: no checkpoint under torch.distributed (the other ranks would not join)")
            return
        try:
            candidates = self.monitor_candidates(checkpointer)
            filepath = self._new_filepath(candidates, reuse=None)
            self._note_save(checkpointer)

            def write() -> str:
                self._write(checkpointer, filepath, role="exception", score=None, replaces=None)
                self._save_last(checkpointer, candidates, None)
                return filepath

            self._transaction(checkpointer, write)
            checkpointer.wait()
            log.info(
                "%s was raised (%s); saved checkpoint to %s", type(exception).__name__, exception, filepath
            )
        except Exception as exc:  # never hide the exception the loop raised
            log.error("save_on_exception: the checkpoint could not be saved: %s", exc)

    def teardown(self, checkpointer: Checkpointer) -> None:
        self._apply_background_failures(checkpointer)

    def on_train_batch_end(self, checkpointer: Checkpointer) -> None:
        if self._already_saved(checkpointer):
            return
        due = self.schedule.due_after_step(checkpointer.global_step)
        if self.schedule.train_time_interval is not None:  # clocks differ: rank 0's decides
            due = bool(distributed.broadcast_object(due, host=checkpointer.host))
        if not due:
            return
        if self.monitor is not None and self._monitor_freshness(checkpointer) != "fresh":
            # the monitor is logged at validation: wait for it (Lightning's _defer_save_until_validation)
            self._deferred = True
            return
        self.save_due(checkpointer)

    def on_train_epoch_end(self, checkpointer: Checkpointer) -> None:
        if self.schedule.saves_on_train_epoch_end():
            self._epoch_save(checkpointer)

    def on_validation_end(self, checkpointer: Checkpointer) -> None:
        epoch_save = not self.schedule.saves_on_train_epoch_end()
        if self._already_saved(checkpointer) or not (self._deferred or epoch_save):
            return
        freshness = self._monitor_freshness(checkpointer)
        if freshness == "missing" and not checkpointer.loop_tracker.implicit_validation and self.save_top_k != 0:
            due = self._deferred or self.schedule.due_at_epoch_end(checkpointer.current_epoch)
            if due:
                raise ConfigurationError(
                    f"ModelCheckpoint(monitor={self.monitor!r}) found no metric {self.monitor!r} after "
                    f"validation; the metrics logged are {sorted(checkpointer.callback_metrics)}. Log it "
                    f"with Checkpointer.log({self.monitor!r}, value) before validation_end()"
                )
        if self._deferred:
            if freshness in (None, "fresh"):
                self._deferred = False
                self.save_due(checkpointer)
            return
        self._epoch_save(checkpointer)

    def _epoch_save(self, checkpointer: Checkpointer) -> None:
        if self._already_saved(checkpointer):
            return
        if not self.schedule.due_at_epoch_end(checkpointer.current_epoch):
            return
        if self.monitor is not None and self._monitor_freshness(checkpointer) == "stale":
            if self.verbose:
                log.info(
                    "epoch %d: no save by %s, not logged since the last save (no validation this epoch)",
                    checkpointer.current_epoch, self.monitor,
                )  # fmt: skip
            return  # a stale value never ranks a new checkpoint: this epoch had no validation
        self.save_due(checkpointer)

    def _monitor_freshness(self, checkpointer: Checkpointer) -> str | None:
        """``None`` without a monitor; else ``"fresh"`` (logged since this policy's latest save),
        ``"stale"`` (logged only before it) or ``"missing"`` (never logged)."""
        if self.monitor is None:
            return None
        logged_at = checkpointer.loop_tracker.logged_at.get(self.monitor)
        if logged_at is None and self.monitor in _LOOP_CANDIDATES:
            return "fresh"  # epoch, step, global_step: the loop's own values, always current
        if logged_at is None or self.monitor not in checkpointer.callback_metrics:
            freshness = "missing"
        else:
            freshness = "fresh" if logged_at > self._saved_at_log_count else "stale"
        # every rank decides alike: rank 0's answer (one broadcast, only when a save is due)
        return str(distributed.broadcast_object(freshness, host=checkpointer.host))

    def _note_save(self, checkpointer: Checkpointer) -> None:
        self._last_global_step_saved = checkpointer.global_step
        self._saved_at_log_count = checkpointer.loop_tracker.log_count
        self._saved_this_run = True

    def _already_saved(self, checkpointer: Checkpointer) -> bool:
        return self._last_global_step_saved == checkpointer.global_step

    # ------------------------------------------------------------------ saving
    def monitor_candidates(self, checkpointer: Checkpointer) -> dict[str, float]:
        """The metrics of this save decision: the logged ones plus ``epoch``, ``step`` and
        ``global_step``; under ``torch.distributed`` global rank 0's, on every rank."""
        candidates = dict(checkpointer.callback_metrics)
        candidates.setdefault("epoch", float(checkpointer.current_epoch))
        candidates.setdefault("step", float(checkpointer.global_step))
        candidates.setdefault("global_step", float(checkpointer.global_step))
        # one broadcast per decision, so that every rank ranks, names and keeps files alike
        return dict(distributed.broadcast_object(candidates, host=checkpointer.host))

    def save_due(self, checkpointer: Checkpointer) -> None:
        """Save now: a top-k (or latest) file as configured, then ``last``.

        A failed write leaves the bookkeeping as it was before that write. The error is raised,
        or logged when the checkpointer was built with ``on_save_error="log"``.
        """
        checkpointer.settle_background_saves()  # decide knowing whether earlier saves failed
        self._apply_background_failures(checkpointer)
        candidates = self.monitor_candidates(checkpointer)
        self._note_save(checkpointer)
        saved = self._transaction(checkpointer, lambda: self._save_topk(checkpointer, candidates))
        self._transaction(checkpointer, lambda: self._save_last(checkpointer, candidates, saved))

    def _transaction(self, checkpointer: Checkpointer, write: Callable[[], str | None]) -> str | None:
        """Run ``write``; when it fails, undo the bookkeeping changes it made (top-k scores, pending
        removals, ``last_model_path``, the latest path). The changes are logged as they are made,
        so that a save costs the same however many files the policy keeps."""
        savepoint = self._savepoint()
        self._writing = None
        try:
            return write()
        except (StorageError, DistributedCheckpointError, OSError) as exc:
            self._rollback(savepoint)
            self._forget_if_uncommitted(checkpointer, self._writing)
            if checkpointer.on_save_error == "log":
                log.error("checkpoint save failed at step %d; training goes on: %s", checkpointer.global_step, exc)
                return None
            raise
        finally:
            self._release(savepoint)

    def _savepoint(self) -> _Savepoint:
        outermost = self._pending_journal is None
        if self._pending_journal is None:
            self._pending_journal = []
        return _Savepoint(
            topk=self.topk.savepoint(),
            pending=len(self._pending_journal),
            latest_path=self._latest_path,
            last_model_path=self.last_model_path,
            outermost=outermost,
        )

    def _rollback(self, savepoint: _Savepoint) -> None:
        self.topk.rollback(savepoint.topk)
        journal = self._pending_journal
        assert journal is not None
        while len(journal) > savepoint.pending:
            path, was_pending = journal.pop()
            if was_pending:
                self._pending_removals.add(path)
            else:
                self._pending_removals.discard(path)
        self._latest_path = savepoint.latest_path
        self.last_model_path = savepoint.last_model_path

    def _release(self, savepoint: _Savepoint) -> None:
        self.topk.release()
        if savepoint.outermost:
            self._pending_journal = None

    def _add_pending(self, path: str) -> None:
        """Mark ``path`` for removal (undone with the transaction that marks it)."""
        if path not in self._pending_removals:
            self._pending_removals.add(path)
            journal = self._pending_journal  # read once: a save worker thread may prune meanwhile
            if journal is not None:
                journal.append((path, False))

    def _discard_pending(self, path: str) -> None:
        if path in self._pending_removals:
            self._pending_removals.discard(path)
            journal = self._pending_journal
            if journal is not None:
                journal.append((path, True))

    def _forget_if_uncommitted(self, checkpointer: Checkpointer, filepath: str | None) -> None:
        """After a failed save over a file the bookkeeping names (``last.ckpt``, a reused name):
        forget it when the failure left it uncommitted, so that the bookkeeping names committed
        files only."""
        if filepath is None or not (
            filepath in self.topk.scores or filepath in (self.last_model_path, self._latest_path)
        ):
            return
        gone = False
        if checkpointer.is_global_zero:
            try:
                gone = read_manifest(filepath, checkpointer.storage_options) is None
            except (CheckpointError, OSError) as exc:
                log.warning("cannot tell whether %s is still committed: %s", filepath, exc)
        if distributed.broadcast_object(gone, host=checkpointer.host):
            log.warning("%s is no longer committed after the failed save; forgetting it", filepath)
            self.topk.discard(filepath)
            if self.last_model_path == filepath:
                self.last_model_path = ""
                self._reusable_last = filepath  # ours: the next save_last may write it again
            if self._latest_path == filepath:
                self._latest_path = ""

    def _save_topk(self, checkpointer: Checkpointer, candidates: dict[str, float]) -> str | None:
        if self.save_top_k == 0:
            return None
        if self.monitor is None:
            return self._save_latest(checkpointer, candidates)
        if self.monitor not in candidates:
            log.warning(
                "ModelCheckpoint(monitor=%r) found no logged metric %r at step %d; no top-k file "
                "saved. Log it with Checkpointer.log before this point.",
                self.monitor, self.monitor, checkpointer.global_step,
            )
            return None
        score = candidates[self.monitor]
        self.current_score = score
        if not math.isfinite(score):
            log.warning(
                "ModelCheckpoint: %s=%s at step %d is not finite; it is never ranked",
                self.monitor, score, checkpointer.global_step,
            )
            return None
        if not self.topk.qualifies(score):
            if self.verbose:
                log.info(
                    "epoch %d, step %d: %s=%s is not in the top %d",
                    checkpointer.current_epoch, checkpointer.global_step, self.monitor, score, self.save_top_k,
                )
            return None
        displaced = self.topk.displaced()
        filepath = self._new_filepath(candidates, reuse=displaced)
        if displaced is not None:
            self.topk.discard(displaced)
        self.topk.add(filepath, score)
        if self.verbose:
            log.info(
                "epoch %d, step %d: %s reached %s (best %s), saving %s",
                checkpointer.current_epoch, checkpointer.global_step, self.monitor, score,
                self.topk.best_value, filepath,
            )
        self._write(checkpointer, filepath, role="topk", score=score, replaces=displaced)
        return filepath

    def _save_latest(self, checkpointer: Checkpointer, candidates: dict[str, float]) -> str:
        previous = self._latest_path or None
        replaces = previous if self.save_top_k == 1 else None
        filepath = self._new_filepath(candidates, reuse=replaces)
        self._latest_path = filepath
        self._write(checkpointer, filepath, role="topk", score=None, replaces=replaces)
        return filepath

    def _save_last(self, checkpointer: Checkpointer, candidates: dict[str, float], saved: str | None) -> str | None:
        if not self.save_last:
            return None
        last_name = self._format_checkpoint_name(
            self.CHECKPOINT_NAME_LAST, candidates, auto_insert_metric_name=self.auto_insert_metric_name
        )
        filepath = self._filepath(last_name)
        if self.enable_version_counter and filepath != self.last_model_path:
            reuse = self.last_model_path or self._reusable_last or None
            filepath = self._versioned(filepath, last_name, candidates, reuse=reuse)
        previous = self.last_model_path or None
        self.last_model_path = filepath
        replaces = previous if previous and previous != filepath else None
        if self.save_last == "link" and saved is not None:
            self._link(checkpointer, saved, filepath, replaces)
        else:
            self._write(checkpointer, filepath, role="last", score=None, replaces=replaces)
        return None

    def _write(
        self,
        checkpointer: Checkpointer,
        filepath: str,
        *,
        role: str,
        score: float | None,
        replaces: str | None,
    ) -> None:
        if replaces == filepath:
            replaces = None
        write = _Write(role=role, replaces=replaces)

        def after_commit(manifest: Manifest) -> None:
            with self._lock:  # a background save: on the worker, while the loop goes on
                if self._in_flight.get(filepath) is write:
                    del self._in_flight[filepath]
            if self._other_rules(checkpointer):  # what they read; the bookkeeping alone needs none
                self._manifests[filepath] = manifest
            if replaces is not None:
                self._remove_if_ours(checkpointer, replaces)
            if write.link is not None:
                self._link_committed(checkpointer, filepath, *write.link)

        if replaces is not None:
            self._add_pending(replaces)  # before the state is dumped into the new file
        self._writing = filepath
        writer = f"{self.state_key}#{role}"
        with self._lock:
            self._in_flight[filepath] = write
        try:
            checkpointer.save_checkpoint(
                filepath, self.save_weights_only, writer=writer, on_committed=after_commit
            )
        except BaseException:
            with self._lock:
                if self._in_flight.get(filepath) is write:
                    del self._in_flight[filepath]
            raise

    def _link(self, checkpointer: Checkpointer, source: str, filepath: str, replaces: str | None) -> None:
        """``last`` as a hard link to the newest top-k file where the filesystem allows, else a
        full write. The writer rank decides, so every rank takes the same branch."""
        can_link = deferred = False
        options = checkpointer.storage_options
        here, there = Location.of(source, options), Location.of(filepath, options)
        if checkpointer.is_global_zero and here.hard_links and there.hard_links:
            # with async_save the source may still be in flight: link once the worker commits it
            deferred = self._link_after_commit(source, filepath, replaces)
            can_link = deferred or (
                not here.is_folder()  # a folder checkpoint is written again
                and read_manifest(source, checkpointer.storage_options) is not None
            )
        if not distributed.broadcast_object(can_link, host=checkpointer.host):
            self._write(checkpointer, filepath, role="last", score=None, replaces=replaces)
            return
        if deferred:
            return
        error: BaseException | None = None
        self._writing = filepath
        if checkpointer.is_global_zero:
            try:
                checkpointer.store.link(source, filepath, writer=f"{self.state_key}#last")
            except Exception as exc:
                error = exc
        distributed.agree_on_outcome(error, f"linking {filepath}", host=checkpointer.host)
        if replaces is not None and checkpointer.is_global_zero:
            self._remove_if_ours(checkpointer, replaces)

    def _link_after_commit(self, source: str, filepath: str, replaces: str | None) -> bool:
        """When the save of ``source`` is still in flight (``async_save``): have its commit link
        ``filepath`` to it, on the worker, and return ``True``; ``False`` once it has committed.
        Also ``True`` when it has failed already: then ``filepath`` is not written either."""
        with self._lock:
            write = self._in_flight.get(source)
            if write is None and any(path == source and done.role == "topk" for path, done in self._failed):
                # it failed already, before this decision: the last file is not written either, as
                # when the link waits for a save that then fails
                self._failed.append((filepath, _Write(role="last", replaces=replaces)))
                return True
            if write is None or write.role != "topk":
                return False
            write.link = (filepath, replaces)
            return True

    def _link_committed(self, checkpointer: Checkpointer, source: str, filepath: str, replaces: str | None) -> None:
        """The deferred half of :meth:`_link`, run where ``source`` was committed (the save worker)."""
        try:
            checkpointer.store.link(source, filepath, writer=f"{self.state_key}#last")
        except (CheckpointError, OSError) as exc:
            log.error("could not link %s to %s: %s", filepath, source, exc)
            self._failed.append((filepath, _Write(role="last", replaces=replaces)))
            return
        if replaces is not None:
            self._remove_if_ours(checkpointer, replaces)

    # ------------------------------------------------------------------ naming
    def _filepath(self, name: str) -> str:
        _check_inside_dirpath(name, "file name")
        if self.dirpath is None:  # not attached to a checkpointer yet: the bare name, like Lightning
            return name + self.FILE_EXTENSION
        return paths.join(self.dirpath, name + self.FILE_EXTENSION)

    @classmethod
    def _format_checkpoint_name(
        cls, filename: str | None, metrics: Mapping[str, float], prefix: str = "", auto_insert_metric_name: bool = True
    ) -> str:
        """``filename`` (a template) rendered with ``metrics``, without folder or extension, with
        the class's join and equals characters (Lightning's classmethod of the same name)."""
        return format_filename(
            filename, metrics, auto_insert_metric_name=auto_insert_metric_name, prefix=prefix,
            join_char=cls.CHECKPOINT_JOIN_CHAR, equals_char=cls.CHECKPOINT_EQUALS_CHAR,
        )  # fmt: skip

    def format_checkpoint_name(
        self, metrics: Mapping[str, float], filename: str | None = None, ver: int | None = None, prefix: str = ""
    ) -> str:
        """The path a save with ``metrics`` would use (Lightning's method, with its arguments):
        ``filename`` replaces the policy's template, ``ver`` appends a version, ``prefix`` leads."""
        name = self._format_checkpoint_name(
            filename or self.filename, metrics, prefix, auto_insert_metric_name=self.auto_insert_metric_name
        )
        if ver is not None:
            name = with_version(name, ver, self.CHECKPOINT_JOIN_CHAR)
        return self._filepath(name)

    def _new_filepath(self, candidates: dict[str, float], reuse: str | None) -> str:
        filepath = self.format_checkpoint_name(candidates)
        if self.enable_version_counter:
            return self._versioned(filepath, None, candidates, reuse)
        if filepath != reuse and self._counts(filepath):
            raise ConfigurationError(
                f"ModelCheckpoint would overwrite {filepath}, which it still keeps, because the "
                "filename template gives the same name again and enable_version_counter=False. "
                "Put {step} or a metric in filename=, or enable the version counter."
            )
        # a file this policy does not keep (an earlier run's) is overwritten, as in Lightning; the
        # commit keeps its previous version until the new file is committed
        return filepath

    def _versioned(
        self, filepath: str, fixed: str | None, candidates: dict[str, float], reuse: str | None
    ) -> str:
        version = self.STARTING_VERSION
        while filepath != reuse and self._exists(filepath):
            if fixed is None:
                filepath = self.format_checkpoint_name(candidates, ver=version)
            else:
                filepath = self._filepath(with_version(fixed, version, self.CHECKPOINT_JOIN_CHAR))
            version += 1
        return filepath

    def _counts(self, filepath: str) -> bool:
        """Whether this policy's bookkeeping names ``filepath`` (top-k, latest or ``last``)."""
        return filepath in self.topk.scores or filepath in (self.last_model_path, self._latest_path)

    def _exists(self, filepath: str) -> bool:
        if self._counts(filepath):
            return True
        fs = paths.filesystem(filepath, self._storage_options())
        exists = bool(fs.exists(paths.fs_path(fs, filepath)))
        # every rank takes the writer's answer: a rank that looks after the writer saved would see
        # the new file and pick another name (Lightning broadcasts the file path for this reason)
        host = self._checkpointer.host if self._checkpointer else None
        return bool(distributed.broadcast_object(exists, host=host))

    def _storage_options(self) -> Any:
        return self._checkpointer.storage_options if self._checkpointer else None

    # ------------------------------------------------------------------ deleting
    def keep(self, checkpoints: Sequence[CommittedCheckpoint]) -> Collection[str]:
        """This policy as a retention rule: it keeps the files its bookkeeping names (the top-k or
        latest files and ``last``), in constant time per checkpoint."""
        return [c.path for c in checkpoints if self._references(c.path)]

    def _references(self, filepath: str) -> bool:
        return filepath in self.topk.scores or filepath in (self.last_model_path, self._latest_path)

    def _remove_if_ours(self, checkpointer: Checkpointer, filepath: str) -> None:
        """``filepath`` was displaced and the file replacing it is committed: delete it unless a
        retention rule keeps it, through the pruner (which checks that this policy wrote it)."""
        self._prune(checkpointer, [filepath, *sorted(self._retained - {filepath})])

    def _prune(self, checkpointer: Checkpointer, filepaths: list[str]) -> None:
        pruner = Pruner.of(checkpointer)
        candidates: list[CommittedCheckpoint] = []
        for filepath in filepaths:
            if self._references(filepath):
                self._forget_displaced(filepath)
                continue  # still referenced (the name was reused)
            manifest = self._manifests.get(filepath) or pruner.committed(filepath)
            if manifest is None or not (manifest.writer or "").startswith(self.state_key + "#"):
                if manifest is not None:
                    log.info("keeping %s: this ModelCheckpoint did not write it", filepath)
                self._forget_displaced(filepath)
                continue
            candidates.append(CommittedCheckpoint(filepath, manifest))
        if not candidates:
            return
        others = self._other_rules(checkpointer)
        # other rules judge a file among this policy's other files (the hour's newest, ...);
        # without them the bookkeeping alone decides, at a cost that does not grow with the files kept
        everything = {c.path: c for c in self._scope(checkpointer)} if others else {}
        everything.update((c.path, c) for c in candidates)
        kept = kept_by([self, *others], list(everything.values()))
        for candidate in candidates:
            filepath = candidate.path
            if filepath in kept:
                if self._references(filepath):
                    self._forget_displaced(filepath)
                else:  # kept by another rule: asked again after the next commit
                    self._retained.add(filepath)
                    self._discard_pending(filepath)
            elif pruner.remove(filepath, writer=self.state_key, manifest=candidate.manifest):
                self._forget_displaced(filepath)
            elif checkpointer.resumed_from == paths.normalize(filepath):
                self._retained.discard(filepath)  # stays pending: a later run deletes it
            else:
                self._forget_displaced(filepath)

    def _other_rules(self, checkpointer: Checkpointer) -> list[RetentionRule]:
        return [rule for rule in rules_among(checkpointer.callbacks) if rule is not self]

    def _forget_displaced(self, filepath: str) -> None:
        self._discard_pending(filepath)
        self._retained.discard(filepath)
        if not self._references(filepath):
            self._manifests.pop(filepath, None)

    def _scope(self, checkpointer: Checkpointer) -> list[CommittedCheckpoint]:
        """This policy's committed files: the ones its bookkeeping names and the retained ones."""
        pruner = Pruner.of(checkpointer)
        scope = []
        for filepath in {*self.topk.scores, self.last_model_path, self._latest_path, *self._retained} - {""}:
            manifest = self._manifests.get(filepath)
            if manifest is None:
                manifest = pruner.committed(filepath)
                if manifest is None:
                    continue
                self._manifests[filepath] = manifest
            scope.append(CommittedCheckpoint(filepath, manifest))
        return scope

    # ------------------------------------------------------------------ finding
    def checkpoint_folders(self) -> list[str]:
        """``dirpath``, once known (after setup)."""
        return [self.dirpath] if self.dirpath else []

    @property
    def resolves_best(self) -> bool:
        """With a ``monitor``, ``ckpt_path="best"`` is this policy's best top-k file."""
        return self.monitor is not None

    def find_best(self, checkpointer: Checkpointer) -> str | None:
        """The best committed file of this policy, from its manifests (works in a new process)."""
        if self.monitor is None or self.dirpath is None:
            return self.best_model_path or None
        best: tuple[float, str] | None = None
        for item in iter_committed(self.dirpath, checkpointer.storage_options):
            manifest = item.manifest
            if manifest.writer != f"{self.state_key}#topk":
                continue
            score = manifest.metrics.get(self.monitor)
            if score is None or not math.isfinite(score):
                continue
            if best is None or self.topk.better(score, best[0]):
                best = (score, item.path)
        return best[1] if best else None

    def on_checkpoint_failed(self, checkpointer: Checkpointer, path: str, error: BaseException) -> None:
        """A background save of one of this policy's files failed (on the save worker): its
        bookkeeping is undone on the training thread, before the next save decision."""
        with self._lock:
            write = self._in_flight.pop(path, None)
            if write is None:
                return
            self._failed.append((path, write))
            if write.link is not None:  # the last file to link to it is not written either
                filepath, replaces = write.link
                self._failed.append((filepath, _Write(role="last", replaces=replaces)))

    def _apply_background_failures(self, checkpointer: Checkpointer) -> None:
        """Undo what failed background saves changed, as a failed synchronous save's transaction
        does: a file the failure left committed (the store commits the old bytes again when the
        write failed before replacing them) stays in the bookkeeping; one it left uncommitted is
        forgotten, and a ``last`` name is written again next time (never ``last-v1`` beside it); the
        file the failed save displaced stays, back in the bookkeeping when it is still committed."""
        while self._failed:
            path, write = self._failed.popleft()
            committed = read_manifest(path, checkpointer.storage_options)
            if committed is None:
                self._forget(path)
            else:
                self._manifests[path] = committed
                score = committed.metrics.get(self.monitor) if self.monitor else None
                if path in self.topk.scores and score is not None and math.isfinite(score):
                    self.topk.scores[path] = score  # the old bytes: their score
            displaced = write.replaces
            if displaced is None:
                continue
            self._discard_pending(displaced)
            previous = read_manifest(displaced, checkpointer.storage_options)
            if previous is None or not (previous.writer or "").startswith(self.state_key + "#"):
                continue
            self._manifests[displaced] = previous
            if write.role == "last":
                if not self.last_model_path:
                    self.last_model_path = displaced
            elif self.monitor is None:
                if not self._latest_path:
                    self._latest_path = displaced
            else:
                score = previous.metrics.get(self.monitor)
                room = self.topk.k < 0 or len(self.topk.scores) < self.topk.k
                if score is not None and math.isfinite(score) and room:
                    self.topk.add(displaced, score)

    def _forget(self, path: str) -> None:
        """Drop a file a failed save left uncommitted from the bookkeeping."""
        log.warning("%s is not committed after the failed save; forgetting it", path)
        self.topk.discard(path)
        self._manifests.pop(path, None)
        if self.last_model_path == path:
            self.last_model_path = ""
            self._reusable_last = path  # ours: the next save_last may write it again
        if self._latest_path == path:
            self._latest_path = ""

    # ------------------------------------------------------------------ state
    def has_state(self) -> bool:
        """Whether :meth:`state_dict` has something to save, without building it (the state holds
        every kept file, so it grows with them). Always, unless a subclass changed ``state_dict``."""
        if type(self).state_dict is ModelCheckpoint.state_dict:
            return True
        return bool(self.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """Lightning's keys, plus ours; paths relative to ``dirpath``. Building it is proportional
        to the files kept (``best_k_models`` lists them all), so a save builds it once."""
        scores = self.topk.scores
        best = self.topk.best_path
        kth = self.topk.kth_path
        prefix = self._relative_prefix() if scores else None
        if prefix is None:
            best_k_models = {self._relative(p): s for p, s in scores.items()}
        else:
            best_k_models = {p.removeprefix(prefix): s for p, s in scores.items()}

        def rel(path: str) -> str:
            return self._relative(path) if path else path

        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "dirpath": self.dirpath,
            "best_model_score": None if best is None else scores[best],
            "best_model_path": rel(self._latest_path if self.monitor is None else best or ""),
            "current_score": self.current_score,
            "best_k_models": best_k_models,
            "kth_best_model_path": rel(kth or ""),
            "kth_value": None if kth is None else scores[kth],
            "last_model_path": rel(self.last_model_path),
            "latest_model_path": rel(self._latest_path),
            "last_global_step_saved": self._last_global_step_saved,
            "saved_in_run": self._saved_this_run,
            "deferred": self._deferred,
            "pending_removals": sorted(self._relative(p) for p in self._pending_removals),
            "retained": sorted(self._relative(p) for p in self._retained),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_global_step_saved = int(state_dict.get("last_global_step_saved", 0))
        self._deferred = bool(state_dict.get("deferred", False))
        self._saved_this_run = bool(state_dict.get("saved_in_run", self._last_global_step_saved > 0))
        saved_dirpath = state_dict.get("dirpath")
        if self._dirpath_changed(state_dict):
            # resumed into another folder: the files stay where they are, so the bookkeeping
            # (which names files in this folder) starts fresh; only best_model_path is kept, as in
            # Lightning (where it names the old folder)
            warnings.warn(
                f"The dirpath has changed from {saved_dirpath!r} to {self.dirpath!r}, therefore "
                "`best_model_score`, `kth_best_model_path`, `kth_value`, `last_model_path` and "
                "`best_k_models` won't be reloaded. Only `best_model_path` will be reloaded.",
                UserWarning,
                stacklevel=2,
            )
            best = state_dict.get("best_model_path") or ""
            if best and _is_relative(best):
                best = paths.join(str(saved_dirpath), best)
            self._restored_best = best
            self._pending_removals, self._retained, self._manifests = set(), set(), {}
            self._saved_this_run = False  # nothing saved in this folder yet
            return
        self.current_score = state_dict.get("current_score")
        self._restored_best = ""
        scores = state_dict.get("best_k_models") or {}
        self.topk.scores = {self._absolute(p): float(s) for p, s in scores.items()}
        self.last_model_path = self._absolute(state_dict.get("last_model_path") or "")
        self._latest_path = self._absolute(state_dict.get("latest_model_path") or "")
        self._pending_removals = {self._absolute(p) for p in state_dict.get("pending_removals") or []}
        self._retained = {self._absolute(p) for p in state_dict.get("retained") or []}
        self._manifests = {}

    def _dirpath_changed(self, state_dict: dict[str, Any]) -> bool:
        """Whether ``state_dict`` was saved with another ``dirpath`` whose files are not here (a
        run resumed into a new folder; a moved or copied run folder keeps its state). Rank 0
        decides for every rank: each rank calls this, whatever its own folder."""
        saved = state_dict.get("dirpath")
        changed = bool(saved and self.dirpath and saved != self.dirpath) and not self._files_moved(state_dict)
        host = self._checkpointer.host if self._checkpointer else None
        return bool(distributed.broadcast_object(changed, host=host))

    def _files_moved(self, state_dict: dict[str, Any]) -> bool:
        """Whether the files ``state_dict`` names (relative to its ``dirpath``) are in this
        policy's ``dirpath``: the run's folder was moved or copied, and the state still applies."""
        names = [state_dict.get(k) or "" for k in ("last_model_path", "latest_model_path", "best_model_path")]
        names += list(state_dict.get("best_k_models") or {})
        probe = next((n for n in names if n and _is_relative(n)), None)
        if probe is None:
            return False
        return Location.of(self._absolute(probe), self._storage_options()).exists()

    def _relative(self, path: str) -> str:
        if not path:
            return path
        prefix = self._relative_prefix()
        assert prefix is not None
        return path.removeprefix(prefix)

    def _relative_prefix(self) -> str | None:
        """What :meth:`_relative` cuts off the paths in ``dirpath``."""
        if self.dirpath is None:
            return None
        return paths.join(self.dirpath.rstrip("/") or "/", "")

    def _absolute(self, path: str) -> str:
        if not path:
            return path
        if not _is_relative(path):
            return path
        assert self.dirpath is not None
        return paths.join(self.dirpath, path)

    def to_yaml(self, filepath: str | os.PathLike[str] | None = None) -> None:
        """Write ``best_k_models`` (path: score) as YAML, by default to ``best_k_models.yaml`` in
        ``dirpath`` (Lightning's method; any storage the checkpoints use)."""
        if filepath is None:
            if self.dirpath is None:
                raise ConfigurationError("to_yaml() needs a filepath before the policy has a dirpath")
            target = paths.join(self.dirpath, "best_k_models.yaml")
        else:
            target = paths.normalize(filepath)
        location = Location.of(target, self._storage_options())
        location.make_parents()
        location.replace_with(_yaml_mapping(self.best_k_models).encode())

    def __getstate__(self) -> dict[str, Any]:
        """Picklable like Lightning's callback (spawned processes, configuration tools): without
        the lock and the checkpointer it is attached to, which the unpickled copy does not share."""
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_checkpointer"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ModelCheckpoint(dirpath={self.dirpath!r}, monitor={self.monitor!r}, save_top_k={self.save_top_k})"


def _is_relative(path: str) -> bool:
    """Whether a path of the policy's state is relative to its ``dirpath`` (neither an absolute
    local path nor a URL)."""
    return not (os.path.isabs(path) or "://" in path)


def _yaml_mapping(scores: Mapping[str, float]) -> str:
    """A flat ``{path: score}`` mapping as YAML that any YAML 1.1 or 1.2 reader loads back to
    the same strings and floats (quoted keys; floats with a dot, ``.inf``, ``.nan``)."""
    if not scores:
        return "{}\n"
    lines = []
    for path, score in scores.items():
        key = "'" + str(path).replace("'", "''") + "'"
        lines.append(f"{key}: {_yaml_float(float(score))}")
    return "\n".join(lines) + "\n"


def _yaml_float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "." not in text and "e" in text:  # 1e-05: YAML 1.1 reads it as a string without the dot
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text
