"""The runtime: follows a plain training loop, collects its state, and saves and restores it.

A :class:`Checkpointer` plays the part of Lightning's ``Trainer`` for checkpointing only: it knows the
objects you :meth:`~Checkpointer.track`, the loop position, the metrics you :meth:`~Checkpointer.log`
and the callbacks (policies such as ``ModelCheckpoint``). Plugins contribute state components,
policies and storage backends through the hooks in :mod:`ckpthooks.hookspecs`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from ckpthooks import distributed
from ckpthooks._version import FORMAT_VERSION, LIGHTNING_LAYOUT_VERSION, __version__
from ckpthooks.async_save import AsyncSaver
from ckpthooks.callbacks import Callback
from ckpthooks.components import NAMESPACE, StateComponent, TrackedComponent, namespace
from ckpthooks.exceptions import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigurationError,
    CorruptCheckpointError,
    DuplicateContributionError,
    IncompatibleStateError,
    MissingStateError,
    UnexpectedStateError,
)
from ckpthooks.fast_forward import skip_batches
from ckpthooks.io import paths
from ckpthooks.io.base import CheckpointIO, restoring
from ckpthooks.leftovers import clean_leftovers
from ckpthooks.manifest import CommittedCheckpoint, Manifest, VerifyMode, iter_committed
from ckpthooks.plugin_host import PluginHost, get_plugin_host
from ckpthooks.policies.model_checkpoint import ModelCheckpoint
from ckpthooks.preemption import DEFAULT_SIGNALS, PreemptionWatcher, exit_code_for
from ckpthooks.progress import LoopProgress
from ckpthooks.retention import Pruner
from ckpthooks.rng import collect_rng_states, restore_rng_states
from ckpthooks.store import CheckpointStore, check_format_version

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Names :meth:`Checkpointer.track` reserves for the built-in components.
_TRACK_KEYWORDS = ("model", "optimizers", "lr_schedulers", "scaler", "datamodule")


@dataclass
class RestoreReport:
    """What :meth:`Checkpointer.restore` did."""

    path: str
    restored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    epoch: int = 0
    global_step: int = 0

    def summary(self) -> str:
        text = (
            f"restored {', '.join(self.restored) or 'nothing'} from {self.path} "
            f"(epoch {self.epoch}, global step {self.global_step})"
        )
        if self.missing:
            text += f"; missing: {', '.join(self.missing)}"
        if self.unexpected:
            text += f"; not restored: {', '.join(self.unexpected)}"
        return text


@dataclass
class FitResult:
    """What a loop run by :meth:`Checkpointer.loop` or :meth:`Checkpointer.fit` returns."""

    start_epoch: int
    epochs_run: int
    global_step: int
    restore: RestoreReport | None
    outputs: list[Any]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


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
            agree, within about 0.2 s or two steps, see :mod:`ckpthooks.preemption`) every rank
            saves ``preempted.ckpt`` in the checkpoint folder and the process exits with
            ``preemption_exit_code``.
        preemption_exit_code: the exit code after a preemption save; default ``128 + signal``
            (143 for SIGTERM), the shell's convention for "ended by this signal".
        async_save: save in the background: the training thread only copies the state (tensors
            to CPU), a worker thread writes and commits it. A background failure is raised at the
            next save, at :meth:`wait` or at :meth:`close` (logged there instead for policy saves
            when ``on_save_error="log"``). See :mod:`ckpthooks.async_save`.
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
        self._async: AsyncSaver | None = AsyncSaver(max_saves_in_flight) if async_save else None
        self.preemption = PreemptionWatcher(preemption_signals or ())
        self.preemption_exit_code = preemption_exit_code
        self.storage_options = dict(storage_options) if storage_options else None
        self.strict = strict
        self.save_rng_state = save_rng_state
        self.host = plugin_host or get_plugin_host()
        self.store = CheckpointStore(
            host=self.host,
            checkpoint_io=checkpoint_io,
            storage_options=self.storage_options,
            verify=verify,
        )

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
        self._validated_this_epoch = False
        self._in_fit = False
        #: batches in the epoch ``batches()`` iterates, when its iterable has a length (Lightning's
        #: ``loops`` mark a save after the epoch's last batch with it)
        self._epoch_length: int | None = None

        self.callbacks: list[Callback] = list(_as_list(callbacks))
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise ConfigurationError(
                    f"callbacks must be ckpthooks.Callback instances, not {type(cb).__name__}"
                )
            if not enable_checkpointing and isinstance(cb, ModelCheckpoint):
                raise ConfigurationError(
                    "enable_checkpointing=False, but a ModelCheckpoint is among the callbacks: "
                    "remove it or enable checkpointing"
                )
        self._component_sources: dict[str, str] = {}
        self._components: list[StateComponent] = []
        for plugin_name, component in self.host.state_components(self):
            self._components.append(component)
            self._component_sources[component.name] = plugin_name
        policies = [policy for _, policy in self.host.policies(self)]
        if any(isinstance(p, ModelCheckpoint) and not getattr(p, "is_default_policy", False) for p in policies):
            # a plugin configured its own ModelCheckpoint: no default one is needed besides it
            policies = [p for p in policies if not getattr(p, "is_default_policy", False)]
        self.callbacks += policies
        self._check_state_keys()
        for cb in self.callbacks:
            cb.setup(self)
        if self.is_global_zero:
            clean_leftovers(self.checkpoint_roots(), self.storage_options)

    def _check_state_keys(self) -> None:
        seen: dict[str, Callback] = {}
        for cb in self.callbacks:
            key = cb.state_key
            if key in seen and cb.state_dict():
                raise ConfigurationError(
                    f"two callbacks share the state key {key!r} ({seen[key]!r} and {cb!r}); give "
                    "them different options (e.g. another monitor or dirpath) so their state "
                    "can be told apart"
                )
            seen[key] = cb

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
            self.optimizers = _as_list(optimizers)
        if lr_schedulers is not None:
            self.lr_schedulers = _as_list(lr_schedulers)
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
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"metric names must be non-empty strings, not {name!r}")
        try:
            number = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigurationError(f"metric {name!r} must be a number, not {value!r}") from exc
        self.callback_metrics[name] = number

    def log_dict(self, metrics: Mapping[str, Any]) -> None:
        for name, value in metrics.items():
            self.log(name, value)

    # ------------------------------------------------------------------ loop events
    def _call(self, event: str, *args: Any) -> None:
        for cb in list(self.callbacks):
            getattr(cb, event)(self, *args)

    def fit_start(self) -> None:
        """Mark the start of training (after any restore); preemption signals are handled from here."""
        self._in_fit = True
        self.preemption.install()
        self._call("on_fit_start")
        if self._async is not None and self.is_global_zero:
            self._async.warm_up(self._warm_up_sources())

    def _warm_up_sources(self) -> list[Any]:
        """The tracked objects whose tensors the async warm-up allocates snapshot buffers for."""
        tracked = [component.obj for component in self._tracked.values()]
        return [obj for obj in (self.model, *self.optimizers, *tracked) if obj is not None]

    def epoch_start(self, epoch: int | None = None) -> None:
        """Mark the start of an epoch (``epoch`` defaults to the next one)."""
        if epoch is None:
            epoch = self.progress.start_epoch
        resuming_mid_epoch = epoch == self.progress.epoch and not self.progress.epoch_finished
        if not resuming_mid_epoch:
            self.progress.epoch = epoch
            self.progress.batch_idx = 0
        self.progress.epoch_finished = False
        self._validated_this_epoch = False
        self._call("on_train_epoch_start")

    def step_end(self) -> None:
        """Mark the end of one training step: counts it and lets step-based policies act."""
        progress = self.progress
        progress.batch_idx += 1
        progress.global_step += 1
        for cb in self.callbacks:  # the hot path: no generic dispatch
            cb.on_train_batch_end(self)
        signum = self.preemption.at_step_end()
        if signum is not None:
            self._preempt(signum)

    def _preempt(self, signum: int) -> None:
        """At a safe point where every rank agreed on the preemption signal ``signum``: save and exit."""
        path = paths.join(self._preemption_folder(), "preempted.ckpt")
        log.warning(
            "received signal %d: saving %s at epoch %d, step %d, then exiting",
            signum, path, self.current_epoch, self.global_step,
        )
        self.save_checkpoint(path, writer="preemption")
        self.preemption.uninstall()
        code = self.preemption_exit_code if self.preemption_exit_code is not None else exit_code_for(signum)
        raise SystemExit(code)

    def _preemption_folder(self) -> str:
        for cb in self.callbacks:
            dirpath = getattr(cb, "dirpath", None)
            if isinstance(cb, ModelCheckpoint) and dirpath:
                return str(dirpath)
        return paths.join(self.default_root_dir, "checkpoints")

    def validation_end(self) -> None:
        """Mark the end of a validation run: monitor-based policies act on the logged metrics."""
        self._validated_this_epoch = True
        self._call("on_validation_end")

    def epoch_end(self) -> None:
        """Mark the end of an epoch: epoch-based policies (and the default checkpoint) act."""
        self.progress.epoch_finished = True
        self._call("on_train_epoch_end")
        if not self._validated_this_epoch:
            self.validation_end()
        signum = self.preemption.at_epoch_end()
        if signum is not None:
            self._preempt(signum)

    def exception(self, exception: BaseException) -> None:
        """Mark that the loop is leaving with ``exception`` (callbacks' ``on_exception`` run)."""
        self.preemption.uninstall(synchronize=False)
        if self._async is not None:  # let committed-by-now saves land; report, never mask
            self._async.stop_warm_up()
            self._async.wait()
            while (error := self._async.take_error()) is not None:
                log.error("a background checkpoint save failed: %s", error)
        self._in_fit = False
        self._call("on_exception", exception)

    def fit_end(self) -> None:
        """Mark the normal end of training (background saves are waited for)."""
        self.wait()
        self._call("on_fit_end")
        self._in_fit = False
        self.preemption.uninstall()

    def batches(self, iterable: Iterable[T]) -> Iterator[T]:
        """Yield the batches of one epoch, counting steps; after a mid-epoch resume, start exactly
        where the interrupted run was.

        A batch counts as a completed step when the loop asks for the next one (or the epoch ends).
        Leaving the loop with ``break`` does not count the batch being processed. At the start of an
        epoch the random generator states are recorded; a mid-epoch resume recreates the epoch's
        iterator under them (same shuffle, same worker seeds) and skips the batches already done
        without loading them (for a DataLoader over a map-style dataset). An iterable you tracked
        (a stateful data loader or sampler, ``track(loader=...)``) restores its own position and is
        not skipped. Draw no random numbers between the start of the epoch and this call.
        """
        progress = self.progress
        self._epoch_length = _sized_length(iterable)
        skip = 0 if progress.epoch_finished else progress.batch_idx
        if skip and not self._restores_itself(iterable):
            iterator = self._resume_iterator(iterable, skip)
        else:
            if not skip and self.save_rng_state:
                progress.epoch_rng = collect_rng_states()
            iterator = iter(iterable)
        for batch in iterator:
            yield batch
            self.step_end()

    def _restores_itself(self, iterable: Any) -> bool:
        tracked = [component.obj for component in self._tracked.values()]
        candidates = [iterable, getattr(iterable, "sampler", None), getattr(iterable, "batch_sampler", None)]
        return any(c is not None and any(c is t for t in tracked) for c in candidates)

    def _resume_iterator(self, iterable: Iterable[T], skip: int) -> Iterator[T]:
        log.info("resuming epoch %d after %d completed batches", self.progress.epoch, skip)
        epoch_rng = self.progress.epoch_rng
        if epoch_rng is None:
            log.warning(
                "the checkpoint has no record of the random state at the start of epoch %d: a "
                "shuffled loader may repeat or skip samples in the rest of this epoch",
                self.progress.epoch,
            )
            return skip_batches(iterable, skip)
        current = collect_rng_states()
        restore_rng_states(epoch_rng)
        try:
            return skip_batches(iterable, skip)
        finally:
            restore_rng_states(current)

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        epoch_fn: Callable[..., Any],
        max_epochs: int,
        ckpt_path: str | os.PathLike[str] | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> FitResult:
        """Run ``epoch_fn(epoch)`` for every epoch up to ``max_epochs``, with restore and saves."""
        if max_epochs is None or int(max_epochs) < 0:
            raise ConfigurationError(f"max_epochs must be a non-negative integer, not {max_epochs!r}")
        report = self.restore(ckpt_path) if ckpt_path is not None else None
        takes_epoch = _accepts_positional(epoch_fn)
        outputs: list[Any] = []
        start = self.progress.start_epoch
        self.fit_start()
        try:
            for epoch in range(start, int(max_epochs)):
                self.epoch_start(epoch)
                if takes_epoch:
                    outputs.append(epoch_fn(epoch, *args, **(kwargs or {})))
                else:
                    outputs.append(epoch_fn(*args, **(kwargs or {})))
                self.epoch_end()
                if self.should_stop:
                    log.info("stopping after epoch %d: should_stop was set", epoch)
                    break
            self.fit_end()
        except BaseException as exc:
            self.exception(exc)
            raise
        return FitResult(
            start_epoch=start,
            epochs_run=len(outputs),
            global_step=self.global_step,
            restore=report,
            outputs=outputs,
        )

    def loop(
        self, max_epochs: int, ckpt_path: str | os.PathLike[str] | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., FitResult]]:
        """Decorate a one-epoch function; calling it then runs the whole resumable loop.

        ``ckpt_path`` is ``"last"``, ``"best"``, a path, or ``None`` to start fresh. The function
        receives the epoch number as its first argument when it takes one.
        """

        def decorate(epoch_fn: Callable[..., Any]) -> Callable[..., FitResult]:
            @functools.wraps(epoch_fn)
            def run(*args: Any, **kwargs: Any) -> FitResult:
                return self.fit(epoch_fn, max_epochs, ckpt_path, args, kwargs)

            return run

        return decorate

    # ------------------------------------------------------------------ saving
    def dump_checkpoint(self, weights_only: bool = False) -> dict[str, Any]:
        """Build the checkpoint dict (on every rank): components, then every on_save_checkpoint hook."""
        checkpoint: dict[str, Any] = {"pytorch-lightning_version": LIGHTNING_LAYOUT_VERSION}
        space = namespace(checkpoint)
        space.update(
            format_version=FORMAT_VERSION,
            version=__version__,
            plugins=self.host.plugin_versions(),
            weights_only=weights_only,
        )
        for component in self.components:
            if weights_only and not component.in_weights_only:
                continue
            if component.is_active(self):
                component.save_into(self, checkpoint)
        if not weights_only:
            for cb in self.callbacks:
                cb.on_save_checkpoint(self, checkpoint)
        for obj in (self.model, self.datamodule):
            hook = getattr(obj, "on_save_checkpoint", None)
            if callable(hook):
                hook(checkpoint)
        self.host.on_save_checkpoint(self, checkpoint)
        return checkpoint

    def save_checkpoint(
        self,
        filepath: str | os.PathLike[str],
        weights_only: bool = False,
        *,
        writer: str | None = None,
        on_committed: Callable[[Manifest], None] | None = None,
    ) -> Manifest | None:
        """Save the full training state (or the weights only) to ``filepath`` and commit it.

        Call it on every rank, with the same path: the ranks first check that they all are saving
        ``filepath`` (raising :class:`~ckpthooks.exceptions.DistributedCheckpointError` on every
        rank when they are not, or when a rank does not arrive within the process group's
        timeout), all ranks build the same checkpoint, only global rank 0 writes, and every rank
        raises :class:`~ckpthooks.exceptions.DistributedCheckpointError` if the write failed. With
        a collective backend (``CheckpointIO.collective``, such as the ``ckpthooks-dcp`` plugin's)
        every rank writes its own shards and rank 0 commits. ``on_committed`` runs on the writer
        rank once the checkpoint is committed (policies prune there). Returns the commit manifest on
        the writer rank, ``None`` elsewhere.
        """
        path = paths.normalize(filepath)
        distributed.agree_on_call(f"saving {path}", host=self.host)
        checkpoint = self.dump_checkpoint(weights_only)
        manifest: Manifest | None = None
        error: BaseException | None = None
        collective = self.store.io_for(path).collective
        if self._async is not None and not collective:
            self._save_in_background(path, checkpoint, weights_only, writer, on_committed)
            return None  # committed later, by the worker
        if self.is_global_zero or collective:
            try:
                manifest = (self.store.save_collective if collective else self.store.save)(
                    checkpoint,
                    path,
                    epoch=self.current_epoch,
                    global_step=self.global_step,
                    metrics=self.callback_metrics,
                    weights_only=weights_only,
                    writer=writer,
                )
            except Exception as exc:
                error = exc
            else:
                if manifest is not None:  # None on the other ranks of a collective save
                    self._after_commit(path, manifest, on_committed)
        distributed.agree_on_outcome(error, f"saving {path}", host=self.host)
        return manifest

    def _save_in_background(
        self,
        path: str,
        checkpoint: dict[str, Any],
        weights_only: bool,
        writer: str | None,
        on_committed: Callable[[Manifest], None] | None,
    ) -> None:
        """The ``async_save`` path: snapshot on this thread, write and commit on the worker."""
        saver = self._async
        assert saver is not None
        error: BaseException | None = None
        if self.is_global_zero:
            try:
                saver.wait_for_slot()
                self._raise_background_error(policy_save=writer is not None)
                state, buffers = saver.snapshot(checkpoint)
                epoch, step, metrics = self.current_epoch, self.global_step, dict(self.callback_metrics)

                def write() -> None:
                    try:
                        manifest = self.store.save(
                            state, path, epoch=epoch, global_step=step, metrics=metrics,
                            weights_only=weights_only, writer=writer,
                        )
                    except BaseException as exc:
                        for cb in self.callbacks:
                            cb.on_checkpoint_failed(self, path, exc)
                        raise
                    finally:
                        saver.give_back(buffers)
                        pruner.saved(path)
                    self._after_commit(path, manifest, on_committed)

                pruner = Pruner.of(self)
                pruner.saving(path)  # not deleted while queued or written
                try:
                    saver.submit(write)
                except BaseException:
                    pruner.saved(path)
                    raise
            except Exception as exc:
                error = exc
        distributed.agree_on_outcome(error, f"saving {path}", host=self.host)

    def settle_background_saves(self) -> None:
        """With ``async_save``: wait until another save may start (back-pressure), so that a policy
        decides with the outcome of earlier saves known. A no-op otherwise."""
        if self._async is not None:
            self._async.wait_for_slot()

    def _raise_background_error(self, policy_save: bool = False) -> None:
        """Raise (or, for policy saves with ``on_save_error="log"``, log) a failed background save."""
        if self._async is None:
            return
        while (error := self._async.take_error()) is not None:
            if policy_save and self.on_save_error == "log":
                log.error("a background checkpoint save failed; training goes on: %s", error)
                continue
            raise error

    def wait(self) -> None:
        """Wait until every background save is committed; raise the first that failed.

        A no-op without ``async_save``. Under ``torch.distributed`` call it on every rank.
        """
        error: BaseException | None = None
        if self._async is not None and self.is_global_zero:
            self._async.wait()
            try:
                self._raise_background_error()
            except Exception as exc:
                error = exc
        if self._async is not None:
            distributed.agree_on_outcome(error, "waiting for background saves", host=self.host)

    def _after_commit(
        self, path: str, manifest: Manifest, on_committed: Callable[[Manifest], None] | None
    ) -> None:
        """Notify callbacks and prune. The checkpoint is committed already: a failure here is
        logged (a file left behind is safe), never reported as a failed save."""
        try:
            for cb in self.callbacks:
                cb.on_checkpoint_committed(self, path, manifest)
            if on_committed is not None:
                on_committed(manifest)
        except Exception as exc:  # raising here would skip the outcome all ranks wait for
            log.error("after committing %s: %s; older files may be left behind", path, exc)

    def remove_checkpoint(self, filepath: str | os.PathLike[str]) -> bool:
        """Uncommit and delete a checkpoint (writer rank only; a no-op elsewhere).

        Refused (returns ``False``) for the file this run resumed from, for a file with a save
        pending, and for files a callback retains (see :meth:`Callback.retains`); the guards are
        the :class:`~ckpthooks.retention.Pruner`'s.
        """
        return Pruner.of(self).remove(paths.normalize(filepath))

    # ------------------------------------------------------------------ finding
    def checkpoint_roots(self) -> list[str]:
        """Folders searched for "last": the root folder itself (not its subfolders, which may hold
        other runs) and every policy's own folder with its subfolders."""
        roots = [self.default_root_dir]
        for cb in self.callbacks:
            dirpath = getattr(cb, "dirpath", None)
            if dirpath and not any(paths.normalize(dirpath) == r for r in roots):
                roots.append(paths.normalize(dirpath))
        return roots

    def committed_checkpoints(self) -> list[CommittedCheckpoint]:
        """Committed checkpoints in :meth:`checkpoint_roots`, newest (by global step) first."""
        found: dict[str, CommittedCheckpoint] = {}
        for index, root in enumerate(self.checkpoint_roots()):
            for item in iter_committed(root, self.storage_options, recursive=index > 0):
                found.setdefault(item.path, item)
        return sorted(found.values(), key=lambda c: c.sort_key, reverse=True)

    def find_checkpoint(self, which: str) -> str | None:
        """The path ``"last"`` or ``"best"`` refers to now, or ``None`` when there is none."""
        if which == "last":
            return self._find_last()
        if which == "best":
            for cb in self.callbacks:
                finder = getattr(cb, "find_best", None)
                if callable(finder) and getattr(cb, "monitor", None):
                    best: str | None = finder(self)
                    return best
            raise ConfigurationError(
                'ckpt_path="best" needs a ModelCheckpoint with a monitor among the callbacks'
            )
        raise ConfigurationError(f'expected "last" or "best", not {which!r}')

    def _find_last(self) -> str | None:
        """The newest committed checkpoint that verifies; corrupt ones are skipped with a warning,
        and newer files that were never committed (an interrupted save) are named in one."""
        candidates = self.committed_checkpoints()
        full = [c for c in candidates if not c.manifest.weights_only] or candidates
        for candidate in full:
            try:
                self.store.verify_committed(candidate)
            except CorruptCheckpointError as exc:
                log.warning("skipping %s for resume: %s", candidate.path, exc)
                continue
            self._warn_uncommitted_newer_than(candidate.manifest.created, {c.path for c in candidates})
            return candidate.path
        self._warn_uncommitted_newer_than(0.0, {c.path for c in candidates})
        return None

    def _load_last(
        self, map_location: Any, weights_only: bool, *, alone: bool = False
    ) -> tuple[str | None, dict[str, Any] | None]:
        """Load the newest committed checkpoint that verifies, skipping corrupt ones with a warning,
        as :meth:`_find_last` chooses, but checking each candidate in the load itself: its bytes are
        read once (a remote one downloaded once), not once to choose it and again to load it.
        ``(None, None)`` when none loads. ``alone``: on rank 0 of several, which cannot read a
        collective backend's checkpoint by itself: such a candidate is verified, and returned
        without a checkpoint, for every rank to read together."""
        candidates = self.committed_checkpoints()
        full = [c for c in candidates if not c.manifest.weights_only] or candidates
        for candidate in full:
            try:
                if alone and self.store.io_for(candidate.path).collective:
                    self.store.verify_committed(candidate)
                    self._warn_uncommitted_newer_than(candidate.manifest.created, {c.path for c in candidates})
                    return candidate.path, None
                with restoring(self):
                    checkpoint = self.store.load(candidate.path, map_location=map_location, weights_only=weights_only)
            except CorruptCheckpointError as exc:
                log.warning("skipping %s for resume: %s", candidate.path, exc)
                continue
            self._warn_uncommitted_newer_than(candidate.manifest.created, {c.path for c in candidates})
            return candidate.path, checkpoint
        self._warn_uncommitted_newer_than(0.0, {c.path for c in candidates})
        return None, None

    def _warn_uncommitted_newer_than(self, created: float, committed: set[str]) -> None:
        skipped = []
        for root in self.checkpoint_roots():
            if not paths.is_local(root) or not os.path.isdir(root):
                continue
            for name in sorted(os.listdir(root)):
                path = os.path.join(root, name)
                if name.startswith(".") or not name.endswith(ModelCheckpoint.FILE_EXTENSION) or path in committed:
                    continue
                try:
                    newer = os.path.getmtime(path) > created
                except OSError:
                    continue
                if newer:
                    skipped.append(path)
        if skipped:
            log.warning(
                "ignoring %s: never committed (an interrupted save, or not written by ckpthooks)",
                ", ".join(skipped),
            )

    # ------------------------------------------------------------------ restoring
    def restore(
        self,
        ckpt_path: str | os.PathLike[str] | None = "last",
        *,
        strict: bool | None = None,
        weights_only: bool = True,
        map_location: Any = "cpu",
        must_exist: bool = False,
    ) -> RestoreReport | None:
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
        text = os.fspath(ckpt_path)
        checkpoint: dict[str, Any] | None = None
        if text == "last" and distributed.world_size(self.host) == 1:
            path, checkpoint = self._load_last(map_location, weights_only)
        elif text == "last":  # rank 0 chooses by loading; it keeps what it loaded, the others load it then
            kept: list[dict[str, Any]] = []

            def choose() -> str | None:
                found, loaded = self._load_last(map_location, weights_only, alone=True)
                if loaded is not None:
                    kept.append(loaded)
                return found

            path = distributed.decide_on_rank_zero(choose, 'finding ckpt_path="last"', host=self.host)
            checkpoint = kept[0] if kept else None
        elif text == "best":
            path = distributed.decide_on_rank_zero(
                lambda: self.find_checkpoint(text), f'finding ckpt_path="{text}"', host=self.host
            )
        else:
            path = paths.normalize(text)
        if text in ("last", "best") and path is None:
            if must_exist or text == "best":
                raise CheckpointNotFoundError(
                    f'ckpt_path="{text}": no committed checkpoint found under '
                    f"{', '.join(self.checkpoint_roots())}"
                )
            log.info('ckpt_path="last": no checkpoint yet under %s; starting fresh', self.default_root_dir)
            return None
        assert path is not None
        if checkpoint is None or distributed.world_size(self.host) > 1:
            checkpoint = self._load_on_every_rank(path, map_location, weights_only, loaded=checkpoint)
        report = self.restore_from_dict(checkpoint, strict=strict)
        report.path = path
        self.resumed_from = path
        log.info("%s", report.summary())
        return report

    def _load_on_every_rank(
        self, path: str, map_location: Any, weights_only: bool, loaded: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Read ``path`` (on every rank under ``torch.distributed``); every rank raises if one failed.
        A rank that passes what it ``loaded`` already (rank 0, choosing "last") only takes part in
        the agreement.

        A collective backend reads in one collective step: the ranks first agree that each of them
        sees a committed, intact checkpoint, so that none starts the collective read alone. With
        full verification, rank 0 checks the checksum (every rank's files, once) and the other ranks
        the size: on the shared folder they all read, one full read is enough.
        """
        if loaded is not None:
            distributed.agree_on_outcome(None, f"loading {path}", host=self.host)
            return loaded
        checkpoint: dict[str, Any] = {}
        error: BaseException | None = None
        with restoring(self):
            try:
                verify: VerifyMode | None = None
                if self.store.io_for(path).collective:
                    failed: BaseException | None = None
                    check = self.store.verify
                    if check == "full" and not self.is_global_zero:
                        check = "size"
                    try:
                        self.store.check_loadable(path, verify=check)
                    except Exception as exc:
                        failed = exc
                    distributed.agree_on_outcome(failed, f"checking {path}", host=self.host)
                    verify = "off"  # checked just now
                checkpoint = self.store.load(path, map_location=map_location, weights_only=weights_only, verify=verify)
            except Exception as exc:
                error = exc
        distributed.agree_on_outcome(error, f"loading {path}", host=self.host)
        return checkpoint

    def restore_from_dict(self, checkpoint: dict[str, Any], *, strict: bool | None = None) -> RestoreReport:
        """Restore from a checkpoint dict already in memory (see :meth:`restore`)."""
        check_format_version(checkpoint, "the checkpoint")
        strict = self.strict if strict is None else strict
        for obj in (self.model, self.datamodule):
            hook = getattr(obj, "on_load_checkpoint", None)
            if callable(hook):
                hook(checkpoint)
        for cb in self.callbacks:
            cb.on_load_checkpoint(self, checkpoint)
        self.host.on_load_checkpoint(self, checkpoint)

        report = RestoreReport(path="<memory>")
        plan: list[tuple[StateComponent, Any]] = []
        incompatible: list[str] = []
        known_names = set()
        for component in self.components:
            known_names.add(component.name)
            found = component.find(self, checkpoint)
            active = component.is_active(self)
            report.missing += found.missing
            report.unexpected += found.unexpected
            incompatible += found.incompatible
            if active and found.present:
                plan.append((component, found.value))
            elif active and component.on_missing != "ignore" and not found.missing:
                label = component.label(self)
                if component.on_missing == "error":
                    report.missing.append(label)
                else:
                    log.warning("the checkpoint has no %s; it is left as it is", label)
            elif found.present and not active and component.on_missing != "ignore":
                report.unexpected.append(component.label(self))
        saved_components = checkpoint.get(NAMESPACE, {}).get("components", {})
        report.unexpected += [
            f"component {name!r}" for name in sorted(saved_components) if name not in known_names
        ]
        if incompatible:
            raise IncompatibleStateError(
                f"the checkpoint does not fit what is tracked: {'; '.join(incompatible)}. Was it "
                "saved from a model built with other hyperparameters? Nothing was restored."
            )
        if report.missing or report.unexpected:
            self._report_mismatch(checkpoint, report, strict)
        self.restore_strict = strict
        for component, value in plan:
            component.load(self, value)
            if component.restores_state:
                report.restored.append(component.name)
        report.epoch, report.global_step = self.current_epoch, self.global_step
        return report

    def _report_mismatch(self, checkpoint: dict[str, Any], report: RestoreReport, strict: bool) -> None:
        weights_only_file = bool(checkpoint.get(NAMESPACE, {}).get("weights_only"))
        hint = (
            " The file was saved with save_weights_only=True, so it holds no training state: "
            "load it with Model.load_from_checkpoint, or resume from a full checkpoint."
            if weights_only_file
            else ""
        )
        if not strict:
            log.warning(
                "partial restore: missing %s; not restored %s", report.missing or "nothing",
                report.unexpected or "nothing",
            )
            return
        if report.missing:
            raise MissingStateError(
                f"the checkpoint lacks state for {', '.join(report.missing)}.{hint} Pass "
                "strict=False to restore what is there.",
                report.missing,
            )
        raise UnexpectedStateError(
            f"the checkpoint holds state nothing tracked can take: {', '.join(report.unexpected)}. "
            "Track the matching objects, or pass strict=False to leave it out.",
            report.unexpected,
        )

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Release resources; call when training is over (``fit`` does not close). Background saves
        are waited for, and a failed one is raised. Preemption signal handlers still installed (a
        hand-written loop that never called :meth:`fit_end`) are removed."""
        self.preemption.uninstall(synchronize=False)
        if self._async is not None:
            self._async.wait()
            pending = self._async.take_error()
            self._async.shutdown()
            if pending is not None:
                raise pending
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


def _sized_length(iterable: Any) -> int | None:
    try:
        return len(iterable)
    except (TypeError, NotImplementedError):
        return None


def _accepts_positional(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters
    )
