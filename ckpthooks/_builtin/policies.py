"""Built-in plugin: Lightning's default checkpointing policy.

A default ``ModelCheckpoint`` saves the latest state to ``<default_root_dir>/checkpoints`` at the
end of every epoch, keeping one file (Lightning's behaviour). It is marked ``is_default_policy``;
the runtime keeps it only when checkpointing is enabled and no other callback saves checkpoints
(:func:`ckpthooks._callbacks.with_default_policy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ckpthooks.hookspecs import hookimpl

if TYPE_CHECKING:
    from ckpthooks._callbacks import Callback
    from ckpthooks._checkpointer import Checkpointer


@hookimpl
def register_policies(checkpointer: Checkpointer) -> Sequence[Callback]:
    from ckpthooks._policies.model_checkpoint import ModelCheckpoint

    default = ModelCheckpoint()
    default.is_default_policy = True
    return [default]
