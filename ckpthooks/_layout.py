"""The checkpoint dict's own key names: what every layer that reads or writes a checkpoint agrees on.

Lightning's keys (``state_dict``, ``optimizer_states``, ...) are named where they are written; the
names here are ckpthooks' namespace and the keys more than one module needs.
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "ckpthooks"

#: Lightning writes the AMP scaler under its precision plugin's class name; older files use this.
SCALER_KEYS = ("MixedPrecision", "native_amp_scaling_state")


#: where a checkpoint dict being loaded lists the state components whose absence a warning already
#: explained (the Lightning layout translation does): in memory only, taken out by the restore
_EXPLAINED_KEY = "_ckpthooks_explained_missing"


def mark_explained_missing(checkpoint: dict[str, Any], name: str) -> None:
    """Record that the absence of the component ``name`` was explained to the user already."""
    checkpoint.setdefault(_EXPLAINED_KEY, []).append(name)


def take_explained_missing(checkpoint: dict[str, Any]) -> set[str]:
    """The names :func:`mark_explained_missing` recorded, removed from ``checkpoint``."""
    return set(checkpoint.pop(_EXPLAINED_KEY, ()))


def namespace(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint["ckpthooks"]``, created when missing."""
    space: dict[str, Any] = checkpoint.setdefault(NAMESPACE, {})
    space.setdefault("components", {})
    return space
