"""State components: the named pieces a checkpoint is made of.

Each component knows where its state lives in the checkpoint dict, how to collect it from the
:class:`~ckpthooks.Checkpointer` and how to put it back. The built-in ones write Lightning's keys
(``state_dict``, ``optimizer_states``, ...); components contributed by plugins or added with
:meth:`Checkpointer.track` live under ``checkpoint["ckpthooks"]["components"][name]``.

Restoring is done in two phases: every component first *finds* its state (so that all missing and
unexpected state is reported at once, before anything changes), then *loads* it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ckpthooks._hparams import hparams_of
from ckpthooks._layout import NAMESPACE as NAMESPACE  # re-exported: the runtime and the CLI read it here
from ckpthooks._layout import SCALER_KEYS
from ckpthooks._layout import namespace as namespace
from ckpthooks._model_state import diff_model_state, load_model_state
from ckpthooks._rng import collect_rng_states, restore_rng_states
from ckpthooks.exceptions import IncompatibleStateError
from ckpthooks.interop._lightning_loops import loops_state

if TYPE_CHECKING:
    from ckpthooks._callbacks import Callback
    from ckpthooks._checkpointer import Checkpointer

log = logging.getLogger(__name__)

OnMissing = Literal["error", "warn", "ignore"]

_NOT_FOUND = object()




@dataclass
class Found:
    """What :meth:`StateComponent.find` returns: the state, plus problems it already sees."""

    value: Any = _NOT_FOUND
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: state that is there but cannot fit (a tensor of another shape); always an error
    incompatible: list[str] = field(default_factory=list)

    @property
    def present(self) -> bool:
        return self.value is not _NOT_FOUND


class StateComponent:
    """A named piece of training state.

    Subclasses set ``name`` and implement :meth:`is_active`, :meth:`dump` and :meth:`load`. By
    default the state lives under ``checkpoint["ckpthooks"]["components"][name]``; override
    :meth:`key` to use a top-level key instead, or :meth:`save_into`/:meth:`find` for layouts that
    span several keys.

    Attributes:
        name: unique among all components of a checkpointer.
        in_weights_only: also written when a weights-only checkpoint is saved.
        on_missing: what a restore does when the checkpoint lacks this state while the component is
            active: ``"error"`` (the default, :class:`MissingStateError`), ``"warn"`` or ``"ignore"``.
    """

    name: str = ""
    in_weights_only: bool = False
    on_missing: OnMissing = "error"
    #: ``False`` for metadata that a restore reads but does not put back (hyperparameters)
    restores_state: bool = True

    def key(self, checkpointer: Checkpointer) -> str | None:
        """Top-level checkpoint key of this state, or ``None`` for the ckpthooks namespace."""
        return None

    def is_active(self, checkpointer: Checkpointer) -> bool:
        """Whether there is something to save and restore now (e.g. an optimizer is tracked)."""
        return True

    def dump(self, checkpointer: Checkpointer) -> Any:
        """The state to save: plain Python types and tensors only."""
        raise TypeError(f"{type(self).__name__} must implement dump() or save_into()")

    def load(self, checkpointer: Checkpointer, state: Any) -> None:
        """Put ``state`` (what :meth:`dump` returned in the saving process) back."""
        raise TypeError(f"{type(self).__name__} must implement load()")

    def prepare(self, checkpointer: Checkpointer, state: Any) -> Any:
        """What :meth:`load` will be given for the loaded ``state``; by default ``state`` itself.

        For work that can be done before anything is put back, such as copying tensors out of a
        memory-mapped file into ordinary memory. It must not change live objects: a restore may
        call it while the checkpoint's checksum is still being verified, and drop the result if
        verification fails."""
        return state

    # ------------------------------------------------------------------ layout
    def save_into(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
        value = self.dump(checkpointer)
        key = self.key(checkpointer)
        if key is None:
            namespace(checkpoint)["components"][self.name] = value
        else:
            checkpoint[key] = value

    def find(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> Found:
        key = self.key(checkpointer)
        if key is None:
            components = checkpoint.get(NAMESPACE, {}).get("components", {})
            return Found(components[self.name]) if self.name in components else Found()
        return Found(checkpoint[key]) if _has_state(checkpoint.get(key)) else Found()

    def label(self, checkpointer: Checkpointer) -> str:
        """How errors name this component's state."""
        key = self.key(checkpointer)
        return f"checkpoint[{key!r}]" if key else f"component {self.name!r}"


