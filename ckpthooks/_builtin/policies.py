"""Built-in plugin: Lightning's default checkpointing policy.

When checkpointing is enabled and the user configured no ``ModelCheckpoint``, a default one saves
the latest state to ``<default_root_dir>/checkpoints`` at the end of every epoch, keeping one file
(Lightning's behaviour).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ckpthooks.hookspecs import hookimpl

if TYPE_CHECKING:
    from ckpthooks.callbacks import Callback
    from ckpthooks.checkpointer import Checkpointer


@hookimpl
def register_policies(checkpointer: Checkpointer) -> Sequence[Callback]:
    from ckpthooks.policies.model_checkpoint import ModelCheckpoint

    if not checkpointer.enable_checkpointing:
        return []
    if any(isinstance(cb, ModelCheckpoint) for cb in checkpointer.callbacks):
        return []
    default = ModelCheckpoint()
    default.is_default_policy = True
    return [default]
