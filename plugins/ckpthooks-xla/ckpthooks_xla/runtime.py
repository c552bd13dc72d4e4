"""Whether an XLA device is in use, and ranks from torch_xla's ordinals.

Nothing here imports torch_xla: the program does that. A process that never imported it is not
using XLA, and this module answers in a dictionary lookup. Once it is imported, the torch_xla
runtime is asked, but only after it was initialized (an XLA device was used, or ``xmp.spawn`` set
the process up): asking earlier would initialize it, and ``xmp.spawn`` refuses to start once the
runtime of the parent process is initialized.

Environment variables:

``CKPTHOOKS_XLA_TIMEOUT``
    Seconds an ordinal waits for the others in a broadcast or barrier of :class:`XLAContext`
    before it raises :class:`~ckpthooks.exceptions.DistributedCheckpointError` (default 1800,
    the default timeout of ``torch.distributed``).
"""

from __future__ import annotations

import copy
import os
import pickle
import sys
import threading
from typing import Any

from ckpthooks import DistributedCheckpointError

#: Seconds an ordinal waits for the others in a collective, unless ``CKPTHOOKS_XLA_TIMEOUT`` says otherwise.
DEFAULT_TIMEOUT = 1800.0


def xla_in_use() -> bool:
    """Whether this process uses an XLA device now.

    True when ``torch_xla`` is imported and its runtime is initialized. Never imports torch_xla and
    never initializes its runtime.
    """
    torch_xla = sys.modules.get("torch_xla")
    if torch_xla is None:
        return False
    is_initialized = getattr(getattr(torch_xla, "_XLAC", None), "_xla_runtime_is_initialized", None)
    if is_initialized is None:  # a partially imported module, or a torch_xla without PJRT
        return False
    try:
        return bool(is_initialized())
    except Exception:
        return False


def _xr() -> Any:
    import torch_xla.runtime as xr

    return xr


def _spmd(xr: Any) -> bool:
    is_spmd = getattr(xr, "is_spmd", None)
    return bool(is_spmd()) if callable(is_spmd) else False


def xla_rank() -> int:
    """The global ordinal of this thread's XLA device (in SPMD mode: the process index).

    This mirrors torch_xla's own rendezvous handler for ``torch.distributed``: in SPMD one process
    drives all its devices and processes are the ranks; otherwise every device (ordinal) is one.
    """
    xr = _xr()
    return int(xr.process_index() if _spmd(xr) else xr.global_ordinal())


def xla_world_size() -> int:
    """The number of ordinals in the run (in SPMD mode: the number of processes)."""
    xr = _xr()
    return int(xr.process_count() if _spmd(xr) else xr.world_size())


def _all_ordinals_in_this_process() -> bool:
    """Whether every ordinal is a thread of this process (``xmp.spawn`` on CPU, or one TPU host
    running one process with a thread per core)."""
    xr = _xr()
    return not _spmd(xr) and int(xr.process_count()) == 1


