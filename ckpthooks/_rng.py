"""Capture and restore every random number generator a training loop draws from.

Python's ``random``, NumPy's legacy global generator (only when NumPy is already imported, so this
never imports it), torch's CPU generator and, when CUDA is available, every CUDA device's generator.
The states are stored as plain types and tensors, so they load with ``weights_only=True``.
"""

from __future__ import annotations

import random
import sys
from typing import Any


def collect_rng_states() -> dict[str, Any]:
    import torch

    states: dict[str, Any] = {
        "python": _plain(random.getstate()),
        "torch": torch.get_rng_state(),
    }
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state(legacy=True)
        states["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    if torch.cuda.is_available():
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    import torch

    if "python" in states:
        random.setstate(_tuples(states["python"]))
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "numpy" in states:
        import numpy

        saved = states["numpy"]
        numpy.random.set_state(
            (
                saved["kind"],
                saved["keys"].numpy().astype("uint32"),
                saved["pos"],
                saved["has_gauss"],
                saved["cached_gaussian"],
            )
        )
    if "cuda" in states and torch.cuda.is_available():
        saved_cuda = states["cuda"]
        if len(saved_cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved_cuda)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
