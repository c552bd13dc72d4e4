"""Lightning's checkpoint layout, both ways.

**Saving** (ckpthooks → Lightning). Besides the keys every ckpthooks file has, Lightning's
``Trainer.fit(ckpt_path=...)`` needs:

* ``loops``: the fit loop's progress counters, from which Lightning takes ``current_epoch`` and
  ``global_step`` (the top-level ``epoch`` and ``global_step`` keys are informational to it).
  :func:`loops_state` builds them from ckpthooks' loop position exactly as Lightning 2.x writes them
  at the same point of a loop (see :func:`fit_loop_state`).
* ``optimizer_states`` and ``lr_schedulers`` even when empty (Lightning raises ``KeyError`` otherwise).
* ``callbacks`` under Lightning's state keys: every ``ModelCheckpoint`` state is also written under
  the key Lightning's ``ModelCheckpoint`` with the same options uses, with absolute paths and tensor
  scores (:func:`lightning_model_checkpoint_state`), plus a small entry for
  :class:`~ckpthooks.interop.lightning_callback.CkpthooksState`, the Lightning callback that restores
  ckpthooks' random generator states. A Trainer without that callback warns about it: so a Lightning
  user learns that the RNG states and the exact in-epoch position did not cross over.

These additions are recorded in ``checkpoint["ckpthooks"]["lightning"]`` and dropped again when
ckpthooks restores its own file.

**Loading** (Lightning → ckpthooks). :func:`translate_lightning_checkpoint` rewrites a file written
by Lightning's ``Trainer`` into ckpthooks' layout before anything is restored: Lightning's
``ModelCheckpoint`` state moves to the ``ModelCheckpoint`` configured with the same monitor and mode,
state of Lightning callbacks without a counterpart is left out, the loop position is derived from
``loops``; and a :class:`~ckpthooks.interop.LightningInteropWarning` names everything that does not
cross over.

Nothing here imports Lightning.
"""

from __future__ import annotations

import ast
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ckpthooks._io.location import Location
from ckpthooks._layout import NAMESPACE, SCALER_KEYS, mark_explained_missing, namespace
from ckpthooks.interop import LightningInteropWarning
from ckpthooks.interop._lightning_loops import loop_record_from_lightning

if TYPE_CHECKING:
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._policies.model_checkpoint import ModelCheckpoint

log = logging.getLogger(__name__)

#: ``checkpoint["ckpthooks"][RECORD_KEY]`` records what was added only for Lightning
RECORD_KEY = "lightning"
#: the state key of :class:`ckpthooks.interop.lightning_callback.CkpthooksState`
STATE_CALLBACK_KEY = "CkpthooksState"
#: where Lightning's docs on what crosses over live
DOCS = "docs/coming-from-lightning.md"


def _warn(message: str) -> None:
    warnings.warn(message, LightningInteropWarning, stacklevel=_caller_level())


def _caller_level() -> int:
    """The stack level of the first frame outside ckpthooks and pluggy: the user's restore call."""
    import pluggy

    inside = (os.path.dirname(os.path.dirname(__file__)), os.path.dirname(pluggy.__file__))
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


# --------------------------------------------------------------------------- ModelCheckpoint


_KEY = re.compile(r"^ModelCheckpoint(\{.*\})$", re.DOTALL)


def lightning_model_checkpoint_key(mc: ModelCheckpoint) -> str:
    """The state key Lightning's ``ModelCheckpoint`` with ``mc``'s options uses."""
    options = {
        "monitor": mc.monitor,
        "mode": mc.mode,
        "every_n_train_steps": mc.every_n_train_steps,
        "every_n_epochs": mc.every_n_epochs,
        "train_time_interval": mc.train_time_interval,
    }
    return f"ModelCheckpoint{options!r}"


