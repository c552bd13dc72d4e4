"""Comparing and loading a model's ``state_dict`` with errors that say what does not fit.

Used by the model component of a restore and by ``load_from_checkpoint``.
"""

from __future__ import annotations

import logging
from typing import Any

from ckpthooks.exceptions import IncompatibleStateError, MissingStateError, UnexpectedStateError

log = logging.getLogger(__name__)


def diff_model_state(model: Any, state: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and shape mismatches of ``state`` against ``model``.

    Checked before anything is loaded, so that a restore that cannot fit changes nothing. Models
    with load-state-dict pre-hooks (which may rename keys) are left to ``load_state_dict`` itself.
    """
    import torch

    if any(getattr(m, "_load_state_dict_pre_hooks", None) for m in model.modules()):
        return [], [], []
    current = model.state_dict()
    missing = [k for k in current if k not in state]
    unexpected = [k for k in state if k not in current]
    incompatible = []
    for key in current.keys() & state.keys():
        mine, saved = current[key], state[key]
        if (
            isinstance(mine, torch.Tensor)
            and isinstance(saved, torch.Tensor)
            and not isinstance(mine, torch.nn.parameter.UninitializedParameter)
            and mine.shape != saved.shape
        ):
            incompatible.append(
                f"state_dict[{key!r}] has shape {tuple(saved.shape)} in the checkpoint but "
                f"{tuple(mine.shape)} in the model"
            )
    return missing, unexpected, sorted(incompatible)


def load_model_state(model: Any, state: Any, strict: bool = True) -> None:
    """``model.load_state_dict`` with errors that say what does not fit."""
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        text = str(exc)
        if "size mismatch" in text:
            raise IncompatibleStateError(
                f"the model's tensors do not fit the checkpoint: {text.strip()}. Was it saved from "
                "a model built with other hyperparameters?"
            ) from exc
        missing = _parse_keys(text, "Missing key(s) in state_dict:")
        unexpected = _parse_keys(text, "Unexpected key(s) in state_dict:")
        if missing:
            raise MissingStateError(
                f"the checkpoint's state_dict lacks model parameters {missing}; pass strict=False "
                "to restore the rest", missing
            ) from exc
        if unexpected:
            raise UnexpectedStateError(
                f"the checkpoint's state_dict has parameters the model lacks {unexpected}; pass "
                "strict=False to ignore them", unexpected
            ) from exc
        raise IncompatibleStateError(f"the model rejected the checkpoint's state_dict: {text}") from exc
    if not strict and result is not None and (result.missing_keys or result.unexpected_keys):
        log.warning(
            "partial model restore: missing %s, unexpected %s", result.missing_keys, result.unexpected_keys
        )


def _parse_keys(text: str, marker: str) -> list[str]:
    index = text.find(marker)
    if index < 0:
        return []
    tail = text[index + len(marker) :].split(".\n")[0].split("\n")[0]
    return [part.strip().strip('".') for part in tail.split(",") if part.strip().strip('".')]
