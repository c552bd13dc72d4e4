"""Rank helpers: who writes, and how ranks agree on the outcome of a save.

When ``torch.distributed`` is initialized only global rank 0 writes. After a save the writer
broadcasts its outcome (success, or the error message), so a failed write raises on every rank
instead of leaving the others waiting in a barrier.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

from ckpthooks.exceptions import DistributedCheckpointError

F = TypeVar("F", bound=Callable[..., Any])


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


def global_rank() -> int:
    """This process's global rank (the initialized process group, else launcher variables)."""
    dist = _dist()
    return int(dist.get_rank()) if dist is not None else _env_rank()


def world_size() -> int:
    dist = _dist()
    return int(dist.get_world_size()) if dist is not None else 1


def is_global_zero() -> bool:
    return global_rank() == 0


def barrier() -> None:
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (identity in a single process)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def agree_on_outcome(error: BaseException | None, what: str) -> None:
    """Share the writer rank's outcome; every rank raises if the writer failed.

    The writer (rank 0) calls this with the exception its write raised (or ``None``); the other
    ranks call it with ``None``. Replaces a bare barrier, which would hang the other ranks forever
    if the writer failed before reaching it.
    """
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        if error is not None:
            raise error
        return
    message = None if error is None else f"{type(error).__name__}: {error}"
    outcome = broadcast_object(message if dist.get_rank() == 0 else None)
    # the broadcast's last send may still be in flight on the writer; a barrier lets a process
    # group be destroyed right after a save without aborting (seen with gloo)
    dist.barrier()
    if error is not None:
        raise error
    if outcome is not None:
        raise DistributedCheckpointError(f"{what} failed on the writer rank (rank 0): {outcome}")


def rank_zero_only(fn: F) -> F:
    """Run ``fn`` only on global rank 0; other ranks get ``None``."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if is_global_zero():
            return fn(*args, **kwargs)
        return None

    return cast(F, wrapped)