def parse_lightning_model_checkpoint_key(key: Any) -> dict[str, Any] | None:
    """The options in a state key of Lightning's ``ModelCheckpoint``, or ``None`` for other keys
    (ckpthooks' own ``ModelCheckpoint`` keys hold only monitor, mode and dirpath)."""
    match = _KEY.match(key) if isinstance(key, str) else None
    if match is None:
        return None
    text = re.sub(r"datetime\.timedelta\([^)]*\)", "None", match.group(1))
    try:
        options = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(options, dict) or not ({"every_n_train_steps", "every_n_epochs"} & set(options)):
        return None
    return options


def _lightning_path(path: str | None) -> str:
    """Lightning keeps local checkpoint folders and files as real absolute paths."""
    if not path:
        return ""
    local = Location.of(path).os_path
    return os.path.realpath(local) if local is not None else path


def lightning_model_checkpoint_state(mc: ModelCheckpoint) -> dict[str, Any]:
    """``mc``'s state as Lightning's ``ModelCheckpoint.state_dict()`` has it (absolute paths,
    scores as tensors), for Lightning's ``load_state_dict``."""
    import torch

    def tensor(value: float | None) -> Any:
        return None if value is None else torch.tensor(float(value))

    kth_value = mc.kth_value
    if kth_value is None:
        kth_value = math.inf if mc.mode == "min" else -math.inf
    return {
        "monitor": mc.monitor,
        "best_model_score": tensor(mc.best_model_score),
        "best_model_path": _lightning_path(mc.best_model_path),
        "current_score": tensor(mc.current_score),
        "dirpath": _lightning_path(mc.dirpath),
        "best_k_models": {_lightning_path(p): torch.tensor(float(s)) for p, s in mc.best_k_models.items()},
        "kth_best_model_path": _lightning_path(mc.kth_best_model_path),
        "kth_value": torch.tensor(float(kth_value)),
        "last_model_path": _lightning_path(mc.last_model_path),
    }


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number


def model_checkpoint_state_from_lightning(mc: ModelCheckpoint, state: Mapping[str, Any]) -> dict[str, Any]:
    """Lightning's ``ModelCheckpoint`` state in the form ``mc.load_state_dict`` takes.

    The top-k files and their scores carry over (the best ``save_top_k`` of them when Lightning kept
    more); they keep their absolute paths and are never deleted by ckpthooks, which deletes only
    files it wrote. Lightning's ``last_model_path`` is not taken over, so that ckpthooks never
    overwrites Lightning's ``last.ckpt``: its own ``last`` file gets a version suffix beside it.
    """
    scores: dict[str, float] = {}
    for path, score in (state.get("best_k_models") or {}).items():
        number = _number(score)
        if isinstance(path, str) and number is not None and math.isfinite(number):
            scores[path] = number
    if mc.save_top_k >= 0 and len(scores) > mc.save_top_k:
        ranked = sorted(scores, key=scores.__getitem__, reverse=mc.mode == "max")
        kept = ranked[: mc.save_top_k]
        log.info(
            "Lightning's ModelCheckpoint kept %d files, this one keeps %d: ranking only %s",
            len(scores),
            mc.save_top_k,
            ", ".join(kept) or "none",
        )
        scores = {p: scores[p] for p in kept}
    best_path = str(state.get("best_model_path") or "")
    return {
        "monitor": mc.monitor,
        "mode": mc.mode,
        "dirpath": state.get("dirpath"),
        "best_model_score": _number(state.get("best_model_score")),
        "best_model_path": best_path,
        "current_score": _number(state.get("current_score")),
        "best_k_models": scores,
        "last_model_path": "",
        # without a monitor, Lightning's best_model_path is the newest file
        "latest_model_path": best_path if mc.monitor is None else "",
        "last_global_step_saved": -1,
        "pending_removals": [],
    }


# --------------------------------------------------------------------------- saving


def is_ckpthooks_file(checkpoint: Mapping[str, Any]) -> bool:
    space = checkpoint.get(NAMESPACE)
    return isinstance(space, Mapping) and "format_version" in space


