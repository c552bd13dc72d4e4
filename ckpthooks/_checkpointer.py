"""The runtime: follows a plain training loop, collects its state, and saves and restores it.

A :class:`Checkpointer` plays the part of Lightning's ``Trainer`` for checkpointing only: it knows the
objects you :meth:`~Checkpointer.track`, the loop position, the metrics you :meth:`~Checkpointer.log`
and the callbacks (policies such as ``ModelCheckpoint``). Plugins contribute state components,
policies and storage backends through the hooks in :mod:`ckpthooks.hookspecs`.

The class is a facade over four parts, each in its own module: :mod:`~ckpthooks._loop_tracking`
(loop events, batches, ``fit``/``loop``, preemption safe points), :mod:`~ckpthooks._state_assembly`
(the checkpoint dict and its restore), :mod:`~ckpthooks._resolution` (``ckpt_path``: a path,
"last", "best") and :mod:`~ckpthooks._save_strategy` (sync, async, collective saves). It knows
policies only through what :class:`~ckpthooks.Callback` declares.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

from ckpthooks import _distributed as distributed
from ckpthooks._async_save import AsyncSaver
from ckpthooks._callbacks import Callback, as_list, configured_callbacks, with_default_policy
from ckpthooks._commit import clean_leftovers
from ckpthooks._components import StateComponent, TrackedComponent
from ckpthooks._io import paths
from ckpthooks._io.base import CheckpointIO
from ckpthooks._loop_tracking import FitResult, LoopTracker
from ckpthooks._manifest import CommittedCheckpoint, Manifest, VerifyMode
from ckpthooks._plugin_host import PluginHost, get_plugin_host
from ckpthooks._preemption import DEFAULT_SIGNALS, PreemptionWatcher
from ckpthooks._progress import LoopProgress
from ckpthooks._resolution import Resolver
from ckpthooks._save_strategy import SaveStrategy
from ckpthooks._state_assembly import RestoreReport, dump_checkpoint, restore_from_dict
from ckpthooks._store import CheckpointStore
from ckpthooks.exceptions import CheckpointError, ConfigurationError, DuplicateContributionError

__all__ = ["Checkpointer", "FitResult", "RestoreReport"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Checkpointer:
    """Checkpointing for a plain PyTorch training loop.

    Args:
        default_root_dir: folder (or fsspec URL) for checkpoints when no ``ModelCheckpoint`` says
            otherwise; defaults to the current working directory.
        callbacks: callbacks and policies, such as ``ModelCheckpoint``; plugins may add more.
        enable_checkpointing: when true and no ``ModelCheckpoint`` is given, a default one saves the
            latest state to ``<default_root_dir>/checkpoints`` at every epoch end.
        checkpoint_io: a storage backend to use for every path, overriding the backend plugins
            contribute per URL.
        storage_options: passed to fsspec (and to the storage hooks) for every path.
        strict: restore fails when the checkpoint lacks state for something tracked, or holds state
            nothing tracked can take. ``False`` restores what fits and logs the rest.
        save_rng_state: save and restore Python, NumPy, torch and CUDA random generator states.
        verify: what loading checks against the commit manifest: ``"full"`` (size and checksum),
            ``"size"`` or ``"off"``.
        on_save_error: what a failed save triggered by a policy does: ``"raise"`` (the default)
            stops training with the error; ``"log"`` logs it and training goes on (the policy's
            bookkeeping stays as it was before the failed write). Manual ``save_checkpoint`` calls
            always raise.
        preemption_signals: signals that ask for a checkpoint and a clean stop (default SIGTERM;
            add e.g. ``signal.SIGUSR1``; ``None`` or ``()`` leaves signal handling alone). While the
            loop runs, such a signal is recorded; at a safe point (the end of a step or an epoch:
            the next one in a single process, under ``torch.distributed`` the one where the ranks
            agree, within about 0.2 s or two steps, see :mod:`ckpthooks._preemption`) every rank
            saves ``preempted.ckpt`` in the checkpoint folder and the process exits with
            ``preemption_exit_code``.
        preemption_exit_code: the exit code after a preemption save; default ``128 + signal``
            (143 for SIGTERM), the shell's convention for "ended by this signal".
        async_save: save in the background: the training thread only copies the state (tensors
            to CPU), a worker thread writes and commits it. A background failure is raised at the
            next save, at :meth:`wait` or at :meth:`close` (logged there instead for policy saves
            when ``on_save_error="log"``). See :mod:`ckpthooks._async_save`.
        max_saves_in_flight: with ``async_save``, how many saves may be queued or writing at once;
            the next save waits (back-pressure). Each holds one copy of the state in memory.
        plugin_host: the plugin host to use; the shared one by default.
    """

    def __init__(
        self,
        default_root_dir: str | os.PathLike[str] | None = None,
        callbacks: Callback | Sequence[Callback] | None = None,
        *,
        enable_checkpointing: bool = True,
        checkpoint_io: CheckpointIO | None = None,
        storage_options: Mapping[str, Any] | None = None,
        strict: bool = True,
        save_rng_state: bool = True,
        verify: VerifyMode = "full",
        on_save_error: Literal["raise", "log"] = "raise",
        preemption_signals: Sequence[int] | None = DEFAULT_SIGNALS,
        preemption_exit_code: int | None = None,
        async_save: bool = False,
        max_saves_in_flight: int = 1,
        plugin_host: PluginHost | None = None,
    ) -> None:
        if checkpoint_io is not None and not isinstance(checkpoint_io, CheckpointIO):
            raise ConfigurationError(
                f"checkpoint_io must be a ckpthooks.CheckpointIO, not {type(checkpoint_io).__name__}"
            )
        self.default_root_dir = paths.normalize(default_root_dir or os.getcwd())
        self.enable_checkpointing = enable_checkpointing
        if on_save_error not in ("raise", "log"):
            raise ConfigurationError(f'on_save_error must be "raise" or "log", not {on_save_error!r}')
        self.on_save_error = on_save_error
        self.async_save = async_save
        self.preemption = PreemptionWatcher(preemption_signals or ())
        self.preemption_exit_code = preemption_exit_code
        self.storage_options = dict(storage_options) if storage_options else None
        self.strict = strict
        self.save_rng_state = save_rng_state
        self.host = plugin_host or get_plugin_host()
        self.store = CheckpointStore(self.host, checkpoint_io, self.storage_options, verify)

        self.model: Any = None
        self.optimizers: list[Any] = []
        self.lr_schedulers: list[Any] = []
        self.scaler: Any = None
        self.datamodule: Any = None
        self._tracked: dict[str, TrackedComponent] = {}

        self.progress = LoopProgress()
        self.callback_metrics: dict[str, float] = {}
        self.should_stop = False
        self.resumed_from: str | None = None
        #: the strictness of the restore in progress (components read it)
        self.restore_strict = strict
        self.loop_tracker = LoopTracker(self)
        self.saving = SaveStrategy(self, async_save=async_save, max_saves_in_flight=max_saves_in_flight)
        self.resolver = Resolver(self)

        self.callbacks: list[Callback] = configured_callbacks(callbacks, enable_checkpointing=enable_checkpointing)
        self._component_sources: dict[str, str] = {}
        self._components: list[StateComponent] = []
        for plugin_name, component in self.host.state_components(self):
            self._components.append(component)
            self._component_sources[component.name] = plugin_name
        policies = [policy for _, policy in self.host.policies(self)]
        self.callbacks = with_default_policy(self.callbacks, policies, enable_checkpointing=enable_checkpointing)
        for cb in self.callbacks:
            cb.setup(self)
        if self.is_global_zero:
            clean_leftovers(self.checkpoint_roots(), self.storage_options)

    # ------------------------------------------------------------------ tracking
    def track(
        self,
        model: Any = None,
        optimizers: Any = None,
        lr_schedulers: Any = None,
        scaler: Any = None,
        datamodule: Any = None,
        **others: Any,
    ) -> Checkpointer:
        """Register the objects whose state every checkpoint carries; returns ``self``.

        ``optimizers`` and ``lr_schedulers`` take one object or a list. ``scaler`` is an AMP
        ``GradScaler``. Any other keyword names an object with ``state_dict``/``load_state_dict``
        (an EMA model, a stateful sampler, ...). Calling ``track`` again adds or replaces.
        """
        if model is not None:
            self.model = model
        if optimizers is not None:
            self.optimizers = as_list(optimizers)
        if lr_schedulers is not None:
            self.lr_schedulers = as_list(lr_schedulers)
        if scaler is not None:
            self.scaler = scaler
        if datamodule is not None:
            self.datamodule = datamodule
        for name, obj in others.items():
            if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
                raise ConfigurationError(
                    f"track({name}=...) needs an object with state_dict() and load_state_dict(), "
                    f"got {type(obj).__name__}"
                )
            if name in self._component_sources:
                raise DuplicateContributionError(
                    "state component", name, self._component_sources[name], "Checkpointer.track"
                )
            self._tracked[name] = TrackedComponent(name, obj)
        return self

    @property
    def components(self) -> list[StateComponent]:
        """Every state component, in restore order: plugins' first, then tracked objects."""
        return self._components + list(self._tracked.values())

    # ------------------------------------------------------------------ progress and metrics
    @property
    def current_epoch(self) -> int:
        return self.progress.epoch

    @property
    def global_step(self) -> int:
        return self.progress.global_step

    @property
    def batch_idx(self) -> int:
        return self.progress.batch_idx

    @property
    def is_global_zero(self) -> bool:
        return distributed.is_global_zero(self.host)

    @property
    def global_rank(self) -> int:
        return distributed.global_rank(self.host)

    @property
    def world_size(self) -> int:
        return distributed.world_size(self.host)

    def log(self, name: str, value: Any) -> None:
        """Record a metric for monitors and filename templates (a number or one-element tensor)."""
        self.loop_tracker.log(name, value)

    def log_dict(self, metrics: Mapping[str, Any]) -> None:
        for name, value in metrics.items():
            self.log(name, value)

    # ------------------------------------------------------------------ loop events (loop_tracking)
    def _call(self, event: str, *args: Any) -> None:
        self.loop_tracker.call(event, *args)

    @property
    def _epoch_length(self) -> int | None:
        return self.loop_tracker.epoch_length

    @property
    def _async(self) -> AsyncSaver | None:
        return self.saving.saver

    def fit_start(self) -> None:
        """Mark the start of training (after any restore); preemption signals are handled from here."""
        self.loop_tracker.fit_start()

    def epoch_start(self, epoch: int | None = None) -> None:
        """Mark the start of an epoch (``epoch`` defaults to the next one)."""
        self.loop_tracker.epoch_start(epoch)

    def step_end(self) -> None:
        """Mark the end of one training step: counts it and lets step-based policies act."""
        self.loop_tracker.step_end()

    def validation_end(self) -> None:
        """Mark the end of a validation run: monitor-based policies act on the logged metrics."""
        self.loop_tracker.validation_end()

    def epoch_end(self) -> None:
        """Mark the end of an epoch: epoch-based policies (and the default checkpoint) act."""
        self.loop_tracker.epoch_end()

    def exception(self, exception: BaseException) -> None:
        """Mark that the loop is leaving with ``exception`` (callbacks' ``on_exception`` run)."""
        self.loop_tracker.exception(exception)

    def fit_end(self) -> None:
        """Mark the normal end of training (background saves are waited for)."""
        self.loop_tracker.fit_end()

    def batches(self, iterable: Iterable[T]) -> Iterator[T]:
        """Yield the batches of one epoch, counting steps (a batch counts when the loop asks for
        the next one); after a mid-epoch resume, start exactly where the interrupted run was: the
        epoch's iterator is recreated under its recorded random state and the batches done are
        skipped without loading them, unless the iterable is tracked and restores its own position.
        Draw no random numbers between the start of the epoch and this call."""
        return self.loop_tracker.batches(iterable)

    def fit(
        self, epoch_fn: Callable[..., Any], max_epochs: int, ckpt_path: str | os.PathLike[str] | None = None,
        args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
    ) -> FitResult:  # fmt: skip
        """Run ``epoch_fn(epoch)`` for every epoch up to ``max_epochs``, with restore and saves."""
        return self.loop_tracker.fit(epoch_fn, max_epochs, ckpt_path, args, kwargs)

    def loop(
        self, max_epochs: int, ckpt_path: str | os.PathLike[str] | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., FitResult]]:
        """Decorate a one-epoch function; calling it then runs the whole resumable loop.

        ``ckpt_path`` is ``"last"``, ``"best"``, a path, or ``None`` to start fresh. The function
        receives the epoch number as its first argument when it takes one.
        """
        return self.loop_tracker.loop(max_epochs, ckpt_path)

    # ------------------------------------------------------------------ saving (save_strategy)
    def dump_checkpoint(self, weights_only: bool = False) -> dict[str, Any]:
        """Build the checkpoint dict (on every rank): components, then every on_save_checkpoint hook."""
        return dump_checkpoint(self, weights_only)

    def save_checkpoint(
        self, filepath: str | os.PathLike[str], weights_only: bool = False, *, writer: str | None = None,
        on_committed: Callable[[Manifest], None] | None = None,
    ) -> Manifest | None:  # fmt: skip
        """Save the full training state (or the weights only) to ``filepath`` and commit it.

        Call it on every rank, with the same path: the ranks first check that they all are saving
        ``filepath`` (raising :class:`~ckpthooks.exceptions.DistributedCheckpointError` on every
        rank when they are not, or when a rank does not arrive within the process group's
        timeout), all ranks build the same checkpoint, only global rank 0 writes, and every rank
        raises :class:`~ckpthooks.exceptions.DistributedCheckpointError` if the write failed. With
        a collective backend (``CheckpointIO.collective``, such as the ``ckpthooks-dcp`` plugin's)
        every rank writes its own shards and rank 0 commits. ``on_committed`` runs on the writer
        rank once the checkpoint is committed (policies prune there). Returns the commit manifest on
        the writer rank, ``None`` elsewhere (and with ``async_save``, where the worker commits).
        """
        return self.saving.save(paths.normalize(filepath), weights_only, writer, on_committed)

    def settle_background_saves(self) -> None:
        """With ``async_save``: wait until another save may start (back-pressure), so that a policy
        decides with the outcome of earlier saves known. A no-op otherwise."""
        self.saving.settle()

    def wait(self) -> None:
        """Wait until every background save is committed; raise the first that failed.

        A no-op without ``async_save``. Under ``torch.distributed`` call it on every rank.
        """
        self.saving.wait()

    def remove_checkpoint(self, filepath: str | os.PathLike[str]) -> bool:
        """Uncommit and delete a checkpoint (writer rank only; a no-op elsewhere).

        Refused (returns ``False``) for the file this run resumed from, for a file with a save
        pending, and for files a callback retains (see :meth:`Callback.retains`); the guards are
        the :class:`~ckpthooks._retention.Pruner`'s.
        """
        return self.saving.remove(paths.normalize(filepath))

    # ------------------------------------------------------------------ finding and restoring (resolution)
    def checkpoint_roots(self) -> list[str]:
        """The folders ``ckpt_path="last"`` looks in (see :mod:`ckpthooks._last_search`): the root
        folder itself (not its subfolders, which may hold other runs), ``<root>/checkpoints`` and
        every policy's folder, these with their subfolders."""
        return [folder.path for folder in self.resolver.folders()]

    def committed_checkpoints(self) -> list[CommittedCheckpoint]:
        """Committed checkpoints in :meth:`checkpoint_roots`, newest (by global step) first."""
        return self.resolver.committed()

    def find_checkpoint(self, which: str) -> str | None:
        """The path ``"last"`` or ``"best"`` refers to now, or ``None`` when there is none."""
        return self.resolver.find(which)

    def restore(
        self, ckpt_path: str | os.PathLike[str] | None = "last", *, strict: bool | None = None,
        weights_only: bool = True, map_location: Any = "cpu", must_exist: bool = False,
    ) -> RestoreReport | None:  # fmt: skip
        """Restore everything tracked from a checkpoint.

        ``ckpt_path`` is a path, ``"last"`` (the newest committed checkpoint by global step, ``None``
        and a fresh start when there is none, unless ``must_exist``) or ``"best"``. Returns what was
        restored. ``weights_only=False`` allows unpickling arbitrary objects: only for files you trust.

        Under ``torch.distributed`` call it on every rank: rank 0 alone resolves ``"last"`` and
        ``"best"`` and every rank takes its answer, every rank reads that checkpoint, and if any rank
        cannot, every rank raises (no rank trains on from another state).
        """
        if ckpt_path is None:
            return None
        return self.resolver.restore(
            ckpt_path, strict=strict, weights_only=weights_only, map_location=map_location, must_exist=must_exist
        )

    def restore_from_dict(self, checkpoint: dict[str, Any], *, strict: bool | None = None) -> RestoreReport:
        """Restore from a checkpoint dict already in memory (see :meth:`restore`)."""
        return restore_from_dict(self, checkpoint, strict=strict)

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Release resources; call when training is over (``fit`` does not close). Background saves
        are waited for, and a failed one is raised. Preemption signal handlers still installed (a
        hand-written loop that never called :meth:`fit_end`) are removed."""
        self.preemption.uninstall(synchronize=False)
        self.loop_tracker.unwatch_optimizers()
        self.saving.close()
        errors: list[BaseException] = []
        for cb in self.callbacks:
            try:
                cb.teardown(self)
            except Exception as exc:
                errors.append(exc)
        if self.store.checkpoint_io is not None:
            self.store.checkpoint_io.teardown()
        if errors:
            raise CheckpointError(f"closing the checkpointer failed: {errors[0]}") from errors[0]

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
