"""ckpthooks-safetensors: checkpoints stored as safetensors files, loaded without unpickling.

Use it for one checkpointer::

    from ckpthooks import Checkpointer
    from ckpthooks_safetensors import SafetensorsCheckpointIO

    ckpt = Checkpointer("runs/", checkpoint_io=SafetensorsCheckpointIO())

Importing this package is cheap: torch and safetensors are imported when the backend is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ckpthooks_safetensors._version import __version__

if TYPE_CHECKING:
    from ckpthooks_safetensors.io import SafetensorsCheckpointIO, UnsupportedStateError

__all__ = ["SafetensorsCheckpointIO", "UnsupportedStateError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("SafetensorsCheckpointIO", "UnsupportedStateError"):
        value = getattr(importlib.import_module("ckpthooks_safetensors.io"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ckpthooks_safetensors' has no attribute {name!r}")
