"""Asynchronous saving: the training thread only copies the state; a worker writes and commits it.

With ``Checkpointer(async_save=True)`` a save (1) builds the checkpoint dict as usual, (2) waits
while ``max_in_flight`` saves are still being written (back-pressure: memory holds at most that many
snapshots), (3) copies every tensor off the live objects — to CPU, through pinned memory when CUDA
is present — and (4) hands the snapshot to a single worker thread, which writes it, commits it and
only then runs the commit callbacks (so pruning and "last"/"best" bookkeeping follow the commit they
depend on, in order). A background failure is never swallowed: it is raised by the next save, by
:meth:`~ckpthooks.Checkpointer.wait`, or by :meth:`~ckpthooks.Checkpointer.close`; at interpreter
exit pending saves are flushed and a failure is logged at ERROR level.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from typing import Any

log = logging.getLogger(__name__)


def snapshot(obj: Any, reuse: list[Any] | None = None) -> tuple[Any, list[Any]]:
    """A copy of a checkpoint dict that shares no tensor or container with the live objects.

    Tensors are copied to CPU (pinned memory and a non-blocking copy for CUDA tensors); a tensor
    reached twice (tied weights) is copied once, so the sharing survives. ``reuse`` holds the
    buffers of an earlier snapshot that was written already: a buffer of the same shape and dtype
    at the same position is overwritten instead of allocating (fresh memory costs page faults that
    make the copy several times slower than the memory bandwidth). Returns the copy and its buffers.
    """
    import torch

    memo: dict[int, Any] = {}
    buffers: list[Any] = []
    spare = reuse or []
    cuda = torch.cuda.is_available()
    copied_from_cuda = False

    def copy(value: Any) -> Any:
        nonlocal copied_from_cuda
        if isinstance(value, torch.Tensor):
            key = id(value)
            if key not in memo:
                tensor = value.detach()
                index = len(buffers)
                old = spare[index] if index < len(spare) else None
                if (
                    old is not None
                    and old.shape == tensor.shape
                    and old.dtype == tensor.dtype
                    and old.layout == tensor.layout == torch.strided
                    and old.is_contiguous()
                ):
                    out = old
                    out.copy_(tensor, non_blocking=bool(cuda and tensor.is_cuda))
                elif cuda and tensor.is_cuda:
                    out = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                    out.copy_(tensor, non_blocking=True)
                else:
                    out = tensor.to("cpu", copy=True)
                copied_from_cuda = copied_from_cuda or (cuda and tensor.is_cuda)
                memo[key] = out
                buffers.append(out)
            return memo[key]
        if isinstance(value, dict):
            if type(value) is dict:
                return {k: copy(v) for k, v in value.items()}
            out_dict = type(value)((k, copy(v)) for k, v in value.items())
            extra = getattr(value, "__dict__", None)
            if extra:  # a state_dict's OrderedDict carries ``_metadata`` (module versions)
                out_dict.__dict__.update(deepcopy(extra))
            return out_dict
        if isinstance(value, list):
            return [copy(v) for v in value]
        if isinstance(value, tuple):
            return tuple(copy(v) for v in value)
        return value

    result = copy(obj)
    if copied_from_cuda:
        torch.cuda.synchronize()
    return result, buffers


class AsyncSaver:
    """One worker thread, at most ``max_in_flight`` saves queued or running."""

    def __init__(self, max_in_flight: int = 1) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpthooks-save")
        self._pending: deque[Future[Any]] = deque()
        self._errors: deque[BaseException] = deque()
        self._lock = threading.Lock()
        #: buffers of snapshots whose save finished, reused by the next snapshot
        self._spare: list[list[Any]] = []
        _live.add(self)

    def _reap(self, block_until: int) -> None:
        """Wait until at most ``block_until`` saves are pending; record their failures."""
        while True:
            with self._lock:
                if len(self._pending) <= block_until:
                    return
                oldest = self._pending[0]
            try:
                oldest.result()
            except BaseException as exc:
                self._errors.append(exc)
            with self._lock:
                if self._pending and self._pending[0] is oldest:
                    self._pending.popleft()

    def wait_for_slot(self) -> None:
        """Back-pressure: wait until another save may start."""
        self._reap(self.max_in_flight - 1)

    def submit(self, work: Callable[[], Any]) -> None:
        future = self._executor.submit(work)
        with self._lock:
            self._pending.append(future)

    def take_buffers(self) -> list[Any]:
        with self._lock:
            return self._spare.pop() if self._spare else []

    def give_back(self, buffers: list[Any]) -> None:
        """Called by the worker once a snapshot is written: its buffers may be reused."""
        with self._lock:
            if len(self._spare) < self.max_in_flight:
                self._spare.append(buffers)

    def take_error(self) -> BaseException | None:
        """The oldest recorded background failure (removed), or ``None``."""
        return self._errors.popleft() if self._errors else None

    def wait(self) -> None:
        """Wait for every pending save; failures are recorded, see :meth:`take_error`."""
        self._reap(0)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(not f.done() for f in self._pending)

    def shutdown(self) -> None:
        self.wait()
        self._executor.shutdown(wait=True)


_live: weakref.WeakSet[AsyncSaver] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for saver in list(_live):
        saver.wait()
        while (error := saver.take_error()) is not None:
            log.error("a checkpoint save that was still running at exit failed: %s", error)
