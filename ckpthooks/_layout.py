"""The checkpoint dict's own key names: what every layer that reads or writes a checkpoint agrees on.

Lightning's keys (``state_dict``, ``optimizer_states``, ...) are named where they are written; the
names here are ckpthooks' namespace and the keys more than one module needs.
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "ckpthooks"

#: Lightning writes the AMP scaler under its precision plugin's class name; older files use this.
SCALER_KEYS = ("MixedPrecision", "native_amp_scaling_state")


def namespace(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint["ckpthooks"]``, created when missing."""
    space: dict[str, Any] = checkpoint.setdefault(NAMESPACE, {})
    space.setdefault("components", {})
    return space
