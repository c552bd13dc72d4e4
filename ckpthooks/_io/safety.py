"""Weights-only safety: what may go into a checkpoint, and clear errors when loading needs more."""

from __future__ import annotations

import pickle
from typing import Any

from ckpthooks.exceptions import UnsafeCheckpointError, UnsafeStateError

_PLAIN = (str, bytes, bytearray, bool, int, float, complex, type(None))


def check_weights_only_safe(obj: Any, where: str = "checkpoint") -> None:
    """Raise :class:`UnsafeStateError` naming the first value ``torch.load(weights_only=True)``
    would refuse. Tensors are leaves: their data is never walked."""
    import torch

    leaf_types = (torch.Tensor, torch.Size, torch.dtype, torch.device)
    stack: list[tuple[str, Any]] = [(where, obj)]
    while stack:
        path, value = stack.pop()
        kind = type(value)
        if kind in _PLAIN or isinstance(value, leaf_types):
            continue
        if isinstance(value, dict):
            if kind.__module__ not in ("builtins", "collections"):
                _refuse(path, value)
            for key, item in value.items():
                if type(key) not in _PLAIN:
                    _refuse(f"{path} key {key!r}", key)
                stack.append((f"{path}[{key!r}]", item))
        elif kind in (list, tuple, set, frozenset):
            if kind is frozenset:
                _refuse(path, value)
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        else:
            _refuse(path, value)


def _refuse(path: str, value: Any) -> None:
    kind = type(value)
    raise UnsafeStateError(
        f"{path} is a {kind.__module__}.{kind.__qualname__}, which torch.load(weights_only=True) "
        "cannot load. Store plain Python types (dict, list, str, int, float, bool, None) and "
        "tensors instead: convert it in your state_dict()/hyperparameters, or leave it out "
        "(save_hyperparameters(ignore=[...]))."
    )


def translate_load_error(exc: BaseException, path: str) -> BaseException | None:
    """Turn torch's weights-only refusal into :class:`UnsafeCheckpointError`; ``None`` if unrelated."""
    message = str(exc)
    if "Unsupported operand" in message:
        return None  # an opcode torch.save never writes: the bytes are not a checkpoint at all
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in message:
        offending = _offending_global(message)
        what = f" It contains {offending}, which is not a plain type or a tensor." if offending else ""
        return UnsafeCheckpointError(
            f"{path} cannot be loaded safely: loading it would unpickle arbitrary Python objects."
            f"{what} If, and only if, you trust where this file came from, pass weights_only=False "
            "to Checkpointer.restore() or load_from_checkpoint()."
        )
    return None


def _offending_global(message: str) -> str | None:
    for marker in ("Unsupported global: GLOBAL ", "Unsupported operand", "Trying to call reduce for "):
        index = message.find(marker)
        if index >= 0:
            tail = message[index + len(marker) :].split()
            return tail[0].rstrip(".,") if tail else None
    return None
