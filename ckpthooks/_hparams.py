"""``save_hyperparameters()`` and ``load_from_checkpoint()`` for plain ``nn.Module`` classes.

Mix :class:`HyperparametersMixin` into a model (or datamodule) class, call
``self.save_hyperparameters()`` in ``__init__``, and every checkpoint carries the init arguments under
``hyper_parameters`` as Lightning writes them; ``Model.load_from_checkpoint(path, **overrides)``
rebuilds the model from them, overrides winning.
"""

from __future__ import annotations

import copy
import inspect
import os
import types
import warnings
from argparse import Namespace
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, TypeVar

from ckpthooks._model_state import load_model_state
from ckpthooks.exceptions import ConfigurationError, MissingStateError

M = TypeVar("M", bound="HyperparametersMixin")

HPARAMS_KEY = "hyper_parameters"
HPARAMS_NAME_KEY = "hparams_name"


class AttributeDict(dict):  # type: ignore[type-arg]
    """A dict whose keys are also attributes: ``hparams.lr == hparams["lr"]``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(f"no hyperparameter named {key!r}") from exc

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        del self[key]


class HyperparametersMixin:
    """Gives a class ``save_hyperparameters()``, ``hparams`` and ``load_from_checkpoint()``."""

    _hparams_name: str | None = None

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: types.FrameType | None = None,
    ) -> None:
        """Record hyperparameters in ``self.hparams``.

        With no arguments, every argument of the calling ``__init__`` is recorded (``*args`` are
        not; ``**kwargs`` are merged in). With names, only those init arguments. With one dict or
        ``argparse.Namespace``, its items. ``ignore`` leaves init arguments out (for example a
        module passed in, which is no hyperparameter and cannot be stored safely).
        """
        ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
        if len(args) == 1 and isinstance(args[0], (dict, Namespace)):
            values = vars(args[0]) if isinstance(args[0], Namespace) else dict(args[0])
            # like Lightning: name the __init__ argument it came from, so load_from_checkpoint
            # passes the saved values back through that argument
            caller = frame or _caller_frame()
            init_args = _init_args(caller)[0] if caller.f_code.co_name == "__init__" else {}
            name = next((k for k, v in init_args.items() if v is args[0]), None)
        else:
            caller = frame or _caller_frame()
            init_args, name = _init_args(caller)
            if args:
                wanted = [a for a in args if isinstance(a, str)]
                unknown = [a for a in wanted if a not in init_args]
                if unknown or len(wanted) != len(args):
                    raise ConfigurationError(
                        f"save_hyperparameters: {unknown or args} are not arguments of __init__"
                    )
                init_args = {k: init_args[k] for k in wanted}
            values = {k: v for k, v in init_args.items() if k not in ignored}
            name = "kwargs"
        self._hparams_name = name
        hparams = AttributeDict(values)
        object.__setattr__(self, "_hparams", hparams)
        object.__setattr__(self, "_hparams_initial", copy.deepcopy(hparams))

    @property
    def hparams(self) -> AttributeDict:
        """The recorded hyperparameters (empty until ``save_hyperparameters`` is called)."""
        if not hasattr(self, "_hparams"):
            object.__setattr__(self, "_hparams", AttributeDict())
        hparams: AttributeDict = self.__dict__["_hparams"]
        return hparams

    @property
    def hparams_initial(self) -> AttributeDict:
        """A copy of the hyperparameters as they were recorded, unaffected by later edits."""
        if not hasattr(self, "_hparams_initial"):
            return AttributeDict()
        initial: AttributeDict = self.__dict__["_hparams_initial"]
        return copy.deepcopy(initial)

    @classmethod
    def load_from_checkpoint(
        cls: type[M],
        checkpoint_path: str | os.PathLike[str],
        map_location: Any = "cpu",
        strict: bool = True,
        *,
        weights_only: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        verify: str = "full",
        **kwargs: Any,
    ) -> M:
        """Build the class from the checkpoint's hyperparameters (``kwargs`` win) and load its weights.

        The file is verified against its commit manifest when it has one, and loaded with
        ``weights_only=True`` unless you pass ``weights_only=False`` for a file you trust.

        On a class that is not a ``torch.nn.Module`` (a datamodule, as Lightning's
        ``LightningDataModule.load_from_checkpoint``), the datamodule's hyperparameters are used
        (``datamodule_hyper_parameters``) and its own state (saved under its class name) is loaded
        with its ``load_state_dict``; no model weights are involved.
        """
        from ckpthooks._io import paths  # the storage layer, imported when a checkpoint is read
        from ckpthooks._store import CheckpointStore

        store = CheckpointStore(storage_options=storage_options, verify=verify)  # type: ignore[arg-type]
        path = paths.normalize(checkpoint_path)
        checkpoint = store.load(path, map_location=map_location, weights_only=weights_only)
        module = _is_module_class(cls)
        init_kwargs = init_kwargs_from_checkpoint(cls, checkpoint, kwargs, prefix="" if module else "datamodule_")
        obj = cls(**init_kwargs)
        hook = getattr(obj, "on_load_checkpoint", None)
        if callable(hook):
            hook(checkpoint)
        if not module:  # a datamodule: its own state, under its class name (Lightning's layout)
            state = checkpoint.get(cls.__qualname__)
            load_state = getattr(obj, "load_state_dict", None)
            if state is not None and callable(load_state):
                load_state(state)
            return obj
        if "state_dict" not in checkpoint:
            raise MissingStateError(f"{path} holds no model weights (no 'state_dict' key)", ["state_dict"])
        load_model_state(obj, checkpoint["state_dict"], strict=strict)
        return obj


def _is_module_class(cls: type) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return True
    return issubclass(cls, torch.nn.Module)


def init_kwargs_from_checkpoint(
    cls: type, checkpoint: Mapping[str, Any], overrides: Mapping[str, Any], *, prefix: str = ""
) -> dict[str, Any]:
    """The keyword arguments Lightning would pass to ``cls(...)``: saved hyperparameters (the
    model's; a datamodule's with ``prefix="datamodule_"``), then ``overrides``, filtered to what
    ``__init__`` accepts unless it takes ``**kwargs``. An override that names no argument of
    ``__init__`` is ignored with a warning."""
    signature = inspect.signature(cls.__init__)  # type: ignore[misc]
    parameters = list(signature.parameters.values())[1:]
    names = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    unknown = sorted(k for k in overrides if k not in names)
    if unknown and not takes_any:
        warnings.warn(
            f"load_from_checkpoint: {', '.join(map(repr, unknown))} "
            f"{'is not an argument' if len(unknown) == 1 else 'are not arguments'} of "
            f"{cls.__qualname__}.__init__ ({', '.join(names) or 'none'}); ignored",
            UserWarning,
            stacklevel=3,
        )
    loaded = dict(checkpoint.get(prefix + HPARAMS_KEY) or {})
    args_name = checkpoint.get(prefix + HPARAMS_NAME_KEY)
    if args_name and args_name != "kwargs" and args_name in names:
        loaded = {args_name: AttributeDict(loaded)}  # attribute access, as a Namespace had
    merged = {**loaded, **overrides}
    if not takes_any:
        merged = {k: v for k, v in merged.items() if k in names}
    return merged


def hparams_of(obj: Any) -> tuple[str | None, dict[str, Any]] | None:
    """``(hparams_name, plain dict)`` for an object with recorded hyperparameters, else ``None``."""
    if obj is None:
        return None
    hparams = getattr(obj, "hparams", None)
    if not isinstance(hparams, MutableMapping) or not hparams:
        return None
    return getattr(obj, "_hparams_name", None), _plain(dict(hparams))


def _plain(value: Any) -> Any:
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _caller_frame() -> types.FrameType:
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None and frame.f_back.f_back is not None
    return frame.f_back.f_back


def _init_args(frame: types.FrameType) -> tuple[dict[str, Any], str]:
    """The arguments of the ``__init__`` running in ``frame``, and of the ``__init__`` calls of
    subclasses above it (so ``super().__init__()`` chains collect everything)."""
    collected: dict[str, Any] = {}
    current: types.FrameType | None = frame
    while current is not None and current.f_code.co_name == "__init__":
        info = inspect.getargvalues(current)
        local = current.f_locals
        if not info.args or info.args[0] not in local:
            break
        self_obj = local[info.args[0]]
        found = {name: local[name] for name in info.args[1:] if name in local}
        if info.keywords and isinstance(local.get(info.keywords), dict):
            found.update(local[info.keywords])
        collected = {**found, **collected}
        parent = current.f_back
        if parent is None or parent.f_code.co_name != "__init__":
            break
        parent_locals = parent.f_locals
        parent_info = inspect.getargvalues(parent)
        if not parent_info.args or parent_locals.get(parent_info.args[0]) is not self_obj:
            break
        current = parent
    if frame.f_code.co_name != "__init__":
        raise ConfigurationError("save_hyperparameters() without arguments must be called in __init__")
    return collected, "kwargs"