def is_lightning_file(checkpoint: Mapping[str, Any]) -> bool:
    """Written by Lightning's ``Trainer`` (or in its layout by hand), not by ckpthooks."""
    return "pytorch-lightning_version" in checkpoint and not is_ckpthooks_file(checkpoint)


def add_lightning_layout(checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
    """Add what Lightning's ``Trainer.fit(ckpt_path=...)`` needs beyond ckpthooks' own keys.

    Weights-only files are left alone: like Lightning's own, they cannot resume a Trainer.
    """
    from ckpthooks._policies.model_checkpoint import ModelCheckpoint

    space = namespace(checkpoint)
    if space.get("weights_only"):
        return
    checkpoint.setdefault("optimizer_states", [])
    checkpoint.setdefault("lr_schedulers", [])
    callbacks = checkpoint.setdefault("callbacks", {})
    if not isinstance(callbacks, dict):
        return
    own_keys = {cb.state_key for cb in checkpointer.callbacks}
    added: list[str] = []
    for cb in checkpointer.callbacks:
        if not isinstance(cb, ModelCheckpoint) or cb.state_key not in callbacks:
            continue
        key = lightning_model_checkpoint_key(cb)
        if key in callbacks or key in own_keys:
            log.debug("not mirroring %r for Lightning: %s is taken", cb, key)
            continue
        callbacks[key] = lightning_model_checkpoint_state(cb)
        added.append(key)
    if STATE_CALLBACK_KEY not in callbacks and STATE_CALLBACK_KEY not in own_keys:
        callbacks[STATE_CALLBACK_KEY] = {"restores": sorted(_ckpthooks_only_state(checkpoint))}
        added.append(STATE_CALLBACK_KEY)
    if added:
        space[RECORD_KEY] = {"callbacks": added}


def _ckpthooks_only_state(checkpoint: Mapping[str, Any]) -> list[str]:
    """What a ckpthooks file holds that Lightning's Trainer does not restore."""
    space = checkpoint.get(NAMESPACE) or {}
    names = [f"component {name!r}" for name in sorted(space.get("components") or {})]
    loop = space.get("loop")
    if isinstance(loop, Mapping) and not loop.get("epoch_finished") and loop.get("batch_idx"):
        names.append("the in-epoch data position")
    return names


# --------------------------------------------------------------------------- loading


def drop_lightning_additions(checkpoint: dict[str, Any]) -> None:
    """Remove from a ckpthooks file what :func:`add_lightning_layout` added for Lightning only."""
    record = checkpoint.get(NAMESPACE, {}).get(RECORD_KEY)
    callbacks = checkpoint.get("callbacks")
    if not isinstance(record, Mapping) or not isinstance(callbacks, dict):
        return
    for key in record.get("callbacks") or ():
        callbacks.pop(key, None)


def translate_lightning_checkpoint(checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
    """Rewrite a checkpoint written by Lightning's ``Trainer`` into ckpthooks' layout, in place.

    Warns (:class:`~ckpthooks.interop.LightningInteropWarning`) about each part that does not cross
    over; nothing here raises. What is tracked but absent still fails a strict restore afterwards.
    """
    _translate_callbacks(checkpointer, checkpoint)
    _translate_scaler(checkpointer, checkpoint)
    space = namespace(checkpoint)
    components = space["components"]
    if checkpointer.save_rng_state and "rng" not in components:
        mark_explained_missing(checkpoint, "rng")  # the restore does not say it again
        _warn(
            "the checkpoint was written by Lightning and holds no random generator states (Python, "
            "NumPy, torch, CUDA); they are left as they are, so the resumed run draws other random "
            "numbers than an uninterrupted one. Add ckpthooks.interop.lightning_callback.CkpthooksState() "
            f"to the Trainer's callbacks to save them in Lightning's files (see {DOCS})"
        )
    if not isinstance(space.get("loop"), Mapping):
        record = loop_record_from_lightning(checkpoint)
        if record is not None:
            space["loop"] = record
            dropped = [
                "the validation, test and predict loop progress",
                "the LR-scheduler and optimizer-call counters",
                "_batches_that_stepped (the step loggers use)",
            ]
            state = checkpoint["loops"]["fit_loop"].get("state_dict")
            if isinstance(state, Mapping) and state.get("combined_loader"):
                dropped.append("the train dataloader's own state (combined_loader)")
            where = (
                f"epoch {record['epoch']} is finished"
                if record["epoch_finished"]
                else f"{record['batch_idx']} batches of epoch {record['epoch']} are done"
            )
            _warn(
                f"Lightning's loop state crosses over as epoch, global step and batch position only "
                f"({where}, global step {record['global_step']}); not carried over: "
                f"{'; '.join(dropped)} (see {DOCS})"
            )


def _translate_callbacks(checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
    from ckpthooks._policies.model_checkpoint import ModelCheckpoint

    saved = checkpoint.get("callbacks")
    if not isinstance(saved, dict):
        saved = {}
    ours = {cb.state_key for cb in checkpointer.callbacks}
    policies = [cb for cb in checkpointer.callbacks if isinstance(cb, ModelCheckpoint)]
    mapped: set[str] = set()
    for key in list(saved):
        if key in ours:
            continue  # a callback ported to ckpthooks under its Lightning state key
        state = saved.pop(key)
        options = parse_lightning_model_checkpoint_key(key)
        if options is None:
            _warn(
                f"the checkpoint holds state of the Lightning callback {key!r}, which has no "
                f"counterpart among this checkpointer's callbacks; it is left out (see {DOCS})"
            )
            continue
        monitor, mode = options.get("monitor"), options.get("mode", "min")
        target = next(
            (p for p in policies if p.monitor == monitor and p.mode == mode and p.state_key not in mapped), None
        )
        if target is None or target.state_key in saved or not isinstance(state, Mapping):
            best = state.get("best_model_path") if isinstance(state, Mapping) else None
            _warn(
                f"Lightning's {key} state (best file {best!r}) is not carried over: no ModelCheckpoint "
                f"with monitor={monitor!r}, mode={mode!r} is configured to take it (see {DOCS})"
            )
            continue
        saved[target.state_key] = model_checkpoint_state_from_lightning(target, state)
        mapped.add(target.state_key)
        log.info("Lightning's %s state carries over to %r", key, target)
    for policy in policies:
        if policy.state_key in saved or policy.state_key in mapped or not policy.state_dict():
            continue
        # its state key differs from any Lightning writes: start it fresh instead of failing a strict
        # restore for state a Lightning file cannot have
        saved[policy.state_key] = policy.state_dict()
        if not getattr(policy, "is_default_policy", False):
            _warn(
                f"the Lightning checkpoint holds no ModelCheckpoint state with monitor={policy.monitor!r}, "
                f"mode={policy.mode!r}; {policy!r} starts fresh (see {DOCS})"
            )
    if saved or "callbacks" in checkpoint:
        checkpoint["callbacks"] = saved


def _translate_scaler(checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
    """Precision plugins other than ``MixedPrecision`` (e.g. ``FSDPPrecision``) keep a GradScaler's
    state under their own class name: take it when it is the only scaler state."""
    if any(checkpoint.get(key) for key in SCALER_KEYS):
        return
    found = [
        key
        for key, value in checkpoint.items()
        if isinstance(key, str)
        and key.endswith("Precision")
        and isinstance(value, Mapping)
        and {"scale", "_growth_tracker"} <= set(value)
    ]
    if len(found) == 1:
        log.info("taking the AMP scaler state of Lightning's %s precision plugin", found[0])
        checkpoint[SCALER_KEYS[0]] = checkpoint.pop(found[0])