def timeout_from_env() -> float:
    raw = os.environ.get("CKPTHOOKS_XLA_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError as exc:
        raise DistributedCheckpointError(f"CKPTHOOKS_XLA_TIMEOUT must be a number of seconds, not {raw!r}") from exc
    if value <= 0:
        raise DistributedCheckpointError(f"CKPTHOOKS_XLA_TIMEOUT must be positive, not {raw!r}")
    return value


class ThreadExchange:
    """A collective between the threads of one process, one thread per ordinal.

    Every thread's ``n``-th call meets the other threads' ``n``-th call and gets every ordinal's
    value. A thread that waits longer than ``timeout`` raises instead of waiting forever, and so does
    every thread that arrives at that call later.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rounds: dict[int, dict[int, Any]] = {}
        self._reads: dict[int, int] = {}
        self._failed: set[int] = set()
        self._local = threading.local()

    def exchange(self, ordinal: int, world: int, value: Any, timeout: float, what: str) -> list[Any]:
        seq: int = getattr(self._local, "seq", 0)
        self._local.seq = seq + 1
        with self._cond:
            if seq in self._failed:
                raise DistributedCheckpointError(
                    f"{what}: ordinal {ordinal} arrived after another ordinal gave up waiting for it"
                )
            values = self._rounds.setdefault(seq, {})
            if ordinal in values:
                self._fail(seq)
                raise DistributedCheckpointError(
                    f"{what}: two threads of this process claim ordinal {ordinal}; each ordinal must "
                    "run in its own thread (as xmp.spawn does)"
                )
            values[ordinal] = value
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: len(values) >= world or seq in self._failed, timeout):
                missing = sorted(set(range(world)) - set(values))
                self._fail(seq)
                raise DistributedCheckpointError(
                    f"{what}: ordinal {ordinal} waited {timeout:g} s for ordinal(s) "
                    f"{', '.join(map(str, missing))}; did one of them fail or skip this call? "
                    "(CKPTHOOKS_XLA_TIMEOUT sets the limit)"
                )
            if seq in self._failed:
                raise DistributedCheckpointError(f"{what}: another thread of this process broke this exchange")
            result = [values.get(index) for index in range(world)]
            self._reads[seq] = self._reads.get(seq, 0) + 1
            if self._reads[seq] >= world:
                del self._reads[seq]
                self._rounds.pop(seq, None)
            return result

    def _fail(self, seq: int) -> None:
        """Give up the exchange ``seq``: threads waiting in it and arriving later raise."""
        self._rounds.pop(seq, None)
        self._reads.pop(seq, None)
        self._failed.add(seq)
        self._cond.notify_all()


#: One per process: every ordinal thread must meet in the same exchange, whichever plugin host it uses.
_EXCHANGE = ThreadExchange()


class XLAContext:
    """A :class:`~ckpthooks._distributed.DistributedContext` from torch_xla's ordinals.

    The plugin's ``distributed_context`` hook returns one when an XLA run has more than one ordinal
    and ``torch.distributed`` is not initialized. ``rank()`` is the global ordinal, so the master
    ordinal (0) is the writer. Every method asks the runtime at each call (the host keeps this
    object, and under ``xmp.spawn`` on CPU one object serves every ordinal thread).

    Collectives: when every ordinal is a thread of this process (``xmp.spawn`` on CPU), the threads
    exchange values in memory; torch_xla's own collectives are not reliable there (see the README).
    When ordinals live in several processes (one per TPU chip), ``xm.rendezvous`` carries them.
    Each waits at most ``timeout`` seconds (default: ``CKPTHOOKS_XLA_TIMEOUT``, else 1800).
    """

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"XLAContext(timeout={self.timeout!r})"

    def _timeout(self) -> float:
        return self.timeout if self.timeout is not None else timeout_from_env()

    def rank(self) -> int:
        return xla_rank()

    def world_size(self) -> int:
        return xla_world_size()

    def broadcast_object(self, obj: Any, src: int) -> Any:
        rank, world = self.rank(), self.world_size()
        if world == 1:
            return obj
        if _all_ordinals_in_this_process():
            values = _EXCHANGE.exchange(rank, world, obj if rank == src else None, self._timeout(), "broadcast")
            return obj if rank == src else copy.deepcopy(values[src])
        payloads = _rendezvous("ckpthooks.broadcast", pickle.dumps(obj) if rank == src else b"")
        return obj if rank == src else pickle.loads(payloads[src])  # our own ranks' bytes

    def barrier(self) -> None:
        rank, world = self.rank(), self.world_size()
        if world == 1:
            return
        if _all_ordinals_in_this_process():
            _EXCHANGE.exchange(rank, world, None, self._timeout(), "barrier")
            return
        _rendezvous("ckpthooks.barrier", b"")


def _rendezvous(tag: str, payload: bytes) -> list[bytes]:
    """``xm.rendezvous``: every ordinal's payload, in ordinal order. Bounded by XLA's own rendezvous
    timeout, not by ``CKPTHOOKS_XLA_TIMEOUT``."""
    import torch_xla.core.xla_model as xm

    result: list[bytes] = list(xm.rendezvous(tag, payload))
    if not result:
        raise DistributedCheckpointError(f"xm.rendezvous({tag!r}) returned no payloads")
    return result