def _has_state(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, (dict, list, tuple)):
        return len(value) > 0
    return True


class ModelComponent(StateComponent):
    name = "model"
    in_weights_only = True

    def key(self, checkpointer: Checkpointer) -> str:
        return "state_dict"

    def is_active(self, checkpointer: Checkpointer) -> bool:
        return checkpointer.model is not None

    def dump(self, checkpointer: Checkpointer) -> Any:
        assert checkpointer.model is not None
        return checkpointer.model.state_dict()

    def find(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> Found:
        found = super().find(checkpointer, checkpoint)
        if found.present and checkpointer.model is not None and isinstance(found.value, dict):
            missing, unexpected, incompatible = diff_model_state(checkpointer.model, found.value)
            found.missing += [f"state_dict[{k!r}]" for k in missing]
            found.unexpected += [f"state_dict[{k!r}]" for k in unexpected]
            found.incompatible += incompatible
        return found

    def load(self, checkpointer: Checkpointer, state: Any) -> None:
        assert checkpointer.model is not None
        load_model_state(checkpointer.model, state, strict=checkpointer.restore_strict)


class _ListComponent(StateComponent):
    """A list of stateful objects stored as a list of state dicts (optimizers, schedulers)."""

    attribute = ""
    what = ""

    def objects(self, checkpointer: Checkpointer) -> list[Any]:
        return list(getattr(checkpointer, self.attribute))

    def is_active(self, checkpointer: Checkpointer) -> bool:
        return len(self.objects(checkpointer)) > 0

    def dump(self, checkpointer: Checkpointer) -> Any:
        return [obj.state_dict() for obj in self.objects(checkpointer)]

    def find(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> Found:
        found = super().find(checkpointer, checkpoint)
        if not found.present or not self.is_active(checkpointer):
            return found
        key = self.key(checkpointer)
        saved, tracked = len(found.value), len(self.objects(checkpointer))
        if saved < tracked:
            found.missing += [f"{key}[{i}]" for i in range(saved, tracked)]
        elif saved > tracked:
            found.unexpected += [f"{key}[{i}]" for i in range(tracked, saved)]
        return found

    def load(self, checkpointer: Checkpointer, state: Any) -> None:
        for obj, obj_state in zip(self.objects(checkpointer), state):
            try:
                obj.load_state_dict(obj_state)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise IncompatibleStateError(
                    f"the checkpoint's {self.what} state does not fit {type(obj).__name__}: {exc}"
                ) from exc


class OptimizersComponent(_ListComponent):
    name = "optimizers"
    attribute = "optimizers"
    what = "optimizer"

    def key(self, checkpointer: Checkpointer) -> str:
        return "optimizer_states"

    def prepare(self, checkpointer: Checkpointer, state: Any) -> Any:
        if not isinstance(state, (list, tuple)):
            return state
        return _resident_optimizer_states(list(state))


def _resident_optimizer_states(states: list[Any]) -> list[Any]:
    """``states`` (optimizers' ``state_dict``s) with their CPU tensors copied into ordinary memory.

    A local checkpoint is loaded memory-mapped, and an optimizer keeps the tensors it is given: the
    first ``optimizer.step()`` would then write into a copy-on-write mapping of the file and take a
    page fault per 4 KiB page (measured: 0.57 s for 340 MB of AdamW state, against 0.07 s for the
    step itself). One copy here costs a fraction of that, and is made on several threads
    (:func:`~ckpthooks._resident.resident_copies`). The model's tensors need none: its
    ``load_state_dict`` copies them into the parameters."""
    import torch

    from ckpthooks._resident import resident_copies

    places: list[tuple[int, Any, str]] = []
    originals: list[torch.Tensor] = []
    for position, state in enumerate(states):
        inner = state.get("state") if isinstance(state, dict) else None
        if not isinstance(inner, dict):
            continue
        for key, entry in inner.items():
            if not isinstance(entry, dict):
                continue
            for name, value in entry.items():
                if isinstance(value, torch.Tensor) and value.device.type == "cpu":
                    places.append((position, key, name))
                    originals.append(value)
    if not originals:
        return states
    copies = iter(resident_copies(originals))
    resident = [
        {**state, "state": {key: _copied(entry) for key, entry in state["state"].items()}}
        if isinstance(state, dict) and isinstance(state.get("state"), dict)
        else state
        for state in states
    ]
    for position, key, name in places:
        resident[position]["state"][key][name] = next(copies)
    return resident


def _copied(entry: Any) -> Any:
    return dict(entry) if isinstance(entry, dict) else entry


class LRSchedulersComponent(_ListComponent):
    name = "lr_schedulers"
    attribute = "lr_schedulers"
    what = "LR scheduler"

    def key(self, checkpointer: Checkpointer) -> str:
        return "lr_schedulers"


class ScalerComponent(StateComponent):
    """The AMP ``GradScaler``, under Lightning's precision-plugin key (older key understood)."""

    name = "scaler"

    def key(self, checkpointer: Checkpointer) -> str:
        return SCALER_KEYS[0]

    def is_active(self, checkpointer: Checkpointer) -> bool:
        scaler = checkpointer.scaler
        return scaler is not None and bool(scaler.state_dict())

    def dump(self, checkpointer: Checkpointer) -> Any:
        assert checkpointer.scaler is not None
        return checkpointer.scaler.state_dict()

    def find(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> Found:
        for key in SCALER_KEYS:
            if _has_state(checkpoint.get(key)):
                return Found(checkpoint[key])
        return Found()

    def load(self, checkpointer: Checkpointer, state: Any) -> None:
        assert checkpointer.scaler is not None
        checkpointer.scaler.load_state_dict(state)


class DatamoduleComponent(StateComponent):
    """The datamodule's own ``state_dict``, under its class name as Lightning writes it."""

    name = "datamodule"

    def key(self, checkpointer: Checkpointer) -> str:
        return type(checkpointer.datamodule).__qualname__

    def is_active(self, checkpointer: Checkpointer) -> bool:
        dm = checkpointer.datamodule
        return dm is not None and callable(getattr(dm, "state_dict", None)) and bool(dm.state_dict())

    def dump(self, checkpointer: Checkpointer) -> Any:
        return checkpointer.datamodule.state_dict()

    def load(self, checkpointer: Checkpointer, state: Any) -> None:
        checkpointer.datamodule.load_state_dict(state)


def _callback_has_state(cb: Callback) -> bool:
    """Whether ``cb.state_dict()`` is not empty, asked through :meth:`Callback.has_state` (so that
    ``ModelCheckpoint``, whose state grows with the files it keeps, answers without building it);
    a duck-typed callback without the method is asked for its state."""
    has_state = getattr(cb, "has_state", None)
    if callable(has_state):
        return bool(has_state())
    return bool(cb.state_dict())


def _with_current_keys(callbacks: Sequence[Callback], saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` callback states with each state kept under an earlier key of a callback
    (:meth:`~ckpthooks.Callback.earlier_state_key`) moved to that callback's current key."""
    moved = dict(saved)
    current = {cb.state_key for cb in callbacks}
    for cb in callbacks:
        if cb.state_key in moved:
            continue
        earlier = cb.earlier_state_key(set(moved) - current)
        if earlier is not None and earlier in moved and earlier not in current:
            moved[cb.state_key] = moved.pop(earlier)
            log.info("reading the state of %s from its earlier key %s", cb.state_key, earlier)
    return moved


class CallbacksComponent(StateComponent):
    """Every stateful callback's state, keyed by its ``state_key``."""

    name = "callbacks"

    def key(self, checkpointer: Checkpointer) -> str:
        return "callbacks"

    def is_active(self, checkpointer: Checkpointer) -> bool:
        return any(_callback_has_state(cb) for cb in checkpointer.callbacks)

    def dump(self, checkpointer: Checkpointer) -> Any:
        states = {}
        for cb in checkpointer.callbacks:
            state = cb.state_dict()
            if state:
                states[cb.state_key] = state
        return states

    def find(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> Found:
        found = super().find(checkpointer, checkpoint)
        if found.present and isinstance(found.value, dict):
            found = Found(_with_current_keys(checkpointer.callbacks, found.value), found.missing, found.unexpected,
                          found.incompatible)  # fmt: skip
        saved = found.value if found.present else {}
        stateful = {cb.state_key for cb in checkpointer.callbacks if _callback_has_state(cb)}
        # the default policy (added because no ModelCheckpoint was configured) may start fresh
        defaults = {cb.state_key for cb in checkpointer.callbacks if getattr(cb, "is_default_policy", False)}
        for key in sorted((defaults & stateful) - set(saved)):
            log.info("the checkpoint holds no state for the default %s; it starts fresh", key)
        stateful -= defaults - set(saved)
        if not found.present and not stateful:
            # nothing saved, and only default policies (which start fresh) would want state
            return Found({}) if self.is_active(checkpointer) else found
        if found.present or stateful:
            found.missing += [f"callbacks[{k!r}]" for k in sorted(stateful - set(saved))]
            found.unexpected += [f"callbacks[{k!r}]" for k in sorted(set(saved) - stateful)]
        return found

    def load(self, checkpointer: Checkpointer, state: Any) -> None:
        for cb in checkpointer.callbacks:
            if cb.state_key in state:
                cb.load_state_dict(state[cb.state_key])


class ProgressComponent(StateComponent):
    """``epoch`` and ``global_step`` (Lightning's keys) and the loop position (ours)."""

    name = "progress"
    in_weights_only = True

    def save_into(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
        checkpoint["epoch"] = checkpointer.current_epoch
        checkpoint["global_step"] = checkpointer.global_step
        namespace(checkpoint)["loop"] = checkpointer.progress.state_dict()
        if "loops" not in checkpoint:  # Lightning's Trainer.fit(ckpt_path=...) resumes from these
            checkpoint["loops"] = loops_state(checkpointer.progress.saved(), checkpointer._epoch_length)

    def find(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> Found:
        if "epoch" not in checkpoint and "global_step" not in checkpoint:
            return Found()
        return Found(
            {
                "epoch": checkpoint.get("epoch", 0),
                "global_step": checkpoint.get("global_step", 0),
                "loop": checkpoint.get(NAMESPACE, {}).get("loop"),
                "loops": checkpoint.get("loops"),
            }
        )

    def load(self, checkpointer: Checkpointer, state: Any) -> None:
        checkpointer.progress.restore(state)


class HyperparametersComponent(StateComponent):
    """The model's and datamodule's saved init arguments (``save_hyperparameters``).

    Metadata for ``load_from_checkpoint``: written, never restored into the live objects, never
    reported as missing.
    """

    name = "hyperparameters"
    in_weights_only = True
    on_missing = "ignore"
    restores_state = False

    def save_into(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
        for obj, prefix in ((checkpointer.model, ""), (checkpointer.datamodule, "datamodule_")):
            saved = hparams_of(obj)
            if saved is not None:
                name, values = saved
                checkpoint[f"{prefix}hparams_name"] = name
                checkpoint[f"{prefix}hyper_parameters"] = values

    def find(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> Found:
        return Found(checkpoint["hyper_parameters"]) if "hyper_parameters" in checkpoint else Found()

    def load(self, checkpointer: Checkpointer, state: Any) -> None:
        """Hyperparameters are read by ``load_from_checkpoint``; a resume leaves them as they are."""


class RNGComponent(StateComponent):
    """Python, NumPy, torch and CUDA generator states (ckpthooks namespace)."""

    name = "rng"
    on_missing = "warn"

    def is_active(self, checkpointer: Checkpointer) -> bool:
        return checkpointer.save_rng_state

    def dump(self, checkpointer: Checkpointer) -> Any:
        return collect_rng_states()

    def load(self, checkpointer: Checkpointer, state: Any) -> None:
        restore_rng_states(state)


class TrackedComponent(StateComponent):
    """Any object with ``state_dict``/``load_state_dict`` passed to ``track(name=obj)``."""

    def __init__(self, name: str, obj: Any) -> None:
        self.name = name
        self.obj = obj

    def dump(self, checkpointer: Checkpointer) -> Any:
        return self.obj.state_dict()

    def load(self, checkpointer: Checkpointer, state: Any) -> None:
        self.obj.load_state_dict(state)


def builtin_components() -> list[StateComponent]:
    """The built-in components in restore order (model first, RNG last)."""
    return [
        ModelComponent(),
        DatamoduleComponent(),
        CallbacksComponent(),
        OptimizersComponent(),
        LRSchedulersComponent(),
        ScalerComponent(),
        ProgressComponent(),
        HyperparametersComponent(),
        RNGComponent(),
    ]
