"""Rank helpers: who writes, and how ranks agree on the outcome of a save.

When ``torch.distributed`` is initialized only global rank 0 writes. After a save the ranks
exchange their outcomes (success, or the error message), so a failed write raises on every rank
instead of leaving the others waiting in a barrier.

Every exchange (:func:`agree_on_call`, :func:`agree_on_outcome`, :func:`decide_on_rank_zero`) also
carries what the rank is doing and how many exchanges it has made: ranks that call ckpthooks
differently (another path, a save one rank skipped) raise :class:`DistributedCheckpointError` on
every rank instead of pairing unrelated collectives. A rank that never arrives cannot be told apart
from a slow one: the others wait for the process group's timeout (``init_process_group(timeout=...)``;
torch's default is 30 minutes for gloo, 10 for NCCL) and then raise
:class:`DistributedCheckpointError`.

Where ranks come from, in order: an initialized ``torch.distributed`` process group; else a
:class:`DistributedContext` a plugin supplies through the
:func:`~ckpthooks.hookspecs.distributed_context` hook (the XLA plugin's ordinals, for example),
asked through the context source passed as ``host`` (anything with a ``distributed_context()``
method, such as a :class:`~ckpthooks._plugin_host.PluginHost`), else through the default source
(:func:`set_default_context_source`; :mod:`ckpthooks._plugin_host` installs the shared host as the
default when it is imported); else the launcher variables (``RANK``, ``SLURM_PROCID``, ...) with a
world of one process. This module imports no other ckpthooks module but the exceptions.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

from ckpthooks.exceptions import DistributedCheckpointError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@runtime_checkable
class DistributedContext(Protocol):
    """Ranks and the two collectives ckpthooks needs, for a runtime other than ``torch.distributed``.

    A plugin returns one from the :func:`~ckpthooks.hookspecs.distributed_context` hook. The host
    keeps it, so its methods should ask the runtime each time rather than remember values. Rank 0
    is the writer. Every rank calls ``broadcast_object`` and ``barrier`` in the same order.
    """

    def rank(self) -> int:
        """This process's global rank (0 writes)."""
        ...

    def world_size(self) -> int:
        """The number of processes in the run."""
        ...

    def broadcast_object(self, obj: Any, src: int) -> Any:
        """Rank ``src``'s ``obj`` (a picklable value of plain types) on every rank."""
        ...

    def barrier(self) -> None:
        """Return once every rank has called it."""
        ...


@runtime_checkable
class ContextSource(Protocol):
    """Where a plugin-supplied :class:`DistributedContext` comes from (a plugin host, in practice)."""

    def distributed_context(self) -> DistributedContext | None:
        """The context of the runtime in use, or ``None``."""
        ...


#: Returns the source asked when no ``host`` is passed (set by :func:`set_default_context_source`).
_default_source: Callable[[], ContextSource | None] | None = None


def set_default_context_source(
    source: Callable[[], ContextSource | None] | None,
) -> Callable[[], ContextSource | None] | None:
    """Install what returns the context source asked when a function here gets no ``host``
    (:mod:`ckpthooks._plugin_host` installs :func:`~ckpthooks._plugin_host.get_plugin_host`);
    returns the previous one."""
    global _default_source
    previous, _default_source = _default_source, source
    return previous


