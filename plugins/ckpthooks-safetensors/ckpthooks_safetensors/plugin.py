"""The ckpthooks plugin (entry point ``safetensors``): contributes the backend and loads its files.

* ``register_checkpoint_io`` contributes the backend ``"safetensors"`` for every protocol at a
  priority below the built-in torch backend: installing the plugin never changes how anybody's
  checkpoints are written. Write safetensors checkpoints with
  ``Checkpointer(checkpoint_io=SafetensorsCheckpointIO())``.
* ``load_checkpoint`` recognises safetensors files by their first bytes and loads them whatever
  backend was chosen for the path, so ``Checkpointer.restore`` (``ckpt_path="last"``) and
  ``load_from_checkpoint`` read them without ``checkpoint_io=``. Other files (``torch.save``
  zips start with ``PK``) pass on to the chosen backend after a 9-byte read.

This module imports neither torch nor safetensors: listing plugins stays cheap.
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
    from ckpthooks_safetensors.io import SafetensorsCheckpointIO

    return SafetensorsCheckpointIO()


@hookimpl
def register_checkpoint_io() -> Sequence[CheckpointIOSpec]:
    from ckpthooks.plugin import CheckpointIOSpec

    return [
        CheckpointIOSpec(
            name="safetensors",
            protocols=("*",),
            factory=_factory,
            priority=PRIORITY,
            description="safetensors files, JSON structure in the header, no pickle "
            "(select with checkpoint_io=SafetensorsCheckpointIO())",
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
    from ckpthooks_safetensors.io import SafetensorsCheckpointIO, looks_like_safetensors

    if isinstance(checkpoint_io, SafetensorsCheckpointIO):
        return None  # the chosen backend is this one already
    if not looks_like_safetensors(path, storage_options):
        return None
    return SafetensorsCheckpointIO().load_checkpoint(
        path, map_location=map_location, storage_options=storage_options, weights_only=weights_only
    )
