"""Preemption: on SIGTERM (or another chosen signal) save at the next safe point and exit.

The signal handler only records the signal; the checkpoint is written by the training thread at the
next safe point of the loop (the end of a step or of an epoch), never inside the handler. Under
``torch.distributed`` the ranks agree at each safe point (one small all-reduce), so every rank stops
at the same step even when only one of them received the signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

#: The default signals: what schedulers (SLURM, Kubernetes, ...) send before killing a job.
DEFAULT_SIGNALS: tuple[int, ...] = (signal.SIGTERM,)


def exit_code_for(signum: int) -> int:
    """The exit code after a preemption save: ``128 + signal number``, the shell's convention for
    "ended by this signal" (143 for SIGTERM, 138 for SIGUSR1)."""
    return 128 + int(signum)


class PreemptionWatcher:
    """Installs handlers for ``signals`` (main thread only) and reports a pending request."""

    def __init__(self, signals: Sequence[int]) -> None:
        self.signals = tuple(int(s) for s in signals)
        self.requested: int | None = None
        #: whether the ranks must agree at each safe point (set at install: torch.distributed is
        #: initialized with more than one rank); otherwise a pending request is a local matter
        self.collective = False
        self._previous: dict[int, Any] = {}

    @property
    def check_now(self) -> bool:
        """Cheap test for the loop: is there anything to do at this safe point?"""
        return self.requested is not None or self.collective

    def install(self) -> None:
        if not self.signals or self._previous:
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning("preemption signals can only be handled in the main thread; not installed")
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            import torch.distributed as dist

            self.collective = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        except ImportError:  # pragma: no cover
            self.collective = False

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        self.collective = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum  # the work happens at the next safe point, not here

    def agreed_request(self) -> int | None:
        """The signal to act on now, agreed by every rank (the largest signal number any rank got)."""
        local = self.requested or 0
        if not self.collective:
            return local or None
        import torch.distributed as dist

        if dist.is_initialized():
            import torch

            flag = torch.tensor([local], dtype=torch.int64)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            local = int(flag.item())
        return local or None
