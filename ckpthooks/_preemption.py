"""Preemption: on SIGTERM (or another chosen signal) save at a safe point and exit.

The signal handler only records the signal; the checkpoint is written by the training thread at a
safe point of the loop (the end of a step or of an epoch), never inside the handler. In a single
process that is the next safe point.

Under ``torch.distributed`` (more than one rank) every rank must stop at the same step, even when
only one of them received the signal, so the ranks agree on it. A blocking all-reduce at every
step would cost a collective round trip per step; instead the ranks agree every K steps, with an
all-reduce that runs while they train:

- at an agreement step a rank waits for the all-reduce it started at the previous agreement step
  (by then it has normally finished), acts if any rank had a signal pending when it was started,
  and otherwise starts the next one (``async_op=True``) with its own pending signal.
- K is not fixed, but agreed in the same all-reduce: each rank proposes the number of steps that
  spans about :data:`AGREE_SECONDS` at its pace over the last interval (between 1 and
  :data:`MAX_AGREE_STEPS`), and the smallest proposal sets the interval that starts when the
  all-reduce is read. Slow steps are agreed on one by one, fast ones in batches large enough to
  hide the round trip and spread its cost.
- every rank starts and waits for the same all-reduces at the same step counts, and decides on
  their results only (the signal and the next K), never on timing or on ``is_completed()``, so
  all ranks act at the same step.

A signal goes out with the next agreement and is acted on at the one after: within two intervals,
at most 2K steps, which is two steps when a step takes longer than :data:`AGREE_SECONDS` and about
``2 * AGREE_SECONDS`` (at most ``2 * MAX_AGREE_STEPS`` steps) for faster ones; or at the end of
the epoch if that comes first: at an epoch end the ranks finish the outstanding all-reduce and
agree with a blocking one. Uninstalling (the end of ``fit``, a preemption save, an exception)
finishes the outstanding all-reduce, so none is left pending when the process group is destroyed.

The all-reduces run on a gloo process group of their own, created (collectively: every rank
installs the watcher at the same point) at install and destroyed at uninstall: a CPU flag works
when the default group is NCCL, and never interleaves with the training's own collectives. If that
group cannot be created, the default group is used instead (logged).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from types import FrameType
from typing import Any

from ckpthooks._distributed import _dist
from ckpthooks.exceptions import DistributedCheckpointError

log = logging.getLogger(__name__)

#: The default signals: what schedulers (SLURM, Kubernetes, ...) send before killing a job.
DEFAULT_SIGNALS: tuple[int, ...] = (signal.SIGTERM,)

#: The wall time the ranks aim to leave between two agreements under ``torch.distributed``.
#: Starting and collecting an all-reduce costs the training thread some 50-200 µs on gloo (measured
#: on a loaded 2-CPU machine), and its round trip must fit in the interval to be hidden: 100 ms
#: keeps the cost to 0.05-0.2 % of the time, while a signal is still acted on within about 0.2 s,
#: or within two steps when a step takes longer than that.
AGREE_SECONDS = 0.1

#: The most steps between two agreements (reached when a step takes less than
#: ``AGREE_SECONDS / MAX_AGREE_STEPS``, about 100 µs): bounds how late a signal is acted on if the
#: pace of training drops suddenly.
MAX_AGREE_STEPS = 1024


def exit_code_for(signum: int) -> int:
    """The exit code after a preemption save: ``128 + signal number``, the shell's convention for
    "ended by this signal" (143 for SIGTERM, 138 for SIGUSR1)."""
    return 128 + int(signum)


class PreemptionWatcher:
    """Installs handlers for ``signals`` (main thread only) and tells the loop when to act on them.

    Under ``torch.distributed``, ``min_steps`` and ``max_steps`` bound the number of steps
    between two agreements and ``agree_seconds`` is the wall time the ranks aim for in between
    (``min_steps == max_steps`` makes it a fixed number of steps).
    """

    def __init__(
        self,
        signals: Sequence[int],
        *,
        agree_seconds: float = AGREE_SECONDS,
        min_steps: int = 1,
        max_steps: int = MAX_AGREE_STEPS,
    ) -> None:
        if not 1 <= int(min_steps) <= int(max_steps):
            raise ValueError(f"need 1 <= min_steps <= max_steps, not {min_steps!r} and {max_steps!r}")
        self.signals = tuple(int(s) for s in signals)
        self.agree_seconds = float(agree_seconds)
        self.min_steps = int(min_steps)
        self.max_steps = int(max_steps)
        self.requested: int | None = None
        #: whether the ranks must agree before acting (set at install: torch.distributed is
        #: initialized with more than one rank); otherwise a pending request is a local matter
        self.collective = False
        self._previous: dict[int, Any] = {}
        #: the process group of the agreement (``None``: the default group), whether it is ours,
        #: and the device of its flag
        self._group: Any = None
        self._own_group = False
        self._device: Any = None
        #: the all-reduce in flight and its tensor: [largest pending signal, -smallest proposed K]
        self._work: Any = None
        self._flag: Any = None
        #: the current interval (K), the steps left in it, and when it started
        self._length = 1
        self._left = 1
        self._since = 0.0

    def install(self) -> None:
        """Handle the signals from now on; under ``torch.distributed`` every rank must call it
        at the same point (it creates the agreement's process group)."""
        if not self.signals or self._previous:
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning("preemption signals can only be handled in the main thread; not installed")
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        dist = _dist()
        self.collective = dist is not None and int(dist.get_world_size()) > 1
        if dist is not None and self.collective:
            self._open(dist)

    def uninstall(self, synchronize: bool = True) -> None:
        """Restore the previous handlers and finish the outstanding agreement.

        ``synchronize``: every rank is uninstalling at this point (the end of ``fit``, a
        preemption save), so the ranks also wait for one another before the agreement's process
        group is destroyed. Pass ``False`` when leaving on an exception, where the other ranks
        may still be training.
        """
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if self.collective:
            self._close(synchronize)
        self.collective = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum  # the work happens at a safe point, not here

    def at_step_end(self) -> int | None:
        """Called at every step end: the signal to act on now (the same on every rank), or ``None``."""
        if not self.collective:
            return self.requested
        self._left -= 1
        if self._left > 0:
            return None
        return self._agree(block=False)

    def at_epoch_end(self) -> int | None:
        """Called at every epoch end: the signal to act on now (a blocking agreement between ranks)."""
        if not self.collective:
            return self.requested
        return self._agree(block=True)

    # ------------------------------------------------------------------ the agreement
    def _agree(self, block: bool) -> int | None:
        steps = self._length - self._left
        elapsed = time.perf_counter() - self._since
        agreed = self._finish()
        if agreed:
            return agreed
        self._start(self._proposal(steps, elapsed))
        if block:
            agreed = self._finish()
            if agreed:
                return agreed
        self._left = self._length
        self._since = time.perf_counter()
        return None

    def _proposal(self, steps: int, elapsed: float) -> int:
        """This rank's K: the steps that span ``agree_seconds`` at the pace of the last interval."""
        if steps <= 0:
            return self._length
        wanted = math.ceil(self.agree_seconds * steps / elapsed) if elapsed > 0 else self.max_steps
        return min(max(wanted, self.min_steps), self.max_steps)

    def _open(self, dist: Any) -> None:
        import torch

        self._group, self._own_group = None, False
        try:
            self._group = dist.new_group(backend="gloo", timeout=_world_timeout(dist))
            self._own_group = True
        except Exception as exc:  # gloo missing from this build, or a store that refused
            log.warning(
                "could not create a gloo process group for the preemption agreement (%s: %s); "
                "using the default process group",
                type(exc).__name__, exc,
            )  # fmt: skip
        default_device = torch.device("cpu")
        if "nccl" in str(dist.get_backend()).lower():
            default_device = torch.device("cuda", torch.cuda.current_device())
        # every rank must all-reduce on the same group: if one rank has no group of its own, none
        # uses one (a rank on the default group and another on its own would wait for each other
        # until the timeout)
        everywhere = torch.tensor([1 if self._own_group else 0], dtype=torch.int64, device=default_device)
        try:
            dist.all_reduce(everywhere, op=dist.ReduceOp.MIN)
        except RuntimeError as exc:
            raise _lost(exc) from exc
        if self._own_group and not int(everywhere.item()):
            log.warning(
                "another rank could not create a gloo process group for the preemption agreement; "
                "every rank uses the default process group"
            )
            try:
                dist.destroy_process_group(self._group)
            except (RuntimeError, ValueError) as exc:
                log.debug("could not destroy the unused preemption group: %s", exc)
            self._group, self._own_group = None, False
        self._device = torch.device("cpu") if self._own_group else default_device
        self._work, self._flag = None, None
        self._length = self._left = self.min_steps
        self._since = time.perf_counter()

    def _start(self, proposal: int) -> None:
        """Start an all-reduce of this rank's pending signal and proposed K (every rank, at the
        same step)."""
        import torch
        import torch.distributed as dist

        self._flag = torch.tensor([self.requested or 0, -proposal], dtype=torch.int64, device=self._device)
        try:
            self._work = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        except RuntimeError as exc:
            raise _lost(exc) from exc

    def _finish(self) -> int:
        """Wait for the outstanding all-reduce; take its K, and return the largest signal any rank
        had pending when it was started (0: none)."""
        work, self._work = self._work, None
        if work is None:
            return 0
        try:
            work.wait()
        except RuntimeError as exc:
            raise _lost(exc) from exc
        signum, negative_length = (int(v) for v in self._flag.tolist())
        self._length = -negative_length
        return signum

    def _close(self, synchronize: bool) -> None:
        dist = _dist()
        try:
            self._finish()
            if synchronize and dist is not None:
                # the all-reduce's last message may still be on its way to another rank; destroying
                # the group before that rank has it would abort its wait
                dist.barrier(group=self._group)
        except (RuntimeError, DistributedCheckpointError) as exc:
            log.warning("the preemption agreement between ranks did not finish cleanly: %s", exc)
        if self._own_group and dist is not None:
            try:
                dist.destroy_process_group(self._group)
            except (RuntimeError, ValueError) as exc:  # already destroyed with the default group
                log.debug("the preemption agreement's process group was already gone: %s", exc)
        self._group, self._own_group, self._work, self._flag = None, False, None, None


def _world_timeout(dist: Any) -> timedelta | None:
    """The default group's timeout, for the agreement's own group (``None``: torch's default)."""
    try:
        world = dist.group.WORLD
        for device in world._device_types:
            timeout = world._get_backend(device).options._timeout
            if isinstance(timeout, timedelta):
                return timeout
    except Exception:  # private attributes: torch's default timeout when they change
        pass
    return None


def _lost(exc: BaseException) -> DistributedCheckpointError:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return DistributedCheckpointError(
        f"the ranks could not agree on a preemption signal ({type(exc).__name__}: {first_line}). "
        "Either another rank failed or stopped, or it did not reach the same step within the "
        "process group's timeout: call the loop events (step_end, epoch_end) the same number of "
        "times on every rank"
    )
