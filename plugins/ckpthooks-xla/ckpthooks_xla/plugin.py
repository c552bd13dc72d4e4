"""The ckpthooks plugin (entry point ``xla``): the master ordinal writes, XLA tensors reach storage on the CPU.

"XLA in use" means: the program imported ``torch_xla`` and its runtime is initialized (see
:func:`ckpthooks_xla.runtime.xla_in_use`). The plugin never imports torch_xla itself; in a program
that does not use XLA every hook below returns after a dictionary lookup.

* ``distributed_context``: when XLA is in use with more than one ordinal and ``torch.distributed``
  is not initialized, ranks are torch_xla's global ordinals (an :class:`~ckpthooks_xla.runtime.XLAContext`),
  so only the master ordinal writes and every ordinal agrees on the outcome. With a single
  ordinal it passes, and the launcher variables (``RANK``, ...) decide as usual.
* ``on_save_checkpoint`` (run last of all implementations, on every rank): when XLA is in use, runs
  the pending computation of every XLA tensor in the checkpoint on every ordinal and, on the writer,
  replaces them with CPU copies; whatever backend then writes (torch, safetensors, your own) gets
  CPU tensors.
* ``register_checkpoint_io`` contributes the backend ``"xla"`` (:class:`~ckpthooks_xla.XLACheckpointIO`)
  for every protocol. Selection rule: priority 10, above the built-in torch backend (0), when XLA
  is in use at the moment the plugin host first picks a backend for a URL protocol; otherwise
  priority -10, so installing the plugin changes nothing for programs that do not use XLA.
  ``Checkpointer(checkpoint_io=XLACheckpointIO())`` always uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ckpthooks.plugin import hookimpl

from ckpthooks_xla.runtime import xla_in_use

if TYPE_CHECKING:
    from ckpthooks import Checkpointer
    from ckpthooks.plugin import CheckpointIO, CheckpointIOSpec, DistributedContext

#: Priority of the "xla" backend while an XLA device is in use: above the torch backend (0).
PRIORITY_IN_USE = 10
#: Priority otherwise: below the torch backend, chosen only when passed as ``checkpoint_io=``.
PRIORITY_IDLE = -10


def backend_priority() -> int:
    """The priority the ``"xla"`` backend is contributed with now (the selection rule)."""
    return PRIORITY_IN_USE if xla_in_use() else PRIORITY_IDLE


def _factory() -> CheckpointIO:
    from ckpthooks_xla.io import XLACheckpointIO

    return XLACheckpointIO()


@hookimpl
def register_checkpoint_io() -> Sequence[CheckpointIOSpec]:
    from ckpthooks.plugin import CheckpointIOSpec

    return [
        CheckpointIOSpec(
            name="xla",
            protocols=("*",),
            factory=_factory,
            priority=backend_priority(),
            description="torch.save of the checkpoint with XLA tensors moved to the CPU (chosen "
            "while an XLA device is in use)",
        )
    ]


@hookimpl
def distributed_context() -> DistributedContext | None:
    if not xla_in_use():
        return None
    from ckpthooks_xla.runtime import XLAContext, xla_world_size

    if xla_world_size() <= 1:
        return None  # one ordinal: nothing to add to the launcher variables
    return XLAContext()


@hookimpl(trylast=True)
def on_save_checkpoint(checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
    if not xla_in_use():
        return
    from ckpthooks_xla.cpu import move_to_cpu

    writer = checkpointer.is_global_zero
    converted = move_to_cpu(checkpoint, convert=writer)  # every ordinal runs its pending graph
    if converted is not checkpoint:
        for key, value in converted.items():
            checkpoint[key] = value  # new containers: the objects the checkpoint came from keep theirs
