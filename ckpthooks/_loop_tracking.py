"""Loop tracking: the training loop's events, its batches, and the loop ``fit``/``loop`` run.

The events move :class:`~ckpthooks._progress.LoopProgress` and call the callbacks (policies act
there). The ends of steps and epochs are the safe points where a preemption signal recorded by
:mod:`ckpthooks._preemption` is acted on: every rank saves ``preempted.ckpt`` and exits.
:meth:`LoopTracker.batches` counts steps and, after a mid-epoch resume, recreates the epoch's
iterator under its recorded random state and skips the batches already done.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ckpthooks._fast_forward import skip_batches
from ckpthooks._io import paths
from ckpthooks._last_search import CHECKPOINT_FOLDER
from ckpthooks._preemption import exit_code_for
from ckpthooks._rng import collect_rng_states, restore_rng_states
from ckpthooks.exceptions import ConfigurationError

if TYPE_CHECKING:
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._state_assembly import RestoreReport

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The file name of the checkpoint a preemption signal saves.
PREEMPTED_NAME = "preempted.ckpt"


@dataclass
class FitResult:
    """What a loop run by :meth:`Checkpointer.loop` or :meth:`Checkpointer.fit` returns."""

    start_epoch: int
    epochs_run: int
    global_step: int
    restore: RestoreReport | None
    outputs: list[Any]


class LoopTracker:
    """Follows one checkpointer's training loop."""

    def __init__(self, checkpointer: Checkpointer) -> None:
        self.checkpointer = checkpointer
        #: batches in the epoch ``batches()`` iterates, when its iterable has a length (Lightning's
        #: ``loops`` mark a save after the epoch's last batch with it)
        self.epoch_length: int | None = None
        #: the tracked optimizers whose steps count ``global_step``: id -> (optimizer, hook handle)
        self._watched: dict[int, tuple[Any, Any]] = {}
        #: how many values were logged so far, and the count at each metric's latest value: a policy
        #: compares them with its own last save to tell a fresh value from a stale one
        self.log_count = 0
        self.logged_at: dict[str, int] = {}
        #: while ``epoch_end`` stands in for a validation the loop did not report
        self.implicit_validation = False
        #: while the body of a ``batches()`` loop runs (``batches`` ends each batch itself)
        self._in_batches_body = False

    def log(self, name: str, value: Any) -> None:
        self.checkpointer.callback_metrics[name] = metric_value(name, value)
        self.log_count += 1
        self.logged_at[name] = self.log_count

    # ------------------------------------------------------------------ optimizer steps
    def watch_optimizers(self) -> None:
        """Hear every step of the tracked optimizers (``torch.optim.Optimizer.register_step_post_hook``),
        so that ``global_step`` counts a batch once its optimizer stepped, and a save from inside
        the batch after that step records the step as done. Optimizers tracked since are added;
        ones no longer tracked are let go."""
        current = {id(opt): opt for opt in self.checkpointer.optimizers if hasattr(opt, "register_step_post_hook")}
        for key in [key for key in self._watched if key not in current]:
            self._watched.pop(key)[1].remove()
        owner = weakref.ref(self.checkpointer)  # an optimizer's hook must not keep the checkpointer alive

        def stepped(_optimizer: Any, _args: Any, _kwargs: Any) -> None:
            checkpointer = owner()
            if checkpointer is not None and not checkpointer.progress.stepped:
                checkpointer.progress.stepped = True
                checkpointer.progress.global_step += 1

        for key, optimizer in current.items():
            if key not in self._watched:
                inner = _innermost(optimizer)
                try:
                    handle = inner.register_step_post_hook(stepped)
                except (AttributeError, TypeError, RuntimeError) as exc:  # not a torch optimizer inside
                    log.debug("cannot hear the steps of %s (%s): its batches count at step_end", type(optimizer), exc)
                    continue
                self._watched[key] = (optimizer, handle)

    def unwatch_optimizers(self) -> None:
        for _optimizer, handle in self._watched.values():
            handle.remove()
        self._watched.clear()

    def call(self, event: str, *args: Any) -> None:
        ckpt = self.checkpointer
        for cb in list(ckpt.callbacks):
            getattr(cb, event)(ckpt, *args)

    # ------------------------------------------------------------------ events
    def fit_start(self) -> None:
        ckpt = self.checkpointer
        ckpt.preemption.install()
        self.watch_optimizers()
        self.call("on_fit_start")
        ckpt.saving.warm_up()

    def epoch_start(self, epoch: int | None) -> None:
        progress = self.checkpointer.progress
        if epoch is None:
            epoch = progress.start_epoch
        resuming_mid_epoch = epoch == progress.epoch and not progress.epoch_finished
        if not resuming_mid_epoch:
            progress.epoch = epoch
            progress.batch_idx = 0
            progress.validated = False
            progress.batch_end_pending = False
        progress.epoch_finished = False
        progress.stepped = False
        self.watch_optimizers()
        self.call("on_train_epoch_start")
        if progress.batch_end_pending:
            # resumed from a checkpoint taken inside a batch's body: that batch is done, its end
            # events are not (the uninterrupted run ran them after the save)
            progress.batch_end_pending = False
            for cb in self.checkpointer.callbacks:
                cb.on_train_batch_end(self.checkpointer)

    def step_end(self) -> None:
        if self._in_batches_body:
            raise ConfigurationError(
                "step_end() was called inside a `for batch in ckpt.batches(...)` loop, which ends every "
                "batch itself: each step would count twice. Remove the step_end() call, or iterate the "
                "data without ckpt.batches()"
            )
        ckpt = self.checkpointer
        progress = ckpt.progress
        progress.batch_idx += 1
        progress.batch_end_pending = False
        if progress.stepped:  # counted when its optimizer stepped
            progress.stepped = False
        else:
            progress.global_step += 1
        for cb in ckpt.callbacks:  # the hot path: no generic dispatch
            cb.on_train_batch_end(ckpt)
        signum = ckpt.preemption.at_step_end()
        if signum is not None:
            self.preempt(signum)

    def validation_end(self) -> None:
        # a validation before the epoch's first batch (a sanity check) does not stand for the epoch's
        progress = self.checkpointer.progress
        if progress.batch_idx > 0 or progress.stepped:
            progress.validated = True
        self.call("on_validation_end")

    def epoch_end(self) -> None:
        ckpt = self.checkpointer
        ckpt.progress.epoch_finished = True
        self.call("on_train_epoch_end")
        if not ckpt.progress.validated:  # stands in for a validation, so that epoch policies act
            self.implicit_validation = True
            try:
                ckpt.validation_end()
            finally:
                self.implicit_validation = False
        signum = ckpt.preemption.at_epoch_end()
        if signum is not None:
            self.preempt(signum)

    def exception(self, exception: BaseException) -> None:
        ckpt = self.checkpointer
        ckpt.preemption.uninstall(synchronize=False)
        ckpt.saving.drain_after_exception()
        self.call("on_exception", exception)

    def fit_end(self) -> None:
        ckpt = self.checkpointer
        ckpt.wait()
        self.call("on_fit_end")
        ckpt.preemption.uninstall()

    # ------------------------------------------------------------------ preemption
    def preempt(self, signum: int) -> None:
        """At a safe point where every rank agreed on the preemption signal ``signum``: save and exit."""
        ckpt = self.checkpointer
        path = paths.join(self.preemption_folder(), PREEMPTED_NAME)
        log.warning(
            "received signal %d: saving %s at epoch %d, step %d, then exiting",
            signum, path, ckpt.current_epoch, ckpt.global_step,
        )  # fmt: skip
        ckpt.save_checkpoint(path, writer="preemption")
        ckpt.preemption.uninstall()
        code = ckpt.preemption_exit_code if ckpt.preemption_exit_code is not None else exit_code_for(signum)
        raise SystemExit(code)

    def preemption_folder(self) -> str:
        """The first folder a policy writes to, else ``<default_root_dir>/checkpoints``."""
        for cb in self.checkpointer.callbacks:
            folders = cb.checkpoint_folders()
            if folders:
                return str(folders[0])
        return paths.join(self.checkpointer.default_root_dir, CHECKPOINT_FOLDER)

    # ------------------------------------------------------------------ batches
    def batches(self, iterable: Iterable[T]) -> Iterator[T]:
        ckpt = self.checkpointer
        progress = ckpt.progress
        self.epoch_length = _sized_length(iterable)
        self.watch_optimizers()
        skip = 0 if progress.epoch_finished else progress.batch_idx
        if skip and not self._restores_itself(iterable):
            iterator = self._resume_iterator(iterable, skip)
        else:
            if not skip and ckpt.save_rng_state:
                progress.epoch_rng = collect_rng_states()
            iterator = iter(iterable)
        for batch in iterator:
            self._in_batches_body = True
            try:
                yield batch
            finally:
                self._in_batches_body = False
            ckpt.step_end()

    def _restores_itself(self, iterable: Any) -> bool:
        tracked = [component.obj for component in self.checkpointer._tracked.values()]
        candidates = [iterable, getattr(iterable, "sampler", None), getattr(iterable, "batch_sampler", None)]
        return any(c is not None and any(c is t for t in tracked) for c in candidates)

    def _resume_iterator(self, iterable: Iterable[T], skip: int) -> Iterator[T]:
        progress = self.checkpointer.progress
        log.info("resuming epoch %d after %d completed batches", progress.epoch, skip)
        epoch_rng = progress.epoch_rng
        if epoch_rng is None:
            log.warning(
                "the checkpoint has no record of the random state at the start of epoch %d: a "
                "shuffled loader may repeat or skip samples in the rest of this epoch",
                progress.epoch,
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
        ckpt_path: str | os.PathLike[str] | None,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
    ) -> FitResult:
        ckpt = self.checkpointer
        if max_epochs is None or int(max_epochs) < 0:
            raise ConfigurationError(f"max_epochs must be a non-negative integer, not {max_epochs!r}")
        report = ckpt.restore(ckpt_path) if ckpt_path is not None else None
        takes_epoch = _accepts_positional(epoch_fn)
        outputs: list[Any] = []
        start = ckpt.progress.start_epoch
        ckpt.fit_start()
        try:
            for epoch in range(start, int(max_epochs)):
                ckpt.epoch_start(epoch)
                if takes_epoch:
                    outputs.append(epoch_fn(epoch, *args, **(kwargs or {})))
                else:
                    outputs.append(epoch_fn(*args, **(kwargs or {})))
                ckpt.epoch_end()
                if ckpt.should_stop:
                    log.info("stopping after epoch %d: should_stop was set", epoch)
                    break
            ckpt.fit_end()
        except BaseException as exc:
            ckpt.exception(exc)
            raise
        return FitResult(
            start_epoch=start, epochs_run=len(outputs), global_step=ckpt.global_step, restore=report, outputs=outputs
        )

    def loop(
        self, max_epochs: int, ckpt_path: str | os.PathLike[str] | None
    ) -> Callable[[Callable[..., Any]], Callable[..., FitResult]]:
        def decorate(epoch_fn: Callable[..., Any]) -> Callable[..., FitResult]:
            @functools.wraps(epoch_fn)
            def run(*args: Any, **kwargs: Any) -> FitResult:
                return self.checkpointer.fit(epoch_fn, max_epochs, ckpt_path, args, kwargs)

            return run

        return decorate


def metric_value(name: str, value: Any) -> float:
    """A logged metric as a float (a number or a one-element tensor); a bad one is refused."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"metric names must be non-empty strings, not {name!r}")
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigurationError(f"metric {name!r} must be a number, not {value!r}") from exc


def _innermost(optimizer: Any) -> Any:
    """The optimizer a wrapper (accelerate's ``AcceleratedOptimizer``, ...) steps in the end: its
    ``optimizer`` attribute, followed while it is one."""
    seen = {id(optimizer)}
    while hasattr(getattr(optimizer, "optimizer", None), "register_step_post_hook"):
        optimizer = optimizer.optimizer
        if id(optimizer) in seen:
            break
        seen.add(id(optimizer))
    return optimizer


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
