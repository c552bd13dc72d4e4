"""ckpthooks-dcp: sharded checkpoints written by every rank with torch.distributed.checkpoint.

Use it for one checkpointer::

    from ckpthooks import Checkpointer
    from ckpthooks_dcp import DCPCheckpointIO

    ckpt = Checkpointer("runs/", checkpoint_io=DCPCheckpointIO())

Importing this package is cheap: torch is imported when the backend is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ckpthooks_dcp._version import __version__

if TYPE_CHECKING:
    from ckpthooks_dcp.io import DCPCheckpointIO
    from ckpthooks_dcp.metadata import read_metadata

__all__ = ["DCPCheckpointIO", "__version__", "read_metadata"]

_LAZY = {"DCPCheckpointIO": "ckpthooks_dcp.io", "read_metadata": "ckpthooks_dcp.metadata"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckpthooks_dcp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