def _dist() -> Any | None:
    """``torch.distributed`` when it is available and initialized, else ``None``."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always has it
        return None
    if dist.is_available() and dist.is_initialized():
        return dist
    return None


def _env_rank() -> int:
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(variable)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def _context(host: ContextSource | None) -> DistributedContext | None:
    """The plugin-supplied context (asked only when no process group is initialized)."""
    source = host if host is not None else (_default_source() if _default_source is not None else None)
    return source.distributed_context() if source is not None else None


def global_rank(host: ContextSource | None = None) -> int:
    """This process's global rank (the process group, else a plugin's context, else launcher variables)."""
    dist = _dist()
    if dist is not None:
        return int(dist.get_rank())
    context = _context(host)
    return int(context.rank()) if context is not None else _env_rank()


def world_size(host: ContextSource | None = None) -> int:
    dist = _dist()
    if dist is not None:
        return int(dist.get_world_size())
    context = _context(host)
    return int(context.world_size()) if context is not None else 1


def is_global_zero(host: ContextSource | None = None) -> bool:
    return global_rank(host) == 0


def barrier(host: ContextSource | None = None) -> None:
    dist = _dist()
    if dist is not None:
        if dist.get_world_size() > 1:
            dist.barrier()
        return
    context = _context(host)
    if context is not None and context.world_size() > 1:
        context.barrier()


def broadcast_object(obj: Any, src: int = 0, host: ContextSource | None = None) -> Any:
    """``obj`` from rank ``src`` on every rank (identity in a single process)."""
    dist = _dist()
    if dist is None:
        context = _context(host)
        if context is None or context.world_size() == 1:
            return obj
        return context.broadcast_object(obj, src)
    if dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


#: Agreement steps taken, per rank living in this process (one, except when a plugin's ranks are
#: threads: XLA ordinals under ``xmp.spawn`` on CPU); ranks compare it at every exchange.
_steps: dict[int, int] = {}


def reset_collective_steps() -> None:
    """Forget how many exchanges each rank made, as a fresh process would (for tests that run
    several ranks as threads of one process, or start a new simulated run in the same process)."""
    _steps.clear()


def _all_gather(obj: Any, host: ContextSource | None) -> list[Any]:
    dist = _dist()
    if dist is not None:
        gathered: list[Any] = [None] * int(dist.get_world_size())
        dist.all_gather_object(gathered, obj)
        return gathered
    context = _context(host)
    if context is None:
        return [obj]
    me = context.rank()
    return [context.broadcast_object(obj if me == src else None, src) for src in range(context.world_size())]


def all_gather_object(obj: Any, host: ContextSource | None = None) -> list[Any]:
    """Every rank's ``obj`` (small and picklable), in rank order, on every rank (``[obj]`` in a
    single process). A collective: every rank calls it at the same point."""
    return _all_gather(obj, host)


def _exchange(what: str, payload: Any, host: ContextSource | None) -> list[Any]:
    """Every rank's ``payload`` (small and picklable), on every rank, for the step ``what``.

    Raises :class:`DistributedCheckpointError` on every rank when the ranks are at different steps
    or name different things (``what`` holds the path), and when the collective itself fails: a
    rank that stopped, or one that did not arrive within the process group's timeout.
    """
    rank = global_rank(host)
    step = _steps[rank] = _steps.get(rank, 0) + 1
    try:
        gathered = _all_gather((step, what, payload), host)
        # the exchange's last send may still be in flight; a barrier lets a process group be
        # destroyed right after a save without aborting (seen with gloo)
        barrier(host)
    except RuntimeError as exc:  # gloo and NCCL report timeouts and lost peers as RuntimeError
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise DistributedCheckpointError(
            f"{what}: the ranks could not agree ({type(exc).__name__}: {first_line}). Either another "
            "rank failed or stopped, or it did not make the same ckpthooks call within the process "
            "group's timeout: call save_checkpoint, restore and the loop events on every rank, never "
            "under `if rank == 0` or rank_zero_only"
        ) from exc
    if len({(step, label) for step, label, _ in gathered}) > 1:
        doing = "; ".join(f"rank {rank}: {label} (call {step})" for rank, (step, label, _) in enumerate(gathered))
        raise DistributedCheckpointError(
            f"the ranks are out of step ({doing}). Every rank must make the same ckpthooks calls, "
            "with the same paths, in the same order"
        )
    return [item for _, _, item in gathered]


def agree_on_call(what: str, host: ContextSource | None = None) -> None:
    """Check that every rank is making the same call ``what`` (for example ``"saving <path>"``) at
    the same point; raises :class:`DistributedCheckpointError` on every rank otherwise. A no-op
    in a single process."""
    if world_size(host) > 1:
        _exchange(what, None, host)


def agree_on_outcome(error: BaseException | None, what: str, host: ContextSource | None = None) -> None:
    """Share every rank's outcome of ``what``; every rank raises if any rank failed.

    Each rank passes the exception its part raised, or ``None`` (for a save to one file only the
    writer, rank 0, can fail). A rank that failed raises its own exception; the others raise
    :class:`DistributedCheckpointError` with the first failed rank's message. Replaces a bare
    barrier, which would hang the other ranks forever if the writer failed before reaching it.
    """
    if world_size(host) == 1:
        if error is not None:
            raise error
        return
    message = None if error is None else f"{type(error).__name__}: {error}"
    outcomes = _exchange(what, message, host)
    if error is not None:
        raise error
    for rank, outcome in enumerate(outcomes):
        if outcome is not None:
            where = "the writer rank (rank 0)" if rank == 0 else f"rank {rank}"
            raise DistributedCheckpointError(f"{what} failed on {where}: {outcome}")


def decide_on_rank_zero(decide: Callable[[], T], what: str, host: ContextSource | None = None) -> T:
    """Run ``decide`` on rank 0 only and return its result on every rank.

    For decisions that must not depend on what each rank sees (which checkpoint is "last"): the
    other ranks take rank 0's answer. If ``decide`` raises, rank 0 raises it and the other ranks
    raise :class:`DistributedCheckpointError` with its message.
    """
    if world_size(host) == 1:
        return decide()
    value: Any = None
    error: BaseException | None = None
    if global_rank(host) == 0:
        try:
            value = decide()
        except Exception as exc:
            error = exc
    message = None if error is None else f"{type(error).__name__}: {error}"
    decided, failure = _exchange(what, (value, message), host)[0]
    if error is not None:
        raise error
    if failure is not None:
        raise DistributedCheckpointError(f"{what} failed on rank 0: {failure}")
    return cast(T, decided)


def rank_zero_only(fn: F) -> F:
    """Run ``fn`` only on global rank 0; other ranks get ``None``."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if is_global_zero():
            return fn(*args, **kwargs)
        return None

    return cast(F, wrapped)
