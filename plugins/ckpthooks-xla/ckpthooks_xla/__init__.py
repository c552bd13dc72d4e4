"""ckpthooks-xla: ckpthooks on XLA devices (TPU, or the CPU for testing with ``PJRT_DEVICE=CPU``).

Installed next to torch_xla, the plugin works by itself: the master ordinal writes, the other
ordinals agree on the outcome, and XLA tensors are moved to the CPU before they are written. To
choose the backend explicitly::

    from ckpthooks import Checkpointer
    from ckpthooks_xla import XLACheckpointIO

    ckpt = Checkpointer("runs/", checkpoint_io=XLACheckpointIO())

Importing this package is cheap: it imports neither torch nor torch_xla.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ckpthooks_xla._version import __version__
from ckpthooks_xla.runtime import xla_in_use

if TYPE_CHECKING:
    from ckpthooks_xla.cpu import move_to_cpu
    from ckpthooks_xla.io import XLACheckpointIO
    from ckpthooks_xla.runtime import XLAContext

__all__ = ["XLACheckpointIO", "XLAContext", "__version__", "move_to_cpu", "xla_in_use"]

_LAZY = {
    "XLACheckpointIO": "ckpthooks_xla.io",
    "XLAContext": "ckpthooks_xla.runtime",
    "move_to_cpu": "ckpthooks_xla.cpu",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckpthooks_xla' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
