"""The ckpthooks plugin (entry point ``dcp``): contributes the backend and reads DCP folders.

* ``register_checkpoint_io`` contributes the backend ``"dcp"`` for local paths at a priority below
  the built-in torch backend: installing the plugin never changes how anybody's checkpoints are
  written. Write sharded checkpoints with ``Checkpointer(checkpoint_io=DCPCheckpointIO())``.
* ``load_checkpoint`` recognises a folder written by this plugin (a folder with DCP's
  ``.metadata``) and loads it whatever backend was chosen for the path, so that
  ``load_from_checkpoint`` and ``ckpthooks verify --deep`` read sharded checkpoints in one
  process (every tensor whole). Other paths pass on after one ``stat``.

This module imports no torch: listing plugins stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ckpthooks.plugin import hookimpl

if TYPE_CHECKING:
    from ckpthooks.plugin import CheckpointIO, CheckpointIOSpec

#: Below the built-in torch backend (priority 0): chosen only when asked for.
PRIORITY = -10


def _factory() -> CheckpointIO:
    from ckpthooks_dcp.io import DCPCheckpointIO

    return DCPCheckpointIO()


@hookimpl
def register_checkpoint_io() -> Sequence[CheckpointIOSpec]:
    from ckpthooks.plugin import CheckpointIOSpec

    return [
        CheckpointIOSpec(
            name="dcp",
            protocols=("file",),
            factory=_factory,
            priority=PRIORITY,
            description="sharded folders written by every rank with torch.distributed.checkpoint "
            "(select with checkpoint_io=DCPCheckpointIO())",
        )
    ]


@hookimpl
def load_checkpoint(
    path: str,
    storage_options: Mapping[str, Any] | None,
    checkpoint_io: CheckpointIO,
    map_location: Any,
    weights_only: bool,
) -> dict[str, Any] | None:
    from ckpthooks_dcp.io import DCPCheckpointIO, looks_like_dcp

    if isinstance(checkpoint_io, DCPCheckpointIO) or not looks_like_dcp(path):
        return None  # the chosen backend is this one already, or not a DCP folder
    return DCPCheckpointIO().load_checkpoint(
        path, map_location=map_location, storage_options=storage_options, weights_only=weights_only
    )
